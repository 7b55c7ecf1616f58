//! Redis cache-aside in front of a durable context store.
//!
//! Reads try Redis first and fill it from the durable store on a miss; every successful write
//! refreshes the cached copy (with its new version) and a conflict drops it, so the retry in
//! `store::update` re-reads the durable truth. The durable store stays the only authority:
//! a stale cached copy can at worst cause one extra conflict, never a lost update. When Redis is
//! unreachable, everything goes straight to the durable store; the caller never sees an error.
//! Keys whose cached copy could not be refreshed or dropped during an outage are remembered and
//! dropped first thing when Redis answers again, so the cache does not serve what was
//! overwritten while it was away.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::redis::RedisPool;
use super::{ContextStore, StoreError};
use crate::domain::{CustomerContext, CustomerId, Version};

pub struct CachedContextStore {
    durable: Arc<dyn ContextStore>,
    redis: RedisPool,
    ttl: Duration,
    /// Cache keys that may hold an outdated copy because Redis was down when they changed.
    stale: Mutex<HashSet<String>>,
}

/// The cached form carries the version, which the context itself does not serialise.
#[derive(Serialize, Deserialize)]
struct Cached {
    version: Version,
    context: CustomerContext,
}

impl CachedContextStore {
    pub fn new(durable: Arc<dyn ContextStore>, redis: RedisPool, ttl: Duration) -> Self {
        Self {
            durable,
            redis,
            ttl,
            stale: Mutex::new(HashSet::new()),
        }
    }

    fn mark_stale(&self, key: String) {
        if let Ok(mut stale) = self.stale.lock() {
            stale.insert(key);
        }
    }

    /// Drops the copies that changed during an outage. Returns false while Redis is still down.
    async fn drop_stale(&self) -> bool {
        let keys: Vec<String> = match self.stale.lock() {
            Ok(mut stale) if !stale.is_empty() => stale.drain().collect(),
            _ => return true,
        };
        let mut conn = self.redis.connection();
        let del: redis::RedisResult<i64> = conn.del(&keys).await;
        if self.redis.observe(del).is_err() {
            for key in keys {
                self.mark_stale(key);
            }
            return false;
        }
        true
    }

    fn key(&self, id: &CustomerId) -> String {
        self.redis.key(&format!("ctx:{}", id.as_str()))
    }

    async fn read_cache(&self, id: &CustomerId) -> Option<CustomerContext> {
        if !self.drop_stale().await {
            return None;
        }
        let mut conn = self.redis.connection();
        let raw: redis::RedisResult<Option<Vec<u8>>> = conn.get(self.key(id)).await;
        let raw = self.redis.observe(raw).ok()??;
        match serde_json::from_slice::<Cached>(&raw) {
            Ok(cached) => {
                let mut ctx = cached.context;
                ctx.version = Some(cached.version);
                Some(ctx)
            }
            Err(err) => {
                tracing::warn!(error = %err, "dropping undecodable cached context");
                self.forget(id).await;
                None
            }
        }
    }

    async fn write_cache(&self, ctx: &CustomerContext) {
        let Some(version) = ctx.version.clone() else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&Cached {
            version,
            context: ctx.clone(),
        }) else {
            return;
        };
        let key = self.key(&ctx.customer_id);
        if !self.drop_stale().await {
            self.mark_stale(key);
            return;
        }
        let mut conn = self.redis.connection();
        let set: redis::RedisResult<()> = conn.set_ex(&key, bytes, self.ttl.as_secs().max(1)).await;
        if self.redis.observe(set).is_err() {
            self.mark_stale(key);
        }
    }

    async fn forget(&self, id: &CustomerId) {
        let key = self.key(id);
        let mut conn = self.redis.connection();
        let del: redis::RedisResult<i64> = conn.del(&key).await;
        if self.redis.observe(del).is_err() {
            self.mark_stale(key);
        }
    }

    async fn after_write(
        &self,
        id: &CustomerId,
        written: Result<CustomerContext, StoreError>,
    ) -> Result<CustomerContext, StoreError> {
        match &written {
            Ok(ctx) => self.write_cache(ctx).await,
            Err(StoreError::Conflict | StoreError::AlreadyExists | StoreError::NotFound) => {
                self.forget(id).await
            }
            Err(_) => {}
        }
        written
    }
}

#[async_trait]
impl ContextStore for CachedContextStore {
    async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
        if let Some(ctx) = self.read_cache(id).await {
            return Ok(Some(ctx));
        }
        let ctx = self.durable.get(id).await?;
        if let Some(ctx) = &ctx {
            self.write_cache(ctx).await;
        }
        Ok(ctx)
    }

    async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        let written = self.durable.create(ctx).await;
        self.after_write(&ctx.customer_id, written).await
    }

    async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        let written = self.durable.replace(ctx).await;
        self.after_write(&ctx.customer_id, written).await
    }
}
