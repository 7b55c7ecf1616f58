//! The message log: every WhatsApp message in either direction, per customer, with its kind,
//! provider message id, status history and error code, never its text. Status reports are
//! applied with compare-and-swap through the pure state machine in `domain::message`, so
//! duplicated and reordered reports never move a status backwards. Embedded adapter: redb
//! tables written through the group-commit writer (each write op is atomic there, which is
//! the compare-and-swap). (Cosmos design: one item per message, id = provider message id,
//! partition key `/customerId`, ETag CAS.)

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};

use super::StoreError;
use super::embedded::EmbeddedDb;
use crate::domain::{CustomerId, MessageRecord, StatusUpdate};

#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Records a message; if a record with its id exists (a status that came first, or a
    /// redelivered inbound message), merges instead of duplicating.
    async fn record(&self, record: MessageRecord) -> Result<(), StoreError>;
    /// Records several messages, in order, as [`Self::record`] would one by one. Adapters that
    /// can write them together (one transaction) do.
    async fn record_many(&self, records: Vec<MessageRecord>) -> Result<(), StoreError> {
        for record in records {
            self.record(record).await?;
        }
        Ok(())
    }
    /// Applies a status report. Returns the record when the report moved its status; `None`
    /// when it did not (billing details it carries are kept either way). A report for an
    /// unknown message is kept, so the send can merge it.
    async fn apply_status(&self, update: StatusUpdate)
    -> Result<Option<MessageRecord>, StoreError>;
    /// Applies status reports in order, as [`Self::apply_status`] would one by one, returning
    /// each one's answer. Adapters that can write them together (one transaction) do, and
    /// then either all of them are applied or none: a retry after a failure must see every
    /// report's effect again, not only the ones a partial write left unapplied.
    async fn apply_statuses(
        &self,
        updates: Vec<StatusUpdate>,
    ) -> Result<Vec<Option<MessageRecord>>, StoreError> {
        let mut moved = Vec::with_capacity(updates.len());
        for update in updates {
            moved.push(self.apply_status(update).await?);
        }
        Ok(moved)
    }
    async fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError>;
    /// The customer's messages in the order they were recorded.
    async fn list(&self, customer: &CustomerId) -> Result<Vec<MessageRecord>, StoreError>;
}

const BACKEND: &str = "embedded";
/// provider message id → record JSON.
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// (customer id, sequence) → provider message id.
const BY_CUSTOMER: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("messages_by_customer");
const META: TableDefinition<&str, u64> = TableDefinition::new("whatsapp_meta");
/// The last sequence number given to a customer's message (in `META`).
const SEQ: &str = "message_seq";

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

#[derive(Clone)]
pub struct EmbeddedMessageLog {
    db: EmbeddedDb,
}

impl EmbeddedMessageLog {
    pub async fn new(db: EmbeddedDb) -> Result<Self, StoreError> {
        db.write(|txn| {
            txn.open_table(MESSAGES).map_err(be)?;
            txn.open_table(BY_CUSTOMER).map_err(be)?;
            txn.open_table(META).map_err(be)?;
            Ok(())
        })
        .await?;
        Ok(Self { db })
    }
}

fn load(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<MessageRecord>, StoreError> {
    table
        .get(id)
        .map_err(be)?
        .map(|v| serde_json::from_slice(v.value()).map_err(be))
        .transpose()
}

/// The log's tables, opened once for all the records of one write (opening a table costs
/// about as much as inserting into it), with the sequence counter read once and written back
/// by [`Self::close`].
struct Writing<'t> {
    messages: redb::Table<'t, &'static str, &'static [u8]>,
    by_customer: redb::Table<'t, (&'static str, u64), &'static str>,
    meta: redb::Table<'t, &'static str, u64>,
    seq: u64,
    first_seq: u64,
}

