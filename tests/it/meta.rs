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
use crate::support::fake_graph::{self, FakeGraph, Route};
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

/// Like Meta: billing details ride on `sent` (and on one of delivered/read, left out here so
/// that the test shows a late `sent` still brings them).
fn status(id: &str, status: &str, error: Option<u32>) -> Value {
    let mut s = json!({ "id": id, "status": status, "recipient_id": WA_ID,
        "timestamp": chrono::Utc::now().timestamp().to_string() });
    if status == "sent" {
        s["pricing"] = json!({ "billable": false, "pricing_model": "PMP",
            "type": "free_customer_service", "category": "service" });
        s["conversation"] = json!({ "id": "conv-1", "expiration_timestamp": "1750943820",
            "origin": { "type": "service" } });
    }
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
    let ctx = app.context(&customer).await;
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
    // `sent` came after `read`: the status stayed, its billing details were kept.
    assert_eq!(
        first["pricing"],
        json!({"category": "service", "billable": false, "pricing_model": "PMP",
            "type": "free_customer_service"}),
        "{first:#?}"
    );
    assert_eq!(
        first["conversation"],
        json!({"id": "conv-1", "origin": "service", "expires_at": "2025-06-26T13:17:00Z"})
    );

    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let ctx = app.context(&customer).await;
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

const TOKEN: &str = "EAAG-test-token";

async fn spawn_with_graph() -> (TestApp, FakeGraph) {
    let graph = FakeGraph::start(TOKEN, &[PHONE_NUMBER_ID]).await;
    let base = graph.base_url.clone();
    let app = TestApp::spawn_with(move |s| {
        meta(s);
        s.whatsapp.meta_access_token = Some(Secret::new(TOKEN.into()));
        s.whatsapp.meta_phone_number_id = Some(PHONE_NUMBER_ID.into());
        s.whatsapp.meta_graph_base_url = base;
    })
    .await;
    (app, graph)
}

#[tokio::test]
async fn meta_provider_sends_every_kind_to_the_graph_api_with_version_and_token() {
    use handoff::domain::OutboundMessage;
    use handoff::domain::outbound::{Interactive, InteractiveAction, ReplyButton};
    use handoff::whatsapp::Initiation;

    let (app, graph) = spawn_with_graph().await;
    assert_eq!(
        app.state.whatsapp.provider(),
        handoff::domain::WhatsAppProvider::Meta
    );
    // The customer writes: the agent's reply goes to the Graph API.
    let hello = notification(vec![entry(
        json!([msg("wamid.in", "text", json!({"body": "hello"}))]),
        json!([]),
    )]);
    post(&app, &hello).await;
    let m = eventually(&app, CUSTOMER, "a reply through Meta", |m| {
        count(m, "outbound") == 1
    })
    .await;
    let reply = m.iter().find(|r| r["direction"] == "outbound").unwrap();
    assert!(
        reply["message_id"]
            .as_str()
            .unwrap()
            .starts_with("wamid.out")
    );
    let first = &graph.on(Route::Send)[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        first.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(first.body["messaging_product"], "whatsapp");
    assert_eq!(first.body["to"], WA_ID);
    assert_eq!(first.body["type"], "text");
    assert!(first.body["text"]["body"].is_string());

    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let send = |message: OutboundMessage| {
        let app = &app;
        let customer = customer.clone();
        async move {
            app.state
                .whatsapp
                .send(&customer, message, Initiation::Reply)
                .await
        }
    };
    send(OutboundMessage::Text {
        text: "About that bill".into(),
        reply_to: Some("wamid.in".into()),
    })
    .await
    .unwrap();
    send(OutboundMessage::Image {
        url: "https://example.com/a.jpg".into(),
        caption: Some("bill".into()),
    })
    .await
    .unwrap();
    send(OutboundMessage::Document {
        url: "1234567890".into(),
        caption: None,
        file_name: Some("bill.pdf".into()),
    })
    .await
    .unwrap();
    send(OutboundMessage::Reaction {
        message_id: "wamid.in".into(),
        emoji: "\u{1F44D}".into(),
    })
    .await
    .unwrap();
    send(OutboundMessage::Interactive(Interactive {
        header: Some("Order".into()),
        body: "Confirm?".into(),
        footer: None,
        action: InteractiveAction::Buttons {
            buttons: vec![ReplyButton {
                id: "yes".into(),
                title: "Yes".into(),
            }],
        },
    }))
    .await
    .unwrap();
    app.state
        .whatsapp
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into(), "your bill".into()],
            Some("handoff-42".into()),
        )
        .await
        .unwrap();
    let r = graph.on(Route::Send);
    assert!(graph.on(Route::Unexpected).is_empty(), "{r:#?}");
    assert!(r.iter().all(|r| r.method == "POST"
        && r.path == format!("/v23.0/{PHONE_NUMBER_ID}/messages")
        && r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}"))));
    // A reply to a message quotes it (context); nothing else does.
    assert_eq!(
        r[1].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID,
            "type": "text", "context": {"message_id": "wamid.in"},
            "text": {"preview_url": false, "body": "About that bill"}})
    );
    assert!(r.iter().filter(|r| r.body.get("context").is_some()).count() == 1);
    let r = &r[1..];
    assert_eq!(
        r[1].body["image"],
        json!({"link": "https://example.com/a.jpg", "caption": "bill"})
    );
    assert_eq!(
        r[2].body["document"],
        json!({"id": "1234567890", "filename": "bill.pdf"})
    );
    assert_eq!(
        r[3].body["reaction"],
        json!({"message_id": "wamid.in", "emoji": "\u{1F44D}"})
    );
    assert_eq!(r[4].body["interactive"]["type"], "button");
    assert_eq!(
        r[4].body["interactive"]["action"]["buttons"][0],
        json!({"type": "reply", "reply": {"id": "yes", "title": "Yes"}})
    );
    let template = &r[5].body["template"];
    assert_eq!(template["name"], "conversation_continuation");
    assert_eq!(template["language"]["code"], "en_US");
    assert_eq!(
        template["components"],
        json!([
            {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "your bill"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "handoff-42"}]}
        ])
    );
}

