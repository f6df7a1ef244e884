//! The business side of a branch: what books' `reserve` and orders' `place` implement.

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use super::error::BranchError;

/// One kind of branch a participant takes part in (books `reserve`, orders `place`).
///
/// Both methods run **inside a transaction the participant opened** on `conn`, after it claimed the
/// gid in the barrier; the participant then prepares (2PC) or commits (saga) that transaction, or
/// rolls it back when the method returns an error. So a method must:
///
/// - only run queries on `conn`: never `BEGIN`, `COMMIT`, `ROLLBACK` or `conn.begin()` (a
///   `SAVEPOINT` statement is fine). The participant checks the transaction is still the one it
///   opened, and answers 500 if not.
/// - return the error of a failed statement rather than swallow it: PostgreSQL turns the commit (and
///   `PREPARE TRANSACTION`) of a failed transaction into a silent rollback. The participant checks
///   for that too, but a refusal is a [`BranchError::Refused`], decided before anything fails.
/// - lock what it changes in a fixed order (for example by id): two branches locking the same rows
///   in different orders deadlock, which becomes [`BranchError::Busy`].
///
/// The lock timeout during the work is [`WORK_LOCK_TIMEOUT`](super::WORK_LOCK_TIMEOUT); a lock
/// timeout, deadlock or serialization failure converts (`?` on a `sqlx::Error`) into `Busy`.
///
/// The methods return boxed futures so the participant can hold branches as `Arc<dyn Branch>`:
///
/// ```ignore
/// fn apply<'a>(&'a self, conn: &'a mut PgConnection, payload: &'a Value)
///     -> BoxFuture<'a, Result<(), BranchError>> {
///     Box::pin(async move {
///         let payload: Reserve = parse_payload(payload)?;
///         sqlx::query("UPDATE …").execute(&mut *conn).await?;
///         Ok(())
///     })
/// }
/// ```
pub trait Branch: Send + Sync + 'static {
    /// The branch name, the last part of its gids: `[a-z0-9_]{1,32}`.
    fn name(&self) -> &'static str;

    /// Does the work (prepare in 2PC, the action in a saga), or refuses.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), BranchError>>;

    /// Undoes a saga action that was applied (called only when the barrier says it was). Should not
    /// refuse: a compensation is retried until it succeeds.
    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), BranchError>>;
}

/// Deserializes a branch payload; a mismatch is [`BranchError::Invalid`] (422) naming what is wrong.
pub fn parse_payload<T: DeserializeOwned>(payload: &serde_json::Value) -> Result<T, BranchError> {
    T::deserialize(payload).map_err(|e| BranchError::Invalid(format!("bad branch payload: {e}")))
}
