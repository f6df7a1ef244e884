//! The catalog service. It owns the `books` database: books with optimistic concurrency (`ETag` /
//! `If-Match`), keyset pagination, filters and text search, soft deletes; reads through the Redis
//! cache ring ([`cache`]) and ratings written behind through a Redis Stream ([`ratings`]).
//!
//! A library so the `bookstore` binary (and tests) can start it: [`Application::build`] connects,
//! migrates and binds; [`Application::run_until_stopped`] serves until the token is cancelled.
//! Registering with the service registry is the caller's job.

pub mod cache;
pub mod checkout;
pub mod domain;
pub mod http;
pub mod ratings;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use coordinator::participant::{Participant, ParticipantFaults};
use platform::auth::{AuthConfig, TokenVerifier};
use platform::db::{DbConfig, Pools};
use platform::server::{HttpConfig, Server};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use http::{AppState, router};

/// The name this service's metrics carry in their `service` label.
pub const SERVICE: &str = "books";

/// The schema, embedded at compile time; applying it takes an advisory lock, so several instances
/// starting at once migrate exactly once. Public so tests can build a database of an earlier
/// version (`run_to`) and see [`Application::build`] migrate it.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Everything the catalog service reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Where to listen, the body limit and the shutdown grace period.
    pub http: HttpConfig,
    /// The `books` database this service owns (its URL, pool size and start-up patience).
    pub db: DbConfig,
    /// The token signing key (required) and the rest of the platform's auth settings; catalog
    /// writes need an admin token.
    pub auth: AuthConfig,
    /// Fault injection for the checkout branch (crash or answer late after a step); off by default.
    pub participant: ParticipantFaults,
    /// The Redis cache ring and the entries' lifetimes (docs/CACHE.md); no nodes, no cache.
    pub cache: cache::CacheSettings,
    /// The ratings stream and its persister (docs/CACHE.md, "Ratings").
    pub ratings: ratings::RatingsSettings,
}

/// A started, bound, migrated service that is not yet serving.
pub struct Application {
    server: Server,
    pool: PgPool,
    /// The pool's cluster view (a single server: the same pool), for readiness.
    pools: Pools,
    verifier: Arc<TokenVerifier>,
    faults: ParticipantFaults,
    cache: cache::BookCache,
    ratings: ratings::RatingsSettings,
    /// The ratings stream's node, when there is one.
    stream_node: Option<String>,
    /// Stops the cache ring's health loop when the application ends (or is dropped unserved).
    cache_stop: tokio_util::sync::DropGuard,
}

impl Application {
    /// Connects to the database (waiting for it, so start order does not matter), applies the
    /// migrations, then binds the listener so the port is known before serving.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);
        platform::metrics::install(SERVICE);
        let pools = Pools::connect(&config.db)
            .await
            .context("Failed to connect to the books database")?;
        let pool = pools.primary().clone();
        MIGRATOR
            .run(&pool)
            .await
            .context("Failed to apply the books migrations")?;
        let server = Server::bind(&config.http)
            .await
            .context("Failed to bind the books HTTP listener")?;
        let cache_stop = CancellationToken::new();
        let ring =
            platform::cache::Cache::start(config.cache.ring.clone(), cache_stop.clone()).await;
        if ring.is_enabled() {
            tracing::info!(nodes = ?config.cache.ring.nodes, up = ?ring.members(), "cache ring configured");
        }
        let stream_node = config
            .ratings
            .node(&config.cache.ring.nodes)
            .map(str::to_owned);
        Ok(Application {
            server,
            pool,
            pools,
            verifier,
            faults: config.participant,
            ratings: config.ratings,
            stream_node,
            cache: cache::BookCache::new(ring, config.cache),
            cache_stop: cache_stop.drop_guard(),
        })
    }

    /// The bound address (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` is cancelled and in-flight requests finish; ready while the database
    /// answers — on a cluster, while the primary or a replica under the lag limit does, so cached
    /// reads go on during a failover while writes and cache misses are answered 503 +
    /// `Retry-After` ([`platform::db::Pools::ready`]).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let participant = Participant::new(self.pool.clone())
            .with_branch(checkout::ReserveStock)
            .with_faults(self.faults);
        // Checkout changes stock inside the participant's transactions; this layer invalidates the
        // cache once they commit (see cache::checkout).
        let participant_routes =
            participant
                .router(self.verifier.clone())
                .layer(axum::middleware::from_fn_with_state(
                    self.cache.clone(),
                    cache::checkout::invalidate_after_commit,
                ));
        let mut state =
            AppState::new(self.pools.clone(), self.verifier.clone()).with_cache(self.cache.clone());
        if self.ratings.write_through {
            state = state.with_ratings_written_through();
        }
        let persister_stop = CancellationToken::new();
        let mut persister = None;
        if let Some(node) = &self.stream_node {
            ratings::register_series();
            let stream = ratings::RatingStream::new(&self.ratings, node)
                .context("Failed to configure the ratings stream")?;
            state = state.with_ratings(Arc::new(stream));
            let consumer = format!("books-{}", uuid::Uuid::now_v7());
            let worker = ratings::persister::Persister::new(
                self.ratings.clone(),
                node,
                consumer,
                self.pool.clone(),
                self.cache.clone(),
            )
            .context("Failed to configure the ratings persister")?;
            persister = Some(tokio::spawn(worker.run(persister_stop.clone())));
        }
        let api = router(state).merge(participant_routes);
        let result = self
            .server
            .serve(api, self.pools.ready_check(), shutdown)
            .await;
        // The persister stops at once (a batch in flight rolls back); whatever it had not
        // acknowledged stays pending in the stream, and another persister claims it.
        persister_stop.cancel();
        if let Some(persister) = persister {
            let _ = persister.await;
        }
        self.pool.close().await;
        drop(self.cache_stop);
        result
    }
}