#[tokio::test]
async fn meta_provider_retries_rate_limits_and_reports_window_closed_without_retry() {
    use handoff::domain::OutboundMessage;
    use handoff::whatsapp::{Initiation, SendError, SenderError};

    let (app, graph) = spawn_with_graph().await;
    let hello = notification(vec![entry(
        json!([msg("wamid.in", "text", json!({"body": "hello"}))]),
        json!([]),
    )]);
    post(&app, &hello).await;
    eventually(&app, CUSTOMER, "a reply through Meta", |m| {
        count(m, "outbound") == 1
    })
    .await;
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let before = graph.requests().len();

    // 130429 (throughput) then 131056 (pair rate): retried, honouring Retry-After, then sent.
    graph.fail_with(400, 130429, Some("0"));
    graph.fail_with(400, 131056, None);
    let sent = app
        .state
        .whatsapp
        .send(&customer, OutboundMessage::text("hi"), Initiation::Reply)
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(graph.requests().len(), before + 3);

    // 131047 and 131048: rejected at once, with the code.
    for code in [131047, 131048] {
        graph.fail_with(400, code, None);
        let before = graph.requests().len();
        let err = app
            .state
            .whatsapp
            .send(&customer, OutboundMessage::text("hi"), Initiation::Reply)
            .await
            .unwrap_err();
        match err {
            SendError::Sender(SenderError::Rejected { code: got, .. }) => {
                assert_eq!(got, code.to_string())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(graph.requests().len(), before + 1, "{code} is not retried");
    }
}

#[tokio::test]
async fn meta_handoff_story_sends_the_continuation_template_through_the_graph_api() {
    use crate::handoff_story::{call, handoff_of, known_customer, story_settings};
    use handoff::domain::Milestone;

    let graph = FakeGraph::start(TOKEN, &[PHONE_NUMBER_ID]).await;
    let base = graph.base_url.clone();
    let port = crate::support::services::free_port();
    let app = TestApp::spawn_with(move |s| {
        story_settings(port)(s);
        s.whatsapp.meta_access_token = Some(Secret::new(TOKEN.into()));
        s.whatsapp.meta_phone_number_id = Some(PHONE_NUMBER_ID.into());
        s.whatsapp.meta_graph_base_url = base;
    })
    .await;
    known_customer(&app).await;
    let (_call_id, mut socket) = call(&app, "ev-meta-story").await;
    socket
        .final_text("My power has been out since this morning", 10_000)
        .await;
    crate::voice::wait_context(&app, CUSTOMER, "the offer remembered", |c| {
        c.transcript.iter().any(|t| {
            t.role == handoff::domain::Role::Agent
                && t.text.ends_with(handoff::agent::scripted::OFFER_QUESTION)
        })
    })
    .await;
    socket.final_text("Yes, that works for me", 20_000).await;
    let done = handoff_of(&app, "template sent", |h| {
        h.reached(Milestone::TemplateSent)
    })
    .await;

    let templates: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|r| r.body["type"] == "template")
        .collect();
    assert_eq!(templates.len(), 1, "{templates:#?}");
    let t = &templates[0];
    assert_eq!(t.path, format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        t.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(t.body["to"], WA_ID);
    let components = t.body["template"]["components"].as_array().unwrap();
    let body = &components[0];
    assert_eq!(body["type"], "body");
    assert_eq!(body["parameters"][0]["text"], "Ada");
    assert!(
        body["parameters"][1]["text"]
            .as_str()
            .unwrap()
            .contains("My power has been out")
    );
    assert_eq!(
        components[1],
        json!({"type": "button", "sub_type": "quick_reply", "index": "0",
            "parameters": [{"type": "payload", "payload": done.id.as_str()}]})
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn media_msg(id: &str, kind: &str, media_id: &str, mime: &str, extra: Value) -> Value {
    let mut body = json!({"id": media_id, "mime_type": mime, "sha256": "ignored-by-the-service"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    msg(id, kind, body)
}

async fn context(app: &TestApp) -> handoff::domain::CustomerContext {
    app.context(&CustomerId::parse(CUSTOMER).unwrap()).await
}

/// Inbound media over Meta: every kind is resolved (`GET /{version}/{media-id}`) and downloaded
/// from the URL Graph hands out, with the bearer token, at once; stored behind the media store
/// and recorded on the message exactly like ACS media.
#[tokio::test]
async fn meta_inbound_media_of_every_kind_is_resolved_downloaded_and_stored() {
    let (app, graph) = spawn_with_graph().await;
    let items = [
        (
            "wamid.m1",
            "image",
            "1001",
            "image/jpeg",
            json!({"caption": "my bill"}),
        ),
        ("wamid.m2", "video", "1002", "video/mp4", json!({})),
        (
            "wamid.m3",
            "audio",
            "1003",
            "audio/ogg; codecs=opus",
            json!({"voice": true}),
        ),
        (
            "wamid.m4",
            "document",
            "1004",
            "application/pdf",
            json!({"filename": "bill.pdf"}),
        ),
        (
            "wamid.m5",
            "sticker",
            "1005",
            "image/webp",
            json!({"animated": false}),
        ),
    ];
    for (_, kind, media_id, mime, _) in &items {
        graph.serve_media(
            media_id,
            format!("{kind} bytes of {media_id}").as_bytes(),
            mime,
        );
    }
    let messages: Vec<Value> = items
        .iter()
        .map(|(id, kind, media_id, mime, extra)| media_msg(id, kind, media_id, mime, extra.clone()))
        .collect();
    assert_eq!(
        post(&app, &notification(vec![entry(json!(messages), json!([]))]))
            .await
            .status(),
        200
    );
    let m = eventually(&app, CUSTOMER, "five media messages and a reply", |m| {
        count(m, "inbound") == 5 && count(m, "outbound") == 1
    })
    .await;
    for (id, kind, media_id, mime, _) in &items {
        let record = m.iter().find(|r| r["message_id"] == *id).unwrap();
        let bytes = format!("{kind} bytes of {media_id}");
        assert_eq!(record["kind"], *kind);
        assert_eq!(
            record["media"],
            json!({"media_id": media_id, "available": true, "mime_type": mime,
                "size_bytes": bytes.len(), "sha256": sha256_hex(bytes.as_bytes())}),
            "{record:#?}"
        );
        let stored = app.state.whatsapp.stored_media(media_id).await.unwrap();
        assert_eq!(stored.as_deref(), Some(bytes.as_bytes()));

        let resolves: Vec<_> = graph
            .on(Route::Resolve)
            .into_iter()
            .filter(|r| r.path == format!("/v23.0/{media_id}"))
            .collect();
        assert_eq!(resolves.len(), 1, "{resolves:#?}");
        assert_eq!(resolves[0].method, "GET");
        let downloads: Vec<_> = graph
            .on(Route::Download)
            .into_iter()
            .filter(|r| r.path == format!("/lookaside/{media_id}/1"))
            .collect();
        assert_eq!(downloads.len(), 1, "{:#?}", graph.requests());
        assert_eq!(
            downloads[0].authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
    assert!(graph.on(Route::Unexpected).is_empty());
    let ctx = context(&app).await;
    let lines: Vec<&str> = ctx.transcript.iter().map(|t| t.text.as_str()).collect();
    assert!(lines.contains(&"[image] my bill"), "{lines:?}");
    assert!(lines.contains(&"[audio]"), "{lines:?}");
}

/// Media URLs expire in minutes: a 401 or 404 from the download resolves the id once more and
/// downloads once more. Any other failure keeps the message (and its caption), with the media
/// marked unavailable, and the agent still answers.
#[tokio::test]
async fn meta_media_url_expiry_is_resolved_again_once_and_failures_never_lose_the_message() {
    let (app, graph) = spawn_with_graph().await;
    for id in ["2001", "2002", "2003"] {
        graph.serve_media(id, format!("bytes {id}").as_bytes(), "image/jpeg");
    }
    // 2001: the first URL has expired (404), the second works.
    graph.script(Route::Download, 404, String::new());
    let first = notification(vec![entry(
        json!([media_msg(
            "wamid.e1",
            "image",
            "2001",
            "image/jpeg",
            json!({})
        )]),
        json!([]),
    )]);
    post(&app, &first).await;
    let m = eventually(&app, CUSTOMER, "the first media message", |m| {
        count(m, "inbound") == 1
    })
    .await;
    assert_eq!(m[0]["media"]["available"], true, "{m:#?}");
    let paths: Vec<String> = graph
        .requests()
        .into_iter()
        .filter(|r| matches!(r.route, Route::Resolve | Route::Download))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v23.0/2001",
            "/lookaside/2001/1",
            "/v23.0/2001",
            "/lookaside/2001/2"
        ]
    );
    eventually(&app, CUSTOMER, "the first reply", |m| {
        count(m, "outbound") == 1
    })
    .await;

    // 2002: 401 twice: one fresh URL only, then given up. 2003: 403, not retried at all.
    // 2004: Graph does not know the id.
    graph.script(Route::Download, 401, fake_graph::graph_error(0));
    graph.script(Route::Download, 401, fake_graph::graph_error(0));
    graph.script(Route::Download, 403, String::new());
    let before = graph.requests().len();
    let failing = notification(vec![entry(
        json!([
            media_msg(
                "wamid.e2",
                "image",
                "2002",
                "image/jpeg",
                json!({"caption": "my bill"})
            ),
            media_msg("wamid.e3", "document", "2003", "application/pdf", json!({})),
            media_msg("wamid.e4", "video", "2004", "video/mp4", json!({})),
        ]),
        json!([]),
    )]);
    assert_eq!(post(&app, &failing).await.status(), 200);
    let m = eventually(
        &app,
        CUSTOMER,
        "three more inbound and a second reply",
        |m| count(m, "inbound") == 4 && count(m, "outbound") == 2,
    )
    .await;
    for (id, media_id) in [
        ("wamid.e2", "2002"),
        ("wamid.e3", "2003"),
        ("wamid.e4", "2004"),
    ] {
        let record = m.iter().find(|r| r["message_id"] == id).unwrap();
        assert_eq!(record["media"]["available"], false, "{record:#?}");
        assert_eq!(record["media"]["media_id"], media_id);
        assert!(record["media"].get("sha256").is_none());
        assert!(
            app.state
                .whatsapp
                .stored_media(media_id)
                .await
                .unwrap()
                .is_none()
        );
    }
    let later: Vec<String> = graph.requests()[before..]
        .iter()
        .filter(|r| matches!(r.route, Route::Resolve | Route::Download))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        later,
        [
            "/v23.0/2002",
            "/lookaside/2002/1",
            "/v23.0/2002",
            "/lookaside/2002/2",
            "/v23.0/2003",
            "/lookaside/2003/1",
            "/v23.0/2004"
        ]
    );
    let ctx = context(&app).await;
    let lines: Vec<&str> = ctx.transcript.iter().map(|t| t.text.as_str()).collect();
    assert!(
        lines.contains(&"[image, not available] my bill"),
        "{lines:?}"
    );
    assert!(lines.contains(&"[document, not available]"), "{lines:?}");
}

/// Before the agent answers a Meta message, the message is marked read with the typing
/// indicator; a failing read receipt is tried once and never costs the reply.
#[tokio::test]
async fn meta_message_is_marked_read_with_typing_before_the_reply_and_a_failure_does_not_block_it()
{
    let (app, graph) = spawn_with_graph().await;
    let hello = notification(vec![entry(
        json!([msg("wamid.in1", "text", json!({"body": "hello"}))]),
        json!([]),
    )]);
    post(&app, &hello).await;
    eventually(&app, CUSTOMER, "the reply", |m| count(m, "outbound") == 1).await;
    let routes: Vec<Route> = graph.requests().iter().map(|r| r.route).collect();
    assert_eq!(routes, [Route::MarkRead, Route::Send]);
    let receipt = &graph.on(Route::MarkRead)[0];
    assert_eq!(receipt.method, "POST");
    assert_eq!(receipt.path, format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        receipt.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(
        receipt.body,
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in1",
            "typing_indicator": {"type": "text"}})
    );

    // The receipt fails (even with a "transient" 500): one try, and the reply still goes out.
    graph.script(Route::MarkRead, 500, fake_graph::graph_error(1));
    let again = notification(vec![entry(
        json!([msg("wamid.in2", "text", json!({"body": "are you there?"}))]),
        json!([]),
    )]);
    post(&app, &again).await;
    eventually(&app, CUSTOMER, "the second reply", |m| {
        count(m, "outbound") == 2
    })
    .await;
    let receipts = graph.on(Route::MarkRead);
    assert_eq!(receipts.len(), 2, "not retried: {receipts:#?}");
    assert_eq!(receipts[1].body["message_id"], "wamid.in2");
    assert_eq!(graph.on(Route::Send).len(), 2);
}

pub(crate) async fn readiness(app: &TestApp) -> (u16, Value) {
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn provider_check(body: &Value) -> Value {
    body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "whatsapp_provider")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Error 190 (token expired) from a Graph call fails readiness with the reason, logged once as
/// an alert, until a later Graph call succeeds. While it is failing, readiness itself re-checks
/// the token (at once, then at most every 30 s), so the replica recovers without traffic.
#[tokio::test]
async fn meta_token_expired_fails_readiness_until_a_graph_call_succeeds() {
    use handoff::domain::OutboundMessage;
    use handoff::whatsapp::{Initiation, SendError, SenderError};

    let (app, graph) = spawn_with_graph().await;
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        provider_check(&body),
        json!({"name": "whatsapp_provider", "ok": true})
    );
    assert!(
        graph.on(Route::Probe).is_empty(),
        "no probe while the token works"
    );

    post(
        &app,
        &notification(vec![entry(
            json!([msg("wamid.t1", "text", json!({"body": "hello"}))]),
            json!([]),
        )]),
    )
    .await;
    eventually(&app, CUSTOMER, "the reply", |m| count(m, "outbound") == 1).await;
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    graph.fail_with(401, 190, None);
    let before = graph.on(Route::Send).len();
    let err = app
        .state
        .whatsapp
        .send(&customer, OutboundMessage::text("hi"), Initiation::Reply)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendError::Sender(SenderError::Rejected { code, .. }) if code == "190"),
        "{err:?}"
    );
    assert_eq!(
        graph.on(Route::Send).len(),
        before + 1,
        "190 is not retried"
    );

    // Readiness probes the token at once; Graph still says 190.
    graph.script(Route::Probe, 401, fake_graph::graph_error(190));
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["failing"], json!(["whatsapp_provider"]));
    let reason = provider_check(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("190") && reason.contains("META_ACCESS_TOKEN"),
        "{reason}"
    );
    assert!(!reason.contains(TOKEN), "no secret in the reason");
    let probes = graph.on(Route::Probe);
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].path, format!("/v23.0/{PHONE_NUMBER_ID}"));
    assert_eq!(probes[0].query, "fields=id");
    assert_eq!(
        probes[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    // Asked again at once: still failing, and no second probe yet.
    assert_eq!(readiness(&app).await.0, 503);
    assert_eq!(graph.on(Route::Probe).len(), 1);
    // Alerted once, however many calls saw it.
    assert_eq!(
        metric(&app, "handoff_meta_token_expired_total").await,
        Some(1.0)
    );

    // A later Graph call succeeds: ready again.
    app.state
        .whatsapp
        .send(&customer, OutboundMessage::text("hi"), Initiation::Reply)
        .await
        .unwrap();
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(provider_check(&body)["ok"], true);
}

/// 190 can also arrive inside a status's `errors[]` or in a `value` that carries only
/// `errors[]`: both mark the token expired (and such a value is counted and logged, not
/// dropped). The readiness probe finds the token working again and readiness recovers.
#[tokio::test]
async fn meta_190_in_a_status_or_an_errors_only_value_fails_readiness_until_the_probe_succeeds() {
    let (app, graph) = spawn_with_graph().await;
    let errors_only = |code: u32| {
        json!({ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID },
            "errors": [{ "code": code, "title": "Something went wrong",
                "message": "…", "error_data": { "details": "…" } }] }}]})
    };
    // An errors-only value that is not about the token: counted, readiness unaffected.
    assert_eq!(
        post(&app, &notification(vec![errors_only(131000)]))
            .await
            .status(),
        200
    );
    assert_eq!(readiness(&app).await.0, 200);
    assert_eq!(
        metric(
            &app,
            "handoff_whatsapp_meta_webhook_errors_total{code=\"131000\"}"
        )
        .await,
        Some(1.0)
    );

    // An errors-only value with 190: the token is marked expired (an alert), and readiness
    // probes it at once; Graph answers the probe, so it works after all: ready.
    assert_eq!(
        post(&app, &notification(vec![errors_only(190)]))
            .await
            .status(),
        200
    );
    assert_eq!(
        metric(
            &app,
            "handoff_whatsapp_meta_webhook_errors_total{code=\"190\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&app, "handoff_meta_token_expired_total").await,
        Some(1.0)
    );
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        graph.on(Route::Probe).len(),
        1,
        "probed because it was marked expired"
    );

    // A failed status with 190, and this time the probe confirms it: not ready.
    let failed = notification(vec![entry(
        json!([]),
        json!([{"id": "wamid.out-x", "status": "failed", "recipient_id": WA_ID,
            "timestamp": chrono::Utc::now().timestamp().to_string(),
            "errors": [{"code": 190, "title": "Access token has expired"}]}]),
    )]);
    assert_eq!(post(&app, &failed).await.status(), 200);
    assert_eq!(
        metric(&app, "handoff_meta_token_expired_total").await,
        Some(2.0)
    );
    graph.script(Route::Probe, 401, fake_graph::graph_error(190));
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body:#}");
    let reason = provider_check(&body)["error"].as_str().unwrap().to_owned();
    assert!(reason.contains("a delivery status"), "{reason}");
    assert_eq!(graph.on(Route::Probe).len(), 2);
}

