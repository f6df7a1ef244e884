//! The per-instance circuit breaker: passive health from the answers the gateway sees.
//!
//! A pure state machine driven by `tokio::time::Instant`s handed in by the caller, so paused time
//! drives it in tests and the balancer decides when to look. It does no I/O of its own; it logs and
//! exports a metric at every transition.
//!
//! ```text
//! Closed ──(N consecutive failures, or rate ≥ threshold over ≥ min_calls in the window)──▶ Open
//! Open ──(open time elapsed)──▶ HalfOpen ──(probe succeeds)──▶ Closed
//!                               HalfOpen ──(probe fails or never settles)──▶ Open (longer)
//! ```
//!
//! Open time is `base_ejection_ms × 2^(k−1)` for the k-th ejection in a row, capped at
//! `max_ejection_ms`. The streak restarts at 1 when the instance was closed for at least
//! `max_ejection_ms` before being ejected again: healthy for as long as the longest ejection.
//!
//! Every ticket carries the epoch (the number of transitions so far) it was issued in; an outcome
//! from an earlier epoch is stale (say a slow call admitted before the breaker opened) and is ignored,
//! so only calls admitted under the current state move it.

mod window;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Response;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::exchange::{Answer, UpstreamError, classify_answer};
use window::Window;

/// When an instance is ejected and for how long. Defaults follow Envoy's outlier detection and
/// resilience4j where they agree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker (default 5); catches a dead instance fast. 0 turns
    /// this rule off.
    pub consecutive_failures: u32,
    /// Length of the sliding window the failure rate is measured over (default 10 000 ms, in 10
    /// buckets).
    pub window_ms: u64,
    /// Calls needed in the window before the rate can open the breaker (default 10), so one error
    /// in a quiet period is not a 100 % failure rate.
    pub min_calls: u32,
    /// Failure share in the window that opens the breaker (default 0.5); catches an instance that
    /// fails often but not in a row.
    pub failure_rate: f64,
    /// Open time of a first ejection (default 1 000 ms); it doubles with each ejection in a row.
    pub base_ejection_ms: u64,
    /// Cap on the open time (default 30 000 ms); also how long an instance must stay closed for
    /// its ejection streak to start over.
    pub max_ejection_ms: u64,
    /// Probes let through at once while half-open (default 1).
    pub half_open_probes: u32,
    /// A probe not settled within this time counts as failed and reopens the breaker
    /// (default 2 000 ms): a hung instance must not stay half-open for ever.
    pub probe_timeout_ms: u64,
    /// Most of a service's instances that may be ejected, in percent (default 50); past it the
    /// balancer ignores the breakers (panic mode) and routes to all rather than to none.
    pub max_ejection_percent: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            window_ms: 10_000,
            min_calls: 10,
            failure_rate: 0.5,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
            half_open_probes: 1,
            probe_timeout_ms: 2_000,
            max_ejection_percent: 50,
        }
    }
}

