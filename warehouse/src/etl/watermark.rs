//! Where an incremental run starts, and why it cannot miss a row.
//!
//! A timestamp watermark (`updated_at > last_run`) misses rows: `updated_at` is set when the writing
//! transaction *starts* (`now()`), but the row becomes visible when it *commits*. A checkout that
//! started at 12:00:00, was prepared (2PC) and committed at 12:00:09 is invisible to a run that read
//! at 12:00:05 and stamped its watermark 12:00:05 — and the next run skips it forever, because its
//! `updated_at` is older than the watermark.
//!
//! So the watermark is a transaction snapshot. Each run reads a source inside one `REPEATABLE READ`
//! transaction and records that transaction's `pg_current_snapshot()`. Every transaction with an id
//! below the snapshot's `xmin` had finished before the snapshot was taken, so its rows were in that
//! run (or rolled back). The next run therefore reads every row whose writing transaction id
//! (`xmin`, the row version's creator) is **at least** the previous snapshot's `xmin`: that covers
//! transactions that were still in progress then (listed in the snapshot, committed later) and
//! everything newer. Comparing against `xmin` rather than the snapshot's in-progress list also
//! covers rows written by subtransactions (savepoints), whose ids the list does not contain. Rows
//! of the window's lower edge may be read twice; the loads are idempotent upserts, so that costs a
//! little work and never a duplicate.
//!
//! Row ids are 32-bit (`xid`), snapshots 64-bit (`xid8`, with the wraparound epoch): a row's id is
//! widened with the epoch of the snapshot's `xmax` (the row is visible, so it is older than `xmax`
//! and at most 2^31 transactions old unless frozen). A frozen row widened into the wrong epoch can
//! only look newer than it is — read again, never missed.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

/// The snapshot (`pg_snapshot` text, `xmin:xmax:xip,…`) each source was last read at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks(BTreeMap<String, String>);

impl Watermarks {
    /// The watermarks of the last successful run; empty before the first one.
    pub async fn read(conn: &mut PgConnection) -> anyhow::Result<Watermarks> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT source, snapshot FROM etl_watermarks")
                .fetch_all(conn)
                .await
                .context("Failed to read the watermarks")?;
        Ok(Watermarks(rows.into_iter().collect()))
    }

    /// Stores these as the start of the next run, in the run's own transaction.
    pub async fn write(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        run_id: Uuid,
    ) -> anyhow::Result<()> {
        for (source, snapshot) in &self.0 {
            sqlx::query(
                "INSERT INTO etl_watermarks (source, snapshot, run_id) VALUES ($1, $2, $3)
                 ON CONFLICT (source) DO UPDATE
                 SET snapshot = excluded.snapshot, run_id = excluded.run_id, updated_at = now()",
            )
            .bind(source)
            .bind(snapshot)
            .bind(run_id)
            .execute(&mut **tx)
            .await
            .context("Failed to move the watermark")?;
        }
        Ok(())
    }

    pub fn set(&mut self, source: &str, snapshot: String) {
        self.0.insert(source.to_owned(), snapshot);
    }

    /// The lowest transaction id (64-bit) whose rows the next read of `source` must include; `None`
    /// reads everything (no watermark yet, or a full load).
    pub fn since(&self, source: &str) -> Option<i64> {
        self.0.get(source).and_then(|s| snapshot_xmin(s))
    }

    /// For `etl_runs.window_*`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `xmin` of a `pg_snapshot` text (`xmin:xmax:xip,…`).
pub fn snapshot_xmin(snapshot: &str) -> Option<i64> {
    snapshot.split(':').next()?.parse().ok()
}

/// The `xmax` of a `pg_snapshot` text.
pub fn snapshot_xmax(snapshot: &str) -> Option<i64> {
    snapshot.split(':').nth(1)?.parse().ok()
}

/// SQL: the 64-bit id of the transaction that wrote `alias`'s row version, given the reading
/// snapshot's `xmax` as bigint parameter `$xmax` (see the module docs for the widening).
pub fn row_xid8(alias: &str, xmax_param: &str) -> String {
    let widened = format!("((({xmax_param} >> 32) << 32) | ({alias}.xmin::text::bigint))");
    format!("(CASE WHEN {widened} >= {xmax_param} THEN {widened} - 4294967296 ELSE {widened} END)")
}

/// SQL: whether `alias`'s row must be read — always when `$since` is NULL, else when its writer is
/// not older than `$since`.
pub fn changed_since(alias: &str, since_param: &str, xmax_param: &str) -> String {
    format!(
        "({since_param}::bigint IS NULL OR {} >= {since_param}::bigint)",
        row_xid8(alias, xmax_param)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_bounds_are_parsed_from_the_text_form() {
        assert_eq!(snapshot_xmin("748:752:748,750"), Some(748));
        assert_eq!(snapshot_xmax("748:752:748,750"), Some(752));
        assert_eq!(snapshot_xmin("10:10:"), Some(10));
        assert_eq!(snapshot_xmin("garbage"), None);
    }

    #[test]
    fn a_watermark_reads_from_the_oldest_transaction_in_progress() {
        let mut marks = Watermarks::default();
        assert_eq!(marks.since("orders"), None);
        marks.set("orders", "4294967400:4294967410:4294967400".into());
        assert_eq!(marks.since("orders"), Some(4_294_967_400));
        assert_eq!(marks.since("books"), None);
    }
}
