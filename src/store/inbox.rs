//! The durable inbox: webhook events recorded before they are acknowledged, then drained by a
//! worker. Appending claims the event's dedupe keys (Event Grid id, provider message id) and
//! stores the entry in one atomic step, so a redelivered or concurrent duplicate never becomes a
//! second entry. Embedded adapter: redb tables written through the group-commit writer, so many
//! concurrent deliveries share one transaction and one disk sync. (Cosmos design: item id = the
//! dedupe key, insert-if-absent is the claim, partition key `/customerId`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::embedded::EmbeddedDb;
use crate::domain::{InboundMessage, StatusUpdate};

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

/// The inbox in the embedded redb file.
#[derive(Clone)]
pub struct EmbeddedInbox {
    db: EmbeddedDb,
}

impl EmbeddedInbox {
    pub async fn new(db: EmbeddedDb) -> Result<Self, StoreError> {
        db.write(|txn| {
            txn.open_table(INBOX).map_err(be)?;
            txn.open_table(INBOX_KEYS).map_err(be)?;
            txn.open_table(META).map_err(be)?;
            Ok(())
        })
        .await?;
        Ok(Self { db })
    }
}

#[async_trait]
impl Inbox for EmbeddedInbox {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        let now = now_millis();
        let expires = now + DEDUPE_TTL.as_millis() as u64;
        // Encode before the job reaches the writer thread, which then only copies bytes: the
        // writer is the one serial stage every delivery passes through.
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = entry.dedupe_keys.first().cloned().unwrap_or_default();
            let stored = StoredEntry {
                id,
                partition: entry.partition,
                event: entry.event,
            };
            let bytes = serde_json::to_vec(&stored).map_err(be)?;
            encoded.push((entry.dedupe_keys, stored, bytes));
        }
        self.db
            .write(move |txn| {
                let mut keys = txn.open_table(INBOX_KEYS).map_err(be)?;
                let mut inbox = txn.open_table(INBOX).map_err(be)?;
                let mut meta = txn.open_table(META).map_err(be)?;
                let mut seq = meta
                    .get("inbox_seq")
                    .map_err(be)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                // Decide everything before writing anything: an error must leave no partial claim.
                let mut fresh_keys: Vec<&str> = Vec::new();
                let mut verdicts = Vec::with_capacity(encoded.len());
                for (dedupe_keys, _, _) in &encoded {
                    let mut duplicate = false;
                    for key in dedupe_keys {
                        // A duplicate inside the same delivery counts too.
                        if fresh_keys.contains(&key.as_str())
                            || keys
                                .get(key.as_str())
                                .map_err(be)?
                                .is_some_and(|v| v.value() > now)
                        {
                            duplicate = true;
                            break;
                        }
                    }
                    if !duplicate {
                        fresh_keys.extend(dedupe_keys.iter().map(String::as_str));
                    }
                    verdicts.push(!duplicate);
                }
                let mut result = Vec::with_capacity(encoded.len());
                for ((dedupe_keys, stored, bytes), fresh) in encoded.iter().zip(verdicts) {
                    if !fresh {
                        result.push(Appended::Duplicate);
                        continue;
                    }
                    seq += 1;
                    for key in dedupe_keys {
                        keys.insert(key.as_str(), expires).map_err(be)?;
                    }
                    inbox.insert(seq, bytes.as_slice()).map_err(be)?;
                    result.push(Appended::Fresh(Box::new(stored.clone().into_entry(seq))));
                }
                meta.insert("inbox_seq", seq).map_err(be)?;
                Ok(result)
            })
            .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(INBOX).map_err(be)?;
                let mut out = Vec::new();
                for item in table.iter().map_err(be)?.take(limit) {
                    let (k, v) = item.map_err(be)?;
                    let stored: StoredEntry = serde_json::from_slice(v.value()).map_err(be)?;
                    out.push(stored.into_entry(k.value()));
                }
                Ok(out)
            })
            .await
    }

    async fn complete(&self, done: Vec<EntryKey>) -> Result<(), StoreError> {
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(INBOX).map_err(be)?;
                for key in done {
                    table.remove(key.seq).map_err(be)?;
                }
                Ok(())
            })
            .await
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now_millis();
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(INBOX_KEYS).map_err(be)?;
                Ok(table
                    .extract_if(|_, expires| expires <= now)
                    .map_err(be)?
                    .count())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryStatus, StatusUpdate};

    fn entry(keys: &[&str], partition: &str) -> NewEntry {
        NewEntry {
            dedupe_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            partition: partition.into(),
            event: InboxEvent::Status(StatusUpdate {
                message_id: "m".into(),
                status: DeliveryStatus::Sent,
                customer: None,
                at: chrono::Utc::now(),
                error_code: None,
                pricing: None,
                conversation: None,
            }),
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
}
