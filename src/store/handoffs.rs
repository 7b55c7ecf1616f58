//! Where handoffs live: the saga's durable state, read by any replica.
//!
//! Same concurrency rules as contexts: writes carry the version they read; a stale one is a
//! conflict, and [`update_handoff`] re-reads and re-applies.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use redb::{ReadableTable, TableDefinition};

use super::embedded::EmbeddedStore;
use super::{StoreError, Stripes};
use crate::domain::{CustomerId, Handoff, HandoffId, Version};

const BACKEND: &str = "embedded";
/// handoff id → revision (8 bytes, big-endian) + handoff JSON.
const HANDOFFS: TableDefinition<&str, &[u8]> = TableDefinition::new("handoffs");
/// `{customer id}\0{handoff id}` → (): a customer's handoffs without reading everyone's (the
/// WhatsApp worker asks on every inbound message and delivery status).
const BY_CUSTOMER: TableDefinition<&str, ()> = TableDefinition::new("handoffs_by_customer");

/// handoff id → (): the sagas a worker still has to drive, so the recovery sweep reads only them.
const UNFINISHED: TableDefinition<&str, ()> = TableDefinition::new("handoffs_unfinished");

/// Keeps the unfinished index in step with a write of `handoff`.
fn index_unfinished(txn: &redb::WriteTransaction, handoff: &Handoff) -> Result<(), StoreError> {
    let mut index = txn
        .open_table(UNFINISHED)
        .map_err(|e| StoreError::backend(BACKEND, e))?;
    let key = handoff.id.as_str();
    if handoff.unfinished() {
        index
            .insert(key, ())
            .map_err(|e| StoreError::backend(BACKEND, e))?;
    } else {
        index
            .remove(key)
            .map_err(|e| StoreError::backend(BACKEND, e))?;
    }
    Ok(())
}

fn customer_key(customer: &CustomerId, id: &HandoffId) -> String {
    format!("{}\0{}", customer.as_str(), id.as_str())
}

#[async_trait]
pub trait HandoffStore: Send + Sync + 'static {
    async fn get(&self, id: &HandoffId) -> Result<Option<Handoff>, StoreError>;
    async fn create(&self, handoff: &Handoff) -> Result<Handoff, StoreError>;
    async fn replace(&self, handoff: &Handoff) -> Result<Handoff, StoreError>;
    /// Most recent first, at most `limit`.
    async fn list(&self, limit: usize) -> Result<Vec<Handoff>, StoreError>;
    /// A customer's handoffs, most recent first.
    async fn for_customer(&self, customer: &CustomerId) -> Result<Vec<Handoff>, StoreError>;
    /// Handoffs a worker still has to drive (see `Handoff::unfinished`).
    async fn unfinished(&self) -> Result<Vec<Handoff>, StoreError>;
}

/// The handle the saga uses for handoffs: the store plus this replica's per-handoff write turns
/// (the saga, delivery statuses and the call's end can update one handoff at the same moment).
#[derive(Clone)]
pub struct Handoffs {
    store: Arc<dyn HandoffStore>,
    stripes: Stripes,
}

impl Handoffs {
    pub fn new(store: Arc<dyn HandoffStore>) -> Self {
        Self {
            store,
            stripes: Stripes::default(),
        }
    }

    pub fn store(&self) -> &dyn HandoffStore {
        self.store.as_ref()
    }

    /// See [`update_handoff`]; concurrent updates of one handoff from this replica take turns.
    pub async fn update(
        &self,
        id: &HandoffId,
        change: impl FnMut(&mut Handoff) -> bool + Send,
    ) -> Result<Handoff, StoreError> {
        let _turn = self.stripes.lock(id.as_str()).await;
        update_handoff(self.store.as_ref(), id, change).await
    }
}

