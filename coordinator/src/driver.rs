//! Driving one transaction to its end, from whatever state it is in.
//!
//! - **2PC, `preparing`**, by the coordinator that recorded it: prepare the branches one after the
//!   other in the submitted order (a refusal then saves the later branches' work; prepares are
//!   cheap next to a round of aborts, and checkout has two branches), retrying ambiguous answers
//!   until the deadline. All prepared → write `committing` (the decision, durably) *before* any
//!   commit. A definite no, or the deadline → write `aborting` (with the refusal).
//! - **2PC, `preparing`, found by recovery**: presumed abort — write `aborting`, never prepare.
//! - **2PC, `committing` / `aborting`**: commit (abort) every branch not known committed (aborted),
//!   all branches *at once*, each retried with capped backoff until it answers. In parallel so that
//!   one participant that is down does not keep the others' prepared transactions, and their locks,
//!   waiting. Abort goes to every branch, also never-prepared ones: that blocks a late prepare.
//! - **Saga, `running`**: actions in order, ambiguous answers retried until the deadline; a definite
//!   no or the deadline → `compensating`; all done → `completed`.
//! - **Saga, `compensating`**: compensations in reverse order, from the step that failed (or never
//!   answered) down to the first, each retried until it succeeds → `compensated`.
//!
//! Every state change is fenced (see [`crate::store`]): a driver that lost its lease stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{Answer, Op};
use crate::config::CrashPoint;
use crate::core::Coordinator;
use crate::lease::Lease;
use crate::metrics;
use crate::model::{AbortReason, BranchState, BranchView, Mode, TxState};
use crate::store::{self, BranchUpdate, Fence, Stored};

/// Why a driver stopped before the transaction was final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The fence no longer holds: another coordinator took the transaction over.
    LeaseLost,
}

type Drive = Result<(), Stop>;

/// The outcome of the first phase (prepares or actions).
enum FirstPhase {
    /// Every branch said yes.
    AllYes,
    /// Roll back, for this reason, with this refusal.
    No(AbortReason, Option<Value>),
}

impl Coordinator {
    /// Drives the transaction of `fence` until it is final or the lease is lost.
    pub(crate) async fn drive(
        self: &Arc<Self>,
        fence: &Fence,
        lease: &Lease,
        fresh: bool,
    ) -> Drive {
        loop {
            let Some(tx) = self
                .persist("load", || store::load(&self.pool, fence.gxid))
                .await
            else {
                tracing::error!(gxid = %fence.gxid, "the transaction being driven is gone");
                return Ok(());
            };
            let state = tx.view.state;
            if state.is_final() {
                return Ok(());
            }
            if tx.epoch != fence.epoch || tx.lease_owner.as_deref() != Some(fence.owner.as_str()) {
                return Err(Stop::LeaseLost);
            }
            match (tx.view.mode, state) {
                (Mode::TwoPhase, TxState::Preparing) if fresh => {
                    match self.prepare_all(fence, &tx).await? {
                        FirstPhase::AllYes => {
                            self.faults_if(fresh, CrashPoint::AfterAllPrepares);
                            self.decide(fence, state, TxState::Committing, None, None)
                                .await?;
                            self.faults_if(fresh, CrashPoint::AfterDecision);
                        }
                        FirstPhase::No(reason, refusal) => {
                            self.decide(fence, state, TxState::Aborting, Some(reason), refusal)
                                .await?;
                        }
                    }
                }
                (Mode::TwoPhase, TxState::Preparing) => {
                    tracing::warn!(gxid = %fence.gxid, "found in preparing: presumed abort");
                    self.decide(
                        fence,
                        state,
                        TxState::Aborting,
                        Some(AbortReason::PresumedAbort),
                        None,
                    )
                    .await?;
                }
                (Mode::TwoPhase, TxState::Committing) => {
                    self.phase2(fence, &tx, Op::Commit, fresh).await?;
                    self.finish(fence, lease, &tx, TxState::Committed).await?;
                }
                (Mode::TwoPhase, TxState::Aborting) => {
                    self.phase2(fence, &tx, Op::Abort, fresh).await?;
                    self.finish(fence, lease, &tx, TxState::Aborted).await?;
                }
                (Mode::Saga, TxState::Running) => match self.act_all(fence, &tx).await? {
                    FirstPhase::AllYes => {
                        self.finish(fence, lease, &tx, TxState::Completed).await?;
                    }
                    FirstPhase::No(reason, refusal) => {
                        self.decide(fence, state, TxState::Compensating, Some(reason), refusal)
                            .await?;
                    }
                },
                (Mode::Saga, TxState::Compensating) => {
                    self.compensate_all(fence, &tx).await?;
                    self.finish(fence, lease, &tx, TxState::Compensated).await?;
                }
                (mode, state) => {
                    // The database's CHECK constraint rules this out.
                    tracing::error!(gxid = %fence.gxid, %mode, %state, "impossible mode and state");
                    return Ok(());
                }
            }
        }
    }

