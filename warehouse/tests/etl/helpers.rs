//! `Harness::start()`: one throw-away PostgreSQL with the books and orders databases (their real
//! migrations, written by their own roles), the `warehouse_reader` role, and a warehouse database;
//! an [`Etl`] reading through the reader role; and helpers that write source rows the way the
//! services do. `Harness::start_replicated(n, …)`: the sources on a primary with `n` streaming
//! replicas, the ETL given every member.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use testkit::TestPostgres;
use testkit::replication::{ReplicaOptions, TestReplicaSet};
use uuid::Uuid;
use warehouse::etl::{Etl, EtlSettings, Mode, RunReport, Trigger};
use warehouse::progress::Quiet;

pub struct Harness {
    pub servers: Servers,
    /// The books service's own role (on the primary).
    pub books: PgPool,
    /// The orders service's own role (on the primary).
    pub orders: PgPool,
    /// The warehouse role, for inspecting the warehouse.
    pub warehouse: PgPool,
    pub warehouse_url: String,
    pub etl: Etl,
}

/// The servers a harness runs on.
pub enum Servers {
    /// One server holds the sources and the warehouse.
    One(TestPostgres),
    /// The sources on a primary with streaming replicas, the warehouse on a server of its own (so a
    /// test may stop the primary).
    Replicated {
        set: Box<TestReplicaSet>,
        warehouse: TestPostgres,
    },
}

impl Servers {
    /// The server the sources are written on.
    pub fn primary(&self) -> &TestPostgres {
        match self {
            Servers::One(pg) => pg,
            Servers::Replicated { set, .. } => &set.primary,
        }
    }

    fn warehouse(&self) -> &TestPostgres {
        match self {
            Servers::One(pg) => pg,
            Servers::Replicated { warehouse, .. } => warehouse,
        }
    }
}

static BOOKS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../services/books/migrations");
static ORDERS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../services/orders/migrations");

/// Creates the books and orders databases with their migrations and the shipped accounts on `pg`;
/// returns the services' own pools.
async fn source_databases(pg: &TestPostgres) -> (PgPool, PgPool) {
    let books_url = pg.service_database("books").await.expect("books db");
    let orders_url = pg.service_database("orders").await.expect("orders db");
    let books = PgPool::connect(&books_url).await.expect("books pool");
    let orders = PgPool::connect(&orders_url).await.expect("orders pool");
    BOOKS_MIGRATOR.run(&books).await.expect("books migrations");
    ORDERS_MIGRATOR
        .run(&orders)
        .await
        .expect("orders migrations");
    pg.apply_accounts().await.expect("the shipped accounts");
    (books, orders)
}

impl Harness {
    pub async fn start() -> Harness {
        platform::metrics::install("warehouse");
        let pg = TestPostgres::start().await.expect("PostgreSQL starts");
        let (books, orders) = source_databases(&pg).await;
        let warehouse_url = pg
            .service_database("warehouse")
            .await
            .expect("warehouse db");
        let etl = Self::etl_for(&pg, &warehouse_url).await;
        Self::with(Servers::One(pg), books, orders, warehouse_url, etl).await
    }

    /// The sources on a primary with `replicas` streaming replicas (named r1, r2, …), the warehouse
    /// on its own server, and an ETL given every member, as `bookstore up` configures it on the
    /// Patroni cluster.
    pub async fn start_replicated(replicas: usize, settings: EtlSettings) -> Harness {
        let options: Vec<ReplicaOptions> = (1..=replicas)
            .map(|n| ReplicaOptions::named(&format!("r{n}")))
            .collect();
        Self::start_with_replicas(&options, settings).await
    }

    /// [`Harness::start_replicated`] with each replica's options.
    pub async fn start_with_replicas(
        replicas: &[ReplicaOptions],
        settings: EtlSettings,
    ) -> Harness {
        platform::metrics::install("warehouse");
        let mut set = TestReplicaSet::start(&[])
            .await
            .expect("the primary starts");
        let (books, orders) = source_databases(&set.primary).await;
        for options in replicas {
            let backup = set.base_backup().await.expect("base backup");
            let replica = set
                .start_replica(backup, options)
                .await
                .expect("replica starts");
            set.replicas.push(replica);
        }
        for i in 0..replicas.len() {
            set.wait_caught_up(i).await.expect("replica catches up");
        }
        let warehouse_pg = TestPostgres::start().await.expect("warehouse server");
        let warehouse_url = warehouse_pg
            .service_database("warehouse")
            .await
            .expect("warehouse db");
        let servers = Servers::Replicated {
            set: Box::new(set),
            warehouse: warehouse_pg,
        };
        let etl = Self::etl_over(
            &cluster_reader_url(&servers, "books"),
            &cluster_reader_url(&servers, "orders"),
            &warehouse_url,
            settings,
        )
        .await;
        Self::with(servers, books, orders, warehouse_url, etl).await
    }

