//! Whole-number fields. They arrive as any JSON number (`serde_json::Number`) rather than `i64`, so that
//! 1e30, 2^63 or 9.5 are reported as a field error next to every other invalid field instead of failing
//! deserialisation on the first one.

use serde_json::Number;

/// A price in integer cents (never floating point), 0..=1,000,000.00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceCents(i64);

impl PriceCents {
    pub const MAX: i64 = 100_000_000;

    pub fn parse(raw: &Number) -> Result<Self, String> {
        whole_in(raw, 0, Self::MAX).map(PriceCents)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Units in stock, 0..=1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock(i32);

impl Stock {
    pub const MAX: i32 = 1_000_000;

    pub fn parse(raw: &Number) -> Result<Self, String> {
        let value = whole_in(raw, 0, i64::from(Self::MAX))?;
        i32::try_from(value)
            .map(Stock)
            .map_err(|_| out_of_range(0, i64::from(Self::MAX)))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// `raw` as an integer within `min..=max`; the error completes "<field> …".
fn whole_in(raw: &Number, min: i64, max: i64) -> Result<i64, String> {
    match raw.as_i64() {
        Some(value) if (min..=max).contains(&value) => Ok(value),
        Some(_) => Err(out_of_range(min, max)),
        // Beyond i64 but still a whole number: say "range", not "whole".
        None if raw.is_u64() => Err(out_of_range(min, max)),
        None => Err(format!("must be a whole number from {min} to {max}")),
    }
}

fn out_of_range(min: i64, max: i64) -> String {
    format!("must be from {min} to {max}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn number(json: &str) -> Number {
        serde_json::from_str(json).expect("a JSON number")
    }

    #[test]
    fn the_bounds_are_inclusive() {
        assert_eq!(PriceCents::parse(&number("0")).map(PriceCents::get), Ok(0));
        assert_eq!(
            PriceCents::parse(&number("100000000")).map(PriceCents::get),
            Ok(100_000_000)
        );
        assert_eq!(
            Stock::parse(&number("1000000")).map(Stock::get),
            Ok(1_000_000)
        );
        assert!(PriceCents::parse(&number("100000001")).is_err());
        assert!(Stock::parse(&number("1000001")).is_err());
    }

    #[test]
    fn negative_huge_and_fractional_numbers_are_refused() {
        for bad in [
            "-1",
            "1e30",
            "9223372036854775808",
            "18446744073709551615",
            "1e400",
            "9.5",
            "-0.5",
            "1.0",
        ] {
            // 1e400 is not a valid f64; serde_json refuses it before we see it.
            let Ok(parsed) = serde_json::from_str::<Number>(bad) else {
                continue;
            };
            assert!(PriceCents::parse(&parsed).is_err(), "{bad}");
            assert!(Stock::parse(&parsed).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_integer_parses_exactly_when_in_range(n in any::<i64>()) {
            let parsed = Stock::parse(&Number::from(n));
            prop_assert_eq!(parsed.is_ok(), (0..=1_000_000).contains(&n));
            if let Ok(stock) = parsed {
                prop_assert_eq!(i64::from(stock.get()), n);
            }
        }

        #[test]
        fn no_float_is_ever_accepted(f in any::<f64>()) {
            if let Some(n) = Number::from_f64(f) {
                prop_assert!(PriceCents::parse(&n).is_err());
            }
        }
    }
}
