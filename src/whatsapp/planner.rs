//! The send planner in front of every WhatsApp sender. Right before each provider call it
//! checks the 24-hour window (free-form messages only), the opt-out (business-initiated
//! messages), the interactive limits, and paces per business number and per recipient. Long
//! text is split into ordered messages. Every accepted send is written to the message log.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::pacing::Pacer;
use super::router::{ProviderRouter, Route};
use super::{Recipient, SenderError, WhatsAppSender};
use crate::domain::outbound::{InteractiveError, MAX_TEXT_CHARS, split_text, window_open};
use crate::domain::template::TemplateError;
use crate::domain::{
    CustomerContext, CustomerId, DeliveryStatus, Direction, MessageRecord, OutboundMessage,
};
use crate::store::messages::MessageLog;
use crate::store::{Contexts, StoreError};

/// What a send produced: one provider message id per WhatsApp message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Outside the 24-hour window (or inside its safety margin): only templates may be sent.
    #[error("the customer service window is closed; only templates may be sent")]
    WindowClosed,
    #[error("the customer opted out of business-initiated messages")]
    OptedOut,
    #[error("no WhatsApp address is known for this customer")]
    NoAddress,
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Interactive(#[from] InteractiveError),
    #[error(transparent)]
    Sender(#[from] SenderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why we are sending: replies may go to opted-out customers, business-initiated messages not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiation {
    Reply,
    Business,
}

#[derive(Debug, Clone)]
pub struct PlannerSettings {
    pub window_margin: Duration,
    pub send_rate_per_sec: u32,
    pub recipient_min_interval: Duration,
}

pub struct SendPlanner {
    /// Picks the provider and business number of every send.
    sender: Arc<ProviderRouter>,
    contexts: Contexts,
    log: Arc<dyn MessageLog>,
    settings: PlannerSettings,
    pacer: Pacer,
}

impl SendPlanner {
    pub fn new(
        sender: Arc<ProviderRouter>,
        contexts: Contexts,
        log: Arc<dyn MessageLog>,
        settings: PlannerSettings,
    ) -> Self {
        Self {
            sender,
            contexts,
            log,
            settings,
            pacer: Pacer::default(),
        }
    }

    fn recipient(&self, ctx: &CustomerContext) -> Result<Recipient, SendError> {
        let session = ctx.whatsapp.as_ref();
        let address = session
            .and_then(|s| s.wa_id.clone())
            .or_else(|| ctx.customer_id.whatsapp_address().map(str::to_owned))
            .or_else(|| session.and_then(|s| s.bsuid.clone()))
            .or_else(|| ctx.customer_id.bsuid().map(str::to_owned))
            .ok_or(SendError::NoAddress)?;
        // Reply from the number the customer wrote to; otherwise the default one.
        let business_number = self.route(ctx).business_number;
        Ok(Recipient {
            address,
            business_number,
        })
    }

    /// Where messages to this customer leave from, and which agent profile answers them.
    pub fn route(&self, ctx: &CustomerContext) -> Route {
        self.sender.route(
            ctx.whatsapp
                .as_ref()
                .and_then(|s| s.business_number.as_deref()),
        )
    }

    /// [`Self::route`] for a customer by id (their context is read).
    pub async fn route_for(&self, customer: &CustomerId) -> Result<Route, SendError> {
        let ctx = self.contexts.get_or_default(customer).await?;
        Ok(self.route(&ctx))
    }

    pub fn router(&self) -> &ProviderRouter {
        &self.sender
    }

    fn window_is_open(&self, ctx: &CustomerContext) -> bool {
        let margin = chrono::Duration::from_std(self.settings.window_margin)
            .unwrap_or(chrono::Duration::zero());
        let s = ctx.whatsapp.as_ref();
        window_open(
            s.and_then(|s| s.last_inbound_at),
            s.and_then(|s| s.window_closed_at),
            margin,
            Utc::now(),
        )
    }

    /// Sends `message` to `customer`: text longer than WhatsApp allows becomes several messages,
    /// sent in order. Every check happens before any HTTP call.
    pub async fn send(
        &self,
        customer: &CustomerId,
        message: OutboundMessage,
        initiation: Initiation,
    ) -> Result<Vec<SentMessage>, SendError> {
        if let OutboundMessage::Interactive(i) = &message {
            i.validate()?;
        }
        let parts = match message {
            // Only the first part quotes the message it answers; the rest follow it.
            OutboundMessage::Text { text, reply_to } => split_text(&text, MAX_TEXT_CHARS)
                .into_iter()
                .enumerate()
                .map(|(i, text)| OutboundMessage::Text {
                    text,
                    reply_to: if i == 0 { reply_to.clone() } else { None },
                })
                .collect(),
            other => vec![other],
        };
        let mut sent = Vec::with_capacity(parts.len());
        for part in parts {
            sent.push(self.send_one(customer, part, initiation).await?);
        }
        Ok(sent)
    }

    async fn send_one(
        &self,
        customer: &CustomerId,
        message: OutboundMessage,
        initiation: Initiation,
    ) -> Result<SentMessage, SendError> {
        let ctx = self.contexts.get_or_default(customer).await?;
        if initiation == Initiation::Business && ctx.opted_out {
            return Err(SendError::OptedOut);
        }
        let recipient = self.recipient(&ctx)?;
        if message.is_free_form() && !self.window_is_open(&ctx) {
            return Err(SendError::WindowClosed);
        }
        let waited = self
            .pacer
            .wait_turn(
                recipient.business_number.as_deref().unwrap_or(""),
                self.settings.send_rate_per_sec,
                &recipient.address,
                self.settings.recipient_min_interval,
            )
            .await;
        if waited && message.is_free_form() {
            // The wait may have crossed the window's end: check again, right before the call.
            let fresh = self.contexts.get_or_default(customer).await?;
            if !self.window_is_open(&fresh) {
                return Err(SendError::WindowClosed);
            }
        }
        let message_id = self.sender.send(&recipient, &message).await?;
        let now = Utc::now();
        let mut record = MessageRecord::new(
            message_id.clone(),
            Some(customer.clone()),
            Direction::Outbound,
            message.kind(),
            now,
        );
        record.status = Some(DeliveryStatus::Accepted);
        record.history = vec![crate::domain::message::StatusChange {
            status: DeliveryStatus::Accepted,
            at: now,
        }];
        self.log.record(record).await?;
        tracing::info!(
            customer = %customer,
            message_id = %message_id,
            kind = message.kind(),
            "whatsapp message accepted by the provider"
        );
        Ok(SentMessage { message_id })
    }
}
