//! The books' rating totals (`book_rating_totals`) are maintained by the persisters'
//! batches from each upsert's old and new stars, not recomputed — so they must stay exactly the
//! rows' through everything that delivers an entry twice or out of order: a batch replayed after a
//! crash between its commit and its `XACK`, an entry claimed from a persister that was only slow,
//! a customer re-rating a book inside one batch or across batches, and two persisters (one per
//! books instance) committing batches for the same books at the same time.
//!
//! These tests drive `persist`/`apply` directly on a real PostgreSQL, with stream ids chosen by the
//! test, so each delivery order is exact; the ratings tests drive the same code through Redis.

use std::collections::HashMap;
use std::time::Duration;

use books::ratings::StreamRating;
use books::ratings::persister::{apply, persist};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{
    TestApp, assert_rating_totals_match_rows, book, id_of, rating_totals_off, spawn_app_with,
};

/// One stream entry: its id (`ms`, `seq`) and the rating.
type Entry = ((i64, i64), StreamRating);

fn entry(ms: i64, customer: Uuid, book: Uuid, stars: i16) -> Entry {
    (
        (ms, 0),
        StreamRating {
            rating_id: Uuid::now_v7(),
            customer_id: customer,
            book_id: book,
            stars,
            text: None,
            at_ms: ms,
        },
    )
}

/// An app without a cache ring, so no persister of its own runs; the superuser pool; `n` books.
async fn books(n: u64) -> (TestApp, PgPool, Vec<Uuid>) {
    let app = spawn_app_with(|_| {}).await;
    let db = PgPool::connect(&app.pg.admin_url("books"))
        .await
        .expect("superuser pool");
    let mut ids = Vec::new();
    for i in 1..=n {
        let id = id_of(&app.create_book(&book(i)).await);
        ids.push(id.parse().expect("a book id"));
    }
    (app, db, ids)
}

async fn totals(db: &PgPool, book: Uuid) -> (i64, i64) {
    sqlx::query_as("SELECT rating_count, rating_sum FROM book_rating_totals WHERE book_id = $1")
        .bind(book)
        .fetch_one(db)
        .await
        .expect("totals")
}

async fn stars_of(db: &PgPool, customer: Uuid, book: Uuid) -> i16 {
    sqlx::query_scalar("SELECT stars FROM ratings WHERE customer_id = $1 AND book_id = $2")
        .bind(customer)
        .bind(book)
        .fetch_one(db)
        .await
        .expect("the rating row")
}

#[tokio::test]
async fn a_batch_replayed_after_its_commit_counts_nothing_twice() {
    let (_app, db, books) = books(2).await;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let batch = vec![
        entry(10, ann, books[0], 4),
        entry(11, bob, books[0], 2),
        entry(12, ann, books[1], 5),
    ];
    persist(&db, batch.clone()).await.expect("the batch");
    assert_eq!(totals(&db, books[0]).await, (2, 6));
    // The persister died between its commit and its XACK: the same entries come again, whole and
    // in part, from itself or from the instance that claimed them.
    persist(&db, batch.clone()).await.expect("the replay");
    persist(&db, batch[1..].to_vec())
        .await
        .expect("a partial replay");
    assert_eq!(totals(&db, books[0]).await, (2, 6));
    assert_eq!(totals(&db, books[1]).await, (1, 5));
    assert_rating_totals_match_rows(&db).await;
}

#[tokio::test]
async fn a_customer_re_rating_a_book_inside_one_batch_counts_once_with_the_latest_stars() {
    let (_app, db, books) = books(1).await;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    // Listed out of stream order: the later entry (13) wins, wherever it sits in the batch.
    let batch = vec![
        entry(13, ann, books[0], 5),
        entry(11, ann, books[0], 1),
        entry(12, bob, books[0], 3),
        entry(10, ann, books[0], 2),
    ];
    persist(&db, batch).await.expect("the batch");
    assert_eq!(totals(&db, books[0]).await, (2, 8));
    assert_eq!(stars_of(&db, ann, books[0]).await, 5);
    assert_rating_totals_match_rows(&db).await;
}

#[tokio::test]
async fn a_re_rating_in_a_later_batch_replaces_the_stars_and_an_older_entry_arriving_late_changes_nothing()
 {
    let (_app, db, books) = books(1).await;
    let ann = Uuid::now_v7();
    let first = entry(10, ann, books[0], 2);
    persist(&db, vec![first.clone()]).await.expect("first");
    assert_eq!(totals(&db, books[0]).await, (1, 2));
    persist(&db, vec![entry(20, ann, books[0], 5)])
        .await
        .expect("re-rated");
    assert_eq!(totals(&db, books[0]).await, (1, 5));
    // The first entry again (a replay), and one older than the stored rating that was delivered
    // late (claimed from a slow persister): neither replaces the later rating nor counts.
    persist(&db, vec![first, entry(15, ann, books[0], 1)])
        .await
        .expect("late entries");
    assert_eq!(totals(&db, books[0]).await, (1, 5));
    assert_eq!(stars_of(&db, ann, books[0]).await, 5);
    // Persisted before an older one of the same pair (two persisters, out of order).
    let bob = Uuid::now_v7();
    persist(&db, vec![entry(40, bob, books[0], 4)])
        .await
        .expect("bob's later rating first");
    persist(&db, vec![entry(30, bob, books[0], 1)])
        .await
        .expect("bob's earlier rating after it");
    assert_eq!(totals(&db, books[0]).await, (2, 9));
    assert_rating_totals_match_rows(&db).await;
}

