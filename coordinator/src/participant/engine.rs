//! The barrier algorithm of docs/TRANSACTIONS.md ("The barrier"), one method per operation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row};

use super::branch::Branch;
use super::error::{ParticipantError, sqlstate};
use super::faults::{Op, ParticipantFaults};
use super::gid::{Gid, is_valid_branch};
use super::{
    ABORT_RETRY_BUDGET, BARRIER_LOCK_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT, STATEMENT_TIMEOUT,
    WORK_LOCK_TIMEOUT,
};

/// SQLSTATE `lock_not_available`: `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE `undefined_object`: "prepared transaction with identifier … does not exist".
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE `object_not_in_prerequisite_state`: "prepared transaction … is busy" (another session
/// is committing or rolling it back right now).
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// SQLSTATE `duplicate_object`: "transaction identifier … is already in use".
const DUPLICATE_OBJECT: &str = "42710";
/// SQLSTATE `in_failed_sql_transaction`: a statement after an error the branch did not return.
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// SQLSTATE `invalid_text_representation`: what [`LocalTx::finish`]'s check raises on purpose.
const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// The text [`LocalTx::finish`]'s check casts to `int` when the transaction is not the barrier's.
const CHANGED_MARK: &str = "participant transaction changed";
/// How long commit retries while another session is finishing the same prepared transaction.
const FINISH_RETRY_BUDGET: Duration = Duration::from_secs(1);

/// A 2PC answer; serializes as the contract's body, `{"state":"prepared"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TwoPcState {
    Prepared,
    Committed,
    Aborted,
}

impl TwoPcState {
    pub fn as_str(self) -> &'static str {
        match self {
            TwoPcState::Prepared => "prepared",
            TwoPcState::Committed => "committed",
            TwoPcState::Aborted => "aborted",
        }
    }
}

/// A saga answer; serializes as `{"state":"done"}` / `{"state":"compensated"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SagaState {
    Done,
    Compensated,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Done => "done",
            SagaState::Compensated => "compensated",
        }
    }
}

/// One prepared transaction of this participant's database (`GET /internal/2pc/prepared`). The gid
/// is kept as text: anything under the prefix is listed, even a gid this version would not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedGid {
    pub gid: String,
    /// When `PREPARE TRANSACTION` ran (RFC 3339 in JSON).
    pub prepared_at: DateTime<Utc>,
    /// Its age by the database's clock, so the coordinator judges ages without trusting its own
    /// clock (a coordinator an hour ahead would see every gid as an hour old).
    pub age_ms: u64,
}

/// The `op` column of `tx_barrier`.
#[derive(Debug, Clone, Copy)]
enum BarrierOp {
    Prepare,
    Action,
    Compensate,
}

impl BarrierOp {
    fn as_str(self) -> &'static str {
        match self {
            BarrierOp::Prepare => "prepare",
            BarrierOp::Action => "action",
            BarrierOp::Compensate => "compensate",
        }
    }
}

/// The `kind` column of `tx_barrier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarrierKind {
    Applied,
    Blocked,
}

impl BarrierKind {
    fn as_str(self) -> &'static str {
        match self {
            BarrierKind::Applied => "applied",
            BarrierKind::Blocked => "blocked",
        }
    }

    fn parse(text: &str) -> Option<BarrierKind> {
        match text {
            "applied" => Some(BarrierKind::Applied),
            "blocked" => Some(BarrierKind::Blocked),
            _ => None,
        }
    }
}

/// What inserting a barrier row found.
#[derive(Debug)]
enum Claim {
    /// The row is ours (in the open transaction).
    Inserted,
    /// A committed row was there already, of this kind (`None`: gone again, which only a cleanup
    /// job could do; treated as "try again").
    Exists(Option<BarrierKind>),
    /// Another transaction holds the key (a prepared one, or a request for the same gid in flight)
    /// and did not let go within [`BARRIER_LOCK_TIMEOUT`].
    Locked,
}

/// The participant: the barrier algorithm over one database, for the registered branches.
/// Cheap to clone (a pool handle and a few `Arc`s).
#[derive(Clone)]
pub struct Participant {
    pool: PgPool,
    branches: BTreeMap<&'static str, Arc<dyn Branch>>,
    faults: ParticipantFaults,
}

