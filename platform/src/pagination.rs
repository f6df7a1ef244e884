//! Cursor pagination: `limit` (1–100, default 20) and an opaque `cursor`, answered as
//! `{items, next_cursor}`. A cursor is base64url JSON of the sort key of the last item shown, so pages
//! stay stable while rows are inserted (keyset pagination, no OFFSET).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::problem::ApiError;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// The pagination part of a query string, kept as text so a bad value gets our own message.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// A parsed page request: how many items, and after which key.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest<K> {
    pub limit: i64,
    pub after: Option<K>,
}

impl PageQuery {
    pub fn parse<K: DeserializeOwned>(&self) -> Result<PageRequest<K>, ApiError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.trim().parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
                    )));
                }
            },
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(cursor) => Some(decode_cursor(cursor)?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// One page of results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says another page exists.
    pub fn from_rows<K: Serialize>(mut rows: Vec<T>, limit: i64, key_of: impl Fn(&T) -> K) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode_cursor(&key_of(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

pub fn encode_cursor<K: Serialize>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

pub fn decode_cursor<K: DeserializeOwned>(cursor: &str) -> Result<K, ApiError> {
    let invalid =
        || ApiError::BadRequest("cursor is not one this API issued; start again without it".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    // PostgreSQL rejects NUL in text; a forged cursor carrying one must be a 400, not a failed query.
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    if text.contains("\\u0000") {
        return Err(invalid());
    }
    serde_json::from_str(text).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, cursor: Option<&str>) -> PageQuery {
        PageQuery {
            limit: limit.map(String::from),
            cursor: cursor.map(String::from),
        }
    }

    #[test]
    fn limit_defaults_to_twenty_and_accepts_the_bounds() {
        let req: PageRequest<String> = query(None, None).parse().expect("default");
        assert_eq!(req.limit, 20);
        for ok in ["1", "100"] {
            assert!(query(Some(ok), None).parse::<String>().is_ok());
        }
    }

    #[test]
    fn out_of_range_or_non_numeric_limits_are_rejected() {
        for bad in ["0", "101", "-5", "abc", "1e3", "99999999999999999999"] {
            let err = query(Some(bad), None).parse::<String>().expect_err(bad);
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad}");
        }
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_rejected() {
        let key = ("Dune".to_string(), 42_i64);
        let cursor = encode_cursor(&key);
        let req: PageRequest<(String, i64)> = query(None, Some(&cursor)).parse().expect("valid");
        assert_eq!(req.after, Some(key));
        let nul = encode_cursor(&("a\0b".to_string(), 1_i64));
        for bad in ["!!!", "bm90IGpzb24", &encode_cursor(&"a string"), &nul] {
            assert!(
                query(None, Some(bad)).parse::<(String, i64)>().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_rows_exist() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| *n);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor, Some(encode_cursor(&2)));
        let last = Page::from_rows(vec![1, 2], 2, |n| *n);
        assert_eq!(last.next_cursor, None);
    }
}
