//! The `checkouts` table: one row per (customer, Idempotency-Key), written before anything else
//! happens and updated as the checkout moves on, so a repeated request finds the first one's answer.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::OrderMode;

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

/// Records a new checkout, or returns the one this customer already started with this key.
/// `Ok((row, true))` when this call created it.
pub async fn start(
    pool: &PgPool,
    customer_id: Uuid,
    key: &str,
    hash: &[u8],
    mode: OrderMode,
) -> Result<(CheckoutRow, bool), sqlx::Error> {
    let inserted: Option<CheckoutRow> = sqlx::query_as(concat!(
        "INSERT INTO checkouts (id, customer_id, idempotency_key, request_hash, mode, order_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (customer_id, idempotency_key) DO NOTHING
         RETURNING ",
        columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(key)
    .bind(hash)
    .bind(mode.as_str())
    .bind(Uuid::now_v7())
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing: CheckoutRow = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM checkouts WHERE customer_id = $1 AND idempotency_key = $2"
    ))
    .bind(customer_id)
    .bind(key)
    .fetch_one(pool)
    .await?;
    Ok((existing, false))
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

/// Keeps the quoted lines and total, before the transaction is submitted.
pub async fn quoted(
    pool: &PgPool,
    id: Uuid,
    total_cents: i64,
    lines: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkouts SET total_cents = $2, lines = $3 WHERE id = $1")
        .bind(id)
        .bind(total_cents)
        .bind(lines)
        .execute(pool)
        .await?;
    Ok(())
}

/// Moves a checkout on. A final status is never changed again (the guard), so a slow writer with an
/// older view cannot undo a newer one; the row as stored afterwards is returned.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    status: &str,
    protocol_state: Option<&str>,
    problem: Option<&Value>,
) -> Result<CheckoutRow, sqlx::Error> {
    sqlx::query(
        "UPDATE checkouts
         SET status = $2, protocol_state = coalesce($3, protocol_state), problem = $4
         WHERE id = $1 AND status NOT IN ('committed', 'aborted')",
    )
    .bind(id)
    .bind(status)
    .bind(protocol_state)
    .bind(problem)
    .execute(pool)
    .await?;
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM checkouts WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(pool)
    .await
}

/// Forgets a checkout that certainly never reached the coordinator, so the same key can be used
/// again once the platform is back.
pub async fn forget(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM checkouts WHERE id = $1 AND status = 'started'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
