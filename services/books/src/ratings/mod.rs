//! Ratings, written behind: `POST /api/books/{id}/ratings` answers 202 once the rating is in a Redis
//! Stream (appended to the node's AOF); the [`persister`] of every books instance — one consumer
//! group — bulk-upserts batches into PostgreSQL and acknowledges entries only after the commit.
//!
//! The stream lives on one node (`stream_node`, by default the first cache node) in its own
//! database (`stream_database`, 1), never in the cache's: a returning cache node is flushed, and a
//! flush must not throw accepted ratings away. It is deliberately not placed by the cache ring:
//! the ring re-maps keys when a node fails, which would split the stream in two and let a rating be
//! accepted on a node nobody reads any more. While the stream node is down, ratings are refused
//! with 503 (never accepted and lost); what a Redis crash can lose is in docs/CACHE.md.

pub mod persister;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use platform::ApiError;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::domain::NewRating;
use crate::domain::book::book_columns;

/// The leaderboard (`GET /api/books/top`): the best-rated live books, highest average first, more
/// ratings breaking ties; `$1` is how many. It walks `book_rating_totals_top_idx` (the index's
/// expressions, in its order, under its predicate) and skips deleted books by the join. Public so
/// a test can check that plan.
pub const TOP_BOOKS: &str = concat!(
    "SELECT ",
    book_columns!(),
    " FROM book_rating_totals t JOIN books b ON b.id = t.book_id
      WHERE b.deleted_at IS NULL AND t.rating_count > 0
      ORDER BY t.rating_sum::float8 / t.rating_count DESC, t.rating_count DESC, t.book_id
      LIMIT $1"
);

/// Where the stream is and how the persister works it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RatingsSettings {
    /// The Redis node holding the stream (`host:port`); empty: the first cache node; no node at
    /// all: ratings are refused (503).
    pub stream_node: String,
    /// The node's database for the stream; not the cache's (see the module docs).
    pub stream_database: u8,
    /// The stream's key.
    pub stream_key: String,
    /// The consumer group every books instance joins.
    pub group: String,
    /// Most entries persisted in one transaction.
    pub batch_size: usize,
    /// After a batch of fewer than `batch_size` entries, the persister waits this long before it
    /// reads again, so that under load the entries of many requests share one transaction, one
    /// acknowledgement and one invalidation per book; a rating waits at most this much longer to
    /// be persisted. A rating arriving at an idle persister (blocked in its read) is persisted at
    /// once. 0: read again at once.
    pub linger_ms: u64,
    /// Entries delivered to another consumer and not acknowledged for this long are claimed
    /// (`XAUTOCLAIM`): that consumer is presumed dead. Longer than a healthy batch ever takes.
    /// Each persister looks for such entries every `claim_idle_ms / 2`.
    pub claim_idle_ms: u64,
    /// How long the persister waits for new entries per read.
    pub block_ms: u64,
    /// The most appending one rating may take before the request answers 503.
    pub append_timeout_ms: u64,
    /// The most one batch's transaction may take before it is abandoned and retried.
    pub db_timeout_ms: u64,
    /// The pause after a failed batch (database or Redis down) before the next attempt.
    pub retry_backoff_ms: u64,
    /// Persist every rating in its own transaction before answering (201), without the stream —
    /// the "one INSERT per rating" baseline `bench/ratings.sh` measures write-behind against. Off
    /// by default: it gives up what the stream is for (absorbing bursts and database outages).
    pub write_through: bool,
}

impl Default for RatingsSettings {
    fn default() -> Self {
        RatingsSettings {
            stream_node: String::new(),
            stream_database: 1,
            stream_key: "books:ratings".into(),
            group: "persisters".into(),
            batch_size: 500,
            linger_ms: 50,
            claim_idle_ms: 15_000,
            block_ms: 1_000,
            append_timeout_ms: 2_000,
            db_timeout_ms: 5_000,
            retry_backoff_ms: 500,
            write_through: false,
        }
    }
}

impl RatingsSettings {
    /// The stream's node: the configured one, else the first cache node.
    pub fn node<'a>(&'a self, cache_nodes: &'a [String]) -> Option<&'a str> {
        Some(self.stream_node.as_str())
            .filter(|n| !n.is_empty())
            .or_else(|| cache_nodes.first().map(String::as_str))
    }
}

/// One rating as it travels through the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRating {
    pub rating_id: Uuid,
    pub customer_id: Uuid,
    pub book_id: Uuid,
    pub stars: i16,
    pub text: Option<String>,
    /// When it was accepted, in ms since the epoch.
    pub at_ms: i64,
}

impl StreamRating {
    /// A rating accepted now, with a fresh id.
    fn accepted_now(customer_id: Uuid, book_id: Uuid, rating: &NewRating) -> StreamRating {
        StreamRating {
            rating_id: Uuid::now_v7(),
            customer_id,
            book_id,
            stars: rating.stars(),
            text: rating.text().map(str::to_owned),
            at_ms: now_ms(),
        }
    }

    /// The `XADD` that appends it to `key`, with an id Redis chooses.
    fn xadd(&self, key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg("*")
            .arg("rating_id")
            .arg(self.rating_id.as_hyphenated().to_string())
            .arg("customer_id")
            .arg(self.customer_id.as_hyphenated().to_string())
            .arg("book_id")
            .arg(self.book_id.as_hyphenated().to_string())
            .arg("stars")
            .arg(self.stars)
            .arg("at")
            .arg(self.at_ms);
        if let Some(text) = &self.text {
            cmd.arg("text").arg(text);
        }
        cmd
    }

