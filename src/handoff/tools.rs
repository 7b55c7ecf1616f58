//! The tools of one conversation, as the agent's turns run them: the wait time, collected
//! facts, and on a call the WhatsApp offer, the handoff and the end of the call.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;

use super::HandoffService;
use super::wait_time::{WaitTimeSource, check_wait_time};
use crate::agent::ToolCall;
use crate::agent::engine::{ToolHost, ToolOutcome, TurnAction};
use crate::agent::tools::ToolRequest;
use crate::config::HandoffSettings;
use crate::domain::{Channel, CustomerId};
use crate::store::Contexts;

/// Everything the tools need, shared by every conversation.
#[derive(Clone)]
pub struct ToolServices {
    pub contexts: Contexts,
    pub wait: Arc<dyn WaitTimeSource>,
    pub handoff: Arc<HandoffService>,
    pub settings: Arc<HandoffSettings>,
}

/// The tool host of one conversation.
pub struct ConversationTools {
    services: ToolServices,
    channel: Channel,
    customer: CustomerId,
    call_connection_id: Option<String>,
}

impl ConversationTools {
    pub fn new(
        services: ToolServices,
        channel: Channel,
        customer: CustomerId,
        call_connection_id: Option<String>,
    ) -> Self {
        Self {
            services,
            channel,
            customer,
            call_connection_id,
        }
    }
}

#[async_trait]
impl ToolHost for ConversationTools {
    async fn run(&self, request: ToolRequest, _call: &ToolCall) -> ToolOutcome {
        let call_id = self.call_connection_id.as_deref();
        match request {
            ToolRequest::CheckWaitTime => ToolOutcome::output(
                check_wait_time(
                    self.services.wait.as_ref(),
                    &self.services.settings,
                    Utc::now(),
                )
                .await,
            ),
            ToolRequest::UpdateCollectedData { data } => {
                let written = self
                    .services
                    .contexts
                    .update(&self.customer, |ctx| {
                        for (k, v) in &data {
                            ctx.collected_data.insert(k.clone(), v.clone());
                        }
                    })
                    .await;
                match written {
                    Ok(_) => ToolOutcome::output(
                        json!({"status": "saved", "keys": data.keys().collect::<Vec<_>>()}),
                    ),
                    Err(err) => {
                        tracing::warn!(error = %err, "collected data not saved");
                        ToolOutcome::output(json!({"error": "could not save, try again later"}))
                    }
                }
            }
            _ if self.channel != Channel::Voice => {
                ToolOutcome::output(json!({"error": "this tool is only available on a call"}))
            }
            ToolRequest::OfferWhatsAppHandoff { .. } => {
                match self.services.handoff.offer(&self.customer, call_id).await {
                    Ok(id) => {
                        ToolOutcome::output(json!({"status": "offered", "handoff_id": id.as_str()}))
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "handoff offer not recorded");
                        ToolOutcome::output(json!({"error": "offer not recorded"}))
                    }
                }
            }
            ToolRequest::HandoffToWhatsApp {
                consent_evidence,
                phone_number,
            } => {
                if let Some(other) = phone_number.as_deref()
                    && CustomerId::parse_phone(other).ok().as_ref() != Some(&self.customer)
                {
                    // The context (and the 24-hour window) belongs to the caller's number; a
                    // different number would be a different customer.
                    tracing::info!(
                        "caller asked for a different WhatsApp number; using the calling number"
                    );
                }
                match self
                    .services
                    .handoff
                    .accept(&self.customer, call_id, &consent_evidence)
                    .await
                {
                    Ok(action) => {
                        let output = match &action {
                            TurnAction::HandoffSent { handoff_id } => {
                                json!({"status": "sent", "handoff_id": handoff_id.as_str()})
                            }
                            TurnAction::HandoffRefused { reason, .. } => {
                                json!({"status": "failed", "reason": reason})
                            }
                            TurnAction::EndCall { .. } => json!({"status": "unknown"}),
                        };
                        ToolOutcome {
                            output,
                            action: Some(action),
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "handoff failed");
                        ToolOutcome {
                            output: json!({"status": "failed", "reason": "internal"}),
                            action: Some(TurnAction::HandoffRefused {
                                handoff_id: None,
                                reason: "internal".into(),
                            }),
                        }
                    }
                }
            }
            ToolRequest::EndCall { reason } => ToolOutcome {
                output: json!({"status": "ending"}),
                action: Some(TurnAction::EndCall { reason }),
            },
        }
    }
}
