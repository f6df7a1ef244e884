//! `watch_healthy` against a real registry: it follows changes and survives the registry going away.

use std::time::Duration;

use discovery::client::{Instance, spawn_agent, watch_healthy};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client_agent::{books, fast_config};
use crate::helpers::TestRegistry;

async fn until_ids(receiver: &mut watch::Receiver<Vec<Instance>>, expected: &[&str]) {
    let matched = tokio::time::timeout(
        Duration::from_secs(8),
        receiver.wait_for(|set| {
            set.iter()
                .map(|i| i.id.as_str())
                .eq(expected.iter().copied())
        }),
    )
    .await
    .is_ok_and(|seen| seen.is_ok());
    let seen: Vec<String> = receiver.borrow().iter().map(|i| i.id.clone()).collect();
    assert!(matched, "expected {expected:?}, the watch holds {seen:?}");
}

#[tokio::test]
async fn the_watch_sees_instances_come_and_go() {
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let stop_watch = CancellationToken::new();
    let mut healthy = watch_healthy(&config, "books", stop_watch.clone());

    let (first, second) = (CancellationToken::new(), CancellationToken::new());
    let agent_1 = spawn_agent(config.clone(), books("books-1", 8081), first.clone());
    let agent_2 = spawn_agent(config.clone(), books("books-2", 8082), second.clone());
    until_ids(&mut healthy, &["books-1", "books-2"]).await;
    assert_eq!(healthy.borrow()[1].base_url(), "http://127.0.0.1:8082");

    second.cancel();
    let _ = agent_2.await;
    until_ids(&mut healthy, &["books-1"]).await;

    // A failing check removes the instance from the healthy set too.
    assert_eq!(
        registry
            .put(
                "/v1/agent/service/register",
                json!({"ID": "books-3", "Name": "books", "Port": 3,
        "Check": {"TTL": "30s", "Status": "passing"}})
            )
            .await,
        http::StatusCode::OK
    );
    until_ids(&mut healthy, &["books-1", "books-3"]).await;
    registry
        .put("/v1/agent/check/fail/service:books-3", json!(null))
        .await;
    until_ids(&mut healthy, &["books-1"]).await;

    first.cancel();
    let _ = agent_1.await;
    stop_watch.cancel();
    registry.stop().await;
}

#[tokio::test]
async fn the_watch_keeps_the_last_set_while_the_registry_is_down_and_follows_it_after_a_restart() {
    let registry = TestRegistry::start().await;
    let config = fast_config(registry.url());
    let stop = CancellationToken::new();
    let mut healthy = watch_healthy(&config, "books", stop.clone());
    let agent = spawn_agent(config.clone(), books("books-1", 8081), stop.clone());
    until_ids(&mut healthy, &["books-1"]).await;

    let addr = registry.addr;
    registry.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept: Vec<String> = healthy.borrow().iter().map(|i| i.id.clone()).collect();
    assert_eq!(kept, ["books-1"], "the last known set survives the outage");

    // The restarted registry is fresh; the agent registers again and a newcomer appears alongside.
    let registry = TestRegistry::start_on(&addr.to_string()).await;
    registry
        .put(
            "/v1/agent/service/register",
            json!({"ID": "books-9", "Name": "books", "Port": 9,
            "Check": {"TTL": "30s", "Status": "passing"}}),
        )
        .await;
    until_ids(&mut healthy, &["books-1", "books-9"]).await;

    stop.cancel();
    let _ = agent.await;
    registry.stop().await;
}

/// A registry that restarts empty knows no instance until each registers again. The watch keeps the
/// instances it knew for one check TTL, alongside whatever registers anew, so the set never shows
/// empty meanwhile (a gateway would answer 503); an instance that has not come back after the TTL is
/// believed gone.
#[tokio::test]
async fn a_registry_restarted_empty_keeps_the_known_instances_for_one_ttl() {
    let registry = TestRegistry::start().await;
    let config = discovery::client::RegistryConfig {
        ttl_seconds: 3,
        ..fast_config(registry.url())
    };
    let stop = CancellationToken::new();
    let mut healthy = watch_healthy(&config, "books", stop.clone());
    // Registered by hand, not by an agent: nothing registers it again after the restart.
    let register = |id: &'static str, port: u16| {
        json!({"ID": id, "Name": "books", "Port": port,
            "Check": {"TTL": "30s", "Status": "passing"}})
    };
    registry
        .put("/v1/agent/service/register", register("books-1", 1))
        .await;
    until_ids(&mut healthy, &["books-1"]).await;
    let mut recorder = healthy.clone();
    let published = tokio::spawn(async move {
        let mut sets = Vec::new();
        while recorder.changed().await.is_ok() {
            let ids: Vec<String> = recorder.borrow().iter().map(|i| i.id.clone()).collect();
            let done = ids == ["books-2"];
            sets.push(ids);
            if done {
                break;
            }
        }
        sets
    });

    let addr = registry.addr;
    registry.stop().await;
    let registry = TestRegistry::start_on(&addr.to_string()).await;
    // Long enough for the watch to be answered by the empty registry (not a timing assertion).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    registry
        .put("/v1/agent/service/register", register("books-2", 2))
        .await;
    until_ids(&mut healthy, &["books-1", "books-2"]).await;
    until_ids(&mut healthy, &["books-2"]).await;

    let sets = tokio::time::timeout(Duration::from_secs(5), published)
        .await
        .expect("the recorder saw the final set")
        .expect("the recorder ran");
    assert!(
        sets.iter().all(|set| !set.is_empty()),
        "the set was published empty: {sets:?}"
    );
    stop.cancel();
    registry.stop().await;
}