/// Re-reads and re-applies `change` on conflict, like `store::update` for contexts. `change`
/// returns `false` to leave the handoff as it is (nothing is written).
pub async fn update_handoff(
    store: &dyn HandoffStore,
    id: &HandoffId,
    mut change: impl FnMut(&mut Handoff) -> bool + Send,
) -> Result<Handoff, StoreError> {
    for attempt in 1..=16u32 {
        let mut handoff = store.get(id).await?.ok_or(StoreError::NotFound)?;
        if !change(&mut handoff) {
            return Ok(handoff);
        }
        match store.replace(&handoff).await {
            Ok(stored) => return Ok(stored),
            Err(StoreError::Conflict) => {
                let cap = (2u64 << attempt.min(6)).min(100);
                let pause = Duration::from_millis(rand::rng().random_range(0..=cap));
                tokio::time::sleep(pause).await;
            }
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Conflict)
}

fn encode(revision: u64, handoff: &Handoff) -> Result<Vec<u8>, StoreError> {
    let mut out = revision.to_be_bytes().to_vec();
    serde_json::to_writer(&mut out, handoff).map_err(|e| StoreError::backend(BACKEND, e))?;
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Handoff, StoreError> {
    let (rev, json) = bytes
        .split_at_checked(8)
        .ok_or_else(|| StoreError::backend(BACKEND, "truncated handoff"))?;
    let revision = u64::from_be_bytes(rev.try_into().expect("split at 8"));
    let mut handoff: Handoff =
        serde_json::from_slice(json).map_err(|e| StoreError::backend(BACKEND, e))?;
    handoff.version = Some(Version::new(revision.to_string()));
    Ok(handoff)
}

fn revision(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl EmbeddedStore {
    async fn all_handoffs(&self) -> Result<Vec<Handoff>, StoreError> {
        self.db()
            .read(|txn| {
                let table = match txn.open_table(HANDOFFS) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(StoreError::backend(BACKEND, e)),
                };
                let mut out = Vec::new();
                for row in table.iter().map_err(|e| StoreError::backend(BACKEND, e))? {
                    let (_, value) = row.map_err(|e| StoreError::backend(BACKEND, e))?;
                    out.push(decode(value.value())?);
                }
                out.sort_by_key(|h| std::cmp::Reverse(h.created_at));
                Ok(out)
            })
            .await
    }
}

#[async_trait]
impl HandoffStore for EmbeddedStore {
    async fn get(&self, id: &HandoffId) -> Result<Option<Handoff>, StoreError> {
        let key = id.as_str().to_owned();
        self.db()
            .read(move |txn| {
                let table = match txn.open_table(HANDOFFS) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(StoreError::backend(BACKEND, e)),
                };
                let value = table
                    .get(key.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                value.map(|v| decode(v.value())).transpose()
            })
            .await
    }

    async fn create(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
        let mut handoff = handoff.clone();
        self.db()
            .write(move |txn| {
                let mut table = txn
                    .open_table(HANDOFFS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                if table
                    .get(handoff.id.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?
                    .is_some()
                {
                    return Err(StoreError::AlreadyExists);
                }
                let bytes = encode(1, &handoff)?;
                table
                    .insert(handoff.id.as_str(), bytes.as_slice())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                // The customer of a handoff never changes, so the index is written once.
                txn.open_table(BY_CUSTOMER)
                    .map_err(|e| StoreError::backend(BACKEND, e))?
                    .insert(customer_key(&handoff.customer_id, &handoff.id).as_str(), ())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                index_unfinished(txn, &handoff)?;
                handoff.version = Some(Version::new("1"));
                Ok(handoff)
            })
            .await
    }

    async fn replace(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
        let mut handoff = handoff.clone();
        self.db()
            .write(move |txn| {
                let mut table = txn
                    .open_table(HANDOFFS)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                let stored = table
                    .get(handoff.id.as_str())
                    .map_err(|e| StoreError::backend(BACKEND, e))?
                    .map(|v| revision(v.value()))
                    .ok_or(StoreError::NotFound)?;
                if handoff.version.as_ref().map(Version::as_str)
                    != Some(stored.to_string().as_str())
                {
                    return Err(StoreError::Conflict);
                }
                let next = stored + 1;
                let bytes = encode(next, &handoff)?;
                table
                    .insert(handoff.id.as_str(), bytes.as_slice())
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                index_unfinished(txn, &handoff)?;
                handoff.version = Some(Version::new(next.to_string()));
                Ok(handoff)
            })
            .await
    }

    async fn list(&self, limit: usize) -> Result<Vec<Handoff>, StoreError> {
        let mut all = self.all_handoffs().await?;
        all.truncate(limit);
        Ok(all)
    }

    async fn for_customer(&self, customer: &CustomerId) -> Result<Vec<Handoff>, StoreError> {
        let prefix = format!("{}\0", customer.as_str());
        self.db()
            .read(move |txn| {
                let (index, handoffs) =
                    match (txn.open_table(BY_CUSTOMER), txn.open_table(HANDOFFS)) {
                        (Ok(i), Ok(h)) => (i, h),
                        (Err(redb::TableError::TableDoesNotExist(_)), _)
                        | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                        (Err(e), _) | (_, Err(e)) => return Err(StoreError::backend(BACKEND, e)),
                    };
                let mut out = Vec::new();
                let range = index
                    .range(prefix.as_str()..)
                    .map_err(|e| StoreError::backend(BACKEND, e))?;
                for row in range {
                    let (key, _) = row.map_err(|e| StoreError::backend(BACKEND, e))?;
                    let Some(id) = key.value().strip_prefix(prefix.as_str()).map(str::to_owned)
                    else {
                        break;
                    };
                    if let Some(value) = handoffs
                        .get(id.as_str())
                        .map_err(|e| StoreError::backend(BACKEND, e))?
                    {
                        out.push(decode(value.value())?);
                    }
                }
                out.sort_by_key(|h| std::cmp::Reverse(h.created_at));
                Ok(out)
            })
            .await
    }

    async fn unfinished(&self) -> Result<Vec<Handoff>, StoreError> {
        self.db()
            .read(|txn| {
                let (index, handoffs) = match (txn.open_table(UNFINISHED), txn.open_table(HANDOFFS))
                {
                    (Ok(i), Ok(h)) => (i, h),
                    (Err(redb::TableError::TableDoesNotExist(_)), _)
                    | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                    (Err(e), _) | (_, Err(e)) => return Err(StoreError::backend(BACKEND, e)),
                };
                let mut out = Vec::new();
                for row in index.iter().map_err(|e| StoreError::backend(BACKEND, e))? {
                    let (id, _) = row.map_err(|e| StoreError::backend(BACKEND, e))?;
                    if let Some(value) = handoffs
                        .get(id.value())
                        .map_err(|e| StoreError::backend(BACKEND, e))?
                    {
                        out.push(decode(value.value())?);
                    }
                }
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::Milestone;

    #[tokio::test]
    async fn round_trip_conflict_and_queries() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let customer = CustomerId::parse_phone("+14255550123").unwrap();
        let mut h = Handoff::new(customer.clone(), Some("call-1".into()), Utc::now());
        h.apply(Milestone::Accepted, Utc::now(), None).unwrap();
        let v1 = store.create(&h).await.unwrap();
        assert!(matches!(
            store.create(&h).await,
            Err(StoreError::AlreadyExists)
        ));
        let loaded = HandoffStore::get(&store, &h.id).await.unwrap().unwrap();
        assert_eq!(loaded, v1);
        let updated = update_handoff(&store, &h.id, |h| {
            h.apply(Milestone::Summarised, Utc::now(), None).is_ok()
        })
        .await
        .unwrap();
        assert_ne!(updated.version, v1.version);
        assert!(matches!(
            store.replace(&v1).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(store.unfinished().await.unwrap().len(), 1);
        assert_eq!(store.for_customer(&customer).await.unwrap().len(), 1);
        assert_eq!(store.list(10).await.unwrap()[0].id, h.id);
    }

    /// The embedded store, counting the version conflicts it answers.
    struct Conflicts {
        inner: EmbeddedStore,
        seen: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl HandoffStore for Conflicts {
        async fn get(&self, id: &HandoffId) -> Result<Option<Handoff>, StoreError> {
            HandoffStore::get(&self.inner, id).await
        }
        async fn create(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
            HandoffStore::create(&self.inner, handoff).await
        }
        async fn replace(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
            let replaced = HandoffStore::replace(&self.inner, handoff).await;
            if matches!(replaced, Err(StoreError::Conflict)) {
                self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            replaced
        }
        async fn list(&self, limit: usize) -> Result<Vec<Handoff>, StoreError> {
            self.inner.list(limit).await
        }
        async fn for_customer(&self, customer: &CustomerId) -> Result<Vec<Handoff>, StoreError> {
            self.inner.for_customer(customer).await
        }
        async fn unfinished(&self) -> Result<Vec<Handoff>, StoreError> {
            self.inner.unfinished().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_of_one_handoff_take_turns_instead_of_conflicting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Conflicts {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            seen: Default::default(),
        });
        let customer = CustomerId::parse_phone("+14255550123").unwrap();
        let h = Handoff::new(customer, Some("call-1".into()), Utc::now());
        store.create(&h).await.unwrap();
        let handoffs = Handoffs::new(store.clone());
        let writers: Vec<_> = (0..20)
            .map(|_| {
                let (handoffs, id) = (handoffs.clone(), h.id.clone());
                tokio::spawn(async move {
                    handoffs
                        .update(&id, |h| {
                            h.summary.get_or_insert_default().push('x');
                            true
                        })
                        .await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let stored = HandoffStore::get(store.as_ref(), &h.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.summary.as_deref(), Some("x".repeat(20).as_str()));
        assert_eq!(store.seen.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
