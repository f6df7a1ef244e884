//! Global load shedding: at most `max_in_flight` requests are in the gateway at once, and one more is
//! answered 503 with `Retry-After: 1` at once. Nothing ever queues: a queue in front of an
//! overloaded gateway only adds latency until every waiting client has given up (which is why this
//! is not tower's `ConcurrencyLimit`, whose `poll_ready` waits for a slot).
//!
//! A request holds its slot until its response body is finished or dropped — a streamed answer is
//! still work in flight — or until its future is dropped, so a cancelled request frees its slot too.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use platform::Problem;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gateway's concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShedConfig {
    /// Requests in flight through the gateway at most; beyond it new requests get 503 at once
    /// (default 1024).
    pub max_in_flight: usize,
}

impl Default for ShedConfig {
    fn default() -> Self {
        ShedConfig {
            max_in_flight: 1024,
        }
    }
}

/// Builds [`Shed`] services that share one count of requests in flight.
#[derive(Clone)]
pub struct ShedLayer {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

impl ShedLayer {
    pub fn new(config: &ShedConfig) -> anyhow::Result<Self> {
        let max = config.max_in_flight;
        anyhow::ensure!(
            (1..=Semaphore::MAX_PERMITS).contains(&max),
            "shed.max_in_flight must be between 1 and {}, not {max}",
            Semaphore::MAX_PERMITS
        );
        // At 0 from the start, so `rate()` sees the first shed request.
        metrics::counter!("gateway_shed_total").increment(0);
        Ok(ShedLayer {
            slots: Arc::new(Semaphore::new(max)),
            max_in_flight: max,
        })
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits()
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            slots: self.slots.clone(),
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Passes a request to `S` if a slot is free, else answers 503 without waiting.
///
/// Put it outermost, over services that are always ready: its own `poll_ready` is the inner one's.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
}

impl<S> tower::Service<Request<Body>> for Shed<S>
where
    S: tower::Service<Request<Body>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!("gateway_shed_total").increment(1);
            tracing::debug!(
                max_in_flight = self.max_in_flight,
                "at capacity: request shed"
            );
            let response = overloaded(self.max_in_flight);
            return Box::pin(async move { Ok(response) });
        };
        // Taken before the inner future exists, so dropping that future at any point frees it.
        let slot = Slot::new(permit);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(hold_until_body_done(response, slot))
        })
    }
}

/// One request's place in flight; leaving it (drop) frees the place.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: metrics::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Slot {
        let gauge = metrics::gauge!("gateway_in_flight");
        gauge.increment(1.0);
        Slot {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Moves the slot into the response body, which keeps its size hint and end-of-stream signal.
fn hold_until_body_done(response: Response, slot: Slot) -> Response {
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &slot;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

fn overloaded(max_in_flight: usize) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!(
            "the gateway is at capacity ({max_in_flight} requests in flight); try again shortly"
        ),
    )
    .with_retry_after(1)
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    use futures::FutureExt;
    use http::header;
    use tokio::time::Instant;
    use tower::{Layer, Service, ServiceExt};

    /// Answers after one second, like a slow upstream.
    fn slow_service()
    -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|_: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Response::new(Body::from("done")))
        })
    }

    fn layer(max_in_flight: usize) -> ShedLayer {
        ShedLayer::new(&ShedConfig { max_in_flight }).expect("valid")
    }

    fn request() -> Request<Body> {
        Request::new(Body::empty())
    }

    /// The answer to a request sent now, if it comes without waiting at all.
    fn answer_at_once<S>(service: &mut S) -> Option<Response>
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        let response = service.call(request()).now_or_never()?;
        Some(response.expect("infallible"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_limit_is_shed_at_once_with_problem_json() {
        let shed = layer(2);
        let mut service = shed.layer(slow_service());
        let _first = service.ready().await.expect("ready").call(request());
        let _second = service.call(request());
        assert_eq!(shed.in_flight(), 2);

        let started = Instant::now();
        let refused = answer_at_once(&mut service).expect("no waiting");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            refused.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = refused
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let problem: Problem = serde_json::from_slice(&body).expect("problem json");
        assert_eq!(problem.kind, "/problems/overloaded");
        assert!(
            problem.detail.contains("2 requests in flight"),
            "{}",
            problem.detail
        );
        // A shed request never took a slot.
        assert_eq!(shed.in_flight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_makes_room_once_its_body_is_done() {
        let shed = layer(1);
        let mut service = shed.layer(slow_service());
        let response = service.call(request()).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);

        // The answer's body is still on its way to the client: the slot is taken.
        assert_eq!(shed.in_flight(), 1);
        let refused = answer_at_once(&mut service).expect("no waiting");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "done");
        assert_eq!(shed.in_flight(), 0);
        let response = service.call(request()).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        assert_eq!(shed.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_frees_its_slot() {
        let shed = layer(1);
        let mut service = shed.layer(slow_service());

        // Dropped before it was ever polled.
        let unpolled = service.call(request());
        assert_eq!(shed.in_flight(), 1);
        drop(unpolled);
        assert_eq!(shed.in_flight(), 0);

        // Dropped half way, while the upstream is working on it (a client that hung up).
        let running = tokio::spawn(service.call(request()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!running.is_finished());
        assert_eq!(shed.in_flight(), 1);
        running.abort();
        assert!(running.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(shed.in_flight(), 0);

        let response = service.call(request()).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn a_limit_of_nothing_is_refused() {
        assert!(ShedLayer::new(&ShedConfig { max_in_flight: 0 }).is_err());
        assert!(ShedLayer::new(&ShedConfig::default()).is_ok());
    }

    #[test]
    fn shed_requests_and_requests_in_flight_are_exported() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let shed = layer(2);
        let mut service = shed.layer(slow_service());
        let held = metrics::with_local_recorder(&recorder, || {
            let first = service.call(request());
            let second = service.call(request());
            for _ in 0..3 {
                let refused = answer_at_once(&mut service).expect("no waiting");
                assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
            drop(first);
            second
        });
        let text = handle.render();
        assert!(text.lines().any(|l| l == "gateway_shed_total 3"), "{text}");
        assert!(text.lines().any(|l| l == "gateway_in_flight 1"), "{text}");
        drop(held);
        let text = handle.render();
        assert!(text.lines().any(|l| l == "gateway_in_flight 0"), "{text}");
    }
}