    /// Reads an entry back; `None` for an entry this code did not write (it is dropped, logged).
    pub fn from_entry(entry: &redis::streams::StreamId) -> Option<StreamRating> {
        let text = |name: &str| entry.get::<String>(name);
        let stars: i16 = text("stars")?.parse().ok()?;
        (1..=5).contains(&stars).then_some(())?;
        Some(StreamRating {
            rating_id: text("rating_id")?.parse().ok()?,
            customer_id: text("customer_id")?.parse().ok()?,
            book_id: text("book_id")?.parse().ok()?,
            stars,
            text: text("text"),
            at_ms: text("at")?.parse().ok()?,
        })
    }
}

/// The stream's id `<ms>-<seq>` as numbers, the order "latest wins" follows.
pub fn parse_entry_id(id: &str) -> Option<(i64, i64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The producer side: appends accepted ratings.
pub struct RatingStream {
    client: redis::Client,
    key: String,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// Creates the write-behind counters at 0, so `rate()` sees their first event (a refusal, a
/// failed batch, a claim) rather than a series that appears at 1.
pub fn register_series() {
    for name in [
        "bookstore_ratings_accepted_total",
        "bookstore_ratings_refused_total",
        "bookstore_ratings_persisted_total",
        "bookstore_ratings_persist_failures_total",
        "bookstore_ratings_claimed_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("bookstore_ratings_stream_backlog").set(0.0);
    // Exported (count 0) before the first batch, so dashboards and their checks find it.
    let _ = metrics::histogram!("bookstore_ratings_batch_entries");
}

impl RatingStream {
    pub fn new(settings: &RatingsSettings, node: &str) -> anyhow::Result<RatingStream> {
        Ok(RatingStream {
            client: redis::Client::open(format!("redis://{node}/{}", settings.stream_database))?,
            key: settings.stream_key.clone(),
            timeout: Duration::from_millis(settings.append_timeout_ms.max(1)),
            conn: Mutex::new(None),
        })
    }

    /// `XADD`s the rating; Ok once Redis answered (the entry is in its AOF). Any failure is a 503:
    /// the client retries, and nothing was accepted that could be lost.
    pub async fn append(
        &self,
        customer_id: Uuid,
        book_id: Uuid,
        rating: &NewRating,
    ) -> Result<Uuid, ApiError> {
        let entry = StreamRating::accepted_now(customer_id, book_id, rating);
        match tokio::time::timeout(self.timeout, self.xadd(&entry)).await {
            Ok(Ok(_)) => {
                metrics::counter!("bookstore_ratings_accepted_total").increment(1);
                Ok(entry.rating_id)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(error = %why, "a rating could not be appended to the stream");
                *self.conn.lock().await = None;
                metrics::counter!("bookstore_ratings_refused_total").increment(1);
                Err(ApiError::Unavailable {
                    detail: "ratings cannot be accepted right now; try again shortly".into(),
                    retry_after: 1,
                })
            }
        }
    }

    async fn xadd(&self, entry: &StreamRating) -> redis::RedisResult<String> {
        let mut conn = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(conn) => conn.clone(),
                None => {
                    let config =
                        AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout));
                    let conn = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    *slot = Some(conn.clone());
                    conn
                }
            }
        };
        entry.xadd(&self.key).query_async(&mut conn).await
    }
}

/// Persists one rating at once, in its own transaction, the way a write-through API would (the
/// baseline of `bench/ratings.sh`; see [`RatingsSettings::write_through`]). Returns its id.
pub async fn write_through(
    pool: &sqlx::PgPool,
    cache: &crate::cache::BookCache,
    customer_id: Uuid,
    book_id: Uuid,
    rating: &NewRating,
) -> Result<Uuid, ApiError> {
    let entry = StreamRating::accepted_now(customer_id, book_id, rating);
    let (rating_id, at_ms) = (entry.rating_id, entry.at_ms);
    // The order "latest wins" follows: the time, then the id's random tail, as a stream id would.
    let seq = i64::from(u16::from_be_bytes([
        rating_id.as_bytes()[14],
        rating_id.as_bytes()[15],
    ]));
    let books = persister::persist(pool, vec![((at_ms, seq), entry)])
        .await
        .map_err(|e| ApiError::Internal(e.context("Failed to persist a rating")))?;
    cache.books_changed(&books).await;
    metrics::counter!("bookstore_ratings_accepted_total").increment(1);
    Ok(rating_id)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        assert_eq!(
            parse_entry_id("1700000000000-3"),
            Some((1_700_000_000_000, 3))
        );
        assert!(parse_entry_id("1-2") < parse_entry_id("1-10"));
        assert_eq!(parse_entry_id("nonsense"), None);
    }

    #[test]
    fn the_stream_node_defaults_to_the_first_cache_node() {
        let nodes = vec!["a:1".to_string(), "b:2".to_string()];
        let mut settings = RatingsSettings::default();
        assert_eq!(settings.node(&nodes), Some("a:1"));
        assert_eq!(settings.node(&[]), None);
        settings.stream_node = "c:3".into();
        assert_eq!(settings.node(&nodes), Some("c:3"));
    }
}
