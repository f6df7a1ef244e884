//! Checkout across the books and orders databases: the coordinator that drives two-phase commit and
//! sagas (with leased recovery), and the [`participant`] module both services use to take part.
//! The protocol is described in docs/TRANSACTIONS.md.
//!
//! The `bookstore` binary loads a [`Config`], calls [`Application::build`] and then
//! [`Application::run_until_stopped`]; registering the coordinator with discovery is the caller's
//! job (use [`Config::registry`], the same registry the coordinator finds its participants in).
//!
//! Inside: [`client`] speaks the participant protocol; `driver` drives one transaction; `store` is
//! the coordinator database (fenced writes, leases, claims); `recovery` renews leases and takes over
//! transactions whose lease expired; `orphans` resolves prepared gids nobody will finish.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use discovery::client::RegistryConfig;
use platform::auth::{AuthConfig, TokenVerifier};
use platform::db::DbConfig;
use platform::server::{HttpConfig, ReadyCheck, Server};
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

mod backoff;
pub mod client;
mod config;
mod core;
mod driver;
mod http;
mod lease;
mod metrics;
pub mod model;
mod orphans;
pub mod participant;
mod recovery;
mod store;

pub use config::{CoordinatorConfig, CoordinatorFaults, CrashPoint};
pub use model::{AbortReason, BranchState, Mode, TransactionView, TxState};

/// Everything the coordinator needs to start; every field has a default so no file is required.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Where to listen, body size limit and shutdown grace period.
    pub http: HttpConfig,
    /// The `coordinator` database.
    pub db: DbConfig,
    /// The signing key (required by the platform's verifier) and `internal_token`: required here,
    /// both to accept `/internal/transactions` and to call the participants.
    pub auth: AuthConfig,
    /// The registry the participants are found in (and where `bookstore` registers this instance).
    pub registry: RegistryConfig,
    /// Leases, recovery, the orphan scan, timeouts and retries; see [`CoordinatorConfig`].
    pub coordinator: CoordinatorConfig,
    /// Crash points for tests and chaos runs (`BOOKSTORE_FAULTS__CRASH_AT`); off by default.
    pub faults: CoordinatorFaults,
}

/// A coordinator that has connected, migrated and bound its port, ready to serve.
pub struct Application {
    server: Server,
    coordinator: Arc<core::Coordinator>,
    verifier: Arc<TokenVerifier>,
    /// Stops the participant watches if the application is dropped without running.
    _watches: DropGuard,
}

impl Application {
    /// Checks the settings, connects to the database (waiting for it if it is still starting),
    /// applies the migrations and binds the listener, so a port of 0 is resolved before
    /// [`Application::local_addr`]. Nothing is driven until [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        config.coordinator.validate()?;
        metrics::register();
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);
        anyhow::ensure!(
            !config.auth.internal_token.is_empty(),
            "auth.internal_token is empty: the coordinator needs the platform's internal \
             credential (BOOKSTORE_AUTH__INTERNAL_TOKEN) to accept transactions and to call \
             participants"
        );
        if let Some(point) = config.faults.crash_at {
            tracing::warn!(
                ?point,
                "fault injection is on: this coordinator will abort the process \
                at that point of every two-phase commit it starts"
            );
        }
        let pool = platform::db::connect(&config.db).await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("Failed to apply the coordinator database migrations")?;
        let stopping = CancellationToken::new();
        let client = client::ParticipantClient::new(
            config.registry.clone(),
            &config.auth.internal_token,
            config.coordinator.participant_timeout(),
            stopping.clone(),
        )?;
        let owner = config.coordinator.resolved_instance_id();
        let server = Server::bind(&config.http).await?;
        tracing::info!(instance = %owner, prefix = %config.coordinator.gid_prefix,
            "coordinator ready to start");
        let coordinator = Arc::new(core::Coordinator::new(
            pool,
            client,
            config.coordinator,
            config.faults,
            owner,
            stopping.clone(),
        ));
        Ok(Application {
            server,
            coordinator,
            verifier,
            _watches: stopping.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// This process's lease owner name (`coordinator.instance_id`, or the generated one).
    pub fn instance_id(&self) -> &str {
        &self.coordinator.owner
    }

    /// Serves, renews leases, recovers expired transactions and scans for orphans until `shutdown`
    /// is cancelled; ready while the database answers. On shutdown, waiting callers get their 202
    /// at once, drivers stop and their leases are released so a peer takes over immediately; the
    /// pool is closed last.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            server,
            coordinator,
            verifier,
            _watches,
        } = self;
        let stopping = coordinator.stopping.clone();
        let relay = tokio::spawn({
            let (shutdown, stopping) = (shutdown.clone(), stopping.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => stopping.cancel(),
                    () = stopping.cancelled() => {}
                }
            }
        });
        let loops = [
            tokio::spawn(recovery::renew_leases(coordinator.clone())),
            tokio::spawn(recovery::recover(coordinator.clone())),
            tokio::spawn(orphans::scan(coordinator.clone())),
        ];
        let pool = coordinator.pool.clone();
        let state = http::AppState {
            coordinator: coordinator.clone(),
            verifier,
        };
        let result = server
            .serve(
                http::router(state),
                ready_when_db_answers(pool.clone()),
                shutdown,
            )
            .await;
        coordinator.stop().await;
        for task in loops {
            let _ = task.await;
        }
        let _ = relay.await;
        pool.close().await;
        drop(_watches);
        result
    }
}

fn ready_when_db_answers(pool: sqlx::PgPool) -> ReadyCheck {
    Arc::new(move || {
        let pool = pool.clone();
        let check: Pin<Box<dyn Future<Output = Result<(), String>> + Send>> =
            Box::pin(async move { platform::db::ping(&pool).await });
        check
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn the_defaults_load_through_the_platform_config_loader() {
        // In a jail: another test sets BOOKSTORE_* variables.
        figment::Jail::expect_with(|_jail| {
            let config: Config = platform::config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.coordinator, CoordinatorConfig::default());
            assert_eq!(config.faults.crash_at, None);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn settings_and_faults_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOOKSTORE_FAULTS__CRASH_AT", "after_decision");
            jail.set_env("BOOKSTORE_COORDINATOR__LEASE_MS", "7000");
            jail.set_env("BOOKSTORE_REGISTRY__URL", "http://127.0.0.1:18500");
            let config: Config = platform::config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.faults.crash_at, Some(CrashPoint::AfterDecision));
            assert_eq!(config.coordinator.lease_ms, 7000);
            assert_eq!(
                config.coordinator.lease_renew_ms, 1000,
                "the rest keeps its default"
            );
            assert_eq!(config.registry.url, "http://127.0.0.1:18500");
            Ok(())
        });
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_anything_starts() {
        let mut config = Config::default();
        config.coordinator.gid_prefix = "Not:Valid".into();
        let err = Application::build(config)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("gid_prefix")));

        let mut config = Config::default();
        config.auth.jwt_secret = "0123456789abcdef0123456789abcdef".into();
        let err = Application::build(config)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("internal_token")),
            "no internal token"
        );
    }
}
