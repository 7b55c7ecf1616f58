//! The admin/ops API: customers' contexts and handoffs, for operators.
//!
//! Guarded by `ADMIN_API_KEY` (`x-api-key: <key>` or `Authorization: Bearer <key>`, compared in
//! constant time). Without a key configured, only requests from loopback are answered, so a
//! laptop can look without a deployment exposing customer data.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::app::AppState;
use crate::domain::{CustomerContext, CustomerId, Handoff, HandoffId};

/// The admin routes, each behind [`require_admin`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/customers/{id}", get(customer))
        .route("/api/v1/handoffs", get(handoffs))
        .route("/api/v1/handoffs/{id}", get(handoff))
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// The admin guard, also used by other modules' admin routes.
pub async fn require_admin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorise(
        state
            .settings
            .admin_api_key
            .as_ref()
            .map(|k| k.expose().as_str()),
        request.headers(),
        peer,
    )?;
    Ok(next.run(request).await)
}

fn authorise(key: Option<&str>, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    let Some(key) = key else {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(ApiError::Forbidden(
            "the admin API answers only loopback unless ADMIN_API_KEY is set".into(),
        ));
    };
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    match presented {
        Some(p) if p.len() == key.len() && bool::from(p.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        _ => Err(ApiError::Unauthorized(
            "a valid admin API key is required".into(),
        )),
    }
}

async fn customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    let id =
        CustomerId::parse(&id).map_err(|e| ApiError::BadRequest(format!("customer id: {e}")))?;
    let ctx = state
        .stores
        .contexts
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such customer".into()))?;
    Ok(Json(CustomerView::from(ctx)))
}

/// The context as operators see it, with its store version.
#[derive(serde::Serialize)]
pub struct CustomerView {
    #[serde(flatten)]
    context: CustomerContext,
    version: Option<String>,
}

impl From<CustomerContext> for CustomerView {
    fn from(context: CustomerContext) -> Self {
        let version = context.version.as_ref().map(|v| v.as_str().to_owned());
        Self { context, version }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    customer: Option<String>,
}

async fn handoffs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let items: Vec<Handoff> = match q.customer {
        Some(customer) => {
            let id = CustomerId::parse(&customer)
                .map_err(|e| ApiError::BadRequest(format!("customer: {e}")))?;
            let mut all = state.stores.handoffs.for_customer(&id).await?;
            all.truncate(limit);
            all
        }
        None => state.stores.handoffs.list(limit).await?,
    };
    Ok(Json(serde_json::json!({ "handoffs": items })))
}

async fn handoff(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Handoff>, ApiError> {
    let id =
        HandoffId::parse(&id).ok_or_else(|| ApiError::BadRequest("not a handoff id".into()))?;
    state
        .stores
        .handoffs
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no such handoff".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5000)
    }

    #[test]
    fn without_a_key_only_loopback_is_answered() {
        let h = HeaderMap::new();
        assert!(authorise(None, &h, peer("127.0.0.1")).is_ok());
        assert!(authorise(None, &h, peer("::1")).is_ok());
        assert!(matches!(
            authorise(None, &h, peer("10.0.0.4")),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn with_a_key_it_must_be_presented_from_anywhere() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            authorise(Some("k3y"), &h, peer("127.0.0.1")),
            Err(ApiError::Unauthorized(_))
        ));
        h.insert("x-api-key", "k3y".parse().unwrap());
        assert!(authorise(Some("k3y"), &h, peer("10.0.0.4")).is_ok());
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer k3y".parse().unwrap());
        assert!(authorise(Some("k3y"), &h, peer("10.0.0.4")).is_ok());
        h.insert("authorization", "Bearer k3z".parse().unwrap());
        assert!(authorise(Some("k3y"), &h, peer("10.0.0.4")).is_err());
    }
}
