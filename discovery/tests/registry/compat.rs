//! A third-party Consul client, `rs-consul`, reads our registry.

use rs_consul::{Config, Consul, GetServiceNodesRequest};
use serde_json::json;

use crate::helpers::TestRegistry;

#[tokio::test]
async fn rs_consul_lists_services_and_their_healthy_nodes() {
    let registry = TestRegistry::start().await;
    for (id, port, status) in [("books-1", 8081, "passing"), ("books-2", 8082, "critical")] {
        let body = json!({"ID": id, "Name": "books", "Address": "127.0.0.1", "Port": port, "Tags": ["v1"],
                          "Check": {"TTL": "30s", "Status": status}});
        registry.put("/v1/agent/service/register", body).await;
    }
    registry
        .put(
            "/v1/agent/service/register",
            json!({"Name": "orders", "Port": 9000}),
        )
        .await;

    let consul = Consul::new(Config {
        address: registry.url(),
        token: None,
        ..Config::default()
    });
    let names = consul
        .get_all_registered_service_names(None)
        .await
        .expect("service names");
    let mut listed = names.response.clone();
    listed.sort();
    assert_eq!(listed, ["books", "orders"]);
    assert!(names.index > 0);

    let request = GetServiceNodesRequest {
        service: "books",
        passing: true,
        ..Default::default()
    };
    let healthy = consul
        .get_service_nodes(request, None)
        .await
        .expect("healthy nodes");
    let found: Vec<(&str, u16, &str)> = healthy
        .response
        .iter()
        .map(|n| {
            (
                n.service.id.as_str(),
                n.service.port,
                n.node.datacenter.as_str(),
            )
        })
        .collect();
    assert_eq!(found, [("books-1", 8081, "dc1")]);

    let all = GetServiceNodesRequest {
        service: "books",
        passing: false,
        ..Default::default()
    };
    assert_eq!(
        consul
            .get_service_nodes(all, None)
            .await
            .expect("all nodes")
            .response
            .len(),
        2
    );

    let addresses = consul
        .get_service_addresses_and_ports("books", None)
        .await
        .expect("addresses");
    assert_eq!(addresses, [("127.0.0.1".to_owned(), 8081)]);
    registry.stop().await;
}