impl fmt::Debug for Participant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Participant")
            .field("branches", &self.branches.keys().collect::<Vec<_>>())
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// A participant over `pool`'s database, which must have the `tx_barrier` table
    /// ([`BARRIER_DDL`](super::BARRIER_DDL)). Register branches with [`Participant::with_branch`].
    pub fn new(pool: PgPool) -> Participant {
        Participant {
            pool,
            branches: BTreeMap::new(),
            faults: ParticipantFaults::default(),
        }
    }

    /// Registers `branch` under its name.
    ///
    /// # Panics
    /// When the name is not `[a-z0-9_]{1,32}` (no gid could address it) or is registered already:
    /// both are programming errors found at start-up.
    pub fn with_branch(mut self, branch: impl Branch) -> Participant {
        let name = branch.name();
        assert!(
            is_valid_branch(name),
            "branch name {name:?} must be [a-z0-9_]{{1,32}}"
        );
        assert!(
            !self.branches.contains_key(name),
            "branch {name:?} is registered twice"
        );
        self.branches.insert(name, Arc::new(branch));
        self
    }

    /// Turns on fault injection (tests and chaos runs); logs a warning when a fault is active.
    pub fn with_faults(mut self, faults: ParticipantFaults) -> Participant {
        if faults.is_active() {
            tracing::warn!(
                crash_after = faults.crash_after.map(|op| op.as_str()),
                delay_after = faults.delay_after.map(|d| d.to_string()),
                "participant fault injection is ON: this process will crash or answer late on \
                 purpose"
            );
        }
        self.faults = faults;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn faults(&self) -> &ParticipantFaults {
        &self.faults
    }

    /// The registered branch names, sorted.
    pub fn branch_names(&self) -> Vec<&'static str> {
        self.branches.keys().copied().collect()
    }

    fn branch(&self, gid: &Gid) -> Result<&Arc<dyn Branch>, ParticipantError> {
        self.branches.get(gid.branch()).ok_or_else(|| {
            ParticipantError::Invalid(format!(
                "this participant has no branch {:?}; its branches are: {}",
                gid.branch(),
                self.branch_names().join(", ")
            ))
        })
    }

    /// 2PC phase 1: claims the gid in the barrier, does the branch's work and
    /// `PREPARE TRANSACTION '<gid>'`. `Prepared` also when it already is, `Committed` when it
    /// already was committed; [`ParticipantError::Aborted`] when an abort came first.
    pub async fn prepare(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<TwoPcState, ParticipantError> {
        let result = self.do_prepare(gid, payload).await;
        record(Op::Prepare, gid, result.as_ref().map(|s| s.as_str()));
        result
    }

    /// 2PC phase 2, commit: `COMMIT PREPARED '<gid>'`; `Committed` also when it already was;
    /// [`ParticipantError::NotPrepared`] when the gid is neither prepared nor committed.
    pub async fn commit(&self, gid: &Gid) -> Result<TwoPcState, ParticipantError> {
        let result = self.do_commit(gid).await;
        record(Op::Commit, gid, result.as_ref().map(|s| s.as_str()));
        result
    }

    /// 2PC phase 2, abort: `ROLLBACK PREPARED '<gid>'`, then a `blocked` barrier row so that a
    /// prepare arriving later is refused. `Aborted` also when nothing was prepared (or it already
    /// was aborted); [`ParticipantError::AlreadyCommitted`] when it was committed.
    pub async fn abort(&self, gid: &Gid) -> Result<TwoPcState, ParticipantError> {
        let result = self.do_abort(gid).await;
        record(Op::Abort, gid, result.as_ref().map(|s| s.as_str()));
        result
    }

    /// Saga action: the branch's work in one local transaction, once. `Done` also when it already
    /// ran; [`ParticipantError::Aborted`] when the gid was compensated first.
    pub async fn action(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<SagaState, ParticipantError> {
        let result = self.do_action(gid, payload).await;
        record(Op::Action, gid, result.as_ref().map(|s| s.as_str()));
        result
    }

    /// Saga compensation, once: undoes the action if it ran; if it did not, records a null
    /// compensation that also blocks the late action. Always `Compensated` when it succeeds.
    pub async fn compensate(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<SagaState, ParticipantError> {
        let result = self.do_compensate(gid, payload).await;
        record(Op::Compensate, gid, result.as_ref().map(|s| s.as_str()));
        result
    }

    /// This database's prepared transactions whose gid starts with `prefix` (compared as text, so
    /// `_` and `%` are not wildcards), oldest first.
    pub async fn prepared(&self, prefix: &str) -> Result<Vec<PreparedGid>, ParticipantError> {
        let rows: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT gid, prepared, \
                    (extract(epoch FROM clock_timestamp() - prepared) * 1000)::int8 \
             FROM pg_prepared_xacts \
             WHERE database = current_database() AND starts_with(gid, $1) \
             ORDER BY prepared, gid",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(gid, prepared_at, age_ms)| PreparedGid {
                gid,
                prepared_at,
                age_ms: u64::try_from(age_ms).unwrap_or(0),
            })
            .collect())
    }

    async fn do_prepare(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<TwoPcState, ParticipantError> {
        let branch = self.branch(gid)?;
        let (mut tx, claim) = LocalTx::open(
            &self.pool,
            gid,
            BarrierOp::Prepare,
            BarrierKind::Applied,
            true,
        )
        .await?;
        match claim {
            Claim::Inserted => {}
            Claim::Exists(kind) => {
                tx.rollback().await;
                return match kind {
                    // The row of a prepared transaction is invisible until COMMIT PREPARED.
                    Some(BarrierKind::Applied) => Ok(TwoPcState::Committed),
                    Some(BarrierKind::Blocked) => Err(ParticipantError::Aborted(
                        "an abort of this gid came first: the late prepare is refused".into(),
                    )),
                    None => Err(busy_in_flight()),
                };
            }
            Claim::Locked => {
                tx.rollback().await;
                // A prepared transaction holds its barrier row's key until phase 2: that is a
                // duplicate prepare. Otherwise another request for this gid is still working.
                return if self.is_prepared(gid).await? {
                    Ok(TwoPcState::Prepared)
                } else {
                    Err(busy_in_flight())
                };
            }
        }
        if let Err(err) = branch.apply(tx.conn(), payload).await {
            tx.rollback().await;
            return Err(err.into());
        }
        tx.finish(Some(gid)).await?;
        self.faults.after(Op::Prepare).await;
        Ok(TwoPcState::Prepared)
    }

    async fn do_commit(&self, gid: &Gid) -> Result<TwoPcState, ParticipantError> {
        self.branch(gid)?;
        let started = Instant::now();
        loop {
            let Err(err) = finish_prepared(&self.pool, "COMMIT", gid).await else {
                self.faults.after(Op::Commit).await;
                return Ok(TwoPcState::Committed);
            };
            match sqlstate(&err).as_deref() {
                Some(UNDEFINED_OBJECT) => {
                    // Not prepared (any more): committed before, or a protocol violation.
                    return match self.barrier_kind(gid, BarrierOp::Prepare).await? {
                        Some(BarrierKind::Applied) => Ok(TwoPcState::Committed),
                        _ => Err(ParticipantError::NotPrepared),
                    };
                }
                Some(OBJECT_NOT_IN_PREREQUISITE_STATE)
                    if started.elapsed() < FINISH_RETRY_BUDGET =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(OBJECT_NOT_IN_PREREQUISITE_STATE) => {
                    return Err(ParticipantError::Busy(
                        "another session is finishing this prepared transaction; retry".into(),
                    ));
                }
                _ => return Err(err.into()),
            }
        }
    }

    async fn do_abort(&self, gid: &Gid) -> Result<TwoPcState, ParticipantError> {
        self.branch(gid)?;
        let started = Instant::now();
        loop {
            let rolled_back = match finish_prepared(&self.pool, "ROLLBACK", gid).await {
                Ok(()) => true,
                Err(err) => match sqlstate(&err).as_deref() {
                    // Nothing prepared (now), or another session is finishing it: the barrier
                    // insert below waits for whoever holds the key and says what happened.
                    Some(UNDEFINED_OBJECT | OBJECT_NOT_IN_PREREQUISITE_STATE) => false,
                    _ => return Err(err.into()),
                },
            };
            // Block the gid, also after a successful rollback: a duplicate prepare delivered late
            // must not prepare it again.
            let (tx, claim) = LocalTx::open(
                &self.pool,
                gid,
                BarrierOp::Prepare,
                BarrierKind::Blocked,
                false,
            )
            .await?;
            let blocked_now = match claim {
                Claim::Inserted => {
                    tx.finish(None).await?;
                    true
                }
                Claim::Exists(Some(BarrierKind::Blocked)) => {
                    tx.rollback().await;
                    false
                }
                Claim::Exists(Some(BarrierKind::Applied)) => {
                    tx.rollback().await;
                    return Err(ParticipantError::AlreadyCommitted);
                }
                Claim::Exists(None) | Claim::Locked => {
                    // A prepare of this gid is in flight or has just been prepared: roll it back.
                    tx.rollback().await;
                    if started.elapsed() >= ABORT_RETRY_BUDGET {
                        return Err(ParticipantError::Busy(
                            "a prepare of this gid is still in flight; retry the abort".into(),
                        ));
                    }
                    continue;
                }
            };
            if rolled_back || blocked_now {
                self.faults.after(Op::Abort).await;
            }
            return Ok(TwoPcState::Aborted);
        }
    }

    async fn do_action(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<SagaState, ParticipantError> {
        let branch = self.branch(gid)?;
        let (mut tx, claim) = LocalTx::open(
            &self.pool,
            gid,
            BarrierOp::Action,
            BarrierKind::Applied,
            true,
        )
        .await?;
        match claim {
            Claim::Inserted => {}
            Claim::Exists(Some(BarrierKind::Applied)) => {
                tx.rollback().await;
                return Ok(SagaState::Done);
            }
            Claim::Exists(Some(BarrierKind::Blocked)) => {
                tx.rollback().await;
                return Err(ParticipantError::Aborted(
                    "this gid was compensated first: the late action is refused".into(),
                ));
            }
            Claim::Exists(None) | Claim::Locked => {
                tx.rollback().await;
                return Err(busy_in_flight());
            }
        }
        if let Err(err) = branch.apply(tx.conn(), payload).await {
            tx.rollback().await;
            return Err(err.into());
        }
        tx.finish(None).await?;
        self.faults.after(Op::Action).await;
        Ok(SagaState::Done)
    }

    async fn do_compensate(
        &self,
        gid: &Gid,
        payload: &serde_json::Value,
    ) -> Result<SagaState, ParticipantError> {
        let branch = self.branch(gid)?;
        let (mut tx, claim) = LocalTx::open(
            &self.pool,
            gid,
            BarrierOp::Compensate,
            BarrierKind::Applied,
            false,
        )
        .await?;
        match claim {
            Claim::Inserted => {}
            Claim::Exists(Some(_)) => {
                tx.rollback().await;
                return Ok(SagaState::Compensated);
            }
            Claim::Exists(None) | Claim::Locked => {
                tx.rollback().await;
                return Err(busy_in_flight());
            }
        }
        match tx
            .claim(gid, BarrierOp::Action, BarrierKind::Blocked)
            .await?
        {
            Claim::Inserted => {
                tracing::info!(%gid, "null compensation: the action never ran, and now never will");
            }
            Claim::Exists(Some(BarrierKind::Applied)) => {
                tx.raise_lock_timeout().await?;
                if let Err(err) = branch.compensate(tx.conn(), payload).await {
                    tx.rollback().await;
                    return Err(err.into());
                }
            }
            // Only a compensation writes `blocked`, and it would have left its own row: nothing to
            // undo either way.
            Claim::Exists(Some(BarrierKind::Blocked)) => {}
            Claim::Exists(None) | Claim::Locked => {
                tx.rollback().await;
                return Err(ParticipantError::Busy(
                    "the action of this gid is in flight; retry the compensation".into(),
                ));
            }
        }
        tx.finish(None).await?;
        self.faults.after(Op::Compensate).await;
        Ok(SagaState::Compensated)
    }

    async fn is_prepared(&self, gid: &Gid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts \
             WHERE gid = $1 AND database = current_database())",
        )
        .bind(gid.as_str())
        .fetch_one(&self.pool)
        .await
    }

    async fn barrier_kind(
        &self,
        gid: &Gid,
        op: BarrierOp,
    ) -> Result<Option<BarrierKind>, sqlx::Error> {
        let kind: Option<String> =
            sqlx::query_scalar("SELECT kind FROM tx_barrier WHERE gid = $1 AND op = $2")
                .bind(gid.as_str())
                .bind(op.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(kind.as_deref().and_then(BarrierKind::parse))
    }
}

