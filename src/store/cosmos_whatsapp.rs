//! Cosmos DB adapters for the WhatsApp inbox and message log, in the same database as the
//! contexts (see `cosmos.rs` for ids, errors and set-up). Both containers are partitioned on
//! `/customerId`.
//!
//! - `inbox`: one item per event, id = its dedupe key (the provider message id for received
//!   messages, the Event Grid id for statuses): create-if-absent is the durable claim. A handled
//!   entry is overwritten with `pending: false` and a TTL, so it keeps claiming its key for
//!   [`DEDUPE_TTL`] and then disappears. (The Event Grid id of a received message is claimed in
//!   Redis only.)
//! - `messages`: one item per message, id = provider message id, `record` nested. Statuses are
//!   applied with ETag compare-and-swap. A status for a message not (yet) recorded is kept in
//!   the `orphan` partition and merged when the send is recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_data_cosmos::Query;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::options::{ItemWriteOptions, Precondition};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::StoreError;
use super::cosmos::{CosmosStore, Outcome, encode_id, etag_of, map_error, outcome};
use super::inbox::{Appended, DEDUPE_TTL, EntryKey, Inbox, InboxEntry, InboxEvent, NewEntry};
use super::messages::MessageLog;
use crate::domain::{CustomerId, MessageRecord, StatusUpdate};

const BACKEND: &str = "cosmos";
pub const INBOX_CONTAINER: &str = "inbox";
pub const MESSAGES_CONTAINER: &str = "messages";
const ORPHANS: &str = "orphan";
const CAS_ATTEMPTS: u32 = 8;

/// The first of `n` consecutive arrival seqs: the clock (16 per microsecond, so that replicas
/// interleave by time), never repeating or going backwards within this process. Across
/// replicas two entries may still share a seq; a seq only orders, the entry id identifies.
fn arrival_seqs(n: usize) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_micros().saturating_mul(16);
    let n = n.max(1) as u64;
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(last.max(now).saturating_add(n))
        })
        .unwrap_or(0);
    prev.max(now)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn decode(err: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, format!("undecodable document: {err}"))
}

/// Resolves a container once (lazily, like the context store).
struct Lazy {
    store: std::sync::Arc<CosmosStore>,
    name: &'static str,
    container: OnceCell<ContainerClient>,
}

