//! The API gateway: routes `/api/*` by path prefix to the healthy instances of each service, found
//! and watched through the registry, with per-instance breakers, reroutes under a retry budget, a
//! per-service breaker, deadlines, rate limits, load shedding and token authentication.
//!
//! Every mechanism is a tower layer in its own file; [`stack`] assembles them in one place.

pub mod admin;
pub mod api_docs;
pub mod auth;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod exchange;
pub mod forward;
pub mod live_metrics;
pub mod proxy;
pub mod rate_limit;
pub mod retry;
pub mod routes;
pub mod service_breaker;
pub mod shed;
pub mod stack;
pub mod upstreams;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use platform::server::{ReadyCheck, Server};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

pub use config::Config;

/// A bound gateway, ready to serve.
pub struct Application {
    server: Server,
    router: Router,
    observed: stack::Observed,
    threads: usize,
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
        let (router, observed) = app(&config, upstreams)?;
        live_metrics::register(observed.clone());
        let server = Server::bind(&config.http).await?;
        Ok(Application {
            server,
            router,
            observed,
            threads: config.threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let upstreams = self.observed.upstreams.clone();
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
            .serve_per_core(self.router, ready, shutdown, self.threads)
            .await
    }
}

/// The gateway's routes over the given upstream sets: `/api/…` through the whole stack,
/// `/admin/upstreams` for the admin. Also used by tests with fixed instance sets.
pub fn app(
    config: &Config,
    upstreams: Arc<upstreams::Upstreams>,
) -> anyhow::Result<(Router, stack::Observed)> {
    config.breaker.validate()?;
    let table = routes::RouteTable::new(&config.routes)?;
    let forward = forward::Forward::new(&config.upstream)?;
    let (upstream, observed) = stack::upstream_stack(config, upstreams, forward);
    let proxy = proxy::Proxy::new(
        table,
        config.timeouts.clone(),
        upstream,
        config.http.body_limit_bytes,
    );
    let auth = auth::AuthLayer::new(&config.auth)?;
    let front = ServiceBuilder::new()
        // Shed first: past capacity, even authentication is work we cannot afford.
        .layer(shed::ShedLayer::new(&config.shed)?)
        // Then identify the caller, so rate limits apply per subject rather than per address.
        .layer(auth.clone())
        .layer(rate_limit::RateLimitLayer::new(&config.rate_limit)?)
        .service(proxy);
    let admin = Router::new()
        .route("/admin/upstreams", get(admin::upstreams))
        .with_state(observed.clone())
        .layer(auth);
    let router = Router::new()
        .route_service("/api/{*path}", front.clone())
        .route_service("/api", front)
        .merge(admin)
        .merge(api_docs::router());
    Ok((router, observed))
}