/// Two persisters, one batch each, for the same pairs: the first holds its transaction open (the
/// books locked) while the second waits for the locks; then the first commits. The second must
/// take what the first committed as the old stars — a row the first re-rated, and a row the first
/// created — or it counts the new row twice and takes away the wrong old stars.
#[tokio::test]
async fn a_batch_waiting_for_another_persisters_locks_moves_the_totals_from_what_that_one_committed()
 {
    let (_app, db, books) = books(2).await;
    let (ann, carl) = (Uuid::now_v7(), Uuid::now_v7());
    persist(&db, vec![entry(1, ann, books[0], 5)])
        .await
        .expect("ann's first rating");

    let mut first = db.begin().await.expect("a transaction");
    apply(
        &mut first,
        vec![
            entry(2, ann, books[0], 4),
            entry(2, carl, books[0], 2),
            entry(2, carl, books[1], 1),
        ],
    )
    .await
    .expect("the first batch");
    let second = {
        let (db, books) = (db.clone(), books.clone());
        tokio::spawn(async move {
            persist(
                &db,
                vec![
                    entry(3, ann, books[0], 3),
                    entry(3, carl, books[0], 5),
                    entry(3, carl, books[1], 3),
                ],
            )
            .await
        })
    };
    // The second batch is waiting for the books' locks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE wait_event_type = 'Lock' AND datname = 'books' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&db)
        .await
        .expect("waiting");
        if waiting == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no batch waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.commit().await.expect("commit the first batch");
    second
        .await
        .expect("the second batch ran")
        .expect("persisted");

    assert_eq!(totals(&db, books[0]).await, (2, 8), "ann 3, carl 5");
    assert_eq!(totals(&db, books[1]).await, (1, 3), "carl 3");
    assert_rating_totals_match_rows(&db).await;
}

/// Two persisters working the same stream at full speed, as the two books instances do: entries
/// of a few customers re-rating a few books, delivered in batches to one persister or the other,
/// some batches delivered again (replayed or claimed) to either, in any order. The totals equal the
/// rows at every moment (checked while they run), and at the end every pair holds its latest
/// entry's stars.
#[tokio::test]
async fn two_persisters_racing_over_the_same_books_keep_the_totals_equal_to_the_rows() {
    let (_app, db, books) = books(3).await;
    let customers: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let entries: Vec<Entry> = (0..600)
        .map(|n| {
            let customer = customers[rng.random_range(0..customers.len())];
            let book = books[rng.random_range(0..books.len())];
            entry(1_000 + n, customer, book, rng.random_range(1..=5))
        })
        .collect();
    let mut latest: HashMap<(Uuid, Uuid), i16> = HashMap::new();
    for (_, r) in &entries {
        latest.insert((r.customer_id, r.book_id), r.stars);
    }
    // Batches of 1–12 entries; each goes to persister 0 or 1, and one in three goes to both (a
    // replay after a crash, or a claim from a persister that was only slow).
    let mut work: [Vec<Vec<Entry>>; 2] = [Vec::new(), Vec::new()];
    let mut rest = entries.as_slice();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(rng.random_range(1..=12).min(rest.len()));
        rest = tail;
        let to = rng.random_range(0..2);
        work[to].push(batch.to_vec());
        if rng.random_range(0..3) == 0 {
            let mut again = batch.to_vec();
            again.shuffle(&mut rng);
            work[1 - to].push(again);
        }
    }
    let [a, b] = work;
    let run = |batches: Vec<Vec<Entry>>| {
        let db = db.clone();
        tokio::spawn(async move {
            for batch in batches {
                persist(&db, batch).await.expect("a batch");
            }
        })
    };
    let (a, b) = (run(a), run(b));
    let mut checks = 0;
    while !(a.is_finished() && b.is_finished()) {
        let off = rating_totals_off(&db).await;
        assert!(off.is_empty(), "seed {seed}: totals off mid-run: {off:#?}");
        checks += 1;
    }
    a.await.expect("persister a");
    b.await.expect("persister b");
    assert!(checks > 0);

    assert_rating_totals_match_rows(&db).await;
    let rows: Vec<(Uuid, Uuid, i16)> =
        sqlx::query_as("SELECT customer_id, book_id, stars FROM ratings")
            .fetch_all(&db)
            .await
            .expect("rows");
    let stored: HashMap<(Uuid, Uuid), i16> =
        rows.into_iter().map(|(c, b, s)| ((c, b), s)).collect();
    assert_eq!(
        stored, latest,
        "seed {seed}: every pair holds its latest entry"
    );
    for book in &books {
        let (count, sum) = totals(&db, *book).await;
        let want: Vec<i16> = latest
            .iter()
            .filter(|((_, b), _)| b == book)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            (count, sum),
            (want.len() as i64, want.iter().map(|s| i64::from(*s)).sum()),
            "seed {seed}"
        );
    }
}

