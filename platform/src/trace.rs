//! W3C trace context (`traceparent`) across processes. The server gives every request one (kept
//! when a valid one arrives, see `server`) and runs the request inside its scope; clients that call
//! another component during the request send [`outgoing`] — the same trace id with a new parent id,
//! as the W3C spec asks of each hop — so one checkout's lines in the gateway, orders, coordinator
//! and books logs all carry one `trace_id`. Work spawned for a request (the coordinator's driver)
//! keeps the scope with [`inherit`].

use std::future::Future;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

use crate::server::{TRACEPARENT, trace_id_of};

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// Middleware: runs the rest of the request inside its `traceparent`'s scope.
pub async fn scope(request: Request, next: Next) -> Response {
    match request.headers().get(&TRACEPARENT).cloned() {
        Some(traceparent) => CURRENT.scope(traceparent, next.run(request)).await,
        None => next.run(request).await,
    }
}

/// The `traceparent` of the request being served by this task, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(Clone::clone).ok()
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
    let flags = traceparent.rsplit('-').next()?;
    let parent: u64 = rand::random();
    HeaderValue::try_from(format!("00-{trace_id}-{:016x}-{flags}", parent.max(1))).ok()
}

/// `future` inside the current request's trace scope (none outside a request), for work spawned
/// on the request's behalf.
pub fn inherit<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let current = current();
    async move {
        match current {
            Some(traceparent) => CURRENT.scope(traceparent, future).await,
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
    }

    #[tokio::test]
    async fn spawned_work_inherits_the_scope_and_nothing_leaks_outside_it() {
        assert_eq!(outgoing(), None);
        let value = HeaderValue::from_static(PARENT);
        let inner = CURRENT
            .scope(value, async {
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
