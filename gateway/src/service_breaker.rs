//! The per-service breaker: trips on *reroutes*, not on single failures. One failing instance is the
//! balancer's business (its per-instance breaker ejects it); many reroutes for one service within a
//! short window mean the service as a whole is in trouble, and sending more traffic (and more
//! retries) only deepens the hole. While open, every request for the service fails at once with
//! `ServiceOpen` (503 + Retry-After) without any upstream attempt.
//!
//! ```text
//! Closed ──(> max_reroutes reroutes within window_ms)──▶ Open ──(open time passed, next request)──▶ HalfOpen
//!   ▲                                                    ▲                                          │
//!   └───────────────(the one probe is not a failure)─────┼──────────────────────────────────────────┤
//!                                                        └──(the probe fails: open time doubles)────┘
//! ```
//!
//! Half-open lets exactly one probe through; others keep failing fast. A probe whose future is
//! dropped (cancelled) settles nothing: the next request becomes the probe. Each consecutive
//! reopening doubles the open time, up to `max_open_ms`; closing resets it to `open_ms`.
//!
//! Reroutes are reported by the retry layer through [`ServiceBreakers::record_reroute`]; the same
//! [`ServiceBreakers`] handle goes to [`ServiceBreaker::layer`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use foldhash::HashMap;
use futures::future::BoxFuture;
use http::Response;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::exchange::{Exchange, UpstreamError, is_failure};

/// When a service's breaker trips and how long it stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceBreakerConfig {
    /// The breaker trips when *more* than this many reroutes happen within the window (default 10)…
    pub max_reroutes: usize,
    /// …and they are at least this share of the requests admitted in the window (default 0.5). A
    /// busy service with one bad instance reroutes successfully all the time; that is the instance
    /// breaker's business, not a reason to fail the whole service.
    pub min_reroute_ratio: f64,
    /// The sliding window reroutes are counted over (default 10_000 ms).
    pub window_ms: u64,
    /// How long the breaker stays open after tripping (default 5_000 ms).
    pub open_ms: u64,
    /// The cap on the open time, which doubles each time a half-open probe fails (default 60_000 ms).
    pub max_open_ms: u64,
}

impl Default for ServiceBreakerConfig {
    fn default() -> Self {
        ServiceBreakerConfig {
            max_reroutes: 10,
            min_reroute_ratio: 0.5,
            window_ms: 10_000,
            open_ms: 5_000,
            max_open_ms: 60_000,
        }
    }
}

/// A breaker's state, as exported in `gateway_service_breaker_state{upstream}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceBreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl ServiceBreakerState {
    fn label(self) -> &'static str {
        match self {
            ServiceBreakerState::Closed => "closed",
            ServiceBreakerState::Open => "open",
            ServiceBreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        reroutes: VecDeque<Instant>,
        requests: Requests,
    },
    Open {
        until: Instant,
        open_for: Duration,
    },
    HalfOpen {
        probing: bool,
        open_for: Duration,
    },
}

impl State {
    fn public(&self) -> ServiceBreakerState {
        match self {
            State::Closed { .. } => ServiceBreakerState::Closed,
            State::Open { .. } => ServiceBreakerState::Open,
            State::HalfOpen { .. } => ServiceBreakerState::HalfOpen,
        }
    }
}

/// Requests admitted over the sliding window, in ten buckets (constant memory at any rate).
#[derive(Debug, Default)]
struct Requests {
    /// (bucket start, count), oldest first.
    buckets: VecDeque<(Instant, u64)>,
}

impl Requests {
    fn add(&mut self, now: Instant, window: Duration) {
        let width = window / 10;
        self.expire(now, window);
        match self.buckets.back_mut() {
            Some((start, count)) if now.duration_since(*start) < width => *count += 1,
            _ => self.buckets.push_back((now, 1)),
        }
    }

    fn in_window(&mut self, now: Instant, window: Duration) -> u64 {
        self.expire(now, window);
        self.buckets.iter().map(|(_, count)| count).sum()
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) >= window)
        {
            self.buckets.pop_front();
        }
    }
}

/// One service's breaker.
#[derive(Debug)]
struct Breaker {
    service: String,
    config: ServiceBreakerConfig,
    state: Mutex<State>,
}

/// What the breaker says about one request.
enum Admission {
    Pass,
    Probe(ProbeGuard),
    Reject(Duration),
}

