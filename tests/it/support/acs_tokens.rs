//! ACS's token issuer, faked at the wire: an HTTP server publishing a JWKS at `/calling/keys`
//! (the path ACS uses), and the RS256 tokens ACS would put on its callbacks, signed with the
//! published key, or with one it does not publish.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The ACS resource's immutable id the tests configure.
pub const AUDIENCE: &str = "0f5d7a2c-1b7e-4f38-9d5e-3c1a9e7b2f10";
pub const KEY_ID: &str = "acs-key-1";

/// Made once per test binary: the key the issuer publishes, and one it does not.
static KEYS: LazyLock<(RsaPrivateKey, RsaPrivateKey)> = LazyLock::new(|| {
    let mut rng = rsa::rand_core::OsRng;
    (
        RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"),
        RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"),
    )
});

#[derive(Default)]
struct Inner {
    fetches: AtomicU64,
    down: AtomicBool,
}

#[derive(Clone)]
pub struct TokenIssuer {
    /// The issuer URL (`iss`), also where the keys are served.
    pub url: String,
    inner: Arc<Inner>,
}

pub enum Signer {
    /// The published key, under its key id.
    Published,
    /// A key the issuer never published, presented under the published key's id.
    Forged,
}

impl TokenIssuer {
    pub async fn start() -> Self {
        LazyLock::force(&KEYS);
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/calling/keys", get(keys))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            inner,
        }
    }

    /// How many times the key set was requested.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::SeqCst)
    }

    /// While down, the key set answers 503.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// A token as ACS puts on a callback: valid for five minutes.
    pub fn token(&self) -> String {
        self.token_with(KEY_ID, Signer::Published, |_| {})
    }

    /// A token with its claims changed by `edit`, signed by `signer` under `kid`.
    pub fn token_with(&self, kid: &str, signer: Signer, edit: impl FnOnce(&mut Value)) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        });
        edit(&mut claims);
        let key = match signer {
            Signer::Published => &KEYS.0,
            Signer::Forged => &KEYS.1,
        };
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(der.as_bytes()))
            .expect("signed token")
    }
}

async fn keys(State(inner): State<Arc<Inner>>) -> Response {
    inner.fetches.fetch_add(1, Ordering::SeqCst);
    if inner.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let public = KEYS.0.to_public_key();
    let b64 = |bytes: Vec<u8>| URL_SAFE_NO_PAD.encode(bytes);
    // Shaped like ACS's: a certificate thumbprint and chain beside the RSA parameters, and a
    // key of another kind that must be skipped.
    axum::Json(json!({"keys": [
        {"kty": "RSA", "use": "sig", "kid": KEY_ID, "x5t": "dGh1bWI", "x5c": ["MIIB"],
         "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be())},
        {"kty": "EC", "use": "sig", "kid": "ec-1", "crv": "P-256",
         "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    ]}))
    .into_response()
}
