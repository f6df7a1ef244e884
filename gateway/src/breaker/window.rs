//! The sliding window behind the failure-rate rule: a ring of time buckets, so recording and
//! reading are O(buckets) with no allocation per call, and old calls age out bucket by bucket.

use std::time::Duration;

use tokio::time::Instant;

/// How many buckets the window is cut into: the rate forgets calls in steps of window/10.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket period (counted from `origin`) these counts belong to.
    period: u64,
    calls: u32,
    failures: u32,
}

/// Calls and failures over the last `window`.
#[derive(Debug, Clone)]
pub struct Window {
    origin: Instant,
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    pub fn new(window: Duration, now: Instant) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Window {
            origin: now,
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        elapsed / self.bucket_ms
    }

    pub fn record(&mut self, failed: bool, now: Instant) {
        let period = self.period(now);
        let bucket = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if bucket.period != period {
            *bucket = Bucket {
                period,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        if failed {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// `(calls, failures)` in the buckets that still overlap the window.
    pub fn counts(&self, now: Instant) -> (u32, u32) {
        let current = self.period(now);
        self.buckets
            .iter()
            .filter(|b| b.period <= current && current - b.period < BUCKETS as u64)
            .fold((0u32, 0u32), |(calls, failures), b| {
                (
                    calls.saturating_add(b.calls),
                    failures.saturating_add(b.failures),
                )
            })
    }

    /// Failures / calls in the window (0 with no calls).
    pub fn error_rate(&self, now: Instant) -> f64 {
        match self.counts(now) {
            (0, _) => 0.0,
            (calls, failures) => f64::from(failures) / f64::from(calls),
        }
    }

    /// Forgets everything (a fresh start after the instance recovered).
    pub fn clear(&mut self, now: Instant) {
        *self = Window {
            origin: now,
            bucket_ms: self.bucket_ms,
            buckets: [Bucket::default(); BUCKETS],
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_age_out_of_the_window_bucket_by_bucket() {
        let start = Instant::now();
        let mut window = Window::new(Duration::from_secs(10), start);
        window.record(true, start);
        window.record(false, start + Duration::from_secs(5));
        assert_eq!(window.counts(start + Duration::from_secs(5)), (2, 1));
        assert_eq!(window.counts(start + Duration::from_millis(9_999)), (2, 1));
        // The first bucket [0 s, 1 s) has left the window at 10 s; the failure with it.
        assert_eq!(window.counts(start + Duration::from_secs(10)), (1, 0));
        assert_eq!(window.counts(start + Duration::from_secs(16)), (0, 0));
        // A reused slot starts from zero rather than adding to a stale period.
        window.record(true, start + Duration::from_secs(20));
        assert_eq!(window.counts(start + Duration::from_secs(20)), (1, 1));
    }
}
