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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryStatus, StatusUpdate};
    use crate::store::embedded::EmbeddedDb;

    fn entry(keys: &[&str], partition: &str) -> NewEntry {
        NewEntry {
            dedupe_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            partition: partition.into(),
            event: InboxEvent::Status(StatusUpdate::new(
                "m",
                DeliveryStatus::Sent,
                chrono::Utc::now(),
            )),
        }
    }

    #[tokio::test]
    async fn a_key_is_claimed_once_even_within_one_delivery_and_after_completion() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = EmbeddedInbox::new(EmbeddedDb::open(dir.path()).unwrap())
            .await
            .unwrap();
        let out = inbox
            .append(vec![
                entry(&["eg:1", "msg:a"], "p1"),
                entry(&["eg:2", "msg:a"], "p1"),
                entry(&["eg:3"], "p2"),
            ])
            .await
            .unwrap();
        assert!(matches!(out[0], Appended::Fresh(_)));
        assert_eq!(out[1], Appended::Duplicate);
        assert!(matches!(out[2], Appended::Fresh(_)));

        let pending = inbox.pending(10).await.unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending[0].seq < pending[1].seq);
        inbox.complete(vec![pending[0].key()]).await.unwrap();
        assert_eq!(inbox.pending(10).await.unwrap().len(), 1);

        // A redelivery after completion is still a duplicate (the key outlives the entry).
        let again = inbox.append(vec![entry(&["eg:1"], "p1")]).await.unwrap();
        assert_eq!(again, vec![Appended::Duplicate]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_coalesce_and_each_key_is_fresh_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = EmbeddedInbox::new(EmbeddedDb::open(dir.path()).unwrap())
            .await
            .unwrap();
        // 200 callers at once, every key sent by two of them: exactly one of each pair wins,
        // whichever writer job (coalesced or not) carries it.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let key = format!("msg:{}", i / 2);
                    inbox.append(vec![entry(&[key.as_str()], "p")]).await
                })
            })
            .collect();
        let mut fresh = 0;
        for task in tasks {
            let out = task.await.unwrap().unwrap();
            fresh += out
                .iter()
                .filter(|a| matches!(a, Appended::Fresh(_)))
                .count();
        }
        assert_eq!(fresh, 100);
        let pending = inbox.pending(1000).await.unwrap();
        assert_eq!(pending.len(), 100);
        let mut seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), 100, "sequence numbers are unique");
    }
}
