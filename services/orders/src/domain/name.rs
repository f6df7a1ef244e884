//! A customer's display name.

/// Longest name we keep, in characters (not bytes), after trimming.
pub const MAX_NAME_CHARS: usize = 200;

/// A trimmed name of 1 to [`MAX_NAME_CHARS`] characters without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerName(String);

impl CustomerName {
    pub fn parse(input: &str) -> Result<CustomerName, String> {
        let name = input.trim();
        if name.is_empty() {
            return Err("must not be empty".into());
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(CustomerName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            CustomerName::parse("  Ada Lovelace ").map(|n| n.0),
            Ok("Ada Lovelace".into())
        );
        assert!(
            CustomerName::parse(&"é".repeat(200)).is_ok(),
            "200 characters, 400 bytes"
        );
        for bad in ["", "   ", "\t\n", "Ada\u{7}", &"a".repeat(201)] {
            assert!(CustomerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_what_the_database_accepts(input in "\\PC{0,220}") {
            if let Ok(name) = CustomerName::parse(&input) {
                let count = name.as_str().chars().count();
                prop_assert!((1..=MAX_NAME_CHARS).contains(&count));
                prop_assert_eq!(name.as_str(), name.as_str().trim());
            }
        }
    }
}
