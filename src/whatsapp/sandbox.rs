//! The sandbox WhatsApp provider, the default when ACS is not configured: records what would be
//! sent, with a generated message id, then reports `sent` and `delivered` through the same
//! status path as a real provider (the inbox), so the whole flow runs offline.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Recipient, SenderError, WhatsAppSender};
use crate::domain::{DeliveryStatus, OutboundMessage, StatusUpdate, WhatsAppProvider};

/// What the sandbox "sent".
#[derive(Debug, Clone, Serialize)]
pub struct SandboxRecord {
    pub message_id: String,
    /// Masked: the sandbox record is readable over the API.
    pub to: String,
    pub business_number: Option<String>,
    pub at: DateTime<Utc>,
    pub message: OutboundMessage,
}

/// Bounded so a long-running demo does not grow without limit.
const KEEP: usize = 10_000;

pub struct SandboxSender {
    records: Mutex<Vec<SandboxRecord>>,
    statuses: mpsc::UnboundedSender<StatusUpdate>,
}

impl SandboxSender {
    /// `statuses` feeds the status path (the service ingests them like webhook events).
    pub fn new(statuses: mpsc::UnboundedSender<StatusUpdate>) -> Self {
        Self {
            records: Mutex::new(Vec::new()),
            statuses,
        }
    }

    pub fn records(&self) -> Vec<SandboxRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl WhatsAppSender for SandboxSender {
    fn provider(&self) -> WhatsAppProvider {
        WhatsAppProvider::Sandbox
    }

    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if records.len() >= KEEP {
                records.drain(..KEEP / 10);
            }
            records.push(SandboxRecord {
                message_id: message_id.clone(),
                to: crate::domain::mask(&to.address),
                business_number: to.business_number.clone(),
                at: now,
                message: message.clone(),
            });
        }
        for status in [DeliveryStatus::Sent, DeliveryStatus::Delivered] {
            let _ = self
                .statuses
                .send(StatusUpdate::new(message_id.clone(), status, Utc::now()));
        }
        Ok(message_id)
    }
}
