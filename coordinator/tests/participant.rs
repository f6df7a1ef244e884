//! The participant module against a real PostgreSQL (max_prepared_transactions on): the barrier
//! algorithm of docs/TRANSACTIONS.md, its races, fault injection and the HTTP routes.
//!
//! The test branch `reserve` works on `stock(id, n)`: apply takes `quantity` from book `id` (refusing
//! an unknown book or short stock), compensate puts it back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::participant::{
    ABORT_RETRY_BUDGET, BARRIER_DDL, BARRIER_LOCK_TIMEOUT, Branch, BranchError, DelayAfter, Gid,
    Op, Participant, ParticipantError, ParticipantFaults, Refusal, SagaState, TwoPcState,
    WORK_LOCK_TIMEOUT, parse_payload,
};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use testkit::TestPostgres;
use uuid::Uuid;

/// Every book starts with this much stock.
const STOCK: i32 = 10;

#[derive(Deserialize)]
struct Take {
    id: i32,
    quantity: i32,
}

/// The honest test branch.
struct Stock {
    name: &'static str,
}

const RESERVE: Stock = Stock { name: "reserve" };

impl Branch for Stock {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let take: Take = parse_payload(payload)?;
            if take.quantity <= 0 {
                return Err(BranchError::Invalid("quantity must be positive".into()));
            }
            let available: Option<i32> =
                sqlx::query_scalar("SELECT n FROM stock WHERE id = $1 FOR UPDATE")
                    .bind(take.id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some(available) = available else {
                return Err(BranchError::refused(
                    "unknown-book",
                    format!("there is no book {}", take.id),
                ));
            };
            if available < take.quantity {
                return Err(Refusal::new(
                    "insufficient-stock",
                    format!("book {}: {available} left", take.id),
                )
                .with(
                    "short",
                    json!([{"book_id": take.id, "requested": take.quantity, "available": available}]),
                )
                .into());
            }
            sqlx::query("UPDATE stock SET n = n - $2 WHERE id = $1")
                .bind(take.id)
                .bind(take.quantity)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let take: Take = parse_payload(payload)?;
            sqlx::query("UPDATE stock SET n = n + $2 WHERE id = $1")
                .bind(take.id)
                .bind(take.quantity)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

/// A branch that breaks the rules: `commit` ends the participant's transaction itself, `swallow`
/// ignores a failed statement; both then claim success after taking stock.
struct Misbehaving {
    name: &'static str,
}

impl Branch for Misbehaving {
    fn name(&self) -> &'static str {
        self.name
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let take: Take = parse_payload(payload)?;
            sqlx::query("UPDATE stock SET n = n - $2 WHERE id = $1")
                .bind(take.id)
                .bind(take.quantity)
                .execute(&mut *conn)
                .await?;
            if self.name == "commit" {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            } else {
                let _ignored = sqlx::query("SELECT 1 / 0").execute(&mut *conn).await;
            }
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The stock branch, slowly: once it holds the barrier key (its work has begun) it says so on
/// `working`, then waits `sleep_ms` before doing the work, so a test can act while it is in flight.
struct Slow {
    working: Arc<tokio::sync::Notify>,
}

impl Branch for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            self.working.notify_one();
            let ms = payload["sleep_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            RESERVE.apply(conn, payload).await
        })
    }

    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        RESERVE.compensate(conn, payload)
    }
}

/// A participant with the slow branch, and the signal it gives when its work begins.
fn with_slow(pool: &PgPool) -> (Arc<Participant>, Arc<tokio::sync::Notify>) {
    let working = Arc::new(tokio::sync::Notify::new());
    let p = participant(pool).with_branch(Slow {
        working: working.clone(),
    });
    (Arc::new(p), working)
}

fn slow_gid() -> Gid {
    Gid::new("bkc", Uuid::now_v7(), "slow").expect("valid gid")
}

fn slow_take(id: i32, quantity: i32, sleep_ms: u64) -> Value {
    json!({"id": id, "quantity": quantity, "sleep_ms": sleep_ms})
}

/// A fresh server with one service database holding the barrier and 100 books of [`STOCK`].
async fn setup() -> anyhow::Result<(TestPostgres, PgPool)> {
    let pg = TestPostgres::start().await?;
    let pool = database(&pg, "books", 20).await?;
    Ok((pg, pool))
}

