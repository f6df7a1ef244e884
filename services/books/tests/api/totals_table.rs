//! The rating totals in their own table (`book_rating_totals`, migration 0004): an existing
//! database migrates to the totals it had, every book has a totals row however it was inserted,
//! the API shows the same JSON as when the totals lived on `books`, a rating no longer rewrites the
//! book's row, deleting a book takes it off the leaderboard (and removing it, its totals), and the
//! leaderboard still walks an index.

use chrono::{DateTime, Utc};
use platform::auth::Role;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestPostgres;
use uuid::Uuid;

use crate::helpers::{
    TestApp, assert_rating_totals_match_rows, book, id_of, isbn13, rating_totals_off, spawn_app_on,
    spawn_app_with, token_for,
};

/// A rating through the API, written through (persisted before the 201).
async fn rate(app: &TestApp, book: &str, stars: i64) {
    let customer = Uuid::now_v7().to_string();
    let response = app
        .client
        .post(app.url(&format!("/api/books/{book}/ratings")))
        .header(
            "authorization",
            format!("Bearer {}", token_for(&customer, Role::Customer)),
        )
        .json(&json!({ "stars": stars }))
        .send()
        .await
        .expect("POST ratings");
    assert_eq!(response.status(), 201);
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.client.get(app.url(path)).send().await.expect("GET");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

/// The ids of the leaderboard, best first.
async fn top_ids(app: &TestApp) -> Vec<String> {
    get_json(app, "/api/books/top?limit=100").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| id_of(&item["book"]))
        .collect()
}

async fn superuser(app: &TestApp) -> PgPool {
    PgPool::connect(&app.pg.admin_url("books"))
        .await
        .expect("superuser pool")
}

async fn totals_row(db: &PgPool, book: &str) -> Option<(i64, i64)> {
    sqlx::query_as(
        "SELECT rating_count, rating_sum FROM book_rating_totals WHERE book_id = $1::uuid",
    )
    .bind(book)
    .fetch_optional(db)
    .await
    .expect("totals")
}

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a timestamp")
}

#[tokio::test]
async fn a_database_with_ratings_migrates_to_the_same_totals_and_the_api_shows_the_same_books() {
    let pg = TestPostgres::start().await.expect("start PostgreSQL");
    let db_url = pg
        .service_database("books")
        .await
        .expect("create the books database");
    // The schema before the totals moved, with the totals on `books` as the persisters left them.
    let old = PgPool::connect(&db_url).await.expect("pool");
    books::MIGRATOR
        .run_to(3, &old)
        .await
        .expect("the migrations up to 0003");
    let (a, b, c, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let edited: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().expect("a time");
    // a: 5 + 4 stars; b: 3; c: none; d: 5 + 5, deleted.
    for (n, id, count, sum, deleted) in [
        (1, a, 2, 9, false),
        (2, b, 1, 3, false),
        (3, c, 0, 0, false),
        (4, d, 2, 10, true),
    ] {
        sqlx::query(
            "INSERT INTO books (id, isbn, title, author, genre, price_cents, stock, rating_count,
                                rating_sum, updated_at, deleted_at)
             VALUES ($1, $2, $3, 'Ann Author', 'Fiction', 1000, 5, $4, $5, $6,
                     CASE WHEN $7 THEN now() END)",
        )
        .bind(id)
        .bind(isbn13(n))
        .bind(format!("Book {n:03}"))
        .bind(count)
        .bind(sum)
        .bind(edited)
        .bind(deleted)
        .execute(&old)
        .await
        .expect("an old book");
    }
    for (i, (book, stars)) in [(a, 5), (a, 4), (b, 3), (d, 5), (d, 5)]
        .into_iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO ratings (customer_id, book_id, rating_id, stars, stream_ms, stream_seq,
                                  rated_at)
             VALUES ($1, $2, $3, $4, $5, 0, now())",
        )
        .bind(Uuid::now_v7())
        .bind(book)
        .bind(Uuid::now_v7())
        .bind(stars as i16)
        .bind(i as i64 + 1)
        .execute(&old)
        .await
        .expect("an old rating");
    }
    old.close().await;

    // The application applies 0004 on start.
    let app = spawn_app_on(pg, db_url, |c| c.ratings.write_through = true).await;
    let db = superuser(&app).await;
    let (a, b, c, d) = (a.to_string(), b.to_string(), c.to_string(), d.to_string());
    assert_eq!(totals_row(&db, &a).await, Some((2, 9)));
    assert_eq!(totals_row(&db, &b).await, Some((1, 3)));
    assert_eq!(totals_row(&db, &c).await, Some((0, 0)));
    assert_eq!(totals_row(&db, &d).await, Some((2, 10)));
    assert_rating_totals_match_rows(&db).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns
          WHERE table_name = 'books' AND column_name IN ('rating_count', 'rating_sum')",
    )
    .fetch_one(&db)
    .await
    .expect("columns");
    assert_eq!(left, 0, "the old columns are gone");

    let shown = get_json(&app, &format!("/api/books/{a}")).await;
    assert_eq!(shown["rating"], json!({"average": 4.5, "count": 2}));
    assert_eq!(at(&shown["updated_at"]), edited, "{shown}");
    assert_eq!(shown["version"], json!(1));
    let unrated = get_json(&app, &format!("/api/books/{c}")).await;
    assert_eq!(unrated["rating"], json!({"average": null, "count": 0}));
    assert_eq!(at(&unrated["updated_at"]), edited);
    let page = get_json(&app, "/api/books").await;
    let ratings: Vec<&Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|b| &b["rating"])
        .collect();
    assert_eq!(
        ratings,
        [
            &json!({"average": 4.5, "count": 2}),
            &json!({"average": 3.0, "count": 1}),
            &json!({"average": null, "count": 0})
        ]
    );
    // The deleted book (average 5) stays off the leaderboard.
    assert_eq!(top_ids(&app).await, [a.clone(), b.clone()]);

    // The persisters carry on from the migrated totals.
    rate(&app, &c, 4).await;
    rate(&app, &a, 1).await;
    assert_eq!(totals_row(&db, &c).await, Some((1, 4)));
    assert_eq!(totals_row(&db, &a).await, Some((3, 10)));
    assert_eq!(top_ids(&app).await, [c, a, b]);
    assert_rating_totals_match_rows(&db).await;
}

