//! The coordinator database: recording transactions, fenced state changes, leases and claims.
//!
//! **Fencing.** A driver holds a transaction through `(lease_owner, attempts)`: `attempts` grows by
//! one on every claim, so it is an epoch no other driver can share. Every write a driver makes is
//! conditional on its fence, and a state change also on the states it may come from. A driver whose
//! lease was taken over therefore cannot write any more (its update matches no row) and stops.
//! All times are the database's (`now()`), so coordinators' clocks need not agree.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::model::{
    AbortReason, BranchSpec, BranchState, BranchView, Mode, Submission, TransactionView, TxState,
    gid,
};

/// The states a recovery loop may claim.
const UNFINISHED: [&str; 5] = [
    "preparing",
    "committing",
    "aborting",
    "running",
    "compensating",
];

/// Who may write to a transaction: its lease owner in one epoch — of one record of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub gxid: Uuid,
    pub owner: String,
    pub epoch: i32,
    /// The `created_at` of the record the driver holds (`None` until it has it). A 2PC record is
    /// not forced (see [`record_forced`]): when a crash of the database loses it, the caller sends
    /// the same gxid again and a *new* record starts at epoch 1, possibly leased to this very
    /// process. The old driver, if still running, must not write to the new record — its
    /// prepares may since have been rolled back as orphans — so its writes also name the record.
    pub created_at: Option<DateTime<Utc>>,
}

/// A transaction as stored, with what a driver needs beyond its representation.
#[derive(Debug, Clone)]
pub struct Stored {
    pub view: TransactionView,
    /// The branch payloads, in order.
    pub payloads: Vec<Value>,
    pub lease_owner: Option<String>,
    pub epoch: i32,
    /// Milliseconds until the deadline when it was read (negative once passed).
    pub remaining_ms: i64,
}

impl Stored {
    pub fn submission(&self) -> Submission {
        self.view.as_submission(self.payloads.clone())
    }
}

/// Whether the record of a new transaction of `mode` is forced: flushed (and, on a cluster, applied
/// by the synchronous standby) before the statement returns. A write that is not forced is still
/// committed and visible to every session at once; only a crash of the database within a moment of
/// it (a fraction of a second: the WAL writer's delay) can lose it, and then every later write of
/// the same database is lost with it — a forced commit flushes all the log before its own record.
///
/// - **A 2PC record is not forced** (presumed abort). If it is lost, so is anything written after
///   it in this database, so no decision exists: the transaction is aborted by whoever finds its
///   traces — prepared branches with no record are orphans the scan rolls back, and the driver that
///   is still running finds its row gone at the decision and stops (its fenced write matches no
///   row), as a driver that lost its lease does. The caller, told nothing final, resubmits the
///   same gxid, which is then a new transaction over the same idempotent branches.
/// - **A saga record is forced**: a saga's actions commit as they go, and nothing but its record
///   would ever compensate them.
///
/// See docs/TRANSACTIONS.md, "What is forced".
pub fn record_forced(mode: Mode) -> bool {
    mode == Mode::Saga
}

/// Whether a transition to `to` is forced (see [`record_forced`]). Every decision is (`committing`,
/// `aborting`, `compensating`, and `completed`, which is a saga's commit point); the final state
/// that follows a forced decision is not (`committed`, `aborted`, `compensated`): if it is lost,
/// the transaction is back in its decided state with a lease that expires, and recovery drives
/// phase 2 (or the compensations) again, which the participants answer idempotently.
pub fn transition_forced(to: TxState) -> bool {
    !matches!(
        to,
        TxState::Committed | TxState::Aborted | TxState::Compensated
    )
}

