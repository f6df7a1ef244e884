//! Blocking queries through the router on paused time: they wait, and return because of a change or
//! because the wait ran out, never by polling.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::helpers::Api;

fn service_ids(body: &serde_json::Value) -> Vec<&str> {
    body.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["Service"]["ID"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_query_at_the_current_index_returns_as_soon_as_the_service_changes() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "critical").await;
    let before = api.get("/v1/health/service/books?passing").await;
    assert_eq!(service_ids(&before.body), Vec::<&str>::new());

    let started = Instant::now();
    let uri = format!(
        "/v1/health/service/books?passing&index={}&wait=60s",
        before.index()
    );
    let waiting = tokio::spawn({
        let api = api.clone();
        async move { api.get(&uri).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "nothing changed yet, so the query still waits"
    );

    api.put("/v1/agent/check/pass/service:books-1", None).await;
    let after = waiting.await.expect("the query task");
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.index() > before.index());
    assert_eq!(service_ids(&after.body), ["books-1"]);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "it returned at the change, not at the wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_query_without_changes_returns_after_its_wait_with_the_same_index() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    let before = api.get("/v1/health/service/books").await;

    let started = Instant::now();
    let after = api
        .get(&format!(
            "/v1/health/service/books?index={}&wait=5s",
            before.index()
        ))
        .await;
    let waited = started.elapsed();
    assert_eq!(after.index(), before.index());
    assert_eq!(after.body, before.body);
    // Consul adds up to wait/16 of jitter.
    assert!(
        waited >= Duration::from_secs(5) && waited <= Duration::from_millis(5_313),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_to_another_service_does_not_end_the_wait() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    let before = api.get("/v1/health/service/books").await;
    let started = Instant::now();
    let waiting = tokio::spawn({
        let (api, uri) = (
            api.clone(),
            format!("/v1/health/service/books?index={}&wait=10s", before.index()),
        );
        async move { api.get(&uri).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.register_ttl("orders", "orders-1", "passing").await;
    let after = waiting.await.expect("the query task");
    assert_eq!(after.index(), before.index());
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_query_without_an_index_or_with_index_zero_answers_at_once() {
    let api = Api::new();
    let started = Instant::now();
    for uri in [
        "/v1/health/service/books?wait=30s",
        "/v1/health/service/books?index=0&wait=30s",
        "/v1/catalog/services",
    ] {
        assert_eq!(api.get(uri).await.status, StatusCode::OK, "{uri}");
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_index_from_an_earlier_life_of_the_registry_answers_at_once() {
    let api = Api::new();
    let started = Instant::now();
    let answer = api
        .get("/v1/health/service/books?index=999999&wait=30s")
        .await;
    assert!(answer.index() < 999_999);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_catalog_listing_blocks_until_a_service_is_added() {
    let api = Api::new();
    let before = api.get("/v1/catalog/services").await;
    assert_eq!(before.body, json!({}));
    let waiting = tokio::spawn({
        let (api, uri) = (
            api.clone(),
            format!("/v1/catalog/services?index={}", before.index()),
        );
        async move { api.get(&uri).await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished(), "the default wait is 5 minutes");
    api.register_ttl("books", "books-1", "critical").await;
    let after = waiting.await.expect("the query task");
    assert!(after.index() > before.index());
    assert_eq!(after.body, json!({"books": ["v1"]}));
}

#[tokio::test(start_paused = true)]
async fn waiting_queries_answer_when_the_registry_shuts_down() {
    let api = Api::new();
    let before = api.get("/v1/health/service/books").await;
    let started = Instant::now();
    let waiting = tokio::spawn({
        let (api, uri) = (
            api.clone(),
            format!("/v1/health/service/books?index={}&wait=10m", before.index()),
        );
        async move { api.get(&uri).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    api.shutdown.cancel();
    let after = waiting.await.expect("the query task");
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn passing_filters_out_warning_and_critical_instances() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    api.register_ttl("books", "books-2", "warning").await;
    api.register_ttl("books", "books-3", "critical").await;
    for (query, expected) in [
        ("?passing", vec!["books-1"]),
        ("?passing=true", vec!["books-1"]),
        ("?passing=1", vec!["books-1"]),
        ("", vec!["books-1", "books-2", "books-3"]),
        ("?passing=false", vec!["books-1", "books-2", "books-3"]),
    ] {
        let answer = api.get(&format!("/v1/health/service/books{query}")).await;
        assert_eq!(service_ids(&answer.body), expected, "{query}");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_blocking_parameters_are_400s() {
    let api = Api::new();
    for query in [
        "?passing=maybe",
        "?index=-1",
        "?index=abc",
        "?index=1&wait=forever",
    ] {
        let answer = api.get(&format!("/v1/health/service/books{query}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{query}"
        );
    }
}
