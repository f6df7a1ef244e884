//! A coordinator that crashes (`std::process::abort()` through `BOOKSTORE_FAULTS__CRASH_AT`'s
//! setting) at each point of a two-phase commit, in a child process: this test binary run again
//! with only [`child_coordinator`]. Then a fresh coordinator recovers what it left.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use coordinator::CrashPoint;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestCoordinator, World, fast_config, registry_config, submission, world};

const CHILD_SPEC: &str = "COORDINATOR_TEST_CRASH_CHILD";

/// The child: a coordinator with the crash fault on, submitting one transaction. Does nothing in
/// an ordinary test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests in a child process"]
async fn child_coordinator() {
    let Ok(spec) = std::env::var(CHILD_SPEC) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("a child spec");
    let db_url = spec["db_url"].as_str().expect("db_url");
    let registry = spec["registry"].as_str().expect("registry");
    let mut config = fast_config(db_url, registry_config(registry));
    config.faults.crash_at = serde_json::from_value(spec["crash_at"].clone()).expect("a point");
    let coordinator = TestCoordinator::start(config).await;
    let (status, body) = coordinator.submit(&spec["submission"]).await;
    // Reaching this line means the crash point was never reached.
    eprintln!("the child did not crash: {status} {body}");
    std::process::exit(3);
}

/// Runs the child until it crashes at `point` on a 2 + 3 two-phase commit; returns its gxid.
async fn crash_a_coordinator_at(world: &World, point: CrashPoint) -> Uuid {
    let gxid = Uuid::now_v7();
    let spec = json!({
        "db_url": world.db_url,
        "registry": world.registry.url,
        "crash_at": point,
        "submission": submission(gxid, "2pc", 2, 3),
    });
    let child = tokio::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "crash::child_coordinator",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_SPEC, spec.to_string())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the child ends")
        .expect("the child runs");
    assert_eq!(
        status.signal(),
        Some(6),
        "the child aborted (SIGABRT) at {point:?}: {status:?}"
    );
    gxid
}

async fn recovered(world: &World, gxid: Uuid, state: &str) -> Value {
    let coordinator = TestCoordinator::start(world.config()).await;
    let body = coordinator
        .wait_state(gxid, state, Duration::from_secs(15))
        .await;
    world.assert_nothing_prepared().await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_first_prepare_is_presumed_aborted() {
    let world = world().await;
    let gxid = crash_a_coordinator_at(&world, CrashPoint::BeforePrepare).await;
    assert_eq!(world.stored_state(gxid).await.0, "preparing");
    world.assert_nothing_prepared().await;

    let body = recovered(&world, gxid, "aborted").await;

    assert_eq!(body["reason"], "presumed-abort");
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_first_prepare_rolls_it_back() {
    let world = world().await;
    let gxid = crash_a_coordinator_at(&world, CrashPoint::AfterFirstPrepare).await;
    assert_eq!(world.stored_state(gxid).await.0, "preparing");
    assert_eq!(world.alpha.prepared().await.len(), 1);
    assert_eq!(world.beta.prepared().await.len(), 0);

    recovered(&world, gxid, "aborted").await;

    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_every_prepare_but_before_the_decision_is_presumed_aborted() {
    let world = world().await;
    let gxid = crash_a_coordinator_at(&world, CrashPoint::AfterAllPrepares).await;
    assert_eq!(world.stored_state(gxid).await.0, "preparing");
    assert_eq!(world.alpha.prepared().await.len(), 1);
    assert_eq!(world.beta.prepared().await.len(), 1);

    let body = recovered(&world, gxid, "aborted").await;

    assert_eq!(body["reason"], "presumed-abort");
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_decision_is_committed_by_recovery() {
    let world = world().await;
    let gxid = crash_a_coordinator_at(&world, CrashPoint::AfterDecision).await;
    assert_eq!(world.stored_state(gxid).await.0, "committing");
    assert_eq!(world.alpha.prepared().await.len(), 1);
    assert_eq!(world.beta.prepared().await.len(), 1);

    recovered(&world, gxid, "committed").await;

    assert_eq!(world.alpha.stock("widget").await, 8);
    assert_eq!(world.beta.stock("gadget").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_phase_2_is_committed_by_recovery() {
    let world = world().await;
    let gxid = crash_a_coordinator_at(&world, CrashPoint::DuringPhase2).await;
    assert_eq!(world.stored_state(gxid).await.0, "committing");
    let still_prepared = world.alpha.prepared().await.len() + world.beta.prepared().await.len();
    assert!(still_prepared <= 1, "one branch at least was committed");

    recovered(&world, gxid, "committed").await;

    assert_eq!(world.alpha.stock("widget").await, 8);
    assert_eq!(world.beta.stock("gadget").await, 2);
}
