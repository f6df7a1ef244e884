//! The ETL: one run reads every source row committed since the previous successful run (or every
//! row, for a full load) and upserts it into the star schema, all in one warehouse transaction that
//! also moves the watermark — so a run either lands completely or not at all, and the next run
//! starts where the last successful one stopped.
//!
//! - [`watermark`]: which rows a run reads (transaction snapshots, not timestamps).
//! - [`extract`]: the source queries, streamed in batches.
//! - [`load`]: the idempotent upserts (SCD type 2 for books).
//! - [`placement`]: which member of a replicated source a run reads (one replica for both
//!   databases, never behind the last run), and when a changed history makes it read everything.
//! - [`runs`]: the `etl_runs` record and the advisory lock that keeps runs from overlapping.

pub mod extract;
pub mod load;
pub mod placement;
pub mod runs;
pub mod telemetry;
pub mod watermark;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::progress::Progress;
use placement::{Placement, Position, SourcePool};
use runs::{FailedRun, RunLock};
use watermark::Watermarks;

/// The ETL's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EtlSettings {
    /// When `bookstore warehouse` runs an incremental load: a cron expression with seconds
    /// (`sec min hour day-of-month month day-of-week`), in UTC. Default: every 5 minutes.
    pub schedule: String,
    /// Rows per upsert statement: large enough to amortise round trips, small enough to keep
    /// statements (and the progress display) moving.
    pub batch_rows: usize,
    /// How long a source query may run before the run fails (a hung replica must not stall runs
    /// forever; the lock is released and the next run retries).
    pub statement_timeout_seconds: u64,
    /// On a replicated source: how long a run waits for a replica to replay past the last run's
    /// position before it reads the primary instead.
    pub replica_wait_seconds: u64,
}

impl Default for EtlSettings {
    fn default() -> Self {
        EtlSettings {
            schedule: "0 */5 * * * *".into(),
            batch_rows: 5000,
            statement_timeout_seconds: 600,
            replica_wait_seconds: 10,
        }
    }
}

/// What a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every source row (the watermark is ignored, then moved like any run's).
    Full,
    /// Rows committed since the last successful run's snapshots.
    Incremental,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

/// Who started a run (recorded in `etl_runs.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled,
    Manual,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "scheduled",
            Trigger::Manual => "manual",
            Trigger::Api => "api",
        }
    }
}

/// Rows changed per warehouse table by one run.
pub type RowCounts = BTreeMap<String, u64>;

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub id: Uuid,
    pub mode: Mode,
    pub rows: RowCounts,
    pub duration: Duration,
    /// `None` when the run succeeded.
    pub error: Option<String>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// The ETL with its pools (the warehouse and the two sources). Cheap to clone.
#[derive(Clone)]
pub struct Etl {
    inner: Arc<Inner>,
}

struct Inner {
    warehouse: PgPool,
    books: SourcePool,
    orders: SourcePool,
    settings: EtlSettings,
    /// Failures that could not be recorded (the warehouse was down); written by the next run.
    unrecorded: std::sync::Mutex<Vec<FailedRun>>,
}

