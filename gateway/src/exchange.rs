//! The request and error types every resilience layer of the gateway speaks.
//!
//! A client request is buffered once into an [`Exchange`], which is cheap to clone (the body is
//! `Bytes`), so the retry layer can send it again — to a *different* instance — without re-reading
//! anything. Layers are `tower::Service<Exchange, Response = http::Response<Body>, Error =
//! UpstreamError>`; an upstream's 5xx is a `Response` (layers inspect its status), while failures to
//! get any answer are errors.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, Uri};
use tokio::time::Instant;

/// `Idempotency-Key`: a request carrying one may be sent twice; the service deduplicates it.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// One client request on its way to a service.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The service the route table chose.
    pub service: String,
    pub method: Method,
    /// Path and query, forwarded as they came.
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's address, for `X-Forwarded-For`.
    pub peer: Option<SocketAddr>,
    /// When the client's answer is due (arrival + the route's timeout); no attempt runs past it.
    pub deadline: Instant,
    /// The route's own limit for one attempt, when it sets one (else the balancer's).
    pub attempt_timeout: Option<Duration>,
    /// Instances already tried for this request, so a reroute goes somewhere else.
    pub tried: Vec<String>,
}

impl Exchange {
    /// Whether sending this request twice cannot do harm: a method idempotent by definition
    /// (RFC 9110 §9.2.2), or a request the service deduplicates by its `Idempotency-Key`.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) || self.headers.contains_key(IDEMPOTENCY_KEY)
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Why no usable answer came back from an upstream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// The service has no instance to send to (none registered, or all excluded).
    #[error("no instance of {service} is available")]
    NoInstance { service: String },
    /// The connection could not be made: the request was certainly not sent, so a reroute is safe
    /// for any method.
    #[error("could not connect to {instance}")]
    Connect { instance: String },
    /// The attempt ran out of time after the request may have been sent.
    #[error("{instance} did not answer in time")]
    Timeout { instance: String },
    /// The exchange broke after the request may have been sent.
    #[error("exchange with {instance} failed: {reason}")]
    Failed { instance: String, reason: String },
    /// The service's breaker is open: too many reroutes recently; fail fast.
    #[error("{service} is failing; try again in {retry_after:?}")]
    ServiceOpen {
        service: String,
        retry_after: Duration,
    },
    /// The client's deadline passed before an answer came.
    #[error("no answer from {service} within the deadline")]
    DeadlineExceeded { service: String },
}

impl UpstreamError {
    /// Whether the request certainly never reached an upstream (so resending cannot duplicate it).
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::NoInstance { .. } | UpstreamError::Connect { .. }
        )
    }

    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } | UpstreamError::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            // An answer that broke off half way is a bad gateway; no instance reachable at all is
            // the service being unavailable, which the client may retry after a moment.
            UpstreamError::Failed { .. } => StatusCode::BAD_GATEWAY,
            UpstreamError::Connect { .. }
            | UpstreamError::NoInstance { .. }
            | UpstreamError::ServiceOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Whether an upstream answer counts as a failure of the instance for breakers and passive health:
/// 5xx except 501 (not implemented is an answer about the request, not the instance's health).
pub fn is_failure(response: &Response<Body>) -> bool {
    let status = response.status();
    status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED
}
