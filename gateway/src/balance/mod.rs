//! The balancer: sends each [`Exchange`] to one instance of its service, chosen by power of two
//! choices on in-flight requests among the instances the registry reports passing (active health)
//! and whose breaker admits a request (passive health, [`crate::breaker`]).
//!
//! It makes exactly one attempt: rerouting is the retry layer's job, which reads the instance from
//! [`ServedBy`] (or from the error) and adds it to `exchange.tried`, which the balancer never picks
//! again for that request. The inner service sends to the chosen instance — [`ForwardEndpoint`] in
//! production, a mock in tests.
//!
//! A request counts as in flight from the pick until its response head or error arrives (or its
//! future is dropped); its outcome is recorded on the chosen instance's breaker then.

mod endpoints;
mod forward;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use discovery::client::Instance;
use futures::future::BoxFuture;
use http::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tower::{Layer, Service};

use crate::breaker::{BreakerConfig, BreakerState, classify};
use crate::exchange::{Exchange, UpstreamError};

pub use endpoints::{EndpointSet, Lease};
pub use forward::ForwardEndpoint;

/// Balancer settings beyond the breakers' (read by [`ForwardEndpoint::new`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BalanceConfig {
    /// Longest a single attempt may take (default 2 000 ms), for [`ForwardEndpoint`]; the client's
    /// remaining deadline cuts it shorter. Well under the route timeout, so a hung instance costs
    /// one attempt and leaves time to reroute.
    pub attempt_timeout_ms: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            attempt_timeout_ms: 2_000,
        }
    }
}

/// Response extension naming the instance that answered (its registry id); the retry layer reads
/// it to reroute elsewhere.
pub use crate::retry::ServedBy;

/// One service's instances, for `GET /admin/upstreams` and `bookstore status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub service: String,
    /// More than `max_ejection_percent` of the instances are ejected: breakers are ignored.
    pub panic_mode: bool,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub address: String,
    pub port: u16,
    /// `closed`, `open` or `half-open`.
    pub state: BreakerState,
    pub in_flight: usize,
    /// Calls recorded in the breaker's window.
    pub recent_calls: u32,
    /// Failures / calls in the breaker's window (0 with no calls).
    pub error_rate: f64,
    /// Times the instance was ejected so far.
    pub ejections: u64,
    /// While open: time until it lets a probe through.
    pub reopens_in_ms: Option<u64>,
}

/// The state every clone of a balancer shares.
struct Shared {
    services: BTreeMap<String, EndpointSet>,
}

impl Shared {
    fn snapshot(&self) -> Vec<UpstreamStatus> {
        self.services.values().map(EndpointSet::status).collect()
    }
}

/// Builds [`Balance`]s that share one set of endpoints and breakers; keep a clone for
/// [`BalanceLayer::snapshot`].
#[derive(Clone)]
pub struct BalanceLayer {
    shared: Arc<Shared>,
}

impl BalanceLayer {
    /// `sets` are the services' watched passing sets (e.g. from `watch_healthy`); requests for
    /// other services get `NoInstance`.
    pub fn new(
        sets: Vec<(String, watch::Receiver<Vec<Instance>>)>,
        breaker: BreakerConfig,
    ) -> Self {
        let breaker = Arc::new(breaker);
        let services = sets
            .into_iter()
            .map(|(name, receiver)| {
                let set = EndpointSet::new(&name, receiver, breaker.clone());
                (name, set)
            })
            .collect();
        BalanceLayer {
            shared: Arc::new(Shared { services }),
        }
    }

    pub fn snapshot(&self) -> Vec<UpstreamStatus> {
        self.shared.snapshot()
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The balancer service; see the module docs.
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Balance<S> {
    pub fn new(
        inner: S,
        sets: Vec<(String, watch::Receiver<Vec<Instance>>)>,
        breaker: BreakerConfig,
    ) -> Self {
        BalanceLayer::new(sets, breaker).layer(inner)
    }

    pub fn layer(
        sets: Vec<(String, watch::Receiver<Vec<Instance>>)>,
        breaker: BreakerConfig,
    ) -> BalanceLayer {
        BalanceLayer::new(sets, breaker)
    }

    /// One service's endpoints, to pick from directly.
    pub fn endpoints(&self, service: &str) -> Option<&EndpointSet> {
        self.shared.services.get(service)
    }

    pub fn snapshot(&self) -> Vec<UpstreamStatus> {
        self.shared.snapshot()
    }
}

impl<S> Service<Exchange> for Balance<S>
where
    S: Service<(Arc<Instance>, Exchange), Response = Response<Body>, Error = UpstreamError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let lease = self
            .shared
            .services
            .get(&exchange.service)
            .and_then(|set| set.pick(&exchange.tried));
        let Some(lease) = lease else {
            let service = exchange.service.clone();
            return Box::pin(async move { Err(UpstreamError::NoInstance { service }) });
        };
        let instance = lease.instance().clone();
        let id = instance.id.clone();
        // Use the clone poll_ready readied, leave a fresh one for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let attempt = inner.call((instance, exchange));
        Box::pin(async move {
            let result = attempt.await;
            lease.record(classify(&result));
            result.map(|mut response| {
                response.extensions_mut().insert(ServedBy(id));
                response
            })
        })
    }
}

#[cfg(test)]
mod tests;
