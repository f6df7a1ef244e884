//! `Harness::start()`: one throw-away PostgreSQL with the books and orders databases (their real
//! migrations, written by their own roles), the `warehouse_reader` role, and a warehouse database;
//! an [`Etl`] reading through the reader role; and helpers that write source rows the way the
//! services do.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use testkit::TestPostgres;
use uuid::Uuid;
use warehouse::etl::{Etl, EtlSettings, Mode, RunReport, Trigger};
use warehouse::progress::Quiet;

pub struct Harness {
    pub pg: TestPostgres,
    /// The books service's own role.
    pub books: PgPool,
    /// The orders service's own role.
    pub orders: PgPool,
    /// The warehouse role, for inspecting the warehouse.
    pub warehouse: PgPool,
    pub warehouse_url: String,
    pub etl: Etl,
}

static BOOKS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../services/books/migrations");
static ORDERS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../services/orders/migrations");

impl Harness {
    pub async fn start() -> Harness {
        platform::metrics::install("warehouse");
        let pg = TestPostgres::start().await.expect("PostgreSQL starts");
        let books_url = pg.service_database("books").await.expect("books db");
        let orders_url = pg.service_database("orders").await.expect("orders db");
        let warehouse_url = pg
            .service_database("warehouse")
            .await
            .expect("warehouse db");
        let books = PgPool::connect(&books_url).await.expect("books pool");
        let orders = PgPool::connect(&orders_url).await.expect("orders pool");
        BOOKS_MIGRATOR.run(&books).await.expect("books migrations");
        ORDERS_MIGRATOR
            .run(&orders)
            .await
            .expect("orders migrations");
        pg.apply_accounts().await.expect("the shipped accounts");
        let warehouse = PgPool::connect(&warehouse_url)
            .await
            .expect("warehouse pool");
        let etl = Self::etl_for(&pg, &warehouse_url).await;
        Harness {
            pg,
            books,
            orders,
            warehouse,
            warehouse_url,
            etl,
        }
    }

    /// Another ETL (another "process": its own pools) over the same or another warehouse database.
    pub async fn etl_for(pg: &TestPostgres, warehouse_url: &str) -> Etl {
        let mut config = warehouse::Config::default();
        config.db.url = warehouse_url.to_owned();
        config.db.startup_timeout_seconds = 10;
        config.db.acquire_timeout_ms = 15_000;
        config.sources.books.url = reader_url(pg, "books");
        config.sources.orders.url = reader_url(pg, "orders");
        config.sources.books.acquire_timeout_ms = 15_000;
        config.sources.orders.acquire_timeout_ms = 15_000;
        config.etl = EtlSettings {
            batch_rows: 7, // small batches, so the tests cross batch boundaries
            ..EtlSettings::default()
        };
        warehouse::connect(&config)
            .await
            .expect("warehouse connects")
    }

    /// A second warehouse database on the same server, with its own ETL.
    pub async fn second_warehouse(&self, name: &str) -> (PgPool, Etl) {
        let url = self
            .pg
            .service_database(name)
            .await
            .expect("second warehouse");
        let etl = Self::etl_for(&self.pg, &url).await;
        (PgPool::connect(&url).await.expect("pool"), etl)
    }

    pub async fn load(&self, mode: Mode) -> RunReport {
        let report = self
            .etl
            .run(Uuid::now_v7(), mode, Trigger::Manual, &Quiet)
            .await;
        assert!(report.succeeded(), "the load failed: {:?}", report.error);
        report
    }

    pub async fn book(&self, title: &str, author: &str, genre: &str, price_cents: i64) -> Uuid {
        let id = Uuid::now_v7();
        let isbn = format!("978{:010}", rand::random::<u32>());
        sqlx::query(
            "INSERT INTO books (id, isbn, title, author, genre, price_cents, stock)
             VALUES ($1, $2, $3, $4, $5, $6, 1000)",
        )
        .bind(id)
        .bind(isbn)
        .bind(title)
        .bind(author)
        .bind(genre)
        .bind(price_cents)
        .execute(&self.books)
        .await
        .expect("book inserted");
        id
    }

