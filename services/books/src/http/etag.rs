//! Optimistic concurrency over HTTP: responses carry `ETag: "<version>"`, writes send it back in
//! `If-Match`. The headers are extractors, so a missing or garbled precondition is refused before the
//! body is even read, and handlers receive a plain version number.

use axum::extract::FromRequestParts;
use http::header::{ETAG, IF_MATCH};
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use platform::ApiError;

/// The version a write requires (`PUT`): a missing `If-Match` is 428, an unparseable one 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub i64);

/// The version a write may require (`DELETE`): absent means unconditional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeIfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        expected_version(&parts.headers)?
            .map(IfMatch)
            .ok_or_else(|| {
                ApiError::PreconditionRequired(
                    "send If-Match with the book's current ETag (e.g. If-Match: \"3\"), \
                 so that a concurrent change is not overwritten"
                        .into(),
                )
            })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MaybeIfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        expected_version(&parts.headers).map(MaybeIfMatch)
    }
}

/// The `ETag` header for `version`.
pub fn etag(version: i64) -> (HeaderName, String) {
    (ETAG, format!("\"{version}\""))
}

fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let mut values = headers.get_all(IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send a single If-Match header naming one version".into(),
        ));
    }
    let text = value.to_str().unwrap_or_default();
    parse_version(text).map(Some).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "If-Match must be one version from an ETag, like \"3\", W/\"3\" or 3; got {text:?}"
        ))
    })
}

/// `"3"`, `W/"3"` or a bare `3`. Weak tags are accepted because the version is the whole identity of
/// a representation here; `*` and lists are not, since they would not say which version was read.
pub fn parse_version(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strong_weak_and_bare_versions_are_accepted() {
        for text in ["\"7\"", "W/\"7\"", "7", " \"7\" "] {
            assert_eq!(parse_version(text), Some(7), "{text}");
        }
    }

    #[test]
    fn garbage_wildcards_lists_and_overflow_are_refused() {
        for text in [
            "",
            "\"\"",
            "*",
            "\"7",
            "abc",
            "\"-1\"",
            "\"1\", \"2\"",
            "1.5",
            "99999999999999999999",
        ] {
            assert_eq!(parse_version(text), None, "{text}");
        }
    }

    proptest! {
        #[test]
        fn every_etag_we_send_parses_back(version in 0i64..) {
            prop_assert_eq!(parse_version(&etag(version).1), Some(version));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,30}") {
            let _ = parse_version(&text);
        }
    }
}