async fn database(pg: &TestPostgres, name: &str, connections: u32) -> anyhow::Result<PgPool> {
    let url = pg.service_database(name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await?;
    sqlx::raw_sql(BARRIER_DDL).execute(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE stock (id int PRIMARY KEY, n int NOT NULL CHECK (n >= 0)); \
         INSERT INTO stock SELECT g, 10 FROM generate_series(1, 100) g",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

fn participant(pool: &PgPool) -> Participant {
    Participant::new(pool.clone()).with_branch(RESERVE)
}

fn new_gid() -> Gid {
    Gid::new("bkc", Uuid::now_v7(), "reserve").expect("valid gid")
}

fn take(id: i32, quantity: i32) -> Value {
    json!({"id": id, "quantity": quantity})
}

async fn stock(pool: &PgPool, id: i32) -> anyhow::Result<i32> {
    Ok(sqlx::query_scalar("SELECT n FROM stock WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?)
}

/// The barrier rows of `gid`, as `op:kind`, sorted.
async fn barrier(pool: &PgPool, gid: &Gid) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT op || ':' || kind FROM tx_barrier WHERE gid = $1 ORDER BY op")
            .bind(gid.as_str())
            .fetch_all(pool)
            .await?,
    )
}

/// Every prepared transaction of the server (all databases).
async fn prepared_anywhere(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts ORDER BY gid")
            .fetch_all(pool)
            .await?,
    )
}

#[tokio::test]
async fn prepare_then_commit_applies_exactly_once() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();

    assert_eq!(p.prepare(&gid, &take(1, 2)).await?, TwoPcState::Prepared);
    assert_eq!(prepared_anywhere(&pool).await?, vec![gid.to_string()]);
    assert_eq!(stock(&pool, 1).await?, STOCK, "invisible until committed");
    assert_eq!(barrier(&pool, &gid).await?, Vec::<String>::new());

    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 1).await?, STOCK - 2);
    assert_eq!(barrier(&pool, &gid).await?, vec!["prepare:applied"]);
    assert!(prepared_anywhere(&pool).await?.is_empty());

    // Duplicates after the commit: commit again, prepare again, abort.
    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(p.prepare(&gid, &take(1, 2)).await?, TwoPcState::Committed);
    assert!(matches!(
        p.abort(&gid).await,
        Err(ParticipantError::AlreadyCommitted)
    ));
    assert_eq!(stock(&pool, 1).await?, STOCK - 2, "applied once");
    assert!(prepared_anywhere(&pool).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn prepare_then_abort_leaves_nothing_and_blocks_the_gid() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();

    assert_eq!(p.prepare(&gid, &take(1, 3)).await?, TwoPcState::Prepared);
    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert_eq!(stock(&pool, 1).await?, STOCK);
    assert_eq!(barrier(&pool, &gid).await?, vec!["prepare:blocked"]);

    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted, "idempotent");
    assert!(
        matches!(
            p.prepare(&gid, &take(1, 3)).await,
            Err(ParticipantError::Aborted(_))
        ),
        "a prepare delivered after the abort must not prepare again"
    );
    assert!(matches!(
        p.commit(&gid).await,
        Err(ParticipantError::NotPrepared)
    ));
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert_eq!(stock(&pool, 1).await?, STOCK);
    Ok(())
}

#[tokio::test]
async fn a_duplicate_prepare_while_prepared_answers_prepared_after_the_lock_timeout()
-> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();
    assert_eq!(p.prepare(&gid, &take(1, 2)).await?, TwoPcState::Prepared);

    let started = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(5), p.prepare(&gid, &take(1, 2))).await;
    let waited = started.elapsed();
    assert!(matches!(again, Ok(Ok(TwoPcState::Prepared))), "{again:?}");
    assert!(
        // At least the lock timeout (it found the key held); far less than "forever".
        waited >= BARRIER_LOCK_TIMEOUT && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert_eq!(prepared_anywhere(&pool).await?, vec![gid.to_string()]);

    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 1).await?, STOCK - 2, "applied once");
    Ok(())
}

#[tokio::test]
async fn an_abort_before_the_prepare_blocks_it_and_nothing_is_applied() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();

    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);
    assert_eq!(barrier(&pool, &gid).await?, vec!["prepare:blocked"]);
    let late = p.prepare(&gid, &take(1, 4)).await;
    assert!(
        matches!(late, Err(ParticipantError::Aborted(_))),
        "{late:?}"
    );
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert_eq!(stock(&pool, 1).await?, STOCK);
    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);
    Ok(())
}

#[tokio::test]
async fn commit_of_a_gid_never_prepared_is_not_prepared() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();
    assert!(matches!(
        p.commit(&gid).await,
        Err(ParticipantError::NotPrepared)
    ));
    assert!(
        barrier(&pool, &gid).await?.is_empty(),
        "commit writes nothing"
    );
    // …and the gid can still be prepared and committed afterwards.
    assert_eq!(p.prepare(&gid, &take(2, 1)).await?, TwoPcState::Prepared);
    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 2).await?, STOCK - 1);
    Ok(())
}

