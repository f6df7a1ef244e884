//! The proxy service: route by prefix, buffer the body, build the [`Exchange`] with its deadline,
//! and send it through the upstream stack; every failure becomes problem+json. It is a plain
//! `tower::Service` over HTTP requests, so shedding, auth and rate limiting wrap it as layers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use platform::Problem;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::deadline::TimeoutConfig;
use crate::exchange::{Exchange, UpstreamError};
use crate::routes::RouteTable;
use crate::stack::UpstreamStack;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    table: RouteTable,
    timeouts: TimeoutConfig,
    upstream: UpstreamStack,
    body_limit_bytes: usize,
}

impl Proxy {
    pub fn new(
        table: RouteTable,
        timeouts: TimeoutConfig,
        upstream: UpstreamStack,
        body_limit_bytes: usize,
    ) -> Self {
        Proxy {
            inner: Arc::new(Inner {
                table,
                timeouts,
                upstream,
                body_limit_bytes,
            }),
        }
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

impl Inner {
    async fn handle(&self, request: Request<Body>) -> Response {
        let path = request.uri().path();
        let Some(service) = self.table.resolve(path).map(str::to_owned) else {
            return Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no route for {path}"),
            )
            .into_response();
        };
        // The deadline starts at arrival: the route's timeout, shortened by the client's own
        // budget when it sent one (the platform's deadline middleware put it in the extensions).
        let timeouts = self.timeouts.timeouts_for(request.method(), path);
        let mut deadline = Instant::now() + timeouts.total;
        if let Some(client) = request.extensions().get::<platform::deadline::Deadline>() {
            deadline = deadline.min(client.0);
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        let (parts, body) = request.into_parts();
        // Buffered so an oversize body is refused before any upstream sees it, and so a reroute
        // can send it again.
        let body = match Limited::new(body, self.body_limit_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                let detail = format!(
                    "the request body is larger than {} bytes",
                    self.body_limit_bytes
                );
                return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
                    .into_response();
            }
            Err(_) => {
                return Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "the request body could not be read",
                )
                .into_response();
            }
        };
        // Path and query, as they came (no re-parsing: the parts move over).
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = parts.uri.into_parts().path_and_query;
        let exchange = Exchange {
            service: service.clone(),
            method: parts.method,
            uri: Uri::from_parts(uri).unwrap_or_default(),
            headers: parts.headers,
            body,
            peer,
            deadline,
            attempt_timeout: timeouts.attempt,
            tried: Vec::new(),
        };
        match self.upstream.clone().oneshot(exchange).await {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(upstream = %service, error = %err, "no upstream answer");
                upstream_problem(&err)
            }
        }
    }
}

/// The problem a client sees when no upstream answer could be had.
pub fn upstream_problem(err: &UpstreamError) -> Response {
    let status = err.status();
    let (kind, detail, retry_after) = match err {
        UpstreamError::NoInstance { service } => (
            "unavailable",
            format!("no healthy instance of the {service} service is available"),
            Some(1),
        ),
        UpstreamError::ServiceOpen {
            service,
            retry_after,
        } => (
            "unavailable",
            format!("the {service} service is failing and is being given time to recover"),
            Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
        ),
        UpstreamError::Timeout { .. } | UpstreamError::DeadlineExceeded { .. } => (
            "upstream-timeout",
            "the service did not answer in time".to_owned(),
            None,
        ),
        UpstreamError::Connect { .. } => (
            "unavailable",
            "no instance of the service could be reached; try again".to_owned(),
            Some(1),
        ),
        UpstreamError::Failed { .. } => (
            "upstream-failed",
            "the service's answer broke off; try again".to_owned(),
            Some(1),
        ),
    };
    let problem = Problem::new(status, kind, detail);
    match retry_after {
        Some(seconds) => problem.with_retry_after(seconds).into_response(),
        None => problem.into_response(),
    }
}
