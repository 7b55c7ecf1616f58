//! Liveness and readiness.
//!
//! `/healthz` says the process is alive. `/readyz` does a real round trip to every configured
//! backend, concurrently and with a deadline, and answers 503 naming each one that failed. The
//! WhatsApp provider reports too when it has something to say (Meta: an expired access token,
//! error 190, fails readiness until a Graph call succeeds again).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::app::AppState;

const CHECK_DEADLINE: Duration = Duration::from_secs(3);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus text exposition: everything recorded with the `metrics` macros, and the voice
/// counters.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = crate::telemetry::metrics().render();
    body.push_str(&state.voice.stats.prometheus());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub backends: Vec<BackendStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
    /// Voice counters (media failures, live sessions): informative, never a reason to fail.
    pub voice: crate::voice::stats::VoiceStatsSnapshot,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Checks every backend; the plain function behind `/readyz`.
pub async fn check_readiness(state: &AppState) -> Readiness {
    let checks = state.stores.health.iter().map(|backend| {
        optional_check(backend.name(), async move {
            Some(backend.check().await.map_err(|err| err.to_string()))
        })
    });
    let provider = optional_check("whatsapp_provider", state.whatsapp.provider_readiness());
    let inbox = optional_check("inbox_log", async {
        let checked = state.whatsapp.inbox_readiness().await;
        checked.map(|result| result.map_err(|err| err.to_string()))
    });
    let (stores, provider, inbox) =
        futures::join!(futures::future::join_all(checks), provider, inbox);
    let mut backends: Vec<BackendStatus> = stores.into_iter().flatten().collect();
    backends.extend(inbox);
    backends.extend(provider);
    let failing: Vec<_> = backends.iter().filter(|b| !b.ok).map(|b| b.name).collect();
    Readiness {
        status: if failing.is_empty() {
            "ready"
        } else {
            "unavailable"
        },
        backends,
        failing,
        voice: state.voice.stats.snapshot(),
    }
}

/// A check that may have nothing to report (`None`), bounded by the same deadline.
async fn optional_check(
    name: &'static str,
    check: impl Future<Output = Option<Result<(), String>>>,
) -> Option<BackendStatus> {
    let error = match tokio::time::timeout(CHECK_DEADLINE, check).await {
        Ok(None) => return None,
        Ok(Some(Ok(()))) => None,
        Ok(Some(Err(reason))) => Some(reason),
        Err(_) => Some(format!("no answer within {CHECK_DEADLINE:?}")),
    };
    Some(BackendStatus {
        name,
        ok: error.is_none(),
        error,
    })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = check_readiness(&state).await;
    let status = if readiness.failing.is_empty() {
        StatusCode::OK
    } else {
        for backend in readiness.backends.iter().filter(|b| !b.ok) {
            metrics::counter!("handoff_backend_unready_total", "backend" => backend.name)
                .increment(1);
            tracing::warn!(
                backend = backend.name,
                error = backend.error.as_deref().unwrap_or(""),
                "not ready"
            );
        }
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}