fn busy_in_flight() -> ParticipantError {
    ParticipantError::Busy("another request for this gid is in flight; retry".into())
}

/// Counts and logs one operation's outcome.
fn record(op: Op, gid: &Gid, result: Result<&'static str, &ParticipantError>) {
    let outcome = match result {
        Ok(state) => state,
        Err(err) => err.outcome(),
    };
    metrics::counter!("participant_operations_total", "op" => op.as_str(), "outcome" => outcome)
        .increment(1);
    match result {
        Ok(_) => tracing::debug!(%gid, %op, outcome, "participant operation"),
        Err(ParticipantError::Db(_) | ParticipantError::Internal(_)) => {
            tracing::warn!(%gid, %op, outcome, "participant operation failed");
        }
        Err(err) => tracing::info!(%gid, %op, outcome, error = %err, "participant operation"),
    }
}

/// `COMMIT PREPARED` / `ROLLBACK PREPARED` on an idle pooled connection (they cannot run in a
/// transaction block, and take no parameters: the gid is validated, see [`Gid`]).
async fn finish_prepared(pool: &PgPool, verb: &'static str, gid: &Gid) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!("{verb} PREPARED '{gid}'")))
        .execute(pool)
        .await
        .map(|_| ())
}

/// A transaction block on a pooled connection, opened with a plain `BEGIN` because it may end in
/// `PREPARE TRANSACTION`, which sqlx's `Transaction` does not know (it would send a stray `ROLLBACK`
/// afterwards). Opened by [`LocalTx::open`], which also claims the barrier; ends with
/// [`LocalTx::finish`] (`PREPARE TRANSACTION` or `COMMIT`) or [`LocalTx::rollback`]. If it is
/// dropped open (an error, a cancelled request), the connection is closed instead of going back to
/// the pool, so PostgreSQL rolls it back and no pooled connection is ever left in a transaction.
struct LocalTx {
    conn: PoolConnection<Postgres>,
    open: bool,
    /// The transaction id, from the barrier insert; checked again before commit/prepare.
    xid: Option<String>,
}

