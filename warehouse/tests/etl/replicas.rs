//! Reading a replicated source: a run reads one replica for both databases when one qualifies and
//! the primary otherwise, never reads a replica behind the last run, stays exactly-once while
//! orders commit on the primary, and reads everything again after a failover that reused
//! transaction ids (docs/WAREHOUSE.md, "Reading from replicas").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use testkit::ReplicaOptions;
use uuid::Uuid;
use warehouse::etl::runs::{self, RunRecord};
use warehouse::etl::{EtlSettings, Mode, Trigger};
use warehouse::progress::Quiet;

use crate::consistency::snapshot;
use crate::helpers::Harness;

fn settings(replica_wait_seconds: u64) -> EtlSettings {
    EtlSettings {
        batch_rows: 50,
        replica_wait_seconds,
        ..EtlSettings::default()
    }
}

/// One incremental run of `h.etl`, which must succeed; its `etl_runs` row.
async fn run(h: &Harness) -> RunRecord {
    let report = h.load(Mode::Incremental).await;
    runs::find(&h.warehouse, report.id)
        .await
        .expect("run record")
        .expect("the run is recorded")
}

fn member(pg: &testkit::TestPostgres) -> String {
    format!("127.0.0.1:{}", pg.port())
}

async fn seed(h: &Harness, orders: usize) -> (Uuid, Uuid) {
    let book = h.book("Dune", "Herbert", "sf", 1200).await;
    let customer = h.customer("Reader").await;
    for _ in 0..orders {
        h.order(customer, &[(book, 1, 1200)]).await;
    }
    (book, customer)
}

async fn admin(pg: &testkit::TestPostgres) -> PgPool {
    PgPool::connect(&pg.admin_url("postgres"))
        .await
        .expect("admin pool")
}

async fn fact_orders(h: &Harness) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT DISTINCT order_id FROM fact_sales")
        .fetch_all(&h.warehouse)
        .await
        .expect("fact orders")
}

/// Stops `replica`'s WAL receiver (it keeps serving reads at the position it has); returns its
/// `primary_conninfo` for [`reattach`].
async fn detach(replica: &testkit::TestPostgres, admin: &PgPool) -> String {
    let conninfo: String = sqlx::query_scalar("SELECT current_setting('primary_conninfo')")
        .fetch_one(admin)
        .await
        .expect("primary_conninfo");
    set_conninfo(admin, "").await;
    testkit::replication::wait_sql(
        &replica.admin_url("postgres"),
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)",
        "the replica to stop receiving",
    )
    .await
    .expect("replica detached");
    conninfo
}

/// Streams again from the primary.
async fn reattach(admin: &PgPool, conninfo: &str) {
    set_conninfo(admin, conninfo).await;
}

async fn set_conninfo(admin: &PgPool, conninfo: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER SYSTEM SET primary_conninfo = '{}'",
        conninfo.replace('\'', "''")
    )))
    .execute(admin)
    .await
    .expect("set primary_conninfo");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(admin)
        .await
        .expect("reload");
}

/// The WAL position stored with the orders watermark.
async fn orders_lsn(h: &Harness) -> String {
    sqlx::query_scalar("SELECT lsn::text FROM etl_watermarks WHERE source = 'orders'")
        .fetch_one(&h.warehouse)
        .await
        .expect("orders watermark")
}

#[tokio::test]
async fn a_run_reads_a_replica_the_passive_one_first_and_the_primary_when_none_qualifies() {
    let mut h = Harness::start_with_replicas(
        &[
            ReplicaOptions::named("r1"),
            ReplicaOptions::named("r2").setting("bookstore.nofailover", "on"),
        ],
        settings(1),
    )
    .await;
    seed(&h, 3).await;
    h.set().wait_caught_up(0).await.expect("r1 caught up");
    h.set().wait_caught_up(1).await.expect("r2 caught up");
    let passive = member(&h.set().replicas[1]);
    let first = run(&h).await;
    assert_eq!(
        first.source.as_deref(),
        Some(format!("replica {passive}").as_str())
    );
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );

    // The replicas stop: no member qualifies, the run reads the primary.
    h.set_mut().replicas.clear();
    let customer = h.customer("Later").await;
    let book = h.book("Emma", "Austen", "classic", 900).await;
    h.order(customer, &[(book, 2, 900)]).await;
    let second = run(&h).await;
    let primary = member(&h.set().primary);
    assert_eq!(
        second.source.as_deref(),
        Some(format!("primary {primary}").as_str())
    );
    assert_eq!(second.reread, None);
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}

