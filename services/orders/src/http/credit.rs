//! Credit top-ups: `POST /api/customers/{id}/credit`, idempotent when the client sends a key.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use platform::ApiError;
use platform::extract::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::idempotency::{self, Answer, IdempotencyKey};
use super::object::Object;
use super::{AppState, OwnCustomer, customer_not_found};
use crate::domain::{CreditAmount, Customer};
use crate::messages::{self, Event, Kind};

/// `amount_cents` stays raw JSON until [`CreditAmount::parse`], so every wrong shape (string, fraction,
/// 2^63, missing) is a 422 naming the field rather than a generic deserialization error.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(default)]
    pub amount_cents: serde_json::Value,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/customers/{id}/credit", post(top_up_credit))
}

/// 200 with the customer's new balance; 404 unknown customer; 422 bad amount or balance over the cap.
/// The customer themself or the admin (see [`OwnCustomer`]).
async fn top_up_credit(
    OwnCustomer(id): OwnCustomer,
    State(state): State<AppState>,
    key: Option<IdempotencyKey>,
    Json(Object(body)): Json<Object<TopUp>>,
) -> Result<Response, ApiError> {
    let amount = CreditAmount::parse(&body.amount_cents, state.credit.max_topup_cents)
        .map_err(|message| ApiError::invalid("amount_cents", message))?;
    let cap = state.credit.max_balance_cents;
    let scope = format!("credit:{id}");
    idempotency::once(&state.pool, key.as_ref(), &scope, &body, async |conn| {
        add_credit(conn, id, amount, cap).await.map(Answer::ok)
    })
    .await
}

/// Adds `amount` under a row lock and records the customer's message, refusing a balance above `cap` (checked before the database would
/// overflow `bigint`).
async fn add_credit(
    conn: &mut PgConnection,
    id: Uuid,
    amount: CreditAmount,
    cap: i64,
) -> Result<Customer, ApiError> {
    let balance: i64 =
        sqlx::query_scalar("SELECT credit_cents FROM customers WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| customer_not_found(id))?;
    let new_balance = balance
        .checked_add(amount.cents())
        .filter(|total| *total <= cap)
        .ok_or_else(|| {
            ApiError::invalid(
                "amount_cents",
                format!(
                    "would raise the balance from {balance} to more than the maximum of {cap} cents"
                ),
            )
        })?;
    let customer = sqlx::query_as::<_, Customer>(
        "UPDATE customers SET credit_cents = $2 WHERE id = $1
         RETURNING id, email, name, credit_cents, created_at",
    )
    .bind(id)
    .bind(new_balance)
    .fetch_one(&mut *conn)
    .await?;
    // Same transaction as the key row: a replayed Idempotency-Key never reaches this line again.
    let event = Event {
        customer_id: id,
        kind: Kind::CreditToppedUp,
        source_id: Uuid::now_v7(),
        order_id: None,
        amount_cents: Some(amount.cents()),
        detail: None,
    };
    messages::record(conn, &event).await?;
    Ok(customer)
}
