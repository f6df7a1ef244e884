//! Database errors a write can expect, turned into client errors where the query runs. Everything else
//! goes through platform's `From<sqlx::Error>`: 503 when the database is unreachable, else a logged 500.

use platform::ApiError;
use platform::problem::violated_constraint;
use sqlx::error::ErrorKind;

use crate::domain::Isbn;

/// The partial unique index on live books' ISBNs (migrations/0001).
pub const ISBN_UNIQUE: &str = "books_isbn_key";

/// Maps an INSERT/UPDATE failure: duplicate ISBN → 409; a CHECK violation → 422 (the domain types
/// mirror every CHECK, so reaching one means they drifted apart — logged, but still the client's input).
pub fn on_write(err: sqlx::Error, isbn: &Isbn) -> ApiError {
    if violated_constraint(&err) == Some(ISBN_UNIQUE) {
        return ApiError::Conflict(format!(
            "another book already has isbn {isbn}; ISBNs are unique among the catalog's books"
        ));
    }
    match &err {
        sqlx::Error::Database(db) if matches!(db.kind(), ErrorKind::CheckViolation) => {
            let constraint = db.constraint().unwrap_or("a check constraint");
            tracing::warn!(%constraint, "a CHECK refused what validation accepted");
            ApiError::Validation {
                detail: format!("the book violates {constraint}"),
                errors: Vec::new(),
            }
        }
        _ => ApiError::from(err),
    }
}
