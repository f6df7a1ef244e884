//! Cache invalidation for checkout's stock changes, after they commit.
//!
//! The `reserve` branch runs inside a transaction the participant (`coordinator::participant`)
//! opens and ends, so the branch itself has no "after commit" moment. The participant's HTTP routes
//! do: when one answers success, its transaction has committed (saga `action`/`compensate`, 2PC
//! `commit`) or is prepared (2PC `prepare`). This layer wraps those routes:
//!
//! - saga `action` / `compensate`: the payload names the books; invalidate them once the answer
//!   is a success (the local transaction has committed by then);
//! - 2PC `prepare`: nothing changes yet (readers see the old stock until `COMMIT PREPARED`, which is
//!   right), but the commit will carry no payload and may reach the other books instance, so the
//!   gid's books are remembered in the ring — on every node, and read back from any, so neither a
//!   node failing nor one returning empty (flushed) loses them;
//! - 2PC `commit`: invalidate the books remembered for the gid. Lost (the ring was down at
//!   prepare): the list pages are retired and the books' entries expire with their TTL; logged and
//!   counted (`bookstore_cache_unknown_commits_total`).
//!
//! Invalidation happens before the answer leaves, so the coordinator (and the client after it)
//! never sees a commit the cache could still contradict.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use platform::cache::Lookup;
use uuid::Uuid;

use super::BookCache;
use crate::checkout::reserve::Reservation;

/// How long a prepared gid's books are remembered: longer than any coordinator recovery.
const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3600);

/// The most of a participant request body read here (the body limit applies before this).
const MAX_BODY: usize = 1 << 20;

/// The middleware (`axum::middleware::from_fn_with_state(cache, invalidate_after_commit)`).
pub async fn invalidate_after_commit(
    State(cache): State<BookCache>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let Some((protocol, gid, op)) = participant_op(&path) else {
        return next.run(request).await;
    };
    if !cache.ring().is_enabled() {
        return next.run(request).await;
    }
    match (protocol, op) {
        ("saga", "action" | "compensate") | ("2pc", "prepare") => {
            let (parts, body) = request.into_parts();
            let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
                // Unreadable here means unreadable for the route too; let it answer.
                return next.run(Request::from_parts(parts, Body::empty())).await;
            };
            let ids = book_ids(&bytes);
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            if response.status().is_success() && !ids.is_empty() {
                if protocol == "saga" {
                    cache.books_changed(&ids).await;
                } else {
                    remember(&cache, gid, &ids).await;
                }
            }
            response
        }
        ("2pc", "commit") => {
            let response = next.run(request).await;
            if response.status().is_success() {
                match recall(&cache, gid).await {
                    Some(ids) => cache.books_changed(&ids).await,
                    None => {
                        tracing::warn!(
                            gid,
                            "committed a reservation whose books the cache does not know; \
                             list pages retired, book entries expire with their TTL"
                        );
                        metrics::counter!("bookstore_cache_unknown_commits_total").increment(1);
                        cache.books_changed(&[]).await;
                    }
                }
            }
            response
        }
        _ => next.run(request).await,
    }
}

/// `("2pc" | "saga", gid, op)` of a participant route.
fn participant_op(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/internal/")?;
    let mut parts = rest.split('/');
    let protocol = parts.next()?;
    let gid = parts.next()?;
    let op = parts.next()?;
    (parts.next().is_none() && matches!(protocol, "2pc" | "saga")).then_some((protocol, gid, op))
}

/// The books of a reservation payload; none when it is not one (the route will refuse it).
fn book_ids(body: &[u8]) -> Vec<Uuid> {
    serde_json::from_slice::<Reservation>(body)
        .map(|r| r.items.iter().map(|i| i.book_id).collect())
        .unwrap_or_default()
}

fn txn_key(gid: &str) -> String {
    format!("books:v1:txn:{gid}")
}

async fn remember(cache: &BookCache, gid: &str, ids: &[Uuid]) {
    let text = ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    cache
        .ring()
        .set_everywhere(&txn_key(gid), text.as_bytes(), REMEMBER_FOR)
        .await;
}

async fn recall(cache: &BookCache, gid: &str) -> Option<Vec<Uuid>> {
    let Lookup::Hit(bytes) = cache.ring().get_anywhere(&txn_key(gid)).await else {
        return None;
    };
    let text = String::from_utf8(bytes).ok()?;
    text.split(',').map(|id| id.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_routes_are_recognised_and_nothing_else() {
        assert_eq!(
            participant_op("/internal/2pc/g:1:reserve/commit"),
            Some(("2pc", "g:1:reserve", "commit"))
        );
        assert_eq!(
            participant_op("/internal/saga/x/action"),
            Some(("saga", "x", "action"))
        );
        assert_eq!(participant_op("/internal/2pc/prepared"), None);
        assert_eq!(participant_op("/api/books/1"), None);
        assert_eq!(participant_op("/internal/books/quote"), None);
    }

    #[test]
    fn book_ids_come_from_a_reservation_payload_only() {
        let id = Uuid::now_v7();
        let body = format!(r#"{{"items":[{{"book_id":"{id}","quantity":1,"price_cents":5}}]}}"#);
        assert_eq!(book_ids(body.as_bytes()), vec![id]);
        assert!(book_ids(b"{}").is_empty());
    }
}
