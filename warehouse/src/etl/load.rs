//! The warehouse side of a run: batched, idempotent upserts keyed by the source ids. Every upsert
//! only writes a row that actually differs (`IS DISTINCT FROM`), so the row counts of a run are the
//! rows it changed, and re-running a window changes — and counts — nothing.

use std::collections::BTreeSet;

use anyhow::Context;
use chrono::NaiveDate;
use futures::StreamExt;
use futures::stream::BoxStream;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::RowCounts;
use super::extract::{BookRow, CustomerRow, RatingRow, SaleRow, Source};
use crate::progress::Progress;

type Tx = Transaction<'static, Postgres>;

/// Up to `n` rows from `stream`; empty once it is exhausted.
async fn next_batch<R>(
    stream: &mut BoxStream<'_, anyhow::Result<R>>,
    n: usize,
) -> anyhow::Result<Vec<R>> {
    let mut batch = Vec::with_capacity(n.min(10_000));
    while batch.len() < n {
        match stream.next().await {
            Some(row) => batch.push(row?),
            None => break,
        }
    }
    Ok(batch)
}

fn add(rows: &mut RowCounts, table: &str, n: u64) {
    *rows.entry(table.to_owned()).or_default() += n;
}

/// The input rows of a books batch, as `u`.
const BOOKS_INPUT: &str = "WITH u AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                         $7::timestamptz[], $8::bool[])
        AS u(book_id, isbn, title, author, genre, price_cents, updated_at, deleted))";

/// Loads changed books as SCD type 2 versions; returns the books that got a new version (their
/// facts may need another version key).
pub async fn books(
    tx: &mut Tx,
    source: &mut Source,
    since: Option<i64>,
    batch: usize,
    progress: &dyn Progress,
    rows: &mut RowCounts,
) -> anyhow::Result<Vec<Uuid>> {
    let mut changed = Vec::new();
    let mut stream = source.books(since);
    loop {
        let books = next_batch(&mut stream, batch).await?;
        if books.is_empty() {
            break;
        }
        progress.rows(books.len() as u64);
        changed.extend(book_versions(tx, &books, rows).await?);
    }
    Ok(changed)
}

async fn book_versions(
    tx: &mut Tx,
    books: &[BookRow],
    rows: &mut RowCounts,
) -> anyhow::Result<Vec<Uuid>> {
    let columns = BookColumns::of(books);
    // 1. Close the current version of every book whose tracked attributes changed.
    let closed = columns
        .bind(sqlx::query(sqlx::AssertSqlSafe(format!(
            "{BOOKS_INPUT}
             UPDATE dim_book d
             SET valid_to = greatest(u.updated_at, d.valid_from + interval '1 microsecond'),
                 is_current = false
             FROM u
             WHERE d.book_id = u.book_id AND d.is_current
               AND (d.isbn, d.title, d.author, d.genre, d.price_cents)
                   IS DISTINCT FROM (u.isbn, u.title, u.author, u.genre, u.price_cents)
             RETURNING d.book_id"
        ))))
        .fetch_all(&mut **tx)
        .await
        .context("Failed to close changed book versions")?;
    let closed = first_column(&closed)?;
    // 2. Open a version for every book without a current one: new books (valid since ever) and the
    //    ones just closed (valid from where the old version ends).
    let opened = columns
        .bind(sqlx::query(sqlx::AssertSqlSafe(format!(
            "{BOOKS_INPUT}
             INSERT INTO dim_book (book_id, isbn, title, author, genre, price_cents, valid_from, deleted)
             SELECT u.book_id, u.isbn, u.title, u.author, u.genre, u.price_cents,
                    coalesce((SELECT max(p.valid_to) FROM dim_book p WHERE p.book_id = u.book_id),
                             '-infinity'),
                    u.deleted
             FROM u
             WHERE NOT EXISTS (SELECT 1 FROM dim_book c WHERE c.book_id = u.book_id AND c.is_current)
             RETURNING book_id"
        ))))
        .fetch_all(&mut **tx)
        .await
        .context("Failed to open book versions")?;
    let opened = first_column(&opened)?;
    // 3. Deletion is type 1: every version of a deleted book says so.
    let flagged = columns
        .bind(sqlx::query(sqlx::AssertSqlSafe(format!(
            "{BOOKS_INPUT}
             UPDATE dim_book d SET deleted = u.deleted
             FROM u WHERE d.book_id = u.book_id AND d.deleted <> u.deleted"
        ))))
        .execute(&mut **tx)
        .await
        .context("Failed to flag deleted books")?
        .rows_affected();
    add(
        rows,
        "dim_book",
        (closed.len() + opened.len()) as u64 + flagged,
    );
    let changed: BTreeSet<Uuid> = closed.into_iter().chain(opened).collect();
    Ok(changed.into_iter().collect())
}