#[tokio::test]
async fn refusals_and_bad_payloads_keep_nothing() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);

    let gid = new_gid();
    match p.prepare(&gid, &take(1, STOCK + 1)).await {
        Err(ParticipantError::Refused(refusal)) => {
            assert_eq!(refusal.kind, "insufficient-stock");
            assert_eq!(refusal.extra["short"][0]["available"], STOCK);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert!(barrier(&pool, &gid).await?.is_empty(), "no barrier row");
    assert_eq!(stock(&pool, 1).await?, STOCK);
    // A refused gid can be aborted (which blocks it), as the coordinator will.
    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);

    let unknown = new_gid();
    match p.prepare(&unknown, &take(999, 1)).await {
        Err(ParticipantError::Refused(refusal)) => assert_eq!(refusal.kind, "unknown-book"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let bad = new_gid();
    for payload in [json!({"id": "one"}), json!([]), take(1, 0)] {
        let answer = p.prepare(&bad, &payload).await;
        assert!(
            matches!(answer, Err(ParticipantError::Invalid(_))),
            "{payload}: {answer:?}"
        );
    }
    let saga = new_gid();
    assert!(matches!(
        p.action(&saga, &take(1, STOCK + 1)).await,
        Err(ParticipantError::Refused(_))
    ));
    assert!(barrier(&pool, &unknown).await?.is_empty());
    assert!(barrier(&pool, &bad).await?.is_empty());
    assert!(barrier(&pool, &saga).await?.is_empty());
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert_eq!(stock(&pool, 1).await?, STOCK);
    Ok(())
}

#[tokio::test]
async fn an_unknown_branch_is_invalid_and_names_the_known_ones() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool).with_branch(Stock { name: "place" });
    assert_eq!(p.branch_names(), vec!["place", "reserve"]);
    let gid = Gid::new("bkc", Uuid::now_v7(), "ship")?;
    for answer in [
        p.prepare(&gid, &take(1, 1)).await,
        p.commit(&gid).await,
        p.abort(&gid).await,
    ] {
        match answer {
            Err(ParticipantError::Invalid(detail)) => {
                assert!(
                    detail.contains("\"ship\"") && detail.contains("place, reserve"),
                    "{detail}"
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }
    assert!(matches!(
        p.compensate(&gid, &take(1, 1)).await,
        Err(ParticipantError::Invalid(_))
    ));
    assert!(barrier(&pool, &gid).await?.is_empty());
    Ok(())
}

/// Prepare and abort of the same gid sent at the same time (a coordinator that timed out on the
/// prepare and aborts while the prepare is still running), many times over.
#[tokio::test]
async fn concurrent_prepare_and_abort_always_end_aborted_with_nothing_kept() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = Arc::new(participant(&pool));
    let gids: Vec<(i32, Gid)> = (1..=40).map(|id| (id, new_gid())).collect();
    let mut tasks = Vec::new();
    for (i, (id, gid)) in gids.iter().cloned().enumerate() {
        let (p1, p2) = (p.clone(), p.clone());
        let gid2 = gid.clone();
        // Stagger the abort from "before" to "well after" the prepare.
        let delay = Duration::from_millis((i as u64 % 8) * 5);
        tasks.push(tokio::spawn(async move {
            let prepare = async { p1.prepare(&gid, &take(id, 1)).await };
            let abort = async {
                tokio::time::sleep(delay).await;
                loop {
                    match p2.abort(&gid2).await {
                        Err(ParticipantError::Busy(_)) => continue,
                        other => return other,
                    }
                }
            };
            let (prepared, aborted) = tokio::join!(prepare, abort);
            (prepared, aborted)
        }));
    }
    let mut outcomes = BTreeSet::new();
    for task in tasks {
        let (prepared, aborted) = task.await?;
        assert!(
            matches!(aborted, Ok(TwoPcState::Aborted)),
            "abort: {aborted:?}"
        );
        let outcome = match prepared {
            Ok(TwoPcState::Prepared) => "prepared",
            Err(ParticipantError::Aborted(_)) => "blocked",
            Err(ParticipantError::Busy(_)) => "busy",
            other => panic!("prepare: {other:?}"),
        };
        outcomes.insert(outcome);
    }
    // Whatever the interleaving, once every abort answered: nothing is prepared, nothing applied,
    // every gid is blocked, and a late prepare is refused.
    assert!(prepared_anywhere(&pool).await?.is_empty());
    for (id, gid) in &gids {
        assert_eq!(stock(&pool, *id).await?, STOCK, "{gid}");
        assert_eq!(barrier(&pool, gid).await?, vec!["prepare:blocked"], "{gid}");
        assert!(matches!(
            p.prepare(gid, &take(*id, 1)).await,
            Err(ParticipantError::Aborted(_))
        ));
    }
    eprintln!("prepare outcomes seen: {outcomes:?}");
    Ok(())
}

/// An abort that arrives while the prepare is doing its work (holding the barrier key) waits for it
/// and rolls back what it prepared; one that cannot wait long enough is `busy`, and a retry works.
#[tokio::test]
async fn an_abort_during_the_prepare_rolls_back_what_it_prepares() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let (p, working) = with_slow(&pool);

    let gid = slow_gid();
    let preparing = {
        let (p, gid) = (p.clone(), gid.clone());
        tokio::spawn(async move { p.prepare(&gid, &slow_take(1, 1, 1000)).await })
    };
    working.notified().await;
    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);
    assert!(matches!(preparing.await?, Ok(TwoPcState::Prepared)));
    assert!(prepared_anywhere(&pool).await?.is_empty(), "rolled back");
    assert_eq!(barrier(&pool, &gid).await?, vec!["prepare:blocked"]);
    assert_eq!(stock(&pool, 1).await?, STOCK);

    // Longer than the abort's budget: busy, then the retry rolls it back.
    let gid = slow_gid();
    let preparing = {
        let (p, gid) = (p.clone(), gid.clone());
        tokio::spawn(async move { p.prepare(&gid, &slow_take(2, 1, 6000)).await })
    };
    working.notified().await;
    let started = Instant::now();
    let answer = p.abort(&gid).await;
    assert!(
        matches!(answer, Err(ParticipantError::Busy(_))),
        "{answer:?}"
    );
    assert!(
        started.elapsed() >= ABORT_RETRY_BUDGET,
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(preparing.await?, Ok(TwoPcState::Prepared)));
    assert_eq!(p.abort(&gid).await?, TwoPcState::Aborted);
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert_eq!(stock(&pool, 2).await?, STOCK);
    Ok(())
}

