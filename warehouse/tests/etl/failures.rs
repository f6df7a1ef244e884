//! A failed run — source or warehouse down — is recorded with its error and counted in the
//! metrics, and the next run catches up; runs never overlap, even from two processes.

use uuid::Uuid;
use warehouse::etl::{Mode, Trigger};
use warehouse::progress::Quiet;

use crate::helpers::Harness;

async fn run_status(h: &Harness, id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, error FROM etl_runs WHERE id = $1")
        .bind(id)
        .fetch_one(&h.warehouse)
        .await
        .expect("the run is recorded")
}

fn failed_runs_counted() -> f64 {
    let text = platform::metrics::render();
    text.lines()
        .find(|l| l.starts_with("bookstore_etl_runs_total{") && l.contains("status=\"failed\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_run_with_a_source_down_fails_visibly_and_the_next_run_catches_up() {
    let h = Harness::start().await;
    let book = h.book("Kept", "Author", "g", 100).await;
    let c = h.customer("C").await;
    h.order(c, &[(book, 1, 100)]).await;
    h.load(Mode::Incremental).await;
    h.order(c, &[(book, 2, 100)]).await;

    let failures_before = failed_runs_counted();
    h.set_reachable("orders", false).await;
    let id = Uuid::now_v7();
    let report = h
        .etl
        .run(id, Mode::Incremental, Trigger::Manual, &Quiet)
        .await;
    assert!(!report.succeeded());
    let (status, error) = run_status(&h, id).await;
    assert_eq!(status, "failed");
    assert!(
        error.unwrap_or_default().contains("orders"),
        "the error names the source"
    );
    assert!(
        failed_runs_counted() > failures_before,
        "the failure is in the metrics"
    );
    // Nothing of the failed run landed: the watermark did not move.
    assert_eq!(Harness::fact_lines(&h.warehouse).await.len(), 1);

    h.set_reachable("orders", true).await;
    h.order(c, &[(book, 3, 100)]).await;
    h.load(Mode::Incremental).await;
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}

#[tokio::test]
async fn a_run_with_the_warehouse_down_is_recorded_once_it_is_back() {
    let h = Harness::start().await;
    let book = h.book("Kept", "Author", "g", 100).await;
    let c = h.customer("C").await;
    h.order(c, &[(book, 1, 100)]).await;
    h.set_reachable("warehouse", false).await;
    let id = Uuid::now_v7();
    let report = h
        .etl
        .run(id, Mode::Incremental, Trigger::Scheduled, &Quiet)
        .await;
    assert!(!report.succeeded());
    h.set_reachable("warehouse", true).await;
    h.load(Mode::Incremental).await;
    let (status, error) = run_status(&h, id).await;
    assert_eq!(status, "failed");
    assert!(error.is_some_and(|e| e.contains("warehouse")));
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}

#[tokio::test]
async fn two_loads_at_once_never_overlap() {
    let h = Harness::start().await;
    // A second process: its own pools, the same warehouse database.
    let other = Harness::etl_for(h.pg(), &h.warehouse_url).await;
    let book = h.book("Shared", "Author", "g", 100).await;
    let c = h.customer("C").await;
    for round in 0..3 {
        for _ in 0..5 {
            h.order(c, &[(book, 1, 100)]).await;
        }
        let mode = if round == 0 {
            Mode::Full
        } else {
            Mode::Incremental
        };
        let (a, b) = tokio::join!(
            h.etl.run(Uuid::now_v7(), mode, Trigger::Manual, &Quiet),
            other.run(Uuid::now_v7(), Mode::Incremental, Trigger::Api, &Quiet),
        );
        assert!(
            a.succeeded() && b.succeeded(),
            "{:?} {:?}",
            a.error,
            b.error
        );
    }
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM etl_runs a JOIN etl_runs b ON a.id < b.id
         WHERE tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)",
    )
    .fetch_one(&h.warehouse)
    .await
    .expect("runs");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM etl_runs WHERE status = 'succeeded'")
        .fetch_one(&h.warehouse)
        .await
        .expect("runs");
    assert_eq!((runs, overlapping), (6, 0));
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}