#[tokio::test]
async fn every_committed_line_appears_exactly_once_while_orders_commit_on_the_primary_and_runs_read_a_replica()
 {
    let h = Arc::new(Harness::start_replicated(1, settings(10)).await);
    let mut books = Vec::new();
    for n in 0..5 {
        books.push(
            h.book(&format!("Book {n}"), "Author", "fiction", 100 + n)
                .await,
        );
    }
    let customer = h.customer("Busy").await;
    h.set().wait_caught_up(0).await.expect("caught up");
    let replica = format!("replica {}", member(&h.set().replicas[0]));
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
                    tokio::time::sleep(Duration::from_millis(30)).await;
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
    h.run_until_200_lines(|| async {
        let record = run(&h).await;
        assert_eq!(record.source.as_deref(), Some(replica.as_str()));
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    // The replica replays everything the primary has inserted, then the last run reads it there.
    h.set().wait_caught_up(0).await.expect("caught up");
    let last = run(&h).await;
    assert_eq!(last.source.as_deref(), Some(replica.as_str()));
    let source = h.source_lines().await;
    assert!(source.len() >= 200, "{} lines", source.len());
    // Primary key (order_id, line_no) makes "at most once" structural; equality makes it exactly once.
    assert_eq!(Harness::fact_lines(&h.warehouse).await, source);
}

#[tokio::test]
async fn a_replica_switch_between_runs_waits_for_the_new_replica_and_loses_or_duplicates_nothing() {
    let mut h = Harness::start_replicated(2, settings(20)).await;
    let (book, customer) = seed(&h, 2).await;
    h.set().wait_caught_up(0).await.expect("r1 caught up");
    h.set().wait_caught_up(1).await.expect("r2 caught up");
    run(&h).await;
    let r1 = member(&h.set().replicas[0]);
    let r2 = member(&h.set().replicas[1]);

    // r2 stops receiving WAL (it keeps serving reads where it is, its lag in bytes small and in
    // seconds zero, so it stays a candidate); orders commit; r1 has them and serves the next run.
    let r2_admin = admin(&h.set().replicas[1]).await;
    let conninfo = detach(&h.set().replicas[1], &r2_admin).await;
    for _ in 0..5 {
        h.order(customer, &[(book, 1, 1200)]).await;
    }
    h.set().wait_caught_up(0).await.expect("r1 caught up");
    // Let the ETL's cluster pool probe both (every 500 ms): r1 is now the least lagging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = run(&h).await;
    assert_eq!(
        first.source.as_deref(),
        Some(format!("replica {r1}").as_str())
    );
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
    let first_lsn = orders_lsn(&h).await;

    // r1 stops; r2 is behind the last run: the next run waits until r2 replays past it.
    drop(h.set_mut().replicas.remove(0));
    for _ in 0..5 {
        h.order(customer, &[(book, 3, 1200)]).await;
    }
    let resume = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        reattach(&r2_admin, &conninfo).await;
    });
    let second = run(&h).await;
    resume.await.expect("resumed");
    assert_eq!(
        second.source.as_deref(),
        Some(format!("replica {r2}").as_str())
    );
    let moved_forward: bool =
        sqlx::query_scalar("SELECT lsn >= $1::pg_lsn FROM etl_watermarks WHERE source = 'orders'")
            .bind(&first_lsn)
            .fetch_one(&h.warehouse)
            .await
            .expect("compare positions");
    assert!(moved_forward, "the watermark moved back behind {first_lsn}");

    h.set().wait_caught_up(0).await.expect("r2 caught up");
    let last = run(&h).await;
    assert_eq!(
        last.source.as_deref(),
        Some(format!("replica {r2}").as_str())
    );
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}

