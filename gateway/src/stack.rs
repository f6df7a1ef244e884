//! The gateway's request path, assembled in one place and read top to bottom.
//!
//! ```text
//! HTTP:      Shed ─► Auth ─► RateLimit ─► Proxy (route, buffer, build the Exchange)
//! Exchange:  ServiceBreaker ─► Deadline ─► Retry ─► Balance ─► ForwardEndpoint
//! ```

use std::sync::Arc;

use axum::body::Body;
use http::Response;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::balance::{BalanceLayer, ForwardEndpoint, UpstreamStatus};
use crate::budget::RetryBudgets;
use crate::config::Config;
use crate::deadline::Deadline;
use crate::exchange::{Exchange, UpstreamError};
use crate::forward::Forward;
use crate::retry::Retry;
use crate::service_breaker::{ServiceBreaker, ServiceBreakerState, ServiceBreakers};
use crate::upstreams::Upstreams;

/// The upstream half of the path, type-erased so the proxy can hold it.
pub type UpstreamStack = BoxCloneSyncService<Exchange, Response<Body>, UpstreamError>;

/// Handles on the stack's state, for `/admin/upstreams` and `bookstore status`.
#[derive(Clone)]
pub struct Observed {
    pub balance: BalanceLayer,
    pub service_breakers: ServiceBreakers,
    pub upstreams: Arc<Upstreams>,
}

impl Observed {
    /// Every instance with its health and breaker, and each service's breaker.
    pub fn snapshot(&self) -> Vec<(UpstreamStatus, ServiceBreakerState)> {
        self.balance
            .snapshot()
            .into_iter()
            .map(|status| {
                let breaker = self.service_breakers.state(&status.service);
                (status, breaker)
            })
            .collect()
    }
}

/// Builds the upstream stack from the config. Must run after the metrics recorder is installed
/// (the breakers create their gauges here).
pub fn upstream_stack(
    config: &Config,
    upstreams: Arc<Upstreams>,
    forward: Forward,
) -> (UpstreamStack, Observed) {
    let balance = BalanceLayer::new(upstreams.receivers(), config.breaker.clone());
    let service_breakers = ServiceBreakers::new(config.service_breaker.clone());
    let budgets = RetryBudgets::new(config.budget.clone());
    let stack = ServiceBuilder::new()
        // A service that keeps failing is answered 503 at once instead of being hammered.
        .layer(ServiceBreaker::layer(service_breakers.clone()))
        // Every attempt and backoff of one request together fit in the route's timeout.
        .layer(Deadline::layer())
        // Reroute failed attempts to another instance, when safe, within the retry budget; every
        // reroute is reported to the service breaker.
        .layer(Retry::layer(
            config.retry.clone(),
            budgets,
            service_breakers.clone(),
        ))
        // Power of two choices over the healthy instances, skipping ejected ones.
        .layer(balance.clone())
        .service(ForwardEndpoint::new(forward, &config.balance));
    let observed = Observed {
        balance,
        service_breakers,
        upstreams,
    };
    (BoxCloneSyncService::new(stack), observed)
}
