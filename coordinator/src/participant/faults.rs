//! Fault injection for the participant (tests and chaos runs only; off by default).
//!
//! The `[participant]` section of books' and orders' config:
//!
//! - `crash_after = "prepare"` (`BOOKSTORE_PARTICIPANT__CRASH_AFTER`): `std::process::abort()` right
//!   after that operation's local `COMMIT` (or `PREPARE TRANSACTION`, `COMMIT PREPARED`,
//!   `ROLLBACK PREPARED`) succeeded and before anything is answered: the participant crashes at
//!   exactly the point where the work is durable but the caller does not know it.
//! - `delay_after = "prepare:1500"` (`BOOKSTORE_PARTICIPANT__DELAY_AFTER`, also read as
//!   `BOOKSTORE_PARTICIPANT__DELAY_AFTER_MS`, the name docs/TRANSACTIONS.md uses): sleep that many
//!   milliseconds at the same point, then answer: a caller's timeout where the branch did apply.
//!
//! Both fire only when the operation really did its work, not when it answers a duplicate from the
//! barrier (so a retry after the fault gets its answer at once). An empty value, `none` or `off`
//! means off.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A participant operation, as named in fault settings and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Prepare,
    Commit,
    Abort,
    Action,
    Compensate,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Prepare,
        Op::Commit,
        Op::Abort,
        Op::Action,
        Op::Compensate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Prepare => "prepare",
            Op::Commit => "commit",
            Op::Abort => "abort",
            Op::Action => "action",
            Op::Compensate => "compensate",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fault setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    #[error(
        "unknown participant operation {0:?}: expected prepare, commit, abort, action or compensate"
    )]
    UnknownOp(String),
    #[error("a participant delay is `<op>:<milliseconds>`, for example `prepare:1500`; got {0:?}")]
    Delay(String),
}

impl FromStr for Op {
    type Err = FaultParseError;

    fn from_str(text: &str) -> Result<Op, FaultParseError> {
        let text = text.trim();
        Op::ALL
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| FaultParseError::UnknownOp(text.to_owned()))
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Op, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Sleep `ms` milliseconds after `op` applied, before answering. Written `<op>:<ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayAfter {
    pub op: Op,
    pub ms: u64,
}

impl DelayAfter {
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.ms)
    }
}

impl FromStr for DelayAfter {
    type Err = FaultParseError;

    fn from_str(text: &str) -> Result<DelayAfter, FaultParseError> {
        let (op, ms) = text
            .split_once(':')
            .ok_or_else(|| FaultParseError::Delay(text.to_owned()))?;
        Ok(DelayAfter {
            op: op.parse()?,
            ms: ms
                .trim()
                .parse()
                .map_err(|_| FaultParseError::Delay(text.to_owned()))?,
        })
    }
}

impl fmt::Display for DelayAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.op, self.ms)
    }
}

impl Serialize for DelayAfter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DelayAfter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DelayAfter, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[participant]` config section: fault injection, off by default. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParticipantFaults {
    /// Abort the process right after this operation's local commit / `PREPARE TRANSACTION`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "off_or_parse"
    )]
    pub crash_after: Option<Op>,
    /// Answer late (`<op>:<ms>`) after this operation applied.
    #[serde(
        alias = "delay_after_ms",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "off_or_parse"
    )]
    pub delay_after: Option<DelayAfter>,
}

