//! The coordinator's metrics (rendered at `/metrics` by the platform's recorder):
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `coordinator_transactions_total` | counter | `mode`, `outcome` | transactions this process brought to a final state |
//! | `coordinator_transaction_duration_seconds` | histogram | `mode`, `outcome` | from creation to the final state |
//! | `coordinator_in_doubt_transactions` | gauge | | transactions decided but not finished (`committing`, `aborting`, `compensating`) in the database, refreshed every recovery pass |
//! | `coordinator_recovered_transactions_total` | counter | `state` | transactions this process claimed from a dead or stalled coordinator, by the state it found |
//! | `coordinator_phase2_retries_total` | counter | `op` | retried calls after the decision: `commit`, `abort`, `compensate` |
//! | `coordinator_oldest_prepared_transaction_age_seconds` | gauge | | the oldest prepared gid under our prefix seen by the last orphan scan (0 when none) |
//! | `coordinator_protocol_violations_total` | counter | `op`, `answer` | answers the protocol rules out (`not-prepared` to a commit, `already-committed` to an abort, `committed` to a prepare …) |
//! | `coordinator_orphans_resolved_total` | counter | `action` | prepared gids the orphan scan committed or aborted |

use crate::model::{Mode, TxState};

/// Creates the retry counters at 0, so `rate()` sees the first retry rather than a series that
/// appears at 1. (Protocol violations are left to appear: their `op` × `answer` pairs are many, and
/// the alert on them handles a new series.)
pub(crate) fn register() {
    for op in ["commit", "abort", "compensate"] {
        metrics::counter!("coordinator_phase2_retries_total", "op" => op).increment(0);
    }
}

pub(crate) fn finished(mode: Mode, outcome: TxState, seconds: f64) {
    let labels = [("mode", mode.as_str()), ("outcome", outcome.as_str())];
    metrics::counter!("coordinator_transactions_total", &labels).increment(1);
    metrics::histogram!("coordinator_transaction_duration_seconds", &labels).record(seconds);
}

pub(crate) fn in_doubt(count: i64) {
    metrics::gauge!("coordinator_in_doubt_transactions").set(count as f64);
}

pub(crate) fn recovered(state: TxState) {
    metrics::counter!("coordinator_recovered_transactions_total", "state" => state.as_str())
        .increment(1);
}

pub(crate) fn phase2_retry(op: &'static str) {
    metrics::counter!("coordinator_phase2_retries_total", "op" => op).increment(1);
}

pub(crate) fn oldest_prepared(seconds: f64) {
    metrics::gauge!("coordinator_oldest_prepared_transaction_age_seconds").set(seconds);
}

pub(crate) fn protocol_violation(op: &'static str, answer: &'static str) {
    metrics::counter!("coordinator_protocol_violations_total", "op" => op, "answer" => answer)
        .increment(1);
}

pub(crate) fn orphan_resolved(action: &'static str) {
    metrics::counter!("coordinator_orphans_resolved_total", "action" => action).increment(1);
}
