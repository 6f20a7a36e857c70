//! API errors in Cloud Controller's shape: `{"errors":[{"code","title","detail"}]}` with
//! CC's codes and titles, so CF tooling and scripts can match on them.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::blobs::BlobError;
use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Authentication error")]
    NotAuthenticated,
    #[error("Invalid Auth Token")]
    InvalidAuthToken,
    #[error("You are not authorized to perform the requested action")]
    NotAuthorized,
    #[error("{0} not found")]
    NotFound(String),
    #[error("Unknown request")]
    UnknownRequest,
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Uniqueness(String),
    #[error("{0}")]
    BadQuery(String),
    #[error("Request invalid due to parse error: {0}")]
    Parse(String),
    #[error("An unknown error occurred.")]
    Internal(String),
}

impl ApiError {
    /// HTTP status, CF code and CF title.
    pub fn parts(&self) -> (StatusCode, u32, &'static str) {
        match self {
            ApiError::NotAuthenticated => (StatusCode::UNAUTHORIZED, 10002, "CF-NotAuthenticated"),
            ApiError::InvalidAuthToken => (StatusCode::UNAUTHORIZED, 1000, "CF-InvalidAuthToken"),
            ApiError::NotAuthorized => (StatusCode::FORBIDDEN, 10003, "CF-NotAuthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 10010, "CF-ResourceNotFound"),
            ApiError::UnknownRequest => (StatusCode::NOT_FOUND, 10000, "CF-NotFound"),
            ApiError::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                10008,
                "CF-UnprocessableEntity",
            ),
            ApiError::Uniqueness(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                10016,
                "CF-UniquenessError",
            ),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, 10005, "CF-BadQueryParameter"),
            ApiError::Parse(_) => (StatusCode::BAD_REQUEST, 1001, "CF-MessageParseError"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 10001, "UnknownError"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        if let ApiError::Internal(reason) = &self {
            // The client gets CC's opaque message; the operator gets the reason.
            tracing::error!(reason, "API internal error");
        }
        let body = json!({"errors": [{"code": code, "title": title, "detail": self.to_string()}]});
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, .. } => ApiError::NotFound(kind.to_owned()),
            StoreError::Conflict(msg) => ApiError::Uniqueness(msg),
            StoreError::Sqlite(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::Parse(e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadQuery(e.body_text())
    }
}
