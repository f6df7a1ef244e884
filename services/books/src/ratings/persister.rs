//! The persister: one consumer of the ratings stream's group per books instance, moving accepted
//! ratings into PostgreSQL in batches.
//!
//! Each round takes, in this order: its own pending entries (delivered to it before but not
//! acknowledged — a batch whose transaction failed; read at start and after a failed round), then,
//! every `claim_idle_ms / 2`, entries another consumer has held unacknowledged for `claim_idle_ms`
//! (`XAUTOCLAIM`: that instance is presumed dead), then new entries (`XREADGROUP … >`, blocking up
//! to `block_ms`). A batch is upserted in one transaction; only after its commit are the entries
//! acknowledged (`XACK`) and deleted from the stream (`XDEL`), in one pipeline with the backlog's
//! `XLEN`, and the cache entries of the books whose totals moved invalidated. After a batch
//! smaller than `batch_size` the persister lingers `linger_ms` before it reads again, so that
//! under load a round's fixed costs are shared by many ratings (docs/CACHE.md, "The linger").
//! A crash anywhere before the `XACK` leaves the entries pending, so they are persisted again —
//! harmlessly, because the upsert is idempotent: a row is overwritten only by an entry with a
//! larger stream id, and the books' totals move only by what the upsert really wrote (see
//! [`apply`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{RatingsSettings, StreamRating, parse_entry_id};
use crate::cache::BookCache;

/// One consumer of the group.
pub struct Persister {
    settings: RatingsSettings,
    client: redis::Client,
    consumer: String,
    pool: PgPool,
    cache: BookCache,
}

impl Persister {
    /// `consumer` names this instance in the group; it must be unique among live instances.
    pub fn new(
        settings: RatingsSettings,
        node: &str,
        consumer: String,
        pool: PgPool,
        cache: BookCache,
    ) -> anyhow::Result<Persister> {
        Ok(Persister {
            client: redis::Client::open(format!("redis://{node}/{}", settings.stream_database))?,
            settings,
            consumer,
            pool,
            cache,
        })
    }