/// Records a new transaction (and its branches, `pending`) leased to `owner`, in one statement;
/// `None` when the gxid already exists. Committed before this returns, so before any participant
/// hears of it (forced or not: see [`record_forced`]). Returns the transaction as stored, so its
/// driver need not read it back.
pub async fn insert(
    pool: &PgPool,
    submission: &Submission,
    prefix: &str,
    owner: &str,
    lease_ms: u64,
) -> Result<Option<Stored>, sqlx::Error> {
    let specs =
        serde_json::to_value(&submission.branches).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let count = submission.branches.len();
    let positions: Vec<i32> = (0..count)
        .map(|p| i32::try_from(p).unwrap_or(i32::MAX))
        .collect();
    let services: Vec<&str> = submission
        .branches
        .iter()
        .map(|b| b.service.as_str())
        .collect();
    let names: Vec<&str> = submission
        .branches
        .iter()
        .map(|b| b.branch.as_str())
        .collect();
    let gids: Vec<String> = submission
        .branches
        .iter()
        .map(|b| gid(prefix, submission.gxid, &b.branch))
        .collect();
    // The branches' foreign key is checked at the end of the statement, when the transaction row
    // exists; when the gxid is taken, `g` is empty and so is the branch insert.
    let row = sqlx::query(
        "WITH g AS (
             INSERT INTO global_transactions
                 (gxid, mode, state, branches, timeout_ms, deadline, lease_owner, lease_until,
                  attempts)
             VALUES ($1, $2, $3, $4, $5, now() + $5 * interval '1 millisecond',
                     $6, now() + $7 * interval '1 millisecond', 1)
             ON CONFLICT (gxid) DO NOTHING
             RETURNING gxid, attempts, deadline, created_at, updated_at,
                       (extract(epoch FROM deadline - now()) * 1000)::bigint AS remaining_ms
         ), b AS (
             INSERT INTO branches (gxid, position, service, branch, gid)
             SELECT g.gxid, t.position, t.service, t.branch, t.gid
             FROM g, unnest($8::integer[], $9::text[], $10::text[], $11::text[])
                 AS t(position, service, branch, gid)
         )
         SELECT attempts, deadline, created_at, updated_at, remaining_ms,
                CASE WHEN NOT $12 THEN set_config('synchronous_commit', 'off', true) END
         FROM g",
    )
    .bind(submission.gxid)
    .bind(submission.mode.as_str())
    .bind(TxState::initial(submission.mode).as_str())
    .bind(specs)
    .bind(to_i64(submission.timeout_ms))
    .bind(owner)
    .bind(to_i64(lease_ms))
    .bind(&positions)
    .bind(&services)
    .bind(&names)
    .bind(&gids)
    .bind(record_forced(submission.mode))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let state = TxState::initial(submission.mode);
    let branches = submission
        .branches
        .iter()
        .zip(gids)
        .map(|(spec, gid)| BranchView {
            service: spec.service.clone(),
            branch: spec.branch.clone(),
            gid,
            state: BranchState::Pending,
            refusal: None,
            last_error: None,
        })
        .collect();
    Ok(Some(Stored {
        view: TransactionView {
            gxid: submission.gxid,
            mode: submission.mode,
            state,
            is_final: false,
            refusal: None,
            reason: None,
            branches,
            timeout_ms: submission.timeout_ms,
            deadline: row.try_get("deadline")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            decided_at: None,
            finished_at: None,
        },
        payloads: submission
            .branches
            .iter()
            .map(|b| b.payload.clone())
            .collect(),
        lease_owner: Some(owner.to_owned()),
        epoch: row.try_get("attempts")?,
        remaining_ms: row.try_get("remaining_ms")?,
    }))
}

