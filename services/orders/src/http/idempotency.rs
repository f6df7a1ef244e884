//! `Idempotency-Key` for unsafe requests: a repeat with the same key and body gets the first answer
//! (with `Idempotent-Replayed: true`) and never repeats the effect; the same key with another body is
//! a 422.
//!
//! The key row is written in the same transaction as the request's effect, so either both happen or
//! neither does. The row is inserted first (`ON CONFLICT DO NOTHING`): a concurrent request with the
//! same key blocks on that row until the first commits, then reads the stored answer. If the first
//! fails, its row rolls back with it and the key is free again — only successful answers are kept.
//! Checkout reuses [`once`] with its own scope.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::ApiError;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_KEY_LEN: usize = 255;

/// A client-chosen key of 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &HeaderValue) -> Result<IdempotencyKey, ApiError> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(u8::is_ascii_graphic)
        {
            return Err(ApiError::BadRequest(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        // All bytes are ASCII, so this cannot fail; the fallback keeps it free of panics anyway.
        Ok(IdempotencyKey(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Optional key (credit top-ups): absent is `None`, malformed is a 400.
impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => IdempotencyKey::parse(value).map(Some),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "send the Idempotency-Key header at most once".into(),
            )),
        }
    }
}

/// Required key (checkout): absent is a 400 too.
impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".into()))
    }
}

/// A successful answer: what [`once`] stores and replays.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: T,
}

impl<T> Answer<T> {
    pub fn ok(body: T) -> Self {
        Answer {
            status: StatusCode::OK,
            location: None,
            body,
        }
    }

    pub fn created(location: String, body: T) -> Self {
        Answer {
            status: StatusCode::CREATED,
            location: Some(location),
            body,
        }
    }
}

impl<T: Serialize> Answer<T> {
    fn into_json(self) -> Result<Answer<serde_json::Value>, ApiError> {
        let body = serde_json::to_value(self.body)
            .map_err(|e| anyhow::Error::new(e).context("Failed to serialize an answer"))?;
        Ok(Answer {
            status: self.status,
            location: self.location,
            body,
        })
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(value) = self.location.and_then(|l| HeaderValue::try_from(l).ok()) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

/// Runs `work` in one transaction, at most once per `(scope, key)` when a key is given.
///
/// `request` is the parsed body; its canonical JSON is hashed to tell a true repeat from a reuse of
/// the key for something else.
pub async fn once<T: Serialize>(
    pool: &PgPool,
    key: Option<&IdempotencyKey>,
    scope: &str,
    request: &impl Serialize,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<Answer<T>, ApiError>,
) -> Result<Response, ApiError> {
    let mut tx = pool.begin().await?;
    if let Some(key) = key {
        let hash = request_hash(request)?;
        if let Some(replay) = claim(&mut tx, scope, key, &hash).await? {
            return Ok(replay);
        }
    }
    // Rendered from the same JSON value that is stored, so a replay is byte-for-byte the same.
    let answer = work(&mut tx).await?.into_json()?;
    if let Some(key) = key {
        record(&mut tx, scope, key, &answer).await?;
    }
    tx.commit().await?;
    Ok(answer.into_response())
}

fn request_hash(request: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    let canonical = serde_json::to_vec(request)
        .map_err(|e| anyhow::Error::new(e).context("Failed to serialize a request for hashing"))?;
    Ok(Sha256::digest(&canonical).to_vec())
}

#[derive(sqlx::FromRow)]
struct StoredAnswer {
    request_hash: Vec<u8>,
    status: Option<i16>,
    response: Option<serde_json::Value>,
    location: Option<String>,
}

/// Takes the key for this transaction, or returns the answer already given for it.
async fn claim(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    hash: &[u8],
) -> Result<Option<Response>, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key.as_str())
    .bind(hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    // The conflicting row was committed (we waited for it), so this fresh snapshot sees it.
    let stored: Option<StoredAnswer> = sqlx::query_as(
        "SELECT request_hash, status, response, location FROM idempotency_keys
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match stored {
        Some(stored) if stored.request_hash != hash => Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was already used with a different request; use a new key for a new request",
        )),
        Some(stored) => replay(stored).map(Some),
        None => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is in progress; retry shortly".into(),
        )),
    }
}

fn replay(stored: StoredAnswer) -> Result<Response, ApiError> {
    let status = stored
        .status
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok());
    let (Some(status), Some(body)) = (status, stored.response) else {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is in progress; retry shortly".into(),
        ));
    };
    let answer = Answer {
        status,
        location: stored.location,
        body,
    };
    let mut response = answer.into_response();
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

async fn record(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    answer: &Answer<serde_json::Value>,
) -> Result<(), ApiError> {
    let status = i16::try_from(answer.status.as_u16())
        .map_err(|e| anyhow::Error::new(e).context("Failed to store an HTTP status"))?;
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, response = $4, location = $5
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key.as_str())
    .bind(status)
    .bind(sqlx::types::Json(&answer.body))
    .bind(answer.location.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<IdempotencyKey, ApiError> {
        let value =
            HeaderValue::from_bytes(bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        IdempotencyKey::parse(&value)
    }

    #[test]
    fn keys_of_visible_ascii_up_to_255_characters_are_accepted() {
        for ok in [&b"a"[..], b"order-42_retry.1", b"~!@#$%^&*()", &[b'k'; 255]] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn empty_long_spaced_control_or_non_ascii_keys_are_rejected() {
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"two words",
            b"tab\there",
            "ключ".as_bytes(),
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_request_hash_depends_on_the_body() -> Result<(), ApiError> {
        let a = request_hash(&serde_json::json!({"amount_cents": 100}))?;
        let b = request_hash(&serde_json::json!({"amount_cents": 101}))?;
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        Ok(())
    }
}
