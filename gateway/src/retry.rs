//! Reroutes: a failed attempt is sent again — to a *different* instance — when that cannot do harm,
//! within the retry budget, after a jittered backoff, and never past the request's deadline.
//!
//! A failure is an `Err` with an instance (`Connect`, `Timeout`, `Failed`) or an answer that
//! [`is_failure`] (5xx but 501, and but a 503 with `Retry-After`). A service's deliberate 503 +
//! `Retry-After` says a dependency its instances share is unavailable (the database failing over):
//! another instance would answer the same, and the service asked the *client* to wait, so it is
//! passed through as it is, never rerouted (like Envoy, which does not retry an answer carrying
//! `x-envoy-overloaded`). Sending a failure again is safe when:
//! - the request certainly never left ([`UpstreamError::never_sent`]: a refused connection), for
//!   any method; or
//! - the request is idempotent ([`Exchange::is_idempotent`]: the method, or `Idempotency-Key`).
//!
//! A non-idempotent request without a key that may have been sent — a timeout, a broken exchange, a
//! 5xx answer — is **never** sent twice: its result goes back to the client as it is.
//!
//! Before each reroute the failed instance joins `exchange.tried` (so the balancer picks another),
//! a slot is taken from the service's [`RetryBudget`](crate::budget::RetryBudget) (none left: the
//! last result is returned and counted; a refused connection takes no slot, since rerouting a
//! request that reached no upstream adds no load), the reroute is reported to the [`ServiceBreakers`], and a
//! backoff passes (exponential with full jitter). `NoInstance` on a reroute (every instance tried
//! or ejected) returns the previous failure, which says more.
//!
//! The stack, outermost first — one `ServiceBreakers` and one `RetryBudgets` for the gateway:
//!
//! ```ignore
//! let breakers = ServiceBreakers::new(config.service_breaker.clone());
//! let budgets = RetryBudgets::new(config.retry_budget.clone());
//! let stack = tower::ServiceBuilder::new()
//!     // A tripped service fails fast, before any deadline or budget is spent.
//!     .layer(ServiceBreaker::layer(breakers.clone()))
//!     // One deadline over every attempt and backoff.
//!     .layer(Deadline::layer())
//!     // Failed attempts go elsewhere, within the budget; each reroute feeds the service breaker.
//!     .layer(Retry::layer(config.retry.clone(), budgets, breakers))
//!     .service(balancer);
//! ```

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use foldhash::HashMap;
use futures::future::BoxFuture;
use http::Response;
use metrics::Counter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::budget::{RetryBudgets, RetryGuard};
use crate::exchange::{Exchange, UpstreamError, is_failure};
use crate::service_breaker::ServiceBreakers;

/// How often and how patiently failed attempts are rerouted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts per request, the first one included; 1 disables reroutes (default 3).
    pub max_attempts: u32,
    /// The backoff before the first reroute is drawn from [0, base]; it doubles for each later one
    /// (default 5 ms).
    pub backoff_base_ms: u64,
    /// The largest backoff (default 100 ms).
    pub backoff_max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff_base_ms: 5,
            backoff_max_ms: 100,
        }
    }
}

/// The instance that gave an answer, as the balancer records it in the response's extensions, so a
/// 5xx answer's instance can join `tried`. (The balancer's own `ServedBy` must be this type, or
/// the layer must be given a reader with [`RetryLayer::served_by`].)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub String);

/// Reads the instance that served a response.
pub type ServedByFn = fn(&Response<Body>) -> Option<String>;

/// The default [`ServedByFn`]: this module's [`ServedBy`] extension.
pub fn served_by(response: &Response<Body>) -> Option<String> {
    response
        .extensions()
        .get::<ServedBy>()
        .map(|served| served.0.clone())
}

