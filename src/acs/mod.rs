//! Azure Communication Services REST plumbing shared by Advanced Messaging (WhatsApp) and Call
//! Automation (voice): request signing, Entra ID tokens, idempotency headers, retries and the
//! error body. ACS has no Rust SDK; this is the one place that speaks its HTTP conventions.
//!
//! - HMAC-SHA256 signing with the access key, exactly as the official SDKs sign:
//!   `VERB\npath_and_query\nx-ms-date;host;content-sha256`, where `host` includes the port when
//!   the endpoint has one.
//! - Or `Authorization: Bearer` with a managed identity token for `https://communication.azure.com//.default`.
//! - `Repeatability-Request-ID` / `Repeatability-First-Sent` generated once per logical request
//!   and reused on every retry, so ACS executes a retried send or answer at most once.
//! - Transient failures (429, 5xx, timeouts, connection errors) are retried with bounded
//!   exponential backoff honouring `Retry-After`, but only for requests that are safe to repeat
//!   (idempotent by nature, or made so by the repeatability headers). 4xx are never retried.

pub mod jwt;
mod sign;

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use bytes::Bytes;
use chrono::Utc;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

pub use sign::{SignedHeaders, content_hash, sign};

use crate::config::{AcsAuth, AcsSettings};

/// The token scope every ACS SDK requests (the double slash is what they send).
const ACS_SCOPE: &str = "https://communication.azure.com//.default";

/// Retry schedule as data: how many attempts and how the pause grows.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Upper bound on a server-requested `Retry-After`, so one answer cannot stall a send.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Pause before attempt `attempt + 1` (1-based `attempt` just failed).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(server) = retry_after {
            return server.min(self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
        exp.min(self.max_delay)
    }
}

/// Whether a request may be sent again after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never retried: repeating it could act twice (e.g. `:play` has no repeatability support).
    Never,
    /// Safe to repeat as is (GET, DELETE, cancel).
    Idempotent,
    /// Made safe by `Repeatability-Request-ID` / `Repeatability-First-Sent`.
    Repeatable,
}

/// One logical ACS request.
#[derive(Debug, Clone)]
pub struct AcsRequest {
    pub method: Method,
    /// Path without the query, e.g. `/messages/notifications:send`.
    pub path: String,
    pub api_version: String,
    pub body: Option<Bytes>,
    pub retry: Retry,
    /// A fixed `Repeatability-Request-ID` and `Repeatability-First-Sent` for a request that
    /// must be recognised as the same one even when a different process sends it again;
    /// otherwise they are generated once per `send`.
    pub repeatability: Option<(String, String)>,
}

impl AcsRequest {
    pub fn post_json(
        path: impl Into<String>,
        api_version: &str,
        body: &impl serde::Serialize,
        retry: Retry,
    ) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            api_version: api_version.to_owned(),
            body: Some(Bytes::from(
                serde_json::to_vec(body).expect("request bodies serialise"),
            )),
            retry,
            repeatability: None,
        }
    }

    pub fn path_and_query(&self) -> String {
        format!("{}?api-version={}", self.path, self.api_version)
    }
}

#[derive(Debug, Clone)]
pub struct AcsResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// How many attempts the request took.
    pub attempts: u32,
}

/// ACS's error body: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AcsErrorBody {
    #[serde(default)]
    pub error: AcsErrorDetail,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AcsErrorDetail {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AcsError {
    /// ACS refused the request (4xx other than 408/429): retrying the same request cannot help.
    #[error("ACS rejected the request with {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Still failing after the retries the request allows (429, 5xx, timeouts, network).
    #[error("ACS unavailable after {attempts} attempt(s): {message}")]
    Unavailable { attempts: u32, message: String },
    /// No token could be obtained for Entra ID auth.
    #[error("cannot authenticate to ACS: {0}")]
    Auth(String),
}

impl AcsError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Auth(_))
    }

    /// The ACS error code of a rejection (e.g. `Forbidden`, `BadRequest`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Auth {
    Key(Arc<Vec<u8>>),
    Token(Arc<dyn TokenCredential>),
}

/// A signed HTTP client for one ACS resource. Cheap to clone.
#[derive(Clone)]
pub struct AcsClient {
    http: reqwest::Client,
    endpoint: String,
    /// `host[:port]` as signed.
    host: String,
    auth: Auth,
    retry: RetryPolicy,
}

impl std::fmt::Debug for AcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcsClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AcsClient {
    pub fn new(settings: &AcsSettings, http: reqwest::Client) -> Result<Self, AcsError> {
        let auth = match &settings.auth {
            AcsAuth::AccessKey(key) => Auth::Key(Arc::new(key.expose().clone())),
            AcsAuth::ManagedIdentity { client_id } => Auth::Token(
                crate::identity::managed_identity(client_id.as_deref())
                    .map_err(|e| AcsError::Auth(e.to_string()))?,
            ),
        };
        Ok(Self::with_auth(&settings.endpoint, auth, http))
    }

