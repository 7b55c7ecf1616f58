//! A fake Meta Graph API at the wire, for routing and template tests: checks the bearer token
//! (401 with Graph error 190 otherwise), records every request (method, path, query, body),
//! serves a WhatsApp Business Account's `message_templates` as pages linked by `after` cursors,
//! and answers sends with a fresh wamid.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        reqwest::Url::parse(&format!("http://x/?{}", self.query))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

struct Inner {
    token: String,
    requests: Mutex<Vec<Recorded>>,
    /// `message_templates` pages: the first without `after`, page `i` for `after=cursor-i`.
    pages: Mutex<Vec<Value>>,
    /// Answers to the next template list requests, before the pages are served again.
    list_failures: Mutex<VecDeque<(u16, Value)>>,
}

#[derive(Clone)]
pub struct FakeGraph {
    pub base_url: String,
    inner: Arc<Inner>,
}

impl FakeGraph {
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Inner {
            token: token.to_owned(),
            requests: Mutex::default(),
            pages: Mutex::default(),
            list_failures: Mutex::default(),
        });
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

    /// Serves `templates` as pages of `per_page`, linked the way Graph links them: every page
    /// has `cursors`, all but the last a `next` URL.
    pub fn serve_templates(&self, templates: Vec<Value>, per_page: usize) {
        let chunks: Vec<Vec<Value>> = templates.chunks(per_page).map(<[Value]>::to_vec).collect();
        let last = chunks.len().saturating_sub(1);
        let pages = chunks
            .into_iter()
            .enumerate()
            .map(|(i, data)| {
                let mut paging = json!({"cursors": {"before": format!("before-{i}"),
                    "after": format!("cursor-{}", i + 1)}});
                if i < last {
                    paging["next"] = json!(format!(
                        "{}/v23.0/waba/message_templates?after=cursor-{}&access_token=leaked",
                        self.base_url,
                        i + 1
                    ));
                }
                json!({"data": data, "paging": paging})
            })
            .collect();
        *self.inner.pages.lock().unwrap() = pages;
    }

    /// The next template list request answers `status` with Graph error `code`.
    pub fn fail_next_list(&self, status: u16, code: u32) {
        self.inner.list_failures.lock().unwrap().push_back((
            status,
            json!({"error": {"message": "(#{code}) error", "type": "OAuthException",
                "code": code, "fbtrace_id": "x"}}),
        ));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn sends(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/messages"))
            .collect()
    }

    pub fn listings(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/message_templates"))
            .collect()
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        body: serde_json::from_slice(&body).unwrap_or_default(),
    };
    let n = {
        let mut requests = inner.requests.lock().unwrap();
        requests.push(recorded.clone());
        requests.len()
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(inner.token.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Invalid OAuth access token.",
                "type": "OAuthException", "code": 190, "fbtrace_id": "x"}})),
        )
            .into_response();
    }
    if method == Method::GET && uri.path().ends_with("/message_templates") {
        if let Some((status, body)) = inner.list_failures.lock().unwrap().pop_front() {
            return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
        }
        let page = match recorded.param("after") {
            None => 0,
            Some(cursor) => match cursor.strip_prefix("cursor-").and_then(|i| i.parse().ok()) {
                Some(i) => i,
                None => return StatusCode::BAD_REQUEST.into_response(),
            },
        };
        let pages = inner.pages.lock().unwrap();
        return match pages.get(page) {
            Some(p) => axum::Json(p.clone()).into_response(),
            None if page == 0 => axum::Json(json!({"data": []})).into_response(),
            None => StatusCode::BAD_REQUEST.into_response(),
        };
    }
    if method == Method::POST && uri.path().ends_with("/messages") {
        let to = recorded.body["to"].as_str().unwrap_or_default().to_owned();
        return axum::Json(json!({"messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": format!("wamid.out{n}"), "message_status": "accepted"}]}))
        .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {"message": "Unknown path", "code": 100}})),
    )
        .into_response()
}