/// The backoff before reroute number `retry` (0 for the first): uniformly drawn from
/// `[0, min(max, base × 2^retry)]` ("full jitter", so retries of many requests spread out).
pub fn backoff(config: &RetryConfig, retry: u32) -> Duration {
    let ceiling = Duration::from_millis(
        config
            .backoff_base_ms
            .saturating_mul(1u64.checked_shl(retry).unwrap_or(u64::MAX))
            .min(config.backoff_max_ms),
    );
    ceiling.mul_f64(random_fraction())
}

/// A random number in [0, 1). Each `RandomState` is randomly keyed, which is enough for jitter and
/// needs no RNG dependency.
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Tokio's timers fire on whole milliseconds, so a sleep may end up to this much later than asked.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Shared {
    config: RetryConfig,
    budgets: RetryBudgets,
    breakers: ServiceBreakers,
    served_by: ServedByFn,
}

/// Reroutes failed attempts (see the module docs).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Retry<()> {
    /// `budgets` and `breakers` are the gateway-wide handles (per-service state inside).
    pub fn layer(
        config: RetryConfig,
        budgets: RetryBudgets,
        breakers: ServiceBreakers,
    ) -> RetryLayer {
        RetryLayer {
            shared: Shared {
                config,
                budgets,
                breakers,
                served_by,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Shared,
}

impl RetryLayer {
    /// Reads the serving instance of a response some other way than [`ServedBy`].
    pub fn served_by(mut self, read: ServedByFn) -> RetryLayer {
        self.shared.served_by = read;
        self
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::new(self.shared.clone()),
        }
    }
}

impl<S> tower::Service<Exchange> for Retry<S>
where
    S: tower::Service<Exchange, Response = Response<Body>, Error = UpstreamError>
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
        // The service that was made ready goes into the future (for the first attempt); a fresh
        // clone stays behind for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(inner, exchange, self.shared.clone()))
    }
}

/// What to do after an attempt.
enum Verdict {
    Done,
    Reroute {
        instance: Option<String>,
        reason: &'static str,
    },
}

fn judge(
    result: &Result<Response<Body>, UpstreamError>,
    exchange: &Exchange,
    served_by: ServedByFn,
) -> Verdict {
    match result {
        Ok(response) if !is_failure(response) => Verdict::Done,
        Ok(response) if exchange.is_idempotent() => Verdict::Reroute {
            instance: served_by(response),
            reason: "status",
        },
        Ok(_) => Verdict::Done,
        Err(error) => {
            let (instance, reason) = match error {
                UpstreamError::Connect { instance } => (instance, "connect"),
                UpstreamError::Timeout { instance } => (instance, "timeout"),
                UpstreamError::Failed { instance, .. } => (instance, "failed"),
                // No instance to blame: nowhere else to go, or a decision above the upstreams.
                UpstreamError::NoInstance { .. }
                | UpstreamError::ServiceOpen { .. }
                | UpstreamError::DeadlineExceeded { .. } => return Verdict::Done,
            };
            if error.never_sent() || exchange.is_idempotent() {
                Verdict::Reroute {
                    instance: Some(instance.clone()),
                    reason,
                }
            } else {
                Verdict::Done
            }
        }
    }
}