impl BreakerConfig {
    /// Refuses settings that would make the breaker never close, never open, or divide by zero.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.failure_rate > 0.0 && self.failure_rate <= 1.0,
            "breaker.failure_rate must be in (0, 1], got {}",
            self.failure_rate
        );
        anyhow::ensure!(self.min_calls >= 1, "breaker.min_calls must be at least 1");
        anyhow::ensure!(
            self.window_ms >= window::BUCKETS as u64,
            "breaker.window_ms must be at least {} ms",
            window::BUCKETS
        );
        anyhow::ensure!(
            self.base_ejection_ms >= 1 && self.max_ejection_ms >= self.base_ejection_ms,
            "breaker: need 1 <= base_ejection_ms <= max_ejection_ms"
        );
        anyhow::ensure!(
            self.half_open_probes >= 1,
            "breaker.half_open_probes must be at least 1"
        );
        anyhow::ensure!(
            self.probe_timeout_ms >= 1,
            "breaker.probe_timeout_ms must be at least 1"
        );
        anyhow::ensure!(
            self.max_ejection_percent <= 100,
            "breaker.max_ejection_percent is a percentage"
        );
        Ok(())
    }

    /// Open time of the `nth` ejection in a row (1-based): doubling from the base, capped.
    pub fn open_time(&self, nth: u32) -> Duration {
        let factor = 1u64 << nth.saturating_sub(1).min(62);
        let cap = self.max_ejection_ms.max(self.base_ejection_ms);
        Duration::from_millis(self.base_ejection_ms.saturating_mul(factor).min(cap))
    }

    fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }

    fn probe_limit(&self) -> usize {
        self.half_open_probes.max(1) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The value of `gateway_breaker_state` (read at scrape time, see `crate::live_metrics`).
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// What one call said about the instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// With a short kind for the logs ("connect error", "timeout", "broken exchange", "5xx").
    Failure(&'static str),
}

/// What an attempt's result says about the instance, if anything. Errors that are about the
/// gateway or the client (no instance, service breaker open, overload, the client's deadline)
/// never count against an instance, and neither does a deliberate 503 + `Retry-After` (a
/// dependency every instance shares is unavailable: ejecting the instance would only take away
/// the requests it can still serve — see [`Answer::DependencyUnavailable`]).
pub fn classify(result: &Result<Response<Body>, UpstreamError>) -> Option<Outcome> {
    match result {
        Ok(response) => match classify_answer(response) {
            Answer::Served => Some(Outcome::Success),
            Answer::InstanceFailure => Some(Outcome::Failure("5xx")),
            Answer::DependencyUnavailable => None,
        },
        Err(UpstreamError::Connect { .. }) => Some(Outcome::Failure("connect error")),
        Err(UpstreamError::Timeout { .. }) => Some(Outcome::Failure("timeout")),
        Err(UpstreamError::Failed { .. }) => Some(Outcome::Failure("broken exchange")),
        Err(
            UpstreamError::NoInstance { .. }
            | UpstreamError::ServiceOpen { .. }
            | UpstreamError::DeadlineExceeded { .. },
        ) => None,
    }
}

/// Permission for one call, handed back with its outcome ([`Breaker::record`]) or without one
/// ([`Breaker::release`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: Option<u64>,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

/// One instance's breaker. Not synchronised: the balancer keeps it under a short `std` mutex.
pub struct Breaker {
    config: Arc<BreakerConfig>,
    upstream: String,
    instance: String,
    state: BreakerState,
    /// Transitions so far; tickets from an earlier epoch are stale.
    epoch: u64,
    consecutive: u32,
    window: Window,
    /// When an open breaker turns half-open.
    open_until: Instant,
    closed_since: Instant,
    /// Ejections in the current streak (drives the doubling).
    streak: u32,
    ejections: u64,
    /// Probes out while half-open: id and start.
    probes: Vec<(u64, Instant)>,
    next_probe: u64,
}

impl Breaker {
    /// A closed breaker for `instance` of `upstream` (the names label its metrics and logs).
    pub fn new(config: Arc<BreakerConfig>, upstream: &str, instance: &str, now: Instant) -> Self {
        Breaker {
            window: Window::new(Duration::from_millis(config.window_ms), now),
            config,
            upstream: upstream.to_owned(),
            instance: instance.to_owned(),
            state: BreakerState::Closed,
            epoch: 0,
            consecutive: 0,
            open_until: now,
            closed_since: now,
            streak: 0,
            ejections: 0,
            probes: Vec::new(),
            next_probe: 0,
        }
    }

    /// The state at `now`, after applying whatever time alone changes (open time over, probe
    /// timed out).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.refresh(now);
        self.state
    }

    /// Whether a call would be let through at `now`.
    pub fn admits(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => self.probes.len() < self.config.probe_limit(),
            BreakerState::Open => false,
        }
    }

    /// Lets one call through if the state allows it; while half-open the call is a probe.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        if !self.admits(now) {
            return None;
        }
        let probe = (self.state == BreakerState::HalfOpen).then(|| {
            let id = self.next_probe;
            self.next_probe += 1;
            self.probes.push((id, now));
            id
        });
        Some(Ticket {
            epoch: self.epoch,
            probe,
        })
    }

    /// Records the outcome of an admitted call. Stale tickets change nothing.
    pub fn record(&mut self, ticket: Ticket, outcome: Outcome, now: Instant) {
        self.refresh(now);
        if ticket.epoch != self.epoch {
            return;
        }
        match (self.state, ticket.probe) {
            (BreakerState::Closed, None) => self.record_closed(outcome, now),
            (BreakerState::HalfOpen, Some(id)) => {
                if !self.take_probe(id) {
                    return;
                }
                match outcome {
                    Outcome::Success => self.close(now),
                    Outcome::Failure(kind) => self.open(now, format!("probe failed: {kind}")),
                }
            }
            _ => {}
        }
    }

    /// Hands back a ticket whose call ended without a verdict (cancelled, or an error that says
    /// nothing about the instance): frees its probe slot, if it was a probe.
    pub fn release(&mut self, ticket: Ticket, now: Instant) {
        self.refresh(now);
        if let (true, Some(id)) = (ticket.epoch == self.epoch, ticket.probe) {
            self.take_probe(id);
        }
    }

    /// Failures / calls in the window at `now`.
    pub fn error_rate(&self, now: Instant) -> f64 {
        self.window.error_rate(now)
    }

    /// Calls in the window at `now`.
    pub fn recent_calls(&self, now: Instant) -> u32 {
        self.window.counts(now).0
    }

    /// Times this instance was ejected (opened) so far.
    pub fn ejections(&self) -> u64 {
        self.ejections
    }

    /// Time until an open breaker turns half-open (zero unless open).
    pub fn open_remaining(&self, now: Instant) -> Duration {
        match self.state {
            BreakerState::Open => self.open_until.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    fn record_closed(&mut self, outcome: Outcome, now: Instant) {
        let failed = matches!(outcome, Outcome::Failure(_));
        self.window.record(failed, now);
        let Outcome::Failure(kind) = outcome else {
            self.consecutive = 0;
            return;
        };
        self.consecutive = self.consecutive.saturating_add(1);
        let threshold = self.config.consecutive_failures;
        if threshold > 0 && self.consecutive >= threshold {
            self.open(
                now,
                format!("{} consecutive failures, last: {kind}", self.consecutive),
            );
            return;
        }
        let (calls, failures) = self.window.counts(now);
        let rate = f64::from(failures) / f64::from(calls.max(1));
        if calls >= self.config.min_calls.max(1) && rate >= self.config.failure_rate {
            self.open(
                now,
                format!(
                    "failure rate {:.0}% over {calls} calls in the window",
                    rate * 100.0
                ),
            );
        }
    }

    /// Applies what time alone changes. Events are dated when they happened (not `now`), so a
    /// breaker nobody looked at for a while lands where it would have been.
    fn refresh(&mut self, now: Instant) {
        loop {
            match self.state {
                BreakerState::Open if now >= self.open_until => {
                    self.transition(BreakerState::HalfOpen, "open time elapsed; probing");
                }
                BreakerState::HalfOpen => {
                    let timeout = self.config.probe_timeout();
                    let expired = self
                        .probes
                        .iter()
                        .map(|&(_, started)| started + timeout)
                        .filter(|&due| due <= now)
                        .min();
                    match expired {
                        Some(at) => self.open(at, "probe did not settle in time".into()),
                        None => return,
                    }
                }
                _ => return,
            }
        }
    }

    fn take_probe(&mut self, id: u64) -> bool {
        let before = self.probes.len();
        self.probes.retain(|&(probe, _)| probe != id);
        self.probes.len() != before
    }

    fn open(&mut self, at: Instant, reason: String) {
        let healthy_for = at.saturating_duration_since(self.closed_since);
        if self.state == BreakerState::Closed
            && healthy_for >= Duration::from_millis(self.config.max_ejection_ms)
        {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.ejections += 1;
        let open_for = self.config.open_time(self.streak);
        self.open_until = at + open_for;
        metrics::counter!(
            "gateway_ejections_total",
            "upstream" => self.upstream.clone(),
            "instance" => self.instance.clone()
        )
        .increment(1);
        tracing::warn!(
            upstream = %self.upstream,
            instance = %self.instance,
            reason = %reason,
            open_ms = open_for.as_millis() as u64,
            ejections_in_a_row = self.streak,
            "breaker opened: instance ejected"
        );
        self.transition(BreakerState::Open, &reason);
    }

    fn close(&mut self, at: Instant) {
        self.consecutive = 0;
        self.window.clear(at);
        self.closed_since = at;
        self.transition(BreakerState::Closed, "probe succeeded");
    }

    fn transition(&mut self, to: BreakerState, reason: &str) {
        self.state = to;
        self.epoch += 1;
        self.probes.clear();
        metrics::counter!(
            "gateway_breaker_transitions_total",
            "upstream" => self.upstream.clone(),
            "instance" => self.instance.clone(),
            "to" => to.as_str()
        )
        .increment(1);
        // The ejection itself was logged at warn with its open time in `open`.
        if to != BreakerState::Open {
            tracing::info!(
                upstream = %self.upstream,
                instance = %self.instance,
                to = to.as_str(),
                reason,
                "breaker changed state"
            );
        }
    }
}

#[cfg(test)]
mod tests;
