//! The HTTP API: one module per resource, each with its own `router()`, merged here.
//!
//! Handlers take the identity-free extractors they need today; when authentication arrives, an
//! identity extractor (`AuthUser`) is added as one more argument, with no change to the handler bodies.

use axum::Router;
use platform::{ApiError, FieldError};
use sqlx::PgPool;

use crate::CreditConfig;

pub mod credit;
pub mod customers;
pub mod idempotency;
pub mod object;
pub mod orders;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub credit: CreditConfig,
}

impl AppState {
    pub fn new(pool: PgPool, credit: CreditConfig) -> Self {
        AppState { pool, credit }
    }
}

/// `/api/customers…` and `/api/orders…`; the server adds health, metrics and the standard layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(customers::router())
        .merge(credit::router())
        .merge(orders::router())
        .with_state(state)
}

/// A 422 from the field errors a parser collected. Parsers only fail with at least one error; the
/// fallback keeps an empty list from ever becoming a success.
pub(crate) fn invalid_fields(errors: Vec<FieldError>) -> ApiError {
    ApiError::check(errors)
        .err()
        .unwrap_or_else(|| ApiError::BadRequest("the request is invalid".into()))
}

/// The 404 for a customer id nobody has.
pub(crate) fn customer_not_found(id: uuid::Uuid) -> ApiError {
    ApiError::NotFound(format!("no customer has the id {id}"))
}
