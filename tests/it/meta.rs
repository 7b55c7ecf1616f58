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

/// A fake Graph API at the wire: records every request and answers from a script; unscripted
/// sends get a 200 with a fresh wamid.
mod fake_graph {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub path: String,
        pub authorization: Option<String>,
        pub body: serde_json::Value,
    }

    /// Status, extra headers, body.
    type Answer = (u16, Vec<(&'static str, String)>, String);

    #[derive(Default)]
    struct Inner {
        requests: Mutex<Vec<Recorded>>,
        script: Mutex<VecDeque<Answer>>,
    }

    #[derive(Clone)]
    pub struct FakeGraph {
        pub base_url: String,
        inner: Arc<Inner>,
    }

    impl FakeGraph {
        pub async fn start() -> Self {
            let inner = Arc::new(Inner::default());
            let app = Router::new().fallback(handle).with_state(inner.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            Self {
                base_url: format!("http://{addr}"),
                inner,
            }
        }

        /// Answers the next request with a Graph error `code`.
        pub fn fail_with(&self, status: u16, code: u32, retry_after: Option<&str>) {
            let headers = retry_after
                .map(|s| vec![("retry-after", s.to_owned())])
                .unwrap_or_default();
            let body = serde_json::json!({"error": {"message": format!("(#{code}) error"),
                "type": "OAuthException", "code": code, "fbtrace_id": "x"}})
            .to_string();
            self.inner
                .script
                .lock()
                .unwrap()
                .push_back((status, headers, body));
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.inner.requests.lock().unwrap().clone()
        }
    }

    async fn handle(
        State(inner): State<Arc<Inner>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let n = {
            let mut requests = inner.requests.lock().unwrap();
            requests.push(Recorded {
                path: uri.path().to_owned(),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: serde_json::from_slice(&body).unwrap_or_default(),
            });
            requests.len()
        };
        if let Some((status, extra, body)) = inner.script.lock().unwrap().pop_front() {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (k, v) in extra {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            return response;
        }
        axum::Json(serde_json::json!({"messaging_product": "whatsapp",
            "contacts": [{"input": "14254360097", "wa_id": "14254360097"}],
            "messages": [{"id": format!("wamid.out{n}"), "message_status": "accepted"}]}))
        .into_response()
    }
}

const TOKEN: &str = "EAAG-test-token";

async fn spawn_with_graph() -> (TestApp, fake_graph::FakeGraph) {
    let graph = fake_graph::FakeGraph::start().await;
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
    let first = &graph.requests()[0];
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
    let r = graph.requests();
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
        .send(
            &customer,
            OutboundMessage::Text { text: "hi".into() },
            Initiation::Reply,
        )
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
            .send(
                &customer,
                OutboundMessage::Text { text: "hi".into() },
                Initiation::Reply,
            )
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

    let graph = fake_graph::FakeGraph::start().await;
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
