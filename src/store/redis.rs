//! The shared Redis connection: claims, cache, locks and queues for every replica.
//!
//! The connection is lazy and self-healing (`ConnectionManager`), so the service starts while
//! Redis is down and recovers when it returns. Every call carries a short timeout: a Redis
//! outage must cost a request milliseconds, not hang it. Outages are logged once when they
//! start and once when they end, not once per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Claim, ClaimStore, HealthCheck, StoreError};
use crate::config::Secret;

const BACKEND: &str = "redis";

#[derive(Clone)]
pub struct RedisPool {
    manager: ConnectionManager,
    down: Arc<AtomicBool>,
    prefix: Arc<str>,
}

impl RedisPool {
    /// Builds the pool without connecting; `prefix` namespaces every key this service writes.
    pub fn new(url: &Secret<String>, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose().as_str())
            .map_err(|e| StoreError::backend(BACKEND, format!("invalid REDIS_URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::backend(BACKEND, e))?;
        Ok(Self {
            manager,
            down: Arc::new(AtomicBool::new(false)),
            prefix: prefix.into(),
        })
    }

    /// The full key for a logical key.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A connection handle; cheap (multiplexed).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Records the outcome of a call for outage logging and converts its error.
    pub fn observe<T>(&self, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(backend = BACKEND, "redis is reachable again");
                }
                Ok(value)
            }
            Err(err) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(backend = BACKEND, error = %err, "redis is unreachable; degrading until it returns");
                }
                Err(StoreError::unavailable(BACKEND, err))
            }
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl HealthCheck for RedisPool {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.connection();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        self.observe(pong).map(drop)
    }
}

/// Claims as `SET key 1 NX PX ttl`: Redis runs each command atomically, so exactly one of any
/// number of concurrent claimers on any replica sees the key set.
#[derive(Clone)]
pub struct RedisClaims {
    pool: RedisPool,
}

impl RedisClaims {
    pub fn new(pool: RedisPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ClaimStore for RedisClaims {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let mut conn = self.pool.connection();
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.pool.key(&format!("claim:{key}")))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await;
        Ok(match self.pool.observe(set)? {
            Some(_) => Claim::Fresh,
            None => Claim::Duplicate,
        })
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.pool.connection();
        let deleted: redis::RedisResult<i64> =
            conn.del(self.pool.key(&format!("claim:{key}"))).await;
        self.pool.observe(deleted).map(drop)
    }
}
