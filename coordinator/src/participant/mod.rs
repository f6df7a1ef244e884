//! The participant side of checkout: prepare/commit/abort and action/compensate over a barrier table.
//!
//! Books and orders each build one [`Participant`] over their pool, register their [`Branch`]
//! (`reserve`, `place`) and merge [`Participant::router`] into their router. The protocol and the
//! barrier algorithm are docs/TRANSACTIONS.md's ("Participant protocol", "The barrier"); this module
//! is their implementation:
//!
//! - every operation is idempotent, and answers a duplicate from what the barrier (`tx_barrier`,
//!   [`BARRIER_DDL`]) and `pg_prepared_xacts` say, so the coordinator may retry anything;
//! - an abort that finds nothing prepared (and a compensation that finds no action) leaves a
//!   `blocked` row, so the late prepare (action) that a lost or slow request delivers afterwards is
//!   refused instead of applied;
//! - nothing ever waits for long on a lock: see [`BARRIER_LOCK_TIMEOUT`] and [`WORK_LOCK_TIMEOUT`];
//!   a lock not free in time is a 503 `busy` with nothing kept.
//!
//! The gid of a branch ([`Gid`]) is the PostgreSQL prepared transaction's GID and the barrier key.
//! Fault injection for tests and chaos runs: [`ParticipantFaults`].

use std::time::Duration;

mod branch;
mod engine;
mod error;
mod faults;
mod gid;
mod routes;

pub use branch::{Branch, parse_payload};
pub use engine::{Participant, PreparedGid, SagaState, TwoPcState};
pub use error::{BranchError, ParticipantError, Refusal};
pub use faults::{DelayAfter, FaultParseError, Op, ParticipantFaults};
pub use gid::{
    Gid, GidError, MAX_BRANCH_LEN, MAX_GID_LEN, MAX_PREFIX_LEN, is_valid_branch, is_valid_prefix,
};

/// The canonical DDL of the barrier table; both services' migrations carry an identical copy.
pub const BARRIER_DDL: &str = include_str!("barrier.sql");

/// How long an operation waits for the barrier row of its gid before deciding it is taken.
///
/// The key `(gid, op)` is held only by a *prepared* transaction (until the coordinator commits or
/// aborts it, so waiting longer would not help: that is exactly how a duplicate prepare learns the
/// gid is prepared) or by another request for the same gid in flight (a retry racing the original),
/// which holds it for as long as its business work takes. Half a second lets a short in-flight
/// operation finish, and keeps a duplicate prepare's answer well under a coordinator's request
/// timeout; an operation still in flight after it is answered 503 `busy` (nothing kept, retry).
pub const BARRIER_LOCK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the branch's business work may wait for one lock (a book's stock row, a customer's
/// credit) before answering 503 `busy` with nothing kept.
///
/// Rows are locked by other checkouts' *prepared* transactions until phase 2, which normally comes
/// within milliseconds but can take as long as the coordinator's recovery when it crashed: queueing
/// behind that would hold a connection and this request's other locks for an unbounded time. Two
/// seconds rides out ordinary contention (a neighbouring checkout's prepare → commit round trip)
/// while staying below the coordinator's per-request timeout, so the caller learns "busy, retry"
/// instead of timing out into an ambiguous answer.
pub const WORK_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest one statement of a participant transaction may run (then 503 `busy`, nothing kept):
/// a guard against a runaway query holding the barrier key and the rows it locked.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A participant transaction left idle this long (the process hung between two statements) is
/// ended by PostgreSQL, releasing its locks; a prepared transaction is not affected.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an abort keeps retrying while a prepare of the same gid is in flight (holding the
/// barrier key) before answering 503 `busy`. Longer than [`WORK_LOCK_TIMEOUT`], so an in-flight
/// prepare stuck on a lock has timed out (and rolled back) before the abort gives up.
pub const ABORT_RETRY_BUDGET: Duration = Duration::from_secs(3);
