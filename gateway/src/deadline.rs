//! Deadlines: one per client request, bounding every attempt made for it, and travelling downstream.
//!
//! - [`Deadline`] bounds the whole call below it (all attempts, backoffs included) by
//!   `exchange.deadline`; when it passes the inner future is dropped — which cancels the attempt in
//!   flight — and the client gets `DeadlineExceeded` (504).
//! - [`stamp`] writes the time left into [`REQUEST_TIMEOUT_HEADER`] as *relative* milliseconds, so
//!   clock skew between hosts cannot shorten or stretch it; services stop working for a caller that
//!   has given up. The exchange carries its deadline down to each attempt, and
//!   [`Forward::send_exchange`](crate::forward::Forward::send_exchange) stamps what that attempt has
//!   left (its own timeout, which the deadline cuts shorter) once, on the request it sends.
//! - [`TimeoutConfig`] gives each route its timeout, from which the deadline is computed on arrival.

use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use serde::{Deserialize, Serialize};
use std::task::{Context, Poll};
use tokio::time::Instant;

use crate::exchange::{Exchange, UpstreamError};

/// The time the caller still waits, in milliseconds, relative to when the request was sent.
pub const REQUEST_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// Sets [`REQUEST_TIMEOUT_HEADER`] to `remaining` in whole milliseconds (rounded up, at least 1, so
/// a request sent at all never says "no time left", which a service could read as "no deadline").
pub fn stamp(headers: &mut HeaderMap, remaining: Duration) {
    let millis = remaining.as_nanos().div_ceil(1_000_000).max(1);
    let millis = u64::try_from(millis).unwrap_or(u64::MAX);
    headers.insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from(millis));
}

/// Reads [`REQUEST_TIMEOUT_HEADER`]: `None` when absent or not a number of milliseconds.
pub fn parse(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(REQUEST_TIMEOUT_HEADER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// Timeouts per route: the whole time the gateway gives a client request, all attempts included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutConfig {
    /// For requests no rule matches (default 5_000 ms).
    pub default_ms: u64,
    /// Rules by path prefix (whole segments: `/api/books` matches `/api/books/1`, not
    /// `/api/booksx`) and optionally method; the longest matching prefix wins, and for the same
    /// prefix a rule naming the method beats one that does not (default: `POST /api/checkout`
    /// 15 000 ms with 10 000 ms per attempt: the orders service waits up to 8 s for the
    /// coordinator's answer, and a reroute after that only replays the checkout's record).
    /// An attempt never outlasts `upstream.request_timeout_ms` either.
    pub per_route: Vec<RouteTimeout>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            default_ms: 5_000,
            per_route: vec![RouteTimeout {
                prefix: "/api/checkout".into(),
                method: Some("POST".into()),
                timeout_ms: 15_000,
                attempt_ms: Some(10_000),
            }],
        }
    }
}

/// One timeout rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTimeout {
    pub prefix: String,
    /// Only for this method (case-insensitive) when set.
    #[serde(default)]
    pub method: Option<String>,
    pub timeout_ms: u64,
    /// The longest one attempt of such a request may take, when it differs from the balancer's
    /// `attempt_timeout_ms` — for routes whose service legitimately answers slowly (a checkout
    /// waits for its transaction's outcome), where cutting an attempt short would only turn a
    /// success into a reroute and a timeout.
    #[serde(default)]
    pub attempt_ms: Option<u64>,
}

/// The timeouts of one request: the whole of it, and one attempt when the route sets that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeouts {
    pub total: Duration,
    pub attempt: Option<Duration>,
}

impl TimeoutConfig {
    /// The timeout of a `method` request to `path`.
    pub fn timeout_for(&self, method: &Method, path: &str) -> Duration {
        self.timeouts_for(method, path).total
    }

