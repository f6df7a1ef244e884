//! The gid of one branch of a global transaction: `<prefix>:<gxid>:<branch>`.
//!
//! A gid is spliced into `PREPARE TRANSACTION '…'`, `COMMIT PREPARED '…'` and `ROLLBACK PREPARED '…'`,
//! which take no bind parameters, so a [`Gid`] can only be built from parts that are checked
//! character by character: the prefix is `[a-z0-9]{1,16}`, the gxid is a UUID written in its
//! canonical lowercase hyphenated form, the branch is `[a-z0-9_]{1,32}`. The whole text is therefore
//! made of `[a-z0-9_:-]` only, at most [`MAX_GID_LEN`] bytes: no quote, backslash, space or
//! control character can ever reach the SQL text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest prefix (`gid_prefix` of a coordinator cluster).
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest branch name.
pub const MAX_BRANCH_LEN: usize = 32;
/// Longest gid: prefix, `:`, 36-character UUID, `:`, branch. PostgreSQL allows 199 bytes.
pub const MAX_GID_LEN: usize = MAX_PREFIX_LEN + 1 + 36 + 1 + MAX_BRANCH_LEN;

/// A validated `<prefix>:<gxid>:<branch>`. Serializes as its text; deserializing validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gid {
    /// The whole gid, `prefix:gxid:branch`.
    text: String,
    gxid: Uuid,
    /// Byte length of the prefix (the first `:` is right after it).
    prefix_len: usize,
}

/// Why a text is not a gid. The messages describe the expected shape and never echo the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GidError {
    #[error("a gid is at most {MAX_GID_LEN} characters")]
    TooLong,
    #[error("a gid is `<prefix>:<uuid>:<branch>` (three parts separated by `:`)")]
    Shape,
    #[error("the prefix of a gid must be 1 to {MAX_PREFIX_LEN} characters out of a-z and 0-9")]
    Prefix,
    #[error("the middle of a gid must be a UUID in lowercase hyphenated form")]
    Gxid,
    #[error("the branch of a gid must be 1 to {MAX_BRANCH_LEN} characters out of a-z, 0-9 and _")]
    Branch,
}

