//! The message record: a customer notification for every order and credit change.
//!
//! Each message is written by [`record`] on the connection of the transaction that makes the change,
//! so it commits (or rolls back) with it and cannot be lost; the unique `(source_id, kind)` turns a
//! second write of the same event into a no-op. Messages are *read* in the eventual model
//! ([`page`] on `Pools::eventual`, a replica) — see docs/CLUSTER.md, "Consistency".

use chrono::{DateTime, Utc};
use platform::pagination::{Page, PageRequest};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The sort key a cursor carries: the last message shown.
pub type MessageKey = (DateTime<Utc>, Uuid);

/// What a message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OrderPlaced,
    OrderCommitted,
    OrderAborted,
    CreditToppedUp,
    CreditDebited,
    CreditRefunded,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderPlaced => "order_placed",
            Kind::OrderCommitted => "order_committed",
            Kind::OrderAborted => "order_aborted",
            Kind::CreditToppedUp => "credit_topped_up",
            Kind::CreditDebited => "credit_debited",
            Kind::CreditRefunded => "credit_refunded",
        }
    }

    /// The notification's wording; `detail` is why an order was aborted, when known.
    pub(crate) fn text(self, amount_cents: Option<i64>, detail: Option<&str>) -> String {
        let amount = amount_cents.map_or_else(String::new, |c| format!(" ({c} cents)"));
        match self {
            Kind::OrderPlaced => format!("Your order was placed{amount}."),
            Kind::OrderCommitted => format!("Your order is confirmed{amount}."),
            Kind::OrderAborted => match detail {
                Some(why) => format!("Your order could not be completed: {why}"),
                None => "Your order could not be completed.".into(),
            },
            Kind::CreditToppedUp => format!("Your credit was topped up{amount}."),
            Kind::CreditDebited => format!("Your credit was charged for an order{amount}."),
            Kind::CreditRefunded => format!("Your credit was refunded for an order{amount}."),
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub customer_id: Uuid,
    pub kind: Kind,
    /// The order for order events, else a fresh id of the change itself.
    pub source_id: Uuid,
    pub order_id: Option<Uuid>,
    pub amount_cents: Option<i64>,
    pub detail: Option<&'a str>,
}

/// Writes the message in the caller's transaction; a second write of the same event changes nothing.
pub async fn record(conn: &mut PgConnection, event: &Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO messages (id, customer_id, kind, source_id, order_id, amount_cents, text)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (source_id, kind) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(event.customer_id)
    .bind(event.kind.as_str())
    .bind(event.source_id)
    .bind(event.order_id)
    .bind(event.amount_cents)
    .bind(event.kind.text(event.amount_cents, event.detail))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Several messages as columns, to be bound as seven arrays (`uuid[]` id, `uuid[]` customer,
/// `text[]` kind, `uuid[]` source, `uuid[]` order, `bigint[]` amount, `text[]` text) of an
/// `INSERT INTO messages … SELECT * FROM unnest(…) ON CONFLICT (source_id, kind) DO NOTHING`,
/// alone or as part of a larger statement (the `place` branch writes its two with the order).
pub struct Batch {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    kinds: Vec<&'static str>,
    sources: Vec<Uuid>,
    orders: Vec<Option<Uuid>>,
    amounts: Vec<Option<i64>>,
    texts: Vec<String>,
}

impl Batch {
    pub fn of(events: &[Event<'_>]) -> Batch {
        let mut batch = Batch {
            ids: Vec::with_capacity(events.len()),
            customers: Vec::with_capacity(events.len()),
            kinds: Vec::with_capacity(events.len()),
            sources: Vec::with_capacity(events.len()),
            orders: Vec::with_capacity(events.len()),
            amounts: Vec::with_capacity(events.len()),
            texts: Vec::with_capacity(events.len()),
        };
        for event in events {
            batch.ids.push(Uuid::now_v7());
            batch.customers.push(event.customer_id);
            batch.kinds.push(event.kind.as_str());
            batch.sources.push(event.source_id);
            batch.orders.push(event.order_id);
            batch.amounts.push(event.amount_cents);
            batch
                .texts
                .push(event.kind.text(event.amount_cents, event.detail));
        }
        batch
    }

    /// Binds the seven arrays as the query's next parameters.
    pub fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.customers)
            .bind(self.kinds)
            .bind(self.sources)
            .bind(self.orders)
            .bind(self.amounts)
            .bind(self.texts)
    }

    /// [`Batch::bind`] for a query that returns one column.
    pub fn bind_scalar<'q, O>(
        self,
        query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.customers)
            .bind(self.kinds)
            .bind(self.sources)
            .bind(self.orders)
            .bind(self.amounts)
            .bind(self.texts)
    }
}

/// Writes several messages in the caller's transaction in one statement; like [`record`] for each.
pub async fn record_all(conn: &mut PgConnection, events: &[Event<'_>]) -> Result<(), sqlx::Error> {
    Batch::of(events)
        .bind(sqlx::query(
            "INSERT INTO messages (id, customer_id, kind, source_id, order_id, amount_cents, text)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                                  $6::bigint[], $7::text[])
             ON CONFLICT (source_id, kind) DO NOTHING",
        ))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A message as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Message {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub kind: String,
    pub order_id: Option<Uuid>,
    pub amount_cents: Option<i64>,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// A customer's messages, newest first, from `pool` (the caller picks the eventual one).
pub async fn page(
    pool: &PgPool,
    customer_id: Uuid,
    page: &PageRequest<MessageKey>,
) -> Result<Page<Message>, sqlx::Error> {
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<Message> = sqlx::query_as(
        "SELECT id, customer_id, kind, order_id, amount_cents, text, created_at
         FROM messages
         WHERE customer_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC
         LIMIT $4",
    )
    .bind(customer_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, page.limit, |m| (m.created_at, m.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_names_a_value_the_table_accepts_and_says_the_amount() {
        let migration = include_str!("../migrations/0006_messages.sql");
        for kind in [
            Kind::OrderPlaced,
            Kind::OrderCommitted,
            Kind::OrderAborted,
            Kind::CreditToppedUp,
            Kind::CreditDebited,
            Kind::CreditRefunded,
        ] {
            assert!(
                migration.contains(&format!("'{}'", kind.as_str())),
                "{kind:?}"
            );
        }
        assert!(
            Kind::CreditToppedUp
                .text(Some(250), None)
                .contains("250 cents")
        );
        assert!(
            Kind::OrderAborted
                .text(None, Some("no stock"))
                .contains("no stock")
        );
    }
}
