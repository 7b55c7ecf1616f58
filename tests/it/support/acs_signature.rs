//! An independent check of ACS request signing, for the fakes: recomputes the HMAC-SHA256
//! signature from what arrived on the wire (method, path and query, x-ms-date, host with port,
//! content hash) the way the service's documentation describes it, without using the crate's own
//! signer, so a signer bug cannot hide behind a test that shares it.

use axum::http::{HeaderMap, Method, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub fn verify(key: &[u8], method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let hash = B64.encode(Sha256::digest(body));
    if header("x-ms-content-sha256") != hash {
        return false;
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let to_sign = format!(
        "{}\n{}\n{};{};{}",
        method.as_str(),
        path_and_query,
        header("x-ms-date"),
        header("host"),
        hash
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(to_sign.as_bytes());
    let expected = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
        B64.encode(mac.finalize().into_bytes())
    );
    header("authorization") == expected
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn signed(key: &[u8], host: &str, body: &[u8]) -> HeaderMap {
        let date = "Mon, 17 Nov 2025 10:04:05 GMT";
        let s = handoff::acs::sign(
            key,
            "POST",
            "/messages/notifications:send?api-version=2024-08-30",
            host,
            date,
            body,
        );
        let mut h = HeaderMap::new();
        h.insert("x-ms-date", HeaderValue::from_str(&s.date).unwrap());
        h.insert(
            "x-ms-content-sha256",
            HeaderValue::from_str(&s.content_sha256).unwrap(),
        );
        h.insert(
            "authorization",
            HeaderValue::from_str(&s.authorization).unwrap(),
        );
        h.insert("host", HeaderValue::from_static("127.0.0.1:38107"));
        h
    }

    #[test]
    fn accepts_the_crate_signature_and_rejects_tampering() {
        let uri: Uri = "/messages/notifications:send?api-version=2024-08-30"
            .parse()
            .unwrap();
        let body = br#"{"kind":"text"}"#;
        let ok = signed(b"key", "127.0.0.1:38107", body);
        assert!(verify(b"key", &Method::POST, &uri, &ok, body));
        assert!(
            !verify(b"key", &Method::POST, &uri, &ok, br#"{"kind":"texT"}"#),
            "body changed"
        );
        assert!(
            !verify(b"other", &Method::POST, &uri, &ok, body),
            "wrong key"
        );
        assert!(
            !verify(b"key", &Method::PUT, &uri, &ok, body),
            "wrong method"
        );
        let other_uri: Uri = "/messages/notifications:send?api-version=2025-01-15-preview"
            .parse()
            .unwrap();
        assert!(
            !verify(b"key", &Method::POST, &other_uri, &ok, body),
            "wrong query"
        );
        let portless = signed(b"key", "127.0.0.1", body);
        assert!(
            !verify(b"key", &Method::POST, &uri, &portless, body),
            "host signed without its port"
        );
    }
}
