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
use http::header::RETRY_AFTER;
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

/// What an upstream's answer says about the instance that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not a 5xx, or a 501 (not implemented is an answer about the request): the instance works.
    Served,
    /// A 503 with `Retry-After`: the service's deliberate "a dependency is unavailable, retry
    /// later" (the services answer it while the database fails over). The instance works; what
    /// fails is something every instance of the service shares, so it is passed to the client as
    /// it is — not rerouted, not held against the instance. An instance that alone cannot reach
    /// the dependency fails its readiness check and leaves the registry's passing set instead.
    DependencyUnavailable,
    /// Any other 5xx: the instance's own failure, for breakers, passive health and reroutes.
    InstanceFailure,
}

/// Classifies an upstream answer (see [`Answer`]).
pub fn classify_answer(response: &Response<Body>) -> Answer {
    let status = response.status();
    if !status.is_server_error() || status == StatusCode::NOT_IMPLEMENTED {
        Answer::Served
    } else if status == StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(RETRY_AFTER)
    {
        Answer::DependencyUnavailable
    } else {
        Answer::InstanceFailure
    }
}

/// Whether an upstream answer counts as a failure of the instance for breakers, passive health and
/// reroutes: 5xx except 501 and except a deliberate 503 + `Retry-After` ([`classify_answer`]).
pub fn is_failure(response: &Response<Body>) -> bool {
    classify_answer(response) == Answer::InstanceFailure
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode, retry_after: Option<&'static str>) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, http::HeaderValue::from_static(seconds));
        }
        response
    }

    #[test]
    fn a_deliberate_503_is_the_dependency_and_other_5xx_the_instance() {
        let cases = [
            (StatusCode::OK, None, Answer::Served),
            (StatusCode::CONFLICT, None, Answer::Served),
            (StatusCode::TOO_MANY_REQUESTS, Some("1"), Answer::Served),
            (StatusCode::NOT_IMPLEMENTED, None, Answer::Served),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("1"),
                Answer::DependencyUnavailable,
            ),
            // Without Retry-After a 503 is no deliberate answer (an injected fault, a proxy).
            (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                Answer::InstanceFailure,
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                Answer::InstanceFailure,
            ),
            // Only a 503 says "unavailable, come back": a 500 or 504 with the header is still
            // the instance's failure.
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("1"),
                Answer::InstanceFailure,
            ),
            (
                StatusCode::GATEWAY_TIMEOUT,
                Some("1"),
                Answer::InstanceFailure,
            ),
            (StatusCode::BAD_GATEWAY, None, Answer::InstanceFailure),
        ];
        for (status, retry_after, expected) in cases {
            let response = answer(status, retry_after);
            assert_eq!(
                classify_answer(&response),
                expected,
                "{status} {retry_after:?}"
            );
            assert_eq!(
                is_failure(&response),
                expected == Answer::InstanceFailure,
                "{status}"
            );
        }
    }
}
