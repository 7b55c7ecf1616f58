//! WhatsApp routes: the ACS Advanced Messaging Event Grid webhook (+ `OPTIONS` handshake), the
//! Meta Cloud API webhook (`GET` handshake, signed `POST`), the customer's message log, and the
//! sandbox provider's outbox. Handlers only translate.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::ApiError;
use crate::app::AppState;
use crate::domain::{CustomerId, MessageRecord};
use crate::eventgrid;
use crate::whatsapp::{IngestError, Ingested, meta};

pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/channels/whatsapp/webhook",
            post(webhook)
                .options(options)
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .route(
            "/webhook/meta",
            get(meta_verify)
                .post(meta_webhook)
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        // Admin API: the API-key check (a later issue) goes in front of these two routes.
        .route("/api/v1/customers/{id}/messages", get(customer_messages))
        .route(
            "/api/v1/channels/whatsapp/sandbox/messages",
            get(sandbox_messages),
        )
}

async fn options(headers: HeaderMap) -> Response {
    eventgrid::options_response(&headers)
}

async fn webhook(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !eventgrid::authorised(
        state.settings.webhooks.event_grid_secret.as_ref(),
        query.get("code").map(String::as_str),
    ) {
        return Err(ApiError::Unauthorized("missing or wrong `code`".into()));
    }
    let body = body_or_error(&state, body)?;
    ingested(state.whatsapp.ingest(&body).await)
}

fn body_or_error(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.settings.webhooks.max_body_bytes,
            }
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

/// Stored (or a duplicate) → 200; the store down → 503 so the provider retries.
fn ingested(result: Result<Ingested, IngestError>) -> Result<Response, ApiError> {
    match result {
        Ok(Ingested::Validation { code }) => Ok(eventgrid::validation_response(&code)),
        Ok(Ingested::Events { .. }) => Ok(StatusCode::OK.into_response()),
        Err(IngestError::Envelope(err)) => Err(ApiError::BadRequest(err.to_string())),
        Err(IngestError::Notification(err)) => Err(ApiError::BadRequest(err.to_string())),
        Err(IngestError::Store(err)) => Err(ApiError::unavailable(err)),
    }
}

/// Meta's subscription handshake: echo `hub.challenge` as text/plain when the token matches.
async fn meta_verify(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let expected = state.settings.webhooks.meta_verify_token.as_ref();
    if !meta::subscription_valid(
        expected.map(|t| t.expose().as_str()),
        query.get("hub.mode").map(String::as_str),
        query.get("hub.verify_token").map(String::as_str),
    ) {
        return Err(ApiError::Forbidden(
            "wrong `hub.mode` or `hub.verify_token`".into(),
        ));
    }
    let challenge = query.get("hub.challenge").cloned().unwrap_or_default();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        challenge,
    )
        .into_response())
}

/// A Meta notification: the signature is checked over the exact bytes before anything parses
/// them; no app secret configured refuses every POST.
async fn meta_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(&state, body)?;
    let Some(secret) = state.settings.webhooks.meta_app_secret.as_ref() else {
        return Err(ApiError::Unauthorized(
            "META_APP_SECRET is not configured".into(),
        ));
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !meta::signature_valid(secret.expose().as_bytes(), signature, &body) {
        return Err(ApiError::Unauthorized(
            "missing or wrong `X-Hub-Signature-256`".into(),
        ));
    }
    ingested(state.whatsapp.ingest_meta(&body).await)
}

#[derive(Serialize)]
struct MessagesBody {
    messages: Vec<MessageRecord>,
}

async fn customer_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MessagesBody>, ApiError> {
    let customer =
        CustomerId::parse(&id).map_err(|e| ApiError::BadRequest(format!("customer id: {e}")))?;
    let messages = state.whatsapp.messages(&customer).await?;
    Ok(Json(MessagesBody { messages }))
}

async fn sandbox_messages(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.whatsapp.sandbox_records() {
        Some(records) => Ok(Json(serde_json::json!({ "messages": records })).into_response()),
        None => Err(ApiError::NotFound(
            "the sandbox WhatsApp provider is not in use".into(),
        )),
    }
}
