//! Prometheus metrics: one process-wide recorder, rendered at `/metrics`, and the RED middleware that
//! counts every request by route template (never by raw path, which would explode cardinality).
//!
//! Hot paths keep their metric handles in per-thread caches keyed by label values (see
//! [`recorder_id`]), so a request neither builds label strings nor looks its series up in the
//! registry once its labels have been seen.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use foldhash::HashMap;
use http::Method;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;

/// Latency buckets in seconds, from 1 ms to 10 s: enough resolution for p50/p99 of a local service.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process, labelling every series with the component's name.
/// Later calls (tests start several apps in one process) reuse the first recorder.
pub fn install(component: &str) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            crate::live_gauges::set_component(component);
            let builder = PrometheusBuilder::new()
                .add_global_label("service", component)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is already installed; then ours just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            start_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often the recorder's histograms are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The exporter keeps every histogram sample (value and time, 24 bytes) until an upkeep or a
/// render folds it into the buckets, and a recorder built by hand gets no upkeep of its own: left
/// to the scrapes, a process nobody scrapes grows by 24 bytes per request without bound (≈ 2.7
/// GB an hour at 30 000 requests a second), and the scrape after a pile-up folds it on the
/// thread that serves `/metrics` — 15 ms for a 30 s pile, while requests on that thread wait.
/// A thread of its own folds them every second instead.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(err) = started {
        tracing::warn!(error = %err, "could not start the metrics upkeep; scrapes will do it");
    }
}

/// The text exposition of every metric recorded so far, and of the gauges read at scrape time
/// ([`crate::live_gauges`]).
pub fn render() -> String {
    let mut text = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    text.push_str(&crate::live_gauges::render());
    text
}

/// Which recorder the `metrics` macros would use on this thread right now: a local one (tests),
/// else the global one, else the no-op one. A handle belongs to the recorder that made it, so a
/// cache of handles is valid only while this stays the same (handles made before the recorder was
/// installed would record nothing, forever).
pub fn recorder_id() -> usize {
    metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize)
}

/// The RED series of one route.
struct RouteHandles {
    in_flight: Gauge,
    /// By method and status.
    answered: HashMap<(Method, u16), (Counter, Histogram)>,
}

/// The RED handles this thread has used, by route template.
#[derive(Default)]
struct RedCache {
    recorder: usize,
    routes: HashMap<Box<str>, RouteHandles>,
}

impl RedCache {
    /// The entry of `route`, emptying the cache first if the recorder changed.
    fn route(&mut self, route: &str) -> &mut RouteHandles {
        let recorder = recorder_id();
        if self.recorder != recorder {
            self.routes.clear();
            self.recorder = recorder;
        }
        if !self.routes.contains_key(route) {
            let handles = RouteHandles {
                in_flight: metrics::gauge!("http_requests_in_flight", "route" => route.to_owned()),
                answered: HashMap::default(),
            };
            self.routes.insert(route.into(), handles);
        }
        self.routes.get_mut(route).expect("inserted above")
    }
}

thread_local! {
    static RED: RefCell<RedCache> = RefCell::default();
}

fn in_flight_gauge(route: &str) -> Gauge {
    RED.with_borrow_mut(|cache| cache.route(route).in_flight.clone())
}

fn answered_handles(route: &str, method: &Method, status: u16) -> (Counter, Histogram) {
    RED.with_borrow_mut(|cache| {
        let entry = cache.route(route);
        // A standard method clones without allocating; only an unseen combination builds labels.
        entry
            .answered
            .entry((method.clone(), status))
            .or_insert_with(|| {
                let labels = [
                    ("method", method.as_str().to_owned()),
                    ("route", route.to_owned()),
                    ("status", status.to_string()),
                ];
                (
                    metrics::counter!("http_requests_total", &labels),
                    metrics::histogram!("http_request_duration_seconds", &labels),
                )
            })
            .clone()
    })
}

/// The RED middleware: records `http_requests_total`, `http_request_duration_seconds` and
/// `http_requests_in_flight` labelled by method, route template and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedLayer;

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;

    fn layer(&self, inner: S) -> Red<S> {
        Red { inner }
    }
}

/// See [`RedLayer`].
#[derive(Debug, Clone)]
pub struct Red<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Red<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        let in_flight = InFlight::new(in_flight_gauge(
            route.as_ref().map_or("unmatched", MatchedPath::as_str),
        ));
        let started = Instant::now();
        Answered {
            answer: self.inner.call(request),
            route,
            method,
            in_flight: Some(in_flight),
            started,
        }
    }
}

pin_project! {
    /// A request's answer; counted when it is ready (a plain future: no box per request).
    pub struct Answered<F> {
        #[pin]
        answer: F,
        route: Option<MatchedPath>,
        method: Method,
        in_flight: Option<InFlight>,
        started: Instant,
    }
}

impl<F, E> Future for Answered<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.answer.poll(cx));
        this.in_flight.take();
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let (requests, duration) =
                answered_handles(route, this.method, response.status().as_u16());
            requests.increment(1);
            duration.record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}

/// One request in flight: counted up when made, down when dropped (answered or abandoned).
struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_follow_the_recorder_in_use() {
        let method = Method::GET;
        let first = PrometheusBuilder::new().build_recorder();
        let second = PrometheusBuilder::new().build_recorder();
        for _ in 0..2 {
            metrics::with_local_recorder(&first, || {
                answered_handles("/things", &method, 200).0.increment(1);
            });
        }
        metrics::with_local_recorder(&second, || {
            answered_handles("/things", &method, 200).0.increment(1);
            answered_handles("/things", &method, 404).0.increment(1);
        });
        let line = r#"http_requests_total{method="GET",route="/things",status="200"}"#;
        let has = |text: &str, expected: &str| text.lines().any(|l| l == expected);
        let text = first.handle().render();
        assert!(has(&text, &format!("{line} 2")), "{text}");
        let text = second.handle().render();
        assert!(has(&text, &format!("{line} 1")), "{text}");
        assert!(
            has(
                &text,
                r#"http_requests_total{method="GET",route="/things",status="404"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn an_answer_is_counted_once_and_an_abandoned_request_leaves_the_in_flight_count() {
        use tower::{Layer, Service};

        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            let mut answered = RedLayer.layer(tower::service_fn(|_: Request| {
                std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                    axum::body::Body::empty(),
                )))
            }));
            let mut hanging = RedLayer.layer(tower::service_fn(|_: Request| {
                std::future::pending::<Result<Response, std::convert::Infallible>>()
            }));
            let request = || Request::new(axum::body::Body::empty());
            let abandoned = hanging.call(request());
            let pending = recorder.handle().render();
            assert!(
                pending.contains(r#"http_requests_in_flight{route="unmatched"} 1"#),
                "{pending}"
            );
            drop(abandoned);
            let answer = futures_util::FutureExt::now_or_never(answered.call(request()));
            assert!(answer.is_some_and(|r| r.is_ok()));
            let text = recorder.handle().render();
            assert!(
                text.contains(r#"http_requests_in_flight{route="unmatched"} 0"#),
                "{text}"
            );
            assert!(
                text.contains(
                    r#"http_requests_total{method="GET",route="unmatched",status="200"} 1"#
                ),
                "{text}"
            );
        });
    }
}
