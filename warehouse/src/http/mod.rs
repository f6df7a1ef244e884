//! The reports API (admin only): `/api/reports/*`, routed here by the gateway. Operations routes
//! and the standard layers come from `platform::server::Server::serve`.

mod loads;
mod params;
mod reports;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::TokenVerifier;

use crate::etl::Etl;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    etl: Etl,
    verifier: Arc<TokenVerifier>,
}

impl AppState {
    pub fn new(etl: Etl, verifier: Arc<TokenVerifier>) -> AppState {
        AppState { etl, verifier }
    }
}

/// Lets the auth extractors (`AdminUser`) find the token verifier.
impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Arc<TokenVerifier> {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(reports::router())
        .merge(loads::router())
        .with_state(state)
}
