//! The `checkouts` table: one row per (customer, Idempotency-Key), written before anything else
//! happens and updated as the checkout moves on, so a repeated request finds the first one's answer.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::OrderMode;
use crate::messages::{self, Event, Kind};

/// A checkout as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckoutRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub request_hash: Vec<u8>,
    pub mode: String,
    pub order_id: Uuid,
    pub status: String,
    pub protocol_state: Option<String>,
    pub total_cents: Option<i64>,
    pub lines: Option<Value>,
    pub problem: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of [`CheckoutRow`], for `concat!` (sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "id, customer_id, request_hash, mode, order_id, status, protocol_state, total_cents, \
         lines, problem, created_at, updated_at"
    };
}

impl CheckoutRow {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "committed" | "aborted")
    }
}

/// A checkout about to be recorded: its ids, quoted lines and total, and — when the quote already
/// refused it (a book not in the catalog) — its final problem.
#[derive(Debug, Clone)]
pub struct NewCheckout<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub key: &'a str,
    pub hash: &'a [u8],
    pub mode: OrderMode,
    /// Both `None` when the checkout is refused from the start.
    pub total_cents: Option<i64>,
    pub lines: Option<&'a Value>,
    pub problem: Option<&'a Value>,
}

/// Records a new checkout (`started`, or `aborted` with its problem) in one statement, or returns
/// the one this customer already started with this key. `Ok((row, true))` when this call created it.
/// A `started` one is that one statement alone (no transaction block around it); one refused from
/// the start also writes the customer's message, in the same transaction.
pub async fn start(
    pool: &PgPool,
    new: &NewCheckout<'_>,
) -> Result<(CheckoutRow, bool), sqlx::Error> {
    let status = if new.problem.is_some() {
        "aborted"
    } else {
        "started"
    };
    let insert = sqlx::query_as(concat!(
        "INSERT INTO checkouts (id, customer_id, idempotency_key, request_hash, mode, order_id,
                                total_cents, lines, status, problem)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (customer_id, idempotency_key) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(new.id)
    .bind(new.customer_id)
    .bind(new.key)
    .bind(new.hash)
    .bind(new.mode.as_str())
    .bind(new.order_id)
    .bind(new.total_cents)
    .bind(new.lines)
    .bind(status)
    .bind(new.problem);
    let inserted: Option<CheckoutRow> = if new.problem.is_none() {
        insert.fetch_optional(pool).await?
    } else {
        let mut tx = pool.begin().await?;
        let inserted: Option<CheckoutRow> = insert.fetch_optional(&mut *tx).await?;
        if let Some(row) = &inserted {
            record_outcome(&mut tx, row).await?;
        }
        tx.commit().await?;
        inserted
    };
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing = find(pool, new.customer_id, new.key).await?.ok_or_else(|| {
        sqlx::Error::Protocol("a checkout vanished while its key was being taken".into())
    })?;
    Ok((existing, false))
}

/// The checkout this customer started with this key, if any.
pub async fn find(
    pool: &PgPool,
    customer_id: Uuid,
    key: &str,
) -> Result<Option<CheckoutRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM checkouts WHERE customer_id = $1 AND idempotency_key = $2"
    ))
    .bind(customer_id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// The checkout that creates order `order_id`, if any.
pub async fn by_order(pool: &PgPool, order_id: Uuid) -> Result<Option<CheckoutRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM checkouts WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// Moves checkout `row` on, writing the customer's message when it becomes final — one statement,
/// so one round trip and no transaction block. A final status is never changed again (the guard),
/// so a slow writer with an older view cannot undo a newer one; the row as stored afterwards is
/// returned. The message is written only when this call made the checkout final (when the guard
/// kept an already-final row, whoever made it final wrote it, in its own statement); a repeat would
/// change nothing anyway (one message per order and kind).
///
/// A final status (`committed`, `aborted`) is written *unforced* (`synchronous_commit = off` for
/// this statement's commit): it only copies what the coordinator decided, durably, before phase 2
/// (or, for a checkout that never reached it, what the next read decides the same way again).
/// If a crash of the database loses it, the record is back to `started`/`pending`, and the next
/// read of the order or repeat of the key asks the coordinator again and writes it again (with its
/// message, which is idempotent) — the state every coordinator crash test already leaves. Moves to
/// `pending` stay forced: "pending" keeps the request that started the checkout from withdrawing it
/// (see [`mark_submitting`]), and are rare (an outcome not known within the wait).
pub async fn update(
    pool: &PgPool,
    row: &CheckoutRow,
    status: &str,
    protocol_state: Option<&str>,
    problem: Option<&Value>,
) -> Result<CheckoutRow, sqlx::Error> {
    let message = outcome_message(row, status, problem);
    let (kind, text) = message
        .as_ref()
        .map(|(kind, text)| (Some(*kind), Some(text.as_str())))
        .unwrap_or_default();
    sqlx::query_as(concat!(
        "WITH u AS (
             UPDATE checkouts
             SET status = $2, protocol_state = coalesce($3, protocol_state), problem = $4
             WHERE id = $1 AND status NOT IN ('committed', 'aborted')
             RETURNING ",
        columns!(),
        "
         ),
         m AS (
             INSERT INTO messages (id, customer_id, kind, source_id, order_id, amount_cents, text)
             SELECT $5, u.customer_id, $6, u.order_id, u.order_id, u.total_cents, $7
             FROM u WHERE $6::text IS NOT NULL
             ON CONFLICT (source_id, kind) DO NOTHING
         )
         SELECT ",
        columns!(),
        ", CASE WHEN $8 THEN set_config('synchronous_commit', 'off', true) END AS unforced
         FROM u
         UNION ALL
         SELECT ",
        columns!(),
        ", NULL FROM checkouts WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM u)"
    ))
    .bind(row.id)
    .bind(status)
    .bind(protocol_state)
    .bind(problem)
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(text)
    .bind(message.is_some())
    .fetch_one(pool)
    .await
}