impl Breaker {
    fn new(service: &str, config: ServiceBreakerConfig) -> Breaker {
        metrics::gauge!("gateway_service_breaker_state", "upstream" => service.to_owned()).set(0.0);
        Breaker {
            service: service.to_owned(),
            config,
            state: Mutex::new(State::Closed {
                reroutes: VecDeque::new(),
                requests: Requests::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.config.window_ms)
    }

    fn record_reroute(&self, now: Instant) {
        let mut state = self.lock();
        let State::Closed { reroutes, requests } = &mut *state else {
            // Reroutes of a half-open probe or of requests admitted before the trip change nothing.
            return;
        };
        while reroutes
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.window())
        {
            reroutes.pop_front();
        }
        reroutes.push_back(now);
        let admitted = requests.in_window(now, self.window());
        let share = reroutes.len() as f64 >= self.config.min_reroute_ratio * admitted as f64;
        if reroutes.len() > self.config.max_reroutes && share {
            let open_for = Duration::from_millis(self.config.open_ms);
            let count = reroutes.len();
            *state = State::Open {
                until: now + open_for,
                open_for,
            };
            self.transition(ServiceBreakerState::Open, open_for, count);
        }
    }

    fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { requests, .. } => {
                requests.add(now, self.window());
                Admission::Pass
            }
            State::Open { until, .. } if now < *until => {
                Admission::Reject(retry_after(*until - now))
            }
            State::Open { open_for, .. } => {
                let open_for = *open_for;
                *state = State::HalfOpen {
                    probing: true,
                    open_for,
                };
                self.transition(ServiceBreakerState::HalfOpen, open_for, 0);
                Admission::Probe(ProbeGuard::new(self.clone()))
            }
            State::HalfOpen { probing: true, .. } => Admission::Reject(Duration::from_secs(1)),
            State::HalfOpen { probing, .. } => {
                *probing = true;
                Admission::Probe(ProbeGuard::new(self.clone()))
            }
        }
    }

    /// The probe settled: closes the breaker when it succeeded, reopens it for longer when not.
    fn settle(&self, success: bool, now: Instant) {
        let mut state = self.lock();
        let State::HalfOpen { open_for, .. } = &*state else {
            return;
        };
        if success {
            *state = State::Closed {
                reroutes: VecDeque::new(),
                requests: Requests::default(),
            };
            self.transition(ServiceBreakerState::Closed, Duration::ZERO, 0);
        } else {
            let max = Duration::from_millis(self.config.max_open_ms.max(self.config.open_ms));
            let open_for = open_for.saturating_mul(2).min(max);
            *state = State::Open {
                until: now + open_for,
                open_for,
            };
            self.transition(ServiceBreakerState::Open, open_for, 0);
        }
    }

    /// The probe was cancelled before it settled: the next request probes instead.
    fn abandon_probe(&self) {
        if let State::HalfOpen { probing, .. } = &mut *self.lock() {
            *probing = false;
        }
    }

    fn transition(&self, to: ServiceBreakerState, open_for: Duration, reroutes: usize) {
        let upstream = self.service.clone();
        metrics::gauge!("gateway_service_breaker_state", "upstream" => upstream.clone())
            .set(f64::from(to as u8));
        metrics::counter!(
            "gateway_service_breaker_transitions_total",
            "upstream" => upstream,
            "to" => to.label()
        )
        .increment(1);
        match to {
            ServiceBreakerState::Open if reroutes > 0 => tracing::warn!(
                upstream = %self.service,
                reroutes,
                window_ms = self.config.window_ms,
                open_ms = open_for.as_millis() as u64,
                "service breaker opened: too many reroutes"
            ),
            ServiceBreakerState::Open => tracing::warn!(
                upstream = %self.service,
                open_ms = open_for.as_millis() as u64,
                "service breaker reopened: the probe failed"
            ),
            ServiceBreakerState::HalfOpen => {
                tracing::info!(upstream = %self.service, "service breaker half-open: probing")
            }
            ServiceBreakerState::Closed => {
                tracing::info!(upstream = %self.service, "service breaker closed: the probe succeeded")
            }
        }
    }
}

/// The time a client should wait, rounded up to whole seconds and at least one (Retry-After counts
/// seconds; "0" would invite an immediate retry into an open breaker).
fn retry_after(left: Duration) -> Duration {
    let secs = left.as_nanos().div_ceil(1_000_000_000).max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX))
}

/// Held by the one half-open probe; settles the breaker with the probe's result, or gives the probe
/// slot back if dropped unsettled (the request was cancelled).
struct ProbeGuard {
    breaker: Arc<Breaker>,
    settled: bool,
}

impl ProbeGuard {
    fn new(breaker: Arc<Breaker>) -> ProbeGuard {
        ProbeGuard {
            breaker,
            settled: false,
        }
    }