/// A copy of a prepare that is still working is `busy`, not `prepared`: the original may yet refuse.
#[tokio::test]
async fn a_duplicate_of_a_prepare_in_flight_is_busy() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let (p, working) = with_slow(&pool);
    let gid = slow_gid();
    let original = {
        let (p, gid) = (p.clone(), gid.clone());
        tokio::spawn(async move { p.prepare(&gid, &slow_take(1, STOCK + 1, 3000)).await })
    };
    working.notified().await;
    let copy = p.prepare(&gid, &slow_take(1, STOCK + 1, 0)).await;
    assert!(matches!(copy, Err(ParticipantError::Busy(_))), "{copy:?}");
    assert!(matches!(original.await?, Err(ParticipantError::Refused(_))));
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert!(barrier(&pool, &gid).await?.is_empty());
    Ok(())
}

/// A compensation that arrives while its action is still running is `busy` (nothing kept); the
/// retry after the action committed undoes it.
#[tokio::test]
async fn a_compensation_during_the_action_is_busy_then_undoes_it() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let (p, working) = with_slow(&pool);
    let gid = slow_gid();
    let acting = {
        let (p, gid) = (p.clone(), gid.clone());
        tokio::spawn(async move { p.action(&gid, &slow_take(3, 2, 3000)).await })
    };
    working.notified().await;
    let answer = p.compensate(&gid, &slow_take(3, 2, 0)).await;
    assert!(
        matches!(answer, Err(ParticipantError::Busy(_))),
        "{answer:?}"
    );
    assert!(
        barrier(&pool, &gid).await?.is_empty(),
        "the busy compensation kept nothing"
    );
    assert!(matches!(acting.await?, Ok(SagaState::Done)));
    assert_eq!(stock(&pool, 3).await?, STOCK - 2);
    assert_eq!(
        p.compensate(&gid, &slow_take(3, 2, 0)).await?,
        SagaState::Compensated
    );
    assert_eq!(stock(&pool, 3).await?, STOCK);
    Ok(())
}

/// Several copies of the same prepare at once (retries racing the original), then the commit:
/// applied exactly once per gid, and no copy ever waits for long.
#[tokio::test]
async fn concurrent_duplicate_prepares_apply_once() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = Arc::new(participant(&pool));
    let gids: Vec<(i32, Gid)> = (1..=20).map(|id| (id, new_gid())).collect();
    let mut tasks = Vec::new();
    for (id, gid) in gids.iter().cloned() {
        for _ in 0..3 {
            let (p, gid) = (p.clone(), gid.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = p.prepare(&gid, &take(id, 1)).await;
                (gid, answer, started.elapsed())
            }));
        }
    }
    let mut prepared = BTreeSet::new();
    for task in tasks {
        let (gid, answer, took) = task.await?;
        match answer {
            Ok(TwoPcState::Prepared) => {
                prepared.insert(gid);
            }
            Err(ParticipantError::Busy(_)) => {}
            other => panic!("{gid}: {other:?}"),
        }
        // Copies queue for connections and each waits out the barrier lock timeout at most: slow
        // on a loaded machine, but never waiting for the commit (which only comes afterwards).
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    assert_eq!(
        prepared.len(),
        gids.len(),
        "every gid prepared by some copy"
    );
    assert_eq!(prepared_anywhere(&pool).await?.len(), gids.len());
    for (id, gid) in &gids {
        assert_eq!(p.commit(gid).await?, TwoPcState::Committed);
        assert_eq!(stock(&pool, *id).await?, STOCK - 1, "{gid}");
    }
    assert!(prepared_anywhere(&pool).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_lock_held_by_another_prepared_branch_is_busy_and_keeps_nothing() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let first = new_gid();
    let second = new_gid();
    assert_eq!(p.prepare(&first, &take(7, 1)).await?, TwoPcState::Prepared);

    let started = Instant::now();
    let answer = p.prepare(&second, &take(7, 1)).await;
    assert!(
        matches!(answer, Err(ParticipantError::Busy(_))),
        "{answer:?}"
    );
    assert!(
        started.elapsed() >= WORK_LOCK_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(barrier(&pool, &second).await?.is_empty(), "nothing kept");
    assert_eq!(prepared_anywhere(&pool).await?, vec![first.to_string()]);

    assert_eq!(p.abort(&first).await?, TwoPcState::Aborted);
    assert_eq!(p.prepare(&second, &take(7, 1)).await?, TwoPcState::Prepared);
    assert_eq!(p.commit(&second).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 7).await?, STOCK - 1);
    Ok(())
}

#[tokio::test]
async fn saga_actions_are_idempotent() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();
    assert_eq!(p.action(&gid, &take(3, 2)).await?, SagaState::Done);
    assert_eq!(stock(&pool, 3).await?, STOCK - 2);
    assert_eq!(p.action(&gid, &take(3, 2)).await?, SagaState::Done);
    assert_eq!(stock(&pool, 3).await?, STOCK - 2, "applied once");
    assert_eq!(barrier(&pool, &gid).await?, vec!["action:applied"]);
    Ok(())
}

#[tokio::test]
async fn compensations_undo_once() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();
    assert_eq!(p.action(&gid, &take(3, 2)).await?, SagaState::Done);
    assert_eq!(
        p.compensate(&gid, &take(3, 2)).await?,
        SagaState::Compensated
    );
    assert_eq!(stock(&pool, 3).await?, STOCK);
    assert_eq!(
        p.compensate(&gid, &take(3, 2)).await?,
        SagaState::Compensated
    );
    assert_eq!(stock(&pool, 3).await?, STOCK, "compensated once");
    assert_eq!(
        barrier(&pool, &gid).await?,
        vec!["action:applied", "compensate:applied"]
    );
    // A retried action after its compensation is the duplicate of one that ran: done, not re-applied.
    assert_eq!(p.action(&gid, &take(3, 2)).await?, SagaState::Done);
    assert_eq!(stock(&pool, 3).await?, STOCK);
    Ok(())
}

