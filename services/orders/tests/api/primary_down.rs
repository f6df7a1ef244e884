//! The real service on a primary and a streaming replica (no Patroni: nobody promotes the replica,
//! so "no primary" lasts as long as the test wants). With the primary stopped the instance stays
//! ready — it can still serve eventual reads — answers the customer's messages from the replica
//! and every write 503 + `Retry-After` problem+json at once; with the replica stopped too it is
//! no longer ready.

use std::time::{Duration, Instant};

use platform::auth::Role;
use serde_json::{Value, json};
use testkit::{ReplicaOptions, TestReplicaSet};

use crate::helpers::{assert_problem, bearer, serve_on};

/// The role's URL listing both servers, as `bookstore up` hands a service the cluster.
fn cluster_url(set: &TestReplicaSet) -> String {
    let hosts: Vec<String> = std::iter::once(&set.primary)
        .chain(&set.replicas)
        .map(|server| format!("127.0.0.1:{}", server.port()))
        .collect();
    format!("postgres://orders:orderspw@{}/orders", hosts.join(","))
}

/// Polls `check` every 100 ms until it holds; fails after a minute with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn with_the_primary_down_an_instance_stays_ready_reads_messages_and_refuses_writes()
-> anyhow::Result<()> {
    let mut set = TestReplicaSet::start(&[ReplicaOptions::named("r1")]).await?;
    set.primary.service_database("orders").await?;
    // An acquire timeout longer than the test: a write that waited for it would never be answered.
    let (base, pools, _stop) = serve_on(&cluster_url(&set), |config| {
        config.db.acquire_timeout_ms = 600_000;
    })
    .await?;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let admin = bearer("admin", Role::Admin);
    let customer: Value = client
        .post(format!("{base}/api/customers"))
        .json(
            &json!({"email": "down@example.com", "name": "Down Reader", "password": "long-enough"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = customer["id"].as_str().unwrap_or_default().to_owned();
    let top_up = |n: u32| {
        client
            .post(format!("{base}/api/customers/{id}/credit"))
            .header("authorization", &admin)
            .header("idempotency-key", format!("down-{n}"))
            .json(&json!({"amount_cents": 100}))
            .send()
    };
    top_up(0).await?.error_for_status()?;
    set.wait_caught_up(0).await?;
    // The instance's pool must have seen the replica caught up too: its last probe round may
    // predate that (the replica replaying the database's creation), and with the primary gone
    // before the next round it would have no member within the lag limit to read from.
    eventually(
        "the instance's pool seeing the replica caught up",
        || async {
            let topology = pools
                .topology()
                .ok_or_else(|| anyhow::anyhow!("not a cluster pool"))?;
            Ok(topology
                .nodes
                .iter()
                .any(|node| node.up && !node.primary && node.lag_bytes == 0))
        },
    )
    .await?;
    let ready = || client.get(format!("{base}/health/ready")).send();
    let messages = || {
        client
            .get(format!("{base}/api/customers/{id}/messages"))
            .header("authorization", &admin)
            .send()
    };
    assert_eq!(ready().await?.status(), 200);

    set.primary.server_mut().stop_immediately();
    // Until the pool's probe notices, a write may wait for the primary; then it is refused.
    eventually("a write refused with 503", || async {
        Ok(top_up(1).await?.status() == 503)
    })
    .await?;
    for n in 2..12 {
        // Over several probe rounds: still ready, reads served, writes refused as retryable.
        let readiness = ready().await?;
        let status = readiness.status();
        assert_eq!(status, 200, "{}", readiness.text().await?);
        let listed = messages().await?;
        let status = listed.status();
        let listed: Value = listed.json().await?;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["items"][0]["kind"], "credit_topped_up", "{listed}");
        let refused = top_up(n).await?;
        let retry_after = refused.headers().get("retry-after").cloned();
        assert_problem(refused, 503).await;
        assert!(retry_after.is_some(), "a 503 without Retry-After");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Nothing left to serve from: not ready.
    set.replicas[0].server_mut().stop_immediately();
    eventually("readiness failing with every member down", || async {
        Ok(ready().await?.status() == 503)
    })
    .await
}
