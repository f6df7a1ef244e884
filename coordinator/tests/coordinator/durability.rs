//! The writes the coordinator does not force (docs/TRANSACTIONS.md, "What is forced"): a 2PC
//! transaction's record and every final state that follows a forced decision. A crash of the
//! database can lose such a write, together with everything written after it in that database,
//! and nothing else. These tests put the coordinator database in the state each such loss leaves
//! (the test server does not fsync, so the loss itself is simulated by undoing the write) and
//! check that recovery still ends every transaction consistently.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestCoordinator, eventually, gid, submission, take, world};

/// A lost `committed` leaves the forced `committing`, its branch news lost with it, while the
/// participants have already committed: recovery commits again, which they answer as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_committed_state_is_committed_again_by_recovery_and_applied_once() {
    let world = world().await;
    let gxid = Uuid::now_v7();
    world
        .seed_both_prepared(gxid, "committing", &["prepare", "commit"])
        .await;

    let coordinator = world.coordinator().await;

    let body = coordinator
        .wait_state(gxid, "committed", Duration::from_secs(10))
        .await;
    for branch in 0..2 {
        assert_eq!(body["branches"][branch]["state"], "committed", "{body}");
        assert_eq!(
            body["branches"][branch]["last_error"],
            json!(null),
            "{body}"
        );
    }
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.stock("widget").await, 6, "taken once");
    assert_eq!(world.beta.stock("gadget").await, 3, "taken once");
}

/// A lost `aborted` (or `compensated`) leaves the forced decision: recovery aborts (compensates)
/// again, and the branches, already rolled back, give nothing back twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_aborted_and_compensated_states_are_finished_again_without_giving_back_twice() {
    let world = world().await;
    let aborted = Uuid::now_v7();
    world
        .seed_both_prepared(aborted, "aborting", &["prepare", "abort"])
        .await;
    // A saga whose first step acted and was compensated, and whose second was refused.
    let compensated = Uuid::now_v7();
    world
        .seed(
            compensated,
            "saga",
            "compensating",
            &[
                (&world.alpha, take("widget", 3), "done"),
                (&world.beta, take("gadget", 2), "refused"),
            ],
        )
        .await;
    for op in ["action", "compensate"] {
        let (status, body) = world
            .alpha
            .call("saga", &gid(compensated, "take_a"), op, &take("widget", 3))
            .await;
        assert_eq!(status, StatusCode::OK, "{op}: {body}");
    }
    assert_eq!(world.alpha.stock("widget").await, 10);

    let coordinator = world.coordinator().await;

    let body = coordinator
        .wait_state(aborted, "aborted", Duration::from_secs(10))
        .await;
    assert_eq!(body["branches"][0]["state"], "aborted", "{body}");
    assert_eq!(body["branches"][1]["state"], "aborted", "{body}");
    let body = coordinator
        .wait_state(compensated, "compensated", Duration::from_secs(10))
        .await;
    assert_eq!(body["branches"][0]["state"], "compensated", "{body}");
    world.assert_nothing_prepared().await;
    assert_eq!(
        world.alpha.stock("widget").await,
        10,
        "nothing given back twice"
    );
    assert_eq!(world.beta.stock("gadget").await, 5);
}

/// A lost 2PC record, while its driver is still at work: the driver finds no row to write its
/// decision to and stops, the orphan scan rolls back what was prepared, and the same submission
/// sent again (as orders does for a checkout the coordinator does not know) ends aborted — nothing
/// is applied anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_two_phase_record_ends_aborted_everywhere() {
    let world = world().await;
    let mut config = world.config();
    config.coordinator.orphan_scan_interval_ms = 100;
    config.coordinator.orphan_grace_ms = 1500;
    let coordinator = TestCoordinator::start(config).await;
    let gxid = Uuid::now_v7();
    // beta is down, so the driver keeps retrying beta's prepare after alpha's.
    world.beta.stop_serving().await;
    let mut body = submission(gxid, "2pc", 4, 1);
    body["wait_ms"] = json!(0);
    let (status, answer) = coordinator.submit(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    eventually("alpha is prepared", Duration::from_secs(5), || async {
        world.alpha.prepared().await == vec![gid(gxid, "take_a")]
    })
    .await;

    // The crash of the database that loses the record loses nothing else (nothing was written to
    // the coordinator database after it).
    let deleted = sqlx::query("DELETE FROM global_transactions WHERE gxid = $1")
        .bind(gxid)
        .execute(&world.db)
        .await
        .expect("delete the record")
        .rows_affected();
    assert_eq!(deleted, 1);
    world.beta.restart().await;

    // beta may or may not have been prepared before the driver stopped (its deadline may pass
    // first); whatever was prepared is an orphan.
    eventually(
        "what was prepared is rolled back, and alpha's gid blocked",
        Duration::from_secs(15),
        || async {
            world.alpha.prepared().await.is_empty()
                && world.beta.prepared().await.is_empty()
                && world.alpha.blocked(&gid(gxid, "take_a")).await
        },
    )
    .await;
    // The driver did not write its decision anywhere.
    let (status, _) = coordinator.get(gxid).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);

    body["wait_ms"] = json!(5000);
    let (status, again) = coordinator.submit(&body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "aborted", "{again}");
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}

/// The race the record's `created_at` in the fence closes: after a lost record, the same gxid is
/// recorded again — by this same coordinator, so with the same owner and epoch 1 — while the old
/// driver still runs. The old driver must not write its decision to the new record (its prepares
/// may have been rolled back as orphans meanwhile); the new record is finished by its own driver
/// (here: recovery, which presumes the abort).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_whose_record_was_lost_never_writes_to_the_record_that_replaced_it() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();
    world.beta.stop_serving().await;
    let mut body = submission(gxid, "2pc", 4, 1);
    body["wait_ms"] = json!(0);
    body["timeout_ms"] = json!(8000);
    let (status, answer) = coordinator.submit(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    eventually("alpha is prepared", Duration::from_secs(5), || async {
        world.alpha.prepared().await == vec![gid(gxid, "take_a")]
    })
    .await;

    // Lost, and recorded again under the same owner and epoch, its lease still running.
    let mut tx = world.db.begin().await.expect("begin");
    sqlx::query("DELETE FROM global_transactions WHERE gxid = $1")
        .bind(gxid)
        .execute(&mut *tx)
        .await
        .expect("delete the record");
    sqlx::query(
        "INSERT INTO global_transactions
             (gxid, mode, state, branches, timeout_ms, deadline, lease_owner, lease_until, attempts)
         VALUES ($1, '2pc', 'preparing', $2, 8000, now() + interval '8 seconds', $3,
                 now() + interval '2 seconds', 1)",
    )
    .bind(gxid)
    .bind(&body["branches"])
    .bind(&coordinator.instance_id)
    .execute(&mut *tx)
    .await
    .expect("record it again");
    for (position, (service, branch)) in [("alpha", "take_a"), ("beta", "take_b")]
        .into_iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO branches (gxid, position, service, branch, gid) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(gxid)
        .bind(i32::try_from(position).expect("small"))
        .bind(service)
        .bind(branch)
        .bind(gid(gxid, branch))
        .execute(&mut *tx)
        .await
        .expect("its branches");
    }
    tx.commit().await.expect("commit");
    // The old driver now gets beta's prepare through, and tries to write its decision.
    world.beta.restart().await;

    let body = coordinator
        .wait_state(gxid, "aborted", Duration::from_secs(15))
        .await;
    assert_eq!(body["reason"], "presumed-abort", "{body}");
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}
