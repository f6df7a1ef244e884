//! The body of `POST /api/checkout`, parsed: a non-empty basket of distinct books with sane
//! quantities, and the protocol to commit it with.

use std::collections::HashSet;

use platform::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::OrderMode;

/// Most lines one checkout may have.
pub const MAX_ITEMS: usize = 50;
/// Most copies of one book per checkout.
pub const MAX_QUANTITY: i64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    #[serde(default)]
    pub items: Option<Vec<ItemBody>>,
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub book_id: Uuid,
    pub quantity: i64,
}

/// A valid checkout request; its JSON is what the idempotency hash is taken of.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutRequest {
    pub mode: OrderMode,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub book_id: Uuid,
    pub quantity: i32,
}

impl CheckoutRequest {
    /// Every problem at once, as field errors (422).
    pub fn parse(body: CheckoutBody) -> Result<CheckoutRequest, ApiError> {
        let mut errors = Vec::new();
        let mode = match body.mode.as_deref() {
            None => Some(OrderMode::TwoPhaseCommit),
            Some(text) => OrderMode::parse(text).or_else(|| {
                errors.push(FieldError::new("mode", "must be \"2pc\" or \"saga\""));
                None
            }),
        };
        let items = body.items.unwrap_or_default();
        if items.is_empty() || items.len() > MAX_ITEMS {
            errors.push(FieldError::new(
                "items",
                format!("must hold 1 to {MAX_ITEMS} lines"),
            ));
        }
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                errors.push(FieldError::new(
                    format!("items[{index}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            if !seen.insert(item.book_id) {
                errors.push(FieldError::new(
                    format!("items[{index}].book_id"),
                    "names a book already in the basket; raise that line's quantity instead",
                ));
            }
            // In range after the check above (or an error is already recorded).
            let quantity = i32::try_from(item.quantity).unwrap_or(0);
            parsed.push(Item {
                book_id: item.book_id,
                quantity,
            });
        }
        ApiError::check(errors)?;
        Ok(CheckoutRequest {
            mode: mode.unwrap_or(OrderMode::TwoPhaseCommit),
            items: parsed,
        })
    }

    pub fn book_ids(&self) -> Vec<Uuid> {
        self.items.iter().map(|i| i.book_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(items: &[(Uuid, i64)], mode: Option<&str>) -> CheckoutBody {
        CheckoutBody {
            items: Some(
                items
                    .iter()
                    .map(|&(book_id, quantity)| ItemBody { book_id, quantity })
                    .collect(),
            ),
            mode: mode.map(str::to_owned),
        }
    }

    #[test]
    fn a_basket_defaults_to_two_phase_commit() -> Result<(), ApiError> {
        let request = CheckoutRequest::parse(body(&[(Uuid::now_v7(), 2)], None))?;
        assert_eq!(request.mode, OrderMode::TwoPhaseCommit);
        assert_eq!(request.items[0].quantity, 2);
        let saga = CheckoutRequest::parse(body(&[(Uuid::now_v7(), 1)], Some("saga")))?;
        assert_eq!(saga.mode, OrderMode::Saga);
        Ok(())
    }

    fn fields(result: Result<CheckoutRequest, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let book = Uuid::now_v7();
        let errors = fields(CheckoutRequest::parse(body(
            &[(book, 0), (book, 101)],
            Some("xa"),
        )));
        assert_eq!(
            errors,
            [
                "mode",
                "items[0].quantity",
                "items[1].quantity",
                "items[1].book_id"
            ]
        );
    }

    #[test]
    fn an_empty_or_oversized_basket_is_refused() {
        assert_eq!(fields(CheckoutRequest::parse(body(&[], None))), ["items"]);
        let many: Vec<(Uuid, i64)> = (0..=MAX_ITEMS).map(|_| (Uuid::now_v7(), 1)).collect();
        assert_eq!(fields(CheckoutRequest::parse(body(&many, None))), ["items"]);
        let missing = CheckoutBody {
            items: None,
            mode: None,
        };
        assert_eq!(fields(CheckoutRequest::parse(missing)), ["items"]);
    }
}
