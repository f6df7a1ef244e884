//! A credit top-up amount in cents, parsed from whatever JSON the client sent.
//!
//! The body field is taken as a raw JSON value so that every wrong shape — a string, a fraction, a
//! number too large for 64 bits, a missing field — is one clear 422 on `amount_cents`, never a 500
//! and never an overflow further down.

use serde_json::Value;

/// A whole, positive number of cents no larger than the configured per-top-up maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CreditAmount(i64);

impl CreditAmount {
    /// Accepts only JSON integers in `1..=max_cents`.
    pub fn parse(value: &Value, max_cents: i64) -> Result<CreditAmount, String> {
        let rule = || format!("must be a whole number of cents from 1 to {max_cents}");
        let Value::Number(number) = value else {
            return Err(match value {
                Value::Null => format!("is required and {}", rule()),
                _ => rule(),
            });
        };
        match number.as_i64() {
            Some(cents) if (1..=max_cents).contains(&cents) => Ok(CreditAmount(cents)),
            Some(cents) if cents > max_cents => {
                Err(format!("must be at most {max_cents} cents per top-up"))
            }
            _ if number.is_u64() => Err(format!("must be at most {max_cents} cents per top-up")),
            _ => Err(rule()),
        }
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const MAX: i64 = 1_000_000;

    fn parse_text(json: &str) -> Result<CreditAmount, String> {
        let value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        CreditAmount::parse(&value, MAX)
    }

    #[test]
    fn the_bounds_are_inclusive() {
        assert_eq!(parse_text("1").map(CreditAmount::cents), Ok(1));
        assert_eq!(parse_text("1000000").map(CreditAmount::cents), Ok(MAX));
        assert!(parse_text("1000001").is_err());
    }

    #[test]
    fn every_wrong_shape_is_rejected() {
        for bad in [
            "0",
            "-1",
            "1.5",
            "10.0",
            "1e2",
            "1e30",
            "-1e30",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "\"10\"",
            "null",
            "true",
            "[1]",
            "{}",
        ] {
            assert!(parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_amount_says_it_is_required() {
        let err = CreditAmount::parse(&Value::Null, MAX)
            .err()
            .unwrap_or_default();
        assert!(err.contains("required"), "{err}");
    }

    proptest! {
        #[test]
        fn integers_in_range_are_accepted_unchanged(cents in 1..=MAX) {
            prop_assert_eq!(CreditAmount::parse(&json!(cents), MAX).map(CreditAmount::cents), Ok(cents));
        }

        #[test]
        fn integers_out_of_range_are_rejected(cents in prop_oneof![i64::MIN..=0, (MAX + 1)..=i64::MAX]) {
            prop_assert!(CreditAmount::parse(&json!(cents), MAX).is_err());
        }

        #[test]
        fn integers_beyond_sixty_four_bits_signed_are_rejected(cents in (i64::MAX as u64 + 1)..=u64::MAX) {
            prop_assert!(CreditAmount::parse(&json!(cents), MAX).is_err());
        }

        #[test]
        fn fractions_are_rejected(cents in proptest::num::f64::ANY) {
            prop_assert!(CreditAmount::parse(&json!(cents), MAX).is_err());
        }

        #[test]
        fn strings_are_rejected_even_when_numeric(text in "-?[0-9]{1,7}") {
            prop_assert!(CreditAmount::parse(&json!(text), MAX).is_err());
        }
    }
}
