//! Ratings written behind: accepted into a Redis Stream (202), persisted into PostgreSQL by the
//! persisters, shown on the book and the leaderboard — and never lost when the database is away or a
//! persister dies with entries it had not acknowledged.

use std::time::Duration;

use books::{Application, Config};
use platform::auth::Role;
use platform::cache::CacheConfig;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestRedis;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{
    TestApp, admin_bearer, assert_problem, assert_rating_totals_match_rows, auth_config, book,
    id_of, spawn_app_with, token_for,
};

const STREAM: &str = "books:ratings";

fn customer() -> (Uuid, String) {
    let id = Uuid::now_v7();
    (
        id,
        format!("Bearer {}", token_for(&id.to_string(), Role::Customer)),
    )
}

async fn app_with_redis(redis: &TestRedis, claim_idle_ms: u64) -> TestApp {
    let node = redis.addr();
    spawn_app_with(move |c| {
        c.cache.ring = CacheConfig {
            nodes: vec![node],
            health_interval_ms: 50,
            ..CacheConfig::default()
        };
        c.ratings.claim_idle_ms = claim_idle_ms;
        // Small batches: a backlog drains in several transactions, each of which must leave the
        // totals equal to the rows.
        c.ratings.batch_size = 7;
        c.ratings.retry_backoff_ms = 100;
        c.db.acquire_timeout_ms = 500;
    })
    .await
}

async fn rate(app: &TestApp, book: &str, bearer: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/books/{book}/ratings")))
        .header("authorization", bearer)
        .json(&body)
        .send()
        .await
        .expect("POST ratings")
}

async fn superuser(app: &TestApp) -> PgPool {
    PgPool::connect(&app.pg.admin_url("books"))
        .await
        .expect("superuser pool")
}

async fn redis_conn(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}/1", redis.addr()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection")
}

/// Takes the database away from the service: the books role can no longer log in, and its
/// connections are cut (the superuser still reads the tables).
async fn lock_out_books(db: &PgPool) {
    sqlx::query("ALTER ROLE books NOLOGIN")
        .execute(db)
        .await
        .expect("nologin");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'books'")
        .execute(db)
        .await
        .expect("terminate");
}

