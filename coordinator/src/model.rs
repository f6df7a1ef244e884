//! The vocabulary: modes, transaction and branch states, a validated submission and the JSON
//! representation of a transaction.

use std::fmt;

use chrono::{DateTime, Utc};
use platform::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::{CoordinatorConfig, is_name, is_service_name};

/// The most branches one transaction may have.
pub const MAX_BRANCHES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    #[serde(rename = "2pc")]
    TwoPhase,
    #[serde(rename = "saga")]
    Saga,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TwoPhase => "2pc",
            Mode::Saga => "saga",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "2pc" => Some(Mode::TwoPhase),
            "saga" => Some(Mode::Saga),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A global transaction's state. 2PC: `preparing → committing → committed` or `preparing →
/// aborting → aborted`; saga: `running → completed` or `running → compensating → compensated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    Preparing,
    Committing,
    Committed,
    Aborting,
    Aborted,
    Running,
    Completed,
    Compensating,
    Compensated,
}

impl TxState {
    pub const ALL: [TxState; 9] = [
        TxState::Preparing,
        TxState::Committing,
        TxState::Committed,
        TxState::Aborting,
        TxState::Aborted,
        TxState::Running,
        TxState::Completed,
        TxState::Compensating,
        TxState::Compensated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Preparing => "preparing",
            TxState::Committing => "committing",
            TxState::Committed => "committed",
            TxState::Aborting => "aborting",
            TxState::Aborted => "aborted",
            TxState::Running => "running",
            TxState::Completed => "completed",
            TxState::Compensating => "compensating",
            TxState::Compensated => "compensated",
        }
    }

    pub fn parse(text: &str) -> Option<TxState> {
        TxState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxState::Committed | TxState::Aborted | TxState::Completed | TxState::Compensated
        )
    }

    /// Decided, but the decision is not carried out everywhere yet ("in doubt" for an operator).
    pub fn is_decided_unfinished(self) -> bool {
        matches!(
            self,
            TxState::Committing | TxState::Aborting | TxState::Compensating
        )
    }

    /// The state a new transaction of `mode` starts in.
    pub fn initial(mode: Mode) -> TxState {
        match mode {
            Mode::TwoPhase => TxState::Preparing,
            Mode::Saga => TxState::Running,
        }
    }
}

impl fmt::Display for TxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the coordinator knows about one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BranchState {
    /// No definite answer yet (never sent, or only ambiguous answers).
    Pending,
    /// 2PC: prepared (PREPARE TRANSACTION done in the participant).
    Prepared,
    /// 2PC: committed.
    Committed,
    /// 2PC: rolled back, or blocked before it was prepared.
    Aborted,
    /// Saga: the action is done.
    Done,
    /// Saga: compensated (or a null compensation when the action never ran).
    Compensated,
    /// A definite "no": refused, blocked or invalid. Nothing was kept; an abort or compensation
    /// still follows (it turns into `aborted` / `compensated`).
    Refused,
}