    /// Runs until `stop`; every failure is logged and retried after the backoff.
    pub async fn run(self, stop: CancellationToken) {
        let backoff = Duration::from_millis(self.settings.retry_backoff_ms.max(10));
        let linger = Duration::from_millis(self.settings.linger_ms);
        let mut conn: Option<MultiplexedConnection> = None;
        let mut schedule = Schedule::new();
        tracing::info!(consumer = %self.consumer, "ratings persister started");
        while !stop.is_cancelled() {
            let round = async {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(self.connect().await?),
                };
                self.round(c, &mut schedule).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = round => result,
            };
            match result {
                // A partial batch: what arrives during the linger joins the next one instead of
                // making a batch of its own (docs/CACHE.md, "The linger").
                Ok(entries)
                    if entries > 0 && entries < self.settings.batch_size && !linger.is_zero() =>
                {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(linger) => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "ratings persister round failed; retrying"
                    );
                    metrics::counter!("bookstore_ratings_persist_failures_total").increment(1);
                    // What it read is pending for it now: read that first.
                    schedule.own_pending = true;
                    if e.downcast_ref::<redis::RedisError>().is_some() {
                        conn = None;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        // No response timeout: XREADGROUP blocks on purpose; each call is bounded below instead.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let created: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.settings.stream_key)
            .arg(&self.settings.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(conn)
    }

    /// One batch: read, persist, acknowledge. Ok(0) when there was nothing to do.
    async fn round(
        &self,
        conn: &mut MultiplexedConnection,
        schedule: &mut Schedule,
    ) -> anyhow::Result<usize> {
        if Instant::now() >= schedule.next_backlog {
            self.record_backlog(conn, schedule).await?;
        }
        let entries = self.next_batch(conn, schedule).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut ratings = Vec::new();
        for entry in &entries {
            match (StreamRating::from_entry(entry), parse_entry_id(&entry.id)) {
                (Some(rating), Some(order)) => ratings.push((order, rating)),
                // Nothing we wrote: keeping it pending would block nothing but would be retried
                // forever; drop it loudly.
                _ => tracing::error!(id = %entry.id, "unreadable ratings entry dropped"),
            }
        }
        let timeout = Duration::from_millis(self.settings.db_timeout_ms.max(1));
        let books = tokio::time::timeout(timeout, persist(&self.pool, ratings))
            .await
            .context("the ratings batch timed out")??;
        // Only now that the rows are committed; acknowledged, deleted and the backlog read in one
        // round trip (a pipeline, not a transaction: an entry acknowledged and then not deleted
        // stays in the stream, counted in the backlog, but is never delivered again).
        let key = &self.settings.stream_key;
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(key)
            .arg(&self.settings.group)
            .arg(&ids)
            .cmd("XDEL")
            .arg(key)
            .arg(&ids)
            .ignore()
            .cmd("XLEN")
            .arg(key);
        let (acked, backlog): (i64, i64) = tokio::time::timeout(QUICK, pipe.query_async(conn))
            .await
            .context("XACK/XDEL timed out")??;
        metrics::counter!("bookstore_ratings_persisted_total").increment(acked.max(0) as u64);
        metrics::histogram!("bookstore_ratings_batch_entries").record(ids.len() as f64);
        schedule.backlog_read(backlog);
        tracing::debug!(entries = ids.len(), acked, "ratings batch persisted");
        self.cache.books_changed(&books).await;
        Ok(ids.len())
    }

    /// Entries accepted but not yet persisted: persisted ones are deleted from the stream, so its
    /// length is the write-behind backlog (every instance reports the same stream).
    async fn record_backlog(
        &self,
        conn: &mut MultiplexedConnection,
        schedule: &mut Schedule,
    ) -> anyhow::Result<()> {
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(&self.settings.stream_key);
        let len = tokio::time::timeout(QUICK, xlen.query_async::<i64>(conn))
            .await
            .context("XLEN timed out")??;
        schedule.backlog_read(len);
        Ok(())
    }

    /// Its own pending entries when it may have some, else a dead consumer's when it is time to
    /// look, else new ones.
    async fn next_batch(
        &self,
        conn: &mut MultiplexedConnection,
        schedule: &mut Schedule,
    ) -> anyhow::Result<Vec<StreamId>> {
        let s = &self.settings;
        let count = s.batch_size.max(1);
        // Ours from before (a failed batch), oldest first.
        if schedule.own_pending {
            let own: StreamReadReply =
                tokio::time::timeout(QUICK, self.read_group(count, None, "0").query_async(conn))
                    .await
                    .context("XREADGROUP (own pending) timed out")??;
            let own = entries_of(own);
            // A full batch may leave more behind; anything less was all of them.
            schedule.own_pending = own.len() >= count;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        // A dead consumer's: claimable only once idle for `claim_idle_ms`, so looking every half
        // of that is enough (a scan that stopped after claiming some: go on at once).
        if Instant::now() >= schedule.next_claim {
            let claimed: StreamAutoClaimReply = tokio::time::timeout(
                QUICK,
                redis::cmd("XAUTOCLAIM")
                    .arg(&s.stream_key)
                    .arg(&s.group)
                    .arg(&self.consumer)
                    .arg(s.claim_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(conn),
            )
            .await
            .context("XAUTOCLAIM timed out")??;
            // The scan finished (cursor `0-0`), or found nothing to take: not again for a while.
            if claimed.next_stream_id == "0-0" || claimed.claimed.is_empty() {
                schedule.next_claim = Instant::now() + Duration::from_millis(s.claim_idle_ms / 2);
            }
            let claimed: Vec<StreamId> = claimed
                .claimed
                .into_iter()
                .filter(|e| !e.map.is_empty())
                .collect();
            if !claimed.is_empty() {
                tracing::info!(entries = claimed.len(), consumer = %self.consumer, "claimed ratings another persister left unacknowledged");
                metrics::counter!("bookstore_ratings_claimed_total")
                    .increment(claimed.len() as u64);
                return Ok(claimed);
            }
        }
        // New ones.
        let fresh: Option<StreamReadReply> = tokio::time::timeout(
            Duration::from_millis(s.block_ms) + QUICK,
            self.read_group(count, Some(s.block_ms), ">")
                .query_async(conn),
        )
        .await
        .context("XREADGROUP (new) timed out")??;
        Ok(fresh.map(entries_of).unwrap_or_default())
    }
}

/// The bound of every Redis command of the persister but the blocking read.
const QUICK: Duration = Duration::from_secs(5);

/// How often an idle persister (or one whose batches fail) reads the backlog; a persisted batch
/// reads it with its acknowledgement.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// What a persister does only now and then, carried from round to round.
struct Schedule {
    /// Whether it may hold entries delivered to it and not acknowledged: at start (a consumer
    /// name is never reused, but reading costs one command) and after a failed round.
    own_pending: bool,
    /// When to look for a dead consumer's entries next.
    next_claim: Instant,
    /// When to read the backlog next.
    next_backlog: Instant,
}

impl Schedule {
    fn new() -> Schedule {
        let now = Instant::now();
        Schedule {
            own_pending: true,
            next_claim: now,
            next_backlog: now,
        }
    }

    /// Reports the backlog just read (`XLEN`) and puts off the next read.
    fn backlog_read(&mut self, len: i64) {
        metrics::gauge!("bookstore_ratings_stream_backlog").set(len as f64);
        self.next_backlog = Instant::now() + BACKLOG_EVERY;
    }
}

impl Persister {
    /// `XREADGROUP` for this consumer: from `from` (`0`: its own pending entries; `>`: new ones),
    /// waiting up to `block_ms` when given.
    fn read_group(&self, count: usize, block_ms: Option<u64>, from: &str) -> redis::Cmd {
        let s = &self.settings;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&s.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block_ms) = block_ms {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(&s.stream_key).arg(from);
        cmd
    }
}

/// The books whose totals (`book_rating_totals`) are not a recomputation from their rating rows,
/// or that have no totals row (the persisters would not count their ratings), each described in
/// one line, read in one statement (one snapshot). [`apply`] moves the totals by each upsert's old
/// and new stars in the batch's transaction, so this is empty at every commit — replays and claims
/// included, not only once the stream is drained. For tests and checks.
pub async fn totals_off(db: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT format('%s: count %s, sum %s; the rows say %s, %s', b.id,
                       coalesce(t.rating_count::text, 'missing'),
                       coalesce(t.rating_sum::text, 'missing'), coalesce(r.count, 0),
                       coalesce(r.sum, 0))
           FROM books b
           LEFT JOIN book_rating_totals t ON t.book_id = b.id
           LEFT JOIN (SELECT book_id, count(*) AS count, sum(stars) AS sum
                        FROM ratings GROUP BY book_id) r ON r.book_id = b.id
          WHERE t.book_id IS NULL OR t.rating_count <> coalesce(r.count, 0)
             OR t.rating_sum <> coalesce(r.sum, 0)",
    )
    .fetch_all(db)
    .await
}

/// Entries with their fields (an entry deleted while pending comes back without any: skipped here,
/// and it is already gone from the stream).
fn entries_of(reply: StreamReadReply) -> Vec<StreamId> {
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .filter(|e| !e.map.is_empty())
        .collect()
}

/// Upserts the batch and moves the totals of the books it touched by what it changed, in one
/// transaction; returns the books whose totals moved.
pub async fn persist(
    pool: &PgPool,
    ratings: Vec<((i64, i64), StreamRating)>,
) -> anyhow::Result<Vec<Uuid>> {
    // No `synchronous_commit = local` here although ratings are eventual data: the stream entries
    // are acknowledged (XACK) right after this commit, so it must survive a failover — a commit
    // only the old primary had would vanish with it while its entries are gone from the stream.
    let mut tx = pool.begin().await?;
    let books = apply(&mut tx, ratings).await?;
    tx.commit().await?;
    Ok(books)
}

/// The work of [`persist`] inside a transaction the caller opened and will commit (tests hold it
/// open to race two batches). Returns the books whose totals it changed: only what they show
/// changed, so only their cache entries need invalidating.
///
/// The totals are maintained, not recomputed: each upsert adds its new stars and takes away the
/// row's old ones (a new row also adds one to the count). That is exactly once because
///
/// - a row is only overwritten by an entry with a larger stream id (`stream_ms`, `stream_seq`,
///   stored on the row), and only rows the upsert really wrote (its `RETURNING`) move the totals:
///   a replayed entry — a crash between commit and `XACK`, an entry claimed from a consumer that
///   was only slow — and an entry older than the stored one change nothing;
/// - inside one batch only the latest entry per (customer, book) is kept, so a customer re-rating a
///   book twice in one batch counts once, with the later stars;
/// - the old stars are read under the locks of the books' totals rows (`book_rating_totals`,
///   one per book, made with the book), taken first, in book id order (so two persisters never
///   deadlock), by every writer of ratings: nobody else can change those ratings rows or totals
///   until this transaction ends. The upsert is a second statement, so in READ COMMITTED its
///   snapshot is taken *after* the locks are held and sees everything a persister that held them
///   before committed (one statement doing both read an older snapshot). The `books` rows are
///   neither locked nor written: checkout's stock locks and a batch of ratings never wait for
///   each other.
pub async fn apply(
    conn: &mut PgConnection,
    ratings: Vec<((i64, i64), StreamRating)>,
) -> anyhow::Result<Vec<Uuid>> {
    // One row per customer and book (a statement may not upsert one row twice): the latest entry.
    let mut latest: HashMap<(Uuid, Uuid), ((i64, i64), StreamRating)> = HashMap::new();
    for (order, rating) in ratings {
        let key = (rating.customer_id, rating.book_id);
        if latest.get(&key).is_none_or(|(seen, _)| *seen < order) {
            latest.insert(key, (order, rating));
        }
    }
    if latest.is_empty() {
        return Ok(Vec::new());
    }
    let mut cols = Columns::default();
    for ((ms, seq), r) in latest.into_values() {
        cols.customer.push(r.customer_id);
        cols.book.push(r.book_id);
        cols.rating.push(r.rating_id);
        cols.stars.push(r.stars);
        cols.text.push(r.text);
        cols.ms.push(ms);
        cols.seq.push(seq);
        cols.at.push(r.at_ms);
    }
    let mut books = cols.book.clone();
    books.sort();
    books.dedup();
    // The book's `version` does not move: a rating is not an edit of the book, and must not make
    // an admin's If-Match fail. (Only a book that no longer exists has no totals row: its ratings
    // are stored and move no totals, as before, when its `books` row was missing.)
    sqlx::query(
        "SELECT book_id FROM book_rating_totals WHERE book_id = ANY($1) ORDER BY book_id
            FOR NO KEY UPDATE",
    )
    .bind(&books)
    .execute(&mut *conn)
    .await
    .context("Failed to lock the rated books' totals")?;
    // All parts of one statement share its snapshot: `old` is the rows as they were before `up`
    // wrote them, whatever order PostgreSQL runs the parts in. A book whose totals the batch moves
    // by (0, 0) — re-ratings with the same stars, replays — keeps its totals row as it is (no new
    // row version, no WAL) and is not returned: nothing a reader sees of it changed, `updated_at`
    // included, so its cache entries stay valid.
    let moved: Vec<Uuid> = sqlx::query_scalar(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::smallint[], $5::text[],
                                  $6::bigint[], $7::bigint[], $8::bigint[])
                        AS v(c, b, r, s, t, ms, seq, at)),
         old AS (
             SELECT o.customer_id, o.book_id, o.stars
               FROM ratings o JOIN v ON o.customer_id = v.c AND o.book_id = v.b),
         up AS (
             INSERT INTO ratings (customer_id, book_id, rating_id, stars, text, stream_ms,
                                  stream_seq, rated_at)
             SELECT c, b, r, s, t, ms, seq, to_timestamp(at / 1000.0) FROM v
             ON CONFLICT (customer_id, book_id) DO UPDATE
                SET rating_id = EXCLUDED.rating_id, stars = EXCLUDED.stars, text = EXCLUDED.text,
                    stream_ms = EXCLUDED.stream_ms, stream_seq = EXCLUDED.stream_seq,
                    rated_at = EXCLUDED.rated_at, persisted_at = now()
              WHERE (ratings.stream_ms, ratings.stream_seq)
                    < (EXCLUDED.stream_ms, EXCLUDED.stream_seq)
             RETURNING customer_id, book_id, stars),
         delta AS (
             SELECT up.book_id, count(*) FILTER (WHERE old.stars IS NULL) AS count,
                    sum(up.stars - coalesce(old.stars, 0)) AS sum
               FROM up LEFT JOIN old USING (customer_id, book_id)
              GROUP BY up.book_id)
         UPDATE book_rating_totals t
            SET rating_count = t.rating_count + delta.count,
                rating_sum = t.rating_sum + delta.sum, updated_at = now()
           FROM delta
          WHERE t.book_id = delta.book_id AND (delta.count <> 0 OR delta.sum <> 0)
      RETURNING t.book_id",
    )
    .bind(&cols.customer)
    .bind(&cols.book)
    .bind(&cols.rating)
    .bind(&cols.stars)
    .bind(&cols.text)
    .bind(&cols.ms)
    .bind(&cols.seq)
    .bind(&cols.at)
    .fetch_all(&mut *conn)
    .await
    .context("Failed to upsert the ratings and move the books' totals")?;
    Ok(moved)
}

#[derive(Default)]
struct Columns {
    customer: Vec<Uuid>,
    book: Vec<Uuid>,
    rating: Vec<Uuid>,
    stars: Vec<i16>,
    text: Vec<Option<String>>,
    ms: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
}
