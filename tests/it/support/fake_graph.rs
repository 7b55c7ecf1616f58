//! A fake Meta Graph API at the wire, shared by the Meta, routing and template tests. It checks
//! what the real one would refuse (method, path, Graph version, bearer token, body shape) and
//! answers like Graph:
//! - sends and read receipts on `POST /{version}/{phone_number_id}/messages`, for the phone
//!   number ids it was started with (another number's path is unexpected);
//! - media resolves on `GET /{version}/{media-id}` (a fresh short-lived URL each time), downloads
//!   on that URL (bearer token required; only the latest URL works, an earlier one answers 404);
//! - token probes on `GET /{version}/{phone_number_id}`;
//! - a WhatsApp Business Account's `GET /{version}/{waba_id}/message_templates` as pages linked
//!   by `after` cursors.
//!
//! A wrong token answers 401 with Graph error 190, an unknown path 404 with code 100, a body the
//! route does not take 400 with code 100. Answers can be scripted per route (Graph errors,
//! including 190); everything is recorded, refused requests too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const VERSION: &str = "v23.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /{version}/{phone_number_id}/messages` with a message.
    Send,
    /// The same path with a read receipt.
    MarkRead,
    /// `GET /{version}/{media-id}`.
    Resolve,
    /// `GET` on a resolved media URL.
    Download,
    /// `GET /{version}/{phone_number_id}`.
    Probe,
    /// `GET /{version}/{waba_id}/message_templates`.
    Templates,
    /// Anything else (answered 404, and a test should find none).
    Unexpected,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// The phone number id in the path (sends, read receipts, probes).
    pub number: Option<String>,
}

impl Recorded {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        Self::param_of(&self.query, name)
    }

    fn param_of(query: &str, name: &str) -> Option<String> {
        reqwest::Url::parse(&format!("http://x/?{query}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

struct Media {
    bytes: Vec<u8>,
    mime_type: String,
    /// How many times the media was resolved: each resolve hands out a new URL.
    resolved: u32,
}

#[derive(Default)]
struct Inner {
    base_url: String,
    phone_numbers: Vec<String>,
    token: String,
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<HashMap<Route, VecDeque<Answer>>>,
    media: Mutex<HashMap<String, Media>>,
    /// The WhatsApp Business Account whose templates are served.
    waba: Mutex<Option<String>>,
    /// `message_templates` pages: the first without `after`, page `i` for `after=cursor-i`.
    pages: Mutex<Vec<Value>>,
}

#[derive(Clone)]
pub struct FakeGraph {
    pub base_url: String,
    inner: Arc<Inner>,
}

/// A Graph error body with `code`.
pub fn graph_error(code: u32) -> String {
    json!({"error": {"message": format!("(#{code}) error"), "type": "OAuthException",
        "code": code, "fbtrace_id": "x"}})
    .to_string()
}

impl FakeGraph {
    /// Graph for `token`, sending from (and probed on) `phone_numbers`.
    pub async fn start(token: &str, phone_numbers: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base_url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            base_url: base_url.clone(),
            phone_numbers: phone_numbers.iter().map(|n| (*n).to_owned()).collect(),
            token: token.to_owned(),
            ..Inner::default()
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base_url, inner }
    }

    /// Answers the next request on `route` with `status` and `body`.
    pub fn script(&self, route: Route, status: u16, body: String) {
        self.inner
            .script
            .lock()
            .unwrap()
            .entry(route)
            .or_default()
            .push_back((status, Vec::new(), body));
    }

    /// Answers the next send with a Graph error `code`.
    pub fn fail_with(&self, status: u16, code: u32, retry_after: Option<&str>) {
        let headers = retry_after
            .map(|s| vec![("retry-after", s.to_owned())])
            .unwrap_or_default();
        self.inner
            .script
            .lock()
            .unwrap()
            .entry(Route::Send)
            .or_default()
            .push_back((status, headers, graph_error(code)));
    }

    /// The next template list request answers `status` with Graph error `code`.
    pub fn fail_next_list(&self, status: u16, code: u32) {
        self.script(Route::Templates, status, graph_error(code));
    }

    /// Makes `id` resolvable and downloadable.
    pub fn serve_media(&self, id: &str, bytes: &[u8], mime_type: &str) {
        self.inner.media.lock().unwrap().insert(
            id.to_owned(),
            Media {
                bytes: bytes.to_vec(),
                mime_type: mime_type.to_owned(),
                resolved: 0,
            },
        );
    }

    /// Serves `templates` of the account `waba` as pages of `per_page`, linked the way Graph
    /// links them: every page has `cursors`, all but the last a `next` URL (which carries a
    /// token in its query, as Meta's do).
    pub fn serve_templates(&self, waba: &str, templates: Vec<Value>, per_page: usize) {
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
                        "{}/{VERSION}/{waba}/message_templates?after=cursor-{}&access_token=leaked",
                        self.base_url,
                        i + 1
                    ));
                }
                json!({"data": data, "paging": paging})
            })
            .collect();
        *self.inner.waba.lock().unwrap() = Some(waba.to_owned());
        *self.inner.pages.lock().unwrap() = pages;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn on(&self, route: Route) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.route == route)
            .collect()
    }

    /// The messages sent (read receipts are not messages).
    pub fn sends(&self) -> Vec<Recorded> {
        self.on(Route::Send)
    }

    /// The template list requests.
    pub fn listings(&self) -> Vec<Recorded> {
        self.on(Route::Templates)
    }
}

