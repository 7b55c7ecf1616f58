//! A fake ACS Call Automation at the wire: an axum server on a loopback port that recomputes
//! every request's HMAC signature (x-ms-date, host with port, content hash, path and query),
//! records the actions, answers like ACS, and posts the callbacks a real call would to the
//! callback URI the engine gave when answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const ACCESS_KEY: &[u8] = b"fake-acs-access-key";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub body: Value,
    pub repeatability_id: Option<String>,
}

impl Recorded {
    pub fn call_id(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/calling/callConnections/")?;
        Some(rest.split(':').next().unwrap_or(rest))
    }
    pub fn action(&self) -> &str {
        if self.method == "DELETE" {
            return "hangup";
        }
        self.path.rsplit(':').next().unwrap_or("")
    }
    pub fn play_text(&self) -> Option<&str> {
        self.body["playSources"][0]["text"]["text"].as_str()
    }
    pub fn operation_context(&self) -> Option<&str> {
        self.body["operationContext"].as_str()
    }
}

#[derive(Default)]
struct Inner {
    recorded: Mutex<Vec<Recorded>>,
    bad_signatures: AtomicU64,
    calls: AtomicU64,
    /// call connection id → callback URI
    callbacks: Mutex<Vec<(String, String)>>,
    answered: Mutex<Vec<FakeCall>>,
    /// How many of the next requests (after recording) answer 503.
    fail_next: AtomicU64,
    auto_complete_plays: AtomicBool,
    /// Makes the `Authorization: Bearer` token each callback carries (ACS signs every one).
    bearer: Mutex<Option<Arc<dyn Fn() -> String + Send + Sync>>>,
    http: reqwest::Client,
}

/// A call the fake answered.
#[derive(Debug, Clone)]
pub struct FakeCall {
    pub call_id: String,
    pub incoming_call_context: String,
    pub media_url: String,
}

#[derive(Clone)]
pub struct FakeAcs {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeAcs {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        inner.auto_complete_plays.store(true, Ordering::SeqCst);
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether plays complete by themselves (PlayStarted + PlayCompleted callbacks).
    /// Every callback from now on carries `Authorization: Bearer {token()}`.
    pub fn sign_callbacks(&self, token: impl Fn() -> String + Send + Sync + 'static) {
        *self.inner.bearer.lock().unwrap() = Some(Arc::new(token));
    }

    pub fn auto_complete_plays(&self, on: bool) {
        self.inner.auto_complete_plays.store(on, Ordering::SeqCst);
    }

    /// The next `n` requests fail with 503 (after being recorded).
    pub fn fail_next(&self, n: u64) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.inner.recorded.lock().unwrap().clone()
    }

    /// WhatsApp sends (Advanced Messaging) made through this resource.
    pub fn whatsapp_sends(&self) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.path == "/messages/notifications:send")
            .collect()
    }

    pub fn bad_signatures(&self) -> u64 {
        self.inner.bad_signatures.load(Ordering::SeqCst)
    }

    pub fn answers(&self) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.action() == "answer")
            .collect()
    }

    pub fn actions_for(&self, call_id: &str) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.call_id() == Some(call_id))
            .collect()
    }

    pub fn plays_for(&self, call_id: &str) -> Vec<Recorded> {
        self.actions_for(call_id)
            .into_iter()
            .filter(|r| r.action() == "play")
            .collect()
    }

    /// Polls until `ready` holds for the recorded actions (bounded, not a timing assertion).
    pub async fn wait_for<T>(&self, what: &str, mut ready: impl FnMut(&FakeAcs) -> Option<T>) -> T {
        for _ in 0..500 {
            if let Some(value) = ready(self) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "fake ACS never saw: {what}; recorded: {:#?}",
            self.recorded()
                .iter()
                .map(|r| (
                    r.method.clone(),
                    r.path.clone(),
                    r.play_text().map(str::to_owned)
                ))
                .collect::<Vec<_>>()
        );
    }

    /// Posts a callback event for `call_id` to its callback URI; returns the HTTP status.
    pub async fn callback(&self, call_id: &str, event: &str, data: Value) -> u16 {
        post_callback(&self.inner, call_id, event, data, None).await
    }

    /// The call answered for an `incomingCallContext`.
    pub fn call_for(&self, incoming_call_context: &str) -> Option<FakeCall> {
        self.inner
            .answered
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.incoming_call_context == incoming_call_context)
            .cloned()
    }

    /// Posts a callback with a chosen event id (for redelivery tests).
    pub async fn callback_with_id(&self, call_id: &str, event: &str, data: Value, id: &str) -> u16 {
        post_callback(&self.inner, call_id, event, data, Some(id.to_owned())).await
    }

    pub fn callback_uri(&self, call_id: &str) -> Option<String> {
        self.inner
            .callbacks
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| id == call_id)
            .map(|(_, uri)| uri.clone())
    }
}

