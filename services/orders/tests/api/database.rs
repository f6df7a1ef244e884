//! The schema itself refuses bad data, whatever code path writes it.

use uuid::Uuid;

use crate::helpers::{TestOrder, id_of, spawn_app};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

#[tokio::test]
async fn the_database_rejects_customers_the_api_would_reject() {
    let app = spawn_app().await;
    let bad_rows = [
        ("Ada@example.com", "Ada", HASH, 0_i64),
        ("ada@example", "Ada", HASH, 0),
        ("ada example@example.com", "Ada", HASH, 0),
        ("ada@example.com", "", HASH, 0),
        ("ada@example.com", " Ada", HASH, 0),
        ("ada@example.com", "Ada", "plaintext password", 0),
        ("ada@example.com", "Ada", HASH, -1),
    ];
    for (email, name, hash, credit) in bad_rows {
        let result = sqlx::query(
            "INSERT INTO customers (id, email, name, password_hash, credit_cents) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::new_v4())
        .bind(email)
        .bind(name)
        .bind(hash)
        .bind(credit)
        .execute(&app.db)
        .await;
        assert!(result.is_err(), "{email:?} {name:?} {hash:?} {credit}");
    }
}

#[tokio::test]
async fn the_database_rejects_orders_whose_total_does_not_match_their_lines() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let id = app
        .insert_order(&TestOrder::committed(
            &customer,
            vec![(Uuid::new_v4(), 2, 500)],
        ))
        .await;

    let result = sqlx::query("UPDATE orders SET total_cents = 999 WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await;
    assert!(result.is_err(), "total no longer matches its lines");
    let result = sqlx::query("DELETE FROM order_lines WHERE order_id = $1")
        .bind(id)
        .execute(&app.db)
        .await;
    assert!(result.is_err(), "lines removed under a total");
    for (mode, status, quantity, price) in [
        ("3pc", "committed", 1, 1),
        ("2pc", "lost", 1, 1),
        ("2pc", "committed", 0, 1),
        ("2pc", "committed", 1, -1),
    ] {
        let mut order = TestOrder::committed(&customer, vec![(Uuid::new_v4(), quantity, price)]);
        (order.mode, order.status) = (mode, status);
        let result = insert_fallibly(&app.db, &order).await;
        assert!(result.is_err(), "{mode} {status} {quantity} {price}");
    }
}

/// Like `TestApp::insert_order` but returning the error instead of panicking.
async fn insert_fallibly(pool: &sqlx::PgPool, order: &TestOrder) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let (book, quantity, price) = order.lines[0];
    sqlx::query("INSERT INTO orders (id, customer_id, mode, status, total_cents) VALUES ($1, $2, $3, $4, $5)")
        .bind(id).bind(order.customer_id).bind(order.mode).bind(order.status)
        .bind((i64::from(quantity) * price).max(0))
        .execute(&mut *tx).await?;
    sqlx::query("INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents) VALUES ($1, 1, $2, $3, $4)")
        .bind(id).bind(book).bind(quantity).bind(price)
        .execute(&mut *tx).await?;
    tx.commit().await
}

#[tokio::test]
async fn updated_at_advances_when_a_customer_changes() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM customers")
            .fetch_one(&app.db)
            .await
            .expect("row");

    app.top_up(&id, &serde_json::json!({"amount_cents": 1}), None)
        .await;

    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM customers")
            .fetch_one(&app.db)
            .await
            .expect("row");
    assert!(after > before, "{before} -> {after}");
}
