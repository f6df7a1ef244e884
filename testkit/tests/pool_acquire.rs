//! The pools' acquire check (`platform::db::acquire`) against a real PostgreSQL whose backends are
//! terminated under an idle pool (what a server restart does to it): a connection idle for longer
//! than `PING_IDLE_AFTER` is pinged and replaced before anyone sees it; one used just before is
//! handed out unpinged, so its statement fails — as a lost connection, which callers retry or
//! answer 503 — and the pool then recovers by itself. A cluster pool whose probe finds its
//! connection closed (the server went down or restarted) drops the pooled connections made before
//! unused, so not even those fail a caller.

use std::time::{Duration, Instant};

use platform::db::DbConfig;
use platform::db::acquire::PING_IDLE_AFTER;
use platform::db::cluster::{ClusterPool, ProbeSettings};
use platform::db::retry::{ErrorClass, classify};
use sqlx::PgPool;
use testkit::TestPostgres;

const CONNECTIONS: u32 = 4;

/// Fills the pool with `CONNECTIONS` idle connections and terminates their backends.
async fn kill_idle_connections(pool: &PgPool, admin: &PgPool) -> anyhow::Result<()> {
    kill_idle_connections_and(pool, admin, &[]).await
}

/// [`kill_idle_connections`], and the backends of `others` too.
async fn kill_idle_connections_and(
    pool: &PgPool,
    admin: &PgPool,
    others: &[i32],
) -> anyhow::Result<()> {
    let mut held = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        pids.push(pid);
        held.push(conn);
    }
    drop(held);
    // Returned to the pool by spawned tasks (after sqlx's release check).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pool.num_idle(), CONNECTIONS as usize);
    pids.extend_from_slice(others);
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int[]) AS pid",
    )
    .bind(&pids)
    .fetch_one(admin)
    .await?;
    assert_eq!(killed, pids.len() as i64);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// `CONNECTIONS` statements at once, each holding its connection for 0.1 s (so each needs its
/// own), and what each returned.
async fn statements_at_once(pool: &PgPool) -> anyhow::Result<Vec<Result<i32, sqlx::Error>>> {
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(0.1)")
                    .fetch_one(&pool)
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await?);
    }
    Ok(results)
}

#[tokio::test]
async fn dead_idle_connections_are_pinged_away_after_a_second_and_fail_once_as_lost_before()
-> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    let url = pg.service_database("shop").await?;
    let admin = PgPool::connect(&pg.admin_url("postgres")).await?;
    let pool = platform::db::connect(&DbConfig {
        url,
        max_connections: CONNECTIONS,
        ..DbConfig::default()
    })
    .await?;

    // Idle for longer than the threshold: every dead connection is noticed by the ping and
    // replaced, so all four statements at once succeed at the first try.
    kill_idle_connections(&pool, &admin).await?;
    tokio::time::sleep(PING_IDLE_AFTER + Duration::from_millis(300)).await;
    for one in statements_at_once(&pool).await? {
        assert_eq!(
            one?, 1,
            "a dead connection idle for over a second reached a caller"
        );
    }

    // Used a moment ago: handed out without a ping. A statement on a dead one fails as a lost
    // connection (never another kind of error), the connection is dropped, and within one
    // failure per dead connection the pool serves again.
    kill_idle_connections(&pool, &admin).await?;
    let mut failures = 0;
    loop {
        match sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&pool)
            .await
        {
            Ok(one) => {
                assert_eq!(one, 1);
                break;
            }
            Err(err) => {
                assert_eq!(classify(&err), ErrorClass::ConnectionLost, "{err}");
                failures += 1;
                assert!(
                    failures <= CONNECTIONS,
                    "the pool kept handing out dead connections: {err}"
                );
                // sqlx closes the failed connection on release, in a spawned task.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for _ in 0..10 {
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
        assert_eq!(one, 1);
    }
    Ok(())
}

/// The backend of the cluster pool's probe connection (the one running its probe query).
async fn probe_backend(admin: &PgPool) -> anyhow::Result<i32> {
    let pid: Option<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_is_in_recovery(), (CASE%' LIMIT 1",
    )
    .fetch_optional(admin)
    .await?;
    pid.ok_or_else(|| anyhow::anyhow!("no probe connection"))
}

#[tokio::test]
async fn a_probe_that_finds_its_connection_closed_fences_the_pooled_ones() -> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    let url = pg.service_database("shop").await?;
    let admin = PgPool::connect(&pg.admin_url("postgres")).await?;
    let config = DbConfig {
        url,
        max_connections: CONNECTIONS,
        ..DbConfig::default()
    };
    let probe_interval = Duration::from_millis(50);
    let cluster = ClusterPool::connect_with(
        &config,
        ProbeSettings {
            probe_interval,
            ..ProbeSettings::default()
        },
    )
    .await?;
    let pool = cluster.primary();

    // The server "went away" for the probe and the pool alike (its backends terminated, as a
    // restart or a crash does); the probe notices at its next round — a closed connection, not
    // a timeout — and comes back the round after. Only a check that starts within a second of
    // the connections' last use shows anything (older ones are pinged anyway): a slow round is
    // tried again.
    for _ in 0..5 {
        let probe = probe_backend(&admin).await?;
        kill_idle_connections_and(pool, &admin, &[probe]).await?;
        let used = Instant::now();
        let deadline = used + Duration::from_secs(10);
        while probe_backend(&admin)
            .await
            .ok()
            .is_none_or(|pid| pid == probe)
            || cluster.topology().writes_refused
        {
            anyhow::ensure!(Instant::now() < deadline, "the probe never reconnected");
            tokio::time::sleep(probe_interval / 5).await;
        }
        // With a margin: the tasks acquire a moment later.
        let in_window = used.elapsed() + Duration::from_millis(200) < PING_IDLE_AFTER;
        for one in statements_at_once(pool).await? {
            assert!(
                matches!(one, Ok(1)),
                "a connection made before the probe found the server gone reached a caller: {one:?}"
            );
        }
        if in_window {
            return Ok(());
        }
    }
    anyhow::bail!(
        "no round started its check within {PING_IDLE_AFTER:?} of the connections' last use"
    )
}
