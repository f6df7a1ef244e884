//! The filters of `GET /api/books`: `author` and `genre` (exact, case-insensitive, trimmed) and `q`, a
//! text search over title and author.
//!
//! Search runs two queries against the generated `search` tsvector and takes either match:
//! - `websearch_to_tsquery('simple', q)`: whole words, with the syntax people type ("quoted phrase",
//!   `or`, `-excluded`), and it never fails on odd input;
//! - a prefix query built here (`harr:* & pot:*`), so a title is found while it is still being typed.
//!   Only letters and digits survive into it, so no tsquery operator a client sends can reach
//!   `to_tsquery` (which, unlike websearch_to_tsquery, rejects bad syntax). A `-word` stays an exclusion
//!   (`!word`) so the prefix query never brings back what the client excluded.

/// Longest `q` accepted; longer is a 400, not a slow query.
pub const MAX_QUERY_CHARS: usize = 200;

/// Valid list filters; absent or blank parameters filter nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BookFilter {
    author: Option<String>,
    genre: Option<String>,
    search: Option<Search>,
}

/// A text search: the text as typed, and its prefix form (none when it has no letters or digits).
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    text: String,
    prefixes: Option<String>,
}

impl BookFilter {
    /// Parses the raw parameters; the error names every bad parameter in one sentence.
    pub fn parse(
        author: Option<&str>,
        genre: Option<&str>,
        q: Option<&str>,
    ) -> Result<BookFilter, String> {
        let mut errors = Vec::new();
        let mut check = |name: &str, raw: Option<&str>, max: usize| {
            parameter(raw, max)
                .map_err(|e| errors.push(format!("{name} {e}")))
                .ok()
                .flatten()
        };
        let author = check("author", author, super::text::Author::MAX_CHARS);
        let genre = check("genre", genre, super::text::Genre::MAX_CHARS);
        let search = check("q", q, MAX_QUERY_CHARS).map(|text| Search {
            prefixes: prefix_query(&text),
            text,
        });
        if errors.is_empty() {
            Ok(BookFilter {
                author,
                genre,
                search,
            })
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn author(&self) -> Option<&str> {
        self.author.as_deref()
    }
    pub fn genre(&self) -> Option<&str> {
        self.genre.as_deref()
    }
    /// The text for `websearch_to_tsquery`.
    pub fn search_text(&self) -> Option<&str> {
        self.search.as_ref().map(|s| s.text.as_str())
    }
    /// The prefix tsquery for `to_tsquery`.
    pub fn search_prefixes(&self) -> Option<&str> {
        self.search.as_ref().and_then(|s| s.prefixes.as_deref())
    }
}

/// A trimmed parameter: `None` when absent or blank, an error when too long or holding control
/// characters (NUL would make PostgreSQL fail the query).
fn parameter(raw: Option<&str>, max: usize) -> Result<Option<String>, String> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let length = text.chars().count();
    if length > max {
        return Err(format!("must be at most {max} characters, got {length}"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(Some(text.to_owned()))
}

/// `harr:* & pot:*` from "harr pot"; `dune:* & !herbert` from "dune -herbert".
pub fn prefix_query(text: &str) -> Option<String> {
    let mut terms = Vec::new();
    for token in text.split_whitespace() {
        let (excluded, token) = match token.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, token),
        };
        let words = token
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty());
        for word in words {
            terms.push(if excluded {
                format!("!{word}")
            } else {
                format!("{word}:*")
            });
        }
    }
    (!terms.is_empty()).then(|| terms.join(" & "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blank_parameters_filter_nothing() {
        let filter = BookFilter::parse(Some("  "), None, Some("")).expect("valid");
        assert_eq!(filter, BookFilter::default());
    }

    #[test]
    fn parameters_are_trimmed() {
        let filter = BookFilter::parse(Some(" Tolkien "), Some("fantasy"), Some(" harr pot "))
            .expect("valid");
        assert_eq!(filter.author(), Some("Tolkien"));
        assert_eq!(filter.search_text(), Some("harr pot"));
        assert_eq!(filter.search_prefixes(), Some("harr:* & pot:*"));
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let long = "x".repeat(201);
        let err = BookFilter::parse(Some(&long), Some("a\u{0}b"), Some(&long)).expect_err("bad");
        assert!(
            err.contains("author") && err.contains("genre") && err.contains("q "),
            "{err}"
        );
    }

    #[test]
    fn tsquery_operators_never_reach_the_prefix_query() {
        assert_eq!(
            prefix_query("a & b | !c <-> d:*"),
            Some("a:* & b:* & c:* & d:*".into())
        );
        assert_eq!(
            prefix_query("\"dune\" -herbert"),
            Some("dune:* & !herbert".into())
        );
        assert_eq!(prefix_query("don't"), Some("don:* & t:*".into()));
        assert_eq!(prefix_query("!!! - & |"), None);
    }

    proptest! {
        #[test]
        fn prefix_queries_hold_only_words_and_our_operators(text in "\\PC{0,200}") {
            if let Some(query) = prefix_query(&text) {
                for term in query.split(" & ") {
                    let word = term.strip_prefix('!').or_else(|| term.strip_suffix(":*"));
                    prop_assert!(word.is_some_and(|w| !w.is_empty() && w.chars().all(char::is_alphanumeric)), "{}", term);
                }
            }
        }
    }
}
