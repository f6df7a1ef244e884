//! RFC 9457 problem details, the one error shape every process answers with.
//!
//! Handlers return [`ApiError`]; each variant says which status it becomes. Unexpected errors become a
//! 500 that is logged with its cause and never shows the cause to the client.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `WWW-Authenticate` challenge every 401 carries (RFC 6750).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"bookstore\"";

/// One invalid field of a request body or query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem+json body. `type` is a stable URI-ish slug clients can branch on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
    /// Seconds, mirrored into the `Retry-After` header.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Extension members (RFC 9457 §3.2), serialized next to the standard ones; deserializing
    /// collects every member that is not a standard one here. Add them with
    /// [`Problem::with_extension`].
    #[serde(flatten, default)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// The members [`Problem`] serializes itself; an extension may not reuse them.
const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "errors"];

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// Adds the extension member `name` (for example a conflict's machine-readable reason).
    /// A standard member's name (`type`, `title`, `status`, `detail`, `errors`) is not an
    /// extension: it is ignored (and a debug build panics), so the body never has duplicate keys.
    pub fn with_extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        debug_assert!(
            !STANDARD_MEMBERS.contains(&name),
            "{name} is a standard problem member, not an extension"
        );
        if !STANDARD_MEMBERS.contains(&name) {
            self.extensions.insert(name.to_owned(), value.into());
        }
        self
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The error every handler returns. The variant decides the status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (syntax, unknown parameter shape, bad cursor).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credentials, or credentials that do not verify. Answered with
    /// `WWW-Authenticate: Bearer`; the detail must never contain the credential itself.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but this identity may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: a business rule or uniqueness conflict.
    #[error("{0}")]
    Conflict(String),
    /// 412: the `If-Match` version is stale.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 428: a conditional request needs `If-Match`.
    #[error("{0}")]
    PreconditionRequired(String),
    /// 413: the body is over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid, with the fields at fault.
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 503: a dependency is unavailable; try again after `retry_after` seconds.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after: u64 },
    /// 500: a bug or an unexpected failure. Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 naming one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Validation {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    /// A 422 from several field errors, or `Ok(())` when there are none.
    pub fn check(errors: Vec<FieldError>) -> Result<(), ApiError> {
        if errors.is_empty() {
            return Ok(());
        }
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(ApiError::Validation { detail, errors })
    }

    pub fn to_problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            ApiError::BadRequest(d) => Problem::new(S::BAD_REQUEST, "bad-request", d),
            ApiError::Unauthorized(d) => Problem::new(S::UNAUTHORIZED, "unauthorized", d),
            ApiError::Forbidden(d) => Problem::new(S::FORBIDDEN, "forbidden", d),
            ApiError::NotFound(d) => Problem::new(S::NOT_FOUND, "not-found", d),
            ApiError::Conflict(d) => Problem::new(S::CONFLICT, "conflict", d),
            ApiError::PreconditionFailed(d) => {
                Problem::new(S::PRECONDITION_FAILED, "precondition-failed", d)
            }
            ApiError::PreconditionRequired(d) => {
                Problem::new(S::PRECONDITION_REQUIRED, "precondition-required", d)
            }
            ApiError::PayloadTooLarge(d) => {
                Problem::new(S::PAYLOAD_TOO_LARGE, "payload-too-large", d)
            }
            ApiError::UnsupportedMediaType(d) => {
                Problem::new(S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", d)
            }
            ApiError::Validation { detail, errors } => {
                Problem::new(S::UNPROCESSABLE_ENTITY, "validation", detail)
                    .with_errors(errors.clone())
            }
            ApiError::Unavailable {
                detail,
                retry_after,
            } => Problem::new(S::SERVICE_UNAVAILABLE, "unavailable", detail)
                .with_retry_after(*retry_after),
            ApiError::Internal(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error occurred; it has been logged",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "request failed unexpectedly");
        }
        let mut response = self.to_problem().into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(BEARER_CHALLENGE),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached, is shutting down or failing over, or that aborted the
    /// transaction for a conflict the client may simply retry is a 503 with `Retry-After`; anything
    /// else unexpected is a 500. Constraint violations a handler expects are mapped where the query
    /// runs, not here.
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) {
            tracing::warn!(error = %err, "database unavailable or transaction conflict");
            return ApiError::Unavailable {
                detail: "the database is unavailable or busy; try again shortly".into(),
                retry_after: 1,
            };
        }
        if login_refused(&err) {
            // Not the client's doing, and nothing it sent was lost: the database is unavailable
            // to this service (a locked role, a rotated password) until an operator acts.
            tracing::error!(error = %err, "the database refuses this service's login");
            return ApiError::Unavailable {
                detail: "the database is unavailable; try again later".into(),
                retry_after: 5,
            };
        }
        ApiError::Internal(anyhow::Error::new(err).context("database query failed"))
    }
}

/// Whether retrying later may succeed: connection loss, pool exhaustion, server shutdown or
/// recovery (SQLSTATE class 08, 57P01–57P03), read-only after a failover (25006), serialization
/// failure and deadlock (40001, 40P01).
pub fn is_transient(err: &sqlx::Error) -> bool {
    crate::db::retry::classify(err).is_retryable()
}

/// Whether the server refused the connection's login (SQLSTATE class 28: a role that may not log
/// in, a wrong password).
pub fn login_refused(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")))
}

/// The name of a violated constraint, if `err` is one; lets handlers turn a known violation into 409/422.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn validation_errors_name_each_field() {
        let err = ApiError::check(vec![
            FieldError::new("price_cents", "must be at least 0"),
            FieldError::new("title", "must not be empty"),
        ])
        .expect_err("two errors");
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = body_of(response).await;
        assert_eq!(body["errors"][1]["field"], "title");
        assert_eq!(
            body["detail"],
            "price_cents: must be at least 0; title: must not be empty"
        );
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let response = ApiError::Internal(anyhow::anyhow!("password=hunter2")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert!(!body.to_string().contains("hunter2"));
    }

    #[test]
    fn lost_connections_are_transient_and_missing_rows_are_not() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&io));
        assert!(matches!(ApiError::from(io), ApiError::Unavailable { .. }));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(matches!(
            ApiError::from(sqlx::Error::RowNotFound),
            ApiError::Internal(_)
        ));
    }

    #[tokio::test]
    async fn extensions_sit_next_to_the_standard_members_and_round_trip() {
        let problem = Problem::new(StatusCode::CONFLICT, "refused", "not enough stock")
            .with_extension("refusal", serde_json::json!({"kind": "insufficient-stock"}));
        let body = body_of(problem.clone().into_response()).await;
        assert_eq!(body["type"], "/problems/refused");
        assert_eq!(body["refusal"]["kind"], "insufficient-stock");
        let parsed: Problem = serde_json::from_value(body).expect("a problem");
        assert_eq!(parsed, problem);
        let plain = body_of(ApiError::NotFound("gone".into()).into_response()).await;
        assert_eq!(
            plain.as_object().map(|o| o.len()),
            Some(4),
            "no extension members unless added: {plain}"
        );
    }

    #[tokio::test]
    async fn unavailable_carries_retry_after() {
        let response = ApiError::Unavailable {
            detail: "down".into(),
            retry_after: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