fn refuse(status: StatusCode, code: u32, why: &str) -> Response {
    (
        status,
        json!({"error": {"message": why, "type": "OAuthException", "code": code}}).to_string(),
    )
        .into_response()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let versioned = path.strip_prefix(&format!("/{VERSION}/"));
    let waba = inner.waba.lock().unwrap().clone();
    let own = |n: &str| inner.phone_numbers.iter().any(|p| p == n);
    let (route, number) = match (&method, versioned) {
        (&Method::POST, Some(rest)) => match rest.strip_suffix("/messages") {
            Some(n) if own(n) => {
                let route = if json_body["status"] == "read" {
                    Route::MarkRead
                } else {
                    Route::Send
                };
                (route, Some(n.to_owned()))
            }
            _ => (Route::Unexpected, None),
        },
        (&Method::GET, Some(rest)) if own(rest) => (Route::Probe, Some(rest.to_owned())),
        (&Method::GET, Some(rest))
            if waba
                .as_deref()
                .map(|w| format!("{w}/message_templates"))
                .as_deref()
                == Some(rest) =>
        {
            (Route::Templates, None)
        }
        (&Method::GET, Some(rest)) if !rest.is_empty() && !rest.contains('/') => {
            (Route::Resolve, None)
        }
        (&Method::GET, None) if path.starts_with("/lookaside/") => (Route::Download, None),
        _ => (Route::Unexpected, None),
    };
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let n = {
        let mut requests = inner.requests.lock().unwrap();
        requests.push(Recorded {
            route,
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            body: json_body.clone(),
            number,
        });
        requests.len()
    };
    if route == Route::Unexpected {
        return refuse(StatusCode::NOT_FOUND, 100, "Unknown path components");
    }
    if authorization.as_deref() != Some(&format!("Bearer {}", inner.token)) {
        return refuse(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token");
    }
    // Body shapes the real API insists on.
    let body_ok = match route {
        Route::Send => {
            json_body["messaging_product"] == "whatsapp"
                && json_body["to"].is_string()
                && json_body["type"].is_string()
        }
        Route::MarkRead => {
            json_body.as_object().map(|o| o.len()) == Some(4)
                && json_body["messaging_product"] == "whatsapp"
                && json_body["message_id"].is_string()
                && json_body["typing_indicator"] == json!({"type": "text"})
        }
        _ => body.is_empty(),
    };
    if !body_ok {
        return refuse(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    }
    let scripted = inner
        .script
        .lock()
        .unwrap()
        .get_mut(&route)
        .and_then(VecDeque::pop_front);
    if let Some((status, extra, body)) = scripted {
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        for (k, v) in extra {
            response.headers_mut().insert(k, v.parse().unwrap());
        }
        return response;
    }
    match route {
        Route::Send => axum::Json(json!({"messaging_product": "whatsapp",
            "contacts": [{"input": json_body["to"], "wa_id": json_body["to"]}],
            "messages": [{"id": format!("wamid.out{n}"), "message_status": "accepted"}]}))
        .into_response(),
        Route::MarkRead => axum::Json(json!({"success": true})).into_response(),
        Route::Probe => axum::Json(json!({"id": versioned})).into_response(),
        Route::Resolve => {
            let id = versioned.unwrap_or_default();
            let mut media = inner.media.lock().unwrap();
            let Some(m) = media.get_mut(id) else {
                return refuse(StatusCode::NOT_FOUND, 100, "Unsupported get request");
            };
            m.resolved += 1;
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&m.bytes);
            use base64::Engine;
            axum::Json(json!({"messaging_product": "whatsapp",
                "url": format!("{}/lookaside/{id}/{}", inner.base_url, m.resolved),
                "mime_type": m.mime_type,
                "sha256": base64::engine::general_purpose::STANDARD.encode(digest),
                "file_size": m.bytes.len().to_string(),
                "id": id}))
            .into_response()
        }
        Route::Download => {
            // Only the latest URL works: an earlier one has expired.
            let mut parts = path.trim_start_matches("/lookaside/").split('/');
            let (Some(id), Some(n)) = (parts.next(), parts.next()) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let media = inner.media.lock().unwrap();
            match media.get(id) {
                Some(m) if n == m.resolved.to_string() => {
                    (StatusCode::OK, m.bytes.clone()).into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
        Route::Templates => {
            let page = match Recorded::param_of(&query, "after") {
                None => 0,
                Some(cursor) => match cursor
                    .strip_prefix("cursor-")
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    Some(i) => i,
                    None => return refuse(StatusCode::BAD_REQUEST, 100, "Invalid cursor"),
                },
            };
            let pages = inner.pages.lock().unwrap();
            match pages.get(page) {
                Some(p) => axum::Json(p.clone()).into_response(),
                None if page == 0 => axum::Json(json!({"data": []})).into_response(),
                None => refuse(StatusCode::BAD_REQUEST, 100, "Invalid cursor"),
            }
        }
        Route::Unexpected => unreachable!(),
    }
}
