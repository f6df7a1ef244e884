//! The HTTP surface: one module per resource, each with its own `router()`, merged here. Operations
//! routes (`/health/*`, `/metrics`), fallbacks and the standard layers are added by
//! `platform::server::Server::serve`, not here.

mod books;
mod error;
pub mod etag;

use axum::Router;
use sqlx::PgPool;

/// What handlers share. Cheap to clone (the pool is reference-counted).
#[derive(Clone)]
pub struct AppState {
    pool: PgPool,
}

impl AppState {
    pub fn new(pool: PgPool) -> AppState {
        AppState { pool }
    }
}

/// The service's own routes, all under `/api/books`.
pub fn router(state: AppState) -> Router {
    Router::new().merge(books::router()).with_state(state)
}
