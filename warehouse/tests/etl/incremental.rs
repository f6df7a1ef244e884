//! Every committed order line appears exactly once after the next run, whatever commits while runs
//! read — including transactions that started before a run and commit after its snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, Utc};
use warehouse::etl::Mode;

use crate::helpers::Harness;

#[tokio::test]
async fn a_transaction_that_commits_after_a_runs_snapshot_is_loaded_by_the_next_run() {
    let h = Harness::start().await;
    let book = h.book("Late", "Author", "mystery", 1200).await;
    // One customer per open transaction: each holds its customer's row lock until it commits.
    let alice = h.customer("Alice").await;
    let (bob, carol) = (h.customer("Bob").await, h.customer("Carol").await);
    h.order(alice, &[(book, 1, 1200)]).await;
    h.load(Mode::Incremental).await;

    // Started (and stamped) an hour ago, committed only after the next run has read: a timestamp
    // watermark would have moved past it.
    let mut late = h.orders.begin().await.expect("begin");
    let an_hour_ago = Some(Utc::now() - Duration::hours(1));
    let late_order = Harness::place_in(&mut late, alice, &[(book, 2, 1200)], an_hour_ago).await;
    // A savepoint: rows written by a subtransaction carry its own transaction id.
    sqlx::query("SAVEPOINT inner_write")
        .execute(&mut *late)
        .await
        .expect("savepoint");
    let nested = Harness::place_in(&mut late, alice, &[(book, 3, 1200)], an_hour_ago).await;
    sqlx::query("RELEASE SAVEPOINT inner_write")
        .execute(&mut *late)
        .await
        .expect("release");
    h.order(bob, &[(book, 4, 1200)]).await;
    h.load(Mode::Incremental).await;
    late.commit().await.expect("late commit");

    // Two-phase commit: prepared before the run, committed after it.
    let mut prepared = h.orders.acquire().await.expect("conn");
    sqlx::query("BEGIN")
        .execute(&mut *prepared)
        .await
        .expect("begin");
    let in_doubt = Harness::place_in(&mut prepared, carol, &[(book, 5, 1200)], an_hour_ago).await;
    sqlx::query("PREPARE TRANSACTION 'warehouse-test'")
        .execute(&mut *prepared)
        .await
        .expect("prepare");
    h.load(Mode::Incremental).await;
    assert!(
        !fact_order_ids(&h).await.contains(&in_doubt),
        "a prepared order is not committed yet"
    );
    sqlx::query("COMMIT PREPARED 'warehouse-test'")
        .execute(&mut *prepared)
        .await
        .expect("commit prepared");

    h.load(Mode::Incremental).await;
    let facts = fact_order_ids(&h).await;
    for order in [late_order, nested, in_doubt] {
        assert!(
            facts.contains(&order),
            "order {order} committed late is missing"
        );
    }
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}

async fn fact_order_ids(h: &Harness) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT DISTINCT order_id FROM fact_sales")
        .fetch_all(&h.warehouse)
        .await
        .expect("facts")
}

#[tokio::test]
async fn every_committed_line_appears_exactly_once_while_orders_commit_during_runs() {
    let h = Arc::new(Harness::start().await);
    let mut books = Vec::new();
    for n in 0..5 {
        books.push(
            h.book(&format!("Book {n}"), "Author", "fiction", 100 + n)
                .await,
        );
    }
    let customer = h.customer("Busy").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (h, stop, books) = (h.clone(), stop.clone(), books.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut tx = h.orders.begin().await.expect("begin");
                let book = books[(w + n) % books.len()];
                Harness::place_in(&mut tx, customer, &[(book, 1, 100), (book, 2, 100)], None).await;
                // Hold some transactions open across a run's snapshot; roll every fifth back.
                if n.is_multiple_of(3) {
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
                if n % 5 == 4 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                }
                n += 1;
            }
            n
        }));
    }
    h.run_until_200_lines(|| h.load(Mode::Incremental)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    h.load(Mode::Incremental).await;
    let source = h.source_lines().await;
    let facts = Harness::fact_lines(&h.warehouse).await;
    assert!(source.len() >= 200, "{} lines", source.len());
    // Primary key (order_id, line_no) makes "at most once" structural; equality makes it exactly once.
    assert_eq!(facts, source);
}