/// Waits until `sql` (a count) reaches `want`, or panics with what it was.
async fn wait_for_count(db: &PgPool, sql: &'static str, want: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(db).await.expect("count");
        if count == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {count}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries delivered and not acknowledged in the persisters' group.
async fn pending(redis: &TestRedis) -> i64 {
    let mut conn = redis_conn(redis).await;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("persisters")
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test]
async fn a_rating_is_accepted_then_shown_on_the_book_and_the_leaderboard_and_a_new_one_replaces_it()
{
    let redis = TestRedis::start().await.expect("redis");
    let app = app_with_redis(&redis, 15_000).await;
    let first = id_of(&app.create_book(&book(1)).await);
    let second = id_of(&app.create_book(&book(2)).await);
    let (_, ann) = customer();
    let (_, bob) = customer();

    let response = rate(&app, &first, &ann, json!({"stars": 4, "text": "Good"})).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    assert!(
        accepted["rating_id"]
            .as_str()
            .is_some_and(|id| id.parse::<Uuid>().is_ok())
    );
    assert_eq!(
        rate(&app, &first, &bob, json!({"stars": 2})).await.status(),
        202
    );
    assert_eq!(
        rate(&app, &second, &bob, json!({"stars": 5}))
            .await
            .status(),
        202
    );
    // Ann changes her mind: her rating is replaced, not added.
    assert_eq!(
        rate(&app, &first, &ann, json!({"stars": 5})).await.status(),
        202
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let book: Value = app.get_book(&first).await.json().await.expect("book");
        if book["rating"] == json!({"average": 3.5, "count": 2}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not persisted: {book}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let top = loop {
        let top: Value = app
            .client
            .get(app.url("/api/books/top?limit=5"))
            .send()
            .await
            .expect("top")
            .json()
            .await
            .expect("json");
        if top["items"].as_array().is_some_and(|i| i.len() == 2) {
            break top;
        }
        assert!(tokio::time::Instant::now() < deadline, "leaderboard: {top}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(top["items"][0]["book"]["id"], json!(second));
    assert_eq!(top["items"][0]["average"], json!(5.0));
    assert_eq!(top["items"][1]["book"]["id"], json!(first));
    assert_eq!(top["items"][1]["count"], json!(2));
    assert_eq!(pending(&redis).await, 0);
}

#[tokio::test]
async fn bad_ratings_are_refused_with_problems_and_only_customers_may_rate() {
    let redis = TestRedis::start().await.expect("redis");
    let app = app_with_redis(&redis, 15_000).await;
    let id = id_of(&app.create_book(&book(1)).await);
    let (_, ann) = customer();
    for body in [
        json!({"stars": 0}),
        json!({"stars": 6}),
        json!({"stars": 3, "text": "x".repeat(2001)}),
    ] {
        assert_problem(rate(&app, &id, &ann, body).await, 422).await;
    }
    assert_problem(rate(&app, &id, &ann, json!({"stars": "five"})).await, 422).await;
    assert_problem(
        rate(&app, &id, &admin_bearer(), json!({"stars": 3})).await,
        403,
    )
    .await;
    let anonymous = app
        .client
        .post(app.url(&format!("/api/books/{id}/ratings")))
        .json(&json!({"stars": 3}))
        .send()
        .await
        .expect("POST");
    assert_problem(anonymous, 401).await;
    let unknown = Uuid::now_v7();
    assert_problem(
        rate(&app, &unknown.to_string(), &ann, json!({"stars": 3})).await,
        404,
    )
    .await;
    let top = app
        .client
        .get(app.url("/api/books/top?limit=0"))
        .send()
        .await
        .expect("top");
    assert_problem(top, 400).await;
}

#[tokio::test]
async fn ratings_accepted_while_postgres_is_unavailable_are_all_persisted_exactly_once_when_it_returns()
 {
    let redis = TestRedis::start().await.expect("redis");
    let app = app_with_redis(&redis, 15_000).await;
    let db = superuser(&app).await;
    let mut books = Vec::new();
    for n in 1..=3 {
        books.push(id_of(&app.create_book(&book(n)).await));
    }
    for id in &books {
        assert_eq!(
            app.get_book(id).await.status(),
            200,
            "cached before the outage"
        );
    }

    // The books role can no longer log in, and its connections are cut: the service has no database.
    lock_out_books(&db).await;

    let mut accepted = Vec::new();
    for _ in 0..20 {
        let (_, bearer) = customer();
        for (i, id) in books.iter().enumerate() {
            let response = rate(&app, id, &bearer, json!({"stars": 1 + i})).await;
            assert_eq!(
                response.status(),
                202,
                "{}",
                response.text().await.unwrap_or_default()
            );
            let body: Value = response.json().await.expect("json");
            accepted.push(body["rating_id"].as_str().expect("rating_id").to_owned());
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let persisted: i64 = sqlx::query_scalar("SELECT count(*) FROM ratings")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(persisted, 0, "persisted while the database was away?");

    sqlx::query("ALTER ROLE books LOGIN")
        .execute(&db)
        .await
        .expect("login");
    // While the backlog drains, batch by batch: the totals are the rows' at every commit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert_rating_totals_match_rows(&db).await;
        let persisted: i64 = sqlx::query_scalar("SELECT count(*) FROM ratings")
            .fetch_one(&db)
            .await
            .expect("count");
        if persisted == 60 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for_count(
        &db,
        "SELECT count(*) FROM ratings",
        60,
        Duration::from_secs(15),
    )
    .await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT rating_id::text FROM ratings")
        .fetch_all(&db)
        .await
        .expect("ids");
    let mut got = ids.clone();
    got.sort();
    let mut want = accepted.clone();
    want.sort();
    assert_eq!(got, want, "every accepted rating, exactly once");
    let totals: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT t.rating_count, t.rating_sum
               FROM books b JOIN book_rating_totals t ON t.book_id = b.id ORDER BY b.title",
    )
    .fetch_all(&db)
    .await
    .expect("totals");
    assert_eq!(totals, vec![(20, 20), (20, 40), (20, 60)]);
    assert_rating_totals_match_rows(&db).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pending(&redis).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entries left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a books instance killed mid-batch leaves behind: entries delivered to its consumer that
/// nobody will acknowledge. Written straight into the stream before any persister runs, then read
/// as a consumer that never comes back.
#[tokio::test]
async fn entries_a_dead_persister_left_unacknowledged_are_claimed_and_persisted_by_another() {
    let redis = TestRedis::start().await.expect("redis");
    let mut conn = redis_conn(&redis).await;
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("persisters")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("group");
    // The books exist before the entries are written: start an app without a ring first.
    let app = spawn_app_with(|c| c.db.acquire_timeout_ms = 500).await;
    let mut books = Vec::new();
    for n in 1..=2 {
        books.push(id_of(&app.create_book(&book(n)).await));
    }
    let mut rating_ids = Vec::new();
    for n in 0..30 {
        let rating_id = Uuid::now_v7();
        rating_ids.push(rating_id.to_string());
        let _: String = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("rating_id")
            .arg(rating_id.to_string())
            .arg("customer_id")
            .arg(Uuid::now_v7().to_string())
            .arg("book_id")
            .arg(&books[n % 2])
            .arg("stars")
            .arg("4")
            .arg("at")
            .arg("1700000000000")
            .query_async(&mut conn)
            .await
            .expect("XADD");
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("persisters")
        .arg("books-dead")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    assert_eq!(pending(&redis).await, 30);

    // A live instance joins with a short claim time, on the same database.
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.db.url = app.db_url.clone();
    config.auth = auth_config();
    config.cache.ring.nodes = vec![redis.addr()];
    config.ratings.claim_idle_ms = 1_000;
    config.ratings.batch_size = 7;
    let live = Application::build(config).await.expect("build");
    let stop = CancellationToken::new();
    tokio::spawn(live.run_until_stopped(stop.clone()));

    let db = superuser(&app).await;
    wait_for_count(
        &db,
        "SELECT count(*) FROM ratings",
        30,
        Duration::from_secs(10),
    )
    .await;
    let mut got: Vec<String> = sqlx::query_scalar("SELECT rating_id::text FROM ratings")
        .fetch_all(&db)
        .await
        .expect("ids");
    got.sort();
    rating_ids.sort();
    assert_eq!(got, rating_ids);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pending(&redis).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "claimed entries left unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let totals: Vec<i64> = sqlx::query_scalar(
        "SELECT t.rating_count FROM books b JOIN book_rating_totals t ON t.book_id = b.id
          ORDER BY b.title",
    )
    .fetch_all(&db)
    .await
    .expect("totals");
    assert_eq!(totals, vec![15, 15]);
    assert_rating_totals_match_rows(&db).await;
    stop.cancel();
}

#[tokio::test]
async fn with_the_stream_node_down_a_rating_is_refused_with_503_not_accepted() {
    let mut redis = TestRedis::start().await.expect("redis");
    let app = app_with_redis(&redis, 15_000).await;
    let id = id_of(&app.create_book(&book(1)).await);
    let (_, ann) = customer();
    redis.kill().await.expect("kill");
    let problem = assert_problem(rate(&app, &id, &ann, json!({"stars": 3})).await, 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ratings"))
    );
    // Back again: accepted.
    redis.restart().await.expect("restart");
    assert_eq!(
        rate(&app, &id, &ann, json!({"stars": 3})).await.status(),
        202
    );
}

/// The benchmark's baseline: with `write_through`, a rating is in the database (and on the book)
/// when the 201 arrives, no stream or Redis involved — and a later rating still replaces it.
#[tokio::test]
async fn written_through_a_rating_is_in_the_database_when_the_answer_arrives() {
    let app = spawn_app_with(|c| c.ratings.write_through = true).await;
    let book_id = id_of(&app.create_book(&book(1)).await);
    let (ann_id, ann) = customer();
    let response = rate(&app, &book_id, &ann, json!({"stars": 2, "text": "Meh"})).await;
    assert_eq!(response.status(), 201);
    let db = superuser(&app).await;
    let stars: i16 = sqlx::query_scalar(
        "SELECT stars FROM ratings WHERE customer_id = $1 AND book_id = $2::uuid",
    )
    .bind(ann_id)
    .bind(&book_id)
    .fetch_one(&db)
    .await
    .expect("the rating row, at once");
    assert_eq!(stars, 2);
    assert_eq!(
        rate(&app, &book_id, &ann, json!({"stars": 5}))
            .await
            .status(),
        201
    );
    let book: Value = app.get_book(&book_id).await.json().await.expect("book");
    assert_eq!(book["rating"], json!({"average": 5.0, "count": 1}));
}

/// Every persisted batch invalidates its books' entries (their averages change), but not whether
/// they are live: a rating after a batch is still checked against the cache alone — shown here by
/// the database being gone by then.
#[tokio::test]
async fn ratings_after_a_persisted_batch_are_still_checked_against_the_cache_alone() {
    let redis = TestRedis::start().await.expect("redis");
    let app = app_with_redis(&redis, 15_000).await;
    let db = superuser(&app).await;
    let book_id = id_of(&app.create_book(&book(1)).await);
    let (_, ann) = customer();
    assert_eq!(
        rate(&app, &book_id, &ann, json!({"stars": 3}))
            .await
            .status(),
        202
    );
    wait_for_count(
        &db,
        "SELECT count(*) FROM ratings",
        1,
        Duration::from_secs(10),
    )
    .await;
    // The batch tombstoned the book's entry; a GET now would have to read the database.
    lock_out_books(&db).await;
    let (_, bob) = customer();
    assert_eq!(
        rate(&app, &book_id, &bob, json!({"stars": 4}))
            .await
            .status(),
        202,
        "the rating needed the database"
    );
    sqlx::query("ALTER ROLE books LOGIN")
        .execute(&db)
        .await
        .expect("login");
    wait_for_count(
        &db,
        "SELECT count(*) FROM ratings",
        2,
        Duration::from_secs(15),
    )
    .await;
}

/// One rating at an idle persister, then, once it is in the database, a burst of `burst` ratings of
/// other customers, one every 20 ms, all through the API, with the persisters lingering
/// `linger_ms`. Returns how long the lone rating took to reach the database and how many
/// transactions persisted the burst (each writes its new rows with its own `now()` as
/// `persisted_at`).
async fn lone_rating_then_a_burst(linger_ms: u64, burst: usize) -> (Duration, i64) {
    let redis = TestRedis::start().await.expect("redis");
    let node = redis.addr();
    let app = spawn_app_with(move |c| {
        c.cache.ring = CacheConfig {
            nodes: vec![node],
            health_interval_ms: 50,
            ..CacheConfig::default()
        };
        c.ratings.linger_ms = linger_ms;
    })
    .await;
    let db = superuser(&app).await;
    let book_id = id_of(&app.create_book(&book(1)).await);
    let (lone, bearer) = customer();
    let sent = tokio::time::Instant::now();
    assert_eq!(
        rate(&app, &book_id, &bearer, json!({"stars": 5}))
            .await
            .status(),
        202
    );
    wait_for_count(
        &db,
        "SELECT count(*) FROM ratings",
        1,
        Duration::from_secs(10),
    )
    .await;
    let lone_took = sent.elapsed();
    for n in 0..burst {
        let (_, bearer) = customer();
        let stars = 1 + (n % 5) as u64;
        assert_eq!(
            rate(&app, &book_id, &bearer, json!({"stars": stars}))
                .await
                .status(),
            202
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ratings")
            .fetch_one(&db)
            .await
            .expect("count");
        if count == 1 + burst as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} of {} ratings persisted",
            1 + burst
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT persisted_at) FROM ratings WHERE customer_id <> $1",
    )
    .bind(lone)
    .fetch_one(&db)
    .await
    .expect("transactions");
    assert_rating_totals_match_rows(&db).await;
    (lone_took, transactions)
}

#[tokio::test]
async fn the_linger_persists_a_burst_in_few_batches_and_a_lone_rating_at_once() {
    // A burst that ends well inside the linger: one batch, two if a slow machine stretches it.
    let (lone_took, transactions) = lone_rating_then_a_burst(3_000, 30).await;
    assert!(
        transactions <= 2,
        "30 ratings over ~0.6 s persisted in {transactions} transactions with a 3 s linger"
    );
    // The persister was idle, blocked in its read: the linger did not delay the lone rating.
    assert!(
        lone_took < Duration::from_millis(1_500),
        "a lone rating took {lone_took:?} to be persisted"
    );
    // Without the linger the same burst takes a transaction per few ratings: the count above is
    // the linger's doing.
    let (_, transactions) = lone_rating_then_a_burst(0, 30).await;
    assert!(
        transactions >= 8,
        "without a linger 30 spaced ratings were persisted in only {transactions} transactions"
    );
}
