//! Azure Cosmos DB for NoSQL adapter (in progress).

use async_trait::async_trait;

use super::{Claim, ClaimStore, ContextStore, HealthCheck, StoreError};
use crate::config::CosmosSettings;
use crate::domain::{CustomerContext, CustomerId};

const BACKEND: &str = "cosmos";

pub struct CosmosStore {
    _settings: CosmosSettings,
}

impl CosmosStore {
    pub fn new(settings: &CosmosSettings) -> Result<Self, StoreError> {
        Ok(Self {
            _settings: settings.clone(),
        })
    }
}

#[async_trait]
impl ContextStore for CosmosStore {
    async fn get(&self, _id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
    async fn create(&self, _ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
    async fn replace(&self, _ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
}

#[async_trait]
impl HealthCheck for CosmosStore {
    fn name(&self) -> &'static str {
        BACKEND
    }
    async fn check(&self) -> Result<(), StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
}

#[async_trait]
impl ClaimStore for CosmosStore {
    async fn claim(&self, _key: &str, _ttl: std::time::Duration) -> Result<Claim, StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
    async fn release(&self, _key: &str) -> Result<(), StoreError> {
        Err(StoreError::unavailable(BACKEND, "not implemented"))
    }
}
