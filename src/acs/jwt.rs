//! The token ACS signs on every Call Automation callback (and, with secure media streaming, on
//! the media socket's upgrade): `Authorization: Bearer <JWT>`, RS256, a few minutes' lifetime,
//! issuer `https://acscallautomation.communication.azure.com`, audience the ACS resource's
//! immutable id, signing keys published at `{issuer}/calling/keys` (JWKS).
//!
//! Keys are fetched on first use and kept; a token naming a key we do not hold fetches them
//! again, at most once a minute (ACS rotates keys; a flood of made-up key ids must not become a
//! flood of fetches), and they are refreshed after a day. When a refresh fails the keys held
//! are kept; with none held a token cannot be checked, the caller answers 503 (so that the
//! event is delivered again rather than lost), and the keys are tried again every two seconds.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// ACS's issuer for Call Automation tokens.
pub const ACS_CALL_AUTOMATION_ISSUER: &str = "https://acscallautomation.communication.azure.com";
/// Keys older than this are fetched again before use.
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// An unknown key id fetches the keys again at most this often.
const REFETCH_GAP: Duration = Duration::from_secs(60);
/// With no keys held (the first fetch failed), they are tried again at most this often.
const FIRST_FETCH_GAP: Duration = Duration::from_secs(2);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The signing keys could not be fetched and none are held: nothing can be checked.
    #[error("ACS signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Checks ACS-signed tokens for one audience.
pub struct AcsTokenVerifier {
    keys_url: String,
    validation: Validation,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
    /// One fetch at a time; others wait for it and then read what it stored.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl KeySet {
    /// Whether a fetch may start at `now`: not within [`REFETCH_GAP`] of the last attempt
    /// ([`FIRST_FETCH_GAP`] while no keys are held).
    fn fetch_due(&self, now: Instant) -> bool {
        let gap = if self.by_id.is_empty() {
            FIRST_FETCH_GAP
        } else {
            REFETCH_GAP
        };
        self.attempted_at
            .is_none_or(|at| now.saturating_duration_since(at) >= gap)
    }
}

