//! Branch `reserve`: decrement the stock of every book of an order, at the price the customer was
//! quoted, or change nothing and say exactly what is short.

use std::collections::HashSet;

use coordinator::participant::{Branch, BranchError, Refusal, parse_payload};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

/// Most lines one reservation may hold (the orders service allows fewer).
const MAX_ITEMS: usize = 100;

/// The branch payload: what to take, and the unit price the order was quoted at.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub book_id: Uuid,
    pub quantity: i32,
    pub price_cents: i64,
}

impl Reservation {
    /// A payload the coordinator sent us; anything malformed is a definite "no" (422), not a retry.
    fn parse(payload: &Value) -> Result<Reservation, BranchError> {
        let reservation: Reservation = parse_payload(payload)?;
        if reservation.items.is_empty() || reservation.items.len() > MAX_ITEMS {
            return Err(BranchError::Invalid(format!(
                "a reservation holds 1 to {MAX_ITEMS} items, not {}",
                reservation.items.len()
            )));
        }
        let mut seen = HashSet::new();
        for item in &reservation.items {
            if !(1..=1_000_000).contains(&item.quantity) {
                return Err(BranchError::Invalid(format!(
                    "the quantity of book {} must be between 1 and 1000000",
                    item.book_id
                )));
            }
            if !seen.insert(item.book_id) {
                return Err(BranchError::Invalid(format!(
                    "book {} appears twice in the reservation",
                    item.book_id
                )));
            }
        }
        Ok(reservation)
    }

    fn ids_and_quantities(&self) -> (Vec<Uuid>, Vec<i32>) {
        self.items.iter().map(|i| (i.book_id, i.quantity)).unzip()
    }
}

/// The `reserve` branch over the `books` table.
///
/// Its stock changes reach the cache through `crate::cache::checkout`, a layer around the
/// participant routes that invalidates the books after the commit: the branch itself runs inside
/// the participant's transaction and has no after-commit moment of its own.
pub struct ReserveStock;

#[derive(sqlx::FromRow)]
struct Locked {
    id: Uuid,
    price_cents: i64,
    stock: i32,
    deleted: bool,
    /// How many books the statement decremented (the same in every row).
    taken: i64,
}

impl Branch for ReserveStock {
    fn name(&self) -> &'static str {
        "reserve"
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let reservation = Reservation::parse(payload)?;
            let (ids, quantities) = reservation.ids_and_quantities();
            let prices: Vec<i64> = reservation.items.iter().map(|i| i.price_cents).collect();
            // One round trip: lock the books in id order (so two checkouts of the same books
            // queue instead of deadlocking), and take the stock only if every line fits — known,
            // not deleted, at the quoted price, enough stock. The rows come back as they were
            // locked (before the decrement), for the refusal to name what is short; `taken` is
            // how many books were decremented: all of them or none. A refusal rolls the
            // participant's transaction back anyway.
            let rows: Vec<Locked> = sqlx::query_as(
                "WITH wanted AS (
                     SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[])
                         AS w(id, quantity, price_cents)
                 ), locked AS MATERIALIZED (
                     SELECT id, price_cents, stock, deleted_at IS NOT NULL AS deleted
                     FROM books WHERE id = ANY($1) ORDER BY id FOR UPDATE
                 ), fits AS (
                     SELECT count(*) = cardinality($1::uuid[]) AS every_line
                     FROM wanted w JOIN locked l USING (id)
                     WHERE NOT l.deleted AND l.price_cents = w.price_cents
                       AND l.stock >= w.quantity
                 ), taken AS (
                     UPDATE books SET stock = books.stock - w.quantity, version = books.version + 1
                     FROM wanted w, fits
                     WHERE fits.every_line AND books.id = w.id
                     RETURNING books.id
                 )
                 SELECT id, price_cents, stock, deleted, (SELECT count(*) FROM taken) AS taken
                 FROM locked",
            )
            .bind(&ids)
            .bind(&quantities)
            .bind(&prices)
            .fetch_all(&mut *conn)
            .await?;
            refuse_unless_available(&reservation, &rows)?;
            let taken = rows.first().map_or(0, |r| r.taken);
            if usize::try_from(taken).ok() != Some(reservation.items.len()) {
                // Cannot happen: every line was found available under its lock.
                return Err(BranchError::Db(sqlx::Error::Decode(
                    format!(
                        "reserve took the stock of {taken} books, not {}",
                        reservation.items.len()
                    )
                    .into(),
                )));
            }
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        payload: &'a Value,
    ) -> BoxFuture<'a, Result<(), BranchError>> {
        Box::pin(async move {
            let reservation = Reservation::parse(payload)?;
            let (ids, quantities) = reservation.ids_and_quantities();
            // The barrier guarantees the action applied exactly once before this runs, so the stock
            // it took is given back exactly once. A soft-deleted book gets its stock back too: the
            // units exist, whatever the catalog shows.
            sqlx::query(
                "UPDATE books SET stock = stock + v.quantity, version = version + 1
                 FROM unnest($1::uuid[], $2::int[]) AS v(id, quantity)
                 WHERE books.id = v.id",
            )
            .bind(&ids)
            .bind(&quantities)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }
}

/// Every reason the reservation cannot be made, all named at once so the customer can fix the whole
/// basket in one go: unknown or deleted books first (nothing else matters then), then changed
/// prices, then short stock.
fn refuse_unless_available(reservation: &Reservation, rows: &[Locked]) -> Result<(), BranchError> {
    let find = |id: Uuid| rows.iter().find(|r| r.id == id && !r.deleted);
    let unknown: Vec<Uuid> = reservation
        .items
        .iter()
        .filter(|i| find(i.book_id).is_none())
        .map(|i| i.book_id)
        .collect();
    if !unknown.is_empty() {
        return Err(BranchError::Refused(
            Refusal::new(
                "unknown-book",
                format!(
                    "{} of the books ordered are not in the catalog",
                    unknown.len()
                ),
            )
            .with("book_ids", json!(unknown)),
        ));
    }
    let mut changed = Vec::new();
    let mut short = Vec::new();
    for item in &reservation.items {
        let Some(row) = find(item.book_id) else {
            continue;
        };
        if row.price_cents != item.price_cents {
            changed.push(json!({
                "book_id": item.book_id, "quoted_cents": item.price_cents, "price_cents": row.price_cents
            }));
        }
        if row.stock < item.quantity {
            short.push(json!({
                "book_id": item.book_id, "requested": item.quantity, "available": row.stock
            }));
        }
    }
    if !changed.is_empty() {
        return Err(BranchError::Refused(
            Refusal::new(
                "price-changed",
                format!(
                    "the price of {} of the books changed; check out again",
                    changed.len()
                ),
            )
            .with("changed", changed),
        ));
    }
    if !short.is_empty() {
        return Err(BranchError::Refused(
            Refusal::new(
                "insufficient-stock",
                format!("not enough stock for {} of the books ordered", short.len()),
            )
            .with("short", short),
        ));
    }
    Ok(())
}