    pub async fn customer(&self, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO customers (id, email, name, password_hash, credit_cents)
             VALUES ($1, $2, $3, '$argon2id$test', 1000000000)",
        )
        .bind(id)
        .bind(format!("c{}@example.com", id.simple()))
        .bind(name)
        .execute(&self.orders)
        .await
        .expect("customer inserted");
        id
    }

    /// Writes a committed order the way the `place` branch does (debit, order, lines) in `conn`'s
    /// open transaction; returns its id.
    pub async fn place_in(
        conn: &mut sqlx::PgConnection,
        customer: Uuid,
        lines: &[(Uuid, i32, i64)],
        created_at: Option<DateTime<Utc>>,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let total: i64 = lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum();
        sqlx::query("UPDATE customers SET credit_cents = credit_cents - $2 WHERE id = $1")
            .bind(customer)
            .bind(total)
            .execute(&mut *conn)
            .await
            .expect("debit");
        sqlx::query(
            "INSERT INTO orders (id, customer_id, mode, status, total_cents, created_at, updated_at)
             VALUES ($1, $2, '2pc', 'committed', $3, coalesce($4, now()), coalesce($4, now()))",
        )
        .bind(id)
        .bind(customer)
        .bind(total)
        .bind(created_at)
        .execute(&mut *conn)
        .await
        .expect("order");
        for (n, (book, quantity, price)) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(n as i32 + 1)
            .bind(book)
            .bind(quantity)
            .bind(price)
            .execute(&mut *conn)
            .await
            .expect("line");
        }
        id
    }

    /// A committed order in its own transaction.
    pub async fn order(&self, customer: Uuid, lines: &[(Uuid, i32, i64)]) -> Uuid {
        let mut tx = self.orders.begin().await.expect("begin");
        let id = Self::place_in(&mut tx, customer, lines, None).await;
        tx.commit().await.expect("commit");
        id
    }

    pub async fn rate(&self, customer: Uuid, book: Uuid, stars: i16) {
        sqlx::query(
            "INSERT INTO ratings (customer_id, book_id, rating_id, stars, stream_ms, stream_seq, rated_at)
             VALUES ($1, $2, $3, $4, 0, 0, now())
             ON CONFLICT (customer_id, book_id) DO UPDATE
             SET rating_id = excluded.rating_id, stars = excluded.stars, rated_at = excluded.rated_at",
        )
        .bind(customer)
        .bind(book)
        .bind(Uuid::now_v7())
        .bind(stars)
        .execute(&self.books)
        .await
        .expect("rating");
    }

    /// The committed order lines in the source, as (order_id, line_no, quantity, price_cents).
    pub async fn source_lines(&self) -> Vec<(Uuid, i32, i32, i64)> {
        sqlx::query_as(
            "SELECT l.order_id, l.line_no, l.quantity, l.price_cents
             FROM order_lines l JOIN orders o ON o.id = l.order_id
             WHERE o.status = 'committed' ORDER BY 1, 2",
        )
        .fetch_all(&self.orders)
        .await
        .expect("source lines")
    }

    /// The warehouse's facts, in the same shape.
    pub async fn fact_lines(pool: &PgPool) -> Vec<(Uuid, i32, i32, i64)> {
        sqlx::query_as(
            "SELECT order_id, line_no, quantity, price_cents FROM fact_sales ORDER BY 1, 2",
        )
        .fetch_all(pool)
        .await
        .expect("facts")
    }

    /// Makes `database` unreachable (new connections refused, existing ones ended), or reachable
    /// again: a database that is down, as far as its clients can tell.
    pub async fn set_reachable(&self, database: &str, reachable: bool) {
        let admin = PgPool::connect(&self.pg.admin_url("postgres"))
            .await
            .expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} WITH ALLOW_CONNECTIONS {reachable}"
        )))
        .execute(&admin)
        .await
        .expect("alter database");
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(database)
            .execute(&admin)
            .await
            .expect("terminate");
        }
        admin.close().await;
    }
}

pub fn reader_url(pg: &TestPostgres, database: &str) -> String {
    pg.role_url("warehouse_reader", database)
}