impl LocalTx {
    /// Opens the transaction and claims `gid` in the barrier, in **one round trip**: a single
    /// simple-protocol batch `BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL …` (the barrier's lock
    /// timeout, the statement and idle timeouts) `; INSERT INTO tx_barrier … ON CONFLICT DO NOTHING
    /// RETURNING pg_current_xact_id()` and, with `then_work`, `; SET LOCAL lock_timeout` raised to
    /// the business work's ([`WORK_LOCK_TIMEOUT`]). The gid is spliced into the text like it is
    /// into `PREPARE TRANSACTION` (a [`Gid`] holds only `[a-z0-9_:-]`); op and kind are constants.
    ///
    /// READ COMMITTED is what the barrier relies on: after `ON CONFLICT DO NOTHING` the *next*
    /// statement must see the row that conflicted ([`LocalTx::existing`], the rare path). A lock
    /// timeout on the insert stops the batch there (the later `SET` never runs) and is
    /// [`Claim::Locked`]; the transaction is then failed and the caller rolls it back.
    async fn open(
        pool: &PgPool,
        gid: &Gid,
        op: BarrierOp,
        kind: BarrierKind,
        then_work: bool,
    ) -> Result<(LocalTx, Claim), sqlx::Error> {
        let conn = pool.acquire().await?;
        let mut tx = LocalTx {
            conn,
            open: true,
            xid: None,
        };
        let raise = if then_work {
            format!(
                "; SET LOCAL lock_timeout = '{}ms'",
                WORK_LOCK_TIMEOUT.as_millis()
            )
        } else {
            String::new()
        };
        let batch = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; \
             SET LOCAL lock_timeout = '{}ms'; \
             SET LOCAL statement_timeout = '{}ms'; \
             SET LOCAL idle_in_transaction_session_timeout = '{}ms'; \
             INSERT INTO tx_barrier (gid, op, kind) VALUES ('{gid}', '{}', '{}') \
             ON CONFLICT (gid, op) DO NOTHING RETURNING pg_current_xact_id()::text{raise}",
            BARRIER_LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
            op.as_str(),
            kind.as_str(),
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(batch))
            .fetch_all(&mut *tx.conn)
            .await;
        let claim = match rows {
            Ok(rows) => match rows.first() {
                Some(row) => {
                    tx.xid = Some(row.try_get::<String, _>(0)?);
                    Claim::Inserted
                }
                None => tx.existing(gid, op).await?,
            },
            Err(err) if sqlstate(&err).as_deref() == Some(LOCK_NOT_AVAILABLE) => Claim::Locked,
            Err(err) => return Err(err),
        };
        Ok((tx, claim))
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// `INSERT (gid, op, kind) ON CONFLICT DO NOTHING` under the barrier lock timeout.
    async fn claim(
        &mut self,
        gid: &Gid,
        op: BarrierOp,
        kind: BarrierKind,
    ) -> Result<Claim, sqlx::Error> {
        let inserted = sqlx::query_scalar::<_, String>(
            "INSERT INTO tx_barrier (gid, op, kind) VALUES ($1, $2, $3) \
             ON CONFLICT (gid, op) DO NOTHING RETURNING pg_current_xact_id()::text",
        )
        .bind(gid.as_str())
        .bind(op.as_str())
        .bind(kind.as_str())
        .fetch_optional(&mut *self.conn)
        .await;
        match inserted {
            Ok(Some(xid)) => {
                self.xid = Some(xid);
                Ok(Claim::Inserted)
            }
            Ok(None) => self.existing(gid, op).await,
            Err(err) if sqlstate(&err).as_deref() == Some(LOCK_NOT_AVAILABLE) => Ok(Claim::Locked),
            Err(err) => Err(err),
        }
    }