    /// Success is any answer that is no instance failure — a deliberate 503 + `Retry-After`
    /// included: the service answered, and that answer is never rerouted, so it is no sign of
    /// what this breaker guards against.
    fn settle(mut self, result: &Result<Response<Body>, UpstreamError>) {
        self.settled = true;
        let success = result.as_ref().is_ok_and(|response| !is_failure(response));
        self.breaker.settle(success, Instant::now());
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandon_probe();
        }
    }
}

/// The breakers of every service, created on first use. Cheap to clone (shared): the same handle
/// goes to [`ServiceBreaker::layer`] and to the retry layer, which reports reroutes to it.
#[derive(Debug, Clone, Default)]
pub struct ServiceBreakers {
    config: ServiceBreakerConfig,
    breakers: Arc<Mutex<HashMap<String, Arc<Breaker>>>>,
}

impl ServiceBreakers {
    pub fn new(config: ServiceBreakerConfig) -> ServiceBreakers {
        ServiceBreakers {
            config,
            breakers: Arc::default(),
        }
    }

    fn breaker(&self, service: &str) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = breakers.get(service) {
            return breaker.clone();
        }
        let breaker = Arc::new(Breaker::new(service, self.config.clone()));
        breakers.insert(service.to_owned(), breaker.clone());
        breaker
    }

    /// A request for `service` was rerouted to another instance.
    pub fn record_reroute(&self, service: &str) {
        self.breaker(service).record_reroute(Instant::now());
    }

    /// The state of `service`'s breaker (closed for a service never seen). An open breaker whose
    /// time is up still reads `Open` until the next request makes it half-open.
    pub fn state(&self, service: &str) -> ServiceBreakerState {
        self.breaker(service).lock().public()
    }
}

/// Fails fast while the service's breaker is open.
#[derive(Debug, Clone)]
pub struct ServiceBreaker<S> {
    inner: S,
    breakers: ServiceBreakers,
}

impl<S> ServiceBreaker<S> {
    pub fn new(inner: S, breakers: ServiceBreakers) -> ServiceBreaker<S> {
        ServiceBreaker { inner, breakers }
    }
}

