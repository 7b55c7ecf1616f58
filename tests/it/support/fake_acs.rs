//! A fake ACS Advanced Messaging endpoint at the wire: an HTTP server on a loopback port that
//! recomputes every request's HMAC-SHA256 signature from what it received (x-ms-date, host with
//! port, content hash, path and query), records the request, and answers from a script
//! (e.g. 429 then 202, or 400); unscripted sends get a 202 with a fresh receipt id.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The access key the fake expects (what a connection string's `accesskey` decodes to).
pub const KEY: &[u8] = b"fake-acs-access-key-for-tests-only";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the signature matched what the fake recomputed.
    pub signature_ok: bool,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn api_version(&self) -> Option<String> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix("api-version=").map(str::to_owned))
    }
}

#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Scripted>>,
    media: Mutex<Vec<(String, Vec<u8>)>>,
}

#[derive(Clone)]
pub struct FakeAcs {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FakeAcs {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, inner }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next answers to sends, in order, before the default 202s resume.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    pub fn serve_media(&self, id: &str, bytes: &[u8]) {
        self.inner
            .media
            .lock()
            .unwrap()
            .push((id.to_owned(), bytes.to_vec()));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn sends(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/messages/notifications:send")
            .collect()
    }
}

pub fn answer(status: u16, body: &str) -> Scripted {
    Scripted {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let signature_ok = super::acs_signature::verify(KEY, &method, &uri, &headers, &body);
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers.clone(),
        body,
        signature_ok,
    };
    inner.requests.lock().unwrap().push(recorded);
    if !signature_ok {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"Denied","message":"bad signature"}}"#,
        )
            .into_response();
    }
    if let Some(id) = uri.path().strip_prefix("/messages/streams/") {
        let media = inner.media.lock().unwrap();
        return match media.iter().find(|(m, _)| m == id) {
            Some((_, bytes)) => (StatusCode::OK, bytes.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    // The script answers sends only, so the start-up template listing cannot consume it.
    let scripted = if uri.path() == "/messages/notifications:send" {
        inner.script.lock().unwrap().pop_front()
    } else {
        None
    };
    if let Some(scripted) = scripted {
        let mut response = (
            StatusCode::from_u16(scripted.status).unwrap(),
            scripted.body,
        )
            .into_response();
        for (name, value) in scripted.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    if uri.path().ends_with("/templates") {
        // Two pages: the first links to the second, as ACS pages with `nextLink`.
        let page = if uri
            .query()
            .unwrap_or("")
            .contains("continuationToken=page2")
        {
            r#"{"value":[{"name":"conversation_continuation","language":"en_US","status":"approved","kind":"whatsApp",
               "content":[{"type":"BODY","text":"Hi {{1}}, {{2}}"},{"type":"BUTTONS","buttons":[{"type":"QUICK_REPLY","text":"Continue"}]}]}],"nextLink":null}"#
                .to_owned()
        } else {
            format!(
                r#"{{"value":[{{"name":"order_update","language":"en_US","status":"approved","kind":"whatsApp",
                   "content":[{{"type":"BODY","text":"Your order {{{{1}}}} shipped."}}]}}],
                   "nextLink":"http://{}{}?api-version=2024-08-30&continuationToken=page2"}}"#,
                get("host"),
                uri.path()
            )
        };
        return (StatusCode::OK, page).into_response();
    }
    let to = serde_json::from_slice::<serde_json::Value>(&recorded_to(&inner))
        .ok()
        .and_then(|v| v["to"][0].as_str().map(str::to_owned))
        .unwrap_or_default();
    let id = uuid::Uuid::new_v4();
    (
        StatusCode::ACCEPTED,
        format!(r#"{{"receipts":[{{"messageId":"{id}","to":"{to}"}}]}}"#),
    )
        .into_response()
}

fn recorded_to(inner: &Inner) -> Vec<u8> {
    inner
        .requests
        .lock()
        .unwrap()
        .last()
        .map(|r| r.body.to_vec())
        .unwrap_or_default()
}