impl BranchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Pending => "pending",
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::Aborted => "aborted",
            BranchState::Done => "done",
            BranchState::Compensated => "compensated",
            BranchState::Refused => "refused",
        }
    }

    pub fn parse(text: &str) -> Option<BranchState> {
        [
            BranchState::Pending,
            BranchState::Prepared,
            BranchState::Committed,
            BranchState::Aborted,
            BranchState::Done,
            BranchState::Compensated,
            BranchState::Refused,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why a transaction was rolled back (`reason` in its representation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AbortReason {
    /// A branch refused (business "no"); `refusal` says why.
    Refused,
    /// A branch answered 409 `aborted`: an abort or compensation for it came first.
    Blocked,
    /// A branch rejected its payload (422) or the request (400).
    Invalid,
    /// The deadline passed before every branch prepared (2PC) or acted (saga).
    Timeout,
    /// Recovery found the transaction in `preparing` after its coordinator was gone.
    PresumedAbort,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::Refused => "refused",
            AbortReason::Blocked => "blocked",
            AbortReason::Invalid => "invalid",
            AbortReason::Timeout => "timeout",
            AbortReason::PresumedAbort => "presumed-abort",
        }
    }

    pub fn parse(text: &str) -> Option<AbortReason> {
        [
            AbortReason::Refused,
            AbortReason::Blocked,
            AbortReason::Invalid,
            AbortReason::Timeout,
            AbortReason::PresumedAbort,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// One branch as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    /// The registry name of the participant service.
    pub service: String,
    /// The branch name, `[a-z0-9_]{1,32}`, unique within the transaction.
    pub branch: String,
    /// Handed to the participant as is.
    #[serde(default)]
    pub payload: Value,
}

/// `POST /internal/transactions`, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionBody {
    pub gxid: Uuid,
    pub mode: Mode,
    pub branches: Vec<BranchSpec>,
    pub timeout_ms: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// A checked submission. Two submissions are the same transaction when `gxid`, `mode`, `branches`
/// and the effective `timeout_ms` are equal (`wait_ms` only concerns one call).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub gxid: Uuid,
    pub mode: Mode,
    pub branches: Vec<BranchSpec>,
    pub timeout_ms: u64,
    pub wait_ms: u64,
}

impl Submission {
    /// Validates `body`: 422 naming every field at fault.
    pub fn parse(body: SubmissionBody, config: &CoordinatorConfig) -> Result<Submission, ApiError> {
        let mut errors = Vec::new();
        if body.branches.is_empty() || body.branches.len() > MAX_BRANCHES {
            errors.push(FieldError::new(
                "branches",
                format!("must hold 1 to {MAX_BRANCHES} branches"),
            ));
        }
        for (i, spec) in body.branches.iter().enumerate() {
            if !is_service_name(&spec.service) {
                errors.push(FieldError::new(
                    format!("branches[{i}].service"),
                    "must match [a-z][a-z0-9_-]{0,63}",
                ));
            } else if !config.participants.contains(&spec.service) {
                errors.push(FieldError::new(
                    format!("branches[{i}].service"),
                    format!(
                        "{:?} is not a participant of this coordinator (one of {:?})",
                        spec.service, config.participants
                    ),
                ));
            }
            if !is_name(&spec.branch, 32, true) {
                errors.push(FieldError::new(
                    format!("branches[{i}].branch"),
                    "must match [a-z0-9_]{1,32}",
                ));
            } else if body.branches[..i].iter().any(|b| b.branch == spec.branch) {
                errors.push(FieldError::new(
                    format!("branches[{i}].branch"),
                    "branch names must be unique within a transaction",
                ));
            }
        }
        let timeout_ms = body.timeout_ms.unwrap_or(config.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > config.max_timeout_ms {
            errors.push(FieldError::new(
                "timeout_ms",
                format!("must be between 1 and {}", config.max_timeout_ms),
            ));
        }
        let wait_ms = body.wait_ms.unwrap_or(timeout_ms);
        if wait_ms > config.max_timeout_ms {
            errors.push(FieldError::new(
                "wait_ms",
                format!("must be between 0 and {}", config.max_timeout_ms),
            ));
        }
        ApiError::check(errors)?;
        Ok(Submission {
            gxid: body.gxid,
            mode: body.mode,
            branches: body.branches,
            timeout_ms,
            wait_ms,
        })
    }

    /// Whether `other` (a resubmission) asks for the same transaction as this one.
    pub fn same_transaction(&self, other: &Submission) -> bool {
        self.gxid == other.gxid
            && self.mode == other.mode
            && self.branches == other.branches
            && self.timeout_ms == other.timeout_ms
    }
}

/// The gid of a branch: `<prefix>:<gxid>:<branch>`.
pub fn gid(prefix: &str, gxid: Uuid, branch: &str) -> String {
    format!("{prefix}:{gxid}:{branch}")
}

/// The parts of a gid under `prefix`, or `None` when it is not of that shape.
pub fn parse_gid<'a>(prefix: &str, gid: &'a str) -> Option<(Uuid, &'a str)> {
    let rest = gid.strip_prefix(prefix)?.strip_prefix(':')?;
    let (gxid, branch) = rest.split_once(':')?;
    if gxid.len() != 36 || !is_name(branch, 32, true) {
        return None;
    }
    Some((gxid.parse().ok()?, branch))
}

/// One branch in a transaction's representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchView {
    pub service: String,
    pub branch: String,
    pub gid: String,
    pub state: BranchState,
    /// The participant's refusal when this branch said no.
    pub refusal: Option<Value>,
    /// The last unexpected answer (protocol violation, misconfiguration), for operators.
    pub last_error: Option<String>,
}

/// The answer of `POST /internal/transactions` and `GET /internal/transactions/{gxid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionView {
    pub gxid: Uuid,
    pub mode: Mode,
    pub state: TxState,
    /// Whether `state` is final (the HTTP status is then 200, else 202).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The refusal (`{"kind","detail",…}`) that rolled the transaction back, if one did.
    pub refusal: Option<Value>,
    /// Why it was rolled back: `refused`, `blocked`, `invalid`, `timeout`, `presumed-abort`.
    pub reason: Option<AbortReason>,
    pub branches: Vec<BranchView>,
    pub timeout_ms: u64,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TransactionView {
    /// The submission this transaction was created from (for resubmission checks).
    pub fn as_submission(&self, payloads: Vec<Value>) -> Submission {
        Submission {
            gxid: self.gxid,
            mode: self.mode,
            branches: self
                .branches
                .iter()
                .zip(payloads)
                .map(|(b, payload)| BranchSpec {
                    service: b.service.clone(),
                    branch: b.branch.clone(),
                    payload,
                })
                .collect(),
            timeout_ms: self.timeout_ms,
            wait_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<Submission, ApiError> {
        let body: SubmissionBody =
            serde_json::from_value(body).map_err(|e| ApiError::Validation {
                detail: e.to_string(),
                errors: Vec::new(),
            })?;
        Submission::parse(body, &CoordinatorConfig::default())
    }

    fn body() -> Value {
        json!({"gxid": Uuid::now_v7(), "mode": "2pc", "branches": [
            {"service": "books", "branch": "reserve", "payload": {"items": []}},
            {"service": "orders", "branch": "place", "payload": {}},
        ]})
    }

    #[test]
    fn a_valid_submission_gets_the_default_timeout_and_waits_as_long() -> anyhow::Result<()> {
        let submission = parse(body()).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(submission.timeout_ms, 10_000);
        assert_eq!(submission.wait_ms, 10_000);
        assert_eq!(submission.mode, Mode::TwoPhase);
        Ok(())
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = body();
        bad["branches"][0]["service"] = json!("Books!");
        bad["branches"][1]["branch"] = json!("reserve");
        bad["branches"][1]["service"] = json!("warehouse");
        bad["timeout_ms"] = json!(0);
        bad["wait_ms"] = json!(1_000_000);
        match parse(bad) {
            Err(ApiError::Validation { errors, .. }) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "branches[0].service",
                        "branches[1].service",
                        "branches[1].branch",
                        "timeout_ms",
                        "wait_ms"
                    ]
                );
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        let mut empty = body();
        empty["branches"] = json!([]);
        assert!(parse(empty).is_err());
    }

    #[test]
    fn gids_round_trip_and_foreign_shapes_are_rejected() {
        let gxid = Uuid::now_v7();
        let gid = gid("bkc", gxid, "reserve");
        assert_eq!(parse_gid("bkc", &gid), Some((gxid, "reserve")));
        assert_eq!(parse_gid("bk", &gid), None);
        assert_eq!(parse_gid("bkc", "bkc:not-a-uuid:reserve"), None);
        assert_eq!(parse_gid("bkc", &format!("bkc:{gxid}:Reserve")), None);
        assert_eq!(parse_gid("bkc", &format!("bkc:{gxid}")), None);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in TxState::ALL {
            assert_eq!(TxState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(json!(state.as_str()))
            );
        }
        assert!(TxState::Committed.is_final() && !TxState::Committing.is_final());
        assert_eq!(
            serde_json::to_value(AbortReason::PresumedAbort).ok(),
            Some(json!("presumed-abort"))
        );
    }
}
