//! One health check and its transitions, as pure functions of `now` so TTL expiry and the critical
//! reaper are testable without sleeping. Times are tokio `Instant`s, so `tokio::time::pause()` works too.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Consul's three check states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Passing, Status::Warning, Status::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Parses Consul's lowercase spelling.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maps an HTTP check's response status like Consul: 2xx passing, 429 warning, anything else critical.
pub fn status_for_http(code: u16) -> Status {
    match code {
        200..=299 => Status::Passing,
        429 => Status::Warning,
        _ => Status::Critical,
    }
}

/// What the registry polls for an HTTP check.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    pub url: String,
    pub method: String,
    pub headers: HashMap<String, Vec<String>>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// How a check learns its status.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// The service reports in; silence longer than the TTL is critical.
    Ttl(Duration),
    /// The registry polls the service.
    Http(HttpProbe),
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Ttl(_) => "ttl",
            CheckKind::Http(_) => "http",
        }
    }
}

/// A validated check definition, before it is attached to a service.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub kind: CheckKind,
    /// Initial status; Consul starts checks critical unless told otherwise.
    pub status: Status,
    /// Remove the service once this check has been critical for this long (Consul's reaper).
    pub deregister_after: Option<Duration>,
}

/// A check and its live state.
#[derive(Debug, Clone)]
pub struct Check {
    pub spec: CheckSpec,
    pub status: Status,
    pub output: String,
    /// When the check last turned critical; drives the reaper.
    pub critical_since: Option<Instant>,
    /// TTL checks: when silence turns the check critical.
    pub ttl_deadline: Option<Instant>,
    /// HTTP checks: when the next probe is due.
    pub next_probe: Option<Instant>,
    pub modify_index: u64,
}

impl Check {
    pub fn new(spec: CheckSpec, now: Instant, index: u64) -> Check {
        let status = spec.status;
        let (ttl_deadline, next_probe) = match &spec.kind {
            CheckKind::Ttl(ttl) => (Some(now + *ttl), None),
            CheckKind::Http(_) => (None, Some(now)),
        };
        Check {
            spec,
            status,
            output: String::new(),
            critical_since: (status == Status::Critical).then_some(now),
            ttl_deadline,
            next_probe,
            modify_index: index,
        }
    }

    /// Carries status, output and critical time over from the check this one replaces.
    pub fn keep_state_of(&mut self, old: &Check) {
        self.status = old.status;
        self.output = old.output.clone();
        self.critical_since = old.critical_since;
    }

    /// A re-registration restarts the TTL, as Consul restarts its TTL timer.
    pub fn restart_ttl(&mut self, now: Instant) {
        if let CheckKind::Ttl(ttl) = self.spec.kind {
            self.ttl_deadline = Some(now + ttl);
        }
    }

    /// Records a reported status. Returns the previous status when it changed; output alone is not a
    /// change (Consul, too, does not raise the index for output-only updates of a steady check).
    pub fn set_status(&mut self, status: Status, output: String, at: Instant) -> Option<Status> {
        self.output = output;
        let previous = self.status;
        if previous == status {
            return None;
        }
        self.status = status;
        self.critical_since = (status == Status::Critical).then_some(at);
        Some(previous)
    }

    /// A TTL report: any status restarts the TTL, like Consul's `CheckTTL.SetStatus`.
    pub fn report(&mut self, status: Status, output: String, now: Instant) -> Option<Status> {
        self.restart_ttl(now);
        self.set_status(status, output, now)
    }

    /// Turns a TTL check critical once its deadline passed without a report.
    pub fn expire(&mut self, now: Instant) -> Option<Status> {
        match self.ttl_deadline {
            Some(deadline) if now >= deadline && self.status != Status::Critical => {
                self.set_status(Status::Critical, "TTL expired".into(), deadline)
            }
            _ => None,
        }
    }

    /// True once the check has been critical for at least its `deregister_after`.
    pub fn reap_due(&self, now: Instant) -> bool {
        match (self.spec.deregister_after, self.critical_since) {
            (Some(after), Some(since)) => now.saturating_duration_since(since) >= after,
            _ => false,
        }
    }

