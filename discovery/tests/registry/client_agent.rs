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
