//! A stored book as the database returns it, and as the API shows it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The columns every statement returns, in one place so each maps onto [`BookRow`]: those of a
/// book `b` and of its rating totals `t` (`book_rating_totals`, joined by [`with_totals`]; a book
/// without a totals row reads as never rated). The book's `updated_at` is the later of the row's
/// and its totals' (when a persisted rating last moved them), as when the totals lived on `books`.
/// Macros because sqlx wants `&'static str` SQL, which `concat!` can build from literals only.
macro_rules! book_columns {
    () => {
        "b.id, b.isbn, b.title, b.author, b.genre, b.price_cents, b.stock, b.version,
         coalesce(t.rating_count, 0) AS rating_count, coalesce(t.rating_sum, 0) AS rating_sum,
         greatest(b.updated_at, t.updated_at) AS updated_at"
    };
}
pub(crate) use book_columns;

/// Joins the totals `t` of the books `b` (a table, or a `WITH b AS (… RETURNING *)`).
macro_rules! with_totals {
    () => {
        " LEFT JOIN book_rating_totals t ON t.book_id = b.id "
    };
}
pub(crate) use with_totals;

/// One book with its rating totals (never a deleted one: every read filters on `deleted_at IS NULL`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BookRow {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub genre: String,
    pub price_cents: i64,
    pub stock: i32,
    pub version: i64,
    pub rating_count: i64,
    pub rating_sum: i64,
    pub updated_at: DateTime<Utc>,
}

/// The API's `Book`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub id: Uuid,
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub genre: String,
    pub price_cents: i64,
    pub stock: i32,
    pub version: i64,
    pub rating: Rating,
    pub updated_at: DateTime<Utc>,
}

/// Stars so far; `average` is `null` until the first rating so clients cannot mistake "none" for 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    pub average: Option<f64>,
    pub count: i64,
}

impl Rating {
    /// The mean of `sum / count`, rounded to two decimals.
    pub fn from_totals(sum: i64, count: i64) -> Rating {
        let average = (count > 0).then(|| {
            let mean = sum as f64 / count as f64;
            (mean * 100.0).round() / 100.0
        });
        Rating { average, count }
    }
}

impl From<BookRow> for Book {
    fn from(row: BookRow) -> Book {
        Book {
            id: row.id,
            isbn: row.isbn,
            title: row.title,
            author: row.author,
            genre: row.genre,
            price_cents: row.price_cents,
            stock: row.stock,
            version: row.version,
            rating: Rating::from_totals(row.rating_sum, row.rating_count),
            updated_at: row.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ratings_means_no_average() {
        assert_eq!(Rating::from_totals(0, 0).average, None);
    }

    #[test]
    fn the_average_is_rounded_to_two_decimals() {
        assert_eq!(Rating::from_totals(10, 3).average, Some(3.33));
        assert_eq!(Rating::from_totals(14, 3).average, Some(4.67));
        assert_eq!(Rating::from_totals(5, 1).average, Some(5.0));
    }
}