/// Whether `prefix` is a valid gid prefix: `[a-z0-9]{1,16}`.
pub fn is_valid_prefix(prefix: &str) -> bool {
    (1..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `branch` is a valid branch name: `[a-z0-9_]{1,32}`.
pub fn is_valid_branch(branch: &str) -> bool {
    (1..=MAX_BRANCH_LEN).contains(&branch.len())
        && branch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Gid {
    /// The gid of `branch` of the global transaction `gxid` under `prefix`.
    pub fn new(prefix: &str, gxid: Uuid, branch: &str) -> Result<Gid, GidError> {
        if !is_valid_prefix(prefix) {
            return Err(GidError::Prefix);
        }
        if !is_valid_branch(branch) {
            return Err(GidError::Branch);
        }
        Ok(Gid {
            text: format!("{prefix}:{}:{branch}", gxid.hyphenated()),
            gxid,
            prefix_len: prefix.len(),
        })
    }

    /// Parses and validates a gid's text; accepts exactly what [`Gid::new`] produces.
    pub fn parse(text: &str) -> Result<Gid, GidError> {
        if text.len() > MAX_GID_LEN {
            return Err(GidError::TooLong);
        }
        let mut parts = text.split(':');
        let (Some(prefix), Some(gxid), Some(branch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(GidError::Shape);
        };
        let uuid = Uuid::try_parse(gxid).map_err(|_| GidError::Gxid)?;
        // `try_parse` also accepts upper case, braces, `urn:` and the simple form; only the
        // canonical text is a gid, so that one transaction has exactly one gid per branch.
        let mut canonical = Uuid::encode_buffer();
        if uuid.hyphenated().encode_lower(&mut canonical) != gxid {
            return Err(GidError::Gxid);
        }
        Gid::new(prefix, uuid, branch)
    }

    /// The coordinator cluster's prefix.
    pub fn prefix(&self) -> &str {
        &self.text[..self.prefix_len]
    }

    /// The global transaction's id.
    pub fn gxid(&self) -> Uuid {
        self.gxid
    }

    /// The branch name, which selects the participant's [`Branch`](super::Branch).
    pub fn branch(&self) -> &str {
        // prefix, ':', 36-character UUID, ':'
        &self.text[self.prefix_len + 38..]
    }

    /// The whole gid.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Gid {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl FromStr for Gid {
    type Err = GidError;

    fn from_str(text: &str) -> Result<Gid, GidError> {
        Gid::parse(text)
    }
}

impl TryFrom<String> for Gid {
    type Error = GidError;

    fn try_from(text: String) -> Result<Gid, GidError> {
        Gid::parse(&text)
    }
}

impl From<Gid> for String {
    fn from(gid: Gid) -> String {
        gid.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GXID: &str = "0192f3c4-5a6b-7c8d-9eaf-0123456789ab";

    #[test]
    fn a_gid_has_three_checked_parts() {
        let gid = Gid::parse(&format!("bkc:{GXID}:reserve")).expect("valid");
        assert_eq!(gid.prefix(), "bkc");
        assert_eq!(gid.gxid().to_string(), GXID);
        assert_eq!(gid.branch(), "reserve");
        assert_eq!(gid.to_string(), format!("bkc:{GXID}:reserve"));
        let built = Gid::new("bkc", gid.gxid(), "reserve").expect("valid");
        assert_eq!(built, gid);
        let json = serde_json::to_string(&gid).expect("serialize");
        assert_eq!(json, format!("\"bkc:{GXID}:reserve\""));
        assert_eq!(
            serde_json::from_str::<Gid>(&json).expect("deserialize"),
            gid
        );
    }

    #[test]
    fn every_other_shape_is_refused() {
        let upper = GXID.to_uppercase();
        let simple = GXID.replace('-', "");
        for (text, expected) in [
            (String::new(), GidError::Shape),
            ("bkc".to_string(), GidError::Shape),
            (format!("bkc:{GXID}"), GidError::Shape),
            (format!("bkc:{GXID}:reserve:x"), GidError::Shape),
            (format!(":{GXID}:reserve"), GidError::Prefix),
            (format!("BKC:{GXID}:reserve"), GidError::Prefix),
            (format!("b_c:{GXID}:reserve"), GidError::Prefix),
            (
                format!("abcdefghijklmnopq:{GXID}:reserve"),
                GidError::Prefix,
            ),
            (format!("bkc:{upper}:reserve"), GidError::Gxid),
            (format!("bkc:{simple}:reserve"), GidError::Gxid),
            (format!("bkc:{{{GXID}}}:reserve"), GidError::Gxid),
            ("bkc:not-a-uuid:reserve".to_string(), GidError::Gxid),
            (format!("bkc:{GXID}:"), GidError::Branch),
            (format!("bkc:{GXID}:Reserve"), GidError::Branch),
            (format!("bkc:{GXID}:re-serve"), GidError::Branch),
            (format!("bkc:{GXID}:{}", "a".repeat(33)), GidError::Branch),
            (
                format!("bkc:{GXID}:x'; DROP TABLE tx_barrier; --"),
                GidError::Branch,
            ),
            (format!("bkc:{GXID}:x';--"), GidError::Branch),
            (format!("bkc:{GXID}:x\\"), GidError::Branch),
            (format!("bkc:{GXID}:x\0"), GidError::Branch),
            (format!("bkc:{GXID}:x "), GidError::Branch),
            (format!("bkc:{GXID}:é"), GidError::Branch),
            ("x".repeat(MAX_GID_LEN + 1), GidError::TooLong),
        ] {
            assert_eq!(Gid::parse(&text), Err(expected.clone()), "{text:?}");
        }
        assert_eq!(
            Gid::new("bkc", Uuid::nil(), "x'"),
            Err(GidError::Branch),
            "new checks like parse"
        );
        assert_eq!(Gid::new("bk'", Uuid::nil(), "x"), Err(GidError::Prefix));
        assert!(serde_json::from_str::<Gid>("\"bkc:x:y\"").is_err());
    }

    #[test]
    fn the_longest_gid_fits_in_postgres_gid_limit() {
        let gid =
            Gid::new(&"a".repeat(16), Uuid::from_u128(u128::MAX), &"b".repeat(32)).expect("valid");
        assert_eq!(gid.as_str().len(), MAX_GID_LEN);
        const { assert!(MAX_GID_LEN < 200, "PostgreSQL gids are at most 199 bytes") };
        assert_eq!(Gid::parse(gid.as_str()), Ok(gid));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the input, a gid that parses is the input itself and contains only characters
        /// that are inert inside a single-quoted SQL literal.
        #[test]
        fn nothing_that_parses_can_break_out_of_a_sql_literal(text in any::<String>()) {
            if let Ok(gid) = Gid::parse(&text) {
                prop_assert_eq!(gid.as_str(), text.as_str());
                prop_assert!(gid.as_str().bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit() || b == b'_' || b == b':' || b == b'-'));
            }
        }

        /// The same near valid gids, where random edits are likelier to produce something that parses.
        #[test]
        fn edits_of_valid_gids_parse_only_to_themselves(
            prefix in "[a-z0-9]{1,16}",
            gxid in any::<u128>(),
            branch in "[a-z0-9_]{1,32}",
            at in any::<prop::sample::Index>(),
            insert in any::<char>(),
        ) {
            let valid = format!("{prefix}:{}:{branch}", Uuid::from_u128(gxid));
            let position = valid
                .char_indices()
                .map(|(i, _)| i)
                .nth(at.index(valid.chars().count()))
                .unwrap_or(0);
            let mut edited = valid.clone();
            edited.insert(position, insert);
            if let Ok(gid) = Gid::parse(&edited) {
                prop_assert_eq!(gid.as_str(), edited.as_str());
                prop_assert!(insert.is_ascii_lowercase() || insert.is_ascii_digit()
                    || insert == '_');
            }
            for quote in ["'", "\\", "\"", ";", " ", "\n", "\0"] {
                let mut broken = valid.clone();
                broken.insert_str(position, quote);
                prop_assert!(Gid::parse(&broken).is_err(), "{:?}", broken);
            }
        }

        #[test]
        fn valid_parts_round_trip(
            prefix in "[a-z0-9]{1,16}",
            gxid in any::<u128>(),
            branch in "[a-z0-9_]{1,32}",
        ) {
            let gxid = Uuid::from_u128(gxid);
            let gid = Gid::new(&prefix, gxid, &branch).expect("valid parts");
            prop_assert_eq!(gid.prefix(), prefix.as_str());
            prop_assert_eq!(gid.gxid(), gxid);
            prop_assert_eq!(gid.branch(), branch.as_str());
            prop_assert_eq!(Gid::parse(gid.as_str()), Ok(gid.clone()));
        }
    }
}
