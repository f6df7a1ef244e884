//! The catalog's free-text fields. Each is trimmed, 1..=max characters (Unicode scalar values, the same
//! unit as PostgreSQL's `char_length`, so the CHECK constraints agree), and free of control characters —
//! which also keeps NUL out, a byte PostgreSQL `text` cannot store.

/// Trims `raw` and checks it against `max`; the error completes "<field> …".
pub fn bounded(raw: &str, max: usize) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let length = text.chars().count();
    if length > max {
        return Err(format!("must be at most {max} characters, got {length}"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(text.to_owned())
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, String> {
                bounded(raw, Self::MAX_CHARS).map($name)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

bounded_text!(
    /// A book's title, 1–300 characters.
    Title,
    300
);
bounded_text!(
    /// A book's author (or authors, as one line), 1–200 characters.
    Author,
    200
);
bounded_text!(
    /// A genre label, 1–64 characters; compared case-insensitively when filtering.
    Genre,
    64
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(Title::parse("  Dune \n").map(|t| t.0), Ok("Dune".into()));
    }

    #[test]
    fn empty_blank_and_control_characters_are_refused() {
        for bad in ["", "   ", "\t\n", "Du\u{0}ne", "Du\u{7}ne"] {
            assert!(Genre::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(Genre::parse(&"é".repeat(64)).is_ok());
        assert!(Genre::parse(&"é".repeat(65)).is_err());
        assert!(Title::parse(&"x".repeat(300)).is_ok());
        assert!(Author::parse(&"x".repeat(201)).is_err());
    }

    proptest! {
        #[test]
        fn a_parsed_text_is_trimmed_and_within_bounds(raw in "\\PC{0,80}") {
            if let Ok(genre) = Genre::parse(&raw) {
                let text = genre.as_str();
                prop_assert_eq!(text, text.trim());
                prop_assert!((1..=64).contains(&text.chars().count()));
                prop_assert!(!text.contains('\0'));
            }
        }
    }
}
