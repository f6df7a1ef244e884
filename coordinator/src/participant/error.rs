//! What a branch and the participant answer when the answer is not a success, and how each becomes
//! problem+json.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use platform::{ApiError, Problem};
use serde::{Deserialize, Serialize};

/// A definite business "no": not enough stock, not enough credit, a price that changed… Nothing of
/// the branch is kept. `kind` is one of docs/TRANSACTIONS.md's kinds (`insufficient-stock`,
/// `insufficient-credit`, `price-changed`, `unknown-book`); `extra` holds the kind's own fields
/// (for example `short: [...]`), serialized next to `kind` and `detail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: String,
    pub detail: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Refusal {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind: kind.into(),
            detail: detail.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a kind-specific field (`kind` and `detail` are not fields: they are ignored).
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Refusal {
        if name != "kind" && name != "detail" {
            self.extra.insert(name.to_owned(), value.into());
        }
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// How a [`Branch`](super::Branch)'s work can fail. Whatever the error, the participant rolls the
/// transaction back: nothing of the branch is kept.
#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    /// A business refusal: 409 `refused`.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The payload is not what the branch takes: 422.
    #[error("invalid payload: {0}")]
    Invalid(String),
    /// Could not get the locks in time (or a deadlock / serialization failure): 503, retry.
    #[error("busy: {0}")]
    Busy(String),
    /// Anything else from the database: 500 (503 when the database is unreachable).
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl BranchError {
    pub fn refused(kind: impl Into<String>, detail: impl Into<String>) -> BranchError {
        BranchError::Refused(Refusal::new(kind, detail))
    }
}

impl From<Refusal> for BranchError {
    fn from(refusal: Refusal) -> BranchError {
        BranchError::Refused(refusal)
    }
}

/// The SQLSTATEs after which the transaction is gone but retrying may well succeed: lock timeout
/// (55P03), deadlock (40P01), serialization failure (40001), statement timeout / cancel (57014).
const BUSY_SQLSTATES: [&str; 4] = ["55P03", "40P01", "40001", "57014"];

/// The SQLSTATE of a database error.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

impl From<sqlx::Error> for BranchError {
    fn from(err: sqlx::Error) -> BranchError {
        match sqlstate(&err) {
            Some(code) if BUSY_SQLSTATES.contains(&code.as_str()) => BranchError::Busy(format!(
                "the database could not lock in time ({code}): {err}"
            )),
            _ => BranchError::Db(err),
        }
    }
}

/// Why a participant operation did not succeed; each variant is one row of the contract's table.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// 409 `refused`: the branch said no; nothing is kept.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// 409 `aborted`: an abort (2PC) or a compensation (saga) came first and blocks this late
    /// prepare/action.
    #[error("{0}")]
    Aborted(String),
    /// 409 `not-prepared`: commit of a gid that is neither prepared nor committed.
    #[error("the transaction is neither prepared nor committed")]
    NotPrepared,
    /// 409 `already-committed`: abort of a committed gid.
    #[error("the transaction is already committed and can no longer be aborted")]
    AlreadyCommitted,
    /// 422: a bad payload or a branch this participant does not have.
    #[error("{0}")]
    Invalid(String),
    /// 503 `busy`: a lock was not free in time; nothing is kept; retry.
    #[error("{0}")]
    Busy(String),
    /// 500 (503 when the database is unreachable): the outcome is unknown to the caller.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// 500: a bug, for example a branch that ended the participant's transaction itself.
    #[error("{0}")]
    Internal(String),
}

impl From<BranchError> for ParticipantError {
    fn from(err: BranchError) -> ParticipantError {
        match err {
            BranchError::Refused(refusal) => ParticipantError::Refused(refusal),
            BranchError::Invalid(detail) => ParticipantError::Invalid(detail),
            BranchError::Busy(detail) => ParticipantError::Busy(detail),
            BranchError::Db(err) => ParticipantError::Db(err),
        }
    }
}

impl From<sqlx::Error> for ParticipantError {
    fn from(err: sqlx::Error) -> ParticipantError {
        BranchError::from(err).into()
    }
}

impl ParticipantError {
    /// The `outcome` label of `participant_operations_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ParticipantError::Refused(_) => "refused",
            ParticipantError::Aborted(_) => "blocked",
            ParticipantError::NotPrepared => "not_prepared",
            ParticipantError::AlreadyCommitted => "already_committed",
            ParticipantError::Invalid(_) => "invalid",
            ParticipantError::Busy(_) => "busy",
            ParticipantError::Db(_) | ParticipantError::Internal(_) => "error",
        }
    }

    /// The problem+json body. `Db` and `Internal` never show their cause (see [`ApiError`]).
    pub fn to_problem(&self) -> Problem {
        match self {
            ParticipantError::Refused(refusal) => {
                Problem::new(StatusCode::CONFLICT, "refused", &refusal.detail).with_extension(
                    "refusal",
                    serde_json::to_value(refusal).unwrap_or(serde_json::Value::Null),
                )
            }
            ParticipantError::Aborted(detail) => {
                Problem::new(StatusCode::CONFLICT, "aborted", detail)
            }
            ParticipantError::NotPrepared => Problem::new(
                StatusCode::CONFLICT,
                "not-prepared",
                "this gid is neither prepared nor committed here: commit must follow a successful \
                 prepare",
            ),
            ParticipantError::AlreadyCommitted => Problem::new(
                StatusCode::CONFLICT,
                "already-committed",
                "this gid is already committed here; it can no longer be aborted",
            ),
            ParticipantError::Invalid(detail) => ApiError::Validation {
                detail: detail.clone(),
                errors: Vec::new(),
            }
            .to_problem(),
            ParticipantError::Busy(detail) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", detail).with_retry_after(1)
            }
            ParticipantError::Db(err) if platform::problem::is_transient(err) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; the outcome is unknown, retry",
            )
            .with_retry_after(1),
            ParticipantError::Db(_) | ParticipantError::Internal(_) => {
                ApiError::Internal(anyhow::anyhow!("hidden")).to_problem()
            }
        }
    }
}

