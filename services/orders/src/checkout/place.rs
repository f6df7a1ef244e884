//! Branch `place`: debit the customer's credit and write the order with its lines, or change nothing
//! and say how much credit is missing. Its compensation marks the order compensated and gives the
//! money back.

use coordinator::participant::{Branch, BranchError, Refusal, parse_payload};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::OrderMode;
use crate::messages::{self, Event, Kind};

/// The branch payload, built by [`super::http`] from the customer's basket and the quoted prices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub mode: OrderMode,
    pub lines: Vec<PlacedLine>,
    pub total_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacedLine {
    pub book_id: Uuid,
    pub quantity: i32,
    pub price_cents: i64,
}

impl Placement {
    /// A malformed payload is a definite "no" (422), never retried; the total must match the lines
    /// (the database checks that too, at commit).
    fn parse(payload: &Value) -> Result<Placement, BranchError> {
        let placement: Placement = parse_payload(payload)?;
        if placement.lines.is_empty() {
            return Err(BranchError::Invalid(
                "an order needs at least one line".into(),
            ));
        }
        let total = placement.lines.iter().try_fold(0i64, |sum, line| {
            i64::from(line.quantity)
                .checked_mul(line.price_cents)
                .and_then(|cost| sum.checked_add(cost))
        });
        if total != Some(placement.total_cents) || placement.total_cents < 0 {
            return Err(BranchError::Invalid(format!(
                "total_cents {} does not match the lines",
                placement.total_cents
            )));
        }
        Ok(placement)
    }
}

/// The `place` branch over `customers`, `orders` and `order_lines`.
pub struct PlaceOrder;

impl Branch for PlaceOrder {
    fn name(&self) -> &'static str {
        "place"
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let placement = Placement::parse(payload)?;
            debit(conn, placement.customer_id, placement.total_cents).await?;
            insert_order(conn, &placement).await?;
            let events = [
                order_event(&placement, Kind::OrderPlaced),
                order_event(&placement, Kind::CreditDebited),
            ];
            messages::record_all(conn, &events).await?;
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let placement = Placement::parse(payload)?;
            // The barrier runs this only after the action applied, once. The status guard makes it
            // harmless even if that ever failed: money goes back only for an order that took it.
            let refunded: Option<(Uuid, i64)> = sqlx::query_as(
                "UPDATE orders SET status = 'compensated',
                        reason = 'the checkout failed after the order was placed; credit refunded'
                 WHERE id = $1 AND status = 'committed'
                 RETURNING customer_id, total_cents",
            )
            .bind(placement.order_id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((customer_id, total)) = refunded {
                sqlx::query("UPDATE customers SET credit_cents = credit_cents + $2 WHERE id = $1")
                    .bind(customer_id)
                    .bind(total)
                    .execute(&mut *conn)
                    .await?;
                let refund = Event {
                    customer_id,
                    amount_cents: Some(total),
                    ..order_event(&placement, Kind::CreditRefunded)
                };
                messages::record(conn, &refund).await?;
            }
            Ok(())
        })
    }
}

/// Takes `total` from the customer's credit, or refuses with what is missing. One statement in the
/// common case: the `UPDATE` locks the row and, at READ COMMITTED, re-checks its guard on the
/// newest version, so two debits of one customer queue and neither can overdraw. When the guard
/// keeps the row, the customer is locked and read to say why (or, if a top-up landed in between,
/// debited after all).
async fn debit(conn: &mut PgConnection, customer_id: Uuid, total: i64) -> Result<(), BranchError> {
    let debited: Option<i64> = sqlx::query_scalar(
        "UPDATE customers SET credit_cents = credit_cents - $2
         WHERE id = $1 AND credit_cents >= $2
         RETURNING credit_cents",
    )
    .bind(customer_id)
    .bind(total)
    .fetch_optional(&mut *conn)
    .await?;
    if debited.is_some() {
        return Ok(());
    }
    let balance: Option<i64> =
        sqlx::query_scalar("SELECT credit_cents FROM customers WHERE id = $1 FOR UPDATE")
            .bind(customer_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(balance) = balance else {
        return Err(BranchError::Refused(
            Refusal::new(
                "unknown-customer",
                format!("no customer has the id {customer_id}"),
            )
            .with("customer_id", json!(customer_id)),
        ));
    };
    if balance < total {
        return Err(BranchError::Refused(
            Refusal::new("insufficient-credit", format!(
                "the order costs {total} cents but the credit is {balance} cents; top up at least {} cents",
                total - balance
            ))
            .with("required_cents", total)
            .with("available_cents", balance),
        ));
    }
    sqlx::query("UPDATE customers SET credit_cents = credit_cents - $2 WHERE id = $1")
        .bind(customer_id)
        .bind(total)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts the order and its lines in one statement. The order is stamped with the time its
/// checkout was recorded (`checkouts.created_at`, `now()` for an order no checkout announced), as
/// created and as last updated: the pending order shown before the commit already carries that
/// time, and the checkout's answer can be made from its record without reading the order back
/// (`super::http`).
async fn insert_order(conn: &mut PgConnection, placement: &Placement) -> Result<(), BranchError> {
    let (books, rest): (Vec<Uuid>, Vec<(i32, i64)>) = placement
        .lines
        .iter()
        .map(|l| (l.book_id, (l.quantity, l.price_cents)))
        .unzip();
    let (quantities, prices): (Vec<i32>, Vec<i64>) = rest.into_iter().unzip();
    // The lines' foreign key is checked at the end of the statement, after the order's insert.
    sqlx::query(
        "WITH stamp AS (
             SELECT coalesce((SELECT created_at FROM checkouts WHERE order_id = $1), now()) AS at
         ),
         o AS (
             INSERT INTO orders (id, customer_id, mode, status, total_cents, created_at, updated_at)
             SELECT $1, $2, $3, 'committed', $4, stamp.at, stamp.at FROM stamp
         )
         INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
         SELECT $1, l.line_no::int, l.book_id, l.quantity, l.price_cents
         FROM unnest($5::uuid[], $6::int[], $7::bigint[])
              WITH ORDINALITY AS l(book_id, quantity, price_cents, line_no)",
    )
    .bind(placement.order_id)
    .bind(placement.customer_id)
    .bind(placement.mode.as_str())
    .bind(placement.total_cents)
    .bind(&books)
    .bind(&quantities)
    .bind(&prices)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A message about the placed order, sharing the branch's transaction (prepared with it in 2PC).
fn order_event(placement: &Placement, kind: Kind) -> Event<'static> {
    Event {
        customer_id: placement.customer_id,
        kind,
        source_id: placement.order_id,
        order_id: Some(placement.order_id),
        amount_cents: Some(placement.total_cents),
        detail: None,
    }
}