/// The transaction `gxid`, if there is one.
pub async fn load(pool: &PgPool, gxid: Uuid) -> Result<Option<Stored>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT gxid, mode, state, branches, timeout_ms, deadline, refusal, reason, lease_owner,
                attempts, created_at, updated_at, decided_at, finished_at,
                (extract(epoch FROM deadline - now()) * 1000)::bigint AS remaining_ms
         FROM global_transactions WHERE gxid = $1",
    )
    .bind(gxid)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let branch_rows = sqlx::query(
        "SELECT service, branch, gid, state, refusal, last_error
         FROM branches WHERE gxid = $1 ORDER BY position",
    )
    .bind(gxid)
    .fetch_all(pool)
    .await?;
    let mode: String = row.try_get("mode")?;
    let state: String = row.try_get("state")?;
    let reason: Option<String> = row.try_get("reason")?;
    let specs: Value = row.try_get("branches")?;
    let specs: Vec<BranchSpec> =
        serde_json::from_value(specs).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut branches = Vec::with_capacity(branch_rows.len());
    for b in &branch_rows {
        let state: String = b.try_get("state")?;
        branches.push(BranchView {
            service: b.try_get("service")?,
            branch: b.try_get("branch")?,
            gid: b.try_get("gid")?,
            state: BranchState::parse(&state)
                .ok_or_else(|| decode_error("branch state", &state))?,
            refusal: b.try_get("refusal")?,
            last_error: b.try_get("last_error")?,
        });
    }
    let state = TxState::parse(&state).ok_or_else(|| decode_error("state", &state))?;
    let view = TransactionView {
        gxid: row.try_get("gxid")?,
        mode: Mode::parse(&mode).ok_or_else(|| decode_error("mode", &mode))?,
        state,
        is_final: state.is_final(),
        refusal: row.try_get("refusal")?,
        reason: match reason {
            Some(r) => Some(AbortReason::parse(&r).ok_or_else(|| decode_error("reason", &r))?),
            None => None,
        },
        branches,
        timeout_ms: u64::try_from(row.try_get::<i64, _>("timeout_ms")?).unwrap_or(0),
        deadline: row.try_get("deadline")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        decided_at: row.try_get("decided_at")?,
        finished_at: row.try_get("finished_at")?,
    };
    Ok(Some(Stored {
        payloads: specs.into_iter().map(|s| s.payload).collect(),
        view,
        lease_owner: row.try_get("lease_owner")?,
        epoch: row.try_get("attempts")?,
        remaining_ms: row.try_get("remaining_ms")?,
    }))
}

fn decode_error(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {value:?} in the coordinator database").into())
}

/// When a transition was written, as the database stamped it.
#[derive(Debug, Clone, Copy)]
pub struct Stamps {
    pub updated_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds since the transaction was created.
    pub age_s: f64,
}

/// A state change of one transaction, with what its driver learned about branches since the last
/// one — all in one statement, so a checkout costs the coordinator three writes (record, decision,
/// final state) rather than one per branch and step.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    /// The states it may come from (include `to` to make the write idempotent).
    pub from: &'a [TxState],
    pub to: TxState,
    pub reason: Option<AbortReason>,
    pub refusal: Option<&'a Value>,
    /// (position, update) of branches whose news is not written yet.
    pub branches: &'a [(usize, BranchUpdate)],
}

/// Writes `transition` if the fence holds and the state is one of `from`: a decision stamps
/// `decided_at`, a final state also `finished_at` and drops the lease. `None`: the fence no longer
/// holds (or the state moved on), and the caller must stop driving.
pub async fn transition(
    pool: &PgPool,
    fence: &Fence,
    transition: &Transition<'_>,
) -> Result<Option<Stamps>, sqlx::Error> {
    let from: Vec<&str> = transition.from.iter().map(|s| s.as_str()).collect();
    let updates = BranchColumns::of(transition.branches);
    let row = sqlx::query(
        "WITH g AS (
             UPDATE global_transactions
             SET state = $4, reason = coalesce($5, reason), refusal = coalesce($6, refusal),
                 decided_at = coalesce(decided_at, now()), updated_at = now(),
                 lease_until = CASE WHEN $8 THEN NULL ELSE lease_until END,
                 finished_at = CASE WHEN $8 THEN now() ELSE finished_at END
             WHERE gxid = $1 AND lease_owner = $2 AND attempts = $3 AND state = ANY($7)
               AND ($16::timestamptz IS NULL OR created_at = $16)
             RETURNING gxid, updated_at, decided_at, finished_at,
                       extract(epoch FROM now() - created_at)::float8 AS age_s
         ), b AS (
             UPDATE branches br
             SET state = coalesce(u.state, br.state), refusal = coalesce(u.refusal, br.refusal),
                 last_error = CASE WHEN u.set_error THEN u.last_error ELSE br.last_error END,
                 calls = br.calls + u.calls, updated_at = now()
             FROM g, unnest($9::integer[], $10::text[], $11::jsonb[], $12::boolean[], $13::text[],
                            $14::integer[]) AS u(position, state, refusal, set_error, last_error, calls)
             WHERE br.gxid = g.gxid AND br.position = u.position
         )
         SELECT updated_at, decided_at, finished_at, age_s,
                CASE WHEN NOT $15 THEN set_config('synchronous_commit', 'off', true) END
         FROM g",
    )
    .bind(fence.gxid)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(transition.to.as_str())
    .bind(transition.reason.map(AbortReason::as_str))
    .bind(transition.refusal)
    .bind(&from)
    .bind(transition.to.is_final())
    .bind(&updates.positions)
    .bind(&updates.states)
    .bind(&updates.refusals)
    .bind(&updates.set_errors)
    .bind(&updates.errors)
    .bind(&updates.calls)
    .bind(transition_forced(transition.to))
    .bind(fence.created_at)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Stamps {
        updated_at: row.try_get("updated_at")?,
        decided_at: row.try_get("decided_at")?,
        finished_at: row.try_get("finished_at")?,
        age_s: row.try_get("age_s")?,
    }))
}

