//! Claims: the idempotency primitive every ingress uses.
//!
//! `claim(key, ttl)` answers [`Claim::Fresh`] to exactly one caller among any number of
//! concurrent callers on any replica, and [`Claim::Duplicate`] to the rest until the claim
//! expires. `release` gives a claim back when the work it guarded could not be recorded, so a
//! redelivery is not mistaken for a duplicate.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Fresh,
    Duplicate,
}

#[async_trait]
pub trait ClaimStore: Send + Sync + 'static {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError>;
    async fn release(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes expired claims, for stores without native expiry. Returns how many went.
    async fn purge_expired(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}
