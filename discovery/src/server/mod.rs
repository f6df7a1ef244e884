//! The registry server: the subset of Consul's HTTP API our services, the gateway, `rs-consul` and
//! Prometheus' `consul_sd_configs` use, so real Consul can replace it in production — plus one
//! extension, Prometheus' HTTP SD format (`/v1/prometheus/targets`), for Prometheus builds without
//! Consul discovery.
//!
//! State is soft and in memory: after a restart the client agents notice (their TTL pass answers 404)
//! and register again.

use std::time::Duration;

use axum::Router;
use platform::server::{HttpConfig, Server, always_ready};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

mod agent_api;
mod blocking;
mod checks;
mod probe;
mod prometheus_sd;
mod query_api;
mod registration;
mod registry;
mod state;
mod views;

pub use registry::{NodeInfo, Registry};

/// The registry's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where to listen; Consul's port 8500 by default so Consul tooling finds it.
    pub http: HttpConfig,
    /// How often TTLs are evaluated, the critical reaper runs and due HTTP checks start, in ms.
    /// A TTL check turns critical at most this long after its TTL ran out.
    pub check_interval_ms: u64,
    /// The datacenter name reported in answers and `/v1/agent/self` (Prometheus reads it).
    pub datacenter: String,
    /// The node name every instance appears on, as if all ran on one Consul agent.
    pub node_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig {
                listen: "127.0.0.1:8500".into(),
                ..HttpConfig::default()
            },
            check_interval_ms: 1000,
            datacenter: "dc1".into(),
            node_name: "bookstore".into(),
        }
    }
}

/// Binds `config.http.listen` and serves until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = Server::bind(&config.http).await?;
    serve(server, config, shutdown).await
}

/// Serves on an already bound server (so callers can bind port 0 and learn the port first), runs the
/// check loop beside it, and stops both when `shutdown` fires.
pub async fn serve(
    server: Server,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    platform::metrics::install("discovery");
    tracing::info!(addr = %server.local_addr(), datacenter = %config.datacenter, "discovery registry listening");
    // A child token: stopping the check loop when serving ends must not cancel the caller's token.
    let stop = shutdown.child_token();
    let registry = Registry::new(&config, stop.clone());
    let interval = Duration::from_millis(config.check_interval_ms);
    let checks = tokio::spawn(probe::run_checks(registry.clone(), interval, stop.clone()));
    let served = server
        .serve(router(registry), always_ready(), stop.clone())
        .await;
    stop.cancel();
    if let Err(e) = checks.await {
        tracing::error!(error = %e, "the check loop failed");
    }
    served
}

/// The Consul API routes over `registry`, without the standard layers `Server::serve` adds (tests
/// drive it with `oneshot`).
pub fn router(registry: Registry) -> Router {
    agent_api::routes()
        .merge(query_api::routes())
        .merge(prometheus_sd::routes())
        .with_state(registry)
}
