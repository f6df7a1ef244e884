//! The API gateway (first cut): routes `/api/*` by path prefix to the healthy instances of a service,
//! found and watched through the registry, round robin, over keep-alive connection pools.
//!
//! The request path is a chain of small tower services so resilience and auth slot in as layers
//! without touching the forwarding itself:
//!
//! ```text
//! axum (ops routes, request id, trace, RED metrics)  →  Proxy: route → pick instance → Forward
//! ```

pub mod config;
pub mod exchange;
pub mod forward;
pub mod proxy;
pub mod routes;
pub mod upstreams;

use std::net::SocketAddr;
use std::sync::Arc;

use platform::server::{ReadyCheck, Server};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A bound gateway, ready to serve.
pub struct Application {
    server: Server,
    proxy: proxy::Proxy,
}

impl Application {
    /// Binds the listener and starts watching every routed service in the registry.
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Application> {
        let table = routes::RouteTable::new(&config.routes)?;
        let upstreams = Arc::new(upstreams::Upstreams::watch(
            &config.registry,
            table.services(),
            shutdown,
        ));
        let forward = forward::Forward::new(&config.upstream)?;
        let server = Server::bind(&config.http).await?;
        Ok(Application {
            server,
            proxy: proxy::Proxy::new(table, upstreams, forward, config.http.body_limit_bytes),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let upstreams = self.proxy.upstreams();
        // Ready once every routed service has at least one healthy instance.
        let ready: ReadyCheck = Arc::new(move || {
            let missing = upstreams.services_without_instances();
            Box::pin(async move {
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("no healthy instance of: {}", missing.join(", ")))
                }
            })
        });
        self.server
            .serve(proxy::router(self.proxy), ready, shutdown)
            .await
    }
}