    /// The committed barrier row that an insert of `(gid, op)` just conflicted with.
    async fn existing(&mut self, gid: &Gid, op: BarrierOp) -> Result<Claim, sqlx::Error> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT kind FROM tx_barrier WHERE gid = $1 AND op = $2")
                .bind(gid.as_str())
                .bind(op.as_str())
                .fetch_optional(&mut *self.conn)
                .await?;
        Ok(Claim::Exists(
            existing.as_deref().and_then(BarrierKind::parse),
        ))
    }

    /// From the barrier's lock timeout to the business work's.
    async fn raise_lock_timeout(&mut self) -> Result<(), sqlx::Error> {
        let set = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            WORK_LOCK_TIMEOUT.as_millis()
        );
        sqlx::raw_sql(AssertSqlSafe(set))
            .execute(&mut *self.conn)
            .await
            .map(|_| ())
    }

    /// Ends a transaction whose barrier claim and work are done — `PREPARE TRANSACTION '<gid>'`
    /// (`Some(gid)`) or `COMMIT` — in one round trip together with the check that it is still the
    /// transaction that claimed the barrier and is not failed. PostgreSQL would silently turn the
    /// `COMMIT` or `PREPARE TRANSACTION` of a failed transaction into a rollback and we would
    /// answer success, and a branch that ended the transaction itself would have us prepare or
    /// commit another one. The check is a `SELECT` in front of the verb in the same batch: it fails
    /// in a failed transaction, and fails on purpose (a cast of [`CHANGED_MARK`] to `int`) when the
    /// current transaction id is not the barrier insert's; either error stops the batch before the
    /// verb runs, and the transaction is rolled back (the connection is closed on drop).
    async fn finish(mut self, prepare: Option<&Gid>) -> Result<(), ParticipantError> {
        let xid = self
            .xid
            .as_deref()
            .filter(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                ParticipantError::Internal("the barrier claim left no transaction id".into())
            })?;
        let verb = match prepare {
            Some(gid) => format!("PREPARE TRANSACTION '{gid}'"),
            None => "COMMIT".to_owned(),
        };
        let batch = format!(
            "SELECT (CASE WHEN pg_current_xact_id_if_assigned()::text = '{xid}' \
             THEN '1' ELSE '{CHANGED_MARK}' END)::int; {verb}"
        );
        match sqlx::raw_sql(AssertSqlSafe(batch))
            .execute(&mut *self.conn)
            .await
        {
            Ok(_) => {
                self.open = false;
                Ok(())
            }
            Err(err) => match sqlstate(&err).as_deref() {
                Some(IN_FAILED_SQL_TRANSACTION) => Err(ParticipantError::Internal(
                    "the branch returned success after a failed statement; nothing is kept".into(),
                )),
                Some(INVALID_TEXT_REPRESENTATION) if err.to_string().contains(CHANGED_MARK) => {
                    Err(ParticipantError::Internal(
                        "the branch ended the participant's transaction itself (it must not \
                         begin, commit or roll back)"
                            .into(),
                    ))
                }
                Some(DUPLICATE_OBJECT) if prepare.is_some() => {
                    Err(ParticipantError::Internal(format!(
                        "gid {} is already used by a prepared transaction of another database \
                         on this PostgreSQL server (gids are unique per server): branch names \
                         must differ between participants that share a server",
                        prepare.map(Gid::as_str).unwrap_or_default()
                    )))
                }
                _ => Err(err.into()),
            },
        }
    }

    /// Rolls back; if even that fails, the connection is closed on drop (which rolls back too).
    async fn rollback(mut self) {
        match sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await {
            Ok(_) => self.open = false,
            Err(err) => {
                tracing::warn!(error = %err, "participant: rollback failed; closing the connection")
            }
        }
    }
}

impl Drop for LocalTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}