    async fn with(
        servers: Servers,
        books: PgPool,
        orders: PgPool,
        warehouse_url: String,
        etl: Etl,
    ) -> Harness {
        let warehouse = PgPool::connect(&warehouse_url)
            .await
            .expect("warehouse pool");
        Harness {
            servers,
            books,
            orders,
            warehouse,
            warehouse_url,
            etl,
        }
    }

    /// The server the sources are written on.
    pub fn pg(&self) -> &TestPostgres {
        self.servers.primary()
    }

    /// The replica set, for a harness started with [`Harness::start_replicated`].
    pub fn set(&self) -> &TestReplicaSet {
        match &self.servers {
            Servers::Replicated { set, .. } => set,
            Servers::One(_) => panic!("not a replicated harness"),
        }
    }

    pub fn set_mut(&mut self) -> &mut TestReplicaSet {
        match &mut self.servers {
            Servers::Replicated { set, .. } => set,
            Servers::One(_) => panic!("not a replicated harness"),
        }
    }

    /// Another ETL (another "process": its own pools) over the same or another warehouse database.
    pub async fn etl_for(pg: &TestPostgres, warehouse_url: &str) -> Etl {
        Self::etl_over(
            &reader_url(pg, "books"),
            &reader_url(pg, "orders"),
            warehouse_url,
            EtlSettings {
                batch_rows: 7, // small batches, so the tests cross batch boundaries
                ..EtlSettings::default()
            },
        )
        .await
    }

    /// An ETL reading the given source URLs into `warehouse_url`.
    pub async fn etl_over(
        books_url: &str,
        orders_url: &str,
        warehouse_url: &str,
        settings: EtlSettings,
    ) -> Etl {
        let mut config = warehouse::Config::default();
        config.db.url = warehouse_url.to_owned();
        config.db.startup_timeout_seconds = 10;
        config.db.acquire_timeout_ms = 15_000;
        config.sources.books.url = books_url.to_owned();
        config.sources.orders.url = orders_url.to_owned();
        config.sources.books.acquire_timeout_ms = 15_000;
        config.sources.orders.acquire_timeout_ms = 15_000;
        config.sources.books.startup_timeout_seconds = 10;
        config.sources.orders.startup_timeout_seconds = 10;
        config.etl = settings;
        warehouse::connect(&config)
            .await
            .expect("warehouse connects")
    }

    /// A second warehouse database on the same server, with its own ETL.
    pub async fn second_warehouse(&self, name: &str) -> (PgPool, Etl) {
        self.second_warehouse_over(name, self.pg()).await
    }

    /// A second warehouse database, its ETL reading the sources on `sources`.
    pub async fn second_warehouse_over(&self, name: &str, sources: &TestPostgres) -> (PgPool, Etl) {
        let url = self
            .servers
            .warehouse()
            .service_database(name)
            .await
            .expect("second warehouse");
        let etl = Self::etl_for(sources, &url).await;
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

    /// Runs `run` (one ETL run) again and again while writers commit orders: at least 8 times, and
    /// until the warehouse holds 200 order lines; fails after 60 s. Bounded by time, not by a
    /// number of runs: a run that finds nothing new takes a few ms, and the writers (all on one
    /// customer's row) are slow on a loaded machine — 500 runs once ended before they had
    /// committed 100 orders.
    pub async fn run_until_200_lines<T, Fut: std::future::Future<Output = T>>(
        &self,
        mut run: impl FnMut() -> Fut,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut runs = 0;
        while runs < 8 || Harness::fact_lines(&self.warehouse).await.len() < 200 {
            run().await;
            runs += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "the writers did not produce 200 order lines within 60 s ({runs} runs)"
            );
        }
    }

    /// Makes `database` unreachable (new connections refused, existing ones ended), or reachable
    /// again: a database that is down, as far as its clients can tell.
    pub async fn set_reachable(&self, database: &str, reachable: bool) {
        let admin = PgPool::connect(&self.pg().admin_url("postgres"))
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

/// The reader's multi-host URL listing the primary and every replica.
pub fn cluster_reader_url(servers: &Servers, database: &str) -> String {
    let Servers::Replicated { set, .. } = servers else {
        return reader_url(servers.primary(), database);
    };
    let hosts: Vec<String> = std::iter::once(&set.primary)
        .chain(&set.replicas)
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    let password = testkit::postgres::role_password("warehouse_reader");
    format!(
        "postgres://warehouse_reader:{password}@{}/{database}",
        hosts.join(",")
    )
}
