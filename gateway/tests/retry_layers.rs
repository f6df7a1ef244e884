//! The resilience layers assembled as the gateway stacks them — ServiceBreaker → Deadline → Retry →
//! balancer — over a scripted balancer, with paused time.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use gateway::budget::{BudgetConfig, RetryBudgets};
use gateway::deadline::Deadline;
use gateway::exchange::{Exchange, UpstreamError};
use gateway::retry::{Retry, RetryConfig, ServedBy};
use gateway::service_breaker::{
    ServiceBreaker, ServiceBreakerConfig, ServiceBreakerState, ServiceBreakers,
};
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// How a fake instance behaves.
#[derive(Clone, Copy)]
enum Behaviour {
    Up,
    /// Refuses connections.
    Down,
    /// Times out after this long.
    Slow(Duration),
}

/// One attempt: the instance, when, and the time it had left (which forward stamps on the request).
type Attempt = (String, Instant, Duration);

/// A stand-in for the balancer: the first instance not yet tried, or `NoInstance`. Records every
/// attempt (instance, time, the time it had left).
#[derive(Clone)]
struct FakeBalancer {
    instances: Arc<Mutex<Vec<(String, Behaviour)>>>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl FakeBalancer {
    fn new(behaviour: Behaviour) -> FakeBalancer {
        let instances = (1..=3).map(|n| (format!("books-{n}"), behaviour)).collect();
        FakeBalancer {
            instances: Arc::new(Mutex::new(instances)),
            attempts: Arc::default(),
        }
    }

    fn set_all(&self, behaviour: Behaviour) {
        for instance in self.instances.lock().expect("lock").iter_mut() {
            instance.1 = behaviour;
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().expect("lock").clone()
    }
}

impl Service<Exchange> for FakeBalancer {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let pick = self
            .instances
            .lock()
            .expect("lock")
            .iter()
            .find(|(id, _)| !exchange.tried.contains(id))
            .cloned();
        let Some((instance, behaviour)) = pick else {
            let service = exchange.service;
            return Box::pin(async move { Err(UpstreamError::NoInstance { service }) });
        };
        self.attempts.lock().expect("lock").push((
            instance.clone(),
            Instant::now(),
            exchange.remaining(),
        ));
        Box::pin(async move {
            match behaviour {
                Behaviour::Up => {
                    let mut response = Response::new(Body::empty());
                    response.extensions_mut().insert(ServedBy(instance));
                    Ok(response)
                }
                Behaviour::Down => Err(UpstreamError::Connect { instance }),
                Behaviour::Slow(after) => {
                    tokio::time::sleep(after).await;
                    Err(UpstreamError::Timeout { instance })
                }
            }
        })
    }
}

type Stack = ServiceBreaker<Deadline<Retry<FakeBalancer>>>;

/// The stack as the gateway assembles it, with default settings.
fn stack(balancer: FakeBalancer) -> (Stack, ServiceBreakers) {
    let breakers = ServiceBreakers::new(ServiceBreakerConfig::default());
    let budgets = RetryBudgets::new(BudgetConfig::default());
    let stack = tower::ServiceBuilder::new()
        .layer(ServiceBreaker::layer(breakers.clone()))
        .layer(Deadline::layer())
        .layer(Retry::layer(
            RetryConfig::default(),
            budgets,
            breakers.clone(),
        ))
        .service(balancer);
    (stack, breakers)
}

fn request(method: Method, timeout: Duration) -> Exchange {
    Exchange {
        service: "books".into(),
        method,
        uri: "/api/books".parse().expect("static uri"),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        peer: None,
        deadline: Instant::now() + timeout,
        attempt_timeout: None,
        tried: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_instance_is_down_the_service_breaker_trips_and_upstream_attempts_stop() {
    let balancer = FakeBalancer::new(Behaviour::Down);
    let (mut stack, breakers) = stack(balancer.clone());
    let mut results = Vec::new();
    for _ in 0..20 {
        let call = stack
            .ready()
            .await
            .expect("ready")
            .call(request(Method::GET, Duration::from_secs(5)));
        results.push(call.await);
    }
    // Each request tries all three instances (two reroutes); the 11th reroute (during the 6th
    // request) trips the breaker, and every later request fails fast without an attempt.
    assert_eq!(balancer.attempts().len(), 18);
    for result in &results[..6] {
        assert!(matches!(result, Err(UpstreamError::Connect { .. })));
    }
    for result in &results[6..] {
        assert!(matches!(
            result,
            Err(UpstreamError::ServiceOpen { retry_after, .. }) if *retry_after == Duration::from_secs(5)
        ));
    }
    assert_eq!(breakers.state("books"), ServiceBreakerState::Open);

    // The instances come back; after the open time one probe closes the breaker.
    balancer.set_all(Behaviour::Up);
    tokio::time::advance(Duration::from_secs(5)).await;
    let response = stack
        .ready()
        .await
        .expect("ready")
        .call(request(Method::GET, Duration::from_secs(5)))
        .await
        .expect("the probe succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
    assert_eq!(balancer.attempts().len(), 19);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_every_attempt_and_each_attempt_carries_the_time_left() {
    let balancer = FakeBalancer::new(Behaviour::Slow(Duration::from_millis(100)));
    let (stack, _) = stack(balancer.clone());
    let started = Instant::now();
    let result = stack
        .oneshot(request(Method::GET, Duration::from_millis(250)))
        .await;
    assert_eq!(
        result.err(),
        Some(UpstreamError::DeadlineExceeded {
            service: "books".into()
        })
    );
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    let attempts = balancer.attempts();
    // Two timeouts (100 ms each, plus backoffs), then a third attempt cut short by the deadline.
    assert_eq!(attempts.len(), 3);
    for (_, at, stamped) in &attempts {
        let left = (started + Duration::from_millis(250)) - *at;
        assert_eq!(*stamped, left);
    }
    let names: Vec<_> = attempts.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(names, ["books-1", "books-2", "books-3"]);
}

#[tokio::test(start_paused = true)]
async fn a_post_without_key_that_timed_out_is_delivered_once() {
    let balancer = FakeBalancer::new(Behaviour::Slow(Duration::from_millis(100)));
    let (stack, breakers) = stack(balancer.clone());
    let result = stack
        .oneshot(request(Method::POST, Duration::from_secs(5)))
        .await;
    assert!(matches!(result, Err(UpstreamError::Timeout { .. })));
    assert_eq!(balancer.attempts().len(), 1);
    assert_eq!(breakers.state("books"), ServiceBreakerState::Closed);
}