async fn post_callback(
    inner: &Inner,
    call_id: &str,
    event: &str,
    mut data: Value,
    id: Option<String>,
) -> u16 {
    let Some(uri) = inner
        .callbacks
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == call_id)
        .map(|(_, uri)| uri.clone())
    else {
        panic!("no callback URI for {call_id}");
    };
    data["callConnectionId"] = json!(call_id);
    let body = json!([{
        "id": id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "source": format!("calling/callConnections/{call_id}"),
        "type": format!("Microsoft.Communication.{event}"),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "time": "2026-01-01T00:00:00Z",
        "data": data,
    }]);
    let bearer = inner.bearer.lock().unwrap().clone();
    let mut request = inner.http.post(&uri).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token());
    }
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn verify(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
    super::acs_signature::verify(ACCESS_KEY, method, uri, headers, body)
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !verify(&method, &uri, &headers, &body) {
        inner.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"Unauthorized","message":"bad signature"}}"#,
        )
            .into_response();
    }
    // Advanced Messaging on the same resource (a call's handoff sends its template here):
    // sends are recorded and get a receipt; the channel has no templates listed.
    if uri.path() == "/messages/notifications:send" || uri.path().ends_with("/templates") {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        inner.recorded.lock().unwrap().push(Recorded {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or("").to_owned(),
            body,
            repeatability_id: headers
                .get("repeatability-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
        if uri.path().ends_with("/templates") {
            return (StatusCode::OK, axum::Json(json!({"value": []}))).into_response();
        }
        let id = uuid::Uuid::new_v4();
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({"receipts": [{"messageId": id.to_string()}]})),
        )
            .into_response();
    }
    if uri.query() != Some("api-version=2025-05-15") {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"BadRequest","message":"api-version"}}"#,
        )
            .into_response();
    }
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        body: parsed.clone(),
        repeatability_id: headers
            .get("repeatability-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    inner.recorded.lock().unwrap().push(recorded.clone());
    if inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"code":"ServiceUnavailable","message":"try again"}}"#,
        )
            .into_response();
    }
    let action = recorded.action().to_owned();
    match action.as_str() {
        "answer" => {
            let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let call_id = format!("call-{n}");
            let callback = parsed["callbackUri"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            inner
                .callbacks
                .lock()
                .unwrap()
                .push((call_id.clone(), callback));
            inner.answered.lock().unwrap().push(FakeCall {
                call_id: call_id.clone(),
                incoming_call_context: parsed["incomingCallContext"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                media_url: parsed["mediaStreamingOptions"]["transportUrl"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
            let connected = inner.clone();
            let id = call_id.clone();
            tokio::spawn(async move {
                post_callback(&connected, &id, "CallConnected", json!({}), None).await;
            });
            (
                StatusCode::OK,
                axum::Json(
                    json!({ "callConnectionId": call_id, "callConnectionState": "connecting" }),
                ),
            )
                .into_response()
        }
        "play" => {
            if inner.auto_complete_plays.load(Ordering::SeqCst) {
                let call_id = recorded.call_id().unwrap_or_default().to_owned();
                let op = recorded.operation_context().unwrap_or_default().to_owned();
                let inner = inner.clone();
                tokio::spawn(async move {
                    post_callback(
                        &inner,
                        &call_id,
                        "PlayStarted",
                        json!({ "operationContext": op }),
                        None,
                    )
                    .await;
                    post_callback(
                        &inner,
                        &call_id,
                        "PlayCompleted",
                        json!({ "operationContext": op }),
                        None,
                    )
                    .await;
                });
            }
            StatusCode::ACCEPTED.into_response()
        }
        "cancelAllMediaOperations" => StatusCode::ACCEPTED.into_response(),
        "hangup" | "terminate" => {
            let call_id = recorded.call_id().unwrap_or_default().to_owned();
            let inner = inner.clone();
            tokio::spawn(async move {
                post_callback(&inner, &call_id, "CallDisconnected", json!({}), None).await;
            });
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"NotFound","message":"no such action"}}"#,
        )
            .into_response(),
    }
}
