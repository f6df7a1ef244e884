//! The orphan scan: prepared transactions in a participant that nobody will ever finish.
//!
//! Every `orphan_scan_interval_ms`, for each configured participant service, one healthy instance
//! is asked for its prepared gids under `<gid_prefix>:`; then the coordinator database is asked what
//! it knows of their transactions, and each gid is resolved:
//!
//! | what the database says | action |
//! |---|---|
//! | unknown gxid, or a branch that is not part of that 2PC transaction | abort, once the gid is older than `orphan_grace_ms` |
//! | `aborted` | abort |
//! | `committed` | commit |
//! | `preparing`, `committing`, `aborting` | nothing: its driver (or recovery) finishes it |
//!
//! It also sets `coordinator_oldest_prepared_transaction_age_seconds` to the oldest age seen. Ages
//! come from the participant's database clock (`age_ms`), not this process's.
//!
//! ## Why the scan is race-safe
//!
//! The race to fear is a transaction being recorded and prepared while the scan runs: the scan
//! must never abort a branch whose transaction it merely did not see yet. Two facts rule it out:
//!
//! 1. A coordinator commits the transaction's row (with its branches) *before* it sends the first
//!    prepare ([`crate::store::insert`] returns only after `COMMIT`). So when a participant has a
//!    gid prepared by a driver, that row was committed before the prepare began.
//! 2. The scan lists a participant's prepared gids *first* and reads the coordinator database
//!    *afterwards*, in a statement that starts after the listing answered. A gid in the listing was
//!    prepared before the listing; its row was committed before that; so the later read sees it.
//!
//! Hence a gid whose transaction the read does not find was not prepared by any driver of this
//! coordinator cluster (a leftover of a lost database, a test, another cluster sharing the prefix):
//! nobody else will finish it. The grace period is a second guard — against a record not yet
//! visible to the read (a lagging replica) and clock skew — not what makes the scan correct.
//!
//! The other actions cannot conflict with a driver either: `aborted` and `committed` are final (no
//! driver runs any more, and both answers are idempotent at the participant: a duplicate abort or
//! commit just confirms), and unfinished states are left alone. An abort the scan sends for an
//! unknown gid also blocks the gid, so even a late prepare of it would be refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Answer, Op, PreparedEntry};
use crate::core::Coordinator;
use crate::metrics;
use crate::model::{Mode, TxState, parse_gid};
use crate::store::{self, Known};

/// What one scan did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ScanReport {
    pub aborted: Vec<String>,
    pub committed: Vec<String>,
    /// The age in seconds of the oldest prepared gid seen (0 when none).
    pub oldest_age_seconds: f64,
}

/// What to do with one prepared gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Commit,
    Leave,
}

pub(crate) async fn scan(coordinator: Arc<Coordinator>) {
    if coordinator.config.orphan_scan_interval_ms == 0 {
        return;
    }
    let period = Duration::from_millis(coordinator.config.orphan_scan_interval_ms);
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = coordinator.stopping.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let report = coordinator.scan_orphans_once().await;
        if !report.aborted.is_empty() || !report.committed.is_empty() {
            tracing::info!(aborted = ?report.aborted, committed = ?report.committed,
                "orphan scan resolved prepared transactions");
        }
    }
}

impl Coordinator {
    pub(crate) async fn scan_orphans_once(&self) -> ScanReport {
        let prefix = format!("{}:", self.config.gid_prefix);
        let mut report = ScanReport::default();
        for service in &self.config.participants {
            // First the listing, then the database: the order the race-safety argument needs.
            let listed = match self.client.list_prepared(service, &prefix).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(
                        service,
                        error = format!("{e:#}"),
                        "orphan scan: cannot list prepared transactions"
                    );
                    continue;
                }
            };
            if listed.is_empty() {
                continue;
            }
            let now = Utc::now();
            for entry in &listed {
                let age = entry.age(now);
                report.oldest_age_seconds = report.oldest_age_seconds.max(age.as_secs_f64());
            }
            let gxids: Vec<_> = listed
                .iter()
                .filter_map(|e| parse_gid(&self.config.gid_prefix, &e.gid).map(|(gxid, _)| gxid))
                .collect();
            let known = match store::lookup(&self.pool, &gxids).await {
                Ok(known) => known,
                Err(e) => {
                    tracing::warn!(error = %e, "orphan scan: cannot read the coordinator database");
                    continue;
                }
            };
            for entry in &listed {
                let age = entry.age(now);
                match self.decide_orphan(service, entry, age, &known) {
                    Action::Leave => {}
                    Action::Abort => {
                        if self.resolve(service, entry, Op::Abort).await {
                            report.aborted.push(entry.gid.clone());
                        }
                    }
                    Action::Commit => {
                        if self.resolve(service, entry, Op::Commit).await {
                            report.committed.push(entry.gid.clone());
                        }
                    }
                }
            }
        }
        metrics::oldest_prepared(report.oldest_age_seconds);
        report
    }

    fn decide_orphan(
        &self,
        service: &str,
        entry: &PreparedEntry,
        age: Duration,
        known: &HashMap<uuid::Uuid, Known>,
    ) -> Action {
        let grace = Duration::from_millis(self.config.orphan_grace_ms);
        let Some((gxid, branch)) = parse_gid(&self.config.gid_prefix, &entry.gid) else {
            // Not a gid this coordinator could have made: not ours to touch.
            tracing::warn!(service, gid = %entry.gid, "orphan scan: a prepared gid of a foreign shape");
            return Action::Leave;
        };
        let ours = known.get(&gxid).filter(|k| {
            k.mode == Mode::TwoPhase
                && k.branches
                    .iter()
                    .any(|(s, b)| s.as_str() == service && b.as_str() == branch)
        });
        match ours.map(|k| k.state) {
            None if age >= grace => {
                tracing::warn!(service, gid = %entry.gid, age_ms = age.as_millis(),
                    "orphan: prepared, but no transaction of ours has this branch; aborting it");
                Action::Abort
            }
            None => Action::Leave,
            Some(TxState::Aborted) => Action::Abort,
            Some(TxState::Committed) => Action::Commit,
            Some(_) => Action::Leave,
        }
    }

    /// Sends `op` once; true when the participant confirmed.
    async fn resolve(&self, service: &str, entry: &PreparedEntry, op: Op) -> bool {
        let answer = self
            .client
            .call(service, op, &entry.gid, &Value::Null, None)
            .await;
        let confirmed = matches!(
            (op, &answer),
            (Op::Abort, Answer::Aborted) | (Op::Commit, Answer::Committed)
        );
        if confirmed {
            metrics::orphan_resolved(op.as_str());
        } else {
            tracing::warn!(service, gid = %entry.gid, op = op.as_str(), answer = ?answer,
                "orphan scan: the participant did not confirm; trying again next scan");
        }
        confirmed
    }
}
