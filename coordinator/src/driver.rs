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

/// Branch news not written yet: it goes with the next transition (see [`store::Transition`]).
type Pending = Vec<(usize, BranchUpdate)>;

impl Coordinator {
    /// Drives the transaction of `fence` until it is final or the lease is lost. `known`: the
    /// transaction as this process just recorded it (else it is read first). From then on it is
    /// kept in memory: every write is fenced, so the database cannot change under a driver that
    /// still holds the lease.
    pub(crate) async fn drive(
        self: &Arc<Self>,
        fence: &Fence,
        lease: &Lease,
        fresh: bool,
        known: Option<Stored>,
    ) -> Drive {
        let mut tx = match known {
            Some(tx) => tx,
            None => {
                let loaded = self
                    .persist("load", || store::load(&self.pool, fence.gxid))
                    .await;
                let Some(tx) = loaded else {
                    tracing::error!(gxid = %fence.gxid, "the transaction being driven is gone");
                    return Ok(());
                };
                tx
            }
        };
        if tx.epoch != fence.epoch || tx.lease_owner.as_deref() != Some(fence.owner.as_str()) {
            return Err(Stop::LeaseLost);
        }
        // From here on every write also names this record (see `Fence::created_at`).
        let fence = &Fence {
            created_at: Some(tx.view.created_at),
            ..fence.clone()
        };
        loop {
            let state = tx.view.state;
            if state.is_final() {
                return Ok(());
            }
            let (to, reason, refusal, news) = match (tx.view.mode, state) {
                (Mode::TwoPhase, TxState::Preparing) if fresh => {
                    match self.prepare_all(&tx).await {
                        (FirstPhase::AllYes, news) => {
                            self.faults_if(fresh, CrashPoint::AfterAllPrepares);
                            (TxState::Committing, None, None, news)
                        }
                        (FirstPhase::No(reason, refusal), news) => {
                            (TxState::Aborting, Some(reason), refusal, news)
                        }
                    }
                }
                (Mode::TwoPhase, TxState::Preparing) => {
                    tracing::warn!(gxid = %fence.gxid, "found in preparing: presumed abort");
                    let reason = Some(AbortReason::PresumedAbort);
                    (TxState::Aborting, reason, None, Vec::new())
                }
                (Mode::TwoPhase, TxState::Committing) => {
                    let news = self.phase2(fence, &tx, Op::Commit, fresh).await?;
                    (TxState::Committed, None, None, news)
                }
                (Mode::TwoPhase, TxState::Aborting) => {
                    let news = self.phase2(fence, &tx, Op::Abort, fresh).await?;
                    (TxState::Aborted, None, None, news)
                }
                (Mode::Saga, TxState::Running) => match self.act_all(&tx).await {
                    (FirstPhase::AllYes, news) => (TxState::Completed, None, None, news),
                    (FirstPhase::No(reason, refusal), news) => {
                        (TxState::Compensating, Some(reason), refusal, news)
                    }
                },
                (Mode::Saga, TxState::Compensating) => {
                    let news = self.compensate_all(fence, &tx).await?;
                    (TxState::Compensated, None, None, news)
                }
                (mode, state) => {
                    // The database's CHECK constraint rules this out.
                    tracing::error!(gxid = %fence.gxid, %mode, %state, "impossible mode and state");
                    return Ok(());
                }
            };
            self.transition(fence, lease, &mut tx, to, reason, refusal, news)
                .await?;
            if to == TxState::Committing {
                self.faults_if(fresh, CrashPoint::AfterDecision);
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

    /// Writes what is known about one branch at once (only on the slow path: an error an operator
    /// should see while the branch is still being retried).
    async fn record(&self, fence: &Fence, position: usize, update: BranchUpdate) -> Drive {
        let done = self
            .persist("branch update", || {
                store::update_branch(&self.pool, fence, position, &update)
            })
            .await;
        if done { Ok(()) } else { Err(Stop::LeaseLost) }
    }

    /// Writes the move to `to` with the branch news gathered since the last write, then applies it
    /// to `tx` and tells whoever waits for this transaction.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        fence: &Fence,
        lease: &Lease,
        tx: &mut Stored,
        to: TxState,
        reason: Option<AbortReason>,
        refusal: Option<Value>,
        news: Pending,
    ) -> Drive {
        let from = tx.view.state;
        if to.is_final() {
            lease.set_finishing();
        }
        let states = [from, to];
        let transition = store::Transition {
            from: &states,
            to,
            reason,
            refusal: refusal.as_ref(),
            branches: &news,
        };
        let stamps = self
            .persist("transition", || {
                store::transition(&self.pool, fence, &transition)
            })
            .await;
        let Some(stamps) = stamps else {
            return Err(Stop::LeaseLost);
        };
        apply(tx, to, reason, refusal, &news, stamps);
        if to.is_final() {
            metrics::finished(tx.view.mode, to, stamps.age_s);
            tracing::info!(gxid = %fence.gxid, mode = %tx.view.mode, state = %to,
                seconds = stamps.age_s, "transaction finished");
        } else {
            tracing::info!(gxid = %fence.gxid, %from, %to, reason = reason.map(AbortReason::as_str),
                "decided");
        }
        lease.publish(&tx.view);
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
    /// takes. Returns the branch's news for the next transition; an unexpected answer is recorded
    /// at once, for operators, while the retries go on.
    async fn until_done(
        &self,
        fence: &Fence,
        position: usize,
        branch: &BranchView,
        op: Op,
        payload: &Value,
    ) -> Result<BranchUpdate, Stop> {
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
                return Ok(BranchUpdate {
                    state: Some(state),
                    last_error: recorded_error.is_some().then_some(None),
                    calls,
                    ..BranchUpdate::default()
                });
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

    /// Prepares every branch in order; stops at the first definite no. Nothing is written here:
    /// a crash before the decision is a presumed abort whatever was prepared, so the branches'
    /// news goes with the decision.
    async fn prepare_all(&self, tx: &Stored) -> (FirstPhase, Pending) {
        self.faults.crash_if(CrashPoint::BeforePrepare);
        let deadline = deadline_of(tx);
        let mut news = Pending::new();
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
                    news.push((
                        position,
                        BranchUpdate {
                            state: Some(BranchState::Prepared),
                            calls,
                            ..BranchUpdate::default()
                        },
                    ));
                    if position == 0 {
                        self.faults.crash_if(CrashPoint::AfterFirstPrepare);
                    }
                }
                other => {
                    let (no, update) = first_phase_no(branch, other, calls, last);
                    news.push((position, update));
                    return (no, news);
                }
            }
        }
        (FirstPhase::AllYes, news)
    }

    /// Runs the saga's actions in order; stops at the first definite no or at the deadline. An
    /// action done but not yet written is sent again after a crash: the barrier answers it as done.
    async fn act_all(&self, tx: &Stored) -> (FirstPhase, Pending) {
        let deadline = deadline_of(tx);
        let mut news = Pending::new();
        for (position, branch) in tx.view.branches.iter().enumerate() {
            if branch.state == BranchState::Done {
                continue;
            }
            let payload = tx.payloads.get(position).unwrap_or(&Value::Null);
            let (answer, calls, last) = self
                .until_definite(branch, Op::Action, payload, deadline)
                .await;
            match answer {
                Some(Answer::Done) => news.push((
                    position,
                    BranchUpdate {
                        state: Some(BranchState::Done),
                        calls,
                        ..BranchUpdate::default()
                    },
                )),
                other => {
                    let (no, update) = first_phase_no(branch, other, calls, last);
                    news.push((position, update));
                    return (no, news);
                }
            }
        }
        (FirstPhase::AllYes, news)
    }

    /// Commits or aborts every branch not already committed or aborted, all at once.
    async fn phase2(
        &self,
        fence: &Fence,
        tx: &Stored,
        op: Op,
        fresh: bool,
    ) -> Result<Pending, Stop> {
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
                    let update = self
                        .until_done(fence, position, branch, op, &Value::Null)
                        .await?;
                    if op == Op::Commit && !first_commit.swap(true, Ordering::SeqCst) {
                        self.faults_if(fresh, CrashPoint::DuringPhase2);
                    }
                    Ok((position, update))
                }
            });
        // The first error (a lost lease) drops the other branches' retries.
        futures::future::try_join_all(work).await
    }

    /// Compensates, in reverse order, every step that may have acted. A compensation done but not
    /// yet written is sent again after a crash: the barrier makes it a no-op.
    async fn compensate_all(&self, fence: &Fence, tx: &Stored) -> Result<Pending, Stop> {
        let states: Vec<BranchState> = tx.view.branches.iter().map(|b| b.state).collect();
        let last = compensation_start(&states);
        let mut news = Pending::new();
        for position in (0..=last).rev() {
            let branch = &tx.view.branches[position];
            if branch.state == BranchState::Compensated {
                continue;
            }
            let payload = tx.payloads.get(position).unwrap_or(&Value::Null);
            let update = self
                .until_done(fence, position, branch, Op::Compensate, payload)
                .await?;
            news.push((position, update));
        }
        Ok(news)
    }
}

