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
use crate::messages::{self, Batch, Event, Kind};

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
            if place(conn, &placement).await? {
                return Ok(());
            }
            // The guard kept the row: say why, or — a top-up landed in between — place it now,
            // under the lock the read took.
            refuse_unless_affordable(conn, placement.customer_id, placement.total_cents).await?;
            if place(conn, &placement).await? {
                return Ok(());
            }
            Err(BranchError::Db(sqlx::Error::Decode(
                "the credit guard kept a customer whose locked credit covers the order".into(),
            )))
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

/// The whole branch in one statement: debit `total` from the customer's credit, and only if that
/// took — the guarded `UPDATE` locks the row and, at READ COMMITTED, re-checks its guard on the
/// newest version, so two debits of one customer queue and neither can overdraw — insert the order,
/// its lines and the two messages (order placed, credit debited). Returns whether it did; `false`
/// changed nothing (unknown customer or short credit, see [`refuse_unless_affordable`]).
///
/// The order is stamped with the time its checkout was recorded (`checkouts.created_at`, `now()`
/// for an order no checkout announced), as created and as last updated: the pending order shown
/// before the commit already carries that time, and the checkout's answer can be made from its
/// record without reading the order back (`super::http`). The foreign keys of the lines and the
/// messages are checked at the end of the statement, after the order's insert.
async fn place(conn: &mut PgConnection, placement: &Placement) -> Result<bool, BranchError> {
    let (books, rest): (Vec<Uuid>, Vec<(i32, i64)>) = placement
        .lines
        .iter()
        .map(|l| (l.book_id, (l.quantity, l.price_cents)))
        .unzip();
    let (quantities, prices): (Vec<i32>, Vec<i64>) = rest.into_iter().unzip();
    let events = [
        order_event(placement, Kind::OrderPlaced),
        order_event(placement, Kind::CreditDebited),
    ];
    let query = sqlx::query_scalar::<_, i64>(
        "WITH debit AS (
             UPDATE customers SET credit_cents = credit_cents - $4
             WHERE id = $2 AND credit_cents >= $4
             RETURNING id
         ),
         stamp AS (
             SELECT coalesce((SELECT created_at FROM checkouts WHERE order_id = $1), now()) AS at
         ),
         o AS (
             INSERT INTO orders (id, customer_id, mode, status, total_cents, created_at, updated_at)
             SELECT $1, $2, $3, 'committed', $4, stamp.at, stamp.at FROM stamp, debit
         ),
         l AS (
             INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
             SELECT $1, l.line_no::int, l.book_id, l.quantity, l.price_cents
             FROM debit, unnest($5::uuid[], $6::int[], $7::bigint[])
                  WITH ORDINALITY AS l(book_id, quantity, price_cents, line_no)
         ),
         m AS (
             INSERT INTO messages (id, customer_id, kind, source_id, order_id, amount_cents, text)
             SELECT m.* FROM debit, unnest($8::uuid[], $9::uuid[], $10::text[], $11::uuid[],
                                           $12::uuid[], $13::bigint[], $14::text[]) AS m
             ON CONFLICT (source_id, kind) DO NOTHING
         )
         SELECT count(*) FROM debit",
    )
    .bind(placement.order_id)
    .bind(placement.customer_id)
    .bind(placement.mode.as_str())
    .bind(placement.total_cents)
    .bind(&books)
    .bind(&quantities)
    .bind(&prices);
    let placed = Batch::of(&events)
        .bind_scalar(query)
        .fetch_one(&mut *conn)
        .await?;
    Ok(placed == 1)
}

/// After the guarded debit kept the row: locks and reads the customer to refuse an unknown one or
/// short credit. `Ok` when the credit covers the order after all (a top-up landed in between).
async fn refuse_unless_affordable(
    conn: &mut PgConnection,
    customer_id: Uuid,
    total: i64,
) -> Result<(), BranchError> {
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