impl Etl {
    pub fn new(
        warehouse: PgPool,
        books: impl Into<SourcePool>,
        orders: impl Into<SourcePool>,
        settings: EtlSettings,
    ) -> Etl {
        Etl {
            inner: Arc::new(Inner {
                warehouse,
                books: books.into(),
                orders: orders.into(),
                settings,
                unrecorded: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn warehouse(&self) -> &PgPool {
        &self.inner.warehouse
    }

    pub fn settings(&self) -> &EtlSettings {
        &self.inner.settings
    }

    /// Runs one load as `id`, waiting for any run in progress (here or in another process) to
    /// finish first. Never returns an error: a failure is in the report, in `etl_runs` and in the
    /// metrics.
    pub async fn run(
        &self,
        id: Uuid,
        mode: Mode,
        trigger: Trigger,
        progress: &dyn Progress,
    ) -> RunReport {
        let started = Instant::now();
        let result = self.run_locked(id, mode, trigger, progress).await;
        let report = RunReport {
            id,
            mode,
            rows: result.as_ref().cloned().unwrap_or_default(),
            duration: started.elapsed(),
            error: result.err().map(|e| format!("{e:#}")),
        };
        telemetry::record(&report);
        match &report.error {
            None => tracing::info!(run_id = %id, mode = mode.as_str(), rows = ?report.rows,
                duration_ms = report.duration.as_millis() as u64, "ETL run succeeded"),
            Some(error) => tracing::error!(run_id = %id, mode = mode.as_str(), error,
                "ETL run failed"),
        }
        report
    }

    async fn run_locked(
        &self,
        id: Uuid,
        mode: Mode,
        trigger: Trigger,
        progress: &dyn Progress,
    ) -> anyhow::Result<RowCounts> {
        progress.stage("waiting for the ETL lock");
        let mut lock = match RunLock::acquire(&self.inner.warehouse).await {
            Ok(lock) => lock,
            Err(e) => {
                // The warehouse is unreachable: remember the failure for the next run to record.
                self.remember(FailedRun::now(id, mode, trigger, &e));
                return Err(e);
            }
        };
        let result = self
            .run_with_lock(&mut lock, id, mode, trigger, progress)
            .await;
        if let Err(e) = &result
            && let Err(record_error) = runs::fail(lock.conn(), id, mode, trigger, e).await
        {
            tracing::warn!(error = %record_error, "cannot record the failed run yet");
            self.remember(FailedRun::now(id, mode, trigger, e));
        }
        lock.release().await;
        result
    }

    async fn run_with_lock(
        &self,
        lock: &mut RunLock,
        id: Uuid,
        mode: Mode,
        trigger: Trigger,
        progress: &dyn Progress,
    ) -> anyhow::Result<RowCounts> {
        let pending = std::mem::take(&mut *self.unrecorded());
        if let Err(e) = runs::record_unrecorded(lock.conn(), &pending).await {
            self.unrecorded().extend(pending);
            return Err(e);
        }
        runs::abandon_interrupted(lock.conn()).await?;
        runs::start(lock.conn(), id, mode, trigger).await?;
        let started = Instant::now();
        let mut tx = self
            .inner
            .warehouse
            .begin()
            .await
            .context("Failed to begin the warehouse transaction")?;
        let last = Watermarks::read(&mut tx).await?;
        progress.stage("choosing the source members");
        let wait = Duration::from_secs(self.inner.settings.replica_wait_seconds);
        let place = placement::place(&self.inner.books, &self.inner.orders, &last, wait).await?;
        let from = match mode {
            Mode::Incremental if place.reread.is_none() => last,
            _ => Watermarks::default(),
        };
        let (rows, to, source) = self.load(&mut tx, &from, &place, progress).await?;
        to.write(&mut tx, id).await?;
        let outcome = runs::Outcome {
            from: &from,
            to: &to,
            rows: &rows,
            took: started.elapsed(),
            source: &source,
            reread: place.reread.as_deref(),
        };
        runs::succeed(&mut tx, id, &outcome).await?;
        progress.stage("committing");
        tx.commit()
            .await
            .context("Failed to commit the warehouse transaction")?;
        Ok(rows)
    }

    /// Extracts from both sources and loads, dimensions first so facts find their keys; returns
    /// the rows changed, the new watermarks and which members served the run.
    async fn load(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        from: &Watermarks,
        place: &Placement,
        progress: &dyn Progress,
    ) -> anyhow::Result<(RowCounts, Watermarks, String)> {
        let timeout = self.inner.settings.statement_timeout_seconds;
        let batch = self.inner.settings.batch_rows.max(1);
        // Orders first: a book an order refers to committed before that order, so the books
        // snapshot, taken after on the same member (or on the primary), always holds it.
        let mut orders = extract::Source::open(&place.orders.pool, "orders", timeout).await?;
        let mut books = extract::Source::open(&place.books.pool, "books", timeout).await?;
        let source = placement::describe(
            (&place.orders.name, orders.replica()),
            (&place.books.name, books.replica()),
        );
        let orders_position = Position {
            lsn: orders.lsn().to_owned(),
            history: place.orders_history,
        };
        let books_position = Position {
            lsn: books.lsn().to_owned(),
            history: place.books_history,
        };
        let mut rows = RowCounts::new();
        let since_books = from.since("books");
        let since_orders = from.since("orders");
        progress.stage("dim_book");
        let changed = load::books(tx, &mut books, since_books, batch, progress, &mut rows).await?;
        progress.stage("dim_customer");
        load::customers(tx, &mut orders, since_orders, batch, progress, &mut rows).await?;
        load::resolve_book_keys(tx, &changed, &mut rows).await?;
        progress.stage("fact_sales");
        load::sales(tx, &mut orders, since_orders, batch, progress, &mut rows).await?;
        progress.stage("fact_ratings");
        load::ratings(tx, &mut books, since_books, batch, progress, &mut rows).await?;
        let mut to = Watermarks::default();
        to.set("books", books.finish().await?, Some(books_position));
        to.set("orders", orders.finish().await?, Some(orders_position));
        Ok((rows, to, source))
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Vec<FailedRun>> {
        self.inner
            .unrecorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, failed: FailedRun) {
        self.unrecorded().push(failed);
    }
}
