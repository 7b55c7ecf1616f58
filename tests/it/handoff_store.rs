//! The handoff store, on the embedded store and on the Cosmos DB-compatible server.

use std::sync::Arc;

use chrono::{Duration, Utc};
use handoff::domain::{CustomerId, Handoff, HandoffFailure, Milestone};
use handoff::store::StoreError;
use handoff::store::cosmos::CosmosStore;
use handoff::store::embedded::EmbeddedStore;
use handoff::store::handoffs::{HandoffStore, update_handoff};

use crate::store_contract::cosmos_settings;
use crate::support::services::CosmosServer;

async fn contract(store: Arc<dyn HandoffStore>) {
    let ada = CustomerId::parse_phone("+14255550001").unwrap();
    let bob = CustomerId::parse_phone("+14255550002").unwrap();
    let t0 = Utc::now() - Duration::minutes(10);

    let mut first = Handoff::new(ada.clone(), Some("call-1".into()), t0);
    first.apply(Milestone::Offered, t0, None).unwrap();
    let first = store.create(&first).await.unwrap();
    assert!(first.version.is_some());
    assert!(matches!(
        store.create(&first).await,
        Err(StoreError::AlreadyExists)
    ));

    let mut second = Handoff::new(
        ada.clone(),
        Some("call-2".into()),
        t0 + Duration::minutes(1),
    );
    second.apply(Milestone::Accepted, t0, None).unwrap();
    store.create(&second).await.unwrap();
    let mut other = Handoff::new(
        bob.clone(),
        Some("call-3".into()),
        t0 + Duration::minutes(2),
    );
    other.apply(Milestone::Accepted, t0, None).unwrap();
    other.fail(
        HandoffFailure {
            reason: "opted_out".into(),
            code: None,
            detail: None,
        },
        t0,
    );
    store.create(&other).await.unwrap();

    // Found by id alone, whatever its partition.
    let loaded = store.get(&first.id).await.unwrap().expect("stored");
    assert_eq!(loaded, first);
    assert_eq!(
        store
            .get(&handoff::domain::HandoffId::generate())
            .await
            .unwrap(),
        None
    );

    let updated = update_handoff(store.as_ref(), &first.id, |h| {
        h.apply(Milestone::Accepted, Utc::now(), Some("yes please".into()))
            .is_ok()
    })
    .await
    .unwrap();
    assert_ne!(updated.version, first.version);
    assert!(
        matches!(store.replace(&first).await, Err(StoreError::Conflict)),
        "stale version"
    );

    let ada_handoffs: Vec<_> = store
        .for_customer(&ada)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(
        ada_handoffs,
        vec![second.id.clone(), first.id.clone()],
        "most recent first"
    );
    let mut unfinished: Vec<_> = store
        .unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    unfinished.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(unfinished, expected, "accepted and not failed");
    let all = store.list(2).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, other.id);
}

#[tokio::test]
async fn embedded_handoff_store() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn cosmos_handoff_store() {
    let server = CosmosServer::start();
    contract(Arc::new(
        CosmosStore::new(&cosmos_settings(&server, "handoffs")).unwrap(),
    ))
    .await;
}