#[tokio::test]
async fn a_null_compensation_refuses_the_hanging_action() -> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool);
    let gid = new_gid();
    assert_eq!(
        p.compensate(&gid, &take(4, 2)).await?,
        SagaState::Compensated
    );
    assert_eq!(
        stock(&pool, 4).await?,
        STOCK,
        "nothing to undo, nothing undone"
    );
    assert_eq!(
        barrier(&pool, &gid).await?,
        vec!["action:blocked", "compensate:applied"]
    );
    let late = p.action(&gid, &take(4, 2)).await;
    assert!(
        matches!(late, Err(ParticipantError::Aborted(_))),
        "{late:?}"
    );
    assert_eq!(stock(&pool, 4).await?, STOCK);
    assert_eq!(
        p.compensate(&gid, &take(4, 2)).await?,
        SagaState::Compensated
    );
    assert_eq!(stock(&pool, 4).await?, STOCK);
    Ok(())
}

#[tokio::test]
async fn prepared_lists_only_this_databases_gids_under_the_prefix() -> anyhow::Result<()> {
    let (pg, books) = setup().await?;
    let orders = database(&pg, "orders", 4).await?;
    let books_p = participant(&books);
    let orders_p = Participant::new(orders.clone())
        .with_branch(Stock { name: "place" })
        .with_branch(RESERVE);

    let gxid = Uuid::now_v7();
    let ours = Gid::new("bkc", gxid, "reserve")?;
    let other_cluster = Gid::new("bkcx", Uuid::now_v7(), "reserve")?;
    let other_database = Gid::new("bkc", gxid, "place")?;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    books_p.prepare(&ours, &take(1, 1)).await?;
    books_p.prepare(&other_cluster, &take(2, 1)).await?;
    orders_p.prepare(&other_database, &take(1, 1)).await?;
    assert_eq!(prepared_anywhere(&books).await?.len(), 3);

    let listed = books_p.prepared("bkc:").await?;
    assert_eq!(
        listed.iter().map(|p| p.gid.as_str()).collect::<Vec<_>>(),
        vec![ours.as_str()]
    );
    assert!(listed[0].prepared_at > before && listed[0].prepared_at <= chrono::Utc::now());
    // The age comes from the database's clock and grows with it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = books_p.prepared("bkc:").await?;
    assert!(
        later[0].age_ms >= listed[0].age_ms + 300 && later[0].age_ms < 60_000,
        "{} then {}",
        listed[0].age_ms,
        later[0].age_ms
    );
    let all_books: BTreeSet<String> = books_p
        .prepared("")
        .await?
        .into_iter()
        .map(|p| p.gid)
        .collect();
    assert_eq!(
        all_books,
        BTreeSet::from([ours.to_string(), other_cluster.to_string()])
    );
    assert!(
        books_p.prepared("bk_").await?.is_empty(),
        "`_` is not a wildcard"
    );
    assert!(
        books_p.prepared("%").await?.is_empty(),
        "`%` is not a wildcard"
    );
    assert_eq!(
        orders_p.prepared("bkc:").await?[0].gid,
        other_database.to_string()
    );

    // Gids are unique per server: the same gid cannot be prepared in a second database.
    let clash = orders_p.prepare(&ours, &take(2, 1)).await;
    assert!(
        matches!(&clash, Err(ParticipantError::Internal(d)) if d.contains("another database")),
        "{clash:?}"
    );
    assert!(barrier(&orders, &ours).await?.is_empty());
    assert_eq!(stock(&orders, 2).await?, STOCK);
    Ok(())
}

#[tokio::test]
async fn a_connection_that_prepared_goes_back_to_the_pool_idle() -> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    let pool = database(&pg, "books", 1).await?;
    let p = participant(&pool);
    let (a, b, c) = (new_gid(), new_gid(), new_gid());
    // One connection for everything: a leaked or still-in-transaction connection would make the
    // next operation time out or run inside the prepared transaction.
    assert_eq!(p.prepare(&a, &take(1, 1)).await?, TwoPcState::Prepared);
    assert_eq!(p.prepare(&b, &take(2, 1)).await?, TwoPcState::Prepared);
    assert!(matches!(
        p.prepare(&c, &take(3, 99)).await,
        Err(ParticipantError::Refused(_))
    ));
    assert_eq!(p.action(&c, &take(3, 1)).await?, SagaState::Done);
    let in_transaction: bool =
        sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    assert!(!in_transaction);
    assert_eq!(p.commit(&a).await?, TwoPcState::Committed);
    assert_eq!(p.abort(&b).await?, TwoPcState::Aborted);
    assert_eq!(
        (
            stock(&pool, 1).await?,
            stock(&pool, 2).await?,
            stock(&pool, 3).await?
        ),
        (STOCK - 1, STOCK, STOCK - 1)
    );
    assert_eq!(pool.size(), 1);
    Ok(())
}

