//! HTTP checks and the reaper, run by the real registry's check loop against a real service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::helpers::{TestRegistry, eventually};

/// A service whose health endpoint answers whatever status the test sets.
async fn fake_service(status: Arc<AtomicU16>) -> String {
    let app = Router::new().route(
        "/health",
        get(move || {
            let status = status.clone();
            async move {
                StatusCode::from_u16(status.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/health")
}

async fn check_status(registry: &TestRegistry) -> String {
    let health = registry.get("/v1/health/service/books").await;
    health[0]["Checks"][0]["Status"]
        .as_str()
        .unwrap_or("absent")
        .to_owned()
}

#[tokio::test]
async fn http_checks_follow_the_status_the_service_answers() {
    let registry = TestRegistry::start().await;
    let status = Arc::new(AtomicU16::new(200));
    let url = fake_service(status.clone()).await;
    let body = json!({"ID": "books-1", "Name": "books", "Port": 1,
                      "Check": {"HTTP": url, "Interval": "100ms", "Timeout": "1s"}});
    assert_eq!(
        registry.put("/v1/agent/service/register", body).await,
        StatusCode::OK
    );

    for (answer, expected) in [
        (200, "passing"),
        (503, "critical"),
        (429, "warning"),
        (204, "passing"),
    ] {
        status.store(answer, Ordering::SeqCst);
        eventually(
            &format!("{answer} to make the check {expected}"),
            Duration::from_secs(5),
            || async { check_status(&registry).await == expected },
        )
        .await;
    }
    registry.stop().await;
}

#[tokio::test]
async fn an_unreachable_http_check_is_critical() {
    let registry = TestRegistry::start().await;
    let addr = crate::helpers::unused_addr().await;
    let body = json!({"ID": "books-1", "Name": "books", "Port": 1,
                      "Check": {"HTTP": format!("http://{addr}/health"), "Interval": "100ms", "Status": "passing"}});
    assert_eq!(
        registry.put("/v1/agent/service/register", body).await,
        StatusCode::OK
    );
    eventually("the check to fail", Duration::from_secs(5), || async {
        check_status(&registry).await == "critical"
    })
    .await;
    registry.stop().await;
}

#[tokio::test]
async fn a_silent_instance_turns_critical_then_is_reaped() {
    let registry = TestRegistry::start().await;
    let body = json!({"ID": "books-1", "Name": "books", "Port": 1,
                      "Check": {"TTL": "300ms", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}});
    assert_eq!(
        registry.put("/v1/agent/service/register", body).await,
        StatusCode::OK
    );
    eventually("the TTL to expire", Duration::from_secs(3), || async {
        check_status(&registry).await == "critical"
    })
    .await;
    eventually("the reaper", Duration::from_secs(4), || async {
        check_status(&registry).await == "absent"
    })
    .await;
    assert_eq!(registry.get("/v1/catalog/services").await, json!({}));
    registry.stop().await;
}
