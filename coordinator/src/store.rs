//! The coordinator database: recording transactions, fenced state changes, leases and claims.
//!
//! **Fencing.** A driver holds a transaction through `(lease_owner, attempts)`: `attempts` grows by
//! one on every claim, so it is an epoch no other driver can share. Every write a driver makes is
//! conditional on its fence, and a state change also on the states it may come from. A driver whose
//! lease was taken over therefore cannot write any more (its update matches no row) and stops.
//! All times are the database's (`now()`), so coordinators' clocks need not agree.

use std::collections::HashMap;

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

/// Who may write to a transaction: its lease owner in one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub gxid: Uuid,
    pub owner: String,
    pub epoch: i32,
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

/// Records a new transaction (and its branches, `pending`) leased to `owner`; `None` when the gxid
/// already exists. Committed before this returns, so before any participant hears of it.
pub async fn insert(
    pool: &PgPool,
    submission: &Submission,
    prefix: &str,
    owner: &str,
    lease_ms: u64,
) -> Result<Option<i32>, sqlx::Error> {
    let specs =
        serde_json::to_value(&submission.branches).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    let epoch: Option<i32> = sqlx::query_scalar(
        "INSERT INTO global_transactions
             (gxid, mode, state, branches, timeout_ms, deadline, lease_owner, lease_until, attempts)
         VALUES ($1, $2, $3, $4, $5, now() + $5 * interval '1 millisecond',
                 $6, now() + $7 * interval '1 millisecond', 1)
         ON CONFLICT (gxid) DO NOTHING
         RETURNING attempts",
    )
    .bind(submission.gxid)
    .bind(submission.mode.as_str())
    .bind(TxState::initial(submission.mode).as_str())
    .bind(specs)
    .bind(to_i64(submission.timeout_ms))
    .bind(owner)
    .bind(to_i64(lease_ms))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(epoch) = epoch else {
        return Ok(None);
    };
    for (position, spec) in submission.branches.iter().enumerate() {
        sqlx::query(
            "INSERT INTO branches (gxid, position, service, branch, gid)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(submission.gxid)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(&spec.service)
        .bind(&spec.branch)
        .bind(gid(prefix, submission.gxid, &spec.branch))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(epoch))
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

/// Moves the transaction to `to` if the fence holds and it is in one of `from` (include `to` to make
/// the write idempotent). `reason`/`refusal` are set when given; a decision stamps `decided_at`.
/// False: the fence no longer holds (or the state moved on): the caller must stop driving.
pub async fn set_state(
    pool: &PgPool,
    fence: &Fence,
    from: &[TxState],
    to: TxState,
    reason: Option<AbortReason>,
    refusal: Option<&Value>,
) -> Result<bool, sqlx::Error> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let done = sqlx::query(
        "UPDATE global_transactions
         SET state = $4, reason = coalesce($5, reason), refusal = coalesce($6, refusal),
             decided_at = coalesce(decided_at, now()), updated_at = now()
         WHERE gxid = $1 AND lease_owner = $2 AND attempts = $3 AND state = ANY($7)",
    )
    .bind(fence.gxid)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(to.as_str())
    .bind(reason.map(AbortReason::as_str))
    .bind(refusal)
    .bind(&from)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves the transaction to the final state `to` and drops the lease; returns its age in seconds,
/// or `None` when the fence no longer holds.
pub async fn finish(
    pool: &PgPool,
    fence: &Fence,
    from: &[TxState],
    to: TxState,
) -> Result<Option<f64>, sqlx::Error> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    sqlx::query_scalar(
        "UPDATE global_transactions
         SET state = $4, lease_until = NULL, finished_at = now(),
             decided_at = coalesce(decided_at, now()), updated_at = now()
         WHERE gxid = $1 AND lease_owner = $2 AND attempts = $3 AND state = ANY($5)
         RETURNING extract(epoch FROM now() - created_at)::float8",
    )
    .bind(fence.gxid)
    .bind(&fence.owner)
    .bind(fence.epoch)
    .bind(to.as_str())
    .bind(&from)
    .fetch_optional(pool)
    .await
}

/// What a driver learned about one branch.
#[derive(Debug, Clone, Default)]
pub struct BranchUpdate<'a> {
    pub state: Option<BranchState>,
    pub refusal: Option<&'a Value>,
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
    update: &BranchUpdate<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH lease AS (
             SELECT gxid FROM global_transactions
             WHERE gxid = $1 AND lease_owner = $2 AND attempts = $3
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
    .bind(update.refusal)
    .bind(update.last_error.is_some())
    .bind(update.last_error.clone().flatten())
    .bind(update.calls)
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
