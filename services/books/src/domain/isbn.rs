//! ISBNs. The API accepts ISBN-13 and ISBN-10, with hyphens or spaces anywhere, and always stores the
//! 13-digit form so that the same book written two ways is still one ISBN (and the unique index works).

use std::fmt;

/// A valid ISBN-13 (prefix 978 or 979, correct check digit), as 13 ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Isbn(String);

/// Why a text is not an ISBN; the message completes "isbn …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsbnError {
    #[error("must contain only digits, hyphens and spaces (and a final X in an ISBN-10)")]
    BadCharacter,
    #[error("must have 10 or 13 digits")]
    WrongLength,
    #[error("must start with 978 or 979 when it has 13 digits")]
    WrongPrefix,
    #[error("has a wrong check digit")]
    WrongCheckDigit,
}

/// `X` stands for ten, and only as the check digit of an ISBN-10.
const TEN: u8 = 10;

impl Isbn {
    pub fn parse(raw: &str) -> Result<Isbn, IsbnError> {
        let digits = digits_of(raw)?;
        let x_misplaced = digits
            .iter()
            .enumerate()
            .any(|(i, &d)| d == TEN && !(digits.len() == 10 && i == 9));
        if x_misplaced {
            return Err(IsbnError::BadCharacter);
        }
        match digits.len() {
            13 => from_13(&digits),
            10 => from_10(&digits),
            _ => Err(IsbnError::WrongLength),
        }
    }

    /// The normalised 13 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ISBN-10 form, which exists only for the 978 prefix (clients of old systems still ask for it).
    pub fn to_isbn10(&self) -> Option<String> {
        let body = self.0.strip_prefix("978")?.get(..9)?;
        let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
        let check = isbn10_check_digit(&digits);
        let check = if check == TEN {
            'X'
        } else {
            char::from(b'0' + check)
        };
        Some(format!("{body}{check}"))
    }
}

impl fmt::Display for Isbn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The digit values (X as ten) with separators removed; stops early so a huge input costs nothing.
fn digits_of(raw: &str) -> Result<Vec<u8>, IsbnError> {
    let mut digits = Vec::with_capacity(13);
    for c in raw.trim().chars() {
        match c {
            '-' | ' ' => continue,
            '0'..='9' => digits.push(c as u8 - b'0'),
            'X' | 'x' => digits.push(TEN),
            _ => return Err(IsbnError::BadCharacter),
        }
        if digits.len() > 13 {
            return Err(IsbnError::WrongLength);
        }
    }
    Ok(digits)
}

fn from_13(digits: &[u8]) -> Result<Isbn, IsbnError> {
    if !(digits.starts_with(&[9, 7, 8]) || digits.starts_with(&[9, 7, 9])) {
        return Err(IsbnError::WrongPrefix);
    }
    if ean_check_digit(&digits[..12]) != digits[12] {
        return Err(IsbnError::WrongCheckDigit);
    }
    Ok(Isbn(to_text(digits)))
}

fn from_10(digits: &[u8]) -> Result<Isbn, IsbnError> {
    if isbn10_check_digit(&digits[..9]) != digits[9] {
        return Err(IsbnError::WrongCheckDigit);
    }
    let mut thirteen = vec![9, 7, 8];
    thirteen.extend_from_slice(&digits[..9]);
    thirteen.push(ean_check_digit(&thirteen));
    Ok(Isbn(to_text(&thirteen)))
}

