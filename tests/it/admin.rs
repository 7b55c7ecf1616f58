//! The admin API and its guard, and the metrics endpoint.

use chrono::Utc;
use handoff::config::Secret;
use handoff::domain::{CustomerId, Handoff, Milestone};
use serde_json::Value;

use crate::support::TestApp;

#[tokio::test]
async fn without_a_key_loopback_may_read_customers_and_handoffs() {
    let app = TestApp::spawn().await;
    let ada = CustomerId::parse_phone("+14255550123").unwrap();
    app.state
        .stores
        .contexts
        .update(&ada, |c| c.display_name = Some("Ada".into()))
        .await
        .unwrap();
    let mut h = Handoff::new(ada.clone(), Some("call-1".into()), Utc::now());
    h.apply(Milestone::Accepted, Utc::now(), None).unwrap();
    app.state.stores.handoffs.create(&h).await.unwrap();

    let customer: Value = app
        .http
        .get(app.url("/api/v1/customers/%2B14255550123"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(customer["customer_id"], "+14255550123");
    assert_eq!(customer["display_name"], "Ada");
    assert!(customer["version"].is_string());

    let list = app
        .http
        .get(app.url("/api/v1/handoffs"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["handoffs"][0]["id"], h.id.as_str());
    assert_eq!(list["handoffs"][0]["state"], "accepted");

    let one: Value = app
        .http
        .get(app.url(&format!("/api/v1/handoffs/{}", h.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["history"][0]["state"], "accepted");

    let missing = app
        .http
        .get(app.url("/api/v1/customers/%2B14255550999"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = app
        .http
        .get(app.url("/api/v1/customers/not-a-number"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let bad = app
        .http
        .get(app.url("/api/v1/handoffs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn with_a_key_it_is_required() {
    let app = TestApp::spawn_with(|s| s.admin_api_key = Some(Secret::new("k3y".into()))).await;
    let none = app
        .http
        .get(app.url("/api/v1/handoffs"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = app
        .http
        .get(app.url("/api/v1/handoffs"))
        .header("x-api-key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .http
        .get(app.url("/api/v1/handoffs"))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn metrics_are_exposed_for_prometheus() {
    let app = TestApp::spawn().await;
    metrics::counter!("handoff_test_marker_total").increment(1);
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("handoff_test_marker_total 1"), "{body}");
    assert!(
        body.contains("handoff_voice_calls_answered_total 0"),
        "voice counters: {body}"
    );
}
