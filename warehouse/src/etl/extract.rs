//! The source side of a run: one read-only `REPEATABLE READ` transaction per source database, so
//! every query of the run sees the same snapshot — the one recorded as the next watermark — and the
//! queries that stream each table's changed rows.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::watermark::{changed_since, snapshot_xmax, window};

/// An open read of one source database at one snapshot.
pub struct Source {
    name: &'static str,
    tx: Transaction<'static, Postgres>,
    snapshot: String,
    xmax: i64,
    replica: bool,
    lsn: String,
}

impl Source {
    /// Begins the snapshot. Works on a hot standby too (a replica's snapshot carries the primary's
    /// transaction ids).
    pub async fn open(
        pool: &PgPool,
        name: &'static str,
        timeout_seconds: u64,
    ) -> anyhow::Result<Source> {
        let context = || format!("Failed to open a snapshot of the {name} database");
        let mut tx = pool.begin().await.with_context(context)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        let timeout = Duration::from_secs(timeout_seconds).as_millis();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {timeout}"
        )))
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        // The first query of a REPEATABLE READ transaction fixes its snapshot; this is it.
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await
            .with_context(context)?;
        let xmax = snapshot_xmax(&snapshot)
            .with_context(|| format!("unexpected snapshot {snapshot:?} from {name}"))?;
        // Read after the snapshot, so at or past it: a later run that waits for a replica's replay
        // to pass this position sees everything this snapshot saw (docs/WAREHOUSE.md).
        let (replica, lsn): (bool, String) = sqlx::query_as(super::placement::POSITION_SQL)
            .fetch_one(&mut *tx)
            .await
            .with_context(context)?;
        Ok(Source {
            name,
            tx,
            snapshot,
            xmax,
            replica,
            lsn,
        })
    }

    /// Whether the member read is a hot standby.
    pub fn replica(&self) -> bool {
        self.replica
    }

    /// The WAL position this snapshot was taken at (or just past it).
    pub fn lsn(&self) -> &str {
        &self.lsn
    }

    /// Ends the read and hands back the snapshot it saw (the next run's watermark).
    pub async fn finish(self) -> anyhow::Result<String> {
        self.tx
            .commit()
            .await
            .with_context(|| format!("Failed to end the read of the {}", self.name))?;
        Ok(self.snapshot)
    }

    /// Streams `sql`'s rows; `$1`/`$2` bind the window from `since` to this snapshot (NULL: every
    /// row).
    fn stream<'a, R>(
        &'a mut self,
        sql: &'static str,
        since: Option<i64>,
    ) -> BoxStream<'a, anyhow::Result<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'a,
    {
        let name = self.name;
        let window = window(since, self.xmax);
        sqlx::query_as::<_, R>(sql)
            .bind(window.map(|(low, _)| low))
            .bind(window.map_or(0, |(_, span)| span))
            .fetch(&mut *self.tx)
            .map_err(move |e| {
                anyhow::Error::new(e).context(format!("Failed to read from the {name} database"))
            })
            .boxed()
    }

    pub fn books(&mut self, since: Option<i64>) -> BoxStream<'_, anyhow::Result<BookRow>> {
        self.stream(BOOKS_SQL.as_str(), since)
    }

    pub fn customers(&mut self, since: Option<i64>) -> BoxStream<'_, anyhow::Result<CustomerRow>> {
        self.stream(CUSTOMERS_SQL.as_str(), since)
    }

    /// The lines of every order written since the watermark (whatever its status: the loader
    /// keeps committed orders and removes the others).
    pub fn sales(&mut self, since: Option<i64>) -> BoxStream<'_, anyhow::Result<SaleRow>> {
        let sql = if window(since, self.xmax).is_some() {
            SALES_SINCE_SQL.as_str()
        } else {
            SALES_ALL_SQL
        };
        self.stream(sql, since)
    }

    pub fn ratings(&mut self, since: Option<i64>) -> BoxStream<'_, anyhow::Result<RatingRow>> {
        self.stream(RATINGS_SQL.as_str(), since)
    }
}

/// A book as the catalog has it now (deleted ones too: old sales still refer to them).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BookRow {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub genre: String,
    pub price_cents: i64,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// One order line with its order's attributes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SaleRow {
    pub order_id: Uuid,
    pub line_no: i32,
    pub customer_id: Uuid,
    pub book_id: Uuid,
    pub mode: String,
    pub status: String,
    pub quantity: i32,
    pub price_cents: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RatingRow {
    pub customer_id: Uuid,
    pub book_id: Uuid,
    pub rating_id: Uuid,
    pub stars: i16,
    pub rated_at: DateTime<Utc>,
}

static BOOKS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT b.id, b.isbn, b.title, b.author, b.genre, b.price_cents, b.updated_at,
                b.deleted_at IS NOT NULL AS deleted
         FROM books b WHERE {}",
        changed_since("b")
    )
});

static CUSTOMERS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT c.id, c.email, c.name, c.created_at FROM customers c WHERE {}",
        changed_since("c")
    )
});

/// An order counts as changed when the order row or any of its lines is (lines are written with
/// their order, but a direct write to a line alone must not be missed either).
static SALES_SINCE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH changed AS (
             SELECT o.id FROM orders o WHERE {}
             UNION
             SELECT l.order_id FROM order_lines l WHERE {})
         SELECT o.id AS order_id, l.line_no, o.customer_id, l.book_id, o.mode, o.status,
                l.quantity, l.price_cents, o.created_at
         FROM changed c
         JOIN orders o ON o.id = c.id
         JOIN order_lines l ON l.order_id = o.id",
        changed_since("o"),
        changed_since("l")
    )
});

/// The full load's variant: every line (`$1`/`$2` are bound but unused, so both variants share
/// one call path).
const SALES_ALL_SQL: &str =
    "SELECT o.id AS order_id, l.line_no, o.customer_id, l.book_id, o.mode, o.status,
            l.quantity, l.price_cents, o.created_at
     FROM orders o JOIN order_lines l ON l.order_id = o.id
     WHERE $1::bigint IS NULL AND $2::bigint >= 0";

static RATINGS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT r.customer_id, r.book_id, r.rating_id, r.stars, r.rated_at FROM ratings r WHERE {}",
        changed_since("r")
    )
});
