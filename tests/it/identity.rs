//! Entra ID (managed identity) for ACS and Cosmos DB when no key is configured, against a token
//! endpoint faked at the wire the way Azure Container Apps serves it (`IDENTITY_ENDPOINT` +
//! `X-IDENTITY-HEADER`, `resource` and `client_id` in the query).
//!
//! These tests set process environment variables, which is safe because nextest runs every test
//! in its own process (`scripts/test` uses nextest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use handoff::acs::{AcsClient, AcsRequest, Retry};
use handoff::config::{AcsAuth, AcsSettings, CosmosSettings};
use handoff::domain::{CustomerContext, CustomerId};
use handoff::store::ContextStore;
use handoff::store::cosmos::CosmosStore;
use serde_json::{Value, json};

use crate::support::services::CosmosServer;

#[derive(Clone, Default)]
struct Seen {
    token_requests: Arc<Mutex<Vec<HashMap<String, String>>>>,
    acs_authorizations: Arc<Mutex<Vec<String>>>,
}

const IDENTITY_HEADER: &str = "identity-header-secret";

async fn token(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    seen.token_requests.lock().unwrap().push(q.clone());
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(IDENTITY_HEADER)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad identity header"})),
        );
    }
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "api-version"})),
        );
    }
    let resource = q.get("resource").cloned().unwrap_or_default();
    let expires = (chrono::Utc::now().timestamp() + 3600).to_string();
    (
        StatusCode::OK,
        axum::Json(json!({
            "access_token": format!("token-for:{resource}"),
            "expires_on": expires,
            "resource": resource,
            "token_type": "Bearer"
        })),
    )
}

async fn acs_send(State(seen): State<Seen>, headers: HeaderMap) -> (StatusCode, axum::Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.acs_authorizations.lock().unwrap().push(auth);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"receipts": [{"messageId": "m1", "to": "14255550123"}]})),
    )
}

async fn start(seen: Seen) -> String {
    let app = Router::new()
        .route("/msi/token", get(token))
        .route("/messages/notifications:send", post(acs_send))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn use_identity_endpoint(base: &str) {
    // SAFETY: nextest runs each test in its own process; nothing else reads the environment
    // concurrently in this one.
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", format!("{base}/msi/token"));
        std::env::set_var("IDENTITY_HEADER", IDENTITY_HEADER);
    }
}

#[tokio::test]
async fn acs_requests_carry_a_managed_identity_token_for_communication_services() {
    let seen = Seen::default();
    let base = start(seen.clone()).await;
    use_identity_endpoint(&base);
    let settings = AcsSettings {
        endpoint: base.clone(),
        auth: AcsAuth::ManagedIdentity {
            client_id: Some("client-123".into()),
        },
    };
    let client = AcsClient::new(&settings, reqwest::Client::new()).unwrap();
    let request = AcsRequest::post_json(
        "/messages/notifications:send",
        "2024-08-30",
        &json!({"channelRegistrationId": "c", "to": ["14255550123"], "kind": "text", "content": "hi"}),
        Retry::Repeatable,
    );
    let response = client.send(&request).await.unwrap();
    assert_eq!(response.status, 202);
    let tokens = seen.token_requests.lock().unwrap().clone();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["resource"], "https://communication.azure.com/");
    assert_eq!(
        tokens[0]["client_id"], "client-123",
        "the user-assigned identity"
    );
    let auth = seen.acs_authorizations.lock().unwrap().clone();
    assert_eq!(
        auth,
        vec!["Bearer token-for:https://communication.azure.com/".to_owned()]
    );
    // The token is cached: a second request asks for no new one.
    client.send(&request).await.unwrap();
    assert_eq!(seen.token_requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn cosmos_without_a_key_authenticates_with_the_managed_identity() {
    let seen = Seen::default();
    let base = start(seen.clone()).await;
    use_identity_endpoint(&base);
    let server = CosmosServer::start();
    let store = CosmosStore::new(&CosmosSettings {
        endpoint: server.endpoint(),
        key: None,
        database: "entra".into(),
        managed_identity_client_id: Some("client-456".into()),
    })
    .unwrap();
    let id = CustomerId::parse_phone("+14255550123").unwrap();
    store
        .create(&CustomerContext::new(id.clone(), chrono::Utc::now()))
        .await
        .unwrap();
    assert!(store.get(&id).await.unwrap().is_some());
    let tokens = seen.token_requests.lock().unwrap().clone();
    assert!(!tokens.is_empty(), "a token was requested");
    assert!(tokens.iter().all(|t| t["client_id"] == "client-456"));
    assert!(
        tokens
            .iter()
            .all(|t| t["resource"].contains("cosmos") || t["resource"].contains("documents")),
        "a Cosmos DB token: {tokens:?}"
    );
}
