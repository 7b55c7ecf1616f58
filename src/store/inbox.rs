//! The durable inbox: webhook events recorded before they are acknowledged, then drained by a
//! worker. Appending claims the event's dedupe keys (Event Grid id, provider message id) and
//! stores the entry in one atomic step, so a redelivered or concurrent duplicate never becomes a
//! second entry. Embedded adapter: redb tables written through the group-commit writer, so many
//! concurrent deliveries share one transaction and one disk sync. (Cosmos design: item id = the
//! dedupe key, insert-if-absent is the claim, partition key `/customerId`.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::StoreError;
use super::embedded::{Completion, EmbeddedDb};
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
///
/// Appends are coalesced: concurrent deliveries join one writer job, which opens the tables
/// and reads the sequence once for all of them (per-job table opens were a large part of the
/// serial writer's time under load). Each caller is answered from the commit's completion, so
/// one caller going away (a client that hung up) cannot cost the others their answers.
#[derive(Clone)]
pub struct EmbeddedInbox {
    db: EmbeddedDb,
    queue: Arc<Mutex<AppendQueue>>,
}

type Encoded = Vec<(Vec<String>, StoredEntry, Vec<u8>)>;
type AppendReply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

#[derive(Default)]
struct AppendQueue {
    waiting: Vec<(Encoded, AppendReply)>,
    /// A writer job that will take everything waiting is queued and has not run yet.
    scheduled: bool,
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
        Ok(Self {
            db,
            queue: Arc::default(),
        })
    }

    /// The writer job: every append waiting when it runs, in arrival order, in one transaction.
    fn append_job(queue: Arc<Mutex<AppendQueue>>) -> impl FnOnce(&WriteTransaction) -> Completion {
        move |txn| {
            let waiting = {
                let mut q = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.scheduled = false;
                std::mem::take(&mut q.waiting)
            };
            let (encoded, replies): (Vec<Encoded>, Vec<AppendReply>) = waiting.into_iter().unzip();
            let results = append_all(txn, &encoded);
            Box::new(move |committed: Result<(), StoreError>| {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(committed.clone().and(result));
                }
            })
        }
    }
}

/// Claims and inserts each append's entries. Every append decides before it writes (an
/// error leaves no partial claim of its own) and sees the claims of the appends before it.
fn append_all(
    txn: &WriteTransaction,
    appends: &[Encoded],
) -> Vec<Result<Vec<Appended>, StoreError>> {
    let now = now_millis();
    let expires = now + DEDUPE_TTL.as_millis() as u64;
    let opened = (|| {
        let keys = txn.open_table(INBOX_KEYS).map_err(be)?;
        let inbox = txn.open_table(INBOX).map_err(be)?;
        let meta = txn.open_table(META).map_err(be)?;
        let seq = meta
            .get("inbox_seq")
            .map_err(be)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok::<_, StoreError>((keys, inbox, meta, seq))
    })();
    let (mut keys, mut inbox, mut meta, mut seq) = match opened {
        Ok(t) => t,
        Err(err) => return appends.iter().map(|_| Err(err.clone())).collect(),
    };
    let mut results = Vec::with_capacity(appends.len());
    for encoded in appends {
        results.push(append_one(
            &mut keys, &mut inbox, &mut seq, encoded, now, expires,
        ));
    }
    if let Err(err) = meta.insert("inbox_seq", seq).map_err(be) {
        return appends.iter().map(|_| Err(err.clone())).collect();
    }
    results
}

fn append_one(
    keys: &mut redb::Table<&str, u64>,
    inbox: &mut redb::Table<u64, &[u8]>,
    seq: &mut u64,
    encoded: &Encoded,
    now: u64,
    expires: u64,
) -> Result<Vec<Appended>, StoreError> {
    // Decide everything before writing anything: an error must leave no partial claim.
    let mut fresh_keys: Vec<&str> = Vec::new();
    let mut verdicts = Vec::with_capacity(encoded.len());
    for (dedupe_keys, _, _) in encoded {
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
        *seq += 1;
        for key in dedupe_keys {
            keys.insert(key.as_str(), expires).map_err(be)?;
        }
        inbox.insert(*seq, bytes.as_slice()).map_err(be)?;
        result.push(Appended::Fresh(Box::new(stored.clone().into_entry(*seq))));
    }
    Ok(result)
}

#[async_trait]
impl Inbox for EmbeddedInbox {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
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
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q.waiting.push((encoded, tx));
            !std::mem::replace(&mut q.scheduled, true)
        };
        if lead && let Err(err) = self.db.submit(Self::append_job(self.queue.clone())) {
            // No job will run: answer everyone waiting (this caller included).
            let waiting = {
                let mut q = self
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.scheduled = false;
                std::mem::take(&mut q.waiting)
            };
            for (_, reply) in waiting {
                let _ = reply.send(Err(err.clone()));
            }
        }
        rx.await
            .map_err(|_| StoreError::unavailable(BACKEND, "the inbox write did not complete"))?
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
