//! The ETL: one run reads every source row committed since the previous successful run (or every
//! row, for a full load) and upserts it into the star schema, all in one warehouse transaction that
//! also moves the watermark — so a run either lands completely or not at all, and the next run
//! starts where the last successful one stopped.
//!
//! - [`watermark`]: which rows a run reads (transaction snapshots, not timestamps).
//! - [`extract`]: the source queries, streamed in batches.
//! - [`load`]: the idempotent upserts (SCD type 2 for books).
//! - [`runs`]: the `etl_runs` record and the advisory lock that keeps runs from overlapping.

pub mod extract;
pub mod load;
pub mod runs;
pub mod telemetry;
pub mod watermark;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use platform::db::DbConfig;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::progress::Progress;
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
}

impl Default for EtlSettings {
    fn default() -> Self {
        EtlSettings {
            schedule: "0 */5 * * * *".into(),
            batch_rows: 5000,
            statement_timeout_seconds: 600,
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

/// The ETL with its three pools. Cheap to clone.
#[derive(Clone)]
pub struct Etl {
    inner: Arc<Inner>,
}

struct Inner {
    warehouse: PgPool,
    books: PgPool,
    orders: PgPool,
    settings: EtlSettings,
    /// Failures that could not be recorded (the warehouse was down); written by the next run.
    unrecorded: std::sync::Mutex<Vec<FailedRun>>,
}

/// A pool for a source database that connects on first use: a source that is down at start-up
/// fails the runs (recorded, alerted on), not the process. A multi-host URL (the Patroni cluster)
/// gets the cluster-aware pool's primary, which follows failovers; it waits for the cluster at
/// start-up. Why not a replica yet: docs/WAREHOUSE.md, "Reading from replicas".
pub async fn source_pool(config: &DbConfig) -> anyhow::Result<PgPool> {
    if platform::db::is_multi_host(&config.url) {
        return platform::db::connect(config).await;
    }
    let options = PgConnectOptions::from_str(&config.url).map_err(|e| {
        anyhow::anyhow!(
            "invalid database url {}: {e}",
            platform::db::redact(&config.url)
        )
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections.clamp(1, 4))
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_lazy_with(options))
}

impl Etl {
    pub fn new(warehouse: PgPool, books: PgPool, orders: PgPool, settings: EtlSettings) -> Etl {
        Etl {
            inner: Arc::new(Inner {
                warehouse,
                books,
                orders,
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
        let from = match mode {
            Mode::Full => Watermarks::default(),
            Mode::Incremental => Watermarks::read(&mut tx).await?,
        };
        let (rows, to) = self.load(&mut tx, &from, progress).await?;
        to.write(&mut tx, id).await?;
        runs::succeed(&mut tx, id, &from, &to, &rows, started.elapsed()).await?;
        progress.stage("committing");
        tx.commit()
            .await
            .context("Failed to commit the warehouse transaction")?;
        Ok(rows)
    }

    /// Extracts from both sources and loads, dimensions first so facts find their keys.
    async fn load(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        from: &Watermarks,
        progress: &dyn Progress,
    ) -> anyhow::Result<(RowCounts, Watermarks)> {
        let timeout = self.inner.settings.statement_timeout_seconds;
        let batch = self.inner.settings.batch_rows.max(1);
        // Orders first: a book an order refers to committed before that order, so the books
        // snapshot, taken after, always holds it.
        let mut orders = extract::Source::open(&self.inner.orders, "orders", timeout).await?;
        let mut books = extract::Source::open(&self.inner.books, "books", timeout).await?;
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
        to.set("books", books.finish().await?);
        to.set("orders", orders.finish().await?);
        Ok((rows, to))
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
