//! What the generator measured: an HDR latency histogram and outcome counts per operation, and every
//! request's outcome by intended send time (for availability and the longest error burst).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::mix::Operation;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as asked (2xx).
    Ok,
    /// A business refusal the platform is designed to give (409: out of stock, not enough credit).
    Refused,
    /// Anything else, by kind: `503 /problems/unavailable`, `timeout`, `connect`…
    Failed(String),
}

impl Outcome {
    /// A refusal counts as available: the platform answered, correctly, that it would not.
    pub fn available(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// Counts and latencies of one operation. Latency is from the *intended* send time, so a stalled
/// platform cannot hide its stall by making the generator send less (no coordinated omission).
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Microseconds, 1 µs to 10 min, three significant digits.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub refused: u64,
    pub errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant, valid bounds")),
            ok: 0,
            refused: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn count(&self) -> u64 {
        self.ok + self.refused + self.errors.values().sum::<u64>()
    }

    /// The latency at `quantile` (0–1), in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Everything recorded during one run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: BTreeMap<Operation, OpStats>,
    /// `(intended send time since the start, available?)` of every request, in completion order.
    pub timeline: Vec<(Duration, bool)>,
}

/// The longest run of consecutive failed requests, by intended send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ErrorBurst {
    pub requests: u64,
    /// From the first failed request's send time to the next successful one's (or to the last
    /// failure's when none followed).
    pub millis: u64,
    /// When it began, since the start of the run.
    pub started_at_ms: u64,
}

impl Stats {
    pub fn record(
        &mut self,
        op: Operation,
        sent_at: Duration,
        latency: Duration,
        outcome: Outcome,
    ) {
        let stats = self.ops.entry(op).or_insert_with(OpStats::new);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        stats.latency.saturating_record(micros.max(1));
        self.timeline.push((sent_at, outcome.available()));
        match outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::Refused => stats.refused += 1,
            Outcome::Failed(kind) => *stats.errors.entry(kind).or_default() += 1,
        }
    }

    pub fn merge(&mut self, other: Stats) {
        for (op, theirs) in other.ops {
            let ours = self.ops.entry(op).or_insert_with(OpStats::new);
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = ours.latency.add(&theirs.latency);
            ours.ok += theirs.ok;
            ours.refused += theirs.refused;
            for (kind, n) in theirs.errors {
                *ours.errors.entry(kind).or_default() += n;
            }
        }
        self.timeline.extend(other.timeline);
    }

    pub fn total(&self) -> u64 {
        self.ops.values().map(OpStats::count).sum()
    }

    /// The share of requests that were answered as designed (successes and business refusals).
    pub fn availability(&self) -> f64 {
        let total = self.timeline.len();
        if total == 0 {
            return 1.0;
        }
        self.timeline.iter().filter(|(_, ok)| *ok).count() as f64 / total as f64
    }

    /// The availability of the requests sent within `[from, to)`.
    pub fn availability_between(&self, from: Duration, to: Duration) -> Option<f64> {
        let window: Vec<bool> = self
            .timeline
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ok)| *ok)
            .collect();
        (!window.is_empty())
            .then(|| window.iter().filter(|ok| **ok).count() as f64 / window.len() as f64)
    }

    pub fn longest_error_burst(&self) -> ErrorBurst {
        let mut sorted = self.timeline.clone();
        sorted.sort_by_key(|(at, _)| *at);
        let mut longest = ErrorBurst::default();
        let mut run: Option<(Duration, Duration, u64)> = None;
        let mut close = |run: &mut Option<(Duration, Duration, u64)>, end: Duration| {
            if let Some((first, _, n)) = run.take() {
                let burst = ErrorBurst {
                    requests: n,
                    millis: end.saturating_sub(first).as_millis() as u64,
                    started_at_ms: first.as_millis() as u64,
                };
                if (burst.requests, burst.millis) > (longest.requests, longest.millis) {
                    longest = burst;
                }
            }
        };
        for (at, ok) in sorted {
            match (ok, &mut run) {
                (false, Some((_, last, n))) => {
                    *last = at;
                    *n += 1;
                }
                (false, None) => run = Some((at, at, 1)),
                (true, _) => close(&mut run, at),
            }
        }
        if let Some((_, last, _)) = run {
            close(&mut run, last);
        }
        longest
    }

    /// Requests per second of run time, by outcome, for a chart.
    pub fn per_second(&self) -> Vec<(u64, u64, u64)> {
        let mut seconds: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (at, ok) in &self.timeline {
            let slot = seconds.entry(at.as_secs()).or_default();
            if *ok {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
        seconds.into_iter().map(|(s, (ok, f))| (s, ok, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn failed() -> Outcome {
        Outcome::Failed("503 /problems/unavailable".into())
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut stats = Stats::default();
        for n in 1..=1000 {
            stats.record(Operation::View, ms(n), ms(n), Outcome::Ok);
        }
        let view = &stats.ops[&Operation::View];
        assert_eq!(view.count(), 1000);
        for (q, expected) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0), (0.999, 999.0)] {
            let got = view.quantile_ms(q);
            assert!((got - expected).abs() / expected < 0.01, "p{q}: {got}");
        }
    }

    #[test]
    fn refusals_are_available_and_failures_are_counted_by_kind() {
        let mut stats = Stats::default();
        stats.record(Operation::Checkout2pc, ms(0), ms(5), Outcome::Refused);
        stats.record(Operation::Checkout2pc, ms(1), ms(5), failed());
        stats.record(Operation::Checkout2pc, ms(2), ms(5), failed());
        stats.record(Operation::Checkout2pc, ms(3), ms(5), Outcome::Ok);
        let checkout = &stats.ops[&Operation::Checkout2pc];
        assert_eq!((checkout.ok, checkout.refused), (1, 1));
        assert_eq!(checkout.errors["503 /problems/unavailable"], 2);
        assert_eq!(stats.availability(), 0.5);
    }

    #[test]
    fn the_longest_burst_is_the_longest_run_of_failures_by_send_time() {
        let mut stats = Stats::default();
        // Completion order differs from send order: the burst is judged by send time.
        let sends = [
            (30, false),
            (10, false),
            (0, true),
            (20, true),
            (50, false),
            (40, false),
            (60, false),
            (80, true),
            (90, false),
        ];
        for (at, ok) in sends {
            let outcome = if ok { Outcome::Ok } else { failed() };
            stats.record(Operation::Browse, ms(at), ms(1), outcome);
        }
        let burst = stats.longest_error_burst();
        assert_eq!(
            burst,
            ErrorBurst {
                requests: 4,
                millis: 50,
                started_at_ms: 30
            }
        );
        assert_eq!(stats.availability_between(ms(30), ms(70)), Some(0.0));
        assert_eq!(stats.availability_between(ms(100), ms(200)), None);
    }

    #[test]
    fn no_failures_is_no_burst_and_merging_adds_everything() {
        let mut a = Stats::default();
        a.record(Operation::Rate, ms(0), ms(3), Outcome::Ok);
        let mut b = Stats::default();
        b.record(Operation::Rate, ms(1500), ms(7), failed());
        assert_eq!(a.longest_error_burst(), ErrorBurst::default());
        a.merge(b);
        assert_eq!(a.total(), 2);
        assert!(
            a.ops[&Operation::Rate]
                .latency
                .equivalent(a.ops[&Operation::Rate].latency.max(), 7000)
        );
        assert_eq!(a.per_second(), vec![(0, 1, 0), (1, 0, 1)]);
        assert_eq!(a.longest_error_burst().requests, 1);
    }
}