/// Branch updates as one array per column, for `unnest`.
struct BranchColumns {
    positions: Vec<i32>,
    states: Vec<Option<&'static str>>,
    refusals: Vec<Option<Value>>,
    set_errors: Vec<bool>,
    errors: Vec<Option<String>>,
    calls: Vec<i32>,
}

impl BranchColumns {
    fn of(updates: &[(usize, BranchUpdate)]) -> BranchColumns {
        BranchColumns {
            positions: updates
                .iter()
                .map(|(p, _)| i32::try_from(*p).unwrap_or(i32::MAX))
                .collect(),
            states: updates
                .iter()
                .map(|(_, u)| u.state.map(BranchState::as_str))
                .collect(),
            refusals: updates.iter().map(|(_, u)| u.refusal.clone()).collect(),
            set_errors: updates
                .iter()
                .map(|(_, u)| u.last_error.is_some())
                .collect(),
            errors: updates
                .iter()
                .map(|(_, u)| u.last_error.clone().flatten())
                .collect(),
            calls: updates.iter().map(|(_, u)| u.calls).collect(),
        }
    }
}

/// What a driver learned about one branch.
#[derive(Debug, Clone, Default)]
pub struct BranchUpdate {
    pub state: Option<BranchState>,
    pub refusal: Option<Value>,
    /// Replaces `last_error` when `Some` (`Some(None)` clears it).
    pub last_error: Option<Option<String>>,
    /// Calls sent since the last update.
    pub calls: i32,
}

/// Records `update` for the branch at `position`, if the fence holds (false otherwise).
pub async fn update_branch(
    pool: &PgPool,
    fence: &Fence,
    position: usize,
    update: &BranchUpdate,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH lease AS (
             SELECT gxid FROM global_transactions
             WHERE gxid = $1 AND lease_owner = $2 AND attempts = $3
               AND ($10::timestamptz IS NULL OR created_at = $10)
             FOR SHARE
         )
         UPDATE branches b
         SET state = coalesce($5, b.state), refusal = coalesce($6, b.refusal),
             last_error = CASE WHEN $7 THEN $8 ELSE b.last_error END,
             calls = b.calls + $9, updated_at = now()
         FROM lease
         WHERE b.gxid = lease.gxid AND b.position = $4",
    )
    .bind(fence.gxid)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(i32::try_from(position).unwrap_or(i32::MAX))
    .bind(update.state.map(BranchState::as_str))
    .bind(update.refusal.as_ref())
    .bind(update.last_error.is_some())
    .bind(update.last_error.clone().flatten())
    .bind(update.calls)
    .bind(fence.created_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A transaction claimed by the recovery loop.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub gxid: Uuid,
    pub state: TxState,
    pub epoch: i32,
    pub previous_owner: Option<String>,
}

