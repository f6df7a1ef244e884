//! The run as a report: per-operation throughput and percentiles, errors by kind, availability,
//! and what was acknowledged; printed as a table or serialised as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ledger::LedgerSummary;
use crate::runner::{Load, Run};
use crate::stats::{ErrorBurst, Stats};

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub load: Load,
    pub duration_seconds: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    /// Successes and business refusals over all requests.
    pub availability: f64,
    pub longest_error_burst: ErrorBurst,
    pub operations: Vec<OperationReport>,
    pub errors: Vec<ErrorCount>,
    pub acknowledged: LedgerSummary,
    /// `[second, available, failed]` per second of the run.
    pub per_second: Vec<(u64, u64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    pub operation: String,
    pub requests: u64,
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub operation: String,
    pub kind: String,
    pub count: u64,
}

impl LoadReport {
    pub fn new(run: &Run, load: Load) -> LoadReport {
        let seconds = run.elapsed.as_secs_f64().max(0.001);
        LoadReport {
            load,
            duration_seconds: seconds,
            requests: run.stats.total(),
            throughput_rps: run.stats.total() as f64 / seconds,
            availability: run.stats.availability(),
            longest_error_burst: run.stats.longest_error_burst(),
            operations: operations(&run.stats, seconds),
            errors: errors(&run.stats),
            acknowledged: run.ledger.summary(),
            per_second: run.stats.per_second(),
        }
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "OPERATION",
            "REQS",
            "OK",
            "REFUSED",
            "FAILED",
            "RPS",
            "P50 ms",
            "P90 ms",
            "P99 ms",
            "P99.9 ms",
            "MAX ms"
        );
        for op in &self.operations {
            let _ = writeln!(
                out,
                "{:<14} {:>8} {:>7} {:>7} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                op.operation,
                op.requests,
                op.ok,
                op.refused,
                op.failed,
                op.throughput_rps,
                op.p50_ms,
                op.p90_ms,
                op.p99_ms,
                op.p999_ms,
                op.max_ms
            );
        }
        let _ = writeln!(
            out,
            "{} requests in {:.1} s ({:.1}/s); availability {:.3} %; longest error burst {} requests, {} ms",
            self.requests,
            self.duration_seconds,
            self.throughput_rps,
            self.availability * 100.0,
            self.longest_error_burst.requests,
            self.longest_error_burst.millis
        );
        for error in &self.errors {
            let _ = writeln!(
                out,
                "  error  {:<14} {:>6} × {}",
                error.operation, error.count, error.kind
            );
        }
        let ack = &self.acknowledged;
        let _ = writeln!(
            out,
            "acknowledged: {} orders ({} pending), {} ratings, {} top-ups; {} top-ups unresolved",
            ack.orders, ack.pending_orders, ack.ratings, ack.top_ups, ack.unresolved_top_ups
        );
        out
    }
}

fn operations(stats: &Stats, seconds: f64) -> Vec<OperationReport> {
    stats
        .ops
        .iter()
        .map(|(op, s)| OperationReport {
            operation: op.name().to_owned(),
            requests: s.count(),
            ok: s.ok,
            refused: s.refused,
            failed: s.errors.values().sum(),
            throughput_rps: s.count() as f64 / seconds,
            p50_ms: s.quantile_ms(0.5),
            p90_ms: s.quantile_ms(0.9),
            p99_ms: s.quantile_ms(0.99),
            p999_ms: s.quantile_ms(0.999),
            max_ms: s.latency.max() as f64 / 1000.0,
        })
        .collect()
}

fn errors(stats: &Stats) -> Vec<ErrorCount> {
    let mut all: Vec<ErrorCount> = stats
        .ops
        .iter()
        .flat_map(|(op, s)| {
            s.errors.iter().map(|(kind, count)| ErrorCount {
                operation: op.name().to_owned(),
                kind: kind.clone(),
                count: *count,
            })
        })
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.count));
    all
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::{AckOrder, Ledger};
    use crate::mix::Operation;
    use crate::stats::Outcome;

    #[test]
    fn the_report_counts_rates_and_errors_per_operation() {
        let mut stats = Stats::default();
        for n in 0..20 {
            stats.record(
                Operation::View,
                Duration::from_millis(n * 100),
                Duration::from_millis(10),
                Outcome::Ok,
            );
        }
        stats.record(
            Operation::TopUp,
            Duration::from_secs(1),
            Duration::from_secs(10),
            Outcome::Failed("timeout".into()),
        );
        let mut ledger = Ledger::default();
        ledger.orders.push(AckOrder {
            order_id: "o".into(),
            customer_id: "c".into(),
            status: "pending".into(),
            total_cents: 5,
        });
        let run = Run {
            stats,
            ledger,
            elapsed: Duration::from_secs(2),
        };
        let report = LoadReport::new(&run, Load::Rate(10.5));
        assert_eq!(report.requests, 21);
        assert!((report.throughput_rps - 10.5).abs() < 1e-9);
        let view = &report.operations[0];
        assert_eq!(
            (view.operation.as_str(), view.requests, view.ok),
            ("view", 20, 20)
        );
        assert!((view.p99_ms - 10.0).abs() < 0.1, "{}", view.p99_ms);
        assert_eq!(report.errors[0].kind, "timeout");
        assert_eq!(report.acknowledged.pending_orders, 1);
        let table = report.table();
        assert!(
            table.contains("top_up") && table.contains("1 × timeout"),
            "{table}"
        );
        let json = serde_json::to_value(&report).expect("serialisable");
        assert_eq!(json["load"]["rate"], 10.5);
        assert_eq!(json["operations"][1]["failed"], 1);
    }
}