/// A books batch as column arrays, for `UNNEST`.
struct BookColumns {
    ids: Vec<Uuid>,
    isbns: Vec<String>,
    titles: Vec<String>,
    authors: Vec<String>,
    genres: Vec<String>,
    prices: Vec<i64>,
    updated: Vec<chrono::DateTime<chrono::Utc>>,
    deleted: Vec<bool>,
}

impl BookColumns {
    fn of(books: &[BookRow]) -> BookColumns {
        BookColumns {
            ids: books.iter().map(|b| b.id).collect(),
            isbns: books.iter().map(|b| b.isbn.clone()).collect(),
            titles: books.iter().map(|b| b.title.clone()).collect(),
            authors: books.iter().map(|b| b.author.clone()).collect(),
            genres: books.iter().map(|b| b.genre.clone()).collect(),
            prices: books.iter().map(|b| b.price_cents).collect(),
            updated: books.iter().map(|b| b.updated_at).collect(),
            deleted: books.iter().map(|b| b.deleted).collect(),
        }
    }

    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.ids)
            .bind(&self.isbns)
            .bind(&self.titles)
            .bind(&self.authors)
            .bind(&self.genres)
            .bind(&self.prices)
            .bind(&self.updated)
            .bind(&self.deleted)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// The book ids a `RETURNING book_id` answered.
fn first_column(rows: &[sqlx::postgres::PgRow]) -> anyhow::Result<Vec<Uuid>> {
    use sqlx::Row;
    rows.iter()
        .map(|r| r.try_get::<Uuid, _>(0).context("unexpected RETURNING row"))
        .collect()
}

/// Points the facts of `book_ids` (and any fact still without a version) at the book version
/// valid when they were sold. Two statements, so each finds its rows through an index
/// (`fact_sales_book_date_idx`, `fact_sales_unresolved_book_idx`) instead of scanning every fact.
pub async fn resolve_book_keys(
    tx: &mut Tx,
    book_ids: &[Uuid],
    rows: &mut RowCounts,
) -> anyhow::Result<()> {
    const VERSION: &str = "(SELECT b.book_key FROM dim_book b
         WHERE b.book_id = f.book_id AND b.valid_from <= f.sold_at AND f.sold_at < b.valid_to)";
    let mut n = 0;
    if !book_ids.is_empty() {
        n += sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE fact_sales f SET book_key = {VERSION}
             WHERE f.book_id = ANY($1) AND f.book_key IS DISTINCT FROM {VERSION}"
        )))
        .bind(book_ids)
        .execute(&mut **tx)
        .await
        .context("Failed to re-key the facts of changed books")?
        .rows_affected();
    }
    n += sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE fact_sales f SET book_key = {VERSION}
         WHERE f.book_key IS NULL AND {VERSION} IS NOT NULL"
    )))
    .execute(&mut **tx)
    .await
    .context("Failed to resolve facts without a book version")?
    .rows_affected();
    add(rows, "fact_sales", n);
    Ok(())
}

/// Adds the calendar rows of `days` that are missing.
async fn ensure_dates(
    tx: &mut Tx,
    days: BTreeSet<NaiveDate>,
    rows: &mut RowCounts,
) -> anyhow::Result<()> {
    if days.is_empty() {
        return Ok(());
    }
    let days: Vec<NaiveDate> = days.into_iter().collect();
    let n = sqlx::query(
        "INSERT INTO dim_date (date_key, day, year, quarter, month, day_of_month, iso_week, iso_day_of_week)
         SELECT to_char(d, 'YYYYMMDD')::int, d, extract(year FROM d), extract(quarter FROM d),
                extract(month FROM d), extract(day FROM d), extract(week FROM d), extract(isodow FROM d)
         FROM unnest($1::date[]) AS d
         ON CONFLICT (date_key) DO NOTHING",
    )
    .bind(&days)
    .execute(&mut **tx)
    .await
    .context("Failed to add calendar days")?
    .rows_affected();
    add(rows, "dim_date", n);
    Ok(())
}

/// The date key of a UTC timestamp, computed the same way in SQL (`DATE_KEY_SQL`).
const DATE_KEY_SQL: &str = "to_char(u.at AT TIME ZONE 'UTC', 'YYYYMMDD')::int";

