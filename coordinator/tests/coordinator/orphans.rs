use std::time::{Duration, Instant};

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{TestCoordinator, gid, take, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_prepared_gid_is_rolled_back_after_the_grace_period() {
    let world = world().await;
    let mut config = world.config();
    config.coordinator.orphan_scan_interval_ms = 100;
    config.coordinator.orphan_grace_ms = 1500;
    let coordinator = TestCoordinator::start(config).await;
    // Prepared directly through the participant route: no transaction record anywhere.
    let orphan = gid(Uuid::now_v7(), "take_a");
    let prepared_at = Instant::now();
    let (status, _) = world
        .alpha
        .call("2pc", &orphan, "prepare", &take("widget", 3))
        .await;
    assert_eq!(status, StatusCode::OK);
    // A gid under another prefix is not ours: it stays.
    let foreign = format!("other:{}:take_a", Uuid::now_v7());
    let (status, _) = world
        .beta
        .call(
            "2pc",
            &foreign.replace("take_a", "take_b"),
            "prepare",
            &take("gadget", 1),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Rolled back, and blocked (the participant blocks the gid right after the rollback).
    crate::helpers::eventually(
        "the orphan is rolled back",
        Duration::from_secs(10),
        || async { world.alpha.prepared().await.is_empty() && world.alpha.blocked(&orphan).await },
    )
    .await;

    assert!(
        prepared_at.elapsed() >= Duration::from_millis(1500),
        "not before the grace period: {:?}",
        prepared_at.elapsed()
    );
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(
        world.beta.prepared().await.len(),
        1,
        "the foreign gid is left alone"
    );
    let age = coordinator
        .metric("coordinator_oldest_prepared_transaction_age_seconds")
        .await;
    assert_eq!(age.len(), 1, "{age:?}");
    // The abort blocked the gid: a late prepare of it is refused.
    let (status, _) = world
        .alpha
        .call("2pc", &orphan, "prepare", &take("widget", 3))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    drop(coordinator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_gids_of_known_transactions_follow_the_transaction_state() {
    let world = world().await;
    // committed: the scan commits the leftover; aborted: it aborts it; preparing with a live lease
    // (another coordinator is still at work): it leaves it alone, however old.
    let committed = Uuid::now_v7();
    let aborted = Uuid::now_v7();
    let live = Uuid::now_v7();
    let items = [
        (committed, "c", "committed"),
        (aborted, "a", "aborted"),
        (live, "l", "preparing"),
    ];
    for (gxid, item, state) in items {
        sqlx::query("INSERT INTO stock VALUES ($1, 10)")
            .bind(item)
            .execute(&world.alpha.pool)
            .await
            .expect("stock row");
        let (status, _) = world
            .alpha
            .call("2pc", &gid(gxid, "take_a"), "prepare", &take(item, 1))
            .await;
        assert_eq!(status, StatusCode::OK);
        world
            .seed(
                gxid,
                "2pc",
                state,
                &[(&world.alpha, take(item, 1), "prepared")],
            )
            .await;
    }
    // The "live" one belongs to a coordinator whose lease runs for another minute.
    sqlx::query(
        "UPDATE global_transactions SET lease_owner = 'busy-peer',
             lease_until = now() + interval '1 minute' WHERE gxid = $1",
    )
    .bind(live)
    .execute(&world.db)
    .await
    .expect("a live lease");
    let mut config = world.config();
    config.coordinator.orphan_scan_interval_ms = 100;
    config.coordinator.orphan_grace_ms = 0;
    let coordinator = TestCoordinator::start(config).await;

    crate::helpers::eventually(
        "the scan resolves the final ones",
        Duration::from_secs(10),
        || async { world.alpha.prepared().await == vec![gid(live, "take_a")] },
    )
    .await;

    assert_eq!(world.alpha.stock("c").await, 9, "committed");
    assert_eq!(world.alpha.stock("a").await, 10, "aborted");
    // Several more scans: the live one stays prepared.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(world.alpha.prepared().await, vec![gid(live, "take_a")]);
    drop(coordinator);
}
