//! A scenario's verdict and its report under `<dir>/reports/`.

use std::path::{Path, PathBuf};

use loadgen::{Check, LoadReport};
use serde::Serialize;

/// Something that happened during the run, at a time since the load started.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub scenario: String,
    pub description: String,
    /// `pass`, `fail` or `not available` (a scenario this platform cannot run yet).
    pub verdict: String,
    /// Why it failed (or was not run); empty on a pass.
    pub reasons: Vec<String>,
    pub started_unix_ms: u128,
    pub events: Vec<Event>,
    pub min_availability: f64,
    pub availability: f64,
    /// Between the fault and its undoing.
    pub availability_during_fault: Option<f64>,
    pub invariants: Vec<Check>,
    pub load: Option<LoadReport>,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// `<dir>/reports/chaos-<scenario>-<unix ms>.json`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let reports = dir.join("reports");
        std::fs::create_dir_all(&reports)?;
        let path = reports.join(format!(
            "chaos-{}-{}.json",
            self.scenario, self.started_unix_ms
        ));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "{:<18} {:<14} availability {:>7.3} % (during the fault {}), longest error burst {}",
            self.scenario,
            self.verdict.to_uppercase(),
            self.availability * 100.0,
            self.availability_during_fault
                .map_or("-".to_owned(), |a| format!("{:.3} %", a * 100.0)),
            self.load.as_ref().map_or("-".to_owned(), |l| format!(
                "{} requests / {} ms",
                l.longest_error_burst.requests, l.longest_error_burst.millis
            )),
        )];
        for check in &self.invariants {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            lines.push(format!("    {mark} {}: {}", check.name, check.detail));
        }
        for reason in &self.reasons {
            lines.push(format!("    because: {reason}"));
        }
        lines.join("\n")
    }
}

/// Pass when every invariant holds, availability reached the scenario's minimum and nothing went
/// wrong injecting or undoing the fault; otherwise the reasons.
pub fn judge(
    invariants: &[Check],
    availability: f64,
    min: f64,
    trouble: &[String],
) -> (String, Vec<String>) {
    let mut reasons: Vec<String> = invariants
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("invariant broken: {}: {}", c.name, c.detail))
        .collect();
    if availability < min {
        reasons.push(format!(
            "availability {:.3} % is below the {:.1} % this scenario must keep",
            availability * 100.0,
            min * 100.0
        ));
    }
    reasons.extend(trouble.iter().cloned());
    let verdict = if reasons.is_empty() { "pass" } else { "fail" };
    (verdict.to_owned(), reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ok: bool) -> Check {
        Check {
            name: "money conserved",
            ok,
            detail: "d".into(),
        }
    }

    #[test]
    fn a_pass_needs_every_invariant_enough_availability_and_no_trouble() {
        assert_eq!(judge(&[check(true)], 0.995, 0.99, &[]).0, "pass");
        let (verdict, reasons) = judge(&[check(false)], 0.995, 0.99, &[]);
        assert_eq!(verdict, "fail");
        assert!(reasons[0].contains("money conserved"));
        let (verdict, reasons) = judge(&[check(true)], 0.98, 0.99, &[]);
        assert_eq!(verdict, "fail");
        assert!(reasons[0].contains("98.000 %"), "{reasons:?}");
        assert_eq!(
            judge(&[check(true)], 1.0, 0.99, &["restart failed".into()]).0,
            "fail"
        );
    }
}
