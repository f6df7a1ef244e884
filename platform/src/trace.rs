//! W3C trace context (`traceparent`) across processes. The server gives every request one (kept
//! when a valid one arrives, see `server`) and runs the request inside its [`Scope`]; clients that
//! call another component during the request send [`outgoing`] — the same trace id with a new parent
//! id, as the W3C spec asks of each hop — so one checkout's lines in the gateway, orders,
//! coordinator and books logs all carry one `trace_id`. Work spawned for a request (the
//! coordinator's driver) keeps the scope with [`inherit`].
//!
//! The scope is also what every log line written during the request shows as its `span` (method,
//! path, request id, trace id; see `telemetry`): a task-local set once per request, where a
//! `tracing` span would be created, entered on every poll and closed — a measured fifth of the
//! gateway's CPU per request went to its request span and access line.

use std::future::Future;
use std::task::{Context, Poll};

use axum::extract::Request;
use http::{HeaderValue, Method, Uri};
use tokio::task::futures::TaskLocalFuture;

use crate::server::{REQUEST_ID, TRACEPARENT, trace_id_of};

tokio::task_local! {
    static CURRENT: Scope;
}

/// What a request's log lines and outgoing calls need to know about it. Cheap to clone: the
/// values share the request's buffers.
#[derive(Clone, Debug)]
pub struct Scope {
    traceparent: HeaderValue,
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
}

impl Scope {
    /// The request's scope, if it carries a `traceparent` (the server gives every request one).
    fn of(request: &Request) -> Option<Scope> {
        Some(Scope {
            traceparent: request.headers().get(&TRACEPARENT)?.clone(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_id: request.headers().get(&REQUEST_ID).cloned(),
        })
    }

    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The `x-request-id`, or "" when it is missing or not text.
    pub fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The trace id, or "" when the `traceparent` is malformed.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(trace_id_of)
            .unwrap_or("")
    }
}

/// Layer: runs the rest of each request inside its [`Scope`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ScopeLayer;

impl<S> tower::Layer<S> for ScopeLayer {
    type Service = InScope<S>;

    fn layer(&self, inner: S) -> InScope<S> {
        InScope { inner }
    }
}

/// See [`ScopeLayer`].
#[derive(Clone, Debug)]
pub struct InScope<S> {
    inner: S,
}

impl<S> tower::Service<Request> for InScope<S>
where
    S: tower::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<TaskLocalFuture<Scope, S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use futures_util::future::Either;
        match Scope::of(&request) {
            Some(scope) => Either::Left(CURRENT.scope(scope, self.inner.call(request))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

/// `f` of the scope of the request being served by this task; `None` outside a request.
pub fn with_current<R>(f: impl FnOnce(&Scope) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// The `traceparent` of the request being served by this task, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(|scope| scope.traceparent.clone()).ok()
}

/// The trace id of the request being served by this task, if any.
pub fn current_trace_id() -> Option<String> {
    let current = current()?;
    trace_id_of(current.to_str().ok()?).map(str::to_owned)
}

/// The `traceparent` to send on a call made while serving a request: its trace id and flags, a
/// new parent id. `None` outside a request.
pub fn outgoing() -> Option<HeaderValue> {
    child_of(current()?.to_str().ok()?)
}

/// `traceparent` continued by one hop: same version, trace id and flags, a new parent id — the
/// current span's when spans are exported (so the collector links the next hop under it), else a
/// fresh random one.
pub fn child_of(traceparent: &str) -> Option<HeaderValue> {
    let trace_id = trace_id_of(traceparent)?;
    if let Some(exported) = crate::otlp::traceparent_from_current_span(trace_id) {
        return Some(exported);
    }
    // `trace_id_of` checked the layout: 32 hex digits of trace id, 2 of flags at the end.
    let trace_id: &[u8; 32] = trace_id.as_bytes().try_into().ok()?;
    let flags: &[u8; 2] = traceparent.as_bytes().get(53..)?.try_into().ok()?;
    crate::server::traceparent(trace_id, rand::random(), flags)
}

/// `future` inside the current request's scope (none outside a request), for work spawned on the
/// request's behalf: its log lines carry the request's `span`, its calls the trace.
pub fn inherit<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let current = CURRENT.try_with(Clone::clone).ok();
    async move {
        match current {
            Some(scope) => CURRENT.scope(scope, future).await,
            None => future.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_id_and_flags_with_a_new_parent_id() {
        let child = child_of(PARENT).expect("a child");
        let child = child.to_str().expect("ascii");
        assert_eq!(trace_id_of(child), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(child.ends_with("-01"), "{child}");
        assert_ne!(child, PARENT);
        assert_eq!(child_of("not a traceparent"), None);
        let unsampled = PARENT.replace("-01", "-00");
        let child = child_of(&unsampled).expect("a child");
        let child = child.to_str().expect("ascii");
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-00"), "the flags are kept: {child}");
        let parent_id = &child[36..52];
        assert!(
            parent_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{child}"
        );
    }

    #[tokio::test]
    async fn spawned_work_inherits_the_scope_and_nothing_leaks_outside_it() {
        assert_eq!(outgoing(), None);
        let request = Request::builder()
            .uri("/books?page=2")
            .header(TRACEPARENT, PARENT)
            .body(axum::body::Body::empty())
            .expect("a request");
        let scope = Scope::of(&request).expect("a traceparent");
        assert_eq!(
            (scope.method(), scope.path(), scope.request_id()),
            ("GET", "/books", "")
        );
        let inner = CURRENT
            .scope(scope, async {
                tokio::spawn(inherit(async { current_trace_id() }))
                    .await
                    .ok()
                    .flatten()
            })
            .await;
        assert_eq!(inner.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(current_trace_id(), None);
    }
}