    /// The probe to run if one is due, pushing the next one an interval out.
    pub fn take_due_probe(&mut self, now: Instant) -> Option<HttpProbe> {
        let CheckKind::Http(probe) = &self.spec.kind else {
            return None;
        };
        match self.next_probe {
            Some(due) if now >= due => {
                self.next_probe = Some(now + probe.interval);
                Some(probe.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ttl_check(ttl: Duration, deregister_after: Option<Duration>, now: Instant) -> Check {
        let spec = CheckSpec {
            id: "service:web".into(),
            name: "web".into(),
            notes: String::new(),
            kind: CheckKind::Ttl(ttl),
            status: Status::Critical,
            deregister_after,
        };
        Check::new(spec, now, 1)
    }

    #[test]
    fn a_passing_ttl_check_turns_critical_only_once_the_ttl_has_passed() {
        let start = Instant::now();
        let mut check = ttl_check(10 * SECOND, None, start);
        assert_eq!(
            check.report(Status::Passing, String::new(), start),
            Some(Status::Critical)
        );

        assert_eq!(check.expire(start + 9 * SECOND), None);
        assert_eq!(check.status, Status::Passing);

        assert_eq!(check.expire(start + 10 * SECOND), Some(Status::Passing));
        assert_eq!(check.status, Status::Critical);
        assert_eq!(check.output, "TTL expired");
        assert_eq!(check.critical_since, Some(start + 10 * SECOND));
        assert_eq!(
            check.expire(start + 20 * SECOND),
            None,
            "expiring twice is no change"
        );
    }

    #[test]
    fn every_report_restarts_the_ttl() {
        let start = Instant::now();
        let mut check = ttl_check(10 * SECOND, None, start);
        check.report(Status::Passing, String::new(), start);
        check.report(Status::Passing, String::new(), start + 8 * SECOND);
        assert_eq!(check.expire(start + 15 * SECOND), None);
        assert_eq!(check.expire(start + 18 * SECOND), Some(Status::Passing));
    }

    #[test]
    fn warn_fail_and_pass_report_the_status_they_replaced() {
        let now = Instant::now();
        let mut check = ttl_check(10 * SECOND, None, now);
        assert_eq!(
            check.report(Status::Warning, "slow".into(), now),
            Some(Status::Critical)
        );
        assert_eq!(check.critical_since, None);
        assert_eq!(check.report(Status::Warning, "slower".into(), now), None);
        assert_eq!(
            check.output, "slower",
            "output is kept even when the status stays"
        );
        assert_eq!(
            check.report(Status::Critical, "down".into(), now),
            Some(Status::Warning)
        );
        assert_eq!(check.critical_since, Some(now));
        assert_eq!(
            check.report(Status::Passing, String::new(), now),
            Some(Status::Critical)
        );
        assert_eq!(check.status, Status::Passing);
    }

    #[test]
    fn http_answers_map_to_statuses_like_consul() {
        for (code, status) in [
            (200, Status::Passing),
            (204, Status::Passing),
            (299, Status::Passing),
            (429, Status::Warning),
            (301, Status::Critical),
            (404, Status::Critical),
            (500, Status::Critical),
            (503, Status::Critical),
        ] {
            assert_eq!(status_for_http(code), status, "{code}");
        }
    }

    #[test]
    fn the_reaper_is_due_only_after_the_check_was_critical_long_enough() {
        let start = Instant::now();
        let mut check = ttl_check(SECOND, Some(60 * SECOND), start);
        check.report(Status::Passing, String::new(), start);
        check.expire(start + SECOND);
        assert!(!check.reap_due(start + 60 * SECOND));
        assert!(check.reap_due(start + 61 * SECOND));

        check.report(Status::Passing, String::new(), start + 61 * SECOND);
        assert!(
            !check.reap_due(start + 120 * SECOND),
            "passing again resets the clock"
        );
        assert!(!ttl_check(SECOND, None, start).reap_due(start + 3600 * SECOND));
    }

    #[test]
    fn http_probes_fall_due_once_per_interval() {
        let start = Instant::now();
        let probe = HttpProbe {
            url: "http://127.0.0.1:1/health".into(),
            method: "GET".into(),
            headers: HashMap::new(),
            interval: 5 * SECOND,
            timeout: SECOND,
        };
        let spec = CheckSpec {
            id: "service:web".into(),
            name: "web".into(),
            notes: String::new(),
            kind: CheckKind::Http(probe.clone()),
            status: Status::Critical,
            deregister_after: None,
        };
        let mut check = Check::new(spec, start, 1);
        assert_eq!(check.take_due_probe(start), Some(probe));
        assert_eq!(check.take_due_probe(start + 4 * SECOND), None);
        assert!(check.take_due_probe(start + 5 * SECOND).is_some());
        assert_eq!(
            check.expire(start + 3600 * SECOND),
            None,
            "HTTP checks have no TTL"
        );
    }
}
