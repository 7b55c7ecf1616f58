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
use crate::acs::jwt::TokenError;
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if let Some(tokens) = &state.voice.acs_tokens
        && let Err(err) = tokens.verify(authorization(&headers)).await
    {
        tracing::warn!(error = %err, "callback refused: ACS token");
        return Err(err.into());
    }
    check_size(&state, &body)?;
    state.voice.callbacks(query.token.as_deref(), &body).await?;
    Ok(StatusCode::OK)
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::KeysUnavailable(_) => Self::unavailable(err),
            TokenError::Missing
            | TokenError::Malformed(_)
            | TokenError::UnknownKey
            | TokenError::Rejected(_) => Self::Unauthorized(format!("ACS token: {err}")),
        }
    }
}

/// The media socket's read buffer. tungstenite zero-fills the whole free part of its read buffer
/// before every `read` (`FrameCodec::read_in`), and the default is 128 KiB: with ACS's ~1 KiB
/// audio frames arriving 50 times a second, that memset was a fifth of the service's CPU in
/// `bench calls` and the 128 KiB, once touched, stayed resident for every call
/// (docs/performance.md). Larger frames (a long transcription) still arrive whole: the buffer
/// grows for them.
const MEDIA_READ_BUFFER: usize = 8 * 1024;

/// ACS presents its signed token on the upgrade only with secure media streaming; the per-call
/// token in the URL is always checked (by the session), and a signed token, when presented,
/// must be valid. Refusals close the socket with 1008 (policy violation), as an unknown
/// per-call token does.
async fn media_ws(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let (Some(tokens), Some(presented)) = (&state.voice.acs_tokens, authorization(&headers))
        && let Err(err) = tokens.verify(Some(presented)).await
    {
        tracing::warn!(error = %err, "media socket refused: ACS token");
        return match err {
            // Nothing can be checked now: the upgrade fails, and ACS may connect again.
            TokenError::KeysUnavailable(_) => ApiError::from(err).into_response(),
            _ => upgrade.on_upgrade(|socket| call::close(socket, 1008, "unauthorized")),
        };
    }
    let service = state.voice.clone();
    upgrade
        .read_buffer_size(MEDIA_READ_BUFFER)
        .on_upgrade(move |socket| call::serve_media_socket(service, query.token, socket))
}

async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.voice.stats.snapshot())
}