/// Takes over up to `batch` unfinished transactions whose lease expired: in one statement, rows
/// locked by anyone else are skipped (`FOR UPDATE SKIP LOCKED`), and each claimed row gets this
/// owner, a fresh lease and the next epoch, so two coordinators never claim the same one.
pub async fn claim_expired(
    pool: &PgPool,
    owner: &str,
    lease_ms: u64,
    batch: u32,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH claimable AS (
             SELECT gxid, lease_owner AS previous_owner
             FROM global_transactions
             WHERE state = ANY($4) AND (lease_until IS NULL OR lease_until < now())
             ORDER BY lease_until NULLS FIRST
             LIMIT $3
             FOR UPDATE SKIP LOCKED
         )
         UPDATE global_transactions g
         SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond',
             attempts = g.attempts + 1, updated_at = now()
         FROM claimable c
         WHERE g.gxid = c.gxid
         RETURNING g.gxid, g.state, g.attempts, c.previous_owner",
    )
    .bind(owner)
    .bind(to_i64(lease_ms))
    .bind(i64::from(batch))
    .bind(&UNFINISHED[..])
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let state: String = row.try_get("state")?;
        claimed.push(Claimed {
            gxid: row.try_get("gxid")?,
            state: TxState::parse(&state).ok_or_else(|| decode_error("state", &state))?,
            epoch: row.try_get("attempts")?,
            previous_owner: row.try_get("previous_owner")?,
        });
    }
    Ok(claimed)
}

/// Extends the leases `owner` still holds among `held` (gxid, epoch); returns the gxids renewed.
pub async fn renew(
    pool: &PgPool,
    owner: &str,
    held: &[(Uuid, i32)],
    lease_ms: u64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (gxids, epochs): (Vec<Uuid>, Vec<i32>) = held.iter().copied().unzip();
    sqlx::query_scalar(
        "UPDATE global_transactions g
         SET lease_until = now() + $2 * interval '1 millisecond'
         FROM unnest($3::uuid[], $4::integer[]) AS h(gxid, epoch)
         WHERE g.gxid = h.gxid AND g.attempts = h.epoch AND g.lease_owner = $1
           AND g.state = ANY($5)
         RETURNING g.gxid",
    )
    .bind(owner)
    .bind(to_i64(lease_ms))
    .bind(&gxids)
    .bind(&epochs)
    .bind(&UNFINISHED[..])
    .fetch_all(pool)
    .await
}

/// Lets the leases `owner` holds among `held` expire now, so a peer takes them over at once (on a
/// graceful shutdown, once this process's drivers have stopped).
pub async fn release(pool: &PgPool, owner: &str, held: &[(Uuid, i32)]) -> Result<u64, sqlx::Error> {
    let (gxids, epochs): (Vec<Uuid>, Vec<i32>) = held.iter().copied().unzip();
    let done = sqlx::query(
        "UPDATE global_transactions g
         SET lease_until = now() - interval '1 millisecond'
         FROM unnest($2::uuid[], $3::integer[]) AS h(gxid, epoch)
         WHERE g.gxid = h.gxid AND g.attempts = h.epoch AND g.lease_owner = $1
           AND g.state = ANY($4)",
    )
    .bind(owner)
    .bind(&gxids)
    .bind(&epochs)
    .bind(&UNFINISHED[..])
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Transactions decided but not finished (`committing`, `aborting`, `compensating`).
pub async fn count_in_doubt(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM global_transactions
         WHERE state IN ('committing', 'aborting', 'compensating')",
    )
    .fetch_one(pool)
    .await
}

/// What the orphan scan needs to know about a known transaction.
#[derive(Debug, Clone)]
pub struct Known {
    pub mode: Mode,
    pub state: TxState,
    /// (service, branch) of each of its branches.
    pub branches: Vec<(String, String)>,
}

/// The transactions among `gxids` the database knows.
pub async fn lookup(pool: &PgPool, gxids: &[Uuid]) -> Result<HashMap<Uuid, Known>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT g.gxid, g.mode, g.state, b.service, b.branch
         FROM global_transactions g JOIN branches b ON b.gxid = g.gxid
         WHERE g.gxid = ANY($1)",
    )
    .bind(gxids)
    .fetch_all(pool)
    .await?;
    let mut known: HashMap<Uuid, Known> = HashMap::new();
    for row in rows {
        let gxid: Uuid = row.try_get("gxid")?;
        let mode: String = row.try_get("mode")?;
        let state: String = row.try_get("state")?;
        let entry = match known.entry(gxid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Known {
                mode: Mode::parse(&mode).ok_or_else(|| decode_error("mode", &mode))?,
                state: TxState::parse(&state).ok_or_else(|| decode_error("state", &state))?,
                branches: Vec::new(),
            }),
        };
        entry
            .branches
            .push((row.try_get("service")?, row.try_get("branch")?));
    }
    Ok(known)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
