//! WhatsApp over the Meta Cloud API, black box: signed notifications in Meta's own shapes against
//! the running service (sandbox sender), checked through the same message log and context the
//! ACS tests read.

use std::time::Duration;

use handoff::config::{Secret, Settings};
use handoff::domain::CustomerId;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::TestApp;
use crate::whatsapp::{CUSTOMER, eventually, quick};

const APP_SECRET: &str = "meta-app-secret";
const VERIFY_TOKEN: &str = "verify-me";
const PHONE_NUMBER_ID: &str = "106540352242922";
const WA_ID: &str = "14254360097";

fn meta(settings: &mut Settings) {
    quick(settings);
    settings.webhooks.meta_app_secret = Some(Secret::new(APP_SECRET.into()));
    settings.webhooks.meta_verify_token = Some(Secret::new(VERIFY_TOKEN.into()));
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// One `entry` with one `messages` change.
fn entry(messages: Value, statuses: Value) -> Value {
    json!({ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID },
        "contacts": [{ "profile": { "name": "Sheena Nelson" }, "wa_id": WA_ID }],
        "messages": messages,
        "statuses": statuses,
    }}]})
}

fn notification(entries: Vec<Value>) -> Value {
    json!({ "object": "whatsapp_business_account", "entry": entries })
}

fn msg(id: &str, kind: &str, body: Value) -> Value {
    let mut m = json!({ "from": WA_ID, "id": id, "type": kind,
        "timestamp": chrono::Utc::now().timestamp().to_string() });
    if !body.is_null() {
        m[kind] = body;
    }
    m
}

fn status(id: &str, status: &str, error: Option<u32>) -> Value {
    let mut s = json!({ "id": id, "status": status, "recipient_id": WA_ID,
        "timestamp": chrono::Utc::now().timestamp().to_string(),
        "pricing": { "billable": true, "pricing_model": "PMP", "category": "service" } });
    if let Some(code) = error {
        s["errors"] = json!([{ "code": code, "title": "Re-engagement message" }]);
    }
    s
}

async fn post_raw(app: &TestApp, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/webhook/meta"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    req.send().await.unwrap()
}

async fn post(app: &TestApp, n: &Value) -> reqwest::Response {
    let body = serde_json::to_vec(n).unwrap();
    post_raw(app, &body, Some(&sign(&body))).await
}

fn count(m: &[Value], direction: &str) -> usize {
    m.iter().filter(|r| r["direction"] == direction).count()
}

#[tokio::test]
async fn meta_verification_echoes_the_challenge_only_for_the_right_token() {
    let app = TestApp::spawn_with(meta).await;
    let get = |q: &str| app.http.get(app.url(&format!("/webhook/meta?{q}"))).send();
    let r = get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-me")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "1158201444");
    for q in [
        "hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong",
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=verify-me",
        "hub.challenge=1",
    ] {
        let r = get(q).await.unwrap();
        assert_eq!(r.status(), 403, "{q}");
        let body: Value = r.json().await.unwrap();
        assert!(body.is_object(), "our JSON error: {body}");
    }
}

#[tokio::test]
async fn meta_signature_missing_wrong_or_over_reserialised_json_is_refused() {
    let app = TestApp::spawn_with(|s| {
        meta(s);
        s.webhooks.max_body_bytes = 2048;
    })
    .await;
    let n = notification(vec![entry(
        json!([msg("wamid.s1", "text", json!({"body": "hi"}))]),
        json!([]),
    )]);
    let body = serde_json::to_vec(&n).unwrap();
    let good = sign(&body);
    assert_eq!(post_raw(&app, &body, None).await.status(), 401);
    assert_eq!(post_raw(&app, &body, Some("sha256=00")).await.status(), 401);
    assert_eq!(
        post_raw(&app, &body, Some(&sign(b"something else")))
            .await
            .status(),
        401
    );
    // The same JSON with different whitespace is different bytes: refused.
    let pretty = serde_json::to_vec_pretty(&n).unwrap();
    assert_eq!(post_raw(&app, &pretty, Some(&good)).await.status(), 401);
    assert!(crate::whatsapp::messages(&app, CUSTOMER).await.is_empty());
    // Too large: 413, as for Event Grid.
    let big = vec![b' '; 4096];
    assert_eq!(post_raw(&app, &big, Some(&sign(&big))).await.status(), 413);
    // Signed and valid: accepted.
    assert_eq!(post_raw(&app, &body, Some(&good)).await.status(), 200);
    eventually(&app, CUSTOMER, "the signed message recorded", |m| {
        count(m, "inbound") == 1
    })
    .await;
}

#[tokio::test]
async fn meta_without_app_secret_refuses_every_post() {
    let app = TestApp::spawn_with(quick).await;
    let n = notification(vec![entry(
        json!([msg("wamid.x", "text", json!({"body": "hi"}))]),
        json!([]),
    )]);
    assert_eq!(post(&app, &n).await.status(), 401);
}

