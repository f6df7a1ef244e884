//! The invariants checked in the databases after a run: money and stock conserved, no
//! acknowledged write lost, no prepared transaction left behind, every accepted rating persisted.
//! They are checked again and again until they hold or the patience runs out, because recovery
//! (pending checkouts, the ratings' write-behind) finishes after the load does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::ledger::Ledger;

/// Superuser connections to the databases the invariants live in.
#[derive(Clone)]
pub struct Databases {
    pub books: PgPool,
    pub orders: PgPool,
}

/// Per book, `stock + copies sold in committed orders`, taken before the load: a checkout moves
/// copies from one side to the other, so the sum must not change.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    stock_plus_sold: HashMap<String, i64>,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was compared; on failure, the first offenders.
    pub detail: String,
}

impl Databases {
    pub async fn baseline(&self) -> anyhow::Result<Baseline> {
        Ok(Baseline {
            stock_plus_sold: self.stock_plus_sold().await?,
        })
    }

    async fn stock_plus_sold(&self) -> anyhow::Result<HashMap<String, i64>> {
        let stock: Vec<(String, i64)> = sqlx::query_as("SELECT id::text, stock::bigint FROM books")
            .fetch_all(&self.books)
            .await?;
        let sold: HashMap<String, i64> = sqlx::query_as(
            "SELECT l.book_id::text, sum(l.quantity)::bigint FROM order_lines l
             JOIN orders o ON o.id = l.order_id WHERE o.status = 'committed' GROUP BY l.book_id",
        )
        .fetch_all(&self.orders)
        .await?
        .into_iter()
        .collect();
        Ok(stock
            .into_iter()
            .map(|(id, stock)| {
                let sold = sold.get(&id).copied().unwrap_or(0);
                (id, stock + sold)
            })
            .collect())
    }

    /// Checks every invariant until all hold or `patience` has passed; the last verdicts.
    pub async fn check(
        &self,
        baseline: &Baseline,
        ledger: &Ledger,
        patience: Duration,
    ) -> anyhow::Result<Vec<Check>> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let checks = self.check_once(baseline, ledger).await?;
            if checks.iter().all(|c| c.ok) || tokio::time::Instant::now() >= deadline {
                return Ok(checks);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn check_once(&self, baseline: &Baseline, ledger: &Ledger) -> anyhow::Result<Vec<Check>> {
        Ok(vec![
            self.no_prepared_transactions().await?,
            self.money_conserved(ledger).await?,
            self.stock_conserved(baseline).await?,
            self.acknowledged_orders_kept(ledger).await?,
            self.acknowledged_top_ups_kept(ledger).await?,
            self.accepted_ratings_persisted(ledger).await?,
            self.rating_totals_match_rows().await?,
        ])
    }

    async fn no_prepared_transactions(&self) -> anyhow::Result<Check> {
        // pg_prepared_xacts spans every database of the server.
        let gids: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts")
            .fetch_all(&self.books)
            .await?;
        Ok(verdict(
            "no prepared transaction left",
            gids,
            "prepared transactions",
        ))
    }

    /// For each of the generator's customers: balance + committed order totals = credit
    /// acknowledged (funding and top-ups).
    async fn money_conserved(&self, ledger: &Ledger) -> anyhow::Result<Check> {
        let customers: HashSet<&str> = ledger
            .top_ups
            .iter()
            .map(|t| t.customer_id.as_str())
            .collect();
        let ids: Vec<String> = customers.iter().map(|s| (*s).to_owned()).collect();
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.id::text, c.credit_cents,
                    coalesce((SELECT sum(total_cents) FROM orders
                              WHERE customer_id = c.id AND status = 'committed'), 0)::bigint
             FROM customers c WHERE c.id = ANY($1::text[]::uuid[])",
        )
        .bind(&ids)
        .fetch_all(&self.orders)
        .await?;
        let mut offenders: Vec<String> = rows
            .iter()
            .filter(|(id, balance, spent)| balance + spent != ledger.credited(id) || *balance < 0)
            .map(|(id, balance, spent)| {
                format!(
                    "{id}: balance {balance} + spent {spent} != credited {}",
                    ledger.credited(id)
                )
            })
            .collect();
        if rows.len() != ids.len() {
            offenders.push(format!(
                "{} of {} customers missing",
                ids.len() - rows.len(),
                ids.len()
            ));
        }
        if !ledger.unresolved_top_ups.is_empty() {
            offenders.push(format!(
                "{} top-ups still unresolved: their outcome is unknown",
                ledger.unresolved_top_ups.len()
            ));
        }
        let mut check = verdict("money conserved", offenders, "customers off");
        if check.ok {
            check.detail = format!(
                "{} customers: balance + committed spending = credit acknowledged",
                rows.len()
            );
        }
        Ok(check)
    }

