//! The body of `POST /api/books` and `PUT /api/books/{id}`, and the parsed book it must become.
//! Parsing checks every field and reports all invalid ones at once, so a client fixes its request in
//! one round trip.

use platform::FieldError;
use serde::Deserialize;
use serde_json::Number;

use super::amount::{PriceCents, Stock};
use super::isbn::Isbn;
use super::text::{Author, Genre, Title};

/// The JSON as sent. Unknown fields are refused, so a typo (`"prise_cents"`) is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookBody {
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub genre: String,
    pub price_cents: Number,
    pub stock: Number,
}

/// A book's writable fields, all valid. Only [`NewBook::parse`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBook {
    isbn: Isbn,
    title: Title,
    author: Author,
    genre: Genre,
    price_cents: PriceCents,
    stock: Stock,
}

impl NewBook {
    pub fn parse(body: &BookBody) -> Result<NewBook, Vec<FieldError>> {
        let mut errors = Vec::new();
        let isbn = field(&mut errors, "isbn", Isbn::parse(&body.isbn));
        let title = field(&mut errors, "title", Title::parse(&body.title));
        let author = field(&mut errors, "author", Author::parse(&body.author));
        let genre = field(&mut errors, "genre", Genre::parse(&body.genre));
        let price_cents = field(
            &mut errors,
            "price_cents",
            PriceCents::parse(&body.price_cents),
        );
        let stock = field(&mut errors, "stock", Stock::parse(&body.stock));
        match (isbn, title, author, genre, price_cents, stock) {
            (
                Some(isbn),
                Some(title),
                Some(author),
                Some(genre),
                Some(price_cents),
                Some(stock),
            ) => Ok(NewBook {
                isbn,
                title,
                author,
                genre,
                price_cents,
                stock,
            }),
            _ => Err(errors),
        }
    }

    pub fn isbn(&self) -> &Isbn {
        &self.isbn
    }
    pub fn title(&self) -> &str {
        self.title.as_str()
    }
    pub fn author(&self) -> &str {
        self.author.as_str()
    }
    pub fn genre(&self) -> &str {
        self.genre.as_str()
    }
    pub fn price_cents(&self) -> i64 {
        self.price_cents.get()
    }
    pub fn stock(&self) -> i32 {
        self.stock.get()
    }
}

/// Keeps the value, or records why `name` is invalid.
fn field<T, E: ToString>(
    errors: &mut Vec<FieldError>,
    name: &str,
    result: Result<T, E>,
) -> Option<T> {
    result
        .map_err(|e| errors.push(FieldError::new(name, e.to_string())))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn valid() -> Value {
        json!({
            "isbn": "978-0-306-40615-7", "title": " Dune ", "author": "Frank Herbert",
            "genre": "Science Fiction", "price_cents": 1999, "stock": 3
        })
    }

    fn parse(value: Value) -> Result<NewBook, Vec<FieldError>> {
        let body: BookBody = serde_json::from_value(value)
            .map_err(|e| vec![FieldError::new("body", e.to_string())])?;
        NewBook::parse(&body)
    }

    #[test]
    fn a_valid_body_parses_and_is_normalised() {
        let book = parse(valid()).expect("valid");
        assert_eq!(book.isbn().as_str(), "9780306406157");
        assert_eq!(book.title(), "Dune");
        assert_eq!((book.price_cents(), book.stock()), (1999, 3));
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let body = json!({
            "isbn": "978-0-306-40615-8", "title": "", "author": "x".repeat(201),
            "genre": "   ", "price_cents": -1, "stock": 1e30
        });
        let errors = parse(body).expect_err("all invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["isbn", "title", "author", "genre", "price_cents", "stock"]
        );
    }

    #[test]
    fn unknown_missing_and_mistyped_fields_fail_deserialisation() {
        let mut unknown = valid();
        unknown["prise_cents"] = json!(1);
        let mut missing = valid();
        missing.as_object_mut().map(|o| o.remove("stock"));
        let mut mistyped = valid();
        mistyped["price_cents"] = json!("1999");
        for body in [unknown, missing, mistyped] {
            assert!(serde_json::from_value::<BookBody>(body).is_err());
        }
    }

    proptest! {
        #[test]
        fn a_price_parses_exactly_when_in_range(price in any::<i64>()) {
            let mut body = valid();
            body["price_cents"] = json!(price);
            let result = parse(body);
            prop_assert_eq!(result.is_ok(), (0..=100_000_000).contains(&price));
            if let Err(errors) = result {
                prop_assert_eq!(errors.len(), 1);
                prop_assert_eq!(&errors[0].field, "price_cents");
            }
        }

        #[test]
        fn arbitrary_strings_never_panic_and_valid_ones_round_trip(
            title in "\\PC{0,320}", author in "\\PC{0,10}", genre in "\\PC{0,10}",
        ) {
            let mut body = valid();
            body["title"] = json!(title);
            body["author"] = json!(author);
            body["genre"] = json!(genre);
            if let Ok(book) = parse(body) {
                prop_assert_eq!(book.title(), title.trim());
                prop_assert_eq!(book.author(), author.trim());
                prop_assert_eq!(book.genre(), genre.trim());
            }
        }

        #[test]
        fn any_json_body_either_parses_or_names_its_fields(body in arbitrary_json()) {
            let parsed = serde_json::from_value::<BookBody>(body).map(|b| NewBook::parse(&b));
            if let Ok(Err(errors)) = parsed {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|e| !e.message.is_empty()));
            }
        }
    }

    /// Objects with the right keys and values of any JSON type.
    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            Just(json!("9780306406157")),
        ];
        proptest::collection::vec(leaf, 6).prop_map(|values| {
            let keys = ["isbn", "title", "author", "genre", "price_cents", "stock"];
            Value::Object(keys.iter().map(|k| k.to_string()).zip(values).collect())
        })
    }
}
