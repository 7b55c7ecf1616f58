//! The one error type handlers return, and its one mapping to HTTP.
//!
//! Bad input gets our JSON error shape with a clear message; server-side failures get a generic
//! body and the cause is logged once, here, with its chain.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A backend is down or overloaded; the caller should retry (Event Grid does, on 503).
    #[error("temporarily unavailable")]
    Unavailable(#[source] anyhow_chain::Chain),
    #[error("internal error")]
    Unexpected(#[source] anyhow_chain::Chain),
}

/// A boxed error with its source chain, for logging.
pub mod anyhow_chain {
    #[derive(Debug)]
    pub struct Chain(pub Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
            Ok(())
        }
    }

    impl std::error::Error for Chain {}
}

impl ApiError {
    pub fn unexpected(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unexpected(anyhow_chain::Chain(Box::new(err)))
    }

    pub fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(anyhow_chain::Chain(Box::new(err)))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Unexpected(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_transient() {
            Self::unavailable(err)
        } else {
            Self::unexpected(err)
        }
    }
}

/// Our error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: backend unavailable")
            }
            Self::Unexpected(cause) => tracing::error!(error = %cause, "request failed"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, Self::Unavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}
