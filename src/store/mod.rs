//! Storage ports and their adapters.
//!
//! - [`ContextStore`]: the durable home of every `CustomerContext`, with optimistic concurrency.
//!   Adapters: [`embedded::EmbeddedStore`] (redb, the default), [`cosmos::CosmosStore`] (Azure
//!   Cosmos DB for NoSQL), and [`cached::CachedContextStore`] (Redis cache-aside in front of
//!   either).
//! - [`ClaimStore`]: "has anyone handled this key yet?", atomic across replicas. Adapters:
//!   embedded (durable, in the redb file) and Redis (`SET NX PX`).
//!
//! [`Contexts::update`] is the one way to change a context: read, apply, compare-and-swap, and on
//! a conflict re-read and apply again, so no concurrent update is ever lost. Within a replica,
//! updates of one customer are serialised by a striped lock first, so optimistic concurrency
//! only has to settle races between replicas (a few contenders, not hundreds).

pub mod cached;
pub mod claims;
pub mod cosmos;
pub mod cosmos_whatsapp;
pub mod embedded;
pub mod handoffs;
pub mod inbox;
pub mod media;
pub mod messages;
pub mod recent;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rand::Rng;

use crate::domain::{CustomerContext, CustomerId};

pub use claims::{Claim, ClaimStore};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The document changed since it was read (stale version), or a create found it existing.
    #[error("version conflict")]
    Conflict,
    /// `create` of a document that already exists.
    #[error("document already exists")]
    AlreadyExists,
    /// `replace` of a document that does not exist.
    #[error("document not found")]
    NotFound,
    /// The backend could not be reached or answered with a transient failure; retrying later may
    /// succeed. Webhooks answer 503 so that the provider redelivers.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// Stored data could not be decoded, or the backend refused the request for good.
    #[error("{backend} error: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn unavailable(backend: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            backend,
            message: err.to_string(),
        }
    }

    pub fn backend(backend: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Backend {
            backend,
            message: err.to_string(),
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// The durable context store. Implementations enforce versions exactly like Cosmos DB ETags:
/// every successful write returns a new version, and a write carrying a stale one fails with
/// [`StoreError::Conflict`].
#[async_trait]
pub trait ContextStore: Send + Sync + 'static {
    async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError>;

    /// Stores a new context; [`StoreError::AlreadyExists`] if one exists. Returns it with its
    /// version set.
    async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError>;

    /// Replaces a context if its stored version still equals `ctx.version`.
    async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError>;
}

/// A backend that readiness checks with a real round trip.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), StoreError>;
}

/// How many times [`update`] re-reads and re-applies after a conflict. Generous: a writer on
/// one replica can lose several rounds in a row against a steady stream of writes from another
/// (seen with 2 × 100 concurrent updates of one customer on 2 cores); each round costs a read
/// and a write, and the jittered pause spreads the contenders out.
const UPDATE_ATTEMPTS: u32 = 64;

