//! Every write the platform acknowledged, kept so the invariants can be checked against the
//! databases afterwards, and the writes whose outcome the generator could not know.

use serde::Serialize;

/// A checkout answered 201 (committed) or 202 (pending).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AckOrder {
    pub order_id: String,
    pub customer_id: String,
    /// `committed` (201) or `pending` (202) when it was acknowledged; a 202 followed to its order
    /// afterwards (`Shop::resolve_pending_orders`) becomes `committed` or `aborted`.
    pub status: String,
    pub total_cents: i64,
}

/// A rating answered 202 `{rating_id}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AckRating {
    pub customer_id: String,
    pub book_id: String,
    pub rating_id: String,
}

/// A credit top-up answered 200; or, while unresolved, one whose answer never came.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopUp {
    pub customer_id: String,
    pub idempotency_key: String,
    pub amount_cents: i64,
}

/// What the generator knows it wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    pub orders: Vec<AckOrder>,
    pub ratings: Vec<AckRating>,
    pub top_ups: Vec<TopUp>,
    /// Top-ups sent whose answer was lost (timeout, broken connection, 5xx): they may or may not
    /// have been applied. Settling repeats them with the same key until they are answered.
    #[serde(skip)]
    pub unresolved_top_ups: Vec<TopUp>,
    /// `(customer, book)` of ratings sent without a definite answer: one may have been accepted
    /// after all and replaced an acknowledged rating of the same pair.
    #[serde(skip)]
    pub unsure_ratings: Vec<(String, String)>,
}

impl Ledger {
    pub fn merge(&mut self, other: Ledger) {
        self.orders.extend(other.orders);
        self.ratings.extend(other.ratings);
        self.top_ups.extend(other.top_ups);
        self.unresolved_top_ups.extend(other.unresolved_top_ups);
        self.unsure_ratings.extend(other.unsure_ratings);
    }

    /// Credit acknowledged for `customer_id`.
    pub fn credited(&self, customer_id: &str) -> i64 {
        self.top_ups
            .iter()
            .filter(|t| t.customer_id == customer_id)
            .map(|t| t.amount_cents)
            .sum()
    }

    /// Counts for the report.
    pub fn summary(&self) -> LedgerSummary {
        LedgerSummary {
            orders: self.orders.len(),
            pending_orders: self.orders.iter().filter(|o| o.status == "pending").count(),
            ratings: self.ratings.len(),
            top_ups: self.top_ups.len(),
            unresolved_top_ups: self.unresolved_top_ups.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LedgerSummary {
    pub orders: usize,
    pub pending_orders: usize,
    pub ratings: usize,
    pub top_ups: usize,
    pub unresolved_top_ups: usize,
}