pub async fn customers(
    tx: &mut Tx,
    source: &mut Source,
    since: Option<i64>,
    batch: usize,
    progress: &dyn Progress,
    rows: &mut RowCounts,
) -> anyhow::Result<()> {
    let mut stream = source.customers(since);
    loop {
        let customers: Vec<CustomerRow> = next_batch(&mut stream, batch).await?;
        if customers.is_empty() {
            return Ok(());
        }
        progress.rows(customers.len() as u64);
        let n = sqlx::query(
            "INSERT INTO dim_customer (customer_id, email, name, signed_up_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
             ON CONFLICT (customer_id) DO UPDATE
             SET email = excluded.email, name = excluded.name, signed_up_at = excluded.signed_up_at
             WHERE (dim_customer.email, dim_customer.name, dim_customer.signed_up_at)
                   IS DISTINCT FROM (excluded.email, excluded.name, excluded.signed_up_at)",
        )
        .bind(customers.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(
            customers
                .iter()
                .map(|c| c.email.clone())
                .collect::<Vec<_>>(),
        )
        .bind(customers.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        .bind(customers.iter().map(|c| c.created_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .context("Failed to load customers")?
        .rows_affected();
        add(rows, "dim_customer", n);
    }
}

/// Loads the lines of committed orders and removes those of orders that are not (or no longer)
/// committed — a saga that was compensated after a run saw it.
pub async fn sales(
    tx: &mut Tx,
    source: &mut Source,
    since: Option<i64>,
    batch: usize,
    progress: &dyn Progress,
    rows: &mut RowCounts,
) -> anyhow::Result<()> {
    let complete = Seen::start(tx, since, "etl_seen_sales", "order_id uuid, line_no int").await?;
    let mut stream = source.sales(since);
    loop {
        let lines: Vec<SaleRow> = next_batch(&mut stream, batch).await?;
        if lines.is_empty() {
            break;
        }
        progress.rows(lines.len() as u64);
        let (committed, other): (Vec<SaleRow>, Vec<SaleRow>) =
            lines.into_iter().partition(|l| l.status == "committed");
        if let Some(seen) = &complete {
            seen.add(
                tx,
                "SELECT * FROM UNNEST($1::uuid[], $2::int[])",
                committed.iter().map(|l| l.order_id).collect(),
                committed.iter().map(|l| l.line_no).collect::<Vec<_>>(),
            )
            .await?;
        }
        remove_orders(tx, &other, rows).await?;
        ensure_dates(
            tx,
            committed
                .iter()
                .map(|l| l.created_at.date_naive())
                .collect(),
            rows,
        )
        .await?;
        upsert_sales(tx, &committed, rows).await?;
    }
    if let Some(seen) = complete {
        seen.prune(tx, "fact_sales", &["order_id", "line_no"], rows)
            .await?;
    }
    Ok(())
}

/// On a complete read (no watermark: a full load, or the re-read after the source's history
/// changed), the keys read, in a temporary table, so that the facts the source no longer has can be
/// removed afterwards — rows of transactions a failover lost. An incremental read cannot tell a
/// missing row from an unchanged one, so it never prunes.
struct Seen {
    table: &'static str,
}

impl Seen {
    /// `None` for an incremental read; else a temporary `table (columns)`, dropped at commit.
    async fn start(
        tx: &mut Tx,
        since: Option<i64>,
        table: &'static str,
        columns: &str,
    ) -> anyhow::Result<Option<Seen>> {
        if since.is_some() {
            return Ok(None);
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {table} ({columns}) ON COMMIT DROP"
        )))
        .execute(&mut **tx)
        .await
        .context("Failed to create the table of keys read")?;
        Ok(Some(Seen { table }))
    }

    async fn add<A>(
        &self,
        tx: &mut Tx,
        select: &str,
        first: Vec<Uuid>,
        second: A,
    ) -> anyhow::Result<()>
    where
        A: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} {select}",
            self.table
        )))
        .bind(first)
        .bind(second)
        .execute(&mut **tx)
        .await
        .context("Failed to note the keys read")?;
        Ok(())
    }

    /// Deletes the rows of `fact` whose key (`key` columns) was not read.
    async fn prune(
        self,
        tx: &mut Tx,
        fact: &str,
        key: &[&str],
        rows: &mut RowCounts,
    ) -> anyhow::Result<()> {
        let matches = key
            .iter()
            .map(|c| format!("s.{c} = f.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {}", self.table)))
            .execute(&mut **tx)
            .await
            .context("Failed to analyze the keys read")?;
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {fact} f WHERE NOT EXISTS (SELECT 1 FROM {} s WHERE {matches})",
            self.table
        )))
        .execute(&mut **tx)
        .await
        .with_context(|| format!("Failed to remove the {fact} rows the source no longer has"))?
        .rows_affected();
        add(rows, fact, n);
        Ok(())
    }
}

