//! The balancer alone, over a `tower_test` mock inner service and paused time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use discovery::client::Instance;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::breaker::Outcome;

type Attempt = (Arc<Instance>, Exchange);
type Inner =
    tower::util::MapErr<mock::Mock<Attempt, Response<Body>>, fn(BoxError) -> UpstreamError>;
type Handle = mock::Handle<Attempt, Response<Body>>;

/// The mock's errors come back boxed; the balancer's inner speaks `UpstreamError`.
fn to_upstream(error: BoxError) -> UpstreamError {
    match error.downcast::<UpstreamError>() {
        Ok(error) => *error,
        Err(other) => UpstreamError::Failed {
            instance: String::new(),
            reason: other.to_string(),
        },
    }
}

fn instance(id: &str) -> Instance {
    Instance {
        id: id.into(),
        address: "127.0.0.1".into(),
        port: 9000 + id.bytes().map(u16::from).sum::<u16>(),
        ..Instance::default()
    }
}

fn instances(ids: &[&str]) -> Vec<Instance> {
    ids.iter().map(|id| instance(id)).collect()
}

fn exchange(tried: &[&str]) -> Exchange {
    Exchange {
        service: "books".into(),
        method: Method::GET,
        uri: "/api/books".parse().expect("uri"),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        peer: None,
        deadline: Instant::now() + Duration::from_secs(10),
        attempt_timeout: None,
        tried: tried.iter().map(|s| s.to_string()).collect(),
    }
}

fn answer(status: u16) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
}

fn balancer(ids: &[&str]) -> (Balance<Inner>, Handle, watch::Sender<Vec<Instance>>) {
    let (mock, handle) = mock::pair();
    let inner: Inner = mock.map_err(to_upstream as fn(BoxError) -> UpstreamError);
    let (tx, rx) = watch::channel(instances(ids));
    let balance = Balance::new(inner, vec![("books".into(), rx)], BreakerConfig::default());
    (balance, handle, tx)
}

fn set<S>(balance: &Balance<S>) -> &EndpointSet {
    balance.endpoints("books").expect("books is balanced")
}

fn status<S>(balance: &Balance<S>, id: &str) -> InstanceStatus {
    balance.snapshot()[0]
        .instances
        .iter()
        .find(|i| i.id == id)
        .cloned()
        .expect("instance in the snapshot")
}

fn excluding(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Opens `id`'s breaker with five failures, excluding every other instance to reach it.
fn eject<S>(balance: &Balance<S>, id: &str, others: &[&str]) {
    for _ in 0..5 {
        let lease = set(balance).pick(&excluding(others)).expect("a pick");
        assert_eq!(lease.instance().id, id);
        lease.record(Some(Outcome::Failure("5xx")));
    }
    assert_eq!(status(balance, id).state, BreakerState::Open);
}

/// Answers every attempt: 503 from `bad`, 200 from the others.
fn answer_by_instance(mut handle: Handle, bad: &'static str) {
    tokio::spawn(async move {
        while let Some(((instance, _), send)) = handle.next_request().await {
            send.send_response(answer(if instance.id == bad { 503 } else { 200 }));
        }
    });
}

async fn send(
    balance: &mut Balance<Inner>,
    tried: &[&str],
) -> Result<Response<Body>, UpstreamError> {
    balance.ready().await?.call(exchange(tried)).await
}

fn served_by(response: &Response<Body>) -> &str {
    &response
        .extensions()
        .get::<ServedBy>()
        .expect("ServedBy is set")
        .0
}

#[tokio::test(start_paused = true)]
async fn failures_seen_through_the_balancer_eject_that_instance_and_only_it() {
    let (mut balance, handle, _tx) = balancer(&["a", "b", "c"]);
    answer_by_instance(handle, "b");
    let mut served_by_b_after_it_opened = 0;
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let open_before = status(&balance, "b").state == BreakerState::Open;
        let response = send(&mut balance, &[]).await.expect("an answer");
        let by = served_by(&response).to_owned();
        if open_before && by == "b" {
            served_by_b_after_it_opened += 1;
        }
        seen.insert(by);
    }
    assert!(seen.contains("b"), "b was tried before it was ejected");
    assert_eq!(status(&balance, "b").state, BreakerState::Open);
    assert_eq!(status(&balance, "b").ejections, 1);
    assert_eq!(served_by_b_after_it_opened, 0);
    for healthy in ["a", "c"] {
        assert_eq!(status(&balance, healthy).state, BreakerState::Closed);
        assert_eq!(status(&balance, healthy).error_rate, 0.0);
    }
}

