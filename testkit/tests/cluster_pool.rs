//! The cluster-aware pool against a real Patroni cluster (primary, synchronous standby, passive
//! member): eventual reads avoid a replica whose replay is paused, strong writes are visible on the
//! synchronous standby at once (remote_apply), and after the primary's postmaster is SIGKILLed the
//! pool notices the new primary and idempotent work retried through the gap succeeds there.

use std::time::{Duration, Instant};

use platform::db::DbConfig;
use platform::db::cluster::{ClusterPool, ProbeSettings};
use platform::db::retry::retry_idempotent;
use testkit::TestCluster;

/// Small, so 50 inserts put the paused replica over it.
const MAX_LAG_BYTES: u64 = 1024;

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not happen within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn eventual_reads_avoid_a_paused_replica_and_writes_follow_a_failover() -> anyhow::Result<()>
{
    let test = TestCluster::start(3).await?;
    let url = test.service_database("shop").await?;
    let config = DbConfig {
        url,
        ..DbConfig::default()
    };
    let settings = ProbeSettings {
        max_lag_bytes: MAX_LAG_BYTES,
        ..ProbeSettings::default()
    };
    let pool = ClusterPool::connect_with(&config, settings).await?;
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY)")
        .execute(pool.primary())
        .await?;

    let passive = test
        .cluster()
        .members
        .iter()
        .find(|m| m.spec.passive)
        .ok_or_else(|| anyhow::anyhow!("no passive member"))?;
    let admin = test.admin_pool(passive, "postgres").await?;
    // Otherwise Patroni resumes the paused replay at its next loop (PostgreSQL 14+).
    test.cluster()
        .set_maintenance(true, Duration::from_secs(30))
        .await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&admin)
        .await?;
    for id in 0..50 {
        sqlx::query("INSERT INTO notes VALUES ($1)")
            .bind(id)
            .execute(pool.primary())
            .await?;
    }
    let passive_node = format!("127.0.0.1:{}", passive.spec.pg_port);
    wait_until("the paused replica's lag showing", || {
        pool.topology()
            .nodes
            .iter()
            .any(|n| n.node == passive_node && n.lag_bytes > MAX_LAG_BYTES)
    })
    .await?;
    for _ in 0..20 {
        let (passive_setting, in_recovery, count): (Option<String>, bool, i64) = sqlx::query_as(
            "SELECT current_setting('bookstore.nofailover', true), pg_is_in_recovery(), (SELECT count(*) FROM notes)",
        )
        .fetch_one(pool.eventual())
        .await?;
        assert_ne!(
            passive_setting.as_deref(),
            Some("on"),
            "an eventual read reached the paused replica"
        );
        assert_eq!(
            count, 50,
            "the synchronous standby has applied every strong write (in recovery: {in_recovery})"
        );
    }
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&admin)
        .await?;
    test.cluster()
        .set_maintenance(false, Duration::from_secs(30))
        .await?;

    let old = test.leader().await?.spec.name.clone();
    test.kill_postmaster(test.leader().await?)?;
    let written = retry_idempotent(Duration::from_secs(45), || async {
        sqlx::query("INSERT INTO notes VALUES (1000) ON CONFLICT (id) DO NOTHING")
            .execute(pool.primary())
            .await
    })
    .await;
    written?;
    wait_until("the pool counting the failover", || {
        pool.topology().failovers >= 1
    })
    .await?;
    let new = test.leader().await?.spec.name.clone();
    assert_ne!(new, old);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(pool.primary())
        .await?;
    assert_eq!(
        count, 51,
        "no acknowledged write lost, the retried one applied once"
    );
    Ok(())
}
