//! Caller deadlines: a request may say how long its caller will still wait, in
//! `x-request-timeout-ms` (milliseconds *remaining*, relative so that clock skew between hosts cannot
//! break it). The service works on it no longer than that: when the time is up the handler's future
//! is dropped — its database query with it — and the answer is 504, which nobody is waiting for but
//! which the access log and the RED metrics record.
//!
//! Handlers see the deadline as the [`Deadline`] extension and pass what is left of it on with
//! [`Deadline::propagate`] when they call another component.

use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::problem::Problem;

/// Milliseconds the caller will still wait for the answer.
pub const REQUEST_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// Longer budgets are cut to this: no request deserves to hold a handler longer.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// When the caller stops waiting; present on requests that carried [`REQUEST_TIMEOUT_HEADER`].
/// Extract it with `Option<Extension<Deadline>>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline(Instant::now() + budget)
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn is_expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The header value for a call made now: the whole milliseconds left, rounded down so the
    /// callee gives up no later than this caller does.
    pub fn header_value(&self) -> HeaderValue {
        let millis = u64::try_from(self.remaining().as_millis()).unwrap_or(u64::MAX);
        HeaderValue::from(millis)
    }

    /// Sets [`REQUEST_TIMEOUT_HEADER`] on an outbound request to what is left.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(REQUEST_TIMEOUT_HEADER, self.header_value());
    }
}

/// The budget a request's headers give, if any: a non-negative whole number of milliseconds, capped
/// at [`MAX_REQUEST_TIMEOUT`]; with several values the smallest. Anything else is ignored (and
/// logged at debug): a malformed hint must never fail the request.
pub fn budget_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(&REQUEST_TIMEOUT_HEADER)
        .iter()
        .filter_map(|value| {
            let parsed = parse_budget(value);
            if parsed.is_none() {
                tracing::debug!(value = ?value, "ignoring an invalid {REQUEST_TIMEOUT_HEADER}");
            }
            parsed
        })
        .min()
}

fn parse_budget(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, so parsing fails only on overflow: a budget far over the cap.
    let millis = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_millis(millis).min(MAX_REQUEST_TIMEOUT))
}

/// Middleware: runs the rest of the request under the caller's deadline, if it gave one. A request
/// without one goes straight through.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnforceLayer;

impl<S> tower::Layer<S> for EnforceLayer {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Enforce<S> {
        Enforce { inner }
    }
}

/// See [`EnforceLayer`].
#[derive(Debug, Clone)]
pub struct Enforce<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Enforce<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let Some(budget) = budget_of(request.headers()) else {
            return Either::Left(self.inner.call(request));
        };
        // A cheap clone (shared); the label is only built if the deadline passes.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let route = move || {
            route
                .as_ref()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned()
        };
        if budget.is_zero() {
            // The inner service was made ready but is not called: nothing was reserved by that.
            let answer = exceeded(route(), budget);
            return Either::Right(Box::pin(std::future::ready(Ok(answer))));
        }
        let deadline = Deadline::after(budget);
        request.extensions_mut().insert(deadline);
        let answer = self.inner.call(request);
        Either::Right(Box::pin(async move {
            match tokio::time::timeout_at(deadline.0, answer).await {
                Ok(result) => result,
                // The handler's future has been dropped here: its work stops at its next await
                // point.
                Err(_) => Ok(exceeded(route(), budget)),
            }
        }))
    }
}