#[tokio::test(start_paused = true)]
async fn answers_and_errors_name_the_instance_that_gave_them() {
    let (mut balance, mut handle, _tx) = balancer(&["a"]);
    let pending = tokio::spawn(async move { send(&mut balance, &[]).await });
    let ((to, _), reply) = handle.next_request().await.expect("an attempt");
    reply.send_response(answer(200));
    let response = pending.await.expect("joined").expect("an answer");
    assert_eq!(to.id, "a");
    assert_eq!(served_by(&response), "a");

    let (mut balance, mut handle, _tx) = balancer(&["a"]);
    let pending = tokio::spawn(async move { send(&mut balance, &[]).await });
    let (_, reply) = handle.next_request().await.expect("an attempt");
    reply.send_error(UpstreamError::Timeout {
        instance: "a".into(),
    });
    let error = pending.await.expect("joined").expect_err("an error");
    assert_eq!(
        error,
        UpstreamError::Timeout {
            instance: "a".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_until_the_answer_the_error_or_the_cancellation() {
    let (mut balance, mut handle, _tx) = balancer(&["a"]);

    let answered = balance.ready().await.expect("ready").call(exchange(&[]));
    assert_eq!(status(&balance, "a").in_flight, 1);
    let (_, reply) = handle.next_request().await.expect("an attempt");
    reply.send_response(answer(200));
    answered.await.expect("an answer");
    assert_eq!(status(&balance, "a").in_flight, 0);

    let failed = balance.ready().await.expect("ready").call(exchange(&[]));
    assert_eq!(status(&balance, "a").in_flight, 1);
    let (_, reply) = handle.next_request().await.expect("an attempt");
    reply.send_error(UpstreamError::Connect {
        instance: "a".into(),
    });
    failed.await.expect_err("an error");
    assert_eq!(status(&balance, "a").in_flight, 0);

    let cancelled = balance.ready().await.expect("ready").call(exchange(&[]));
    assert_eq!(status(&balance, "a").in_flight, 1);
    drop(cancelled);
    assert_eq!(status(&balance, "a").in_flight, 0);
    // The answer and the error were recorded; the cancelled request was not.
    assert_eq!(status(&balance, "a").recent_calls, 2);
    assert_eq!(status(&balance, "a").error_rate, 0.5);
}

#[tokio::test(start_paused = true)]
async fn the_instance_with_fewer_requests_in_flight_wins() {
    let (balance, _handle, _tx) = balancer(&["a", "b"]);
    let on_a: Vec<Lease> = (0..3)
        .map(|_| set(&balance).pick(&excluding(&["b"])).expect("a pick"))
        .collect();
    assert!(on_a.iter().all(|l| l.instance().id == "a"));
    for _ in 0..100 {
        assert_eq!(set(&balance).pick(&[]).expect("a pick").instance().id, "b");
    }
    // b has 0, 1, then 2 in flight against a's 3: it wins every time.
    let on_b: Vec<Lease> = (0..3)
        .map(|_| set(&balance).pick(&[]).expect("a pick"))
        .collect();
    assert!(on_b.iter().all(|l| l.instance().id == "b"));
    assert_eq!(status(&balance, "a").in_flight, 3);
    assert_eq!(status(&balance, "b").in_flight, 3);
    drop((on_a, on_b));
    assert_eq!(status(&balance, "a").in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn the_busiest_instance_is_never_picked_while_others_are_less_loaded() {
    let (balance, _handle, _tx) = balancer(&["a", "b", "c"]);
    let _held: Vec<Lease> = (0..10)
        .map(|_| set(&balance).pick(&excluding(&["b", "c"])).expect("a pick"))
        .collect();
    let picked: BTreeSet<String> = (0..300)
        .map(|_| {
            set(&balance)
                .pick(&[])
                .expect("a pick")
                .instance()
                .id
                .clone()
        })
        .collect();
    assert_eq!(picked, BTreeSet::from(["b".to_owned(), "c".to_owned()]));
}

#[tokio::test(start_paused = true)]
async fn instances_already_tried_are_never_picked() {
    let (mut balance, _handle, _tx) = balancer(&["a", "b", "c"]);
    for _ in 0..100 {
        let lease = set(&balance).pick(&excluding(&["a", "b"])).expect("a pick");
        assert_eq!(lease.instance().id, "c");
    }
    assert!(set(&balance).pick(&excluding(&["a", "b", "c"])).is_none());
    let error = send(&mut balance, &["a", "b", "c"])
        .await
        .expect_err("nothing left");
    assert_eq!(
        error,
        UpstreamError::NoInstance {
            service: "books".into()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn panic_mode_routes_to_all_instances_rather_than_to_none() {
    let (balance, _handle, _tx) = balancer(&["a", "b", "c"]);
    // One of three ejected (33 % ≤ 50 %): a is avoided.
    eject(&balance, "a", &["b", "c"]);
    assert!(!balance.snapshot()[0].panic_mode);
    for _ in 0..100 {
        assert_ne!(set(&balance).pick(&[]).expect("a pick").instance().id, "a");
    }
    // Two of three ejected (67 % > 50 %): breakers are ignored, every instance takes traffic.
    eject(&balance, "b", &["a", "c"]);
    assert!(balance.snapshot()[0].panic_mode);
    let picked: BTreeSet<String> = (0..300)
        .map(|_| {
            set(&balance)
                .pick(&[])
                .expect("a pick")
                .instance()
                .id
                .clone()
        })
        .collect();
    assert_eq!(picked.len(), 3, "{picked:?}");
    // Even with the only healthy instance already tried, there is an answer to try.
    for _ in 0..100 {
        let lease = set(&balance).pick(&excluding(&["c"])).expect("never none");
        assert_ne!(lease.instance().id, "c");
    }
}

#[tokio::test(start_paused = true)]
async fn registry_changes_keep_the_breakers_of_instances_that_stay() {
    let (balance, _handle, tx) = balancer(&["a", "b", "d"]);
    eject(&balance, "a", &["b", "d"]);
    let on_b = set(&balance).pick(&excluding(&["a", "d"])).expect("a pick");
    tx.send(instances(&["a", "c", "d"]))
        .expect("receiver alive");
    let snapshot = balance.snapshot();
    let ids: Vec<&str> = snapshot[0]
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(ids, ["a", "c", "d"]);
    assert_eq!(status(&balance, "a").state, BreakerState::Open);
    assert_eq!(status(&balance, "a").ejections, 1);
    assert_eq!(status(&balance, "c").state, BreakerState::Closed);
    // A lease on a removed instance still ends cleanly.
    drop(on_b);
    // An instance that comes back at a new address is a new instance, closed.
    let mut moved = instances(&["a", "c", "d"]);
    moved[0].port += 1;
    tx.send(moved).expect("receiver alive");
    assert_eq!(status(&balance, "a").state, BreakerState::Closed);
    assert_eq!(status(&balance, "a").ejections, 0);
    // The registry going away leaves the last set in service.
    drop(tx);
    let picked: BTreeSet<String> = (0..100)
        .map(|_| {
            set(&balance)
                .pick(&[])
                .expect("a pick")
                .instance()
                .id
                .clone()
        })
        .collect();
    assert_eq!(picked.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_one_probe_through_and_its_success_closes() {
    let (balance, _handle, _tx) = balancer(&["a", "b", "c"]);
    eject(&balance, "a", &["b", "c"]);
    let only_a = excluding(&["b", "c"]);
    assert!(set(&balance).pick(&only_a).is_none(), "a is open");
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let probe = set(&balance).pick(&only_a).expect("a probe");
    assert!(probe.is_probe());
    assert!(set(&balance).pick(&only_a).is_none(), "one probe at a time");
    probe.record(Some(Outcome::Success));
    assert_eq!(status(&balance, "a").state, BreakerState::Closed);
    let next = set(&balance).pick(&only_a).expect("closed again");
    assert!(!next.is_probe());
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_reopens_the_breaker_for_longer() {
    let (mut balance, mut handle, _tx) = balancer(&["a", "b", "c"]);
    eject(&balance, "a", &["b", "c"]);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let probe = balance
        .ready()
        .await
        .expect("ready")
        .call(exchange(&["b", "c"]));
    let (_, reply) = handle.next_request().await.expect("the probe");
    assert_eq!(status(&balance, "a").state, BreakerState::HalfOpen);
    tokio::time::advance(Duration::from_millis(2_000)).await;
    let a = status(&balance, "a");
    assert_eq!(
        (a.state, a.ejections, a.reopens_in_ms),
        (BreakerState::Open, 2, Some(2_000))
    );
    // Its answer, after it was given up on, reaches the client but does not close the breaker.
    reply.send_response(answer(200));
    probe.await.expect("the late answer");
    assert_eq!(status(&balance, "a").state, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_service_without_instances_or_unknown_has_none() {
    let (mut balance, _handle, tx) = balancer(&["a"]);
    tx.send(Vec::new()).expect("receiver alive");
    for service in ["books", "unknown"] {
        let mut request = exchange(&[]);
        request.service = service.into();
        let error = balance
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect_err("no instance");
        assert_eq!(
            error,
            UpstreamError::NoInstance {
                service: service.into()
            }
        );
    }
}

#[tokio::test]
async fn an_attempt_with_no_time_left_is_not_sent() {
    let forward =
        crate::forward::Forward::new(&crate::config::UpstreamConfig::default()).expect("client");
    let mut endpoint = ForwardEndpoint::new(forward, &BalanceConfig::default());
    let mut late = exchange(&[]);
    late.deadline = Instant::now();
    let error = endpoint
        .ready()
        .await
        .expect("ready")
        .call((Arc::new(instance("a")), late))
        .await
        .expect_err("no time");
    assert_eq!(
        error,
        UpstreamError::DeadlineExceeded {
            service: "books".into()
        }
    );
}
