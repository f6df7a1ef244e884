//! The HTTP surface: one module per resource, each with its own `router()`, merged here. Operations
//! routes (`/health/*`, `/metrics`), fallbacks and the standard layers are added by
//! `platform::server::Server::serve`, not here.

mod books;
mod error;
pub mod etag;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::TokenVerifier;
use sqlx::PgPool;

/// What handlers share. Cheap to clone (the pool and the verifier are reference-counted).
#[derive(Clone)]
pub struct AppState {
    pool: PgPool,
    verifier: Arc<TokenVerifier>,
}

impl AppState {
    pub fn new(pool: PgPool, verifier: Arc<TokenVerifier>) -> AppState {
        AppState { pool, verifier }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Lets the auth extractors (`AdminUser`, `MaybeAuthUser`) find the token verifier.
impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Arc<TokenVerifier> {
        state.verifier.clone()
    }
}

/// The service's own routes: `/api/books…` and the price quote checkout asks for. The participant
/// routes of checkout are merged by [`crate::Application`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(books::router())
        .merge(crate::checkout::quote::router())
        .with_state(state)
}