/// Billing details on the message log with Cosmos DB (the test server) as the log: a late
/// `sent` brings the pricing to a message already read, and the API shows it.
#[tokio::test]
async fn meta_pricing_and_conversation_are_kept_on_the_cosmos_message_log() {
    let cosmos = crate::support::services::CosmosServer::start();
    let endpoint = cosmos.endpoint();
    let app = TestApp::spawn_with(move |s| {
        meta(s);
        s.cosmos = Some(handoff::config::CosmosSettings {
            endpoint,
            key: Some(Secret::new(
                crate::support::services::COSMOS_EMULATOR_KEY.to_owned(),
            )),
            database: "meta".into(),
            managed_identity_client_id: None,
        });
    })
    .await;
    post(
        &app,
        &notification(vec![entry(
            json!([msg("wamid.c1", "text", json!({"body": "hello"}))]),
            json!([]),
        )]),
    )
    .await;
    let m = eventually(&app, CUSTOMER, "a reply", |m| count(m, "outbound") == 1).await;
    let id = m.iter().find(|r| r["direction"] == "outbound").unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A status for a message nobody sent: kept aside with its pricing, never listed.
    let statuses = notification(vec![entry(
        json!([]),
        json!([
            status(&id, "read", None),
            status(&id, "sent", None),
            status("wamid.unknown", "sent", None)
        ]),
    )]);
    assert_eq!(post(&app, &statuses).await.status(), 200);
    let m = eventually(&app, CUSTOMER, "read with its pricing", |m| {
        m.iter().any(|r| {
            r["message_id"] == id.as_str() && r["status"] == "read" && r["pricing"].is_object()
        })
    })
    .await;
    let record = m.iter().find(|r| r["message_id"] == id.as_str()).unwrap();
    assert_eq!(record["pricing"]["category"], "service", "{record:#?}");
    assert_eq!(record["pricing"]["billable"], false);
    assert_eq!(record["conversation"]["id"], "conv-1");
    assert_eq!(record["conversation"]["origin"], "service");
    assert_eq!(
        m.iter().filter(|r| r["direction"] == "outbound").count(),
        1,
        "{m:#?}"
    );
    let inbound = m.iter().find(|r| r["direction"] == "inbound").unwrap();
    assert!(inbound.get("pricing").is_none(), "{inbound:#?}");
}