/// `""`, `none` and `off` are "no fault"; anything else must parse.
fn off_or_parse<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = Option::<String>::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("" | "none" | "off") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl ParticipantFaults {
    pub fn is_active(&self) -> bool {
        self.crash_after.is_some() || self.delay_after.is_some()
    }

    /// Called right after `op` made its work durable: crashes or sleeps when configured to.
    pub(crate) async fn after(&self, op: Op) {
        if self.crash_after == Some(op) {
            tracing::error!(%op, "fault injection: the participant crashes right after {op}");
            // The log writer may be asynchronous; say it on stderr too before dying.
            eprintln!("fault injection: participant crash after {op} (crash_after = {op})");
            std::process::abort();
        }
        if let Some(delay) = self.delay_after.filter(|d| d.op == op) {
            tracing::warn!(%op, ms = delay.ms, "fault injection: answering {op} late");
            tokio::time::sleep(delay.duration()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_off_by_default_and_parse_from_strings() {
        assert!(!ParticipantFaults::default().is_active());
        let faults: ParticipantFaults = serde_json::from_value(serde_json::json!({
            "crash_after": "Prepare",
            "delay_after": "commit:1500",
        }))
        .expect("valid");
        assert_eq!(faults.crash_after, Some(Op::Prepare));
        assert_eq!(
            faults.delay_after,
            Some(DelayAfter {
                op: Op::Commit,
                ms: 1500
            })
        );
        assert!(faults.is_active());
        let alias: ParticipantFaults =
            serde_json::from_value(serde_json::json!({"delay_after_ms": "action:20"}))
                .expect("valid");
        assert_eq!(alias.delay_after.map(|d| d.op), Some(Op::Action));
        let off: ParticipantFaults =
            serde_json::from_value(serde_json::json!({"crash_after": "", "delay_after": "off"}))
                .expect("valid");
        assert!(!off.is_active());
        for bad in [
            serde_json::json!({"crash_after": "later"}),
            serde_json::json!({"delay_after": "prepare"}),
            serde_json::json!({"delay_after": "prepare:soon"}),
            serde_json::json!({"delay_after": "nap:10"}),
        ] {
            assert!(
                serde_json::from_value::<ParticipantFaults>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn faults_serialize_back_to_what_they_parse_from() {
        let faults = ParticipantFaults {
            crash_after: Some(Op::Compensate),
            delay_after: Some(DelayAfter {
                op: Op::Abort,
                ms: 7,
            }),
        };
        let json = serde_json::to_value(&faults).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"crash_after": "compensate", "delay_after": "abort:7"})
        );
        assert_eq!(
            serde_json::from_value::<ParticipantFaults>(json).expect("parse"),
            faults
        );
        assert_eq!(
            serde_json::to_value(ParticipantFaults::default()).expect("serialize"),
            serde_json::json!({})
        );
    }

    /// A service's config with the `[participant]` section, loaded as the services load theirs.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct ServiceConfig {
        participant: ParticipantFaults,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn faults_are_set_through_the_environment() {
        figment::Jail::expect_with(|jail| {
            let load = || {
                platform::config::load::<ServiceConfig>(None)
                    .map(|c| c.participant)
                    .map_err(|e| figment::Error::from(e.to_string()))
            };
            assert_eq!(load()?, ParticipantFaults::default());
            jail.set_env("BOOKSTORE_PARTICIPANT__CRASH_AFTER", "prepare");
            jail.set_env("BOOKSTORE_PARTICIPANT__DELAY_AFTER", "prepare:1500");
            let faults = load()?;
            assert_eq!(faults.crash_after, Some(Op::Prepare));
            assert_eq!(
                faults.delay_after,
                Some(DelayAfter {
                    op: Op::Prepare,
                    ms: 1500
                })
            );
            jail.clear_env();
            jail.set_env("BOOKSTORE_PARTICIPANT__DELAY_AFTER_MS", "commit:20");
            assert_eq!(
                load()?.delay_after,
                Some(DelayAfter {
                    op: Op::Commit,
                    ms: 20
                })
            );
            jail.set_env("BOOKSTORE_PARTICIPANT__CRASH_AFTER", "sometimes");
            assert!(
                load().is_err(),
                "a typo must not silently turn the fault off"
            );
            Ok(())
        });
    }

    #[tokio::test]
    async fn a_delay_fires_only_after_its_operation() {
        let faults = ParticipantFaults {
            delay_after: Some(DelayAfter {
                op: Op::Prepare,
                ms: 300,
            }),
            ..ParticipantFaults::default()
        };
        let start = std::time::Instant::now();
        faults.after(Op::Commit).await;
        assert!(start.elapsed() < Duration::from_millis(300));
        faults.after(Op::Prepare).await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