impl<'t> Writing<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        let meta = txn.open_table(META).map_err(be)?;
        let seq = meta.get(SEQ).map_err(be)?.map(|v| v.value()).unwrap_or(0);
        Ok(Self {
            messages: txn.open_table(MESSAGES).map_err(be)?,
            by_customer: txn.open_table(BY_CUSTOMER).map_err(be)?,
            meta,
            seq,
            first_seq: seq,
        })
    }

    /// Records a message; if a record with its id exists (a status that came first, or a
    /// redelivered inbound message), merges instead of duplicating.
    fn record(&mut self, record: MessageRecord) -> Result<(), StoreError> {
        let merged = match load(&self.messages, &record.message_id)? {
            // A redelivered message: nothing new.
            Some(e) if e.customer.is_some() => return Ok(()),
            Some(mut early) => {
                early.merge_send(record);
                early
            }
            None => record,
        };
        let bytes = serde_json::to_vec(&merged).map_err(be)?;
        self.messages
            .insert(merged.message_id.as_str(), bytes.as_slice())
            .map_err(be)?;
        if let Some(customer) = &merged.customer {
            self.seq += 1;
            self.by_customer
                .insert((customer.as_str(), self.seq), merged.message_id.as_str())
                .map_err(be)?;
        }
        Ok(())
    }

    fn close(mut self) -> Result<(), StoreError> {
        if self.seq != self.first_seq {
            self.meta.insert(SEQ, self.seq).map_err(be)?;
        }
        Ok(())
    }
}

fn record_all(
    txn: &redb::WriteTransaction,
    records: impl IntoIterator<Item = MessageRecord>,
) -> Result<(), StoreError> {
    let mut writing = Writing::open(txn)?;
    for record in records {
        writing.record(record)?;
    }
    writing.close()
}

/// One status report applied to its record: whether the status moved, and whether the record
/// changed at all (a report that does not move the status may still carry billing details).
fn apply_one(record: &mut MessageRecord, update: &StatusUpdate) -> (bool, bool) {
    // Keep the customer unset on orphans: `record` indexes when the send arrives.
    let mut probe = update.clone();
    if record.customer.is_none() {
        probe.customer = None;
    }
    let moved = record.apply(&probe);
    let learned = record.merge_billing(&probe);
    (moved, moved || learned)
}

#[async_trait]
impl MessageLog for EmbeddedMessageLog {
    async fn record(&self, record: MessageRecord) -> Result<(), StoreError> {
        self.db.write(move |txn| record_all(txn, [record])).await
    }

    async fn record_many(&self, records: Vec<MessageRecord>) -> Result<(), StoreError> {
        self.db.write(move |txn| record_all(txn, records)).await
    }

    async fn apply_status(
        &self,
        update: StatusUpdate,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let mut moved = self.apply_statuses(vec![update]).await?;
        Ok(moved.pop().flatten())
    }