/// The totals row of `book`: its row version (`xmin`) and `updated_at`.
async fn totals_version(db: &PgPool, book: Uuid) -> (String, chrono::DateTime<chrono::Utc>) {
    sqlx::query_as("SELECT xmin::text, updated_at FROM book_rating_totals WHERE book_id = $1")
        .bind(book)
        .fetch_one(db)
        .await
        .expect("totals row")
}

#[tokio::test]
async fn a_batch_that_leaves_a_books_totals_as_they_were_neither_rewrites_them_nor_names_the_book()
{
    let (_app, db, books) = books(2).await;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let moved = persist(
        &db,
        vec![entry(10, ann, books[0], 4), entry(11, bob, books[1], 2)],
    )
    .await
    .expect("first ratings");
    let mut sorted = books.clone();
    sorted.sort();
    let mut moved_sorted = moved.clone();
    moved_sorted.sort();
    assert_eq!(moved_sorted, sorted, "new ratings move both books");
    let before = totals_version(&db, books[0]).await;
    // Ann re-rates with the same stars (the rating row is replaced) and Bob with new ones; the
    // first batch replayed besides.
    let moved = persist(
        &db,
        vec![
            entry(20, ann, books[0], 4),
            entry(21, bob, books[1], 5),
            entry(10, ann, books[0], 4),
        ],
    )
    .await
    .expect("re-ratings");
    assert_eq!(moved, vec![books[1]], "only Bob's book changed");
    assert_eq!(
        totals_version(&db, books[0]).await,
        before,
        "Ann's book's totals row rewritten"
    );
    assert_eq!(totals(&db, books[0]).await, (1, 4));
    assert_eq!(totals(&db, books[1]).await, (1, 5));
    let stream_ms: i64 =
        sqlx::query_scalar("SELECT stream_ms FROM ratings WHERE customer_id = $1 AND book_id = $2")
            .bind(ann)
            .bind(books[0])
            .fetch_one(&db)
            .await
            .expect("Ann's row");
    assert_eq!(
        stream_ms, 20,
        "the same-stars re-rating still replaced the row"
    );
    // Two entries of one pair in one batch, the later (the one kept) with the stars already
    // stored: no change.
    let moved = persist(
        &db,
        vec![entry(30, ann, books[0], 3), entry(31, ann, books[0], 4)],
    )
    .await
    .expect("cancelling re-ratings");
    assert!(moved.is_empty(), "{moved:?}");
    assert_rating_totals_match_rows(&db).await;
}

/// A re-rating rewrites its row as a HOT update (migration 0005): no indexed column changes — the
/// rating's new id is not indexed — and the table's pages keep room for the new version, so the
/// upsert adds nothing to the indexes (nor to the WAL the replicas replay). Each batch is its own
/// transaction, as the persisters' are, and is counted by PostgreSQL's per-transaction counters,
/// which are exact. (20 rows and three versions of each fit on one 8 kB page, so no batch depends
/// on pruning; with `ratings_rating_id_key` none of the updates is HOT.)
#[tokio::test]
async fn re_ratings_are_hot_updates_that_touch_no_index() {
    let (_app, db, books) = books(2).await;
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for (ms, stars) in [(1, 3), (2, 5), (3, 4)] {
        let batch: Vec<Entry> = customers
            .iter()
            .flat_map(|c| books.iter().map(move |b| entry(ms, *c, *b, stars)))
            .collect();
        let mut tx = db.begin().await.expect("a transaction");
        apply(&mut tx, batch).await.expect("a batch");
        let (updated, hot): (i64, i64) = sqlx::query_as(
            "SELECT pg_stat_get_xact_tuples_updated('ratings'::regclass),
                    pg_stat_get_xact_tuples_hot_updated('ratings'::regclass)",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("the transaction's counters");
        tx.commit().await.expect("commit");
        assert_eq!(updated, if ms == 1 { 0 } else { 20 }, "batch {ms}: updates");
        assert_eq!(
            hot, updated,
            "batch {ms}: re-ratings that were not HOT updates"
        );
    }
    assert_eq!(totals(&db, books[0]).await, (10, 40));
    assert_rating_totals_match_rows(&db).await;
}