impl IntoResponse for ParticipantError {
    fn into_response(self) -> Response {
        match &self {
            ParticipantError::Db(err) if platform::problem::is_transient(err) => {
                tracing::warn!(error = %err, "participant: database unavailable");
            }
            ParticipantError::Db(_) | ParticipantError::Internal(_) => {
                tracing::error!(error = %self, "participant operation failed unexpectedly");
            }
            _ => {}
        }
        self.to_problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_flatten_their_fields_next_to_kind_and_detail() {
        let refusal = Refusal::new("insufficient-stock", "book 3: 1 left")
            .with(
                "short",
                serde_json::json!([{"book_id": 3, "requested": 2, "available": 1}]),
            )
            .with("kind", "ignored");
        let json = serde_json::to_value(&refusal).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "insufficient-stock",
                "detail": "book 3: 1 left",
                "short": [{"book_id": 3, "requested": 2, "available": 1}],
            })
        );
        assert_eq!(
            serde_json::from_value::<Refusal>(json).expect("parse"),
            refusal
        );
    }

    #[test]
    fn every_error_has_the_contract_status_and_type() {
        for (error, status, kind) in [
            (
                ParticipantError::Refused(Refusal::new("price-changed", "x")),
                409,
                "/problems/refused",
            ),
            (
                ParticipantError::Aborted("x".into()),
                409,
                "/problems/aborted",
            ),
            (ParticipantError::NotPrepared, 409, "/problems/not-prepared"),
            (
                ParticipantError::AlreadyCommitted,
                409,
                "/problems/already-committed",
            ),
            (
                ParticipantError::Invalid("x".into()),
                422,
                "/problems/validation",
            ),
            (ParticipantError::Busy("x".into()), 503, "/problems/busy"),
            (
                ParticipantError::Db(sqlx::Error::RowNotFound),
                500,
                "/problems/internal",
            ),
            (
                ParticipantError::Internal("secret cause".into()),
                500,
                "/problems/internal",
            ),
        ] {
            let problem = error.to_problem();
            assert_eq!((problem.status, problem.kind.as_str()), (status, kind));
            assert!(!problem.detail.contains("secret"), "{problem:?}");
        }
        let refused = ParticipantError::Refused(Refusal::new("unknown-book", "no book 9"));
        assert_eq!(
            refused.to_problem().extensions["refusal"]["kind"],
            "unknown-book"
        );
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(ParticipantError::Db(io).to_problem().status, 503);
    }
}