#[tokio::test]
async fn meta_batch_of_two_entries_is_recorded_in_order_like_acs_and_redelivery_has_no_effect() {
    let app = TestApp::spawn_with(meta).await;
    let mut unsupported = msg("wamid.7", "unsupported", Value::Null);
    unsupported["errors"] = json!([{"code": 131051, "title": "Message type unknown"}]);
    let n = notification(vec![
        entry(
            json!([
                msg(
                    "wamid.1",
                    "text",
                    json!({"body": "Hi, I was on the phone with you"})
                ),
                msg(
                    "wamid.2",
                    "image",
                    json!({"id": "media-1", "mime_type": "image/jpeg", "sha256": "x", "caption": "my bill"})
                ),
            ]),
            json!([]),
        ),
        entry(
            json!([
                msg(
                    "wamid.3",
                    "button",
                    json!({"payload": "handoff-1", "text": "Continue"})
                ),
                msg(
                    "wamid.4",
                    "interactive",
                    json!({"type": "list_reply", "list_reply": {"id": "priority", "title": "Priority", "description": "1-3 days"}})
                ),
                msg(
                    "wamid.5",
                    "location",
                    json!({"latitude": 47.6, "longitude": -122.3, "name": "Office"})
                ),
                msg("wamid.6", "order", json!({"catalog_id": "c"})),
                unsupported,
                msg(
                    "wamid.8",
                    "audio",
                    json!({"id": "media-2", "mime_type": "audio/ogg; codecs=opus", "voice": true})
                ),
            ]),
            json!([]),
        ),
    ]);
    assert_eq!(post(&app, &n).await.status(), 200);
    let m = eventually(&app, CUSTOMER, "eight inbound and a reply", |m| {
        count(m, "inbound") == 8 && count(m, "outbound") >= 1
    })
    .await;
    let kinds: Vec<&str> = m
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "text",
            "image",
            "button",
            "list_reply",
            "location",
            "unknown",
            "unknown",
            "audio"
        ]
    );

    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let ctx = app
        .state
        .stores
        .contexts
        .get(&customer)
        .await
        .unwrap()
        .unwrap();
    let session = ctx.whatsapp.as_ref().unwrap();
    assert_eq!(session.business_number.as_deref(), Some(PHONE_NUMBER_ID));
    assert_eq!(session.wa_id.as_deref(), Some(WA_ID));
    assert!(session.last_inbound_at.is_some());
    assert_eq!(ctx.display_name.as_deref(), Some("Sheena Nelson"));
    let sources: Vec<_> = ctx
        .transcript
        .iter()
        .filter_map(|t| t.source_id.as_deref())
        .collect();
    assert_eq!(
        &sources[..8],
        [
            "wamid.1", "wamid.2", "wamid.3", "wamid.4", "wamid.5", "wamid.6", "wamid.7", "wamid.8"
        ]
    );

    // Meta redelivers the whole notification: acknowledged, no second effect.
    assert_eq!(post(&app, &n).await.status(), 200);
    let marker = notification(vec![entry(
        json!([msg("wamid.9", "text", json!({"body": "one more"}))]),
        json!([]),
    )]);
    post(&app, &marker).await;
    let m = eventually(&app, CUSTOMER, "the marker answered", |m| {
        count(m, "inbound") >= 9 && count(m, "outbound") >= 2
    })
    .await;
    assert_eq!(count(&m, "inbound"), 9, "{m:#?}");
    assert_eq!(count(&m, "outbound"), 2, "{m:#?}");
}

#[tokio::test]
async fn meta_statuses_out_of_order_and_duplicated_end_as_read_and_131047_closes_the_window() {
    let app = TestApp::spawn_with(meta).await;
    let hello = notification(vec![entry(
        json!([msg("wamid.h", "text", json!({"body": "hello"}))]),
        json!([]),
    )]);
    post(&app, &hello).await;
    let m = eventually(&app, CUSTOMER, "a reply", |m| count(m, "outbound") == 1).await;
    let id = m.iter().find(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // played, read, delivered (twice), sent — split over two entries, one duplicated.
    let statuses = notification(vec![
        entry(
            json!([]),
            json!([status(&id, "read", None), status(&id, "delivered", None)]),
        ),
        entry(
            json!([]),
            json!([
                status(&id, "delivered", None),
                status(&id, "sent", None),
                status(&id, "played", None)
            ]),
        ),
    ]);
    assert_eq!(post(&app, &statuses).await.status(), 200);
    assert_eq!(post(&app, &statuses).await.status(), 200);
    // A reaction, then its removal (no emoji): both recorded as inbound reactions.
    let reactions = notification(vec![entry(
        json!([
            msg(
                "wamid.r1",
                "reaction",
                json!({"message_id": id, "emoji": "\u{1F44D}"})
            ),
            msg("wamid.r2", "reaction", json!({"message_id": id})),
        ]),
        json!([]),
    )]);
    post(&app, &reactions).await;
    let m = eventually(&app, CUSTOMER, "read and both reactions", |m| {
        m.iter()
            .any(|r| r["message_id"] == id.as_str() && r["status"] == "read")
            && m.iter().filter(|r| r["kind"] == "reaction").count() == 2
    })
    .await;
    let first = m.iter().find(|r| r["message_id"] == id.as_str()).unwrap();
    assert_eq!(first["status"], "read", "{first:#?}");

    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let ctx = app
        .state
        .stores
        .contexts
        .get(&customer)
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<&str> = ctx.transcript.iter().map(|t| t.text.as_str()).collect();
    assert!(lines.contains(&"[reaction removed]"), "{lines:?}");

    // The latest reply fails with 131047: the window is closed, as with ACS.
    let last = m.iter().rfind(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        &app,
        &notification(vec![entry(
            json!([]),
            json!([status(&last, "failed", Some(131047))]),
        )]),
    )
    .await;
    let m = eventually(&app, CUSTOMER, "the failure recorded", |m| {
        m.iter()
            .any(|r| r["message_id"] == last.as_str() && r["status"] == "failed")
    })
    .await;
    let failed = m.iter().find(|r| r["message_id"] == last.as_str()).unwrap();
    assert_eq!(failed["error_code"], "131047");
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
}
