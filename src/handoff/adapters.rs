//! The saga's two ports, implemented by the channels: WhatsApp sends the continuation template,
//! the voice provider hangs up.

use std::sync::{Arc, Weak};

use async_trait::async_trait;

use super::{CallControl, ContinuationRequest, ContinuationSender, Delivery, SendRefusal};
use crate::domain::DeliveryStatus;
use crate::voice::client::{VoiceError, VoiceProvider};
use crate::whatsapp::{SendError, SenderError, WhatsApp};

/// Sends the continuation template through the WhatsApp service. Holds it weakly: the service
/// holds the saga (through its tools), and a strong reference back would keep both, and the
/// store under them, alive forever.
pub struct WhatsAppContinuation(pub Weak<WhatsApp>);

#[async_trait]
impl ContinuationSender for WhatsAppContinuation {
    async fn send_continuation(
        &self,
        request: &ContinuationRequest,
    ) -> Result<String, SendRefusal> {
        let whatsapp = self
            .0
            .upgrade()
            .ok_or_else(|| SendRefusal::Unavailable("the service is shutting down".into()))?;
        // The payload rides the template's quick-reply button; without one there is nowhere to
        // put it (the reply is then correlated by customer).
        let buttons = whatsapp
            .quick_reply_buttons(&request.customer, &request.template)
            .await;
        let payload = request.button_payload.clone().filter(|_| buttons > 0);
        let once = crate::domain::outbound::Idempotency {
            key: request.idempotency_key.clone(),
            first_sent: request.first_sent,
        };
        let sent = whatsapp
            .send_template_once(
                &request.customer,
                &request.template,
                request.parameters.clone(),
                payload,
                Some(once),
            )
            .await;
        match sent {
            Ok(message) => Ok(message.message_id),
            Err(err) => Err(match err {
                SendError::OptedOut => SendRefusal::OptedOut,
                SendError::NoAddress => SendRefusal::NoAddress,
                SendError::Template(e) => SendRefusal::TemplateInvalid(e.to_string()),
                SendError::Sender(SenderError::Rejected { code, message, .. }) => {
                    SendRefusal::Rejected { code, message }
                }
                SendError::Sender(e) => SendRefusal::Unavailable(e.to_string()),
                SendError::Store(e) => SendRefusal::Unavailable(e.to_string()),
                other => SendRefusal::Rejected {
                    code: "refused".into(),
                    message: other.to_string(),
                },
            }),
        }
    }

    async fn delivery(&self, message_id: &str) -> Option<Delivery> {
        self.status_of(message_id).await
    }
}

impl WhatsAppContinuation {
    async fn status_of(&self, message_id: &str) -> Option<Delivery> {
        let whatsapp = self.0.upgrade()?;
        let record = whatsapp.message(message_id).await.ok()??;
        match record.status? {
            DeliveryStatus::Delivered => Some(Delivery::Delivered),
            DeliveryStatus::Read => Some(Delivery::Read),
            DeliveryStatus::Failed => Some(Delivery::Failed {
                code: record.error_code,
            }),
            DeliveryStatus::Accepted | DeliveryStatus::Sent => None,
        }
    }
}

/// Hangs calls up through whichever voice provider is configured.
pub struct ProviderCallControl(pub Arc<dyn VoiceProvider>);

#[async_trait]
impl CallControl for ProviderCallControl {
    async fn hang_up(&self, call_connection_id: &str) -> Result<(), String> {
        match self.0.terminate(call_connection_id).await {
            Ok(()) => Ok(()),
            // The call is already gone: that is what we wanted.
            Err(err) if is_gone(&err) => Ok(()),
            Err(err) => Err(err.to_string()),
        }
    }
}

fn is_gone(err: &VoiceError) -> bool {
    matches!(
        err,
        VoiceError::Acs(crate::acs::AcsError::Rejected { status: 404, .. })
    )
}