impl Lazy {
    async fn get(&self) -> Result<&ContainerClient, StoreError> {
        self.container
            .get_or_try_init(|| self.store.extra_container(self.name))
            .await
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InboxDoc {
    id: String,
    customer_id: String,
    seq: u64,
    pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedupe_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<InboxEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

pub struct CosmosInbox {
    container: Lazy,
}

impl CosmosInbox {
    pub fn new(store: std::sync::Arc<CosmosStore>) -> Self {
        Self {
            container: Lazy {
                store,
                name: INBOX_CONTAINER,
                container: OnceCell::new(),
            },
        }
    }
}

#[async_trait]
impl Inbox for CosmosInbox {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        let container = self.container.get().await?;
        let base = arrival_seqs(entries.len());
        let mut created: Vec<(String, String)> = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let key = entry.dedupe_keys.last().cloned().unwrap_or_default();
            let id = encode_id(&key);
            let seq = base + i as u64;
            let doc = InboxDoc {
                id: id.clone(),
                customer_id: entry.partition.clone(),
                seq,
                pending: true,
                dedupe_key: Some(key.clone()),
                event: Some(entry.event.clone()),
                ttl: None,
            };
            match container
                .create_item(entry.partition.clone(), &id, &doc, None)
                .await
            {
                Ok(_) => {
                    created.push((entry.partition.clone(), id));
                    out.push(Appended::Fresh(Box::new(InboxEntry {
                        id: key,
                        seq,
                        partition: entry.partition,
                        event: entry.event,
                    })));
                }
                Err(err) if outcome(&err) == Outcome::Conflict => out.push(Appended::Duplicate),
                Err(err) => {
                    // All or nothing: take back what this call created, so the retry is fresh.
                    for (pk, id) in created {
                        let _ = container.delete_item(pk, &id, None).await;
                    }
                    return Err(map_error(&err));
                }
            }
        }
        Ok(out)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let container = self.container.get().await?;
        // No cross-partition ORDER BY: sort here, so each customer's entries keep their order.
        let mut items: Vec<InboxDoc> = container
            .query_items::<InboxDoc>(
                Query::from("SELECT * FROM c WHERE c.pending = true"),
                FeedScope::full_container(),
                None,
            )
            .await
            .map_err(|e| map_error(&e))?
            .try_collect()
            .await
            .map_err(|e| map_error(&e))?;
        items.sort_by_key(|d| d.seq);
        Ok(items
            .into_iter()
            .filter_map(|d| {
                Some(InboxEntry {
                    id: d.dedupe_key?,
                    seq: d.seq,
                    partition: d.customer_id,
                    event: d.event?,
                })
            })
            .take(limit)
            .collect())
    }

    async fn complete(&self, done: Vec<EntryKey>) -> Result<(), StoreError> {
        let container = self.container.get().await?;
        for key in done {
            let id = encode_id(&key.id);
            let doc = InboxDoc {
                id: id.clone(),
                customer_id: key.partition.clone(),
                seq: key.seq,
                pending: false,
                dedupe_key: None,
                event: None,
                ttl: Some(DEDUPE_TTL.as_secs()),
            };
            container
                .upsert_item(key.partition, &id, &doc, None)
                .await
                .map_err(|e| map_error(&e))?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageDoc {
    id: String,
    customer_id: String,
    seq: u64,
    record: MessageRecord,
    #[serde(rename = "_etag", default, skip_serializing)]
    etag: Option<String>,
}

pub struct CosmosMessageLog {
    container: Lazy,
}

impl CosmosMessageLog {
    pub fn new(store: std::sync::Arc<CosmosStore>) -> Self {
        Self {
            container: Lazy {
                store,
                name: MESSAGES_CONTAINER,
                container: OnceCell::new(),
            },
        }
    }

    async fn read(
        &self,
        partition: &str,
        message_id: &str,
    ) -> Result<Option<MessageDoc>, StoreError> {
        let container = self.container.get().await?;
        match container
            .read_item(partition.to_owned(), &encode_id(message_id), None)
            .await
        {
            Ok(response) => {
                let etag = etag_of(&response);
                let mut doc: MessageDoc = response.into_model().map_err(decode)?;
                doc.etag = doc.etag.or(etag);
                Ok(Some(doc))
            }
            Err(err) if outcome(&err) == Outcome::NotFound => Ok(None),
            Err(err) => Err(map_error(&err)),
        }
    }

    async fn find(&self, message_id: &str) -> Result<Option<MessageDoc>, StoreError> {
        let container = self.container.get().await?;
        let query = Query::from("SELECT * FROM c WHERE c.id = @id")
            .with_parameter("@id", encode_id(message_id))
            .map_err(|e| map_error(&e))?;
        let docs: Vec<MessageDoc> = container
            .query_items::<MessageDoc>(query, FeedScope::full_container(), None)
            .await
            .map_err(|e| map_error(&e))?
            .try_collect()
            .await
            .map_err(|e| map_error(&e))?;
        // A recorded message wins over an orphaned status report.
        let mut docs = docs;
        docs.sort_by_key(|d| d.customer_id == ORPHANS);
        match docs.into_iter().next() {
            // Re-read by point read: the ETag must be current for the compare-and-swap.
            Some(d) => self.read(&d.customer_id, message_id).await,
            None => Ok(None),
        }
    }

    /// Writes `doc` if its ETag still matches (or creates it when it has none).
    async fn write(&self, doc: &MessageDoc) -> Result<bool, StoreError> {
        let container = self.container.get().await?;
        let result = match &doc.etag {
            Some(etag) => {
                let options = ItemWriteOptions::default()
                    .with_precondition(Precondition::if_match(etag.clone()));
                container
                    .replace_item(doc.customer_id.clone(), &doc.id, doc, Some(options))
                    .await
            }
            None => {
                container
                    .create_item(doc.customer_id.clone(), &doc.id, doc, None)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if matches!(
                    outcome(&err),
                    Outcome::PreconditionFailed | Outcome::Conflict | Outcome::NotFound
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(map_error(&err)),
        }
    }
}

#[async_trait]
impl MessageLog for CosmosMessageLog {
    async fn record(&self, record: MessageRecord) -> Result<(), StoreError> {
        let partition = record
            .customer
            .as_ref()
            .map_or(ORPHANS.to_owned(), |c| c.as_str().to_owned());
        let id = record.message_id.clone();
        let doc = MessageDoc {
            id: encode_id(&id),
            customer_id: partition.clone(),
            seq: now_micros(),
            record,
            etag: None,
        };
        // Exists already: a redelivered message, nothing new.
        self.write(&doc).await?;
        // Statuses that arrived before the send was recorded.
        if let Some(orphan) = self.read(ORPHANS, &id).await? {
            for _ in 0..CAS_ATTEMPTS {
                let Some(mut current) = self.read(&partition, &id).await? else {
                    break;
                };
                let sent = current.record.clone();
                let mut merged = orphan.record.clone();
                merged.merge_send(sent);
                current.record = merged;
                if self.write(&current).await? {
                    break;
                }
            }
            let container = self.container.get().await?;
            let _ = container
                .delete_item(ORPHANS.to_owned(), &encode_id(&id), None)
                .await;
        }
        Ok(())
    }

    async fn apply_status(
        &self,
        update: StatusUpdate,
    ) -> Result<Option<MessageRecord>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let found = match &update.customer {
                Some(c) => match self.read(c.as_str(), &update.message_id).await? {
                    Some(d) => Some(d),
                    None => self.find(&update.message_id).await?,
                },
                None => self.find(&update.message_id).await?,
            };
            let mut doc = found.unwrap_or_else(|| MessageDoc {
                id: encode_id(&update.message_id),
                customer_id: ORPHANS.to_owned(),
                seq: now_micros(),
                record: MessageRecord::unsent(update.message_id.clone(), update.at),
                etag: None,
            });
            let mut probe = update.clone();
            if doc.record.customer.is_none() {
                probe.customer = None;
            }
            let moved = doc.record.apply(&probe);
            let learned = doc.record.merge_billing(&probe);
            if !moved && !learned {
                return Ok(None);
            }
            if self.write(&doc).await? {
                return Ok(moved.then_some(doc.record));
            }
        }
        Err(StoreError::unavailable(
            BACKEND,
            format!("message status kept changing during {CAS_ATTEMPTS} attempts"),
        ))
    }

    async fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self.find(message_id).await?.map(|d| d.record))
    }

    async fn list(&self, customer: &CustomerId) -> Result<Vec<MessageRecord>, StoreError> {
        let container = self.container.get().await?;
        let mut docs: Vec<MessageDoc> = container
            .query_items::<MessageDoc>(
                Query::from("SELECT * FROM c"),
                FeedScope::partition(customer.as_str().to_owned()),
                None,
            )
            .await
            .map_err(|e| map_error(&e))?
            .try_collect()
            .await
            .map_err(|e| map_error(&e))?;
        docs.sort_by_key(|d| d.seq);
        Ok(docs.into_iter().map(|d| d.record).collect())
    }
}

#[cfg(test)]
mod seq_tests {
    use super::arrival_seqs;

    #[test]
    fn arrival_seqs_never_repeat_within_a_process_even_in_one_microsecond() {
        let mut last = arrival_seqs(1);
        for n in [1, 40, 1, 17, 1] {
            let base = arrival_seqs(n);
            assert!(base > last, "{base} after {last}");
            last = base + n as u64 - 1;
        }
    }
}
