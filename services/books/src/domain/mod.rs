//! The catalog's types. Parse, don't validate: each type has private fields and a `parse` constructor,
//! so a value that exists is valid, and handlers never re-check what the type already guarantees.

pub mod amount;
pub mod book;
pub mod filter;
pub mod isbn;
pub mod new_book;
pub mod rating;
pub mod text;

pub use book::{Book, BookRow, Rating};
pub use filter::BookFilter;
pub use isbn::Isbn;
pub use new_book::{BookBody, NewBook};
pub use rating::{NewRating, RatingBody};