    /// A client that authenticates with `credential` (tests use a fake token endpoint).
    pub fn with_credential(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Self {
        Self::with_auth(endpoint, Auth::Token(credential), http)
    }

    fn with_auth(endpoint: &str, auth: Auth, http: reqwest::Client) -> Self {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let host = endpoint
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        Self {
            http,
            endpoint,
            host,
            auth,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `request`, retrying transient failures as its [`Retry`] allows. Any 2xx is success.
    pub async fn send(&self, request: &AcsRequest) -> Result<AcsResponse, AcsError> {
        let path_and_query = request.path_and_query();
        let url = format!("{}{}", self.endpoint, path_and_query);
        // Generated once per logical request and reused on every retry.
        let repeatability = (request.retry == Retry::Repeatable).then(|| {
            request
                .repeatability
                .clone()
                .unwrap_or_else(|| (uuid::Uuid::new_v4().to_string(), imf_date(Utc::now())))
        });
        let body = request.body.clone().unwrap_or_default();
        let max_attempts = if request.retry == Retry::Never {
            1
        } else {
            self.retry.max_attempts.max(1)
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut headers = self
                .auth_headers(request.method.as_str(), &path_and_query, &body)
                .await?;
            if let Some((id, first_sent)) = &repeatability {
                headers.insert(
                    HeaderName::from_static("repeatability-request-id"),
                    header(id),
                );
                headers.insert(
                    HeaderName::from_static("repeatability-first-sent"),
                    header(first_sent),
                );
            }
            if request.body.is_some() {
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            let sent = self
                .http
                .request(request.method.clone(), &url)
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            let (failure, retry_after) = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let bytes = response.bytes().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return Ok(AcsResponse {
                            status,
                            headers,
                            body: bytes,
                            attempts: attempt,
                        });
                    }
                    let detail: AcsErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
                    let code = detail
                        .error
                        .code
                        .or_else(|| header_str(&headers, "x-ms-error-code"))
                        .unwrap_or_else(|| status.to_string());
                    let message = detail.error.message.unwrap_or_default();
                    if !is_transient_status(status) {
                        return Err(AcsError::Rejected {
                            status,
                            code,
                            message,
                        });
                    }
                    (format!("{status} {code}: {message}"), retry_after(&headers))
                }
                Err(err) => (transport_error(&err), None),
            };
            if attempt >= max_attempts {
                return Err(AcsError::Unavailable {
                    attempts: attempt,
                    message: failure,
                });
            }
            let pause = self.retry.delay(attempt, retry_after);
            tracing::debug!(path = %request.path, attempt, ?pause, failure = %failure, "retrying ACS request");
            tokio::time::sleep(pause).await;
        }
    }

    async fn auth_headers(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<HeaderMap, AcsError> {
        let mut headers = HeaderMap::new();
        match &self.auth {
            Auth::Key(key) => {
                let date = imf_date(Utc::now());
                let signed = sign(key, method, path_and_query, &self.host, &date, body);
                headers.insert(HeaderName::from_static("x-ms-date"), header(&signed.date));
                headers.insert(
                    HeaderName::from_static("x-ms-content-sha256"),
                    header(&signed.content_sha256),
                );
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    header(&signed.authorization),
                );
            }
            Auth::Token(credential) => {
                let token = credential
                    .get_token(&[ACS_SCOPE], None)
                    .await
                    .map_err(|e| AcsError::Auth(e.to_string()))?;
                let value = format!("Bearer {}", token.token.secret());
                let mut value = header(&value);
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        Ok(headers)
    }
}

/// IMF-fixdate, as `x-ms-date` and `Repeatability-First-Sent` want it.
pub fn imf_date(at: chrono::DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The `Repeatability-Request-ID` for a logical send identified by `key`: a UUID, the same for
/// the same key in every process.
pub fn repeatability_id(key: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("handoff:{key}").as_bytes(),
    )
    .to_string()
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` (seconds) or `retry-after-ms` / `x-ms-retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    header_str(headers, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn transport_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "connection failed".into()
    } else {
        err.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_millis(200));
        assert_eq!(p.delay(2, None), Duration::from_millis(400));
        assert_eq!(p.delay(3, None), Duration::from_millis(800));
        assert_eq!(p.delay(20, None), Duration::from_secs(5));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn retry_after_headers_in_every_spelling() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn the_signed_host_keeps_the_port() {
        let http = reqwest::Client::new();
        let c = AcsClient::with_auth(
            "http://127.0.0.1:38107/",
            Auth::Key(Arc::new(vec![1])),
            http.clone(),
        );
        assert_eq!(c.host, "127.0.0.1:38107");
        assert_eq!(c.endpoint(), "http://127.0.0.1:38107");
        let c = AcsClient::with_auth(
            "https://res.communication.azure.com",
            Auth::Key(Arc::new(vec![1])),
            http,
        );
        assert_eq!(c.host, "res.communication.azure.com");
    }
}
