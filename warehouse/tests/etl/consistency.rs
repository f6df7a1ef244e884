//! Loads are idempotent, and a full load builds the warehouse that the incremental runs built.

use sqlx::PgPool;
use warehouse::etl::Mode;

use crate::helpers::Harness;

#[tokio::test]
async fn rerunning_a_load_changes_nothing() {
    let h = Harness::start().await;
    let book = h.book("Dune", "Herbert", "sf", 999).await;
    let c = h.customer("Paul").await;
    h.order(c, &[(book, 2, 999)]).await;
    h.rate(c, book, 5).await;
    let first = h.load(Mode::Incremental).await;
    assert_eq!(first.rows.get("fact_sales"), Some(&1));
    let before = snapshot(&h.warehouse).await;
    // The same window again (a full load re-reads everything), and an empty incremental window.
    for mode in [Mode::Full, Mode::Incremental] {
        let again = h.load(mode).await;
        assert!(
            again.rows.values().all(|n| *n == 0),
            "{mode:?} changed rows: {:?}",
            again.rows
        );
        assert_eq!(snapshot(&h.warehouse).await, before);
    }
}

#[tokio::test]
async fn full_and_incremental_loads_produce_the_same_warehouse() {
    let h = Harness::start().await;
    let (full_pool, full_etl) = h.second_warehouse("warehousefull").await;
    let mut books = Vec::new();
    for n in 0..4 {
        books.push(
            h.book(&format!("B{n}"), &format!("A{}", n % 2), "g", 500 + n)
                .await,
        );
    }
    let customers = [h.customer("One").await, h.customer("Two").await];
    for round in 0..4usize {
        for (i, c) in customers.iter().enumerate() {
            let book = books[(round + i) % books.len()];
            h.order(*c, &[(book, 1 + i as i32, 500)]).await;
            h.rate(*c, book, (1 + (round + i) % 5) as i16).await;
        }
        // A compensated saga disappears from the facts; a renamed customer is overwritten.
        if round == 2 {
            sqlx::query("UPDATE orders SET status = 'compensated' WHERE id = (SELECT id FROM orders ORDER BY id LIMIT 1)")
                .execute(&h.orders)
                .await
                .expect("compensate");
            sqlx::query("UPDATE customers SET name = 'Renamed' WHERE id = $1")
                .bind(customers[0])
                .execute(&h.orders)
                .await
                .expect("rename");
        }
        h.load(Mode::Incremental).await;
    }
    let report = full_etl
        .run(
            uuid::Uuid::now_v7(),
            Mode::Full,
            warehouse::Trigger::Manual,
            &warehouse::progress::Quiet,
        )
        .await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert_eq!(snapshot(&h.warehouse).await, snapshot(&full_pool).await);
    assert_eq!(
        Harness::fact_lines(&full_pool).await,
        h.source_lines().await
    );
}

#[tokio::test]
async fn a_price_change_opens_a_new_book_version_and_sales_keep_the_old_one() {
    let h = Harness::start().await;
    let book = h.book("Emma", "Austen", "classic", 700).await;
    let c = h.customer("Reader").await;
    let before = h.order(c, &[(book, 1, 700)]).await;
    h.load(Mode::Incremental).await;
    sqlx::query("UPDATE books SET price_cents = 900, version = version + 1 WHERE id = $1")
        .bind(book)
        .execute(&h.books)
        .await
        .expect("reprice");
    let after = h.order(c, &[(book, 1, 900)]).await;
    let report = h.load(Mode::Incremental).await;
    assert_eq!(
        report.rows.get("dim_book"),
        Some(&2),
        "one version closed, one opened"
    );
    let versions: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT price_cents, is_current FROM dim_book WHERE book_id = $1 ORDER BY valid_from",
    )
    .bind(book)
    .fetch_all(&h.warehouse)
    .await
    .expect("versions");
    assert_eq!(versions, vec![(700, false), (900, true)]);
    let price_of = |order| {
        let pool = h.warehouse.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT b.price_cents FROM fact_sales f JOIN dim_book b ON b.book_key = f.book_key
                 WHERE f.order_id = $1",
            )
            .bind(order)
            .fetch_one(&pool)
            .await
            .expect("fact")
        }
    };
    assert_eq!(price_of(before).await, 700);
    assert_eq!(price_of(after).await, 900);
}

/// The warehouse's content without surrogate keys or load times: facts with their book ids, the
/// current book versions, customers, ratings and the calendar. (Book *history* differs on purpose:
/// a full load sees only each book's current state; docs/WAREHOUSE.md.)
pub async fn snapshot(pool: &PgPool) -> String {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT 'sale ' || order_id || ' ' || line_no || ' ' || date_key || ' ' || sold_at || ' ' ||
                customer_id || ' ' || book_id || ' ' || mode || ' ' || quantity || ' ' || price_cents
         FROM fact_sales
         UNION ALL SELECT 'book ' || book_id || ' ' || isbn || ' ' || title || ' ' || author || ' ' ||
                genre || ' ' || price_cents || ' ' || deleted FROM dim_book WHERE is_current
         UNION ALL SELECT 'customer ' || customer_id || ' ' || email || ' ' || name || ' ' || signed_up_at
         FROM dim_customer
         UNION ALL SELECT 'rating ' || customer_id || ' ' || book_id || ' ' || rating_id || ' ' || stars ||
                ' ' || rated_at FROM fact_ratings
         UNION ALL SELECT 'date ' || date_key FROM dim_date
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot");
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("\n")
}