/// The kind and text of the message a checkout gets when it becomes `status` (none unless final).
fn outcome_message(
    row: &CheckoutRow,
    status: &str,
    problem: Option<&Value>,
) -> Option<(&'static str, String)> {
    let kind = match status {
        "committed" => Kind::OrderCommitted,
        "aborted" => Kind::OrderAborted,
        _ => return None,
    };
    let detail = problem
        .and_then(|p| p.get("detail"))
        .and_then(Value::as_str);
    Some((kind.as_str(), kind.text(row.total_cents, detail)))
}

/// The customer's message for a final checkout, in the transaction that records the outcome (a
/// repeat — the guard kept an already-final row — writes nothing new: one message per order and kind).
async fn record_outcome(conn: &mut PgConnection, row: &CheckoutRow) -> Result<(), sqlx::Error> {
    let kind = match row.status.as_str() {
        "committed" => Kind::OrderCommitted,
        "aborted" => Kind::OrderAborted,
        _ => return Ok(()),
    };
    let detail = row
        .problem
        .as_ref()
        .and_then(|p| p.get("detail"))
        .and_then(Value::as_str);
    let event = Event {
        customer_id: row.customer_id,
        kind,
        source_id: row.order_id,
        order_id: Some(row.order_id),
        amount_cents: row.total_cents,
        detail,
    };
    messages::record(conn, &event).await
}

/// Marks a checkout as handed to the coordinator (`pending`) before a resubmission sends it, so a
/// concurrent [`forget`] by the first request (whose own submission was certainly not sent) can no
/// longer delete the record of a transaction that is about to run — that would free the key for a
/// second purchase. False when the record is gone (forgotten first): do not submit.
pub async fn mark_submitting(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query(
        "UPDATE checkouts SET status = 'pending' WHERE id = $1 AND status IN ('started', 'pending')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// Forgets a checkout that certainly never reached the coordinator, so the same key can be used
/// again once the platform is back — unless a resubmission has marked it `pending` meanwhile.
pub async fn forget(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM checkouts WHERE id = $1 AND status = 'started'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
