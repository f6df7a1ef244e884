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
//! Row ids are 32-bit (`xid`), snapshots 64-bit (`xid8`, with the wraparound epoch): rows are
//! compared in 32-bit modular arithmetic within the window `[watermark, xmax)` (see [`window`]),
//! one conversion per row. A frozen row may fall inside the window by accident — read again, never
//! missed.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::placement::{History, Position};

/// Per source database: the snapshot (`pg_snapshot` text, `xmin:xmax:xip,…`) it was last read at,
/// and where (the WAL position and history, see [`super::placement`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks(BTreeMap<String, Mark>);

/// One source's watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub snapshot: String,
    /// `None` for a watermark written before positions were recorded.
    pub position: Option<Position>,
}

impl Watermarks {
    /// The watermarks of the last successful run; empty before the first one.
    pub async fn read(conn: &mut PgConnection) -> anyhow::Result<Watermarks> {
        type Row = (String, String, Option<String>, Option<i32>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT source, snapshot, lsn::text, timeline, system_identifier FROM etl_watermarks",
        )
        .fetch_all(conn)
        .await
        .context("Failed to read the watermarks")?;
        Ok(Watermarks(
            rows.into_iter()
                .map(|(source, snapshot, lsn, timeline, system)| {
                    let position = match (lsn, timeline, system) {
                        (Some(lsn), Some(timeline), Some(system)) => Some(Position {
                            lsn,
                            history: History { system, timeline },
                        }),
                        _ => None,
                    };
                    (source, Mark { snapshot, position })
                })
                .collect(),
        ))
    }

    /// Stores these as the start of the next run, in the run's own transaction.
    pub async fn write(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        run_id: Uuid,
    ) -> anyhow::Result<()> {
        for (source, mark) in &self.0 {
            let position = mark.position.as_ref();
            sqlx::query(
                "INSERT INTO etl_watermarks
                     (source, snapshot, run_id, lsn, timeline, system_identifier)
                 VALUES ($1, $2, $3, $4::pg_lsn, $5, $6)
                 ON CONFLICT (source) DO UPDATE
                 SET snapshot = excluded.snapshot, run_id = excluded.run_id, updated_at = now(),
                     lsn = excluded.lsn, timeline = excluded.timeline,
                     system_identifier = excluded.system_identifier",
            )
            .bind(source)
            .bind(&mark.snapshot)
            .bind(run_id)
            .bind(position.map(|p| p.lsn.as_str()))
            .bind(position.map(|p| p.history.timeline))
            .bind(position.map(|p| p.history.system))
            .execute(&mut **tx)
            .await
            .context("Failed to move the watermark")?;
        }
        Ok(())
    }

    pub fn set(&mut self, source: &str, snapshot: String, position: Option<Position>) {
        self.0
            .insert(source.to_owned(), Mark { snapshot, position });
    }

    /// The lowest transaction id (64-bit) whose rows the next read of `source` must include; `None`
    /// reads everything (no watermark yet, or a full load).
    pub fn since(&self, source: &str) -> Option<i64> {
        self.0.get(source).and_then(|m| snapshot_xmin(&m.snapshot))
    }

    /// Where `source` was last read, if recorded.
    pub fn position(&self, source: &str) -> Option<&Position> {
        self.0.get(source).and_then(|m| m.position.as_ref())
    }

    /// For `etl_runs.window_*`: the snapshots.
    pub fn to_json(&self) -> serde_json::Value {
        let snapshots: BTreeMap<&str, &str> = self
            .0
            .iter()
            .map(|(source, mark)| (source.as_str(), mark.snapshot.as_str()))
            .collect();
        serde_json::json!(snapshots)
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

/// The bounds a read binds: `$1` = the watermark's low 32 bits, `$2` = how many transaction ids
/// lie between the watermark and the reading snapshot's `xmax`. `None` reads everything: no
/// watermark, or one that does not fit a 2^31 window below `xmax` (a source restored from an older
/// backup, or unread for two billion transactions), where 32-bit ids could not be compared safely.
pub fn window(since: Option<i64>, xmax: i64) -> Option<(i64, i64)> {
    let since = since?;
    let span = xmax - since;
    (span > 0 && span < (1 << 31)).then_some((since & 0xFFFF_FFFF, span))
}

/// SQL: whether `alias`'s row must be read — always when `$1` is NULL, else when its writer's id
/// lies in the window: its distance above the watermark, modulo 2^32, is below the span. Rows
/// written at or above the snapshot's `xmax` are invisible anyway; a frozen row from an earlier
/// epoch may fall inside by accident and is read again, never missed.
pub fn changed_since(alias: &str) -> String {
    format!(
        "($1::bigint IS NULL OR ((({alias}.xmin::text::bigint) - $1::bigint) & 4294967295) < $2::bigint)"
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
        marks.set("orders", "4294967400:4294967410:4294967400".into(), None);
        assert_eq!(marks.since("orders"), Some(4_294_967_400));
        assert_eq!(marks.since("books"), None);
    }

    #[test]
    fn the_window_spans_from_the_watermark_to_the_snapshot_across_an_epoch() {
        // Watermark just below 2^32, snapshot just above: low 32 bits wrap, the span does not.
        let (low, span) = window(Some(4_294_967_290), 4_294_967_306).expect("a window");
        assert_eq!((low, span), (4_294_967_290, 16));
        // A row written by xid 2^32 + 3 (low bits 3) is inside: (3 - low) mod 2^32 = 9 < 16.
        assert!(((3 - low) & 0xFFFF_FFFF) < span);
        // One written by the watermark's predecessor is not: its distance wraps to ~2^32.
        assert!(((4_294_967_289 - low) & 0xFFFF_FFFF) >= span);
        assert_eq!(window(None, 10), None);
        assert_eq!(
            window(Some(20), 10),
            None,
            "a watermark above xmax reads everything"
        );
        assert_eq!(
            window(Some(1), 1 << 40),
            None,
            "too wide a window reads everything"
        );
    }
}