async fn run<S>(
    mut inner: S,
    mut exchange: Exchange,
    shared: Arc<Shared>,
) -> Result<Response<Body>, UpstreamError>
where
    S: tower::Service<Exchange, Response = Response<Body>, Error = UpstreamError>,
{
    let service = exchange.service.clone();
    let budget = shared.budgets.for_service(&service);
    let _request = budget.request();
    let mut attempts = 1;
    let mut result = attempt(&mut inner, &exchange).await;
    // The budget slot of the reroute in flight, if any.
    let mut retry_slot: Option<RetryGuard> = None;
    loop {
        let Verdict::Reroute { instance, reason } = judge(&result, &exchange, shared.served_by)
        else {
            return result;
        };
        if attempts >= shared.config.max_attempts {
            return result;
        }
        if let Some(instance) = instance
            && !exchange.tried.contains(&instance)
        {
            exchange.tried.push(instance);
        }
        let wait = backoff(&shared.config, attempts - 1);
        if Instant::now() + wait + TIMER_GRANULARITY >= exchange.deadline {
            // No time for another attempt: the deadline layer would cut it short anyway.
            return result;
        }
        drop(retry_slot.take());
        // A refused connection reached no upstream, so rerouting it adds no load anywhere: the
        // budget guards against retry storms on struggling instances, and this is not one. It is
        // still bounded by `max_attempts`, by `tried` and by the service breaker.
        if !matches!(&result, Err(error) if error.never_sent()) {
            let Some(slot) = budget.try_withdraw() else {
                tracing::debug!(upstream = %service, "retry budget exhausted; not rerouting");
                return result;
            };
            retry_slot = Some(slot);
        }
        shared.breakers.record_reroute(&service);
        metrics::counter!("gateway_reroutes_total", "upstream" => service.clone(), "reason" => reason)
            .increment(1);
        tokio::time::sleep(wait).await;
        if inner.ready().await.is_err() {
            return result;
        }
        attempts += 1;
        let next = attempt(&mut inner, &exchange).await;
        if let Err(UpstreamError::NoInstance { .. }) = next {
            return result;
        }
        result = next;
    }
}

/// One attempt on a ready `inner`. The exchange carries its deadline; forward stamps the time the
/// attempt has left on the request it sends.
async fn attempt<S>(inner: &mut S, exchange: &Exchange) -> Result<Response<Body>, UpstreamError>
where
    S: tower::Service<Exchange, Response = Response<Body>, Error = UpstreamError>,
{
    attempts_counter(&exchange.service).increment(1);
    inner.call(exchange.clone()).await
}

thread_local! {
    /// `gateway_upstream_attempts_total` by upstream, as this thread has used it (and the recorder
    /// the handles belong to).
    static ATTEMPTS: RefCell<(usize, HashMap<Box<str>, Counter>)> = RefCell::default();
}

