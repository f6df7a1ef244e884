//! A customer's rating of a book, as `POST /api/books/{id}/ratings` accepts it.

use platform::FieldError;
use serde::Deserialize;

/// The longest review text, in characters (the table's CHECK says the same).
pub const MAX_TEXT_CHARS: usize = 2000;

/// The body as sent; checked by [`NewRating::parse`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingBody {
    pub stars: i64,
    #[serde(default)]
    pub text: Option<String>,
}

/// A valid rating: 1 to 5 stars, an optional trimmed text without control characters (line breaks
/// allowed), blank meaning none.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRating {
    stars: i16,
    text: Option<String>,
}

impl NewRating {
    pub fn parse(body: &RatingBody) -> Result<NewRating, Vec<FieldError>> {
        let mut errors = Vec::new();
        let stars = match i16::try_from(body.stars) {
            Ok(stars @ 1..=5) => stars,
            _ => {
                errors.push(FieldError::new(
                    "stars",
                    format!("must be a whole number from 1 to 5, got {}", body.stars),
                ));
                0
            }
        };
        let text = body
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let Some(text) = text {
            let length = text.chars().count();
            if length > MAX_TEXT_CHARS {
                errors.push(FieldError::new(
                    "text",
                    format!("must be at most {MAX_TEXT_CHARS} characters, got {length}"),
                ));
            }
            if text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                errors.push(FieldError::new(
                    "text",
                    "must not contain control characters other than line breaks and tabs",
                ));
            }
        }
        if errors.is_empty() {
            Ok(NewRating {
                stars,
                text: text.map(str::to_owned),
            })
        } else {
            Err(errors)
        }
    }

    pub fn stars(&self) -> i16 {
        self.stars
    }

    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(stars: i64, text: Option<&str>) -> RatingBody {
        RatingBody {
            stars,
            text: text.map(str::to_owned),
        }
    }

    #[test]
    fn one_to_five_stars_with_or_without_text_are_valid() {
        for stars in 1..=5 {
            assert_eq!(
                NewRating::parse(&body(stars, None)).map(|r| r.stars()),
                Ok(stars as i16)
            );
        }
        let rating = NewRating::parse(&body(4, Some("  Loved it\nreally  "))).expect("valid");
        assert_eq!(rating.text(), Some("Loved it\nreally"));
        assert_eq!(
            NewRating::parse(&body(4, Some("   ")))
                .expect("valid")
                .text(),
            None
        );
    }

    #[test]
    fn out_of_range_stars_and_bad_text_are_named() {
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        let errors = NewRating::parse(&body(6, Some(&long))).expect_err("invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["stars", "text"]);
        assert!(NewRating::parse(&body(0, None)).is_err());
        assert!(NewRating::parse(&body(i64::MAX, None)).is_err());
        assert!(NewRating::parse(&body(3, Some("a\u{0}b"))).is_err());
    }

    proptest! {
        #[test]
        fn any_input_parses_or_names_its_fields(stars in any::<i64>(), text in "\\PC{0,50}") {
            match NewRating::parse(&body(stars, Some(&text))) {
                Ok(r) => prop_assert!((1..=5).contains(&r.stars())),
                Err(errors) => prop_assert!(!errors.is_empty()),
            }
        }
    }
}
