//! HTTP surface. Each module has one `router()`; they are merged here, and the cross-cutting
//! layers (request ids, tracing, timeout) are applied once. Handlers only translate between HTTP
//! and a plain async function of a service.

pub mod admin;
pub mod error;
pub mod health;
pub mod voice;
pub mod whatsapp;

use axum::Router;
use axum::http::{HeaderName, Request, StatusCode};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;

pub use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    Router::new()
        .merge(health::router())
        .merge(admin::router(state.clone()))
        .merge(whatsapp::router(state.settings.webhooks.max_body_bytes))
        .merge(voice::router())
        .fallback(not_found)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    // Paths only: query strings carry webhook secrets and call tokens.
                    TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                        let request_id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!(
                            "http",
                            method = %req.method(),
                            path = %req.uri().path(),
                            request_id,
                        )
                    }),
                )
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    timeout,
                ))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
