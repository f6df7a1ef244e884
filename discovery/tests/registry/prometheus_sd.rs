//! `GET /v1/prometheus/targets`, the registry's Prometheus HTTP SD view, on a real registry.

use http::StatusCode;
use serde_json::json;

use crate::helpers::TestRegistry;

#[tokio::test]
async fn every_instance_is_a_target_group_with_its_service_id_health_and_tags() {
    let registry = TestRegistry::start().await;
    for (id, name, port, status) in [
        ("books-1", "books", 8081, "passing"),
        ("books-2", "books", 8082, "critical"),
        ("orders-1", "orders", 8091, "passing"),
    ] {
        let body = json!({"ID": id, "Name": name, "Address": "127.0.0.1", "Port": port,
                          "Tags": ["v1", "blue"], "Check": {"TTL": "30s", "Status": status}});
        assert_eq!(
            registry.put("/v1/agent/service/register", body).await,
            StatusCode::OK
        );
    }
    let all = registry.get("/v1/prometheus/targets").await;
    assert_eq!(
        all,
        json!([
            {"targets": ["127.0.0.1:8081"], "labels": {
                "__meta_bookstore_health": "passing", "__meta_bookstore_service": "books",
                "__meta_bookstore_service_id": "books-1", "__meta_bookstore_tags": ",v1,blue,"}},
            {"targets": ["127.0.0.1:8082"], "labels": {
                "__meta_bookstore_health": "critical", "__meta_bookstore_service": "books",
                "__meta_bookstore_service_id": "books-2", "__meta_bookstore_tags": ",v1,blue,"}},
            {"targets": ["127.0.0.1:8091"], "labels": {
                "__meta_bookstore_health": "passing", "__meta_bookstore_service": "orders",
                "__meta_bookstore_service_id": "orders-1", "__meta_bookstore_tags": ",v1,blue,"}},
        ])
    );
    let orders = registry
        .get("/v1/prometheus/targets?service=orders&service=nothing")
        .await;
    assert_eq!(orders.as_array().map(Vec::len), Some(1));
    assert_eq!(orders[0]["targets"], json!(["127.0.0.1:8091"]));
    registry.stop().await;
}