#[tokio::test]
async fn a_branch_that_ends_or_breaks_the_transaction_is_caught() -> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    // One connection: one left in a (failed) transaction would break every later query.
    let pool = database(&pg, "books", 1).await?;
    let p = Participant::new(pool.clone())
        .with_branch(Misbehaving { name: "commit" })
        .with_branch(Misbehaving { name: "swallow" });

    let swallow = Gid::new("bkc", Uuid::now_v7(), "swallow")?;
    let answer = p.prepare(&swallow, &take(5, 1)).await;
    assert!(
        matches!(answer, Err(ParticipantError::Internal(_))),
        "{answer:?}"
    );
    assert!(prepared_anywhere(&pool).await?.is_empty());
    assert!(barrier(&pool, &swallow).await?.is_empty());
    let answer = p.action(&swallow, &take(5, 1)).await;
    assert!(
        matches!(answer, Err(ParticipantError::Internal(_))),
        "{answer:?}"
    );
    assert!(barrier(&pool, &swallow).await?.is_empty());
    assert_eq!(stock(&pool, 5).await?, STOCK);

    // The committing branch did commit its work (nothing can undo that), but the participant must
    // not answer "prepared" for a transaction that is not prepared.
    let commit = Gid::new("bkc", Uuid::now_v7(), "commit")?;
    let answer = p.prepare(&commit, &take(6, 1)).await;
    assert!(
        matches!(answer, Err(ParticipantError::Internal(_))),
        "{answer:?}"
    );
    assert!(prepared_anywhere(&pool).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_late_answer_after_prepare_still_prepared_and_a_retry_answers_at_once()
-> anyhow::Result<()> {
    let (_pg, pool) = setup().await?;
    let p = participant(&pool).with_faults(ParticipantFaults {
        delay_after: Some(DelayAfter {
            op: Op::Prepare,
            ms: 60_000,
        }),
        ..ParticipantFaults::default()
    });
    let gid = new_gid();
    // The caller gives up before the answer: an ambiguous outcome where the branch did apply.
    let gave_up = tokio::time::timeout(Duration::from_secs(3), p.prepare(&gid, &take(1, 1))).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    assert_eq!(prepared_anywhere(&pool).await?, vec![gid.to_string()]);
    let started = Instant::now();
    assert_eq!(p.prepare(&gid, &take(1, 1)).await?, TwoPcState::Prepared);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a duplicate is not delayed: {:?}",
        started.elapsed()
    );
    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 1).await?, STOCK - 1);
    Ok(())
}

/// Runs [`crash_child`] in a child process with `crash_after = op` and checks it died by SIGABRT
/// right after the operation made its work durable.
async fn crash_after(op: &str) -> anyhow::Result<(TestPostgres, PgPool, Gid)> {
    let pg = TestPostgres::start().await?;
    let url = pg.service_database("books").await?;
    let pool = database_at(&url).await?;
    let gid = new_gid();
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env("PARTICIPANT_CRASH_URL", &url)
        .env("PARTICIPANT_CRASH_GID", gid.as_str())
        .env("PARTICIPANT_CRASH_OP", op)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    use std::os::unix::process::ExitStatusExt;
    const SIGABRT: i32 = 6;
    assert_eq!(
        output.status.signal(),
        Some(SIGABRT),
        "{:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains(&format!("participant crash after {op}")),
        "{stderr}"
    );
    Ok((pg, pool, gid))
}

