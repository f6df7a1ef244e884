//! Consul's durations: Go's `time.ParseDuration` grammar ("10s", "500ms", "1m", "1h30m", "1.5h"), or a
//! JSON number of nanoseconds (how Go encodes `time.Duration`). Every Consul client writes check TTLs,
//! intervals and `?wait=` this way, so a drop-in registry has to read the same grammar.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration as it arrives in a Consul JSON body, parsed later so a bad value becomes a 400 naming the
/// field rather than a generic decode error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// "10s", "1h30m", …
    Text(String),
    /// Nanoseconds, as Go's encoder writes a `time.Duration`.
    Nanos(u64),
    /// Anything else (a bool, a negative number…); rejected by [`RawDuration::parse`].
    Other(serde_json::Value),
}

impl RawDuration {
    /// Whole seconds written the way Consul prints them, e.g. `10s`.
    pub fn seconds(seconds: u64) -> Self {
        RawDuration::Text(format!("{seconds}s"))
    }

    pub fn parse(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Text(text) => parse(text),
            RawDuration::Nanos(nanos) => Ok(Duration::from_nanos(*nanos)),
            RawDuration::Other(value) => Err(format!(
                "{value} is not a duration; write a string like \"10s\", \"500ms\" or \"1h30m\""
            )),
        }
    }
}

/// Parses a Go duration string. Negative durations are refused: nothing here has a use for them.
pub fn parse(input: &str) -> Result<Duration, String> {
    let invalid = || format!("{input:?} is not a duration like \"10s\", \"500ms\" or \"1h30m\"");
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.starts_with('-') {
        return Err(format!(
            "{input:?} is negative; durations must be at least 0"
        ));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "{input:?} is missing a unit (ns, us, ms, s, m or h), e.g. \"10s\""
                ));
            }
            other => {
                return Err(format!(
                    "{input:?} has an unknown unit {other:?}; use ns, us, ms, s, m or h"
                ));
            }
        };
        total = total
            .checked_add(nanos_of(number, per_unit).ok_or_else(invalid)?)
            .ok_or_else(invalid)?;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| format!("{input:?} is too long"))
}

/// `number` (digits, optionally with a fraction) times `per_unit` nanoseconds; `None` if malformed.
fn nanos_of(number: &str, per_unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Digits past nanosecond precision cannot change the result; drop them to stay in range.
    let fraction = &fraction[..fraction.len().min(18)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
        fraction.parse::<u128>().ok()? * per_unit / scale
    };
    whole.checked_mul(per_unit)?.checked_add(fraction_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_to_the_same_length() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("10s", ms(10_000)),
            ("500ms", ms(500)),
            ("1m", ms(60_000)),
            ("1h30m", ms(5_400_000)),
            ("1.5h", ms(5_400_000)),
            (".5s", ms(500)),
            ("2m3.25s", ms(123_250)),
            ("0", Duration::ZERO),
            ("+3s", ms(3_000)),
            ("750us", Duration::from_micros(750)),
            ("42ns", Duration::from_nanos(42)),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a duration"),
            ("ten seconds", "not a duration like \"10s\""),
            ("10", "missing a unit"),
            ("10x", "unknown unit"),
            ("s", "not a duration"),
            ("1..5s", "not a duration"),
            ("-1s", "negative"),
            ("1s2", "missing a unit"),
            ("99999999999h", "too long"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn json_durations_may_be_strings_or_nanoseconds() {
        let parsed = |json: &str| serde_json::from_str::<RawDuration>(json).map(|raw| raw.parse());
        assert_eq!(parsed("\"1m\"").ok(), Some(Ok(Duration::from_secs(60))));
        assert_eq!(parsed("2000000000").ok(), Some(Ok(Duration::from_secs(2))));
        assert!(matches!(parsed("true"), Ok(Err(_))));
        assert_eq!(
            RawDuration::seconds(10).parse(),
            Ok(Duration::from_secs(10))
        );
    }
}
