//! The customers-and-orders service: sign-up, credit top-ups and reading orders. It owns the `orders`
//! database and applies its migrations at start-up.
//!
//! The `bookstore` binary loads a [`Config`], calls [`Application::build`] and then
//! [`Application::run_until_stopped`]; registering with discovery is the caller's job.

use std::net::SocketAddr;

use anyhow::Context;
use coordinator::participant::{Participant, ParticipantFaults};
use platform::auth::AuthConfig;
use platform::db::DbConfig;
use platform::server::{HttpConfig, Server};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub mod checkout;
pub mod domain;
pub mod http;
pub mod messages;

pub use http::{AppState, router};

/// Everything the service needs to start; every field has a default so no file is required.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Where to listen, body size limit and shutdown grace period.
    pub http: HttpConfig,
    /// The `orders` database: URL of the service's own role, pool size and timeouts.
    pub db: DbConfig,
    /// Limits on customer credit, so a typo or a hostile client cannot mint unbounded money.
    pub credit: CreditConfig,
    /// Token signing key (required), token lifetime and the admin account's credentials.
    pub auth: AuthConfig,
    /// Checkout's deadlines and peers.
    pub checkout: checkout::CheckoutConfig,
    /// Fault injection for the checkout branch (crash or answer late after a step); off by default.
    pub participant: ParticipantFaults,
}

/// Bounds on credit top-ups, in cents.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct CreditConfig {
    /// Largest single top-up (default 1 000 000 = $10,000); larger amounts get 422.
    pub max_topup_cents: i64,
    /// Largest balance a customer may hold (default 100 000 000 000 = $1,000,000,000); a top-up that
    /// would exceed it gets 422. Also keeps every sum far from `bigint` overflow.
    pub max_balance_cents: i64,
}

impl Default for CreditConfig {
    fn default() -> Self {
        CreditConfig {
            max_topup_cents: 1_000_000,
            max_balance_cents: 100_000_000_000,
        }
    }
}

impl CreditConfig {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_topup_cents > 0 && self.max_balance_cents > 0,
            "credit.max_topup_cents and credit.max_balance_cents must be positive, got {self:?}"
        );
        Ok(())
    }
}

/// A service that has connected, migrated and bound its port, ready to serve.
pub struct Application {
    server: Server,
    state: AppState,
    checkout: checkout::CheckoutConfig,
    faults: ParticipantFaults,
    internal_token: String,
}

impl Application {
    /// Connects to the database (waiting for it if it is still starting), applies the migrations
    /// and binds the listener, so a port of 0 is resolved before [`Application::local_addr`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        config.credit.validate()?;
        let auth = http::Auth::new(&config.auth)?;
        domain::password::warm_up().await?;
        let pools = platform::db::Pools::connect(&config.db).await?;
        let pool = pools.primary().clone();
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("Failed to apply the orders database migrations")?;
        let server = Server::bind(&config.http).await?;
        Ok(Application {
            server,
            state: AppState::new(pools, config.credit, auth),
            checkout: config.checkout,
            faults: config.participant,
            internal_token: config.auth.internal_token.expose().to_owned(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The instance's database pools (shared with the running server): tests read the cluster
    /// as the instance sees it ([`platform::db::Pools::topology`]).
    pub fn pools(&self) -> platform::db::Pools {
        self.state.pools.clone()
    }

    /// Serves until `shutdown` is cancelled; ready while it can serve requests — on a cluster,
    /// while the primary or a replica under the lag limit answers ([`platform::db::Pools::ready`]):
    /// during a failover it keeps serving eventual reads and answers writes 503 + `Retry-After`.
    /// Closes the pool after the last request has drained.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.state.pool.clone();
        let ready = self.state.pools.ready_check();
        let mut state = self.state;
        if let Some(registry) = &self.checkout.registry {
            let peers = checkout::peers::Peers::follow(
                registry,
                &self.checkout.books_service,
                &self.checkout.coordinator_service,
                &self.internal_token,
                shutdown.clone(),
            )?;
            state.checkout = Some(checkout::Checkout {
                peers,
                config: self.checkout.clone(),
            });
        }
        let participant = Participant::new(pool.clone())
            .with_branch(checkout::PlaceOrder)
            .with_faults(self.faults);
        let api = router(state.clone()).merge(participant.router(state.auth.verifier.clone()));
        let result = self.server.serve(api, ready, shutdown).await;
        pool.close().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_load_through_the_platform_config_loader() -> anyhow::Result<()> {
        let config: Config = platform::config::load(None)?;
        assert_eq!(config.credit.max_topup_cents, 1_000_000);
        assert_eq!(config.credit.max_balance_cents, 100_000_000_000);
        Ok(())
    }

    #[tokio::test]
    async fn a_non_positive_credit_limit_is_refused_before_anything_starts() {
        let mut config = Config::default();
        config.credit.max_topup_cents = 0;
        let err = Application::build(config)
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("max_topup_cents")));
    }
}
