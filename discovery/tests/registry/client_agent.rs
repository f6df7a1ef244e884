//! The client agent against a real registry on a free port.

use std::time::Duration;

use discovery::client::{Registration, RegistryConfig, healthy_once, spawn_agent};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestRegistry, eventually, unused_addr};

pub fn fast_config(url: String) -> RegistryConfig {
    RegistryConfig {
        url,
        ttl_seconds: 1,
        heartbeat_ms: 200,
        deregister_critical_after_seconds: 60,
        ..RegistryConfig::default()
    }
}

pub fn books(id: &str, port: u16) -> Registration {
    Registration {
        name: "books".into(),
        id: id.into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["v1".into()],
        meta: [("version".to_owned(), "1.2.3".to_owned())].into(),
        ready_url: None,
    }
}

async fn healthy_ids(config: &RegistryConfig) -> Vec<String> {
    healthy_once(config, "books")
        .await
        .map(|set| set.into_iter().map(|i| i.id).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_agent_registers_and_its_heartbeats_keep_it_passing_past_the_ttl() {
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let shutdown = CancellationToken::new();
    let agent = spawn_agent(config.clone(), books("books-1", 8081), shutdown.clone());

    eventually(
        "the instance to be healthy",
        Duration::from_secs(5),
        || async { healthy_ids(&config).await == ["books-1"] },
    )
    .await;
    let found = healthy_once(&config, "books")
        .await
        .expect("the registry answers");
    assert_eq!(found[0].base_url(), "http://127.0.0.1:8081");
    assert_eq!(found[0].tags, ["v1"]);
    assert_eq!(
        found[0].meta.get("version").map(String::as_str),
        Some("1.2.3")
    );

    // Three TTLs later it is still passing only because the heartbeats keep passing the check.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(healthy_ids(&config).await, ["books-1"]);

    shutdown.cancel();
    let _ = agent.await;
    registry.stop().await;
}

#[tokio::test]
async fn a_restarted_registry_gets_the_instance_back_within_a_few_heartbeats() {
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let shutdown = CancellationToken::new();
    let agent = spawn_agent(config.clone(), books("books-1", 8081), shutdown.clone());
    eventually("the first registration", Duration::from_secs(5), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;

    let registry = registry.restart().await;
    // The fresh registry starts empty, so only a new registration can bring the instance back.
    // A few heartbeats of 200 ms: the next pass gets a 404 and the agent registers again.
    eventually("the re-registration", Duration::from_secs(2), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;

    shutdown.cancel();
    let _ = agent.await;
    registry.stop().await;
}

#[tokio::test]
async fn shutting_the_agent_down_deregisters_the_instance() {
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let shutdown = CancellationToken::new();
    let agent = spawn_agent(config.clone(), books("books-1", 8081), shutdown.clone());
    eventually("the registration", Duration::from_secs(5), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), agent)
        .await
        .expect("the agent ends promptly")
        .expect("no panic");
    // Gone from the catalog at once, not merely critical after its TTL.
    assert_eq!(
        registry.get("/v1/catalog/service/books").await,
        serde_json::json!([])
    );
    registry.stop().await;
}

#[tokio::test]
async fn an_agent_keeps_retrying_until_the_registry_comes_up() {
    let addr = unused_addr().await;
    let config = fast_config(format!("http://{addr}"));
    let shutdown = CancellationToken::new();
    let agent = spawn_agent(config.clone(), books("books-1", 8081), shutdown.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !agent.is_finished(),
        "an unreachable registry does not end the agent"
    );

    let registry = TestRegistry::start_on(&addr.to_string()).await;
    eventually("the late registration", Duration::from_secs(8), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;

    shutdown.cancel();
    let _ = agent.await;
    registry.stop().await;
}

#[tokio::test]
async fn without_a_registry_url_the_agent_does_nothing_and_ends() {
    let config = RegistryConfig {
        url: String::new(),
        ..RegistryConfig::default()
    };
    let agent = spawn_agent(
        config.clone(),
        books("books-1", 8081),
        CancellationToken::new(),
    );
    tokio::time::timeout(Duration::from_secs(1), agent)
        .await
        .expect("ends at once")
        .expect("no panic");
    assert!(healthy_once(&config, "books").await.is_err());
}

/// An instance whose readiness endpoint answers whatever status the test sets.
async fn readiness(status: std::sync::Arc<std::sync::atomic::AtomicU16>) -> String {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/health/ready",
        get(move || {
            let status = status.clone();
            async move {
                http::StatusCode::from_u16(status.load(std::sync::atomic::Ordering::SeqCst))
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/health/ready")
}

#[tokio::test]
async fn an_instance_that_is_not_ready_is_reported_critical_until_it_is_ready_again() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let status = std::sync::Arc::new(AtomicU16::new(200));
    let mut registration = books("books-1", 8081);
    registration.ready_url = Some(readiness(status.clone()).await);
    let shutdown = CancellationToken::new();
    let agent = spawn_agent(config.clone(), registration, shutdown.clone());
    eventually("ready: healthy", Duration::from_secs(5), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;

    // Not ready (its database is gone, say): out of the healthy set although the process lives,
    // and the reason is the check's output.
    status.store(503, Ordering::SeqCst);
    eventually("not ready: critical", Duration::from_secs(5), || async {
        healthy_ids(&config).await.is_empty()
    })
    .await;
    let health = registry.get("/v1/health/service/books").await;
    assert_eq!(health[0]["Checks"][0]["Status"], "critical");
    let output = health[0]["Checks"][0]["Output"]
        .as_str()
        .unwrap_or_default();
    assert!(output.contains("503"), "{output}");

    status.store(200, Ordering::SeqCst);
    eventually("ready again: healthy", Duration::from_secs(5), || async {
        healthy_ids(&config).await == ["books-1"]
    })
    .await;
    shutdown.cancel();
    let _ = agent.await;
    registry.stop().await;
}