    fn faults_if(&self, fresh: bool, point: CrashPoint) {
        if fresh {
            self.faults.crash_if(point);
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.config.retry_backoff_min_ms),
            Duration::from_millis(self.config.retry_backoff_max_ms),
        )
    }

    /// Runs a database operation until it succeeds. It cannot fail for good while the lease holds;
    /// when the database stays unreachable the lease lapses and the driver is stopped from outside.
    async fn persist<T, F, Fut>(&self, what: &'static str, mut op: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = self.backoff();
        loop {
            match op().await {
                Ok(value) => return value,
                Err(e) if platform::problem::is_transient(&e) => {
                    tracing::warn!(what, error = %e, "coordinator database unavailable; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    // A bug or a schema mismatch: retried all the same (giving up would leave the
                    // transaction half done), but loudly.
                    tracing::error!(what, error = %e, "coordinator database operation failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn record(&self, fence: &Fence, position: usize, update: BranchUpdate<'_>) -> Drive {
        let done = self
            .persist("branch update", || {
                store::update_branch(&self.pool, fence, position, &update)
            })
            .await;
        if done { Ok(()) } else { Err(Stop::LeaseLost) }
    }

    /// Writes a decision (`committing`, `aborting`, `compensating`).
    async fn decide(
        &self,
        fence: &Fence,
        from: TxState,
        to: TxState,
        reason: Option<AbortReason>,
        refusal: Option<Value>,
    ) -> Drive {
        let states = [from, to];
        let done = self
            .persist("decision", || {
                store::set_state(&self.pool, fence, &states, to, reason, refusal.as_ref())
            })
            .await;
        if !done {
            return Err(Stop::LeaseLost);
        }
        tracing::info!(gxid = %fence.gxid, %from, %to, reason = reason.map(AbortReason::as_str),
            "decided");
        self.notify_change(fence.gxid);
        Ok(())
    }

    async fn finish(&self, fence: &Fence, lease: &Lease, tx: &Stored, to: TxState) -> Drive {
        lease.set_finishing();
        let from = tx.view.state;
        let states = [from, to];
        let age = self
            .persist("final state", || {
                store::finish(&self.pool, fence, &states, to)
            })
            .await;
        let Some(age) = age else {
            return Err(Stop::LeaseLost);
        };
        metrics::finished(tx.view.mode, to, age);
        tracing::info!(gxid = %fence.gxid, mode = %tx.view.mode, state = %to,
            seconds = age, "transaction finished");
        self.notify_change(fence.gxid);
        Ok(())
    }

    /// Sends `op` until an answer other than ambiguous comes or `deadline` passes (`None`). Returns
    /// the answer, the calls sent and the last ambiguous reason.
    async fn until_definite(
        &self,
        branch: &BranchView,
        op: Op,
        payload: &Value,
        deadline: Instant,
    ) -> (Option<Answer>, i32, Option<String>) {
        let mut backoff = self.backoff();
        let mut calls = 0;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (None, calls, last);
            }
            let answer = self
                .client
                .call(&branch.service, op, &branch.gid, payload, Some(left))
                .await;
            calls += 1;
            match answer {
                Answer::Ambiguous(reason) => {
                    tracing::warn!(gid = %branch.gid, op = op.as_str(), %reason,
                        "ambiguous answer; retrying");
                    last = Some(reason);
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.next_delay().min(left)).await;
                }
                definite => return (Some(definite), calls, last),
            }
        }
    }

    /// Sends `op` (commit, abort or compensate) until the branch confirms it, however long that
    /// takes, and records the branch's new state.
    async fn until_done(
        &self,
        fence: &Fence,
        position: usize,
        branch: &BranchView,
        op: Op,
        payload: &Value,
    ) -> Drive {
        let (expected, state) = match op {
            Op::Commit => (Answer::Committed, BranchState::Committed),
            Op::Abort => (Answer::Aborted, BranchState::Aborted),
            _ => (Answer::Compensated, BranchState::Compensated),
        };
        let mut backoff = self.backoff();
        let mut calls = 0;
        let mut recorded_error: Option<String> = branch.last_error.clone();
        loop {
            if calls > 0 {
                metrics::phase2_retry(op.as_str());
            }
            let answer = self
                .client
                .call(&branch.service, op, &branch.gid, payload, None)
                .await;
            calls += 1;
            if answer == expected {
                let update = BranchUpdate {
                    state: Some(state),
                    last_error: recorded_error.is_some().then_some(None),
                    calls,
                    ..BranchUpdate::default()
                };
                return self.record(fence, position, update).await;
            }
            let error = match &answer {
                Answer::Ambiguous(reason) => reason.clone(),
                Answer::NotPrepared => {
                    "protocol violation: commit answered not-prepared (the branch is neither \
                     prepared nor committed); retrying"
                        .to_owned()
                }
                Answer::AlreadyCommitted => {
                    "protocol violation: abort answered already-committed; retrying".to_owned()
                }
                other => format!("unexpected answer {:?} to {}; retrying", other, op.as_str()),
            };
            tracing::warn!(gid = %branch.gid, op = op.as_str(), error = %error, calls,
                "branch has not confirmed yet");
            if recorded_error.as_deref() != Some(error.as_str()) {
                let update = BranchUpdate {
                    last_error: Some(Some(error.clone())),
                    calls,
                    ..BranchUpdate::default()
                };
                self.record(fence, position, update).await?;
                calls = 0;
                recorded_error = Some(error);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Prepares every branch in order; stops at the first definite no.
    async fn prepare_all(&self, fence: &Fence, tx: &Stored) -> Result<FirstPhase, Stop> {
        self.faults.crash_if(CrashPoint::BeforePrepare);
        let deadline = deadline_of(tx);
        for (position, branch) in tx.view.branches.iter().enumerate() {
            if branch.state == BranchState::Prepared {
                continue;
            }
            let payload = tx.payloads.get(position).unwrap_or(&Value::Null);
            let (answer, calls, last) = self
                .until_definite(branch, Op::Prepare, payload, deadline)
                .await;
            match answer {
                Some(answer @ (Answer::Prepared | Answer::Committed)) => {
                    if answer == Answer::Committed {
                        metrics::protocol_violation("prepare", "committed");
                        tracing::error!(gid = %branch.gid,
                            "protocol violation: prepare answered committed before any decision");
                    }
                    let update = BranchUpdate {
                        state: Some(BranchState::Prepared),
                        calls,
                        ..BranchUpdate::default()
                    };
                    self.record(fence, position, update).await?;
                    if position == 0 {
                        self.faults.crash_if(CrashPoint::AfterFirstPrepare);
                    }
                }
                other => {
                    return self
                        .first_phase_no(fence, position, branch, other, calls, last)
                        .await;
                }
            }
        }
        Ok(FirstPhase::AllYes)
    }

    /// Runs the saga's actions in order; stops at the first definite no or at the deadline.
    async fn act_all(&self, fence: &Fence, tx: &Stored) -> Result<FirstPhase, Stop> {
        let deadline = deadline_of(tx);
        for (position, branch) in tx.view.branches.iter().enumerate() {
            if branch.state == BranchState::Done {
                continue;
            }
            let payload = tx.payloads.get(position).unwrap_or(&Value::Null);
            let (answer, calls, last) = self
                .until_definite(branch, Op::Action, payload, deadline)
                .await;
            match answer {
                Some(Answer::Done) => {
                    let update = BranchUpdate {
                        state: Some(BranchState::Done),
                        calls,
                        ..BranchUpdate::default()
                    };
                    self.record(fence, position, update).await?;
                }
                other => {
                    return self
                        .first_phase_no(fence, position, branch, other, calls, last)
                        .await;
                }
            }
        }
        Ok(FirstPhase::AllYes)
    }

    /// Records why the branch at `position` ended the first phase with a no (`None`: the deadline).
    async fn first_phase_no(
        &self,
        fence: &Fence,
        position: usize,
        branch: &BranchView,
        answer: Option<Answer>,
        calls: i32,
        last_ambiguous: Option<String>,
    ) -> Result<FirstPhase, Stop> {
        let (state, reason, refusal, error) = match answer {
            Some(Answer::Refused(refusal)) => (
                Some(BranchState::Refused),
                AbortReason::Refused,
                Some(refusal),
                None,
            ),
            Some(Answer::Blocked(detail)) => (
                Some(BranchState::Refused),
                AbortReason::Blocked,
                None,
                Some(format!("blocked: {detail}")),
            ),
            Some(Answer::Invalid(detail)) => (
                Some(BranchState::Refused),
                AbortReason::Invalid,
                None,
                Some(format!("invalid: {detail}")),
            ),
            Some(other) => (
                Some(BranchState::Refused),
                AbortReason::Invalid,
                None,
                Some(format!("unexpected answer {}", other.name())),
            ),
            None => (
                None,
                AbortReason::Timeout,
                None,
                Some(format!(
                    "no definite answer before the deadline (last: {})",
                    last_ambiguous
                        .as_deref()
                        .unwrap_or("no call could be sent in time")
                )),
            ),
        };
        tracing::info!(gid = %branch.gid, reason = reason.as_str(), "branch said no");
        let update = BranchUpdate {
            state,
            refusal: refusal.as_ref(),
            last_error: error.map(Some),
            calls,
        };
        self.record(fence, position, update).await?;
        Ok(FirstPhase::No(reason, refusal))
    }

    /// Commits or aborts every branch not already committed or aborted, all at once.
    async fn phase2(&self, fence: &Fence, tx: &Stored, op: Op, fresh: bool) -> Drive {
        let target = if op == Op::Commit {
            BranchState::Committed
        } else {
            BranchState::Aborted
        };
        let first_commit = AtomicBool::new(false);
        let work = tx
            .view
            .branches
            .iter()
            .enumerate()
            .filter(|(_, branch)| branch.state != target)
            .map(|(position, branch)| {
                let first_commit = &first_commit;
                async move {
                    self.until_done(fence, position, branch, op, &Value::Null)
                        .await?;
                    if op == Op::Commit && !first_commit.swap(true, Ordering::SeqCst) {
                        self.faults_if(fresh, CrashPoint::DuringPhase2);
                    }
                    Ok(())
                }
            });
        // The first error (a lost lease) drops the other branches' retries.
        futures::future::try_join_all(work).await.map(|_| ())
    }

    /// Compensates, in reverse order, every step that may have acted.
    async fn compensate_all(&self, fence: &Fence, tx: &Stored) -> Drive {
        let states: Vec<BranchState> = tx.view.branches.iter().map(|b| b.state).collect();
        let last = compensation_start(&states);
        for position in (0..=last).rev() {
            let branch = &tx.view.branches[position];
            if branch.state == BranchState::Compensated {
                continue;
            }
            let payload = tx.payloads.get(position).unwrap_or(&Value::Null);
            self.until_done(fence, position, branch, Op::Compensate, payload)
                .await?;
        }
        Ok(())
    }
}

/// The local instant of the transaction's deadline.
fn deadline_of(tx: &Stored) -> Instant {
    Instant::now() + Duration::from_millis(u64::try_from(tx.remaining_ms).unwrap_or(0))
}

/// The last step a compensation must cover: the step that failed or never answered. Steps act one
/// at a time, so when compensation begins the steps before the first one not `done` are done, that
/// one failed (refused, or no definite answer: it may have applied) and the later ones never ran.
/// Compensations then turn steps `compensated` from that one down; the highest `compensated` (or
/// `refused`) step therefore still marks it after a restart.
pub(crate) fn compensation_start(states: &[BranchState]) -> usize {
    let last = states.len().saturating_sub(1);
    let first_not_done = states
        .iter()
        .position(|s| *s != BranchState::Done)
        .unwrap_or(last);
    let highest_marked = states
        .iter()
        .rposition(|s| matches!(s, BranchState::Compensated | BranchState::Refused))
        .unwrap_or(0);
    first_not_done.max(highest_marked).min(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BranchState::{Compensated as C, Done as D, Pending as P, Refused as R};

    #[test]
    fn compensation_starts_at_the_step_that_failed_even_after_a_restart() {
        for (states, start) in [
            (&[R, P, P][..], 0),
            (&[D, R, P], 1),
            (&[D, P, P], 1),
            (&[D, D, P], 2),
            (&[D, C, P], 1),
            (&[D, C, C, P], 2),
            (&[C, C, P], 1),
            (&[C, P], 0),
            (&[D, D], 1),
            (&[P], 0),
        ] {
            assert_eq!(compensation_start(states), start, "{states:?}");
        }
    }
}