/// Loads the customer's context (creating it when missing), applies `change`, and stores it
/// with compare-and-swap. On a conflict the context is re-read and `change` applied again,
/// after a short jittered pause, up to a bound. `change` must therefore be repeatable: it sees
/// the freshest document on each attempt. Prefer [`Contexts::update`], which also serialises
/// a replica's own writers.
pub async fn update<R>(
    store: &dyn ContextStore,
    id: &CustomerId,
    mut change: impl FnMut(&mut CustomerContext) -> R + Send,
) -> Result<(CustomerContext, R), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = store.get(id).await?;
        let is_new = existing.is_none();
        let mut ctx = existing.unwrap_or_else(|| CustomerContext::new(id.clone(), Utc::now()));
        let outcome = change(&mut ctx);
        ctx.updated_at = Utc::now();
        let written = if is_new {
            store.create(&ctx).await
        } else {
            store.replace(&ctx).await
        };
        match written {
            Ok(stored) => return Ok((stored, outcome)),
            Err(StoreError::Conflict | StoreError::AlreadyExists | StoreError::NotFound)
                if attempt < UPDATE_ATTEMPTS =>
            {
                tokio::time::sleep(conflict_backoff(attempt)).await;
            }
            Err(StoreError::AlreadyExists | StoreError::NotFound) => {
                return Err(StoreError::Conflict);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Full-jitter backoff: contention resolves fastest when writers spread out at random.
fn conflict_backoff(attempt: u32) -> Duration {
    let cap_ms = (2u64 << attempt.min(7)).min(50);
    Duration::from_millis(rand::rng().random_range(0..=cap_ms))
}

/// Number of lock stripes: enough that unrelated keys rarely share one.
const STRIPES: usize = 256;

/// This replica's write turns per key (a customer, a handoff): writers of one document wait for
/// each other here instead of meeting as a version conflict in the store and backing off.
/// Writers on other replicas are still kept apart by compare-and-swap. Cheap to clone; clones
/// share the locks.
#[derive(Clone)]
pub struct Stripes(Arc<[tokio::sync::Mutex<()>]>);

impl Default for Stripes {
    fn default() -> Self {
        Self((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl Stripes {
    /// Waits for `key`'s turn; the turn lasts as long as the guard.
    pub async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.0[(hasher.finish() as usize) % self.0.len()]
            .lock()
            .await
    }
}

/// The handle the service uses for contexts: the store plus this replica's per-customer write
/// turns.
#[derive(Clone)]
pub struct Contexts {
    store: Arc<dyn ContextStore>,
    stripes: Stripes,
    /// The contexts this process wrote last, when it is the store's only writer.
    recent: Option<Arc<recent::Recent>>,
}

impl Contexts {
    pub fn new(store: Arc<dyn ContextStore>) -> Self {
        Self {
            store,
            stripes: Stripes::default(),
            recent: None,
        }
    }

    /// For a store this process alone writes (the embedded one): the last `capacity` contexts
    /// written are kept decoded, and reads and changes start from them instead of the store.
    /// See [`recent`]. Never for a store that other replicas write: a read would miss their
    /// writes.
    pub fn sole_writer(store: Arc<dyn ContextStore>, capacity: usize) -> Self {
        Self {
            recent: std::num::NonZeroUsize::new(capacity).map(|c| Arc::new(recent::Recent::new(c))),
            ..Self::new(store)
        }
    }

    pub fn store(&self) -> &dyn ContextStore {
        self.store.as_ref()
    }

    pub async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
        if let Some(kept) = self.recent.as_ref().and_then(|r| r.get(id)) {
            return Ok(Some(CustomerContext::clone(&kept)));
        }
        self.store.get(id).await
    }

    /// The customer's context, or a new one (not stored) when there is none yet.
    pub async fn get_or_default(&self, id: &CustomerId) -> Result<CustomerContext, StoreError> {
        Ok(self
            .get(id)
            .await?
            .unwrap_or_else(|| CustomerContext::new(id.clone(), Utc::now())))
    }

    /// See [`update`]; concurrent updates of one customer from this replica take turns. With
    /// [`Self::sole_writer`], the change starts from the kept copy; should the store disagree
    /// (a conflict), it is forgotten and the change applied again to the stored document.
    pub async fn update<R>(
        &self,
        id: &CustomerId,
        mut change: impl FnMut(&mut CustomerContext) -> R + Send,
    ) -> Result<(CustomerContext, R), StoreError> {
        let _turn = self.stripes.lock(id.as_str()).await;
        let Some(recent) = &self.recent else {
            return update(self.store.as_ref(), id, change).await;
        };
        if let Some(kept) = recent.get(id) {
            let mut ctx = CustomerContext::clone(&kept);
            drop(kept);
            let outcome = change(&mut ctx);
            ctx.updated_at = Utc::now();
            match self.store.replace(&ctx).await {
                Ok(stored) => {
                    recent.put(stored.clone());
                    return Ok((stored, outcome));
                }
                Err(StoreError::Conflict | StoreError::NotFound) => {
                    tracing::warn!("a kept context was older than the stored one; re-read");
                    recent.forget(id);
                }
                Err(err) => {
                    // Whether the write landed is unknown: the next change reads the store.
                    recent.forget(id);
                    return Err(err);
                }
            }
        }
        match update(self.store.as_ref(), id, change).await {
            Ok((stored, outcome)) => {
                recent.put(stored.clone());
                Ok((stored, outcome))
            }
            Err(err) => {
                recent.forget(id);
                Err(err)
            }
        }
    }
}

/// The ports the rest of the service uses, built from settings by `app`.
#[derive(Clone)]
pub struct Stores {
    pub contexts: Contexts,
    pub handoffs: Arc<dyn handoffs::HandoffStore>,
    pub claims: Arc<dyn ClaimStore>,
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// The embedded database, when it is the durable store (other embedded tables reuse it).
    pub embedded: Option<embedded::EmbeddedDb>,
}
