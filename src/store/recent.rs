//! The contexts this process wrote last, kept decoded in memory.
//!
//! Every change of a context is read, apply, compare-and-swap ([`super::update`]): with the
//! embedded store the read is a redb lookup and a JSON parse of the whole document, transcript
//! and all, and a WhatsApp answer or a voice turn did several (the worker's update, the
//! agent's read, the send's checks, the reply's update). When this process is the store's only
//! writer (the embedded store: redb locks its file), the document it wrote last *is* the
//! stored one, so [`super::Contexts`] keeps it here and starts the next read or change from it.
//!
//! The invariant, kept by [`super::Contexts`]: an entry is put only by a successful write made
//! under the customer's write turn, and forgotten under that turn when a write fails or meets
//! a conflict, so an entry is never older than the store. A read that misses goes to the store
//! and does not fill (it would race with a write finishing meanwhile).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::domain::{CustomerContext, CustomerId};

/// Most recently written contexts, least recently used dropped first.
pub struct Recent {
    entries: Mutex<LruCache<CustomerId, Arc<CustomerContext>>>,
}

impl Recent {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, LruCache<CustomerId, Arc<CustomerContext>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The context as this process last wrote it, if it is still kept.
    pub fn get(&self, id: &CustomerId) -> Option<Arc<CustomerContext>> {
        self.entries().get(id).cloned()
    }

    /// Keeps `ctx` (with its new version) as the stored document.
    pub fn put(&self, ctx: CustomerContext) {
        let ctx = Arc::new(ctx);
        self.entries().put(ctx.customer_id.clone(), ctx);
    }

    /// Drops what is kept for `id`: the next read goes to the store.
    pub fn forget(&self, id: &CustomerId) {
        self.entries().pop(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::Version;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{ContextStore, Contexts, StoreError};

    /// The real embedded store, counting its reads, and failing writes when told to.
    struct Counted {
        inner: EmbeddedStore,
        reads: AtomicUsize,
        failing: AtomicBool,
    }

    #[async_trait]
    impl ContextStore for Counted {
        async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get(id).await
        }
        async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
            self.inner.create(ctx).await
        }
        async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("test", "the disk is full"));
            }
            self.inner.replace(ctx).await
        }
    }

    /// `Contexts` keeping `capacity` over a counted store, and one customer written once.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Counted>,
        contexts: Contexts,
        id: CustomerId,
    }

    impl Fixture {
        async fn new(capacity: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Counted {
                inner: EmbeddedStore::open(dir.path()).unwrap(),
                reads: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
            });
            let contexts = Contexts::sole_writer(store.clone(), capacity);
            let id = CustomerId::parse("+14155550101").unwrap();
            contexts.update(&id, bump).await.unwrap();
            Self {
                _dir: dir,
                store,
                contexts,
                id,
            }
        }

        fn reads(&self) -> usize {
            self.store.reads.load(Ordering::SeqCst)
        }

        async fn stored(&self) -> CustomerContext {
            self.store.inner.get(&self.id).await.unwrap().unwrap()
        }

        async fn read(&self) -> CustomerContext {
            self.contexts.get(&self.id).await.unwrap().unwrap()
        }
    }

    fn count(ctx: &CustomerContext) -> u64 {
        ctx.collected_data
            .get("n")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    fn bump(ctx: &mut CustomerContext) {
        let n = count(ctx);
        ctx.collected_data.insert("n".into(), json!(n + 1));
    }

    #[tokio::test]
    async fn what_this_process_wrote_last_is_read_back_without_the_store() {
        let f = Fixture::new(16).await;
        let reads = f.reads();
        for _ in 0..5 {
            f.contexts.update(&f.id, bump).await.unwrap();
        }
        let read = f.read().await;
        assert_eq!(count(&read), 6);
        assert_eq!(f.reads(), reads, "no read reached the store");
        // And the store holds the same document, version and all.
        let stored = f.stored().await;
        assert_eq!(count(&stored), 6);
        assert_eq!(stored.version, read.version);
    }

    #[tokio::test]
    async fn a_write_that_went_around_is_met_as_a_conflict_and_nothing_is_lost() {
        let f = Fixture::new(16).await;
        // Someone writes the store directly, behind the kept copy's back.
        let mut behind = f.stored().await;
        bump(&mut behind);
        f.store.inner.replace(&behind).await.unwrap();
        let (after, ()) = f.contexts.update(&f.id, bump).await.unwrap();
        assert_eq!(
            count(&after),
            3,
            "the change was applied again to the stored document"
        );
        assert_eq!(count(&f.stored().await), 3);
        assert_eq!(count(&f.read().await), 3);
    }

    #[tokio::test]
    async fn a_failed_write_forgets_the_kept_copy() {
        let f = Fixture::new(16).await;
        f.store.failing.store(true, Ordering::SeqCst);
        let failed = f.contexts.update(&f.id, bump).await;
        assert!(matches!(failed, Err(StoreError::Unavailable { .. })));
        f.store.failing.store(false, Ordering::SeqCst);
        let reads = f.reads();
        assert_eq!(count(&f.read().await), 1);
        assert_eq!(f.reads(), reads + 1, "read from the store");
        f.contexts.update(&f.id, bump).await.unwrap();
        assert_eq!(count(&f.stored().await), 2);
    }

    #[tokio::test]
    async fn without_room_nothing_is_kept() {
        let f = Fixture::new(0).await;
        let reads = f.reads();
        assert_eq!(count(&f.read().await), 1);
        assert_eq!(f.reads(), reads + 1);
    }

    fn ctx(id: &str, version: &str) -> CustomerContext {
        let mut c = CustomerContext::new(CustomerId::parse(id).unwrap(), Utc::now());
        c.version = Some(Version::new(version));
        c
    }

    #[test]
    fn keeps_the_last_write_and_drops_the_least_recently_used() {
        let recent = Recent::new(NonZeroUsize::new(2).unwrap());
        let a = CustomerId::parse("+14155550101").unwrap();
        let b = CustomerId::parse("+14155550102").unwrap();
        let c = CustomerId::parse("+14155550103").unwrap();
        recent.put(ctx("+14155550101", "1"));
        recent.put(ctx("+14155550101", "2"));
        recent.put(ctx("+14155550102", "1"));
        assert_eq!(recent.entries().len(), 2);
        assert_eq!(
            recent.get(&a).unwrap().version.as_ref().unwrap().as_str(),
            "2"
        );
        // `a` was just used, so `b` goes when `c` comes.
        recent.put(ctx("+14155550103", "1"));
        assert!(recent.get(&b).is_none());
        assert!(recent.get(&a).is_some() && recent.get(&c).is_some());
        recent.forget(&a);
        assert!(recent.get(&a).is_none());
        assert_eq!(recent.entries().len(), 1);
    }
}
