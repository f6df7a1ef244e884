//! The production inner service of the balancer: one attempt through the shared [`Forward`] pool.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use discovery::client::Instance;
use futures::future::BoxFuture;
use http::Response;
use tower::Service;

use super::BalanceConfig;
use crate::exchange::{Exchange, UpstreamError};
use crate::forward::Forward;

/// Sends an exchange to the instance the balancer chose, within the attempt timeout and the
/// client's remaining deadline, whichever is shorter.
#[derive(Clone)]
pub struct ForwardEndpoint {
    pub forward: Forward,
    pub attempt_timeout: Duration,
}

impl ForwardEndpoint {
    pub fn new(forward: Forward, config: &BalanceConfig) -> Self {
        ForwardEndpoint {
            forward,
            attempt_timeout: Duration::from_millis(config.attempt_timeout_ms),
        }
    }
}

impl Service<(Arc<Instance>, Exchange)> for ForwardEndpoint {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (instance, exchange): (Arc<Instance>, Exchange)) -> Self::Future {
        let forward = self.forward.clone();
        let timeout = exchange
            .attempt_timeout
            .unwrap_or(self.attempt_timeout)
            .min(exchange.remaining());
        Box::pin(async move {
            // Sending with no time left would only "time out" and blame a healthy instance.
            if timeout.is_zero() {
                return Err(UpstreamError::DeadlineExceeded {
                    service: exchange.service,
                });
            }
            forward.send_exchange(&instance, exchange, timeout).await
        })
    }
}