/// The no that ended the first phase (`answer` `None`: the deadline passed), and the branch's news.
fn first_phase_no(
    branch: &BranchView,
    answer: Option<Answer>,
    calls: i32,
    last_ambiguous: Option<String>,
) -> (FirstPhase, BranchUpdate) {
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
        refusal: refusal.clone(),
        last_error: error.map(Some),
        calls,
    };
    (FirstPhase::No(reason, refusal), update)
}

/// Applies a written transition to the transaction in memory.
fn apply(
    tx: &mut Stored,
    to: TxState,
    reason: Option<AbortReason>,
    refusal: Option<Value>,
    news: &Pending,
    stamps: store::Stamps,
) {
    let view = &mut tx.view;
    view.state = to;
    view.is_final = to.is_final();
    view.reason = reason.or(view.reason);
    if refusal.is_some() {
        view.refusal = refusal;
    }
    view.updated_at = stamps.updated_at;
    view.decided_at = stamps.decided_at;
    view.finished_at = stamps.finished_at;
    for (position, update) in news {
        let Some(branch) = view.branches.get_mut(*position) else {
            continue;
        };
        if let Some(state) = update.state {
            branch.state = state;
        }
        if let Some(refusal) = &update.refusal {
            branch.refusal = Some(refusal.clone());
        }
        if let Some(error) = &update.last_error {
            branch.last_error = error.clone();
        }
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