#[tokio::test]
async fn after_a_failover_that_reuses_transaction_ids_the_next_run_reads_everything_again() {
    let mut h = Harness::start_replicated(1, settings(2)).await;
    let (book, customer) = seed(&h, 3).await;
    h.set().wait_caught_up(0).await.expect("caught up");
    let first = run(&h).await;
    assert!(first.source.is_some_and(|s| s.starts_with("replica")));

    // Asynchronous replication loses the primary's last transactions when it dies: r1 stops
    // receiving, the primary commits transactions r1 never sees — an order and a rating, and many
    // in another database — and a run reading the primary loads them and moves the watermark past
    // them.
    let r1_admin = admin(&h.set().replicas[0]).await;
    detach(&h.set().replicas[0], &r1_admin).await;
    let primary_admin = admin(&h.set().primary).await;
    for _ in 0..300 {
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&primary_admin)
            .await
            .expect("a transaction r1 never sees");
    }
    primary_admin.close().await;
    let lost = h.order(customer, &[(book, 9, 1200)]).await;
    h.rate(customer, book, 5).await;
    let on_primary = Harness::etl_for(h.pg(), &h.warehouse_url).await;
    let report = on_primary
        .run(Uuid::now_v7(), Mode::Incremental, Trigger::Manual, &Quiet)
        .await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert!(fact_orders(&h).await.contains(&lost));
    let watermark: i64 = sqlx::query_scalar(
        "SELECT split_part(snapshot, ':', 1)::bigint FROM etl_watermarks WHERE source = 'orders'",
    )
    .fetch_one(&h.warehouse)
    .await
    .expect("watermark");

    // The primary dies; r1 is promoted and hands out those transaction ids again.
    h.set_mut().primary.server_mut().stop_immediately();
    sqlx::query("SELECT pg_promote(true, 60)")
        .execute(&r1_admin)
        .await
        .expect("promote r1");
    let new_primary_name = member(&h.set().replicas[0]);
    let (orders_url, books_url) = (
        h.set().replicas[0].role_url("orders", "orders"),
        h.set().replicas[0].role_url("books", "books"),
    );
    h.orders = PgPool::connect(&orders_url).await.expect("orders on r1");
    h.books = PgPool::connect(&books_url).await.expect("books on r1");
    let mut reused = Vec::new();
    for _ in 0..3 {
        let order = h.order(customer, &[(book, 4, 1200)]).await;
        let xid: i64 = sqlx::query_scalar("SELECT xmin::text::bigint FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&h.orders)
            .await
            .expect("xmin");
        reused.push(xid);
    }
    assert!(
        reused.iter().all(|xid| *xid < watermark),
        "the test needs reused ids: {reused:?} vs watermark {watermark}"
    );

    // The ETL's cluster pool finds the new primary within a probe or two; then the run notices the
    // new timeline and reads everything again.
    let mut attempt = 0;
    let report = loop {
        let report = h
            .etl
            .run(Uuid::now_v7(), Mode::Incremental, Trigger::Manual, &Quiet)
            .await;
        attempt += 1;
        if report.succeeded() || attempt == 40 {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(report.succeeded(), "{:?}", report.error);
    let record = runs::find(&h.warehouse, report.id)
        .await
        .expect("record")
        .expect("recorded");
    assert!(
        record
            .reread
            .as_deref()
            .is_some_and(|r| r.contains("history changed")),
        "{:?}",
        record.reread
    );
    assert_eq!(
        record.source.as_deref(),
        Some(format!("primary {new_primary_name}").as_str())
    );
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
    assert!(
        !fact_orders(&h).await.contains(&lost),
        "the order the failover lost is still in the warehouse"
    );

    // And the warehouse equals a full load of the new primary (the lost rating is gone too).
    let (full_pool, full) = h
        .second_warehouse_over("warehousefull", &h.set().replicas[0])
        .await;
    let report = full
        .run(Uuid::now_v7(), Mode::Full, Trigger::Manual, &Quiet)
        .await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert_eq!(snapshot(&h.warehouse).await, snapshot(&full_pool).await);
}
