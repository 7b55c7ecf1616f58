//! WhatsApp inbound, black box: Event Grid deliveries of ACS Advanced Messaging events against
//! the running service (sandbox provider), checked through the API and the stored context.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use handoff::app::Hooks;
use handoff::config::{Secret, Settings};
use handoff::domain::CustomerId;
use handoff::store::StoreError;
use handoff::store::inbox::{Appended, EntryKey, Inbox, InboxEntry, NewEntry};
use serde_json::{Value, json};

use crate::support::TestApp;

pub const CHANNEL: &str = "0f0eb78e-a576-1dfc-b414-0f0756de3338";
pub const CUSTOMER: &str = "+14254360097";

pub fn quick(settings: &mut Settings) {
    settings.whatsapp.burst_wait = Duration::from_millis(30);
    settings.whatsapp.recipient_min_interval = Duration::ZERO;
}

pub fn received(event_id: &str, message_id: &str, data: Value) -> Value {
    let mut data = data;
    data["channelType"] = json!("whatsapp");
    data["messageId"] = json!(message_id);
    if data.get("from").is_none() {
        data["from"] = json!("14254360097");
    }
    data["to"] = json!(CHANNEL);
    if data.get("receivedTimeStamp").is_none() {
        data["receivedTimestamp"] = json!(chrono::Utc::now().to_rfc3339());
    }
    json!({
        "id": event_id,
        "topic": "/subscriptions/x/resourcegroups/rg/providers/microsoft.communication/communicationservices/acs",
        "subject": format!("advancedMessage/sender/14254360097/recipient/{CHANNEL}"),
        "eventType": "Microsoft.Communication.AdvancedMessageReceived",
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "data": data,
        "dataVersion": "1.0",
        "metadataVersion": "1"
    })
}

pub fn text(event_id: &str, message_id: &str, text: &str) -> Value {
    received(
        event_id,
        message_id,
        json!({"messageType": "text", "content": text}),
    )
}

pub fn status(event_id: &str, message_id: &str, status: &str, error: Option<&str>) -> Value {
    let mut data = json!({
        "messageId": message_id, "status": status, "channelType": "whatsapp",
        "from": CHANNEL, "to": "14254360097",
        "receivedTimestamp": chrono::Utc::now().to_rfc3339(),
    });
    if let Some(code) = error {
        data["error"] = json!({"channelCode": code, "channelMessage": "Message failed"});
    }
    json!({
        "id": event_id,
        "subject": format!("advancedMessage/{message_id}/status/{status}"),
        "eventType": "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "data": data, "dataVersion": "1.0", "metadataVersion": "1"
    })
}

pub async fn deliver(app: &TestApp, events: &Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/v1/channels/whatsapp/webhook"))
        .json(events)
        .send()
        .await
        .unwrap()
}

