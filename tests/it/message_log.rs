//! The message log's contract, on the embedded adapter and on Cosmos DB (the test server):
//! status reports applied together answer exactly as they would one by one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use handoff::domain::{CustomerId, DeliveryStatus, Direction, MessageRecord, StatusUpdate};
use handoff::store::cosmos::CosmosStore;
use handoff::store::cosmos_whatsapp::CosmosMessageLog;
use handoff::store::embedded::EmbeddedDb;
use handoff::store::messages::{EmbeddedMessageLog, MessageLog};

use crate::store_contract::cosmos_settings;
use crate::support::services::CosmosServer;

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

fn update(id: &str, status: DeliveryStatus, s: i64) -> StatusUpdate {
    StatusUpdate::new(id, status, at(s))
}

/// Two sent messages; then, in one call: a message's sent and delivered (the second sees the
/// first), a stale report that moves nothing, a repeat, a report for a message not yet
/// recorded (kept for its send), and the other message's read.
async fn statuses_applied_together_answer_as_one_by_one(log: &dyn MessageLog) {
    let customer = CustomerId::parse("+14255550123").unwrap();
    for id in ["out-a", "out-b"] {
        log.record(accepted(id, &customer, 1)).await.unwrap();
    }
    let updates = vec![
        update("out-a", DeliveryStatus::Sent, 2),
        update("out-a", DeliveryStatus::Delivered, 3),
        update("out-a", DeliveryStatus::Sent, 2),
        update("out-a", DeliveryStatus::Delivered, 3),
        update("out-late", DeliveryStatus::Delivered, 4),
        update("out-b", DeliveryStatus::Read, 5),
    ];
    let moved: Vec<Option<DeliveryStatus>> = log
        .apply_statuses(updates)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.map(|r| r.status.unwrap()))
        .collect();
    assert_eq!(
        moved,
        [
            Some(DeliveryStatus::Sent),
            Some(DeliveryStatus::Delivered),
            None,
            None,
            Some(DeliveryStatus::Delivered),
            Some(DeliveryStatus::Read),
        ]
    );
    let status = |r: Option<MessageRecord>| r.and_then(|r| r.status);
    assert_eq!(
        status(log.get("out-a").await.unwrap()),
        Some(DeliveryStatus::Delivered)
    );
    assert_eq!(
        status(log.get("out-b").await.unwrap()),
        Some(DeliveryStatus::Read)
    );
    // The early report waits, unlisted, for its send, which then takes its status.
    assert_eq!(log.list(&customer).await.unwrap().len(), 2);
    log.record(accepted("out-late", &customer, 3))
        .await
        .unwrap();
    let listed = log.list(&customer).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].status, Some(DeliveryStatus::Delivered));
    // Nothing to apply is no write and no answer.
    assert!(log.apply_statuses(Vec::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn embedded_statuses_applied_together_answer_as_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedMessageLog::new(EmbeddedDb::open(dir.path()).unwrap())
        .await
        .unwrap();
    statuses_applied_together_answer_as_one_by_one(&log).await;
}

#[tokio::test]
async fn cosmos_statuses_applied_together_answer_as_one_by_one() {
    let server = CosmosServer::start();
    let store = Arc::new(CosmosStore::new(&cosmos_settings(&server, "message-log")).unwrap());
    let log = CosmosMessageLog::new(store);
    statuses_applied_together_answer_as_one_by_one(&log).await;
}