    async fn stock_conserved(&self, baseline: &Baseline) -> anyhow::Result<Check> {
        let now = self.stock_plus_sold().await?;
        let offenders: Vec<String> = baseline
            .stock_plus_sold
            .iter()
            .filter(|(id, before)| now.get(*id) != Some(before))
            .map(|(id, before)| format!("{id}: stock + sold was {before}, is {:?}", now.get(id)))
            .collect();
        let negative: Vec<(String,)> = sqlx::query_as("SELECT id::text FROM books WHERE stock < 0")
            .fetch_all(&self.books)
            .await?;
        let all = offenders
            .into_iter()
            .chain(
                negative
                    .into_iter()
                    .map(|(id,)| format!("{id}: negative stock")),
            )
            .collect();
        let mut check = verdict("stock conserved", all, "books off");
        if check.ok {
            check.detail = format!(
                "{} books: stock + committed sales unchanged",
                baseline.stock_plus_sold.len()
            );
        }
        Ok(check)
    }

    /// Every order answered 201 — or answered 202 and then seen committed — is committed with its
    /// total; every other 202 has an order that is no longer pending. One seen aborted after its
    /// 202 has no order row when it was a 2PC checkout (the `place` branch rolled back), so its
    /// checkout record is what must say `aborted` — and no committed order may exist for it.
    async fn acknowledged_orders_kept(&self, ledger: &Ledger) -> anyhow::Result<Check> {
        let ids: Vec<String> = ledger.orders.iter().map(|o| o.order_id.clone()).collect();
        let rows: HashMap<String, (String, i64)> = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT id::text, status, total_cents FROM orders WHERE id::text = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.orders)
        .await?
        .into_iter()
        .map(|(id, status, total)| (id, (status, total)))
        .collect();
        let checkouts: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "SELECT order_id::text, status FROM checkouts WHERE order_id::text = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.orders)
        .await?
        .into_iter()
        .collect();
        let offenders: Vec<String> = ledger
            .orders
            .iter()
            .filter_map(|ack| {
                let row = rows.get(&ack.order_id);
                if ack.status == "aborted" {
                    return aborted_offence(&ack.order_id, row, checkouts.get(&ack.order_id));
                }
                match row {
                    None => Some(format!(
                        "{}: acknowledged {} but missing",
                        ack.order_id, ack.status
                    )),
                    Some((status, _)) if status == "pending" => {
                        Some(format!("{}: still pending", ack.order_id))
                    }
                    Some((status, total))
                        if ack.status == "committed"
                            && (status != "committed" || *total != ack.total_cents) =>
                    {
                        Some(format!(
                            "{}: acknowledged committed ({}), now {status} ({total})",
                            ack.order_id, ack.total_cents
                        ))
                    }
                    Some(_) => None,
                }
            })
            .collect();
        let mut check = verdict("no acknowledged order lost", offenders, "orders off");
        if check.ok {
            check.detail = format!("{} acknowledged orders present and final", ids.len());
        }
        Ok(check)
    }

    async fn acknowledged_top_ups_kept(&self, ledger: &Ledger) -> anyhow::Result<Check> {
        let keys: Vec<String> = ledger
            .top_ups
            .iter()
            .map(|t| format!("credit:{}/{}", t.customer_id, t.idempotency_key))
            .collect();
        let found: HashSet<String> = sqlx::query_scalar(
            "SELECT scope || '/' || key FROM idempotency_keys
             WHERE scope || '/' || key = ANY($1) AND status BETWEEN 200 AND 299",
        )
        .bind(&keys)
        .fetch_all(&self.orders)
        .await?
        .into_iter()
        .collect();
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !found.contains(*k))
            .cloned()
            .collect();
        let mut check = verdict("no acknowledged top-up lost", missing, "top-ups missing");
        if check.ok {
            check.detail = format!("{} acknowledged top-ups recorded", keys.len());
        }
        Ok(check)
    }

    /// One rating per customer and book is kept (the latest wins), so each rated pair must hold
    /// one of the ratings accepted for it.
    async fn accepted_ratings_persisted(&self, ledger: &Ledger) -> anyhow::Result<Check> {
        let mut accepted: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for r in &ledger.ratings {
            accepted
                .entry((r.customer_id.clone(), r.book_id.clone()))
                .or_default()
                .insert(r.rating_id.clone());
        }
        let customers: Vec<String> = accepted
            .keys()
            .map(|(c, _)| c.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let stored: HashMap<(String, String), String> =
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT customer_id::text, book_id::text, rating_id::text FROM ratings
             WHERE customer_id::text = ANY($1)",
            )
            .bind(&customers)
            .fetch_all(&self.books)
            .await?
            .into_iter()
            .map(|(c, b, r)| ((c, b), r))
            .collect();
        let unsure: HashSet<&(String, String)> = ledger.unsure_ratings.iter().collect();
        let offenders: Vec<String> = accepted
            .iter()
            .filter_map(|(pair, ids)| {
                let stored = stored.get(pair);
                // A rating whose answer was lost may have come later and replaced ours: then any
                // stored rating of the pair will do, but there must be one.
                let kept = stored.is_some_and(|id| ids.contains(id) || unsure.contains(pair));
                (!kept).then(|| {
                    format!(
                        "customer {}, book {}: stored {}, accepted {}",
                        pair.0,
                        pair.1,
                        stored.map_or("nothing", String::as_str),
                        ids.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect();
        let mut check = verdict(
            "every accepted rating persisted",
            offenders,
            "rated pairs off",
        );
        if check.ok {
            check.detail = format!(
                "{} ratings accepted for {} pairs, all stored",
                ledger.ratings.len(),
                accepted.len()
            );
        }
        Ok(check)
    }
}

impl Databases {
    /// The persisters move a book's totals (`book_rating_totals`: `rating_count`, `rating_sum`) by
    /// each upsert's old and new stars, in the batch's transaction: in any one snapshot they equal
    /// a recomputation from the rating rows — so a replayed or claimed batch that counted twice
    /// shows here, even mid-backlog. A book without a totals row (its ratings would be counted
    /// nowhere) is an offender too.
    async fn rating_totals_match_rows(&self) -> anyhow::Result<Check> {
        let offenders: Vec<String> = sqlx::query_scalar(
            "SELECT format('book %s: count %s, sum %s, the rows say %s, %s', b.id,
                           coalesce(t.rating_count::text, 'missing'),
                           coalesce(t.rating_sum::text, 'missing'), coalesce(r.count, 0),
                           coalesce(r.sum, 0))
               FROM books b
               LEFT JOIN book_rating_totals t ON t.book_id = b.id
               LEFT JOIN (SELECT book_id, count(*) AS count, sum(stars) AS sum
                            FROM ratings GROUP BY book_id) r ON r.book_id = b.id
              WHERE t.book_id IS NULL OR t.rating_count <> coalesce(r.count, 0)
                 OR t.rating_sum <> coalesce(r.sum, 0)",
        )
        .fetch_all(&self.books)
        .await?;
        Ok(verdict(
            "rating totals are the rows'",
            offenders,
            "books off",
        ))
    }
}

/// What is wrong with an order seen aborted after its 202, if anything: its checkout must say
/// `aborted` (its order row, a saga's, may exist but never as committed).
fn aborted_offence(
    order_id: &str,
    row: Option<&(String, i64)>,
    checkout: Option<&String>,
) -> Option<String> {
    match (checkout.map(String::as_str), row) {
        (_, Some((status, _))) if status == "committed" || status == "pending" => Some(format!(
            "{order_id}: seen aborted after its 202, now {status}"
        )),
        (Some("aborted"), _) => None,
        (Some(other), _) => Some(format!(
            "{order_id}: seen aborted after its 202, its checkout is {other}"
        )),
        (None, _) => Some(format!(
            "{order_id}: seen aborted after its 202, but no checkout records it"
        )),
    }
}

/// Passes when `offenders` is empty; otherwise names how many and the first few.
fn verdict(name: &'static str, offenders: Vec<String>, what: &str) -> Check {
    let shown: Vec<&str> = offenders.iter().take(3).map(String::as_str).collect();
    Check {
        name,
        ok: offenders.is_empty(),
        detail: if offenders.is_empty() {
            "none".into()
        } else {
            format!("{} {what}: {}", offenders.len(), shown.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{aborted_offence, verdict};

    #[test]
    fn a_verdict_fails_on_any_offender_and_shows_the_first_few() {
        assert!(verdict("x", vec![], "off").ok);
        let failed = verdict("x", (0..5).map(|n| format!("b{n}")).collect(), "books off");
        assert!(!failed.ok);
        assert_eq!(failed.detail, "5 books off: b0; b1; b2");
    }

    #[test]
    fn an_order_seen_aborted_is_judged_by_its_checkout_and_never_committed() {
        let aborted = "aborted".to_owned();
        let committed = ("committed".to_owned(), 100);
        let compensated = ("compensated".to_owned(), 100);
        // 2PC: no order row, the checkout says aborted.
        assert_eq!(aborted_offence("o", None, Some(&aborted)), None);
        // Saga: the order row was compensated.
        assert_eq!(
            aborted_offence("o", Some(&compensated), Some(&aborted)),
            None
        );
        assert!(aborted_offence("o", Some(&committed), Some(&aborted)).is_some());
        assert!(aborted_offence("o", None, Some(&"pending".to_owned())).is_some());
        assert!(aborted_offence("o", None, None).is_some());
    }
}