pub async fn messages(app: &TestApp, customer: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url(&format!(
            "/api/v1/customers/{}/messages",
            customer.replace('+', "%2B")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["messages"].as_array().unwrap().clone()
}

/// Polls until `done` holds for the customer's messages (panics after a generous deadline).
pub async fn eventually(
    app: &TestApp,
    customer: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..300 {
        let m = messages(app, customer).await;
        if done(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = messages(app, customer).await;
    panic!("{what}: never happened; messages: {m:#?}");
}

fn count(m: &[Value], direction: &str) -> usize {
    m.iter().filter(|r| r["direction"] == direction).count()
}

#[tokio::test]
async fn whatsapp_batch_is_recorded_in_order_answered_once_and_redelivery_has_no_effect() {
    let app = TestApp::spawn_with(quick).await;
    let batch = json!([
        text("e1", "m1", "Hi, I was on the phone with you"),
        received(
            "e2",
            "m2",
            json!({"messageType": "image",
            "media": {"mimeType": "image/jpeg", "id": "media-1", "caption": "my bill"}})
        ),
        received(
            "e3",
            "m3",
            json!({"messageType": "button",
            "context": {"from": CHANNEL, "id": "x"}, "button": {"text": "Continue", "payload": "handoff-1"}})
        ),
        received(
            "e4",
            "m4",
            json!({"messageType": "interactive",
            "interactive": {"type": "listReply", "listReply": {"id": "priority", "title": "Priority", "description": "1-3 days"}}})
        ),
        status("e5", "not-ours", "Delivered", None),
    ]);
    let r = deliver(&app, &batch).await;
    assert_eq!(r.status(), 200);

    let m = eventually(&app, CUSTOMER, "four inbound and a delivered reply", |m| {
        count(m, "inbound") == 4
            && m.iter()
                .any(|r| r["direction"] == "outbound" && r["status"] == "delivered")
    })
    .await;
    let kinds: Vec<&str> = m
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text", "image", "button", "list_reply"]);
    assert_eq!(count(&m, "outbound"), 1, "a burst is answered once: {m:#?}");

    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let ctx = app.context(&customer).await;
    let session = ctx.whatsapp.as_ref().unwrap();
    assert_eq!(session.business_number.as_deref(), Some(CHANNEL));
    assert_eq!(session.wa_id.as_deref(), Some("14254360097"));
    assert!(session.last_inbound_at.is_some());
    let sources: Vec<_> = ctx
        .transcript
        .iter()
        .filter_map(|t| t.source_id.as_deref())
        .collect();
    assert_eq!(&sources[..4], ["m1", "m2", "m3", "m4"]);

    // The same batch again: acknowledged, no second effect. A later message is handled after
    // anything the duplicates could have caused (one customer's events are handled in order).
    let r = deliver(&app, &batch).await;
    assert_eq!(r.status(), 200);
    deliver(&app, &json!([text("e6", "m6", "one more thing")])).await;
    let m = eventually(&app, CUSTOMER, "the marker message answered", |m| {
        count(m, "inbound") >= 5 && count(m, "outbound") >= 2
    })
    .await;
    assert_eq!(count(&m, "inbound"), 5, "{m:#?}");
    assert_eq!(count(&m, "outbound"), 2, "{m:#?}");
    let ctx = app.context(&customer).await;
    let customer_turns = ctx
        .transcript
        .iter()
        .filter(|t| t.role == handoff::domain::Role::Customer)
        .count();
    assert_eq!(customer_turns, 5);
}

#[tokio::test]
async fn whatsapp_statuses_in_reverse_order_end_as_read_and_131047_closes_the_window() {
    let app = TestApp::spawn_with(quick).await;
    deliver(&app, &json!([text("e1", "m1", "hello")])).await;
    let m = eventually(&app, CUSTOMER, "a reply", |m| {
        m.iter()
            .any(|r| r["direction"] == "outbound" && r["status"] == "delivered")
    })
    .await;
    let reply = m.iter().find(|r| r["direction"] == "outbound").unwrap();
    let id = reply["message_id"].as_str().unwrap().to_owned();

    // read, then delivered, then sent: the end state is read, each spelled differently.
    let mut late = status("s3", &id, "sent", None);
    let ts = late["data"]["receivedTimestamp"].take();
    late["data"]["receivedTimeStamp"] = ts;
    deliver(
        &app,
        &json!([
            status("s1", &id, "READ", None),
            status("s2", &id, "Delivered", None)
        ]),
    )
    .await;
    deliver(&app, &json!([late])).await;
    deliver(&app, &json!([text("e2", "m2", "marker")])).await;
    let m = eventually(&app, CUSTOMER, "marker answered", |m| {
        m.iter().filter(|r| r["direction"] == "outbound").count() == 2
    })
    .await;
    let first = m.iter().find(|r| r["message_id"] == id.as_str()).unwrap();
    assert_eq!(first["status"], "read", "{first:#?}");

    // A failure with 131047 on the second reply marks the window closed.
    let second = m.iter().rfind(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    deliver(
        &app,
        &json!([status("s4", &second, "Failed", Some("131047"))]),
    )
    .await;
    let m = eventually(&app, CUSTOMER, "the failure recorded", |m| {
        m.iter()
            .any(|r| r["message_id"] == second.as_str() && r["status"] == "failed")
    })
    .await;
    let failed = m
        .iter()
        .find(|r| r["message_id"] == second.as_str())
        .unwrap();
    assert_eq!(failed["error_code"], "131047");
    // The log is written first, then the context: wait for the context too.
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let mut closed = false;
    for _ in 0..300 {
        let ctx = app.state.stores.contexts.get(&customer).await.unwrap();
        if ctx
            .and_then(|c| c.whatsapp)
            .is_some_and(|s| s.window_closed_at.is_some())
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "131047 never marked the window closed");
    let refused = app
        .state
        .whatsapp
        .send(
            &customer,
            handoff::domain::OutboundMessage::text("hi"),
            handoff::whatsapp::Initiation::Reply,
        )
        .await;
    assert!(
        matches!(refused, Err(handoff::whatsapp::SendError::WindowClosed)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn whatsapp_hidden_number_customers_are_keyed_by_bsuid() {
    let app = TestApp::spawn_with(quick).await;
    let event = received(
        "e1",
        "m1",
        json!({"messageType": "text", "content": "hi", "from": "", "fromBSUID": "US.13491208655302741918",
               "receivedTimeStamp": chrono::Utc::now().to_rfc3339()}),
    );
    assert_eq!(deliver(&app, &json!([event])).await.status(), 200);
    eventually(
        &app,
        "bsuid:US.13491208655302741918",
        "a reply to a BSUID",
        |m| m.iter().any(|r| r["direction"] == "outbound"),
    )
    .await;
}

#[tokio::test]
async fn whatsapp_webhook_handshakes_and_refusals() {
    let app = TestApp::spawn_with(|s| {
        quick(s);
        s.webhooks.event_grid_secret = Some(Secret::new("s3cret".into()));
        s.webhooks.max_body_bytes = 2048;
    })
    .await;
    let url = |q: &str| app.url(&format!("/api/v1/channels/whatsapp/webhook{q}"));

    let validation = json!([{"id": "v1", "topic": "/subscriptions/x", "subject": "",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://rp/validate"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": "2018-01-25T22:12:19.4556811Z",
        "metadataVersion": "1", "dataVersion": "1"}]);
    let r = app
        .http
        .post(url("?code=s3cret"))
        .json(&validation)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["validationResponse"],
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    );

    let r = app
        .http
        .request(reqwest::Method::OPTIONS, url("?code=s3cret"))
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["webhook-allowed-origin"], "eventgrid.azure.net");

    for q in ["", "?code=wrong"] {
        let r = app
            .http
            .post(url(q))
            .json(&validation)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }

    let r = app
        .http
        .post(url("?code=s3cret"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");

    let big = json!([text("e1", "m1", &"x".repeat(4096))]);
    let r = app
        .http
        .post(url("?code=s3cret"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Unknown event types are acknowledged, ignored and counted; CloudEvents are accepted.
    let unknown = json!({"id": "c1", "source": "/x", "type": "Microsoft.Communication.SomethingNew",
        "specversion": "1.0", "time": "2024-02-23T23:56:52Z", "data": {}});
    let r = app
        .http
        .post(url("?code=s3cret"))
        .header("content-type", "application/cloudevents+json")
        .body(unknown.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.state.whatsapp.unknown_event_counts()["Microsoft.Communication.SomethingNew"],
        1
    );
}

/// An inbox whose backend can be switched off, as a store outage would.
struct SwitchableInbox {
    inner: Arc<dyn Inbox>,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl Inbox for SwitchableInbox {
    async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test", "switched off"));
        }
        self.inner.append(entries).await
    }
    async fn pending(&self, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        self.inner.pending(limit).await
    }
    async fn complete(&self, done: Vec<EntryKey>) -> Result<(), StoreError> {
        self.inner.complete(done).await
    }
}

#[tokio::test]
async fn whatsapp_store_down_answers_503_and_the_retried_delivery_is_processed_once() {
    let down = Arc::new(AtomicBool::new(true));
    let switch = down.clone();
    let hooks = Hooks {
        wrap_inbox: Some(Box::new(move |inner| {
            Arc::new(SwitchableInbox {
                inner,
                down: switch,
            })
        })),
        ..Hooks::default()
    };
    let app = TestApp::spawn_hooked(quick, hooks).await;
    let batch = json!([text("e1", "m1", "are you there?")]);
    let r = deliver(&app, &batch).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(messages(&app, CUSTOMER).await.is_empty());

    down.store(false, Ordering::SeqCst);
    assert_eq!(deliver(&app, &batch).await.status(), 200);
    assert_eq!(deliver(&app, &batch).await.status(), 200);
    deliver(&app, &json!([text("e2", "m2", "marker")])).await;
    let m = eventually(&app, CUSTOMER, "both messages handled", |m| {
        count(m, "inbound") == 2 && count(m, "outbound") >= 1
    })
    .await;
    let inbound: Vec<_> = m
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(inbound, ["m1", "m2"]);
}

#[tokio::test]
async fn whatsapp_store_down_with_redis_releases_the_fast_path_claim() {
    let redis = crate::support::services::RedisServer::start();
    let down = Arc::new(AtomicBool::new(true));
    let switch = down.clone();
    let hooks = Hooks {
        wrap_inbox: Some(Box::new(move |inner| {
            Arc::new(SwitchableInbox {
                inner,
                down: switch,
            })
        })),
        ..Hooks::default()
    };
    let url = redis.url();
    let app = TestApp::spawn_hooked(
        |s| {
            quick(s);
            s.redis_url = Some(Secret::new(url));
        },
        hooks,
    )
    .await;
    let batch = json!([text("e1", "m1", "are you there?")]);
    assert_eq!(deliver(&app, &batch).await.status(), 503);
    down.store(false, Ordering::SeqCst);
    assert_eq!(deliver(&app, &batch).await.status(), 200);
    eventually(&app, CUSTOMER, "the retried delivery handled", |m| {
        count(m, "inbound") == 1
    })
    .await;
}

/// The same story with the inbox and message log in Cosmos DB (the test server).
#[tokio::test]
async fn whatsapp_on_cosmos_records_answers_dedupes_and_orders_statuses() {
    let cosmos = crate::support::services::CosmosServer::start();
    let endpoint = cosmos.endpoint();
    let app = TestApp::spawn_with(move |s| {
        quick(s);
        s.cosmos = Some(handoff::config::CosmosSettings {
            endpoint,
            key: Some(Secret::new(
                crate::support::services::COSMOS_EMULATOR_KEY.to_owned(),
            )),
            database: "wa".into(),
            managed_identity_client_id: None,
        });
    })
    .await;
    let batch = json!([
        text("e1", "m1", "hello from cosmos"),
        received(
            "e2",
            "m2",
            json!({"messageType": "reaction", "reaction": {"messageId": "m1", "emoji": "👍"}})
        ),
    ]);
    assert_eq!(deliver(&app, &batch).await.status(), 200);
    let m = eventually(&app, CUSTOMER, "two inbound and a delivered reply", |m| {
        count(m, "inbound") == 2
            && m.iter()
                .any(|r| r["direction"] == "outbound" && r["status"] == "delivered")
    })
    .await;
    let id = m.iter().find(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(deliver(&app, &batch).await.status(), 200);
    deliver(
        &app,
        &json!([
            status("s1", &id, "Read", None),
            status("s2", &id, "delivered", None)
        ]),
    )
    .await;
    deliver(&app, &json!([text("e3", "m3", "marker")])).await;
    let m = eventually(&app, CUSTOMER, "the marker answered", |m| {
        count(m, "inbound") == 3 && count(m, "outbound") == 2
    })
    .await;
    let first = m.iter().find(|r| r["message_id"] == id.as_str()).unwrap();
    assert_eq!(first["status"], "read", "{first:#?}");
    let inbound: Vec<_> = m
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(inbound, ["m1", "m2", "m3"]);
}

/// Pitfall 1: a reply WhatsApp refused later because the window had closed (131047 in its
/// status) is followed by the configured re-engagement template, once.
#[tokio::test]
async fn a_reply_failed_with_131047_falls_back_to_the_reengagement_template() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.json");
    std::fs::write(
        &templates,
        r#"[{"name":"we_replied","language":"en_US","category":"utility","body_parameters":1,"buttons":[]}]"#,
    )
    .unwrap();
    let app = TestApp::spawn_with(|s| {
        quick(s);
        s.whatsapp.templates_file = Some(templates);
        s.whatsapp.reengagement_template = Some("we_replied".into());
    })
    .await;
    assert_eq!(
        deliver(&app, &json!([text("e-r1", "m-r1", "hello?")]))
            .await
            .status(),
        200
    );
    let log = eventually(&app, CUSTOMER, "the agent's reply", |m| {
        count(m, "outbound") == 1
    })
    .await;
    let reply = log.iter().find(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = json!([status("e-r2", &reply, "failed", Some("131047"))]);
    assert_eq!(deliver(&app, &failed).await.status(), 200);
    let log = eventually(&app, CUSTOMER, "the re-engagement template", |m| {
        count(m, "outbound") == 2
    })
    .await;
    assert_eq!(
        log.iter().filter(|r| r["kind"] == "template").count(),
        1,
        "{log:#?}"
    );
    let sent = app.state.whatsapp.sandbox_records().unwrap();
    assert!(sent.iter().any(|r| matches!(&r.message,
        handoff::domain::OutboundMessage::Template(t) if t.name == "we_replied" && t.body == vec!["there".to_owned()])));
    // The same failure delivered again changes nothing: no second template.
    assert_eq!(
        deliver(
            &app,
            &json!([status("e-r3", &reply, "failed", Some("131047"))])
        )
        .await
        .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count(&messages(&app, CUSTOMER).await, "outbound"), 2);
}

/// The embedded inbox's log across a restart: what was acknowledged is handled exactly once by
/// the next process on the same data directory, and its dedupe keys, replayed from the log
/// (the first process stops long before its first checkpoint), still make redeliveries
/// duplicates.
#[tokio::test]
async fn whatsapp_acknowledged_deliveries_survive_a_restart_and_are_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        let mut s = Settings::embedded(dir.path());
        s.host = "127.0.0.1".parse().unwrap();
        s.port = 0;
        quick(&mut s);
        s
    };
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            text(
                &format!("r-e{i}"),
                &format!("r-m{i}"),
                &format!("message {i}"),
            )
        })
        .collect();
    let app = TestApp::start(settings()).await;
    for event in &batch {
        assert_eq!(deliver(&app, &json!([event])).await.status(), 200);
    }
    app.stop().await;

    let app = TestApp::start(settings()).await;
    assert_eq!(deliver(&app, &json!([batch[0]])).await.status(), 200);
    for event in &batch {
        let body = serde_json::to_vec(&json!([event])).unwrap();
        let ingested = app.state.whatsapp.ingest(&body).await.unwrap();
        assert_eq!(
            ingested,
            handoff::whatsapp::Ingested::Events {
                fresh: 0,
                duplicate: 1,
                ignored: 0
            },
            "a redelivery after the restart"
        );
    }
    deliver(&app, &json!([text("r-e-last", "r-m-last", "the last one")])).await;
    let m = eventually(&app, CUSTOMER, "every message recorded", |m| {
        count(m, "inbound") >= 21
    })
    .await;
    assert_eq!(count(&m, "inbound"), 21, "{m:#?}");
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let ctx = app.context(&customer).await;
    let mut sources: Vec<&str> = ctx
        .transcript
        .iter()
        .filter(|t| t.role == handoff::domain::Role::Customer)
        .filter_map(|t| t.source_id.as_deref())
        .collect();
    assert_eq!(sources.len(), 21, "each message is one turn: {sources:?}");
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len(), 21);
    app.stop().await;
}
