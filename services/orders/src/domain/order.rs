//! Orders as the API shows them. Checkout creates them; here they are only read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How an order was (or is being) committed across services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderMode {
    #[serde(rename = "2pc")]
    TwoPhaseCommit,
    #[serde(rename = "saga")]
    Saga,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Committed,
    Aborted,
    Compensated,
}

impl OrderMode {
    /// The value stored in `orders.mode` (the same as the JSON one).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderMode::TwoPhaseCommit => "2pc",
            OrderMode::Saga => "saga",
        }
    }

    pub fn parse(text: &str) -> Option<OrderMode> {
        [OrderMode::TwoPhaseCommit, OrderMode::Saga]
            .into_iter()
            .find(|m| m.as_str() == text)
    }
}

impl OrderStatus {
    /// The value stored in `orders.status` (the same as the JSON one).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Committed => "committed",
            OrderStatus::Aborted => "aborted",
            OrderStatus::Compensated => "compensated",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        use OrderStatus::*;
        [Pending, Committed, Aborted, Compensated]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One book in an order; `price_cents` is the unit price when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub book_id: Uuid,
    pub quantity: i32,
    pub price_cents: i64,
}

/// `Order` as API.md defines it; `reason` is left out of the JSON when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub mode: OrderMode,
    pub status: OrderStatus,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_statuses_round_trip_through_their_stored_text() {
        for mode in [OrderMode::TwoPhaseCommit, OrderMode::Saga] {
            assert_eq!(OrderMode::parse(mode.as_str()), Some(mode));
            assert_eq!(serde_json::to_value(mode).ok(), Some(mode.as_str().into()));
        }
        for status in [
            OrderStatus::Pending,
            OrderStatus::Committed,
            OrderStatus::Aborted,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(status.as_str().into())
            );
        }
        assert_eq!(OrderMode::parse("3pc"), None);
        assert_eq!(OrderStatus::parse("Pending"), None);
    }
}
