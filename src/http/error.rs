//! Typed JSON errors: `{"error": {"code", "message", "sqlstate"?}}` with stable codes.
//! Messages come from our own typed errors and PostgreSQL's; none can carry a credential.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::targets::CheckoutError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub sqlstate: Option<String>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlstate: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            sqlstate: None,
            retry_after: None,
        }
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    pub fn unauthorized() -> Self {
        // Deliberately vague: never say which part of a signature or token was wrong.
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or missing signature or token",
        )
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    pub fn timeout(m: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
    pub fn payload_too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m)
    }
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this uid; slow down",
        );
        e.retry_after = Some(retry_after.max(1));
        e
    }
    pub fn pool_exhausted(m: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "pool_exhausted", m);
        e.retry_after = Some(1);
        e
    }

    /// A PostgreSQL error: its SQLSTATE decides the status.
    pub fn sql(e: &tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return Self::unavailable(format!("the server connection failed: {e}"));
        };
        let code = db.code().code();
        let (status, api_code) = match code {
            "57014" => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            c if c.starts_with("08")
                || c.starts_with("28")
                || c.starts_with("53")
                || c.starts_with("57P") =>
            {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            c if c.starts_with("40") => (StatusCode::CONFLICT, "sql_error"),
            _ => (StatusCode::BAD_REQUEST, "sql_error"),
        };
        let mut err = Self::new(status, api_code, db.message().to_string());
        err.sqlstate = Some(code.to_string());
        err
    }
}

impl From<CheckoutError> for ApiError {
    fn from(e: CheckoutError) -> Self {
        match e {
            CheckoutError::Exhausted { .. } => ApiError::pool_exhausted(e.to_string()),
            CheckoutError::NotReady { .. }
            | CheckoutError::Unavailable { .. }
            | CheckoutError::ShuttingDown { .. } => ApiError::unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                sqlstate: self.sqlstate.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("digits are a valid header"),
            );
        }
        response
    }
}
