//! The proxy service: route by prefix, pick a healthy instance, forward, and turn every failure into
//! problem+json. It is a plain `tower::Service`, so breakers, retries, rate limits and auth wrap it as
//! layers in the resilience work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use platform::Problem;

use crate::forward::{Forward, ForwardError};
use crate::routes::RouteTable;
use crate::upstreams::Upstreams;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    table: RouteTable,
    upstreams: Arc<Upstreams>,
    forward: Forward,
    body_limit_bytes: usize,
}

impl Proxy {
    pub fn new(
        table: RouteTable,
        upstreams: Arc<Upstreams>,
        forward: Forward,
        body_limit_bytes: usize,
    ) -> Self {
        Proxy {
            inner: Arc::new(Inner {
                table,
                upstreams,
                forward,
                body_limit_bytes,
            }),
        }
    }

    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.inner.upstreams.clone()
    }
}

/// The gateway's router: everything under `/api/` goes through the proxy; other paths (including
/// `/internal/…`) fall through to the platform's 404.
pub fn router(proxy: Proxy) -> Router {
    Router::new()
        .route_service("/api/{*path}", proxy.clone())
        .route_service("/api", proxy)
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
        let path = request.uri().path().to_owned();
        let Some(service) = self.table.resolve(&path).map(str::to_owned) else {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no route for {path}"),
            );
        };
        let Some(instance) = self.upstreams.pick(&service) else {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("no healthy instance of the {service} service is available"),
            )
            .with_retry_after(1)
            .into_response();
        };
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        // Buffered so an oversize body is refused before any upstream sees it (and so the
        // retry layer can resend it to another instance).
        let request = match self.buffer(request).await {
            Ok(request) => request,
            Err(response) => return response,
        };
        let started = Instant::now();
        let result = self.forward.send(&instance, request, peer).await;
        let outcome = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(ForwardError::Connect { .. }) => "connect_error".into(),
            Err(ForwardError::Timeout { .. }) => "timeout".into(),
            Err(ForwardError::Other { .. }) => "error".into(),
        };
        let labels = [
            ("upstream", service.clone()),
            ("instance", instance.id.clone()),
            ("outcome", outcome),
        ];
        metrics::counter!("gateway_upstream_requests_total", &labels).increment(1);
        metrics::histogram!("gateway_upstream_request_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(upstream = %service, error = %err, "upstream exchange failed");
                upstream_problem(&service, &err)
            }
        }
    }

    async fn buffer(&self, request: Request<Body>) -> Result<Request<Body>, Response> {
        let (parts, body) = request.into_parts();
        match Limited::new(body, self.body_limit_bytes).collect().await {
            Ok(collected) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!(
                    "the request body is larger than {} bytes",
                    self.body_limit_bytes
                ),
            )),
            Err(_) => Err(problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the request body could not be read",
            )),
        }
    }
}

fn upstream_problem(service: &str, err: &ForwardError) -> Response {
    match err {
        ForwardError::Timeout { .. } => problem(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            format!("the {service} service did not answer in time"),
        ),
        _ => Problem::new(
            StatusCode::BAD_GATEWAY,
            "upstream-unavailable",
            format!("the {service} service could not be reached; try again"),
        )
        .with_retry_after(1)
        .into_response(),
    }
}

fn problem(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    Problem::new(status, kind, detail).into_response()
}
