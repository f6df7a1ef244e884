//! A database failover as the gateway sees it, through the whole upstream stack (ServiceBreaker →
//! Deadline → Retry → Balance, default settings, paused time): two instances of one service share
//! a database whose primary is gone, so both answer writes with a deliberate 503 + `Retry-After`
//! while their reads, served from replicas, succeed. Neither instance is ejected, the service
//! breaker stays closed, nothing is rerouted, and every read is served. The same failover answered
//! with bare 503s (no `Retry-After`: the instances' own failures) takes the reads down with it,
//! which shows what the classification is for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use discovery::client::Instance;
use gateway::balance::{Balance, UpstreamStatus};
use gateway::breaker::{BreakerConfig, BreakerState};
use gateway::budget::{BudgetConfig, RetryBudgets};
use gateway::deadline::Deadline;
use gateway::exchange::{Exchange, IDEMPOTENCY_KEY, UpstreamError};
use gateway::retry::{Retry, RetryConfig};
use gateway::service_breaker::{
    ServiceBreaker, ServiceBreakerConfig, ServiceBreakerState, ServiceBreakers,
};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// How the instances answer a write while the primary is gone.
#[derive(Clone, Copy)]
enum WriteAnswer {
    /// 503 + `Retry-After: 1`, as `platform::ApiError::Unavailable` answers.
    Deliberate,
    /// 503 alone.
    Bare,
}

/// Both instances: reads 200 (a replica answers them), writes 503 (no primary).
fn instances_during_failover(
    writes: WriteAnswer,
) -> BoxCloneSyncService<(Arc<Instance>, Exchange), Response<Body>, UpstreamError> {
    BoxCloneSyncService::new(tower::service_fn(
        move |(_, exchange): (Arc<Instance>, Exchange)| async move {
            let mut response = Response::new(Body::empty());
            if exchange.method != Method::GET {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                if let WriteAnswer::Deliberate = writes {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
            }
            Ok::<_, UpstreamError>(response)
        },
    ))
}

fn instance(id: &str, port: u16) -> Instance {
    Instance {
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
        ..Instance::default()
    }
}

fn request(method: Method, n: usize) -> Exchange {
    let mut headers = HeaderMap::new();
    // Writes carry a key (like top-ups), so they would be safe to reroute.
    if method == Method::POST {
        headers.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(&format!("top-up-{n}")).expect("ascii"),
        );
    }
    Exchange {
        service: "orders".into(),
        method,
        uri: "/api/customers/c/credit".parse().expect("static uri"),
        headers,
        body: Bytes::new(),
        peer: None,
        deadline: Instant::now() + Duration::from_secs(5),
        attempt_timeout: None,
        tried: Vec::new(),
    }
}

/// What the clients and the gateway's state showed after the traffic.
struct Outcome {
    reads_ok: usize,
    reads_failed: usize,
    writes_with_retry_after: usize,
    attempts: usize,
    instances: UpstreamStatus,
    service_breaker: ServiceBreakerState,
    budget_exhausted: u64,
}

/// 200 requests, a write and a read in turn, 50 ms apart, through the stack as `gateway::stack`
/// assembles it, with default settings.
async fn failover(writes: WriteAnswer) -> Outcome {
    let (_registry, passing) =
        watch::channel(vec![instance("orders-1", 9001), instance("orders-2", 9002)]);
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    let inner = instances_during_failover(writes).map_request(move |attempt| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        attempt
    });
    let balance = Balance::new(
        inner,
        vec![("orders".into(), passing)],
        BreakerConfig::default(),
    );
    let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
    let budgets = RetryBudgets::new(BudgetConfig::default());
    let stack = ServiceBuilder::new()
        .layer(ServiceBreaker::layer(breakers.clone()))
        .layer(Deadline::layer())
        .layer(Retry::layer(
            RetryConfig::default(),
            budgets.clone(),
            breakers.clone(),
        ))
        .service(balance.clone());
    let (mut reads_ok, mut reads_failed, mut writes_with_retry_after) = (0, 0, 0);
    for n in 0..200 {
        let method = if n % 2 == 0 {
            Method::POST
        } else {
            Method::GET
        };
        let result = stack.clone().oneshot(request(method.clone(), n)).await;
        match (method, result) {
            (Method::GET, Ok(response)) if response.status() == StatusCode::OK => reads_ok += 1,
            (Method::GET, _) => reads_failed += 1,
            (_, Ok(response)) if response.headers().contains_key(RETRY_AFTER) => {
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                writes_with_retry_after += 1;
            }
            _ => {}
        }
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    Outcome {
        reads_ok,
        reads_failed,
        writes_with_retry_after,
        attempts: attempts.load(std::sync::atomic::Ordering::SeqCst),
        instances: balance.snapshot().remove(0),
        service_breaker: breakers.state("orders"),
        budget_exhausted: budgets.for_service("orders").exhausted_total(),
    }
}

#[tokio::test(start_paused = true)]
async fn deliberate_503s_from_every_instance_eject_none_and_every_read_is_served() {
    let seen = failover(WriteAnswer::Deliberate).await;
    assert_eq!((seen.reads_ok, seen.reads_failed), (100, 0));
    // Every write reached the client as the service answered it, Retry-After included…
    assert_eq!(seen.writes_with_retry_after, 100);
    // …after exactly one attempt each: nothing rerouted, no budget spent.
    assert_eq!(seen.attempts, 200);
    assert_eq!(seen.budget_exhausted, 0);
    assert_eq!(seen.service_breaker, ServiceBreakerState::Closed);
    assert!(!seen.instances.panic_mode);
    for instance in &seen.instances.instances {
        assert_eq!(instance.state, BreakerState::Closed, "{}", instance.id);
        assert_eq!(instance.ejections, 0, "{}", instance.id);
        assert_eq!(instance.error_rate, 0.0, "{}", instance.id);
    }
}

#[tokio::test(start_paused = true)]
async fn bare_503s_count_against_the_instances_and_take_the_reads_down_too() {
    let seen = failover(WriteAnswer::Bare).await;
    // Keyed writes are rerouted to the other instance (which fails the same way), the reroutes
    // trip the service breaker, and then reads are refused with the writes.
    assert_eq!(seen.service_breaker, ServiceBreakerState::Open);
    assert!(seen.reads_failed > 0, "{} reads failed", seen.reads_failed);
    assert!(
        seen.instances.instances.iter().any(|i| i.ejections > 0),
        "{:?}",
        seen.instances.instances
    );
}