/// The EAN-13 check digit of the first 12 digits: weights 1,3,1,3,… so the total is a multiple of 10.
pub(crate) fn ean_check_digit(first12: &[u8]) -> u8 {
    let sum: u32 = first12
        .iter()
        .enumerate()
        .map(|(i, &d)| u32::from(d) * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// The ISBN-10 check digit of the first 9 digits: weights 10..2 so the total is a multiple of 11.
pub(crate) fn isbn10_check_digit(first9: &[u8]) -> u8 {
    let sum: u32 = first9
        .iter()
        .zip((2..=10).rev())
        .map(|(&d, w)| u32::from(d) * w)
        .sum();
    ((11 - sum % 11) % 11) as u8
}

fn to_text(digits: &[u8]) -> String {
    digits.iter().map(|&d| char::from(b'0' + d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn well_known_isbns_parse_in_every_spelling() {
        for raw in [
            "9780306406157",
            "978-0-306-40615-7",
            "978 0 306 40615 7",
            "0-306-40615-2",
            "0306406152",
            "  978-0306406157 ",
        ] {
            assert_eq!(
                Isbn::parse(raw).map(|i| i.0),
                Ok("9780306406157".into()),
                "{raw}"
            );
        }
    }

    #[test]
    fn an_isbn10_with_x_as_check_digit_converts() {
        let isbn = Isbn::parse("0-8044-2957-X").expect("valid");
        assert_eq!(isbn.as_str(), "9780804429573");
        assert_eq!(isbn.to_isbn10().as_deref(), Some("080442957X"));
        assert_eq!(Isbn::parse("080442957x"), Ok(isbn));
    }

    #[test]
    fn malformed_isbns_say_why() {
        use IsbnError::*;
        for (raw, why) in [
            ("", WrongLength),
            ("978030640615", WrongLength),
            ("97803064061570", WrongLength),
            ("978-0-306-40615-8", WrongCheckDigit),
            ("0306406153", WrongCheckDigit),
            ("1234567890128", WrongPrefix),
            ("97803064061X7", BadCharacter),
            ("X306406152", BadCharacter),
            ("978O306406157", BadCharacter),
            ("978_0306406157", BadCharacter),
        ] {
            assert_eq!(Isbn::parse(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn the_979_prefix_has_no_isbn10() {
        let isbn = Isbn::parse("979-10-90636-07-1").expect("valid");
        assert_eq!(isbn.to_isbn10(), None);
    }

    fn nine_digits() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..10, 9)
    }

    fn with_check10(first9: &[u8]) -> String {
        let check = isbn10_check_digit(first9);
        let check = if check == TEN {
            'X'
        } else {
            char::from(b'0' + check)
        };
        format!("{}{check}", to_text(first9))
    }

    proptest! {
        #[test]
        fn every_isbn10_converts_to_an_isbn13_and_back(first9 in nine_digits()) {
            let ten = with_check10(&first9);
            let isbn = Isbn::parse(&ten).expect("generated ISBN-10 is valid");
            prop_assert_eq!(&isbn.0[..3], "978");
            prop_assert_eq!(&isbn.0[3..12], to_text(&first9));
            prop_assert_eq!(Isbn::parse(&isbn.0), Ok(isbn.clone()));
            prop_assert_eq!(isbn.to_isbn10(), Some(ten));
        }

        #[test]
        fn any_single_digit_change_breaks_an_isbn13(
            first9 in nine_digits(), position in 0usize..13, delta in 1u8..10,
        ) {
            let valid = Isbn::parse(&with_check10(&first9)).expect("valid").0;
            let mut bytes = valid.into_bytes();
            bytes[position] = b'0' + (bytes[position] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).expect("ascii");
            prop_assert!(Isbn::parse(&changed).is_err(), "{} still parses", changed);
        }

        #[test]
        fn any_single_digit_change_breaks_an_isbn10(
            first9 in nine_digits(), position in 0usize..9, delta in 1u8..10,
        ) {
            let mut digits = first9.clone();
            let valid = with_check10(&digits);
            digits[position] = (digits[position] + delta) % 10;
            let changed = format!("{}{}", to_text(&digits), &valid[9..]);
            prop_assert_eq!(Isbn::parse(&changed), Err(IsbnError::WrongCheckDigit));
        }

        #[test]
        fn separators_never_change_the_result(first9 in nine_digits(), cuts in proptest::collection::vec(0usize..10, 0..4)) {
            let ten = with_check10(&first9);
            let mut spelled = ten.clone();
            for cut in cuts.into_iter().rev() {
                spelled.insert(cut.min(spelled.len()), '-');
            }
            prop_assert_eq!(Isbn::parse(&spelled), Isbn::parse(&ten));
        }

        #[test]
        fn arbitrary_text_never_panics(raw in "\\PC{0,40}") {
            let _ = Isbn::parse(&raw);
        }
    }
}
