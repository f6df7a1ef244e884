//! The Consul endpoints through the router: shapes, defaults and errors.

use http::StatusCode;
use serde_json::json;

use crate::helpers::Api;

#[tokio::test]
async fn a_registration_without_a_name_is_a_400_problem_naming_the_field() {
    let api = Api::new();
    let answer = api
        .put("/v1/agent/service/register", Some(json!({"Port": 1})))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Name")),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn a_malformed_duration_is_a_400_saying_what_a_duration_looks_like() {
    let api = Api::new();
    let body = json!({"Name": "books", "Check": {"TTL": "ten seconds"}});
    let answer = api.put("/v1/agent/service/register", Some(body)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("Check.TTL") && detail.contains("\"10s\""),
        "{detail}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_400_and_registers_nothing() {
    let api = Api::new();
    let answer = api.send("PUT", "/v1/agent/service/register", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/v1/agent/services").await.body, json!({}));
}

#[tokio::test]
async fn bodies_are_read_without_a_json_content_type_like_consul() {
    // `Api::send` sets no Content-Type, as `curl -d` and several Consul clients do not.
    let api = Api::new();
    let answer = api
        .put(
            "/v1/agent/service/register",
            Some(json!({"Name": "books", "Port": 8081})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let services = api.get("/v1/agent/services").await.body;
    assert_eq!(services["books"]["Service"], "books");
    assert_eq!(services["books"]["Port"], 8081);
}

#[tokio::test]
async fn reporting_an_unknown_check_is_a_404() {
    let api = Api::new();
    for verb in ["pass", "warn", "fail"] {
        let answer = api
            .put(&format!("/v1/agent/check/{verb}/service:ghost"), None)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{verb}");
    }
    let update = api
        .put(
            "/v1/agent/check/update/service:ghost",
            Some(json!({"Status": "passing"})),
        )
        .await;
    assert_eq!(update.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn notes_and_updates_become_the_check_output() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    api.put(
        "/v1/agent/check/warn/service:books-1?note=slow%20disk",
        None,
    )
    .await;
    let health = api.get("/v1/health/service/books").await.body;
    assert_eq!(health[0]["Checks"][0]["Status"], "warning");
    assert_eq!(health[0]["Checks"][0]["Output"], "slow disk");

    let body = json!({"Status": "critical", "Output": "disk gone"});
    assert_eq!(
        api.put("/v1/agent/check/update/service:books-1", Some(body))
            .await
            .status,
        StatusCode::OK
    );
    let health = api.get("/v1/health/service/books").await.body;
    assert_eq!(health[0]["Checks"][0]["Status"], "critical");
    assert_eq!(health[0]["Checks"][0]["Output"], "disk gone");

    let bad = api
        .put(
            "/v1/agent/check/update/service:books-1",
            Some(json!({"Status": "fine"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deregistering_removes_the_instance_and_an_unknown_id_is_accepted_like_consul() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    assert_eq!(
        api.put("/v1/agent/service/deregister/books-1", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(api.get("/v1/health/service/books").await.body, json!([]));
    assert_eq!(
        api.put("/v1/agent/service/deregister/books-1", None)
            .await
            .status,
        StatusCode::OK
    );
    let pass = api.put("/v1/agent/check/pass/service:books-1", None).await;
    assert_eq!(pass.status, StatusCode::NOT_FOUND, "its check left with it");
}

#[tokio::test]
async fn health_entries_have_consuls_shape_and_headers() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    let answer = api.get("/v1/health/service/books").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.index() > 0);
    assert_eq!(answer.headers["x-consul-knownleader"], "true");
    assert_eq!(answer.headers["x-consul-lastcontact"], "0");
    let entry = &answer.body[0];
    assert_eq!(entry["Node"]["Node"], "bookstore");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    assert_eq!(entry["Node"]["Address"], "127.0.0.1");
    assert!(
        entry["Node"]["ID"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(entry["Service"]["ID"], "books-1");
    assert_eq!(entry["Service"]["Service"], "books");
    assert_eq!(entry["Service"]["Tags"], json!(["v1"]));
    assert_eq!(entry["Service"]["Address"], "127.0.0.1");
    assert_eq!(entry["Service"]["Port"], 8081);
    assert_eq!(entry["Service"]["Meta"], json!({}));
    let check = &entry["Checks"][0];
    assert_eq!(check["CheckID"], "service:books-1");
    assert_eq!(check["Name"], "Service 'books' check");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["ServiceID"], "books-1");
    assert_eq!(check["ServiceName"], "books");
    assert_eq!(check["Node"], "bookstore");
}

#[tokio::test]
async fn an_unknown_service_is_an_empty_list_not_a_404() {
    let api = Api::new();
    let answer = api.get("/v1/health/service/nobody").await;
    assert_eq!((answer.status, answer.body), (StatusCode::OK, json!([])));
    assert_eq!(api.get("/v1/catalog/service/nobody").await.body, json!([]));
}

#[tokio::test]
async fn tags_filter_the_answers_and_every_tag_must_match() {
    let api = Api::new();
    for (id, tags) in [
        ("books-1", json!(["v1", "eu"])),
        ("books-2", json!(["v2", "eu"])),
    ] {
        let body = json!({"ID": id, "Name": "books", "Port": 1, "Tags": tags});
        api.put("/v1/agent/service/register", Some(body)).await;
    }
    let ids = |body: serde_json::Value, pointer: &str| -> Vec<String> {
        body.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e.pointer(pointer)?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(
            api.get("/v1/health/service/books?tag=eu").await.body,
            "/Service/ID"
        ),
        ["books-1", "books-2"]
    );
    assert_eq!(
        ids(
            api.get("/v1/health/service/books?tag=eu&tag=v2").await.body,
            "/Service/ID"
        ),
        ["books-2"]
    );
    assert_eq!(
        ids(
            api.get("/v1/catalog/service/books?tag=v1").await.body,
            "/ServiceID"
        ),
        ["books-1"]
    );
}

#[tokio::test]
async fn the_catalog_lists_every_service_with_its_tags_and_instances() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "critical").await;
    api.register_ttl("orders", "orders-1", "passing").await;
    let services = api.get("/v1/catalog/services").await;
    assert!(services.index() > 0);
    assert_eq!(services.body, json!({"books": ["v1"], "orders": ["v1"]}));

    let entries = api.get("/v1/catalog/service/books").await.body;
    let entry = &entries[0];
    assert_eq!(
        entry["ServiceID"], "books-1",
        "the catalog lists critical instances too"
    );
    assert_eq!(entry["ServiceName"], "books");
    assert_eq!(entry["ServiceAddress"], "127.0.0.1");
    assert_eq!(entry["ServicePort"], 8081);
    assert_eq!(entry["ServiceTags"], json!(["v1"]));
    assert_eq!(entry["ServiceMeta"], json!({}));
    assert_eq!(entry["Node"], "bookstore");
    assert_eq!(entry["Address"], "127.0.0.1");
    assert_eq!(entry["Datacenter"], "dc1");
}

#[tokio::test]
async fn the_agent_describes_itself_like_a_consul_agent() {
    let api = Api::new();
    let me = api.get("/v1/agent/self").await.body;
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "bookstore");
    assert_eq!(me["Member"]["Name"], "bookstore");
    assert_eq!(
        api.get("/v1/status/leader").await.body,
        json!("127.0.0.1:8300")
    );
}

#[tokio::test]
async fn re_registering_keeps_a_passing_check_passing() {
    let api = Api::new();
    api.register_ttl("books", "books-1", "passing").await;
    let body = json!({"ID": "books-1", "Name": "books", "Port": 9090, "Check": {"TTL": "10s"}});
    assert_eq!(
        api.put("/v1/agent/service/register", Some(body))
            .await
            .status,
        StatusCode::OK
    );
    let health = api.get("/v1/health/service/books?passing").await.body;
    assert_eq!(health[0]["Service"]["Port"], 9090);
    assert_eq!(health[0]["Checks"][0]["Status"], "passing");
}