fn exceeded(route: String, budget: Duration) -> Response {
    let budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        budget_ms,
        route = %route,
        "the caller's deadline passed; the request was abandoned"
    );
    metrics::counter!("http_deadline_exceeded_total", "route" => route).increment(1);
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline-exceeded",
        format!(
            "the caller's deadline passed ({budget_ms} ms after the request arrived); \
             the work was abandoned"
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::routing::get;
    use axum::{Extension, Router};
    use http::header;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::server::{HttpConfig, always_ready, with_standard_layers};

    /// The standard stack over `/slow` (two seconds of work, then `finished` is set) and
    /// `/deadline` (answers with the milliseconds it has left after 300 ms of work, or `none`).
    struct App {
        router: Router,
        finished: Arc<AtomicBool>,
        started: Arc<AtomicUsize>,
    }

    fn app() -> App {
        let finished = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (done, runs) = (finished.clone(), started.clone());
        let api = Router::new()
            .route(
                "/slow",
                get(move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    done.store(true, Ordering::SeqCst);
                    "finished"
                }),
            )
            .route(
                "/deadline",
                get(|deadline: Option<Extension<Deadline>>| async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    deadline.map_or("none".to_owned(), |Extension(d)| {
                        d.remaining().as_millis().to_string()
                    })
                }),
            );
        let draining = Arc::new(AtomicBool::new(false));
        let router = with_standard_layers(api, always_ready(), draining, &HttpConfig::default());
        App {
            router,
            finished,
            started,
        }
    }

    fn get_with(path: &str, budget: Option<&[u8]>) -> Request {
        let mut request = Request::get(path).body(Body::empty()).expect("request");
        if let Some(value) = budget {
            let value = HeaderValue::from_bytes(value).expect("header value");
            request.headers_mut().insert(REQUEST_TIMEOUT_HEADER, value);
        }
        request
    }

    async fn send(router: &Router, request: Request) -> (StatusCode, HeaderMap, String) {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        (parts.status, parts.headers, body)
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_outliving_the_callers_budget_is_cancelled_and_answered_504() {
        let app = app();
        let started = Instant::now();
        let (status, headers, body) = send(&app.router, get_with("/slow", Some(b"100"))).await;

        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let problem: Problem = serde_json::from_str(&body).expect("problem json");
        assert_eq!(problem.kind, "/problems/deadline-exceeded");
        assert!(problem.detail.contains("100 ms"), "{}", problem.detail);
        // The handler started, and never finished: not even once its sleep would have ended.
        assert_eq!(app.started.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!app.finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_within_budget_answers_and_sees_what_is_left() {
        let app = app();
        let (status, _, body) = send(&app.router, get_with("/slow", Some(b"2500"))).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "finished"));

        let (status, _, body) = send(&app.router, get_with("/deadline", Some(b"1000"))).await;
        assert_eq!(status, StatusCode::OK);
        let left: u64 = body.parse().expect("milliseconds");
        assert!((699..=700).contains(&left), "{left}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_header_there_is_no_limit() {
        let app = app();
        let (status, _, body) = send(&app.router, get_with("/slow", None)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "finished"));
        let (_, _, body) = send(&app.router, get_with("/deadline", None)).await;
        assert_eq!(body, "none");
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_header_is_ignored() {
        let app = app();
        for bad in [
            &b"abc"[..],
            b"-5",
            b"+5",
            b"1.5",
            b"",
            b"10 ms",
            b"0x10",
            "\u{661}\u{662}".as_bytes(),
        ] {
            let (status, _, body) = send(&app.router, get_with("/slow", Some(bad))).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "finished"),
                "{bad:?}"
            );
            let (_, _, body) = send(&app.router, get_with("/deadline", Some(bad))).await;
            assert_eq!(body, "none", "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_already_spent_is_answered_504_without_running_the_handler() {
        let app = app();
        let (status, _, body) = send(&app.router, get_with("/slow", Some(b"0"))).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        let problem: Problem = serde_json::from_str(&body).expect("problem json");
        assert_eq!(problem.kind, "/problems/deadline-exceeded");
        assert_eq!(app.started.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_budgets_are_capped_at_five_minutes() {
        let app = app();
        for huge in [&b"600000"[..], b"99999999999999999999999999"] {
            let (_, _, body) = send(&app.router, get_with("/deadline", Some(huge))).await;
            let left: u64 = body.parse().expect("milliseconds");
            assert!((299_699..=299_700).contains(&left), "{left}");
        }
    }

    #[test]
    fn the_smallest_of_several_budgets_wins() {
        let mut headers = HeaderMap::new();
        for value in ["500", "junk", "200"] {
            headers.append(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static(value));
        }
        assert_eq!(budget_of(&headers), Some(Duration::from_millis(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_left_is_passed_on_rounded_down() {
        let deadline = Deadline::after(Duration::from_micros(1_500_900));
        let mut headers = HeaderMap::new();
        deadline.propagate(&mut headers);
        assert_eq!(headers[&REQUEST_TIMEOUT_HEADER], "1500");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(deadline.is_expired());
        deadline.propagate(&mut headers);
        assert_eq!(headers[&REQUEST_TIMEOUT_HEADER], "0");
    }

    #[test]
    fn abandoned_requests_are_counted_by_route_and_logged_as_504s() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let app = app();
                for budget in [&b"100"[..], b"0", b"5000"] {
                    send(&app.router, get_with("/slow", Some(budget))).await;
                }
            });
        });
        let text = handle.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(r#"http_deadline_exceeded_total{route="/slow"} 2"#),
            "{text}"
        );
        // The RED metrics around it saw the 504s as answers of the route.
        assert!(
            has(r#"http_requests_total{method="GET",route="/slow",status="504"} 2"#),
            "{text}"
        );
    }
}
