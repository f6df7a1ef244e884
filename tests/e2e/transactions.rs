//! Checkout under faults, on real processes: a coordinator that dies at each step of two-phase
//! commit, a participant that dies after PREPARE, and a participant that applies but answers too
//! late. After recovery the invariants hold (stock sold = committed lines, credit debited =
//! committed totals) and nothing is left prepared; the outcome is the one presumed abort dictates.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use testkit::TestPlatform;

use crate::bookstore;
use crate::checkout::Shop;

/// Short leases so a dead coordinator's transactions are taken over within a couple of seconds.
const FAST_RECOVERY: [(&str, &str); 3] = [
    ("BOOKSTORE_COORDINATOR__COORDINATOR__LEASE_MS", "1500"),
    ("BOOKSTORE_COORDINATOR__COORDINATOR__LEASE_RENEW_MS", "500"),
    (
        "BOOKSTORE_COORDINATOR__COORDINATOR__RECOVERY_INTERVAL_MS",
        "300",
    ),
];

/// Starts a platform whose coordinators (both) crash at `point` of their first 2PC run, checks out,
/// starts a healthy coordinator, and returns the checkout's final order status once it settles.
async fn checkout_with_coordinator_crash(point: &str) -> anyhow::Result<String> {
    let mut env = FAST_RECOVERY.to_vec();
    env.push(("BOOKSTORE_COORDINATOR__FAULTS__CRASH_AT", point));
    let mut shop = Shop::open(TestPlatform::start_with(bookstore(), &env).await?).await?;
    let book = shop.book(10, 400).await?;
    let buyer = shop.customer(5_000).await?;
    let response = shop.checkout(&buyer, "crash", "2pc", &[(&book, 3)]).await?;
    // The coordinator died while orders waited for it: the outcome is not known yet.
    assert_eq!(response.status(), StatusCode::ACCEPTED, "crash at {point}");
    let pending: Value = response.json().await?;
    assert_eq!(pending["status"], "pending");
    let crashed = shop
        .platform
        .processes("coordinator")
        .iter()
        .filter(|p| !is_running(p.pid))
        .count();
    assert!(crashed >= 1, "no coordinator crashed at {point}");
    // A coordinator without the fault takes the transaction over once its lease has expired.
    let _rescuer = shop
        .platform
        .spawn_instance(
            bookstore(),
            "coordinator",
            "coordinator-rescuer",
            &[
                ("BOOKSTORE_COORDINATOR__LEASE_MS", "1500"),
                ("BOOKSTORE_COORDINATOR__LEASE_RENEW_MS", "500"),
                ("BOOKSTORE_COORDINATOR__RECOVERY_INTERVAL_MS", "300"),
            ],
        )
        .await?;
    let order = shop
        .settle(&buyer, pending["id"].as_str().unwrap_or_default())
        .await?;
    shop.assert_invariants(Duration::from_secs(20)).await?;
    let expected_stock = if order["status"] == "committed" {
        7
    } else {
        10
    };
    assert_eq!(shop.stock_of(&book).await?, expected_stock);
    Ok(order["status"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_coordinator_crash_before_any_prepare_aborts() -> anyhow::Result<()> {
    assert_eq!(
        checkout_with_coordinator_crash("before_prepare").await?,
        "aborted"
    );
    Ok(())
}

#[tokio::test]
async fn a_coordinator_crash_after_one_prepare_aborts_and_rolls_it_back() -> anyhow::Result<()> {
    assert_eq!(
        checkout_with_coordinator_crash("after_first_prepare").await?,
        "aborted"
    );
    Ok(())
}

#[tokio::test]
async fn a_coordinator_crash_after_all_prepares_but_before_the_decision_aborts()
-> anyhow::Result<()> {
    assert_eq!(
        checkout_with_coordinator_crash("after_all_prepares").await?,
        "aborted"
    );
    Ok(())
}

#[tokio::test]
async fn a_coordinator_crash_after_the_decision_commits() -> anyhow::Result<()> {
    assert_eq!(
        checkout_with_coordinator_crash("after_decision").await?,
        "committed"
    );
    Ok(())
}

#[tokio::test]
async fn a_coordinator_crash_during_phase_two_commits() -> anyhow::Result<()> {
    assert_eq!(
        checkout_with_coordinator_crash("during_phase2").await?,
        "committed"
    );
    Ok(())
}

#[tokio::test]
async fn a_participant_crash_after_prepare_still_commits_everywhere() -> anyhow::Result<()> {
    let mut env = FAST_RECOVERY.to_vec();
    env.push(("BOOKSTORE_BOOKS__PARTICIPANT__CRASH_AFTER", "prepare"));
    let mut shop = Shop::open(TestPlatform::start_with(bookstore(), &env).await?).await?;
    let book = shop.book(10, 400).await?;
    let buyer = shop.customer(5_000).await?;
    // Both books instances crash right after their first PREPARE TRANSACTION; the coordinator's
    // retry reaches the other one, which finds the branch already prepared (no new PREPARE, so no
    // crash) and later commits it.
    let response = shop
        .checkout(&buyer, "participant-crash", "2pc", &[(&book, 2)])
        .await?;
    assert!(
        [StatusCode::CREATED, StatusCode::ACCEPTED].contains(&response.status()),
        "{}",
        response.status()
    );
    let order: Value = response.json().await?;
    let order = shop
        .settle(&buyer, order["id"].as_str().unwrap_or_default())
        .await?;
    // The prepared transaction outlived the process that made it, and phase 2 finished it.
    assert_eq!(order["status"], "committed");
    let crashed = shop
        .platform
        .processes("books")
        .iter()
        .filter(|p| !is_running(p.pid))
        .count();
    assert_eq!(
        crashed, 1,
        "exactly one books instance should have crashed after PREPARE"
    );
    shop.assert_invariants(Duration::from_secs(20)).await?;
    assert_eq!(shop.stock_of(&book).await?, 8);
    Ok(())
}

#[tokio::test]
async fn a_branch_that_applied_but_answered_too_late_is_neither_lost_nor_doubled()
-> anyhow::Result<()> {
    // orders prepares, then sleeps past the coordinator's per-call timeout before answering.
    let env = [
        ("BOOKSTORE_ORDERS__PARTICIPANT__DELAY_AFTER", "prepare:3000"),
        (
            "BOOKSTORE_COORDINATOR__COORDINATOR__PARTICIPANT_TIMEOUT_MS",
            "1000",
        ),
    ];
    let mut shop = Shop::open(TestPlatform::start_with(bookstore(), &env).await?).await?;
    let book = shop.book(10, 400).await?;
    let buyer = shop.customer(5_000).await?;
    for mode in ["2pc", "saga"] {
        let response = shop
            .checkout(&buyer, &format!("late-{mode}"), mode, &[(&book, 1)])
            .await?;
        let status = response.status();
        let order: Value = response.json().await?;
        assert!(
            [201, 202].contains(&status.as_u16()),
            "{mode}: {status} {order}"
        );
        let order = shop
            .settle(&buyer, order["id"].as_str().unwrap_or_default())
            .await?;
        // Committed or not, the branch was applied exactly as often as the outcome says.
        assert!(["committed", "aborted"].contains(&order["status"].as_str().unwrap_or("")));
    }
    // The slow prepare really timed out at the coordinator, which asked again — a duplicate the
    // barrier answered — rather than assuming either outcome: its own record counts the calls.
    let coordinator =
        sqlx::PgPool::connect(&crate::superuser_url(&shop.platform, "coordinator")?).await?;
    let calls: i32 = sqlx::query_scalar(
        "SELECT max(b.calls) FROM branches b JOIN global_transactions t USING (gxid)
         WHERE t.mode = '2pc' AND b.branch = 'place'",
    )
    .fetch_one(&coordinator)
    .await?;
    assert!(
        calls >= 2,
        "the late prepare was never asked again ({calls} calls)"
    );
    shop.assert_invariants(Duration::from_secs(20)).await
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