impl ServiceBreaker<()> {
    pub fn layer(breakers: ServiceBreakers) -> ServiceBreakerLayer {
        ServiceBreakerLayer { breakers }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceBreakerLayer {
    breakers: ServiceBreakers,
}

impl<S> tower::Layer<S> for ServiceBreakerLayer {
    type Service = ServiceBreaker<S>;

    fn layer(&self, inner: S) -> ServiceBreaker<S> {
        ServiceBreaker::new(inner, self.breakers.clone())
    }
}

impl<S> tower::Service<Exchange> for ServiceBreaker<S>
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
        let breaker = self.breakers.breaker(&exchange.service);
        match breaker.admit(Instant::now()) {
            Admission::Pass => Box::pin(self.inner.call(exchange)),
            Admission::Reject(retry_after) => {
                metrics::counter!("gateway_service_breaker_rejected_total", "upstream" => exchange.service.clone())
                    .increment(1);
                Box::pin(std::future::ready(Err(UpstreamError::ServiceOpen {
                    service: exchange.service,
                    retry_after,
                })))
            }
            Admission::Probe(probe) => {
                let call = self.inner.call(exchange);
                Box::pin(async move {
                    let result = call.await;
                    probe.settle(&result);
                    result
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};
    use tokio_test::{assert_pending, assert_ready};
    use tower::{Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(10_000);
    const OPEN: Duration = Duration::from_millis(5_000);

    #[tokio::test(start_paused = true)]
    async fn reroutes_that_are_a_small_share_of_the_traffic_do_not_trip_it() {
        let breaker = Arc::new(Breaker::new("books", ServiceBreakerConfig::default()));
        for _ in 0..100 {
            let _ = breaker.admit(Instant::now());
        }
        for _ in 0..49 {
            breaker.record_reroute(Instant::now());
        }
        assert_eq!(
            breaker.lock().public(),
            ServiceBreakerState::Closed,
            "49 of 100: one bad instance"
        );
        breaker.record_reroute(Instant::now());
        assert_eq!(
            breaker.lock().public(),
            ServiceBreakerState::Open,
            "50 of 100: the service is failing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_older_than_the_window_no_longer_dilute_the_share() {
        let breaker = Arc::new(Breaker::new("books", ServiceBreakerConfig::default()));
        for _ in 0..100 {
            let _ = breaker.admit(Instant::now());
        }
        tokio::time::advance(WINDOW).await;
        for _ in 0..11 {
            breaker.record_reroute(Instant::now());
        }
        assert_eq!(breaker.lock().public(), ServiceBreakerState::Open);
    }

    fn exchange() -> Exchange {
        Exchange {
            service: "books".into(),
            method: Method::GET,
            uri: "/api/books".parse().expect("static uri"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            peer: None,
            deadline: Instant::now() + Duration::from_secs(30),
            attempt_timeout: None,
            tried: Vec::new(),
        }
    }

    type Inner = tower::util::MapErr<
        mock::Mock<Exchange, Response<Body>>,
        fn(tower::BoxError) -> UpstreamError,
    >;

    fn from_mock(error: tower::BoxError) -> UpstreamError {
        match error.downcast::<UpstreamError>() {
            Ok(error) => *error,
            Err(other) => UpstreamError::Failed {
                instance: "mock".into(),
                reason: other.to_string(),
            },
        }
    }

    fn setup() -> (
        ServiceBreaker<Inner>,
        mock::Handle<Exchange, Response<Body>>,
        ServiceBreakers,
    ) {
        let (mock, handle) = mock::pair::<Exchange, Response<Body>>();
        let inner: Inner = mock.map_err(from_mock as fn(tower::BoxError) -> UpstreamError);
        let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
        let service = tower::ServiceBuilder::new()
            .layer(ServiceBreaker::layer(breakers.clone()))
            .service(inner);
        (service, handle, breakers)
    }

    fn status(code: StatusCode) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = code;
        response
    }

    fn trip(breakers: &ServiceBreakers) {
        for _ in 0..11 {
            breakers.record_reroute("books");
        }
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);
    }

    /// Calls the service and returns the error at once, asserting no upstream attempt was made.
    async fn fails_fast(
        service: &mut ServiceBreaker<Inner>,
        handle: &mut mock::Handle<Exchange, Response<Body>>,
    ) -> Duration {
        let call = service.ready().await.expect("ready").call(exchange());
        // Bounded, so a breaker that wrongly lets the call through fails here instead of hanging.
        let result = tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .expect("the call did not fail fast");
        assert!(
            handle.poll_request().is_pending(),
            "an upstream attempt was made"
        );
        match result {
            Err(UpstreamError::ServiceOpen {
                service,
                retry_after,
            }) => {
                assert_eq!(service, "books");
                retry_after
            }
            other => panic!("expected ServiceOpen, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_trips_after_more_than_max_reroutes_in_the_window_and_not_before() {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
        for _ in 0..10 {
            breakers.record_reroute("books");
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        breakers.record_reroute("books");
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);
        // Reroutes are counted per service.
        assert_eq!(breakers.state("orders"), ServiceBreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn old_reroutes_slide_out_of_the_window() {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
        for _ in 0..10 {
            breakers.record_reroute("books");
        }
        tokio::time::advance(WINDOW).await;
        // The first ten are a whole window old: ten more do not trip it either.
        for _ in 0..10 {
            breakers.record_reroute("books");
        }
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        // Still within the window of the second ten: the eleventh trips it.
        breakers.record_reroute("books");
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_fails_fast_without_calling_upstream_and_says_when_to_retry() {
        let (mut service, mut handle, breakers) = setup();
        trip(&breakers);
        let retry_after = fails_fast(&mut service, &mut handle).await;
        assert_eq!(retry_after, Duration::from_secs(5));
        tokio::time::advance(Duration::from_millis(4_200)).await;
        // 0.8 s left rounds up to 1 s; never 0.
        let retry_after = fails_fast(&mut service, &mut handle).await;
        assert_eq!(retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(799)).await;
        let retry_after = fails_fast(&mut service, &mut handle).await;
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through_and_its_success_closes_the_breaker() {
        let (mut service, mut handle, breakers) = setup();
        trip(&breakers);
        tokio::time::advance(OPEN).await;

        let mut probe =
            tokio_test::task::spawn(service.ready().await.expect("ready").call(exchange()));
        assert_pending!(probe.poll());
        assert_eq!(breakers.state("books"), ServiceBreakerState::HalfOpen);
        let (_, respond) = handle
            .next_request()
            .await
            .expect("the probe goes upstream");

        // While the probe is in flight, others still fail fast.
        for _ in 0..3 {
            fails_fast(&mut service, &mut handle).await;
        }

        respond.send_response(status(StatusCode::OK));
        let result = assert_ready!(probe.poll());
        assert!(result.is_ok());
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);

        // Closed: requests go upstream again.
        passes_upstream(&service, &mut handle).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker_for_longer() {
        let (mut service, mut handle, breakers) = setup();
        trip(&breakers);
        tokio::time::advance(OPEN).await;

        let response = upstream_answers(
            &service,
            &mut handle,
            Ok(status(StatusCode::SERVICE_UNAVAILABLE)),
        )
        .await
        .expect("a 503 is a response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);

        // The open time doubled: 10 s.
        assert_eq!(
            fails_fast(&mut service, &mut handle).await,
            Duration::from_secs(10)
        );
        tokio::time::advance(Duration::from_secs(10)).await;

        // The next probe is an error: reopened for 20 s.
        let timeout = UpstreamError::Timeout {
            instance: "books-1".into(),
        };
        assert!(
            upstream_answers(&service, &mut handle, Err(timeout))
                .await
                .is_err()
        );
        assert_eq!(
            fails_fast(&mut service, &mut handle).await,
            Duration::from_secs(20)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_answered_with_a_deliberate_503_closes_the_breaker() {
        let (service, mut handle, breakers) = setup();
        trip(&breakers);
        tokio::time::advance(OPEN).await;
        // The service answers, deliberately: its database is failing over. That is no reroute
        // and no failure of the service's instances, so the breaker has no reason to stay open.
        let mut unavailable = status(StatusCode::SERVICE_UNAVAILABLE);
        unavailable.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        let response = upstream_answers(&service, &mut handle, Ok(unavailable))
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        // Closed: the next request goes upstream, not failed fast.
        passes_upstream(&service, &mut handle).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_time_is_capped() {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig {
            open_ms: 5_000,
            max_open_ms: 8_000,
            ..ServiceBreakerConfig::default()
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = tower::service_fn(move |_: Exchange| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<Response<Body>, _>(UpstreamError::Connect {
                instance: "books-1".into(),
            }))
        });
        let mut service = ServiceBreaker::new(inner, breakers.clone());
        trip(&breakers);
        tokio::time::advance(OPEN).await;
        let _ = service.ready().await.expect("ready").call(exchange()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // 5 s doubled is 10 s, capped at 8 s.
        let result = service.ready().await.expect("ready").call(exchange()).await;
        assert!(matches!(
            result,
            Err(UpstreamError::ServiceOpen { retry_after, .. }) if retry_after == Duration::from_secs(8)
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_request_probe() {
        let (mut service, mut handle, breakers) = setup();
        trip(&breakers);
        tokio::time::advance(OPEN).await;
        let mut probe =
            tokio_test::task::spawn(service.ready().await.expect("ready").call(exchange()));
        assert_pending!(probe.poll());
        let _abandoned = handle
            .next_request()
            .await
            .expect("the probe goes upstream");
        drop(probe);
        assert_eq!(breakers.state("books"), ServiceBreakerState::HalfOpen);

        // A new probe goes upstream.
        passes_upstream(&service, &mut handle).await;
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn reroutes_while_half_open_do_not_count() {
        let (service, mut handle, breakers) = setup();
        trip(&breakers);
        tokio::time::advance(OPEN).await;
        let probe = tokio::spawn(service.clone().oneshot(exchange()));
        let (_, respond) = handle
            .next_request()
            .await
            .expect("the probe goes upstream");
        for _ in 0..20 {
            breakers.record_reroute("books");
        }
        assert_eq!(breakers.state("books"), ServiceBreakerState::HalfOpen);
        respond.send_response(status(StatusCode::OK));
        assert!(probe.await.expect("task").is_ok());
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        // The window starts empty after closing.
        for _ in 0..10 {
            breakers.record_reroute("books");
        }
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        passes_upstream(&service, &mut handle).await;
    }

    /// Asserts that a request goes upstream (the breaker is closed).
    async fn passes_upstream(
        service: &ServiceBreaker<Inner>,
        handle: &mut mock::Handle<Exchange, Response<Body>>,
    ) {
        let result = upstream_answers(service, handle, Ok(status(StatusCode::OK))).await;
        assert!(result.is_ok());
    }

    /// Sends one request, which must go upstream, where it gets `answer`; returns what the caller
    /// got back.
    async fn upstream_answers(
        service: &ServiceBreaker<Inner>,
        handle: &mut mock::Handle<Exchange, Response<Body>>,
        answer: Result<Response<Body>, UpstreamError>,
    ) -> Result<Response<Body>, UpstreamError> {
        let call = tokio::spawn(service.clone().oneshot(exchange()));
        let (_, respond) = handle.next_request().await.expect("goes upstream");
        match answer {
            Ok(response) => respond.send_response(response),
            Err(error) => respond.send_error(error),
        }
        call.await.expect("task")
    }

    #[test]
    fn config_defaults_from_an_empty_document() {
        let config: ServiceBreakerConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(config, ServiceBreakerConfig::default());
    }
}
