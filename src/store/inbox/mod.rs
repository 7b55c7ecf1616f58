//! The durable inbox: webhook events recorded before they are acknowledged, then drained by a
//! worker. Appending claims the event's dedupe keys (Event Grid id, provider message id) and
//! stores the entry in one atomic step, so a redelivered or concurrent duplicate never becomes a
//! second entry. Embedded adapter (`embedded.rs`): a write-ahead log of our own (`log.rs`) that
//! many concurrent deliveries share one sync of, checkpointed into redb tables. (Cosmos design,
//! `cosmos_whatsapp.rs`: item id = the dedupe key, insert-if-absent is the claim, partition key
//! `/customerId`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{InboundMessage, StatusUpdate};

mod embedded;
mod log;

pub use embedded::{EmbeddedInbox, INBOX_LOG_TOTALS, Tuning};

/// How long a dedupe key outlives its entry: longer than Event Grid retries (24 h).
pub const DEDUPE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboxEvent {
    Message(InboundMessage),
    Status(StatusUpdate),
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Every key that identifies this event; any one already claimed makes it a duplicate.
    pub dedupe_keys: Vec<String>,
    /// Events with the same partition (the customer) are handled one at a time, in order.
    pub partition: String,
    pub event: InboxEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The first dedupe key.
    pub id: String,
    /// Arrival order.
    pub seq: u64,
    pub partition: String,
    pub event: InboxEvent,
}

impl InboxEntry {
    pub fn key(&self) -> EntryKey {
        EntryKey {
            seq: self.seq,
            partition: self.partition.clone(),
            id: self.id.clone(),
        }
    }
}

/// What identifies an entry to complete it (embedded: `seq`; Cosmos: partition and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    pub seq: u64,
    pub partition: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    Fresh(Box<InboxEntry>),
    Duplicate,
}

#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Claims and records `entries` atomically: when this returns `Ok`, every fresh entry is
    /// durable; on `Err`, nothing was recorded or claimed.
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError>;
    /// Entries not yet completed, oldest first.
    async fn pending(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError>;
    /// Removes handled entries (their dedupe keys stay claimed until they expire).
    async fn complete(&self, done: Vec<EntryKey>) -> Result<(), StoreError>;
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Readiness of what this inbox keeps apart from the store's own check (`None`: nothing).
    async fn check(&self) -> Option<Result<(), StoreError>> {
        None
    }
    /// The webhook is flooded (or no longer is): upkeep that can wait, waits until it is over
    /// (the embedded inbox's checkpoints). Appends are unaffected.
    fn set_flooded(&self, _flooded: bool) {}
}

const BACKEND: &str = "embedded";
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// dedupe key → expiry (ms since the epoch).
const INBOX_KEYS: TableDefinition<&str, u64> = TableDefinition::new("inbox_keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("whatsapp_meta");

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

/// An entry as stored: its sequence number is the table key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    id: String,
    partition: String,
    event: InboxEvent,
}

impl StoredEntry {
    fn into_entry(self, seq: u64) -> InboxEntry {
        InboxEntry {
            id: self.id,
            seq,
            partition: self.partition,
            event: self.event,
        }
    }
}
