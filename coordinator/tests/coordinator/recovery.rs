use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{TestCoordinator, gid, take, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_preparing_by_a_dead_coordinator_is_presumed_aborted() {
    let world = world().await;
    let gxid = Uuid::now_v7();
    // The dead coordinator had recorded the transaction and prepared alpha's branch.
    world
        .seed(
            gxid,
            "2pc",
            "preparing",
            &[
                (&world.alpha, take("widget", 4), "prepared"),
                (&world.beta, take("gadget", 1), "pending"),
            ],
        )
        .await;
    let (status, _) = world
        .alpha
        .call("2pc", &gid(gxid, "take_a"), "prepare", &take("widget", 4))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(world.alpha.prepared().await, vec![gid(gxid, "take_a")]);

    let coordinator = world.coordinator().await;

    let body = coordinator
        .wait_state(gxid, "aborted", Duration::from_secs(10))
        .await;
    assert_eq!(body["reason"], "presumed-abort");
    assert_eq!(body["branches"][0]["state"], "aborted");
    assert_eq!(body["branches"][1]["state"], "aborted");
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.stock("widget").await, 10, "rolled back");
    // beta's branch was never prepared; the abort blocks a late prepare of it.
    let (status, late) = world
        .beta
        .call("2pc", &gid(gxid, "take_b"), "prepare", &take("gadget", 1))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{late}");
    assert_eq!(world.beta.stock("gadget").await, 5);
    assert_eq!(world.stored_state(gxid).await, ("aborted".into(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_committing_by_a_dead_coordinator_is_committed() {
    let world = world().await;
    let gxid = Uuid::now_v7();
    world
        .seed_both_prepared(gxid, "committing", &["prepare"])
        .await;

    let coordinator = world.coordinator().await;

    let body = coordinator
        .wait_state(gxid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(body["branches"][0]["state"], "committed");
    assert_eq!(body["branches"][1]["state"], "committed");
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.stock("widget").await, 6);
    assert_eq!(world.beta.stock("gadget").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_left_running_or_compensating_are_finished() {
    let world = world().await;
    // Running, first action done: the recovering coordinator continues with the second.
    let running = Uuid::now_v7();
    world
        .seed(
            running,
            "saga",
            "running",
            &[
                (&world.alpha, take("widget", 1), "done"),
                (&world.beta, take("gadget", 1), "pending"),
            ],
        )
        .await;
    let (status, _) = world
        .alpha
        .call(
            "saga",
            &gid(running, "take_a"),
            "action",
            &take("widget", 1),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Compensating after its first step was done and its second never answered.
    let compensating = Uuid::now_v7();
    world
        .seed(
            compensating,
            "saga",
            "compensating",
            &[
                (&world.alpha, take("widget", 2), "done"),
                (&world.beta, take("gadget", 2), "pending"),
            ],
        )
        .await;
    for (p, payload) in [
        (&world.alpha, take("widget", 2)),
        (&world.beta, take("gadget", 2)),
    ] {
        let (status, _) = p
            .call("saga", &gid(compensating, p.branch), "action", &payload)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(world.alpha.stock("widget").await, 7);
    assert_eq!(world.beta.stock("gadget").await, 3);

    let coordinator = world.coordinator().await;

    coordinator
        .wait_state(running, "completed", Duration::from_secs(10))
        .await;
    let body = coordinator
        .wait_state(compensating, "compensated", Duration::from_secs(10))
        .await;
    assert_eq!(body["branches"][0]["state"], "compensated");
    assert_eq!(body["branches"][1]["state"], "compensated");
    // running: 1 + 1 taken; compensating: both given back (beta's unanswered step had applied).
    assert_eq!(world.alpha.stock("widget").await, 9);
    assert_eq!(world.beta.stock("gadget").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_never_drive_the_same_transaction() {
    let world = world().await;
    // Commits take longer than a lease: a coordinator must keep renewing its leases while it
    // waits, or the other would take the transaction over and commit it a second time.
    for p in [&world.alpha, &world.beta] {
        p.observer.commit_delay_ms.store(2000, Ordering::SeqCst);
    }
    let start = || {
        let mut config = world.config();
        config.coordinator.lease_ms = 1500;
        config.coordinator.lease_renew_ms = 100;
        config.coordinator.recovery_interval_ms = 30;
        config.coordinator.recovery_batch = 2;
        config.coordinator.participant_timeout_ms = 3000;
        TestCoordinator::start(config)
    };
    let first = start().await;
    let second = start().await;
    assert_ne!(first.instance_id, second.instance_id);

    // A dead coordinator left twelve transactions in `committing`, every branch prepared (each
    // on its own stock row: a prepared transaction keeps its row locks).
    let gxids: Vec<Uuid> = (0..12).map(|_| Uuid::now_v7()).collect();
    for (i, gxid) in gxids.iter().enumerate() {
        let item = format!("item{i}");
        for p in [&world.alpha, &world.beta] {
            sqlx::query("INSERT INTO stock VALUES ($1, 10)")
                .bind(&item)
                .execute(&p.pool)
                .await
                .expect("a stock row");
            let (status, body) = p
                .call("2pc", &gid(*gxid, p.branch), "prepare", &take(&item, 1))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        world
            .seed(
                *gxid,
                "2pc",
                "committing",
                &[
                    (&world.alpha, take(&item, 1), "prepared"),
                    (&world.beta, take(&item, 1), "prepared"),
                ],
            )
            .await;
    }

    for gxid in &gxids {
        first
            .wait_state(*gxid, "committed", Duration::from_secs(20))
            .await;
    }

    world.assert_nothing_prepared().await;
    for (i, gxid) in gxids.iter().enumerate() {
        for p in [&world.alpha, &world.beta] {
            let gid = gid(*gxid, p.branch);
            assert_eq!(p.observer.count("commit", &gid), 1, "{gid} committed once");
            assert_eq!(p.observer.max_in_flight(&gid), 1, "{gid}");
            assert_eq!(p.stock(&format!("item{i}")).await, 9);
        }
        // Claimed once (from the dead coordinator), never taken over afterwards.
        assert_eq!(world.stored_state(*gxid).await, ("committed".into(), 2));
    }
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lease_owner FROM global_transactions WHERE gxid = ANY($1)",
    )
    .bind(&gxids)
    .fetch_all(&world.db)
    .await
    .expect("owners");
    let owners: HashSet<String> = owners.into_iter().collect();
    let expected: HashSet<String> = [first.instance_id.clone(), second.instance_id.clone()].into();
    // Usually both take part; on a loaded machine one may claim every batch before the other's
    // loop runs. The safety properties above (one commit, one claim each) are what must hold.
    assert!(
        !owners.is_empty() && owners.is_subset(&expected),
        "owners {owners:?} are not these coordinators {expected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopping_gracefully_hands_its_unfinished_work_to_a_peer_at_once() {
    let world = world().await;
    // Leases long enough that only the release on shutdown explains a quick takeover.
    let start = || {
        let mut config = world.config();
        config.coordinator.lease_ms = 20_000;
        config.coordinator.lease_renew_ms = 1_000;
        TestCoordinator::start(config)
    };
    let leaving = start().await;
    let staying = start().await;
    world
        .beta
        .observer
        .stop_after_prepare
        .store(true, Ordering::SeqCst);
    let gxid = Uuid::now_v7();
    let mut body = crate::helpers::submission(gxid, "2pc", 1, 1);
    body["wait_ms"] = serde_json::json!(300);
    let (status, answer) = leaving.submit(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    leaving
        .wait_state(gxid, "committing", Duration::from_secs(5))
        .await;

    let stopped = std::time::Instant::now();
    leaving.stop().await;
    world.beta.restart().await;

    staying
        .wait_state(gxid, "committed", Duration::from_secs(10))
        .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "long before the lease would expire"
    );
    assert_eq!(world.stored_state(gxid).await, ("committed".into(), 2));
    world.assert_nothing_prepared().await;
    assert_eq!(world.beta.stock("gadget").await, 4);
}