impl AcsTokenVerifier {
    /// `issuer` without a trailing slash; `audience` the ACS resource's immutable id.
    pub fn new(issuer: &str, audience: &str, http: reqwest::Client) -> Self {
        let issuer = issuer.trim_end_matches('/').to_owned();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            keys_url: format!("{issuer}/calling/keys"),
            validation,
            http,
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks an `Authorization` header value.
    pub async fn verify(&self, authorization: Option<&str>) -> Result<(), TokenError> {
        let token = bearer(authorization)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Rejected(format!(
                "algorithm {:?}, not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("no key id (kid)".into()))?;
        let key = self.key(&kid).await?;
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key, &self.validation)
            .map(drop)
            .map_err(|e| TokenError::Rejected(e.to_string()))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.held(kid, false) {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched them while this one waited.
        if let Some(key) = self.held(kid, false) {
            return Ok(key);
        }
        if self.fetch_due() {
            self.keys_mut().attempted_at = Some(Instant::now());
            match self.fetch().await {
                Ok(by_id) => {
                    let mut keys = self.keys_mut();
                    keys.by_id = by_id;
                    keys.fetched_at = Some(Instant::now());
                }
                Err(err) => {
                    tracing::warn!(url = %self.keys_url, error = %err, "ACS signing keys not fetched; keeping those held");
                    if self.keys().by_id.is_empty() {
                        return Err(TokenError::KeysUnavailable(err));
                    }
                }
            }
        }
        if self.keys().by_id.is_empty() {
            return Err(TokenError::KeysUnavailable(
                "the last fetch failed; the next is due within seconds".into(),
            ));
        }
        // Stale keys are better than none while ACS's key endpoint is unreachable.
        self.held(kid, true).ok_or(TokenError::UnknownKey)
    }

    /// The key set. A panic while it was held cannot leave it half-written (every write is
    /// one assignment), so a poisoned lock is used as it is rather than failing every callback.
    fn keys(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key if held (and fresh, unless `stale_ok`).
    fn held(&self, kid: &str, stale_ok: bool) -> Option<DecodingKey> {
        let keys = self.keys();
        let fresh = keys
            .fetched_at
            .is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
        keys.by_id.get(kid).filter(|_| fresh || stale_ok).cloned()
    }

    fn fetch_due(&self) -> bool {
        self.keys().fetch_due(Instant::now())
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .http
            .get(&self.keys_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        let keys = signing_keys(&body)?;
        tracing::info!(keys = keys.len(), "ACS signing keys fetched");
        Ok(keys)
    }
}

/// The RSA signing keys of a JWKS document, by key id. Keys of other kinds, without an id, or
/// that do not parse are skipped (read leniently); a document with none is an error.
fn signing_keys(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a key set: {e}"))?;
    let keys: HashMap<_, _> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            DecodingKey::from_jwk(&jwk).ok().map(|key| (kid, key))
        })
        .collect();
    if keys.is_empty() {
        return Err("the key set holds no RSA signing key".into());
    }
    Ok(keys)
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(authorization: Option<&str>) -> Result<&str, TokenError> {
    let value = authorization.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header_value() {
        assert_eq!(bearer(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Bearer")), Err(TokenError::Missing));
        assert_eq!(bearer(Some("Bearer ")), Err(TokenError::Missing));
    }

    #[test]
    fn key_sets_are_read_leniently() {
        let set = br#"{"keys": [
            {"kty": "RSA", "use": "sig", "kid": "k1", "n": "sXch", "e": "AQAB", "x5t": "ignored"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "weird", "kid": "w"},
            "not a key"
        ]}"#;
        let keys = signing_keys(set).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["k1"]);
        assert!(signing_keys(br#"{"keys": []}"#).is_err());
        assert!(signing_keys(b"<html>").is_err());
    }

    #[test]
    fn keys_are_fetched_again_at_most_once_a_minute_or_every_two_seconds_while_none_are_held() {
        let start = Instant::now();
        let mut keys = KeySet::default();
        assert!(keys.fetch_due(start), "the first fetch");
        keys.attempted_at = Some(start);
        assert!(!keys.fetch_due(start + Duration::from_secs(1)));
        assert!(
            keys.fetch_due(start + FIRST_FETCH_GAP),
            "none held: soon again"
        );
        keys.by_id.insert(
            "k1".into(),
            DecodingKey::from_rsa_components("sXch", "AQAB").unwrap(),
        );
        keys.fetched_at = Some(start);
        assert!(!keys.fetch_due(start + FIRST_FETCH_GAP));
        assert!(!keys.fetch_due(start + Duration::from_secs(59)));
        assert!(
            keys.fetch_due(start + REFETCH_GAP),
            "an unknown key, a minute on"
        );
    }

    #[tokio::test]
    async fn malformed_tokens_are_rejected_before_any_key_is_fetched() {
        // The keys URL is never reached: these fail on their header.
        let verifier = AcsTokenVerifier::new("http://127.0.0.1:9", "aud", reqwest::Client::new());
        assert_eq!(verifier.verify(None).await, Err(TokenError::Missing));
        assert!(matches!(
            verifier.verify(Some("Bearer not-a-jwt")).await,
            Err(TokenError::Malformed(_))
        ));
        // {"alg":"HS256","kid":"k"} . {} . sig
        let hs256 = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert!(matches!(
            verifier.verify(Some(&format!("Bearer {hs256}"))).await,
            Err(TokenError::Rejected(_))
        ));
        // {"alg":"RS256"} without a key id
        let no_kid = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
        assert!(matches!(
            verifier.verify(Some(&format!("Bearer {no_kid}"))).await,
            Err(TokenError::Malformed(_))
        ));
    }
}