    /// The whole and per-attempt timeouts of a `method` request to `path`.
    pub fn timeouts_for(&self, method: &Method, path: &str) -> RequestTimeouts {
        let rule = self
            .per_route
            .iter()
            .filter(|rule| prefix_matches(&rule.prefix, path))
            .filter(|rule| {
                rule.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            })
            .max_by_key(|rule| (rule.prefix.len(), rule.method.is_some()));
        match rule {
            Some(rule) => RequestTimeouts {
                total: Duration::from_millis(rule.timeout_ms),
                attempt: rule.attempt_ms.map(Duration::from_millis),
            },
            None => RequestTimeouts {
                total: Duration::from_millis(self.default_ms),
                attempt: None,
            },
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Bounds the call below it by `exchange.deadline`.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    pub fn new(inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

impl Deadline<()> {
    pub fn layer() -> DeadlineLayer {
        DeadlineLayer
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline::new(inner)
    }
}

impl<S> tower::Service<Exchange> for Deadline<S>
where
    S: tower::Service<Exchange, Response = Response<Body>, Error = UpstreamError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let deadline = exchange.deadline;
        let service = exchange.service.clone();
        if Instant::now() >= deadline {
            // No time left: not even one attempt.
            return Box::pin(std::future::ready(Err(UpstreamError::DeadlineExceeded {
                service,
            })));
        }
        let call = self.inner.call(exchange);
        Box::pin(async move {
            // On expiry `timeout_at` drops `call`, cancelling whatever attempt is in flight.
            match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => {
                    metrics::counter!("gateway_deadline_exceeded_total", "upstream" => service.clone())
                        .increment(1);
                    Err(UpstreamError::DeadlineExceeded { service })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;
    use tokio_test::{assert_pending, assert_ready};
    use tower::{Service, ServiceExt};

    use super::*;

    fn exchange(timeout: Duration) -> Exchange {
        Exchange {
            service: "books".into(),
            method: Method::GET,
            uri: "/api/books".parse().expect("static uri"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            peer: None,
            deadline: Instant::now() + timeout,
            attempt_timeout: None,
            tried: Vec::new(),
        }
    }

    /// Sets its flag when dropped: tells whether the inner future was cancelled.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// An inner service that never answers, counting calls and flagging when its future is dropped.
    fn never_answers(
        calls: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
    ) -> impl tower::Service<
        Exchange,
        Response = Response<Body>,
        Error = UpstreamError,
        Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>,
    > + Clone {
        tower::service_fn(move |_: Exchange| {
            calls.fetch_add(1, Ordering::SeqCst);
            let flag = DropFlag(dropped.clone());
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<Result<Response<Body>, UpstreamError>>().await
            }) as BoxFuture<'static, _>
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_call_fails_exactly_when_the_deadline_passes_and_the_attempt_is_cancelled() {
        let calls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let mut service = Deadline::new(never_answers(calls.clone(), dropped.clone()));
        let ready = service.ready().await.expect("ready");
        let mut call = tokio_test::task::spawn(ready.call(exchange(Duration::from_millis(100))));
        assert_pending!(call.poll());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_pending!(call.poll());
        assert!(!dropped.load(Ordering::SeqCst));
        tokio::time::advance(Duration::from_millis(1)).await;
        let result = assert_ready!(call.poll());
        assert_eq!(
            result.err(),
            Some(UpstreamError::DeadlineExceeded {
                service: "books".into()
            })
        );
        assert!(
            dropped.load(Ordering::SeqCst),
            "the attempt was not cancelled"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_deadline_passes_through_and_the_attempt_carries_the_time_left() {
        let (mock, mut handle) = tower_test::mock::pair::<Exchange, Response<Body>>();
        let inner = mock.map_err(|e: tower::BoxError| UpstreamError::Failed {
            instance: "mock".into(),
            reason: e.to_string(),
        });
        let service = Deadline::new(inner);
        let call = tokio::spawn(service.oneshot(exchange(Duration::from_millis(250))));
        let (sent, respond) = handle.next_request().await.expect("a request");
        // What the attempt has left, which forward stamps on the request it sends.
        assert_eq!(sent.remaining(), Duration::from_millis(250));
        tokio::time::advance(Duration::from_millis(200)).await;
        respond.send_response(Response::new(Body::empty()));
        let result = call.await.expect("task");
        assert!(result.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_already_past_its_deadline_is_not_sent() {
        let calls = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicBool::new(false));
        let service = Deadline::new(never_answers(calls.clone(), dropped));
        let exchange = exchange(Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
        let result = service.oneshot(exchange).await;
        assert!(matches!(
            result,
            Err(UpstreamError::DeadlineExceeded { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn stamp_writes_the_remaining_milliseconds_rounded_up_and_at_least_one() {
        let mut headers = HeaderMap::new();
        stamp(&mut headers, Duration::from_millis(1234));
        assert_eq!(headers[REQUEST_TIMEOUT_HEADER], "1234");
        stamp(&mut headers, Duration::from_micros(1500));
        assert_eq!(headers[REQUEST_TIMEOUT_HEADER], "2");
        stamp(&mut headers, Duration::ZERO);
        assert_eq!(headers[REQUEST_TIMEOUT_HEADER], "1");
        assert_eq!(headers.get_all(REQUEST_TIMEOUT_HEADER).iter().count(), 1);
    }

    #[test]
    fn parse_reads_milliseconds_and_ignores_garbage() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse(&headers), None);
        headers.insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static("750"));
        assert_eq!(parse(&headers), Some(Duration::from_millis(750)));
        headers.insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(parse(&headers), None);
    }

    fn rule(prefix: &str, method: Option<&str>, timeout_ms: u64) -> RouteTimeout {
        RouteTimeout {
            prefix: prefix.into(),
            method: method.map(str::to_owned),
            timeout_ms,
            attempt_ms: None,
        }
    }

    #[test]
    fn a_route_may_set_its_own_attempt_timeout_and_checkout_does_by_default() {
        let config = TimeoutConfig::default();
        let checkout = config.timeouts_for(&Method::POST, "/api/checkout");
        assert_eq!(checkout.total, Duration::from_millis(15_000));
        assert_eq!(checkout.attempt, Some(Duration::from_millis(10_000)));
        let other = config.timeouts_for(&Method::GET, "/api/checkout/1");
        assert_eq!(other.total, Duration::from_millis(5_000));
        assert_eq!(other.attempt, None);
        let parsed: TimeoutConfig = serde_json::from_str(
            r#"{"per_route": [{"prefix": "/api/books", "timeout_ms": 9000}]}"#,
        )
        .expect("attempt_ms is optional");
        assert_eq!(
            parsed.timeouts_for(&Method::GET, "/api/books"),
            RequestTimeouts {
                total: Duration::from_millis(9_000),
                attempt: None
            }
        );
    }

    #[test]
    fn timeout_for_picks_the_longest_prefix_then_the_method_specific_rule() {
        let config = TimeoutConfig {
            default_ms: 5_000,
            per_route: vec![
                rule("/api/books", None, 2_000),
                rule("/api/books/search", None, 8_000),
                rule("/api/books", Some("post"), 3_000),
                rule("/api/orders", Some("POST"), 15_000),
            ],
        };
        let ms = |method: Method, path: &str| config.timeout_for(&method, path).as_millis();
        assert_eq!(ms(Method::GET, "/api/books/1"), 2_000);
        assert_eq!(ms(Method::GET, "/api/books"), 2_000);
        assert_eq!(ms(Method::POST, "/api/books"), 3_000);
        // A longer prefix beats a method-specific shorter one.
        assert_eq!(ms(Method::POST, "/api/books/search"), 8_000);
        assert_eq!(ms(Method::GET, "/api/books/search/x"), 8_000);
        // Whole segments only.
        assert_eq!(ms(Method::GET, "/api/booksx"), 5_000);
        // A method-specific rule does not apply to other methods.
        assert_eq!(ms(Method::GET, "/api/orders/7"), 5_000);
        assert_eq!(ms(Method::POST, "/api/orders"), 15_000);
    }

    #[test]
    fn timeout_config_defaults_from_an_empty_document() {
        let config: TimeoutConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(config, TimeoutConfig::default());
        assert_eq!(
            config.timeout_for(&Method::GET, "/api/books"),
            Duration::from_millis(5_000)
        );
    }
}