async fn database_at(url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
    sqlx::raw_sql(BARRIER_DDL).execute(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE stock (id int PRIMARY KEY, n int NOT NULL CHECK (n >= 0)); \
         INSERT INTO stock SELECT g, 10 FROM generate_series(1, 100) g",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

#[tokio::test]
async fn crash_after_prepare_dies_with_the_branch_prepared() -> anyhow::Result<()> {
    let (_pg, pool, gid) = crash_after("prepare").await?;
    assert_eq!(prepared_anywhere(&pool).await?, vec![gid.to_string()]);
    assert_eq!(stock(&pool, 1).await?, STOCK);
    // Another instance (or the restarted one) finishes phase 2.
    let p = participant(&pool);
    assert_eq!(p.commit(&gid).await?, TwoPcState::Committed);
    assert_eq!(stock(&pool, 1).await?, STOCK - 1);
    Ok(())
}

#[tokio::test]
async fn crash_after_action_dies_with_the_action_committed() -> anyhow::Result<()> {
    let (_pg, pool, gid) = crash_after("action").await?;
    assert_eq!(stock(&pool, 1).await?, STOCK - 1);
    assert_eq!(barrier(&pool, &gid).await?, vec!["action:applied"]);
    let p = participant(&pool);
    assert_eq!(p.action(&gid, &take(1, 1)).await?, SagaState::Done);
    assert_eq!(stock(&pool, 1).await?, STOCK - 1);
    Ok(())
}

/// The child process of [`crash_after`]; does nothing unless started by it.
#[tokio::test]
#[ignore = "run as a child process by the crash_after_* tests"]
async fn crash_child() -> anyhow::Result<()> {
    let (Ok(url), Ok(gid), Ok(op)) = (
        std::env::var("PARTICIPANT_CRASH_URL"),
        std::env::var("PARTICIPANT_CRASH_GID"),
        std::env::var("PARTICIPANT_CRASH_OP"),
    ) else {
        return Ok(());
    };
    let pool = PgPool::connect(&url).await?;
    let gid = Gid::parse(&gid)?;
    let p = participant(&pool).with_faults(ParticipantFaults {
        crash_after: Some(op.parse()?),
        ..ParticipantFaults::default()
    });
    match op.as_str() {
        "prepare" => {
            p.prepare(&gid, &take(1, 1)).await?;
        }
        "action" => {
            p.action(&gid, &take(1, 1)).await?;
        }
        other => anyhow::bail!("no crash scenario for {other}"),
    }
    anyhow::bail!("still alive after {op}: crash_after did not fire")
}

mod routes {
    //! The routes end to end: a real listener, reqwest, the platform's internal credential.

    use super::*;
    use platform::auth::{AuthConfig, TokenVerifier};

    const INTERNAL: &str = "the-internal-credential";

    struct Server {
        base: String,
        client: reqwest::Client,
    }

    impl Server {
        async fn start(p: Participant) -> anyhow::Result<Server> {
            let config = AuthConfig {
                jwt_secret: "a-signing-key-that-is-long-enough-for-hs256".into(),
                internal_token: INTERNAL.into(),
                ..AuthConfig::default()
            };
            let app = p.router(Arc::new(TokenVerifier::new(&config)?));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            tokio::spawn(async move { axum::serve(listener, app).await });
            Ok(Server {
                base,
                client: reqwest::Client::new(),
            })
        }

        /// POSTs `body` (JSON) with the internal credential; answers (status, content type, body).
        async fn post(
            &self,
            path: &str,
            body: Option<Value>,
        ) -> anyhow::Result<(u16, String, Value)> {
            let mut request = self
                .client
                .post(format!("{}{path}", self.base))
                .header("x-internal-token", INTERNAL);
            if let Some(body) = body {
                request = request.json(&body);
            }
            answer(request.send().await?).await
        }

        async fn get(&self, path: &str) -> anyhow::Result<(u16, String, Value)> {
            let request = self
                .client
                .get(format!("{}{path}", self.base))
                .header("x-internal-token", INTERNAL);
            answer(request.send().await?).await
        }
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<(u16, String, Value)> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, content_type, body))
    }

    const PROBLEM: &str = "application/problem+json";

    #[tokio::test]
    async fn every_route_needs_the_internal_credential() -> anyhow::Result<()> {
        let (_pg, pool) = setup().await?;
        let server = Server::start(participant(&pool)).await?;
        let gid = new_gid();
        for (method, path) in [
            ("POST", format!("/internal/2pc/{gid}/prepare")),
            ("POST", format!("/internal/2pc/{gid}/commit")),
            ("POST", format!("/internal/2pc/{gid}/abort")),
            ("GET", "/internal/2pc/prepared?prefix=bkc:".to_string()),
            ("POST", format!("/internal/saga/{gid}/action")),
            ("POST", format!("/internal/saga/{gid}/compensate")),
        ] {
            for token in [None, Some("wrong")] {
                let url = format!("{}{path}", server.base);
                let mut request = match method {
                    "GET" => server.client.get(url),
                    _ => server.client.post(url).json(&take(1, 1)),
                };
                if let Some(token) = token {
                    request = request.header("x-internal-token", token);
                }
                let (status, content_type, _) = answer(request.send().await?).await?;
                assert_eq!((status, content_type.as_str()), (401, PROBLEM), "{path}");
            }
        }
        assert!(barrier(&pool, &gid).await?.is_empty());
        assert_eq!(stock(&pool, 1).await?, STOCK);
        Ok(())
    }

    #[tokio::test]
    async fn two_phase_commit_over_http() -> anyhow::Result<()> {
        let (_pg, pool) = setup().await?;
        let server = Server::start(participant(&pool)).await?;
        let gid = new_gid();
        let prepare = format!("/internal/2pc/{gid}/prepare");
        let commit = format!("/internal/2pc/{gid}/commit");
        let abort = format!("/internal/2pc/{gid}/abort");

        let (status, _, body) = server.post(&prepare, Some(take(1, 2))).await?;
        assert_eq!((status, body), (200, json!({"state": "prepared"})));
        let (status, _, body) = server.post(&prepare, Some(take(1, 2))).await?;
        assert_eq!((status, body), (200, json!({"state": "prepared"})));

        let (status, _, body) = server.get("/internal/2pc/prepared?prefix=bkc:").await?;
        assert_eq!(status, 200);
        assert_eq!(body[0]["gid"], gid.as_str());
        let at = body[0]["prepared_at"].as_str().unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{body}");
        assert!(body[0]["age_ms"].as_u64().is_some(), "{body}");
        let (status, _, body) = server.get("/internal/2pc/prepared?prefix=zzz:").await?;
        assert_eq!((status, body), (200, json!([])));

        for _ in 0..2 {
            let (status, _, body) = server.post(&commit, None).await?;
            assert_eq!((status, body), (200, json!({"state": "committed"})));
        }
        let (status, _, body) = server.post(&prepare, Some(take(1, 2))).await?;
        assert_eq!((status, body), (200, json!({"state": "committed"})));
        let (status, content_type, body) = server.post(&abort, None).await?;
        assert_eq!((status, content_type.as_str()), (409, PROBLEM));
        assert_eq!(body["type"], "/problems/already-committed");
        assert_eq!(stock(&pool, 1).await?, STOCK - 2);

        // Abort first: the late prepare is refused as `aborted`.
        let other = new_gid();
        let (status, _, body) = server
            .post(&format!("/internal/2pc/{other}/abort"), None)
            .await?;
        assert_eq!((status, body), (200, json!({"state": "aborted"})));
        let (status, _, body) = server
            .post(&format!("/internal/2pc/{other}/prepare"), Some(take(1, 1)))
            .await?;
        assert_eq!((status, &body["type"]), (409, &json!("/problems/aborted")));

        // Commit of something never prepared.
        let (status, _, body) = server
            .post(&format!("/internal/2pc/{}/commit", new_gid()), None)
            .await?;
        assert_eq!(
            (status, &body["type"]),
            (409, &json!("/problems/not-prepared"))
        );
        Ok(())
    }

    #[tokio::test]
    async fn refusals_bad_input_and_busy_over_http() -> anyhow::Result<()> {
        let (_pg, pool) = setup().await?;
        let server = Server::start(participant(&pool)).await?;

        let (status, content_type, body) = server
            .post(
                &format!("/internal/2pc/{}/prepare", new_gid()),
                Some(take(1, 99)),
            )
            .await?;
        assert_eq!((status, content_type.as_str()), (409, PROBLEM));
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("refused")),
            "{body}"
        );
        assert_eq!(body["refusal"]["kind"], "insufficient-stock");
        assert_eq!(
            body["refusal"]["short"],
            json!([{"book_id": 1, "requested": 99, "available": 10}])
        );
        assert_eq!(body["detail"], body["refusal"]["detail"]);

        let unknown_branch = Gid::new("bkc", Uuid::now_v7(), "ship")?;
        let (status, _, body) = server
            .post(
                &format!("/internal/2pc/{unknown_branch}/prepare"),
                Some(take(1, 1)),
            )
            .await?;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("reserve")),
            "{body}"
        );

        let (status, content_type, _) = server
            .post(
                &format!("/internal/saga/{}/action", new_gid()),
                Some(json!({"id": "x"})),
            )
            .await?;
        assert_eq!((status, content_type.as_str()), (422, PROBLEM));

        for bad in [
            "bkc:not-a-uuid:reserve",
            "bkc:0192f3c4-5a6b-7c8d-9eaf-0123456789ab:x%27%3B%20DROP%20TABLE%20stock%3B--",
            "BKC:0192f3c4-5a6b-7c8d-9eaf-0123456789ab:reserve",
            "%FF",
        ] {
            let (status, content_type, body) = server
                .post(&format!("/internal/2pc/{bad}/prepare"), Some(take(1, 1)))
                .await?;
            assert_eq!(
                (status, content_type.as_str()),
                (400, PROBLEM),
                "{bad}: {body}"
            );
            let (status, _, _) = server
                .post(&format!("/internal/2pc/{bad}/commit"), None)
                .await?;
            assert_eq!(status, 400, "{bad}");
        }
        let (status, _, _) = server.get("/internal/2pc/prepared").await?;
        assert_eq!(status, 400, "the prefix is required");
        let response = server
            .client
            .post(format!(
                "{}/internal/2pc/{}/prepare",
                server.base,
                new_gid()
            ))
            .header("x-internal-token", INTERNAL)
            .body("{}")
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 415, "the body must be JSON");

        // Busy: book 7 is locked by a prepared branch.
        let holder = new_gid();
        let (status, _, _) = server
            .post(&format!("/internal/2pc/{holder}/prepare"), Some(take(7, 1)))
            .await?;
        assert_eq!(status, 200);
        let response = server
            .client
            .post(format!(
                "{}/internal/2pc/{}/prepare",
                server.base,
                new_gid()
            ))
            .header("x-internal-token", INTERNAL)
            .json(&take(7, 1))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let (_, _, body) = answer(response).await?;
        assert_eq!(body["type"], "/problems/busy");

        assert_eq!(stock(&pool, 1).await?, STOCK);
        assert_eq!(prepared_anywhere(&pool).await?, vec![holder.to_string()]);
        Ok(())
    }

    #[tokio::test]
    async fn sagas_over_http() -> anyhow::Result<()> {
        let (_pg, pool) = setup().await?;
        let server = Server::start(participant(&pool)).await?;
        let gid = new_gid();
        for _ in 0..2 {
            let (status, _, body) = server
                .post(&format!("/internal/saga/{gid}/action"), Some(take(2, 3)))
                .await?;
            assert_eq!((status, body), (200, json!({"state": "done"})));
        }
        assert_eq!(stock(&pool, 2).await?, STOCK - 3);
        for _ in 0..2 {
            let (status, _, body) = server
                .post(
                    &format!("/internal/saga/{gid}/compensate"),
                    Some(take(2, 3)),
                )
                .await?;
            assert_eq!((status, body), (200, json!({"state": "compensated"})));
        }
        assert_eq!(stock(&pool, 2).await?, STOCK);

        let never_ran = new_gid();
        let (status, _, body) = server
            .post(
                &format!("/internal/saga/{never_ran}/compensate"),
                Some(take(2, 3)),
            )
            .await?;
        assert_eq!((status, body), (200, json!({"state": "compensated"})));
        let (status, content_type, body) = server
            .post(
                &format!("/internal/saga/{never_ran}/action"),
                Some(take(2, 3)),
            )
            .await?;
        assert_eq!((status, content_type.as_str()), (409, PROBLEM));
        assert_eq!(body["type"], "/problems/aborted");

        let refused = new_gid();
        let (status, _, body) = server
            .post(
                &format!("/internal/saga/{refused}/action"),
                Some(take(2, 11)),
            )
            .await?;
        assert_eq!((status, &body["type"]), (409, &json!("/problems/refused")));
        assert_eq!(stock(&pool, 2).await?, STOCK);
        Ok(())
    }
}
