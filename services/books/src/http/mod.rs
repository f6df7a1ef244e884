//! The HTTP surface: one module per resource, each with its own `router()`, merged here. Operations
//! routes (`/health/*`, `/metrics`), fallbacks and the standard layers are added by
//! `platform::server::Server::serve`, not here.

mod books;
mod error;
pub mod etag;
mod ratings;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::TokenVerifier;
use platform::db::{Pools, ReadFrom};
use sqlx::PgPool;

use crate::cache::{BookCache, Loaded};
use crate::ratings::RatingStream;

/// What handlers share. Cheap to clone (the pools and the verifier are reference-counted).
#[derive(Clone)]
pub struct AppState {
    /// Writes and strong reads on the primary; catalog reads also on a replica while the primary
    /// is out of reach ([`AppState::read_catalog`]).
    pools: Pools,
    verifier: Arc<TokenVerifier>,
    cache: BookCache,
    ratings: Option<Arc<RatingStream>>,
    /// Ratings persisted at once instead of through the stream (a benchmark baseline).
    ratings_write_through: bool,
}

impl AppState {
    /// State without a cache (every read goes to the database); see [`AppState::with_cache`].
    pub fn new(pools: Pools, verifier: Arc<TokenVerifier>) -> AppState {
        AppState {
            pools,
            verifier,
            cache: BookCache::disabled(),
            ratings: None,
            ratings_write_through: false,
        }
    }

    /// Where accepted ratings go; without a stream, ratings are refused with 503.
    pub fn with_ratings(mut self, ratings: Arc<RatingStream>) -> AppState {
        self.ratings = Some(ratings);
        self
    }

    /// Persists each rating before answering instead (see `RatingsSettings::write_through`).
    pub fn with_ratings_written_through(mut self) -> AppState {
        self.ratings_write_through = true;
        self
    }

    pub fn with_cache(mut self, cache: BookCache) -> AppState {
        self.cache = cache;
        self
    }

    pub fn pool(&self) -> &PgPool {
        self.pools.primary()
    }

    /// Reads catalog data for the cache: from the primary, strong, so an answer after a write
    /// shows it; while the primary is out of reach (a failover), from a replica under the lag
    /// limit — browsing goes on, and the answer, eventual, is not cached ([`Loaded`]).
    pub async fn read_catalog<T, F, Fut>(&self, read: F) -> Result<Loaded<T>, sqlx::Error>
    where
        F: FnMut(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let (value, from) = self.pools.read_primary_else_replica(read).await?;
        Ok(Loaded {
            value,
            cacheable: from == ReadFrom::Primary,
        })
    }

    pub fn cache(&self) -> &BookCache {
        &self.cache
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
        .merge(ratings::router())
        .merge(crate::checkout::quote::router())
        .with_state(state)
}