    async fn apply_statuses(
        &self,
        updates: Vec<StatusUpdate>,
    ) -> Result<Vec<Option<MessageRecord>>, StoreError> {
        self.db
            .write(move |txn| {
                let mut messages = txn.open_table(MESSAGES).map_err(be)?;
                // Every report is applied in memory first (a later one sees an earlier one's
                // change to the same message) and only then written: a failure writes nothing.
                let mut changed: Vec<MessageRecord> = Vec::new();
                let mut moved = Vec::with_capacity(updates.len());
                for update in &updates {
                    let known = changed
                        .iter()
                        .position(|r| r.message_id == update.message_id);
                    let mut record = match known {
                        Some(i) => changed.swap_remove(i),
                        None => match load(&messages, &update.message_id)? {
                            Some(r) => r,
                            // The customer is filled in when the send is recorded; an orphan
                            // is not listed.
                            None => MessageRecord::unsent(update.message_id.clone(), update.at),
                        },
                    };
                    let (moved_now, learned) = apply_one(&mut record, update);
                    moved.push(moved_now.then(|| record.clone()));
                    if learned || known.is_some() {
                        changed.push(record);
                    }
                }
                let encoded = changed
                    .iter()
                    .map(|r| Ok((r.message_id.as_str(), serde_json::to_vec(r).map_err(be)?)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                for (id, bytes) in encoded {
                    messages.insert(id, bytes.as_slice()).map_err(be)?;
                }
                Ok(moved)
            })
            .await
    }

    async fn get(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let id = message_id.to_owned();
        self.db
            .read(move |txn| {
                let messages = txn.open_table(MESSAGES).map_err(be)?;
                load(&messages, &id)
            })
            .await
    }

    async fn list(&self, customer: &CustomerId) -> Result<Vec<MessageRecord>, StoreError> {
        let customer = customer.as_str().to_owned();
        self.db
            .read(move |txn| {
                let by_customer = txn.open_table(BY_CUSTOMER).map_err(be)?;
                let messages = txn.open_table(MESSAGES).map_err(be)?;
                let mut out = Vec::new();
                for item in by_customer
                    .range((customer.as_str(), 0)..=(customer.as_str(), u64::MAX))
                    .map_err(be)?
                {
                    let (_, id) = item.map_err(be)?;
                    if let Some(r) = load(&messages, id.value())? {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::{DeliveryStatus, Direction};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    /// An outbound text the provider accepted.
    fn accepted(id: &str, customer: &CustomerId, s: i64) -> MessageRecord {
        let mut sent = MessageRecord::new(
            id,
            Some(customer.clone()),
            Direction::Outbound,
            "text",
            at(s),
        );
        sent.status = Some(DeliveryStatus::Accepted);
        sent
    }

    fn status(status: DeliveryStatus, s: i64) -> StatusUpdate {
        StatusUpdate::new("out-1", status, at(s))
    }

    #[tokio::test]
    async fn statuses_only_move_forward_and_an_early_one_is_merged_into_the_send() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedMessageLog::new(EmbeddedDb::open(dir.path()).unwrap())
            .await
            .unwrap();
        let customer = CustomerId::parse("+14255550123").unwrap();
        // Delivered arrives before the send is recorded: kept, not listed.
        assert!(
            log.apply_status(status(DeliveryStatus::Delivered, 2))
                .await
                .unwrap()
                .is_some()
        );
        assert!(log.list(&customer).await.unwrap().is_empty());
        log.record(accepted("out-1", &customer, 1)).await.unwrap();
        let listed = log.list(&customer).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, Some(DeliveryStatus::Delivered));
        assert!(
            log.apply_status(status(DeliveryStatus::Sent, 1))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            log.apply_status(status(DeliveryStatus::Read, 3))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            log.apply_status(status(DeliveryStatus::Read, 3))
                .await
                .unwrap()
                .is_none()
        );
        let r = log.get("out-1").await.unwrap().unwrap();
        assert_eq!(r.status, Some(DeliveryStatus::Read));
    }

    #[tokio::test]
    async fn statuses_applied_together_are_all_written_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let log = EmbeddedMessageLog::new(db.clone()).await.unwrap();
        let customer = CustomerId::parse("+14255550123").unwrap();
        log.record(accepted("out-1", &customer, 1)).await.unwrap();
        // A record that cannot be read (a damaged value).
        db.write(|txn| {
            let mut messages = txn.open_table(MESSAGES).map_err(be)?;
            messages
                .insert("out-2", b"{not json".as_slice())
                .map_err(be)?;
            Ok(())
        })
        .await
        .unwrap();
        let both = vec![
            status(DeliveryStatus::Delivered, 2),
            StatusUpdate::new("out-2", DeliveryStatus::Delivered, at(2)),
        ];
        assert!(log.apply_statuses(both.clone()).await.is_err());
        let r = log.get("out-1").await.unwrap().unwrap();
        assert_eq!(
            r.status,
            Some(DeliveryStatus::Accepted),
            "the first report is not written when a later one fails, so a retry applies it \
             (and answers that it moved) again"
        );
        // Repaired, the retry moves both.
        db.write(|txn| {
            txn.open_table(MESSAGES)
                .map_err(be)?
                .remove("out-2")
                .map_err(be)?;
            Ok(())
        })
        .await
        .unwrap();
        let moved = log.apply_statuses(both).await.unwrap();
        assert!(moved.iter().all(Option::is_some), "{moved:?}");
    }
}