fn attempts_counter(service: &str) -> Counter {
    ATTEMPTS.with_borrow_mut(|(recorder, counters)| {
        let current = platform::metrics::recorder_id();
        if *recorder != current {
            counters.clear();
            *recorder = current;
        }
        if let Some(counter) = counters.get(service) {
            return counter.clone();
        }
        let counter =
            metrics::counter!("gateway_upstream_attempts_total", "upstream" => service.to_owned());
        counters.insert(service.into(), counter.clone());
        counter
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use tower::Service;
    use tower_test::mock;

    use super::*;
    use crate::budget::BudgetConfig;
    use crate::exchange::IDEMPOTENCY_KEY;
    use crate::service_breaker::{ServiceBreakerConfig, ServiceBreakerState};

    fn exchange(method: Method) -> Exchange {
        Exchange {
            service: "books".into(),
            method,
            uri: "/api/books".parse().expect("static uri"),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            peer: None,
            deadline: Instant::now() + Duration::from_secs(5),
            attempt_timeout: None,
            tried: Vec::new(),
        }
    }

    fn with_key(mut exchange: Exchange) -> Exchange {
        exchange
            .headers
            .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        exchange
    }

    fn answer(instance: &str, status: StatusCode) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        response
            .extensions_mut()
            .insert(ServedBy(instance.to_owned()));
        response
    }

    fn connect(instance: &str) -> UpstreamError {
        UpstreamError::Connect {
            instance: instance.into(),
        }
    }

    fn timeout(instance: &str) -> UpstreamError {
        UpstreamError::Timeout {
            instance: instance.into(),
        }
    }

    /// What a scripted upstream does on one call.
    enum Step {
        Answer(&'static str, StatusCode),
        /// A deliberate 503 + `Retry-After: 1` (a dependency is unavailable).
        Unavailable(&'static str),
        Fail(UpstreamError),
        /// Fails after some time.
        FailAfter(Duration, UpstreamError),
    }

    /// An inner service that plays a script and records every exchange it was called with (and
    /// when). Past the end of the script it has no instance left.
    #[derive(Clone, Default)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<Step>>>,
        calls: Arc<Mutex<Vec<(Instant, Exchange)>>>,
    }

    impl Scripted {
        fn new(steps: impl IntoIterator<Item = Step>) -> Scripted {
            Scripted {
                script: Arc::new(Mutex::new(steps.into_iter().collect())),
                calls: Arc::default(),
            }
        }

        fn calls(&self) -> Vec<(Instant, Exchange)> {
            self.calls.lock().expect("lock").clone()
        }

        fn tried(&self) -> Vec<Vec<String>> {
            self.calls().into_iter().map(|(_, e)| e.tried).collect()
        }
    }

    impl Service<Exchange> for Scripted {
        type Response = Response<Body>;
        type Error = UpstreamError;
        type Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, exchange: Exchange) -> Self::Future {
            let service = exchange.service.clone();
            self.calls
                .lock()
                .expect("lock")
                .push((Instant::now(), exchange));
            let step = self.script.lock().expect("lock").pop_front();
            Box::pin(async move {
                match step {
                    Some(Step::Answer(instance, status)) => Ok(answer(instance, status)),
                    Some(Step::Unavailable(instance)) => {
                        let mut response = answer(instance, StatusCode::SERVICE_UNAVAILABLE);
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                        Ok(response)
                    }
                    Some(Step::Fail(error)) => Err(error),
                    Some(Step::FailAfter(after, error)) => {
                        tokio::time::sleep(after).await;
                        Err(error)
                    }
                    None => Err(UpstreamError::NoInstance { service }),
                }
            })
        }
    }

    fn retry(inner: Scripted) -> (Retry<Scripted>, ServiceBreakers) {
        retry_with(inner, RetryConfig::default())
    }

    fn retry_with(inner: Scripted, config: RetryConfig) -> (Retry<Scripted>, ServiceBreakers) {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
        let layer = Retry::layer(
            config,
            RetryBudgets::new(BudgetConfig::default()),
            breakers.clone(),
        );
        (tower::Layer::layer(&layer, inner), breakers)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_failure_on_a_post_without_key_is_rerouted_to_another_instance() {
        let inner = Scripted::new([
            Step::Fail(connect("books-1")),
            Step::Answer("books-2", StatusCode::CREATED),
        ]);
        let (service, _) = retry(inner.clone());
        let response = service
            .oneshot(exchange(Method::POST))
            .await
            .expect("rerouted");
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(inner.tried(), vec![vec![], vec!["books-1".to_owned()]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_without_key_that_may_have_been_sent_is_never_sent_twice() {
        for error in [
            timeout("books-1"),
            UpstreamError::Failed {
                instance: "books-1".into(),
                reason: "connection reset".into(),
            },
        ] {
            let inner = Scripted::new([
                Step::Fail(error.clone()),
                Step::Answer("books-2", StatusCode::CREATED),
            ]);
            let (service, _) = retry(inner.clone());
            let result = service.oneshot(exchange(Method::POST)).await;
            assert_eq!(result.err(), Some(error));
            assert_eq!(inner.calls().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_on_a_get_is_rerouted() {
        let inner = Scripted::new([
            Step::Fail(timeout("books-1")),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let (service, _) = retry(inner.clone());
        let response = service.oneshot(exchange(Method::GET)).await.expect("ok");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(inner.calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_answer_is_rerouted_for_a_get_and_a_keyed_post_but_not_for_a_bare_post() {
        let cases = [
            (exchange(Method::GET), StatusCode::OK, 2),
            (with_key(exchange(Method::POST)), StatusCode::OK, 2),
            (exchange(Method::POST), StatusCode::SERVICE_UNAVAILABLE, 1),
        ];
        for (request, expected, calls) in cases {
            let inner = Scripted::new([
                Step::Answer("books-1", StatusCode::SERVICE_UNAVAILABLE),
                Step::Answer("books-2", StatusCode::OK),
            ]);
            let (service, _) = retry(inner.clone());
            let method = request.method.clone();
            let response = service.oneshot(request).await.expect("a response");
            assert_eq!(response.status(), expected, "{method}");
            assert_eq!(inner.calls().len(), calls, "{method}");
            if calls == 2 {
                // The 503's instance (from ServedBy) is excluded from the reroute.
                assert_eq!(inner.tried()[1], vec!["books-1".to_owned()]);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deliberate_503_is_passed_through_never_rerouted_nor_counted() {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig {
            max_reroutes: 0,
            min_reroute_ratio: 0.0,
            ..ServiceBreakerConfig::default()
        });
        let budgets = RetryBudgets::new(BudgetConfig::default());
        let layer = Retry::layer(RetryConfig::default(), budgets.clone(), breakers.clone());
        for request in [
            exchange(Method::GET),
            with_key(exchange(Method::POST)),
            exchange(Method::POST),
        ] {
            let inner = Scripted::new([
                Step::Unavailable("books-1"),
                Step::Answer("books-2", StatusCode::OK),
            ]);
            let service = tower::Layer::layer(&layer, inner.clone());
            let method = request.method.clone();
            let response = service.oneshot(request).await.expect("a response");
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{method}"
            );
            assert_eq!(
                response.headers()[http::header::RETRY_AFTER],
                "1",
                "{method}"
            );
            assert_eq!(inner.calls().len(), 1, "{method}: not rerouted");
        }
        // A breaker that trips on the first reroute saw none; no budget was spent.
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        assert_eq!(budgets.for_service("books").exhausted_total(), 0);
        assert_eq!(budgets.for_service("books").active_retries(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_501_answer_is_not_a_failure_and_is_not_rerouted() {
        let inner = Scripted::new([
            Step::Answer("books-1", StatusCode::NOT_IMPLEMENTED),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let (service, _) = retry(inner.clone());
        let response = service.oneshot(exchange(Method::GET)).await.expect("ok");
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(inner.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tried_grows_with_each_failed_instance() {
        let inner = Scripted::new([
            Step::Fail(connect("books-1")),
            Step::Fail(timeout("books-2")),
            Step::Answer("books-3", StatusCode::OK),
        ]);
        let (service, _) = retry(inner.clone());
        let response = service.oneshot(exchange(Method::GET)).await.expect("ok");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            inner.tried(),
            vec![
                vec![],
                vec!["books-1".to_owned()],
                vec!["books-1".to_owned(), "books-2".to_owned()],
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_never_exceed_max_attempts() {
        for max_attempts in [1, 2, 3, 5] {
            let inner = Scripted::new((1..=10).map(|_| Step::Fail(connect("books-x"))));
            let config = RetryConfig {
                max_attempts,
                ..RetryConfig::default()
            };
            let (service, _) = retry_with(inner.clone(), config);
            let result = service.oneshot(exchange(Method::GET)).await;
            assert_eq!(result.err(), Some(connect("books-x")));
            assert_eq!(inner.calls().len(), max_attempts as usize);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_instance_on_a_reroute_returns_the_previous_failure() {
        let inner = Scripted::new([Step::Answer("books-1", StatusCode::BAD_GATEWAY)]);
        let (service, _) = retry(inner.clone());
        let response = service
            .oneshot(exchange(Method::GET))
            .await
            .expect("the 502");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(inner.calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_instance_on_the_first_attempt_is_returned_without_a_reroute() {
        let inner = Scripted::new([]);
        let (service, breakers) = retry(inner.clone());
        let result = service.oneshot(exchange(Method::GET)).await;
        assert!(matches!(result, Err(UpstreamError::NoInstance { .. })));
        assert_eq!(inner.calls().len(), 1);
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn each_reroute_is_reported_to_the_service_breaker() {
        let breakers = ServiceBreakers::new(ServiceBreakerConfig {
            max_reroutes: 1,
            ..ServiceBreakerConfig::default()
        });
        let layer = Retry::layer(
            RetryConfig::default(),
            RetryBudgets::new(BudgetConfig::default()),
            breakers.clone(),
        );
        // One reroute: at the threshold, not over it.
        let inner = Scripted::new([
            Step::Fail(connect("books-1")),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let service = tower::Layer::layer(&layer, inner);
        service.oneshot(exchange(Method::GET)).await.expect("ok");
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        // A failure that is not rerouted is not reported.
        let inner = Scripted::new([Step::Fail(timeout("books-1"))]);
        let service = tower::Layer::layer(&layer, inner);
        let _ = service.oneshot(exchange(Method::POST)).await;
        assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
        // A second reroute trips it.
        let inner = Scripted::new([
            Step::Fail(connect("books-1")),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let service = tower::Layer::layer(&layer, inner);
        service.oneshot(exchange(Method::GET)).await.expect("ok");
        assert_eq!(breakers.state("books"), ServiceBreakerState::Open);
    }

    #[test]
    fn backoff_is_drawn_within_zero_and_the_capped_exponential() {
        let config = RetryConfig::default();
        for retry in 0..40 {
            let ceiling = Duration::from_millis((5u64 << retry.min(20)).min(100));
            let draws: Vec<Duration> = (0..500).map(|_| backoff(&config, retry)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Full jitter: spread over the range, not a fixed wait.
            assert!(draws.iter().any(|d| *d < ceiling / 4), "retry {retry}");
            assert!(draws.iter().any(|d| *d > ceiling * 3 / 4), "retry {retry}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_between_attempts_is_at_most_the_cap() {
        let config = RetryConfig {
            max_attempts: 10,
            backoff_base_ms: 20,
            backoff_max_ms: 50,
        };
        let inner = Scripted::new((1..=10).map(|_| Step::Fail(connect("books-x"))));
        let (service, _) = retry_with(inner.clone(), config);
        let _ = service.oneshot(exchange(Method::GET)).await;
        let calls = inner.calls();
        assert_eq!(calls.len(), 10);
        for (n, pair) in calls.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            let ceiling = Duration::from_millis((20u64 << n).min(50));
            assert!(gap <= ceiling, "gap {n} was {gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_reroute_waits_past_the_deadline() {
        let config = RetryConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 100,
            ..RetryConfig::default()
        };
        let (mut rerouted, mut given_up) = (0, 0);
        for _ in 0..200 {
            let inner = Scripted::new([
                Step::Fail(connect("books-1")),
                Step::Answer("books-2", StatusCode::OK),
            ]);
            let (service, _) = retry_with(inner.clone(), config.clone());
            let mut request = exchange(Method::GET);
            // 50 ms left, backoff drawn from [0, 100 ms].
            request.deadline = Instant::now() + Duration::from_millis(50);
            let deadline = request.deadline;
            let result = service.oneshot(request).await;
            let calls = inner.calls();
            if calls.len() == 2 {
                assert!(calls[1].0 < deadline);
                assert!(result.is_ok());
                rerouted += 1;
            } else {
                assert_eq!(calls.len(), 1);
                assert_eq!(result.err(), Some(connect("books-1")));
                assert!(Instant::now() < deadline, "waited past the deadline");
                given_up += 1;
            }
        }
        assert!(rerouted > 0 && given_up > 0, "{rerouted} / {given_up}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_at_the_deadline_is_not_rerouted() {
        let inner = Scripted::new([
            Step::FailAfter(Duration::from_millis(100), connect("books-1")),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let (service, _) = retry(inner.clone());
        let mut request = exchange(Method::GET);
        request.deadline = Instant::now() + Duration::from_millis(100);
        let result = service.oneshot(request).await;
        assert_eq!(result.err(), Some(connect("books-1")));
        assert_eq!(inner.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_carries_the_time_left_then() {
        let inner = Scripted::new([
            Step::FailAfter(Duration::from_millis(300), connect("books-1")),
            Step::Answer("books-2", StatusCode::OK),
        ]);
        let (service, _) = retry(inner.clone());
        let mut request = exchange(Method::GET);
        request.deadline = Instant::now() + Duration::from_millis(1_000);
        let deadline = request.deadline;
        service.oneshot(request).await.expect("ok");
        // The time each attempt has left then, which forward stamps on the request it sends.
        let left: Vec<Duration> = inner
            .calls()
            .iter()
            .map(|(at, sent)| sent.deadline - *at)
            .collect();
        let expected: Vec<Duration> = inner.calls().iter().map(|(at, _)| deadline - *at).collect();
        assert_eq!(left, expected);
        assert_eq!(left[0], Duration::from_millis(1_000));
        assert!(left[1] <= Duration::from_millis(700));
    }

    type MockHandle = mock::Handle<Exchange, Response<Body>>;

    /// A retry layer over a mock upstream, with a budget of max(3, 20 % of requests in flight).
    fn budgeted_stack() -> (Retry<MockInner>, MockHandle, RetryBudgets) {
        let (mock, handle) = mock::pair::<Exchange, Response<Body>>();
        let inner = mock.map_err(from_mock as fn(tower::BoxError) -> UpstreamError);
        let budgets = RetryBudgets::new(BudgetConfig {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        });
        let layer = Retry::layer(
            RetryConfig::default(),
            budgets.clone(),
            ServiceBreakers::new(ServiceBreakerConfig::default()),
        );
        (tower::Layer::layer(&layer, inner), handle, budgets)
    }

    type MockInner = tower::util::MapErr<
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

    #[tokio::test(start_paused = true)]
    async fn refused_connections_are_rerouted_without_spending_the_budget() {
        let (service, mut handle, budgets) = budgeted_stack();
        let tasks: Vec<_> = (0..10)
            .map(|_| tokio::spawn(service.clone().oneshot(exchange(Method::POST))))
            .collect();
        let mut first = Vec::new();
        for _ in 0..10 {
            first.push(handle.next_request().await.expect("a first attempt"));
        }
        for (n, (_, respond)) in first.into_iter().enumerate() {
            respond.send_error(connect(&format!("books-{n}")));
        }
        // All ten are rerouted at once: none of them reached an instance.
        let mut reroutes = Vec::new();
        for _ in 0..10 {
            reroutes.push(handle.next_request().await.expect("a reroute"));
        }
        assert_eq!(budgets.for_service("books").exhausted_total(), 0);
        for (_, respond) in reroutes {
            respond.send_response(answer("books-ok", StatusCode::OK));
        }
        for task in tasks {
            assert!(task.await.expect("task").is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_concurrent_reroutes_and_counts_exhaustion() {
        let (service, mut handle, budgets) = budgeted_stack();
        let budget = budgets.for_service("books");

        let tasks: Vec<_> = (0..10)
            .map(|_| tokio::spawn(service.clone().oneshot(exchange(Method::GET))))
            .collect();
        let mut first = Vec::new();
        for _ in 0..10 {
            first.push(handle.next_request().await.expect("a first attempt"));
        }
        assert_eq!(budget.active_requests(), 10);
        // Timeouts: the requests may have reached their instances, so reroutes are budgeted.
        for (n, (_, respond)) in first.into_iter().enumerate() {
            respond.send_error(timeout(&format!("books-{n}")));
        }

        // max(3, ceil(20 % × 10)) = 3 reroutes at once; the other 7 are refused.
        let mut reroutes = Vec::new();
        for _ in 0..3 {
            reroutes.push(handle.next_request().await.expect("a reroute"));
        }
        let fourth = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
        assert!(fourth.is_err(), "a fourth reroute ran");
        assert_eq!(budget.active_retries(), 3);
        assert_eq!(budget.exhausted_total(), 7);

        for (_, respond) in reroutes {
            respond.send_response(answer("books-ok", StatusCode::OK));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => ok += 1,
                Err(error) => assert!(matches!(error, UpstreamError::Timeout { .. })),
            }
        }
        assert_eq!(ok, 3);
        assert_eq!(budget.active_requests(), 0);
        assert_eq!(budget.active_retries(), 0);
    }

    #[test]
    fn config_defaults_from_an_empty_document() {
        let config: RetryConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(config, RetryConfig::default());
    }
}
