//! A customer's email address, parsed once at the boundary.
//!
//! We accept the addresses people actually use, not everything RFC 5322 allows: the local part is
//! dot-separated "atext" (letters, digits and ``!#$%&'*+-/=?^_`{|}~``), the domain is at least two
//! LDH labels (letters, digits, hyphens). Addresses are stored lower-cased so that uniqueness and login
//! do not depend on how someone typed their address.

use std::fmt;

/// Longest address SMTP can deliver to (RFC 5321 path limit minus the angle brackets).
const MAX_LEN: usize = 254;
/// Longest local part (RFC 5321).
const MAX_LOCAL_LEN: usize = 64;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A syntactically valid, trimmed, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, checks and lower-cases `input`; the error says what is wrong in words a user understands.
    pub fn parse(input: &str) -> Result<Email, String> {
        let text = input.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.chars().any(char::is_whitespace) {
            return Err("must not contain spaces".into());
        }
        if text.len() > MAX_LEN {
            return Err(format!("must be at most {MAX_LEN} characters"));
        }
        let mut parts = text.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("must contain exactly one @".into());
        };
        check_local(local)?;
        check_domain(domain)?;
        Ok(Email(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_local(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("needs a name before the @".into());
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(format!(
            "the part before the @ must be at most {MAX_LOCAL_LEN} characters"
        ));
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if !local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(atext))
    {
        return Err(
            "the part before the @ may hold letters, digits, dots (not first, last or doubled) \
             and !#$%&'*+-/=?^_`{|}~"
                .into(),
        );
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("needs a domain after the @".into());
    }
    if !domain.contains('.') {
        return Err("the domain must contain a dot, as in example.com".into());
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !domain.split('.').all(label_ok) {
        return Err(format!(
            "the domain must be dot-separated labels of letters, digits and inner hyphens, \
             each at most {MAX_LABEL_LEN} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_addresses_are_accepted_trimmed_and_lower_cased() {
        for (input, stored) in [
            ("ada@example.com", "ada@example.com"),
            ("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"),
            (
                "o'brien+books@mail.example.co.uk",
                "o'brien+books@mail.example.co.uk",
            ),
            ("x@a-b.io", "x@a-b.io"),
        ] {
            assert_eq!(
                Email::parse(input).map(|e| e.to_string()),
                Ok(stored.into())
            );
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let long_total = format!("a@{}.com", "b".repeat(250));
        let long_label = format!("a@{}.com", "b".repeat(64));
        for bad in [
            "",
            "   ",
            "plain",
            "@example.com",
            "ada@",
            "ada@@example.com",
            "a@b@example.com",
            "ada@example",
            "ada @example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@example-.com",
            "ada@example..com",
            "ada@.example.com",
            "ada@example.com.",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ad(a)@example.com",
            "ada@exam_ple.com",
            "adä@example.com",
            "ada@exämple.com",
            "ada\u{0}@example.com",
            &long_local,
            &long_total,
            &long_label,
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn the_limits_themselves_are_accepted() {
        let local = format!("{}@example.com", "a".repeat(64));
        assert!(Email::parse(&local).is_ok());
        let label = "b".repeat(63);
        let total = format!("a@{label}.{label}.{label}.{}.com", "c".repeat(56));
        assert_eq!(total.len(), 254);
        assert!(Email::parse(&total).is_ok());
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?"
    }

    fn address() -> impl Strategy<Value = String> {
        let local = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_+-]{1,10}){0,2}";
        (local, proptest::collection::vec(label(), 2..4))
            .prop_map(|(local, labels)| format!("{local}@{}", labels.join(".")))
    }

    proptest! {
        #[test]
        fn generated_valid_addresses_are_accepted_and_lower_cased(address in address()) {
            let email = Email::parse(&address).map_err(TestCaseError::fail)?;
            prop_assert_eq!(email.as_str(), address.to_ascii_lowercase());
        }

        #[test]
        fn parsing_is_idempotent(address in address()) {
            let once = Email::parse(&address).map_err(TestCaseError::fail)?;
            prop_assert_eq!(Email::parse(once.as_str()), Ok(once));
        }

        #[test]
        fn any_string_with_inner_whitespace_is_rejected(
            left in "\\PC{1,20}", space in "[ \t\n\u{a0}\u{2003}]", right in "\\PC{1,20}",
        ) {
            let input = format!("{}{space}{}", left.trim(), right.trim());
            prop_assume!(!left.trim().is_empty() && !right.trim().is_empty());
            prop_assert!(Email::parse(&input).is_err());
        }

        #[test]
        fn any_string_without_exactly_one_at_sign_is_rejected(input in "\\PC{0,40}") {
            prop_assume!(input.matches('@').count() != 1);
            prop_assert!(Email::parse(&input).is_err());
        }

        #[test]
        fn any_string_never_panics_and_accepted_ones_are_stored_canonically(input in "\\PC{0,80}") {
            if let Ok(email) = Email::parse(&input) {
                prop_assert!(email.as_str().len() <= MAX_LEN);
                prop_assert_eq!(email.as_str(), input.trim().to_ascii_lowercase());
            }
        }
    }
}
