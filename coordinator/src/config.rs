//! The coordinator's own settings (`[coordinator]`, `BOOKSTORE_COORDINATOR__<FIELD>`) and its fault
//! injection (`[faults]`, `BOOKSTORE_FAULTS__CRASH_AT`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the coordinator drives, leases and recovers transactions. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorConfig {
    /// The first part of every gid (`<prefix>:<gxid>:<branch>`), naming this coordinator cluster;
    /// `[a-z0-9]{1,16}`, default `bkc`. Every coordinator sharing a database must use the same one,
    /// and the orphan scan only looks at gids under it.
    pub gid_prefix: String,
    /// This process's name as a lease owner. Empty (the default): `<host>:<pid>:<random>`, unique
    /// per process. Leases are fenced by an epoch as well, so even a duplicate name cannot make two
    /// processes drive one transaction, but keep it unique for readable logs.
    pub instance_id: String,
    /// How long a lease lasts without renewal (default 5 000). After a crash, another coordinator
    /// takes the transactions over at most this long (plus one recovery interval) later.
    pub lease_ms: u64,
    /// How often held leases are renewed (default 1 000); at most half of `lease_ms`.
    pub lease_renew_ms: u64,
    /// How often the recovery loop looks for unfinished transactions with an expired lease
    /// (default 1 000).
    pub recovery_interval_ms: u64,
    /// The most transactions one recovery pass claims (default 32).
    pub recovery_batch: u32,
    /// How often participants are asked for their prepared gids (default 5 000; 0 disables the
    /// scan).
    pub orphan_scan_interval_ms: u64,
    /// The minimum age of a prepared gid before the orphan scan acts on it when its transaction is
    /// unknown (default 10 000). The coordinator records every transaction before its first prepare,
    /// so an unknown gid is never in flight; the grace only guards against a record that is not
    /// visible yet (a lagging replica) and gives an operator time to look. An orphan holds row locks
    /// in its participant, so it should not be long.
    pub orphan_grace_ms: u64,
    /// The limit on one call to a participant (default 3 000); also sent as the call's deadline.
    /// Longer than a participant's own worst case for a busy answer (barrier lock 0.5 s + row
    /// locks 2 s), so contention comes back as a clean 503 "busy" rather than as a timeout.
    pub participant_timeout_ms: u64,
    /// First retry delay after an ambiguous answer (default 50); it doubles on each retry...
    pub retry_backoff_min_ms: u64,
    /// ...up to this cap (default 5 000). Phase 2 and compensations retry forever at this pace.
    pub retry_backoff_max_ms: u64,
    /// A transaction's deadline when its submission names none (default 10 000): prepares (2PC) or
    /// actions (saga) not finished by then are rolled back.
    pub default_timeout_ms: u64,
    /// The largest `timeout_ms` and `wait_ms` a submission may ask for (default 300 000).
    pub max_timeout_ms: u64,
    /// The services the orphan scan asks for prepared gids, which are also the only services a
    /// submission may name (default `["books", "orders"]`).
    pub participants: Vec<String>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            gid_prefix: "bkc".into(),
            instance_id: String::new(),
            lease_ms: 5_000,
            lease_renew_ms: 1_000,
            recovery_interval_ms: 1_000,
            recovery_batch: 32,
            orphan_scan_interval_ms: 5_000,
            orphan_grace_ms: 10_000,
            participant_timeout_ms: 3_000,
            retry_backoff_min_ms: 50,
            retry_backoff_max_ms: 5_000,
            default_timeout_ms: 10_000,
            max_timeout_ms: 300_000,
            participants: vec!["books".into(), "orders".into()],
        }
    }
}

