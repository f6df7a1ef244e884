//! The access line: one JSON log line per API request ("request served", with its status and
//! latency), written when the answer's head is ready and inside the request's trace scope, so it
//! carries the request's `span` like every other line of the request (see `trace`).
//!
//! Hand-written rather than tower-http's `TraceLayer`, which needs a `tracing` span per request:
//! creating, entering on every poll and closing it, and re-parsing its fields for every line, cost
//! the gateway more than its breakers, budget and balancer together. A span is still made when
//! spans are exported over OTLP, since it *is* the exported server span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use pin_project_lite::pin_project;

use crate::server::{REQUEST_ID, TRACEPARENT, trace_id_of};

/// Layer: an access line for every request through the wrapped service.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogLayer;

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S, E> tower::Service<Request> for AccessLog<S>
where
    S: tower::Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let span = crate::otlp::enabled().then(|| exported_span(&request));
        let inner = match &span {
            Some(span) => span.in_scope(|| self.inner.call(request)),
            None => self.inner.call(request),
        };
        Logged {
            inner,
            started,
            span,
        }
    }
}

pin_project! {
    /// The request's answer; logs it when it is ready.
    pub struct Logged<F> {
        #[pin]
        inner: F,
        started: Instant,
        span: Option<tracing::Span>,
    }
}

impl<F, E> Future for Logged<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            served(response, this.started.elapsed(), this.span.as_ref());
        }
        Poll::Ready(result)
    }
}

/// The access line; a 5xx is logged as a warning, so a `warn` log level still shows failures.
fn served(response: &Response, latency: Duration, span: Option<&tracing::Span>) {
    let status = response.status();
    if let Some(span) = span {
        crate::otlp::record_status(span, status);
    }
    // Whole microseconds: the shortest float that reads back is then at most three decimals
    // ("0.412"), where `as_secs_f64() * 1000.0` printed binary noise ("18.363518999999997").
    let latency_ms = latency.as_micros() as f64 / 1000.0;
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), latency_ms, "request served");
    } else {
        tracing::info!(status = status.as_u16(), latency_ms, "request served");
    }
}

/// The request's server span for OTLP export, a child of the caller's span when it sent one.
fn exported_span(request: &Request) -> tracing::Span {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %header(&REQUEST_ID),
        trace_id = %trace_id_of(header(&TRACEPARENT)).unwrap_or_default(),
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    crate::otlp::continue_request(&span, request);
    span
}