/// A long reply to a message is split; only its first part quotes the message.
#[tokio::test]
async fn meta_long_reply_quotes_the_message_in_its_first_part_only() {
    use handoff::domain::OutboundMessage;
    use handoff::whatsapp::Initiation;

    let (app, graph) = spawn_with_graph().await;
    post(
        &app,
        &notification(vec![entry(
            json!([msg("wamid.q", "text", json!({"body": "hello"}))]),
            json!([]),
        )]),
    )
    .await;
    eventually(&app, CUSTOMER, "the reply", |m| count(m, "outbound") == 1).await;
    let first = format!("{}.", "a".repeat(3000));
    let second = format!("{}.", "b".repeat(3000));
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    let sent = app
        .state
        .whatsapp
        .send(
            &customer,
            OutboundMessage::Text {
                text: format!("{first}\n\n{second}"),
                reply_to: Some("wamid.q".into()),
            },
            Initiation::Reply,
        )
        .await
        .unwrap();
    assert_eq!(sent.len(), 2);
    let sends = graph.on(Route::Send);
    let parts = &sends[sends.len() - 2..];
    assert_eq!(parts[0].body["text"]["body"], json!(first));
    assert_eq!(parts[0].body["context"], json!({"message_id": "wamid.q"}));
    assert_eq!(parts[1].body["text"]["body"], json!(second));
    assert!(
        parts[1].body.get("context").is_none(),
        "{:#}",
        parts[1].body
    );
}
