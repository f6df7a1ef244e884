//! The data warehouse (docs/WAREHOUSE.md): a star schema in its own `warehouse` database, kept
//! current by a scheduled, incremental, idempotent ETL from the books and orders databases, and the
//! admin reports served over it.
//!
//! A library so the `bookstore` binary (and tests) can start it: [`Application::build`] connects,
//! migrates and binds; [`Application::run_until_stopped`] serves the reports and runs the schedule
//! until the token is cancelled. [`etl::Etl`] is the ETL on its own (`bookstore warehouse load`).

pub mod cli;
pub mod etl;
pub mod http;
pub mod progress;
pub mod schedule;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use platform::auth::{AuthConfig, TokenVerifier};
use platform::db::DbConfig;
use platform::server::{HttpConfig, ReadyCheck, Server};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use etl::{Etl, EtlSettings, Mode, Trigger};

/// The name this service's metrics carry in their `service` label, and its registry name.
pub const SERVICE: &str = "warehouse";

/// The schema, embedded at compile time; applying it takes an advisory lock, so two warehouse
/// processes starting at once migrate exactly once.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Everything the warehouse reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Where to listen, the body limit and the shutdown grace period.
    pub http: HttpConfig,
    /// The `warehouse` database this service owns.
    pub db: DbConfig,
    /// The source databases, read with the read-only `warehouse_reader` role (replicas welcome).
    pub sources: Sources,
    /// The token signing key; every report needs an admin token.
    pub auth: AuthConfig,
    /// The schedule and batch size of the ETL.
    pub etl: EtlSettings,
}

/// Where the ETL reads from.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Sources {
    /// The `books` database (books and ratings).
    pub books: DbConfig,
    /// The `orders` database (customers, orders and order lines).
    pub orders: DbConfig,
}

/// Applies the warehouse schema (for tools and tests that load without serving).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply the warehouse migrations")
}

/// Connects to the warehouse (waiting for it) and migrates it; a single-server source is connected
/// lazily, so a source that is down fails runs (recorded, retried) instead of the start-up (a
/// cluster source waits for its primary at start-up, like every cluster client).
pub async fn connect(config: &Config) -> anyhow::Result<Etl> {
    let warehouse = platform::db::connect(&config.db)
        .await
        .context("Failed to connect to the warehouse database")?;
    migrate(&warehouse).await?;
    let books = etl::placement::SourcePool::connect(&config.sources.books)
        .await
        .context("books source")?;
    let orders = etl::placement::SourcePool::connect(&config.sources.orders)
        .await
        .context("orders source")?;
    Ok(Etl::new(warehouse, books, orders, config.etl.clone()))
}

/// A started, bound, migrated warehouse that is not yet serving.
pub struct Application {
    server: Server,
    etl: Etl,
    verifier: Arc<TokenVerifier>,
}

impl Application {
    /// Connects, migrates, checks the schedule, then binds so the port is known before serving.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);
        platform::metrics::install(SERVICE);
        schedule::parse(&config.etl.schedule)?;
        let etl = connect(&config).await?;
        let server = Server::bind(&config.http)
            .await
            .context("Failed to bind the warehouse HTTP listener")?;
        Ok(Application {
            server,
            etl,
            verifier,
        })
    }

    /// The bound address (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The ETL this application runs (tests trigger and inspect runs through it).
    pub fn etl(&self) -> &Etl {
        &self.etl
    }

    /// Serves the reports and runs the schedule until `shutdown`; a run in progress is abandoned
    /// (its transaction rolls back, so the warehouse keeps the previous run's state).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let scheduler = tokio::spawn(schedule::run(self.etl.clone(), shutdown.clone()));
        let state = http::AppState::new(self.etl.clone(), self.verifier.clone());
        let ready = database_ready(self.etl.warehouse().clone());
        let result = self
            .server
            .serve(http::router(state), ready, shutdown.clone())
            .await;
        shutdown.cancel();
        let _ = scheduler.await;
        self.etl.warehouse().close().await;
        result
    }
}

type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Ready means the warehouse database answers: the reports need nothing else (a source that is
/// down only delays the next load).
fn database_ready(pool: PgPool) -> ReadyCheck {
    Arc::new(move || -> ReadyFuture {
        let pool = pool.clone();
        Box::pin(async move { platform::db::ping(&pool).await })
    })
}
