use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{gid, submission, take, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_phase_commit_applies_every_branch_and_leaves_nothing_prepared() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();

    let (status, body) = coordinator.submit(&submission(gxid, "2pc", 2, 3)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "committed");
    assert_eq!(body["final"], true);
    assert_eq!(body["refusal"], json!(null));
    assert_eq!(body["branches"][0]["state"], "committed");
    assert_eq!(body["branches"][1]["state"], "committed");
    assert_eq!(body["branches"][0]["gid"], gid(gxid, "take_a"));
    assert_eq!(world.alpha.stock("widget").await, 8);
    assert_eq!(world.beta.stock("gadget").await, 2);
    world.assert_nothing_prepared().await;
    let (status, read) = coordinator.get(gxid).await;
    assert_eq!((status, &read), (StatusCode::OK, &body));
    // One prepare and one commit each: no retry was needed.
    for (p, branch) in [(&world.alpha, "take_a"), (&world.beta, "take_b")] {
        assert_eq!(p.observer.count("prepare", &gid(gxid, branch)), 1);
        assert_eq!(p.observer.count("commit", &gid(gxid, branch)), 1);
    }
    let finished = coordinator.metric("coordinator_transactions_total").await;
    assert!(
        finished
            .iter()
            .any(|l| l.contains("mode=\"2pc\"") && l.contains("outcome=\"committed\"")),
        "{finished:?}"
    );
    assert!(
        !coordinator
            .metric("coordinator_transaction_duration_seconds_count")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_aborts_the_two_phase_commit_everywhere_and_is_returned() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();

    // alpha prepares (2 of 10 widgets), then beta refuses (9 of 5 gadgets).
    let (status, body) = coordinator.submit(&submission(gxid, "2pc", 2, 9)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "aborted");
    assert_eq!(body["reason"], "refused");
    assert_eq!(body["refusal"]["kind"], "insufficient-stock");
    assert_eq!(body["refusal"]["available"], 5);
    assert_eq!(body["refusal"]["requested"], 9);
    assert_eq!(body["branches"][0]["state"], "aborted");
    assert_eq!(body["branches"][1]["state"], "aborted");
    assert_eq!(body["branches"][1]["refusal"]["kind"], "insufficient-stock");
    assert_eq!(
        world.alpha.stock("widget").await,
        10,
        "alpha's prepare was rolled back"
    );
    assert_eq!(world.beta.stock("gadget").await, 5);
    world.assert_nothing_prepared().await;
    assert_eq!(world.alpha.observer.count("abort", &gid(gxid, "take_a")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_down_during_phase_2_is_committed_once_it_is_back() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();
    // beta answers its prepare, then its server stops (connections refused; still registered).
    world
        .beta
        .observer
        .stop_after_prepare
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut body = submission(gxid, "2pc", 1, 1);
    body["wait_ms"] = json!(600);

    let (status, answer) = coordinator.submit(&body).await;

    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["final"], false);
    // The decision is made (and is usually made within the 600 ms already).
    coordinator
        .wait_state(gxid, "committing", Duration::from_secs(5))
        .await;
    assert_eq!(world.beta.prepared().await, vec![gid(gxid, "take_b")]);
    // The coordinator keeps retrying the commit while beta is down…
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, still) = coordinator.get(gxid).await;
    assert_eq!(
        (status, &still["state"]),
        (StatusCode::ACCEPTED, &json!("committing"))
    );
    assert!(
        still["branches"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("accepted a connection")),
        "the branch says why: {still}"
    );
    assert!(
        !coordinator
            .metric("coordinator_phase2_retries_total")
            .await
            .is_empty()
    );
    // …and commits once it is back.
    world.beta.restart().await;
    coordinator
        .wait_state(gxid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(world.alpha.stock("widget").await, 9);
    assert_eq!(world.beta.stock("gadget").await, 4);
    world.assert_nothing_prepared().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_answered_not_prepared_is_reported_and_retried_until_it_commits() {
    let world = world().await;
    let gxid = Uuid::now_v7();
    // A (buggy) dead coordinator decided to commit although alpha's branch was never prepared.
    world
        .seed(
            gxid,
            "2pc",
            "committing",
            &[(&world.alpha, take("widget", 2), "prepared")],
        )
        .await;
    let coordinator = world.coordinator().await;
    let alpha_gid = gid(gxid, "take_a");

    crate::helpers::eventually(
        "the violation is reported on the branch",
        Duration::from_secs(10),
        || async {
            let (_, body) = coordinator.get(gxid).await;
            body["branches"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("protocol violation"))
        },
    )
    .await;
    let violations = coordinator
        .metric("coordinator_protocol_violations_total")
        .await;
    assert!(
        violations
            .iter()
            .any(|l| l.contains("answer=\"not-prepared\"")),
        "{violations:?}"
    );
    let (status, body) = coordinator.get(gxid).await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::ACCEPTED, &json!("committing"))
    );
    // It keeps trying: once the branch is prepared after all, the commit goes through.
    crate::helpers::eventually("a retry", Duration::from_secs(5), || async {
        world.alpha.observer.count("commit", &alpha_gid) >= 2
    })
    .await;
    let (status, _) = world
        .alpha
        .call("2pc", &alpha_gid, "prepare", &take("widget", 2))
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = coordinator
        .wait_state(gxid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(
        body["branches"][0]["last_error"],
        json!(null),
        "cleared once it committed"
    );
    assert_eq!(world.alpha.stock("widget").await, 8);
}