impl CoordinatorConfig {
    /// Refuses settings that would break the protocol's guarantees, with one sentence each.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            is_name(&self.gid_prefix, 16, false),
            "coordinator.gid_prefix must match [a-z0-9]{{1,16}}, got {:?}",
            self.gid_prefix
        );
        anyhow::ensure!(
            self.lease_ms >= 100,
            "coordinator.lease_ms must be at least 100, got {}",
            self.lease_ms
        );
        anyhow::ensure!(
            self.lease_renew_ms > 0 && self.lease_renew_ms * 2 <= self.lease_ms,
            "coordinator.lease_renew_ms must be positive and at most half of lease_ms ({}), got {}",
            self.lease_ms,
            self.lease_renew_ms
        );
        for (name, value) in [
            ("recovery_interval_ms", self.recovery_interval_ms),
            ("participant_timeout_ms", self.participant_timeout_ms),
            ("retry_backoff_min_ms", self.retry_backoff_min_ms),
            ("default_timeout_ms", self.default_timeout_ms),
            ("recovery_batch", u64::from(self.recovery_batch)),
        ] {
            anyhow::ensure!(value > 0, "coordinator.{name} must be positive");
        }
        anyhow::ensure!(
            self.retry_backoff_max_ms >= self.retry_backoff_min_ms,
            "coordinator.retry_backoff_max_ms must be at least retry_backoff_min_ms"
        );
        anyhow::ensure!(
            self.default_timeout_ms <= self.max_timeout_ms,
            "coordinator.default_timeout_ms must not exceed max_timeout_ms"
        );
        anyhow::ensure!(
            !self.participants.is_empty() && self.participants.iter().all(|s| is_service_name(s)),
            "coordinator.participants must list service names ([a-z][a-z0-9_-]{{0,63}}), got {:?}",
            self.participants
        );
        Ok(())
    }

    /// `instance_id`, or a fresh `<host>:<pid>:<random>` when it is empty.
    pub fn resolved_instance_id(&self) -> String {
        if !self.instance_id.trim().is_empty() {
            return self.instance_id.trim().to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!(
            "{host}:{}:{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0x00ff_ffff
        )
    }

    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub(crate) fn participant_timeout(&self) -> Duration {
        Duration::from_millis(self.participant_timeout_ms)
    }
}

/// `[a-z0-9]` (plus `_` when `underscore`), 1 to `max` characters.
pub(crate) fn is_name(value: &str, max: usize, underscore: bool) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || (underscore && b == b'_'))
}

/// A registry service name: `[a-z][a-z0-9_-]{0,63}`.
pub(crate) fn is_service_name(value: &str) -> bool {
    value.len() <= 64
        && value.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where a coordinator may be told to crash on purpose (tests and chaos runs only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// The transaction is recorded (`preparing`), no prepare has been sent.
    BeforePrepare,
    /// The first branch answered `prepared`.
    AfterFirstPrepare,
    /// Every branch answered `prepared`; `committing` is not written yet.
    AfterAllPrepares,
    /// `committing` is durably written; no commit has been sent.
    AfterDecision,
    /// The first branch answered `committed`.
    DuringPhase2,
}

/// Fault injection, off by default: `BOOKSTORE_FAULTS__CRASH_AT=<point>` makes the process call
/// `std::process::abort()` at that point of a two-phase commit it started. A coordinator that
/// recovers a transaction never crashes on it, so a peer with the same setting finishes the work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorFaults {
    pub crash_at: Option<CrashPoint>,
}

impl CoordinatorFaults {
    pub fn is_active(&self) -> bool {
        self.crash_at.is_some()
    }

    /// Aborts the process when `point` is the configured crash point.
    pub(crate) fn crash_if(&self, point: CrashPoint) {
        if self.crash_at == Some(point) {
            tracing::error!(
                ?point,
                "fault injection: crashing the coordinator on purpose"
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let config = CoordinatorConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.gid_prefix, "bkc");
        assert_eq!(config.participants, ["books", "orders"]);
    }

    #[test]
    fn bad_prefixes_and_lease_settings_are_refused() {
        let bad = |edit: fn(&mut CoordinatorConfig)| {
            let mut config = CoordinatorConfig::default();
            edit(&mut config);
            config.validate().is_err()
        };
        assert!(bad(|c| c.gid_prefix = "BKC".into()));
        assert!(bad(|c| c.gid_prefix = "b:c".into()));
        assert!(bad(|c| c.gid_prefix = String::new()));
        assert!(bad(|c| c.lease_renew_ms = 3_000));
        assert!(bad(|c| c.retry_backoff_max_ms = 10));
        assert!(bad(|c| c.participants = vec!["Books".into()]));
        assert!(bad(|c| c.participants.clear()));
    }

    #[test]
    fn generated_instance_ids_differ() {
        let config = CoordinatorConfig::default();
        assert_ne!(config.resolved_instance_id(), config.resolved_instance_id());
        let named = CoordinatorConfig {
            instance_id: " c1 ".into(),
            ..CoordinatorConfig::default()
        };
        assert_eq!(named.resolved_instance_id(), "c1");
    }

    #[test]
    fn crash_points_parse_from_their_snake_case_names() -> anyhow::Result<()> {
        let faults: CoordinatorFaults =
            serde_json::from_value(serde_json::json!({"crash_at": "during_phase2"}))?;
        assert_eq!(faults.crash_at, Some(CrashPoint::DuringPhase2));
        assert!(!CoordinatorFaults::default().is_active());
        Ok(())
    }
}
