//! Voice routes: the `IncomingCall` Event Grid webhook, Call Automation callbacks, the media
//! WebSocket, and the voice counters. Handlers only translate; the work is in
//! [`crate::voice::VoiceService`].

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::ApiError;
use crate::app::AppState;
use crate::eventgrid;
use crate::voice::{IncomingOutcome, VoiceServiceError, call};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/calls/incoming", post(incoming).options(options))
        .route("/api/v1/calls/callbacks", post(callbacks))
        .route("/api/v1/media/ws", get(media_ws))
        .route("/api/v1/voice/stats", get(stats))
}

#[derive(Debug, Deserialize)]
struct CodeQuery {
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl From<VoiceServiceError> for ApiError {
    fn from(err: VoiceServiceError) -> Self {
        match err {
            VoiceServiceError::Unauthorized => Self::Unauthorized("missing or wrong secret".into()),
            VoiceServiceError::BadRequest(message) => Self::BadRequest(message),
            VoiceServiceError::Store(err) => err.into(),
            VoiceServiceError::ProviderUnavailable(err) => Self::unavailable(err),
        }
    }
}

fn check_size(state: &AppState, body: &Bytes) -> Result<(), ApiError> {
    let limit = state.settings.webhooks.max_body_bytes;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

async fn incoming(
    State(state): State<AppState>,
    Query(query): Query<CodeQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_size(&state, &body)?;
    match state.voice.incoming(query.code.as_deref(), &body).await? {
        IncomingOutcome::Validation(code) => Ok(eventgrid::validation_response(&code)),
        IncomingOutcome::Handled { .. } => Ok(StatusCode::OK.into_response()),
    }
}

async fn options(headers: HeaderMap) -> Response {
    eventgrid::options_response(&headers)
}

async fn callbacks(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_size(&state, &body)?;
    state.voice.callbacks(query.token.as_deref(), &body).await?;
    Ok(StatusCode::OK)
}

/// The media socket's read buffer. tungstenite zero-fills the whole free part of its read buffer
/// before every `read` (`FrameCodec::read_in`), and the default is 128 KiB: with ACS's ~1 KiB
/// audio frames arriving 50 times a second, that memset was a fifth of the service's CPU in
/// `bench calls` and the 128 KiB, once touched, stayed resident for every call
/// (docs/performance.md). Larger frames (a long transcription) still arrive whole: the buffer
/// grows for them.
const MEDIA_READ_BUFFER: usize = 8 * 1024;

async fn media_ws(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let service = state.voice.clone();
    upgrade
        .read_buffer_size(MEDIA_READ_BUFFER)
        .on_upgrade(move |socket| call::serve_media_socket(service, query.token, socket))
}

async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.voice.stats.snapshot())
}
