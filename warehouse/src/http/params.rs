//! The reports' query parameters, parsed at the boundary: a bad date, range, grouping or limit is a
//! 400 that names the parameter and what it accepts.

use chrono::{NaiveDate, Utc};
use platform::ApiError;
use serde::Deserialize;

/// Longest range a report covers (ten years), so one request cannot ask for an unbounded scan.
const MAX_RANGE_DAYS: i64 = 3660;
/// Default range: the last 30 days, today included.
const DEFAULT_RANGE_DAYS: i64 = 29;

/// `from` and `to` as given (`YYYY-MM-DD`, both inclusive, UTC days).
#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// An inclusive range of UTC days as `dim_date` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DateRange {
    pub fn parse(query: &RangeQuery) -> Result<DateRange, ApiError> {
        let to = match &query.to {
            Some(text) => date("to", text)?,
            None => Utc::now().date_naive(),
        };
        let from = match &query.from {
            Some(text) => date("from", text)?,
            None => to - chrono::Duration::days(DEFAULT_RANGE_DAYS),
        };
        if from > to {
            return Err(ApiError::BadRequest(format!(
                "from ({from}) must not be after to ({to})"
            )));
        }
        if (to - from).num_days() >= MAX_RANGE_DAYS {
            return Err(ApiError::BadRequest(format!(
                "the range from {from} to {to} is longer than {MAX_RANGE_DAYS} days"
            )));
        }
        Ok(DateRange { from, to })
    }

    pub fn first_key(self) -> i32 {
        key(self.from)
    }

    pub fn last_key(self) -> i32 {
        key(self.to)
    }
}

/// The `dim_date` key (yyyymmdd) of a day.
pub fn key(day: NaiveDate) -> i32 {
    use chrono::Datelike;
    day.year() * 10_000 + day.month() as i32 * 100 + day.day() as i32
}

fn date(field: &str, text: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ApiError::BadRequest(format!(
            "{field} must be a calendar date as YYYY-MM-DD, got {text:?}"
        ))
    })
}

/// A `limit` from 1 to `max`, `default` when absent.
pub fn limit(text: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    let Some(text) = text else { return Ok(default) };
    match text.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a whole number from 1 to {max}, got {text:?}"
        ))),
    }
}

/// How the sales report groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Author,
    Genre,
}

impl GroupBy {
    pub fn parse(text: Option<&str>) -> Result<GroupBy, ApiError> {
        match text {
            None | Some("day") => Ok(GroupBy::Day),
            Some("author") => Ok(GroupBy::Author),
            Some("genre") => Ok(GroupBy::Genre),
            Some(other) => Err(ApiError::BadRequest(format!(
                "group_by must be one of day, author, genre; got {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: Option<&str>, to: Option<&str>) -> Result<DateRange, ApiError> {
        DateRange::parse(&RangeQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        })
    }

    #[test]
    fn ranges_are_inclusive_days_with_keys() {
        let r = range(Some("2026-01-31"), Some("2026-02-02")).expect("valid");
        assert_eq!((r.first_key(), r.last_key()), (20260131, 20260202));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        for (from, to, says) in [
            (Some("2026-02-30"), None, "from must be a calendar date"),
            (Some("yesterday"), None, "from must be"),
            (None, Some("2026-1-1x"), "to must be"),
            (Some("2026-03-02"), Some("2026-03-01"), "must not be after"),
            (Some("1990-01-01"), Some("2026-01-01"), "longer than"),
        ] {
            let error = range(from, to).expect_err("invalid");
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn limits_and_groupings_outside_their_sets_are_refused() {
        assert_eq!(limit(None, 10, 100).ok(), Some(10));
        assert_eq!(limit(Some("100"), 10, 100).ok(), Some(100));
        for bad in ["0", "101", "-1", "ten", ""] {
            assert!(limit(Some(bad), 10, 100).is_err(), "{bad}");
        }
        assert_eq!(GroupBy::parse(Some("genre")).ok(), Some(GroupBy::Genre));
        assert!(GroupBy::parse(Some("month")).is_err());
    }
}
