//! The cluster-aware pool against a real Patroni cluster (primary, synchronous standby, passive
//! member): eventual reads avoid a replica whose replay is paused, strong writes are visible on the
//! synchronous standby at once (remote_apply), and after the primary's postmaster is SIGKILLed the
//! pool notices the new primary and idempotent work retried through the gap succeeds there. With
//! the primary down and nobody to promote a replica (a plain streaming pair), the pool keeps
//! serving eventual reads from the replica, fails writes at once, and stays ready until the
//! replica goes too.

use std::time::{Duration, Instant};

use platform::db::cluster::{ClusterPool, ProbeSettings};
use platform::db::retry::{ErrorClass, classify, retry_idempotent};
use platform::db::{DbConfig, Pools};
use testkit::{ReplicaOptions, TestCluster, TestReplicaSet};

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

#[tokio::test]
async fn with_the_primary_down_the_replica_serves_reads_writes_fail_at_once_and_it_stays_ready()
-> anyhow::Result<()> {
    let mut set = TestReplicaSet::start(&[ReplicaOptions::named("r1")]).await?;
    let admin = sqlx::PgPool::connect(&set.primary.admin_url("postgres")).await?;
    sqlx::query("CREATE DATABASE shop").execute(&admin).await?;
    admin.close().await;
    let shop = sqlx::PgPool::connect(&set.primary.admin_url("shop")).await?;
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY)")
        .execute(&shop)
        .await?;
    sqlx::query("INSERT INTO notes SELECT generate_series(1, 10)")
        .execute(&shop)
        .await?;
    shop.close().await;
    set.wait_caught_up(0).await?;
    // An acquire timeout far longer than the test: a write that waited for it would hang here.
    let config = DbConfig {
        url: set.url("shop"),
        acquire_timeout_ms: 600_000,
        ..DbConfig::default()
    };
    let pools = Pools::connect(&config).await?;
    pools.ready().await.map_err(anyhow::Error::msg)?;

    set.primary.server_mut().stop_immediately();
    let write = || sqlx::query("INSERT INTO notes VALUES (11)").execute(pools.primary());
    // Until the probe notices, a write may wait for the primary; once it has, it fails at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(30), write()).await {
            Ok(Err(err)) => break err,
            Ok(Ok(_)) => anyhow::bail!("a write succeeded with the primary stopped"),
            Err(_) => anyhow::ensure!(Instant::now() < deadline, "writes kept waiting"),
        }
    };
    assert_eq!(classify(&refused), ErrorClass::ConnectionLost, "{refused}");
    for _ in 0..10 {
        // Several probe rounds: the pool stays ready, reads come from the replica, and every
        // write fails instead of waiting for the acquire timeout.
        pools.ready().await.map_err(anyhow::Error::msg)?;
        let (count, on_replica): (i64, bool) = pools
            .read_eventually(|pool| async move {
                sqlx::query_as("SELECT (SELECT count(*) FROM notes), pg_is_in_recovery()")
                    .fetch_one(&pool)
                    .await
            })
            .await?;
        assert_eq!((count, on_replica), (10, true));
        let failed = tokio::time::timeout(Duration::from_secs(30), write()).await;
        assert!(
            matches!(&failed, Ok(Err(err)) if classify(err) == ErrorClass::ConnectionLost),
            "{failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // With the replica gone too, nothing can be served: not ready.
    set.replicas[0].server_mut().stop_immediately();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pools.ready().await.is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "still ready with every member down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
