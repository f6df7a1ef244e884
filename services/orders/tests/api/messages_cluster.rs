//! The message record on a real Patroni cluster: the service writes on the primary, and a message
//! read from a replica (the eventual path) shows up once that replica has replayed it.

use std::time::{Duration, Instant};

use platform::auth::Role;
use platform::db::DbConfig;
use platform::db::cluster::ClusterPool;
use platform::pagination::PageRequest;
use serde_json::{Value, json};
use testkit::TestCluster;
use uuid::Uuid;

use crate::helpers::{bearer, serve_on};

#[tokio::test]
async fn a_message_is_read_from_a_replica_once_replicated() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let url = cluster.service_database("orders").await?;
    let (base, _pools, _stop) = serve_on(&url, |_| {}).await?;

    let client = reqwest::Client::new();
    let admin = bearer("admin", Role::Admin);
    let email = format!("replica-{}@example.com", Uuid::now_v7().simple());
    let customer: Value = client
        .post(format!("{base}/api/customers"))
        .json(&json!({"email": email, "name": "Replica Reader", "password": "long-enough"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id: Uuid = customer["id"].as_str().unwrap_or_default().parse()?;
    client
        .post(format!("{base}/api/customers/{id}/credit"))
        .header("authorization", &admin)
        .json(&json!({"amount_cents": 700}))
        .send()
        .await?
        .error_for_status()?;

    // Our own view of the cluster: once a replica qualifies, eventual() is it.
    let pool = ClusterPool::connect(&DbConfig {
        url,
        ..DbConfig::default()
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = PageRequest {
        limit: 10,
        after: None,
    };
    loop {
        let replica = pool.eventual();
        let on_replica: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(replica)
            .await?;
        let page = orders::messages::page(replica, id, &first).await?;
        if on_replica && page.items.iter().any(|m| m.kind == "credit_topped_up") {
            assert_eq!(page.items.len(), 1, "one top-up, one message");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the message never showed on a replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The service's own route reads the same way and shows it too.
    let listed: Value = client
        .get(format!("{base}/api/customers/{id}/messages"))
        .header("authorization", &admin)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(listed["items"][0]["amount_cents"], 700);
    Ok(())
}