#[tokio::test]
async fn a_book_without_ratings_reads_count_0_and_no_average_however_it_was_inserted() {
    let app = spawn_app_with(|_| {}).await;
    let db = superuser(&app).await;
    let created = app.create_book(&book(1)).await;
    assert_eq!(created["rating"], json!({"average": null, "count": 0}));
    let by_api = id_of(&created);
    // Books inserted by hand, two in one statement: the trigger gives each its totals row.
    let by_hand: Vec<String> = sqlx::query_scalar(
        "INSERT INTO books (id, isbn, title, author, genre, price_cents, stock)
         VALUES (gen_random_uuid(), $1, 'Book 002', 'Ann Author', 'Fiction', 1000, 5),
                (gen_random_uuid(), $2, 'Book 003', 'Ann Author', 'Fiction', 1000, 5)
         RETURNING id::text",
    )
    .bind(isbn13(2))
    .bind(isbn13(3))
    .fetch_all(&db)
    .await
    .expect("books inserted by hand");
    for id in std::iter::once(&by_api).chain(&by_hand) {
        assert_eq!(totals_row(&db, id).await, Some((0, 0)), "{id}");
        let shown = get_json(&app, &format!("/api/books/{id}")).await;
        assert_eq!(shown["rating"], json!({"average": null, "count": 0}));
        let row_updated: DateTime<Utc> =
            sqlx::query_scalar("SELECT updated_at FROM books WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&db)
                .await
                .expect("updated_at");
        assert_eq!(
            at(&shown["updated_at"]),
            row_updated,
            "never rated: the row's"
        );
    }
    assert!(top_ids(&app).await.is_empty());
    assert_rating_totals_match_rows(&db).await;

    // Without its totals row a book still reads as unrated, and the check names it.
    sqlx::query("DELETE FROM book_rating_totals WHERE book_id = $1::uuid")
        .bind(&by_hand[0])
        .execute(&db)
        .await
        .expect("delete the totals row");
    let shown = get_json(&app, &format!("/api/books/{}", by_hand[0])).await;
    assert_eq!(shown["rating"], json!({"average": null, "count": 0}));
    let off = rating_totals_off(&db).await;
    assert!(
        off.len() == 1 && off[0].contains(&by_hand[0]) && off[0].contains("missing"),
        "{off:?}"
    );
}

/// A persisted rating writes only the totals row: the book's row (which checkout locks and the
/// warehouse extracts by `updated_at`) is untouched, its version unchanged, and the API's
/// `updated_at` moves as it did when the totals lived on the row.
#[tokio::test]
async fn a_persisted_rating_moves_the_books_updated_at_but_leaves_its_row_alone() {
    let app = spawn_app_with(|c| c.ratings.write_through = true).await;
    let db = superuser(&app).await;
    let created = app.create_book(&book(1)).await;
    let id = id_of(&created);
    let row = |db: PgPool, id: String| async move {
        sqlx::query_as::<_, (String, DateTime<Utc>)>(
            "SELECT xmin::text, updated_at FROM books WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("the book row")
    };
    let before = row(db.clone(), id.clone()).await;
    rate(&app, &id, 4).await;
    assert_eq!(
        row(db.clone(), id.clone()).await,
        before,
        "the book row rewritten"
    );
    let shown = get_json(&app, &format!("/api/books/{id}")).await;
    assert_eq!(shown["rating"], json!({"average": 4.0, "count": 1}));
    assert_eq!(shown["version"], created["version"]);
    assert!(
        at(&shown["updated_at"]) > at(&created["updated_at"]),
        "{shown}"
    );
    // An edit after the rating: the later of the two again (the edit's), totals kept.
    let response = app.put_book(&id, Some("\"1\""), &book(1)).await;
    assert_eq!(response.status(), 200);
    let edited: Value = response.json().await.expect("json");
    assert_eq!(edited["rating"], json!({"average": 4.0, "count": 1}));
    assert!(at(&edited["updated_at"]) > at(&shown["updated_at"]));
    assert_eq!(get_json(&app, &format!("/api/books/{id}")).await, edited);
}

#[tokio::test]
async fn deleting_a_book_takes_it_off_the_leaderboard_and_removing_its_row_removes_its_totals() {
    let app = spawn_app_with(|c| c.ratings.write_through = true).await;
    let db = superuser(&app).await;
    let best = id_of(&app.create_book(&book(1)).await);
    let other = id_of(&app.create_book(&book(2)).await);
    rate(&app, &best, 5).await;
    rate(&app, &other, 2).await;
    assert_eq!(top_ids(&app).await, [best.clone(), other.clone()]);

    // The API's delete is soft: the row stays (order history, the warehouse), so do its ratings
    // and their totals — but no read shows the book.
    assert_eq!(app.delete_book(&best, None).await.status(), 204);
    assert_eq!(top_ids(&app).await, [other.as_str()]);
    assert_eq!(totals_row(&db, &best).await, Some((1, 5)));
    assert_rating_totals_match_rows(&db).await;

    // A book removed for good takes its totals with it.
    sqlx::query("DELETE FROM books WHERE id = $1::uuid")
        .bind(&best)
        .execute(&db)
        .await
        .expect("remove the book");
    assert_eq!(totals_row(&db, &best).await, None);
    assert_eq!(totals_row(&db, &other).await, Some((1, 2)));
}

/// The leaderboard reads the first rows of `book_rating_totals_top_idx` instead of sorting every
/// rated book.
#[tokio::test]
async fn the_leaderboard_walks_its_index() {
    let app = spawn_app_with(|_| {}).await;
    let db = superuser(&app).await;
    sqlx::query(
        "INSERT INTO books (id, isbn, title, author, genre, price_cents, stock)
         SELECT gen_random_uuid(), '978' || lpad(g::text, 10, '0'), 'Book ' || g, 'Ann Author',
                'Fiction', 1000, 5
           FROM generate_series(1, 5000) g",
    )
    .execute(&db)
    .await
    .expect("books");
    sqlx::query(
        "UPDATE book_rating_totals SET rating_count = 1 + n % 50, rating_sum = (1 + n % 50) * (1 + n % 5)
           FROM (SELECT book_id, row_number() OVER (ORDER BY book_id) AS n
                   FROM book_rating_totals) r
          WHERE r.book_id = book_rating_totals.book_id AND r.n % 3 <> 0",
    )
    .execute(&db)
    .await
    .expect("totals");
    sqlx::query("ANALYZE").execute(&db).await.expect("analyze");
    // The handler's statement, with the handler's limit.
    let explain = format!("EXPLAIN {}", books::ratings::TOP_BOOKS.replace("$1", "10"));
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&db)
        .await
        .expect("the plan");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using book_rating_totals_top_idx") && !plan.contains("Sort"),
        "{plan}"
    );
    let top = get_json(&app, "/api/books/top?limit=3").await;
    assert_eq!(top["items"][0]["average"], json!(5.0));
    assert_eq!(top["items"][0]["count"], json!(50));
}