async fn remove_orders(tx: &mut Tx, lines: &[SaleRow], rows: &mut RowCounts) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let orders: BTreeSet<Uuid> = lines.iter().map(|l| l.order_id).collect();
    let n = sqlx::query("DELETE FROM fact_sales WHERE order_id = ANY($1)")
        .bind(orders.into_iter().collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .context("Failed to remove uncommitted orders")?
        .rows_affected();
    add(rows, "fact_sales", n);
    Ok(())
}

async fn upsert_sales(tx: &mut Tx, lines: &[SaleRow], rows: &mut RowCounts) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO fact_sales (order_id, line_no, date_key, sold_at, customer_id, book_id, book_key,
                                 mode, quantity, price_cents)
         SELECT u.order_id, u.line_no, {DATE_KEY_SQL}, u.at, u.customer_id, u.book_id,
                (SELECT b.book_key FROM dim_book b
                 WHERE b.book_id = u.book_id AND b.valid_from <= u.at AND u.at < b.valid_to),
                u.mode, u.quantity, u.price_cents
         FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[], $4::uuid[], $5::uuid[], $6::text[],
                     $7::int[], $8::bigint[])
              AS u(order_id, line_no, at, customer_id, book_id, mode, quantity, price_cents)
         ON CONFLICT (order_id, line_no) DO UPDATE
         SET date_key = excluded.date_key, sold_at = excluded.sold_at,
             customer_id = excluded.customer_id, book_id = excluded.book_id,
             book_key = excluded.book_key, mode = excluded.mode, quantity = excluded.quantity,
             price_cents = excluded.price_cents
         WHERE (fact_sales.date_key, fact_sales.sold_at, fact_sales.customer_id, fact_sales.book_id,
                fact_sales.book_key, fact_sales.mode, fact_sales.quantity, fact_sales.price_cents)
               IS DISTINCT FROM
               (excluded.date_key, excluded.sold_at, excluded.customer_id, excluded.book_id,
                excluded.book_key, excluded.mode, excluded.quantity, excluded.price_cents)"
    )))
    .bind(lines.iter().map(|l| l.order_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.line_no).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.created_at).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.customer_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.book_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.mode.clone()).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.price_cents).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .context("Failed to load order lines")?
    .rows_affected();
    add(rows, "fact_sales", n);
    Ok(())
}

pub async fn ratings(
    tx: &mut Tx,
    source: &mut Source,
    since: Option<i64>,
    batch: usize,
    progress: &dyn Progress,
    rows: &mut RowCounts,
) -> anyhow::Result<()> {
    let complete = Seen::start(
        tx,
        since,
        "etl_seen_ratings",
        "customer_id uuid, book_id uuid",
    )
    .await?;
    let mut stream = source.ratings(since);
    loop {
        let ratings: Vec<RatingRow> = next_batch(&mut stream, batch).await?;
        if ratings.is_empty() {
            break;
        }
        progress.rows(ratings.len() as u64);
        if let Some(seen) = &complete {
            seen.add(
                tx,
                "SELECT * FROM UNNEST($1::uuid[], $2::uuid[])",
                ratings.iter().map(|r| r.customer_id).collect(),
                ratings.iter().map(|r| r.book_id).collect::<Vec<_>>(),
            )
            .await?;
        }
        ensure_dates(
            tx,
            ratings.iter().map(|r| r.rated_at.date_naive()).collect(),
            rows,
        )
        .await?;
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO fact_ratings (customer_id, book_id, rating_id, stars, rated_at, date_key)
             SELECT u.customer_id, u.book_id, u.rating_id, u.stars, u.at, {DATE_KEY_SQL}
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::smallint[], $5::timestamptz[])
                  AS u(customer_id, book_id, rating_id, stars, at)
             ON CONFLICT (customer_id, book_id) DO UPDATE
             SET rating_id = excluded.rating_id, stars = excluded.stars,
                 rated_at = excluded.rated_at, date_key = excluded.date_key
             WHERE (fact_ratings.rating_id, fact_ratings.stars, fact_ratings.rated_at)
                   IS DISTINCT FROM (excluded.rating_id, excluded.stars, excluded.rated_at)"
        )))
        .bind(ratings.iter().map(|r| r.customer_id).collect::<Vec<_>>())
        .bind(ratings.iter().map(|r| r.book_id).collect::<Vec<_>>())
        .bind(ratings.iter().map(|r| r.rating_id).collect::<Vec<_>>())
        .bind(ratings.iter().map(|r| r.stars).collect::<Vec<_>>())
        .bind(ratings.iter().map(|r| r.rated_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .context("Failed to load ratings")?
        .rows_affected();
        add(rows, "fact_ratings", n);
    }
    if let Some(seen) = complete {
        seen.prune(tx, "fact_ratings", &["customer_id", "book_id"], rows)
            .await?;
    }
    Ok(())
}
