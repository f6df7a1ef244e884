//! The `etl_runs` record, and the advisory lock that serialises runs across every warehouse
//! process: whoever holds it runs; the others wait for it.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::watermark::Watermarks;
use super::{Mode, RowCounts, Trigger};

/// The advisory lock key of ETL runs in the warehouse database ("ETL" in ASCII).
pub const LOCK_KEY: i64 = 0x0045_544C;

/// A warehouse session holding the run lock. The lock is session-level, so it is held exactly as
/// long as this connection lives: a process that dies releases it with its connection.
pub struct RunLock {
    conn: PoolConnection<Postgres>,
}

impl RunLock {
    /// Waits until no other run holds the lock, then takes it.
    pub async fn acquire(pool: &PgPool) -> anyhow::Result<RunLock> {
        let mut conn = pool
            .acquire()
            .await
            .context("Failed to connect to the warehouse database")?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *conn)
            .await
            .context("Failed to take the ETL lock in the warehouse database")?;
        Ok(RunLock { conn })
    }

    /// The locked session, for the run's bookkeeping.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Releases the lock; if that fails the connection is closed instead of going back to the
    /// pool, which releases it too.
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut *self.conn)
            .await;
        if unlocked.is_err() {
            let _ = self.conn.close().await;
        }
    }
}

/// A failure that happened while the warehouse was unreachable, recorded by a later run.
#[derive(Debug, Clone)]
pub struct FailedRun {
    id: Uuid,
    mode: Mode,
    trigger: Trigger,
    at: DateTime<Utc>,
    error: String,
}

impl FailedRun {
    pub fn now(id: Uuid, mode: Mode, trigger: Trigger, error: &anyhow::Error) -> FailedRun {
        FailedRun {
            id,
            mode,
            trigger,
            at: Utc::now(),
            error: format!("{error:#}"),
        }
    }
}

/// Writes failures remembered while the warehouse was down.
pub async fn record_unrecorded(
    conn: &mut PgConnection,
    failed: &[FailedRun],
) -> anyhow::Result<()> {
    for run in failed {
        sqlx::query(
            "INSERT INTO etl_runs (id, mode, trigger, status, started_at, finished_at, duration_ms, error)
             VALUES ($1, $2, $3, 'failed', $4, $4, 0, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(run.id)
        .bind(run.mode.as_str())
        .bind(run.trigger.as_str())
        .bind(run.at)
        .bind(&run.error)
        .execute(&mut *conn)
        .await
        .context("Failed to record an earlier failed run")?;
    }
    Ok(())
}

/// A run still marked running while we hold the lock was interrupted (its process or connection
/// died); say so.
pub async fn abandon_interrupted(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE etl_runs SET status = 'failed', finished_at = now(),
                error = 'interrupted: the run ended without finishing (process or connection lost)'
         WHERE status = 'running'",
    )
    .execute(conn)
    .await
    .context("Failed to close interrupted runs")?;
    Ok(())
}

pub async fn start(
    conn: &mut PgConnection,
    id: Uuid,
    mode: Mode,
    trigger: Trigger,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO etl_runs (id, mode, trigger, status, started_at)
         VALUES ($1, $2, $3, 'running', clock_timestamp())",
    )
    .bind(id)
    .bind(mode.as_str())
    .bind(trigger.as_str())
    .execute(conn)
    .await
    .context("Failed to record the run's start")?;
    Ok(())
}

/// What a successful run did, for its record.
pub struct Outcome<'a> {
    pub from: &'a Watermarks,
    pub to: &'a Watermarks,
    pub rows: &'a RowCounts,
    pub took: Duration,
    /// Which members served it (`etl_runs.source`).
    pub source: &'a str,
    /// Why an incremental run read everything, if it did.
    pub reread: Option<&'a str>,
}

/// Marks the run succeeded, in the run's own transaction (so it commits with the data).
pub async fn succeed(
    tx: &mut Transaction<'static, Postgres>,
    id: Uuid,
    outcome: &Outcome<'_>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE etl_runs SET status = 'succeeded', finished_at = clock_timestamp(), duration_ms = $2,
                window_from = $3, window_to = $4, rows = $5, source = $6, reread = $7
         WHERE id = $1",
    )
    .bind(id)
    .bind(i64::try_from(outcome.took.as_millis()).unwrap_or(i64::MAX))
    .bind((!outcome.from.is_empty()).then(|| outcome.from.to_json()))
    .bind(outcome.to.to_json())
    .bind(serde_json::json!(outcome.rows))
    .bind(outcome.source)
    .bind(outcome.reread)
    .execute(&mut **tx)
    .await
    .context("Failed to record the run's success")?;
    Ok(())
}

/// Marks the run failed (or records it failed, if it never got as far as starting).
pub async fn fail(
    conn: &mut PgConnection,
    id: Uuid,
    mode: Mode,
    trigger: Trigger,
    error: &anyhow::Error,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO etl_runs (id, mode, trigger, status, started_at, finished_at, duration_ms, error)
         VALUES ($1, $2, $3, 'failed', clock_timestamp(), clock_timestamp(), 0, $4)
         ON CONFLICT (id) DO UPDATE
         SET status = 'failed', finished_at = clock_timestamp(), error = excluded.error,
             duration_ms = (extract(epoch FROM clock_timestamp() - etl_runs.started_at) * 1000)::bigint",
    )
    .bind(id)
    .bind(mode.as_str())
    .bind(trigger.as_str())
    .bind(format!("{error:#}"))
    .execute(conn)
    .await
    .context("Failed to record the failed run")?;
    Ok(())
}

/// One `etl_runs` row, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRecord {
    pub id: Uuid,
    pub mode: String,
    pub trigger: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub window_from: Option<serde_json::Value>,
    pub window_to: Option<serde_json::Value>,
    pub rows: serde_json::Value,
    pub error: Option<String>,
    /// Which source members served the run (`replica host:port`, …).
    pub source: Option<String>,
    /// Why an incremental run read everything again, if it did.
    pub reread: Option<String>,
}

pub async fn find(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<RunRecord>> {
    sqlx::query_as(
        "SELECT id, mode, trigger, status, started_at, finished_at, duration_ms, window_from,
                window_to, rows, error, source, reread
         FROM etl_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .context("Failed to read the run")
}

/// When the data the reports show was loaded: the end of the last successful run.
pub async fn loaded_at(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(finished_at) FROM etl_runs WHERE status = 'succeeded'")
        .fetch_one(pool)
        .await
        .context("Failed to read the last load time")
}
