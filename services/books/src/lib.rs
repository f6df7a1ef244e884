//! The catalog service. It owns the `books` database: books with optimistic concurrency (`ETag` /
//! `If-Match`), keyset pagination, filters and text search, soft deletes.
//!
//! A library so the `bookstore` binary (and tests) can start it: [`Application::build`] connects,
//! migrates and binds; [`Application::run_until_stopped`] serves until the token is cancelled.
//! Registering with the service registry is the caller's job.

pub mod checkout;
pub mod domain;
pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use coordinator::participant::{Participant, ParticipantFaults};
use platform::auth::{AuthConfig, TokenVerifier};
use platform::db::DbConfig;
use platform::server::{HttpConfig, ReadyCheck, Server};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use http::{AppState, router};

/// The name this service's metrics carry in their `service` label.
pub const SERVICE: &str = "books";

/// The schema, embedded at compile time; applying it takes an advisory lock, so several instances
/// starting at once migrate exactly once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
}

/// A started, bound, migrated service that is not yet serving.
pub struct Application {
    server: Server,
    pool: PgPool,
    verifier: Arc<TokenVerifier>,
    faults: ParticipantFaults,
}

impl Application {
    /// Connects to the database (waiting for it, so start order does not matter), applies the
    /// migrations, then binds the listener so the port is known before serving.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);
        platform::metrics::install(SERVICE);
        let pool = platform::db::connect(&config.db)
            .await
            .context("Failed to connect to the books database")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("Failed to apply the books migrations")?;
        let server = Server::bind(&config.http)
            .await
            .context("Failed to bind the books HTTP listener")?;
        Ok(Application {
            server,
            pool,
            verifier,
            faults: config.participant,
        })
    }

    /// The bound address (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` is cancelled and in-flight requests finish; ready while the database
    /// answers.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let participant = Participant::new(self.pool.clone())
            .with_branch(checkout::ReserveStock)
            .with_faults(self.faults);
        let api = router(AppState::new(self.pool.clone(), self.verifier.clone()))
            .merge(participant.router(self.verifier.clone()));
        let result = self
            .server
            .serve(api, database_ready(self.pool.clone()), shutdown)
            .await;
        self.pool.close().await;
        result
    }
}

type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Ready means the database answers: without it every route but health would be a 503.
fn database_ready(pool: PgPool) -> ReadyCheck {
    Arc::new(move || -> ReadyFuture {
        let pool = pool.clone();
        Box::pin(async move { platform::db::ping(&pool).await })
    })
}
