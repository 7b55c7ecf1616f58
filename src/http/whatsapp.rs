//! WhatsApp routes: the ACS Advanced Messaging Event Grid webhook (+ `OPTIONS` handshake), the
//! customer's message log, and the sandbox provider's outbox. Handlers only translate.

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
use crate::whatsapp::{IngestError, Ingested};

pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/channels/whatsapp/webhook",
            post(webhook)
                .options(options)
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
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.settings.webhooks.max_body_bytes,
            }
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    match state.whatsapp.ingest(&body).await {
        Ok(Ingested::Validation { code }) => Ok(eventgrid::validation_response(&code)),
        Ok(Ingested::Events { .. }) => Ok(StatusCode::OK.into_response()),
        Err(IngestError::Envelope(err)) => Err(ApiError::BadRequest(err.to_string())),
        Err(IngestError::Store(err)) => Err(ApiError::unavailable(err)),
    }
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
