//! Cache-aside for the catalog's reads: a book by id and the list pages, over the platform's Redis
//! ring (`platform::cache`). docs/CACHE.md explains the choices; in short:
//!
//! - **Book by id** under `books:v1:book:<id>`: the API's JSON with its version (the ETag), or a
//!   short-lived "not found" marker (negative caching of 404). A write replaces the key by a
//!   *tombstone* on every node *after* its commit; fills are `SET NX`, so a reader that read the
//!   old row before the commit cannot put it back while the tombstone lives, and a fill whose
//!   database read took longer than half the tombstone's life is dropped (it might have started
//!   before the commit and land after the tombstone expired).
//! - **List pages** under `books:v1:list:<token>:<hash of the query>`: *versioned keys*. Any write
//!   replaces the token (a fresh UUID, written to every node), so pages filled from an older read
//!   are simply never looked up again. A page cannot be invalidated precisely (any change may move
//!   a book onto or off any page), and the token makes that one write instead of a scan.
//! - TTLs carry ±jitter so entries filled together do not expire together; misses of the same key
//!   inside one instance share one database read (single flight).
//! - The cache is never needed: any cache error is a database read, never a failed request.

pub mod checkout;
mod single_flight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use platform::ApiError;
use platform::cache::{Cache, CacheConfig, Lookup};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use single_flight::SingleFlight;

/// The ring and how long entries live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// The Redis ring (`nodes`, timeouts, virtual nodes); no nodes means no cache.
    #[serde(flatten)]
    pub ring: CacheConfig,
    /// How long a cached book lives (± `ttl_jitter`).
    pub book_ttl_seconds: u64,
    /// How long a cached list page lives (± `ttl_jitter`); pages are also retired by every write.
    pub list_ttl_seconds: u64,
    /// The random share added to or taken from each TTL (0.1 = ±10 %).
    pub ttl_jitter: f64,
    /// How long "no such book" is cached: short, it only absorbs repeated probes.
    pub not_found_ttl_ms: u64,
    /// How long an invalidation's tombstone blocks fills (see the module docs).
    pub tombstone_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ring: CacheConfig::default(),
            book_ttl_seconds: 300,
            list_ttl_seconds: 60,
            ttl_jitter: 0.1,
            not_found_ttl_ms: 2_000,
            tombstone_ms: 5_000,
        }
    }
}

/// A book as the cache holds it: the version (for the ETag) and the JSON body, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBook {
    pub version: i64,
    pub json: Arc<[u8]>,
}

/// A database failure shared by every waiter of one flight.
pub type SharedDbError = Arc<sqlx::Error>;

/// What a flight for a book returns: the book, `None` for no such book.
type BookFlight = Result<Option<CachedBook>, SharedDbError>;
type PageFlight = Result<Arc<[u8]>, SharedDbError>;

const BOOK_PREFIX: &str = "books:v1:book:";
/// Whether a book is live (`1`/`0`): what a rating needs to know, kept apart from the book's entry,
/// which every persisted ratings batch invalidates (its average changes) — so a burst of ratings
/// is checked against Redis alone, not the database.
const LIVE_PREFIX: &str = "books:v1:live:";
const LIST_TOKEN_KEY: &str = "books:v1:list:token";
const NOT_FOUND: &[u8] = b"-";
/// The list token outlives any page; when it expires (or its node is flushed) a new one starts an
/// empty namespace, which is always safe.
const LIST_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The catalog's cache. Cheap to clone.
#[derive(Clone)]
pub struct BookCache {
    cache: Cache,
    settings: Arc<CacheSettings>,
    books: Arc<SingleFlight<BookFlight>>,
    pages: Arc<SingleFlight<PageFlight>>,
}

impl BookCache {
    pub fn new(cache: Cache, settings: CacheSettings) -> BookCache {
        if cache.is_enabled() {
            // At 0 from the start, so `rate()` sees the first one.
            metrics::counter!("bookstore_cache_unknown_commits_total").increment(0);
        }
        BookCache {
            cache,
            settings: Arc::new(settings),
            books: Arc::default(),
            pages: Arc::default(),
        }
    }

    /// No ring at all: every read goes to the database.
    pub fn disabled() -> BookCache {
        BookCache::new(Cache::disabled(), CacheSettings::default())
    }

    pub fn ring(&self) -> &Cache {
        &self.cache
    }

    /// The book `id`: from the cache, else from `load` (one load per key at a time in this
    /// instance), filling the cache when that is safe.
    pub async fn book<F>(&self, id: Uuid, load: F) -> Result<Option<CachedBook>, ApiError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Loaded<Option<CachedBook>>, sqlx::Error>> + Send,
    {
        let key = book_key(id);
        let looked_at = Instant::now();
        let lookup = self.cache.get(&key).await;
        if let Lookup::Hit(bytes) = &lookup {
            if let Some(found) = decode_book(bytes) {
                return Ok(found);
            }
            tracing::warn!(%key, "undecodable cache entry; reading the database");
        }
        let fill = matches!(lookup, Lookup::Miss);
        let this = self.clone();
        let flight_key = key.clone();
        let result = self
            .books
            .run(&flight_key, move || {
                let loading = load();
                Box::pin(async move {
                    let Loaded {
                        value: found,
                        cacheable,
                    } = loading.await.map_err(Arc::new)?;
                    if fill && cacheable && this.fill_is_safe(looked_at) {
                        let (bytes, ttl) = match &found {
                            Some(book) => (encode_book(book), this.jittered(this.book_ttl())),
                            None => (
                                NOT_FOUND.to_vec(),
                                Duration::from_millis(this.settings.not_found_ttl_ms),
                            ),
                        };
                        this.cache.fill(&key, &bytes, ttl).await;
                    }
                    Ok(found)
                })
            })
            .await;
        result.map_err(shared_to_api)
    }

    /// One list page (the JSON body) for the query `canonical` (every parameter that shapes the
    /// answer), from the cache or from `load`.
    pub async fn list_page<F>(&self, canonical: &str, load: F) -> Result<Arc<[u8]>, ApiError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Loaded<Arc<[u8]>>, sqlx::Error>> + Send,
    {
        if !self.cache.is_enabled() {
            return Ok(load().await?.value);
        }
        let looked_at = Instant::now();
        let Some(token) = self.list_token().await else {
            return Ok(load().await?.value);
        };
        let key = format!("books:v1:list:{token}:{}", hex_sha256(canonical));
        let lookup = self.cache.get(&key).await;
        if let Lookup::Hit(bytes) = lookup {
            return Ok(bytes.into());
        }
        let fill = matches!(lookup, Lookup::Miss);
        let this = self.clone();
        let flight_key = key.clone();
        let result = self
            .pages
            .run(&flight_key, move || {
                let loading = load();
                Box::pin(async move {
                    let Loaded {
                        value: page,
                        cacheable,
                    } = loading.await.map_err(Arc::new)?;
                    if fill && cacheable && this.fill_is_safe(looked_at) {
                        let ttl = this.jittered(this.list_ttl());
                        this.cache.fill(&key, &page, ttl).await;
                    }
                    Ok(page)
                })
            })
            .await;
        result.map_err(shared_to_api)
    }

    /// Whether book `id` is live: from the cache, else from `load` (filled when safe; "no" only
    /// briefly). Only deleting a book changes the answer ([`BookCache::book_deleted`]); ids are
    /// never reused.
    pub async fn book_is_live<F>(&self, id: Uuid, load: F) -> Result<bool, ApiError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Loaded<bool>, sqlx::Error>> + Send,
    {
        let key = format!("{LIVE_PREFIX}{id}");
        let looked_at = Instant::now();
        let lookup = self.cache.get(&key).await;
        match &lookup {
            Lookup::Hit(bytes) if bytes.as_slice() == b"1" => return Ok(true),
            Lookup::Hit(bytes) if bytes.as_slice() == b"0" => return Ok(false),
            _ => {}
        }
        // A cached book (or "no such book") answers too, e.g. while the database is away.
        let cached = match self.cache.get(&book_key(id)).await {
            Lookup::Hit(bytes) => decode_book(&bytes).map(|found| found.is_some()),
            _ => None,
        };
        let Loaded {
            value: live,
            cacheable,
        } = match cached {
            Some(live) => Loaded::cacheable(live),
            None => load().await?,
        };
        if matches!(lookup, Lookup::Miss) && cacheable && self.fill_is_safe(looked_at) {
            let (value, ttl) = if live {
                (b"1", self.jittered(self.book_ttl()))
            } else {
                (b"0", Duration::from_millis(self.settings.not_found_ttl_ms))
            };
            self.cache.fill(&key, value, ttl).await;
        }
        Ok(live)
    }

    /// Call after deleting book `id` **has committed**: its entries (the book and whether it is
    /// live) become tombstones and every list page retires.
    pub async fn book_deleted(&self, id: Uuid) {
        if !self.cache.is_enabled() {
            return;
        }
        let hold = Duration::from_millis(self.settings.tombstone_ms);
        let live = format!("{LIVE_PREFIX}{id}");
        futures::future::join(
            self.cache.invalidate(&live, hold),
            self.books_changed(&[id]),
        )
        .await;
    }

    /// Call after a write to these books **has committed**: their entries become tombstones and
    /// every list page retires. Waits for the ring (bounded by its timeouts), so when the write's
    /// response leaves, no instance can read the old value from the cache.
    pub async fn books_changed(&self, ids: &[Uuid]) {
        if !self.cache.is_enabled() {
            return;
        }
        let hold = Duration::from_millis(self.settings.tombstone_ms);
        let token = Uuid::now_v7().to_string();
        let books = futures::future::join_all(
            ids.iter()
                .map(|id| async move { self.cache.invalidate(&book_key(*id), hold).await }),
        );
        let lists = self
            .cache
            .set_everywhere(LIST_TOKEN_KEY, token.as_bytes(), LIST_TOKEN_TTL);
        futures::future::join(books, lists).await;
        tracing::debug!(books = ids.len(), "cache invalidated after a write");
    }

    /// The current list token; a new one when none is cached; `None` when the ring cannot say.
    async fn list_token(&self) -> Option<String> {
        match self.cache.get(LIST_TOKEN_KEY).await {
            Lookup::Hit(bytes) => String::from_utf8(bytes).ok(),
            Lookup::Miss => {
                // A new namespace is always safe. If another process's token wins the NX, ours is
                // used for this one request only: nobody else will ever read pages under it.
                let token = Uuid::now_v7().to_string();
                self.cache
                    .fill(LIST_TOKEN_KEY, token.as_bytes(), LIST_TOKEN_TTL)
                    .await;
                Some(token)
            }
            Lookup::Invalidated | Lookup::Unavailable => None,
        }
    }

    /// A fill whose read began more than half a tombstone's life ago may carry a value older than
    /// a tombstone that has since expired; it is dropped.
    fn fill_is_safe(&self, looked_at: Instant) -> bool {
        looked_at.elapsed() < Duration::from_millis(self.settings.tombstone_ms / 2)
    }

    fn book_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.book_ttl_seconds.max(1))
    }

    fn list_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.list_ttl_seconds.max(1))
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let jitter = self.settings.ttl_jitter.clamp(0.0, 0.9);
        let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
        ttl.mul_f64(factor)
    }
}

/// A value read from the database for the cache, and whether it may be stored. An answer read
/// from a replica while the primary was out of reach ([`platform::db::Pools::read_primary_else_replica`])
/// is served but not stored: it may lag a write whose tombstone has already expired.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    pub cacheable: bool,
}

impl<T> Loaded<T> {
    pub fn cacheable(value: T) -> Loaded<T> {
        Loaded {
            value,
            cacheable: true,
        }
    }

    /// The value turned into what is cached (encoding may fail), keeping whether it may be.
    pub fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Loaded<U>, E> {
        Ok(Loaded {
            value: f(self.value)?,
            cacheable: self.cacheable,
        })
    }
}

fn book_key(id: Uuid) -> String {
    format!("{BOOK_PREFIX}{id}")
}

/// `<version>\n<json>`, so a hit needs no JSON parsing to produce its ETag.
fn encode_book(book: &CachedBook) -> Vec<u8> {
    let mut bytes = format!("{}\n", book.version).into_bytes();
    bytes.extend_from_slice(&book.json);
    bytes
}

/// `Some(None)`: cached "not found"; `None`: not an entry we wrote.
fn decode_book(bytes: &[u8]) -> Option<Option<CachedBook>> {
    if bytes == NOT_FOUND {
        return Some(None);
    }
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let version = std::str::from_utf8(&bytes[..newline]).ok()?.parse().ok()?;
    Some(Some(CachedBook {
        version,
        json: bytes[newline + 1..].into(),
    }))
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A database error shared by a flight, as the API error its own query would have produced.
fn shared_to_api(err: SharedDbError) -> ApiError {
    if platform::problem::is_transient(&err) {
        tracing::warn!(error = %err, "database unavailable or transaction conflict");
        return ApiError::Unavailable {
            detail: "the database is unavailable or busy; try again shortly".into(),
            retry_after: 1,
        };
    }
    ApiError::Internal(anyhow::anyhow!("database query failed: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_book_entry_round_trips_and_not_found_is_its_own_marker() {
        let book = CachedBook {
            version: 7,
            json: Arc::from(&b"{\"id\":1}"[..]),
        };
        assert_eq!(decode_book(&encode_book(&book)), Some(Some(book)));
        assert_eq!(decode_book(NOT_FOUND), Some(None));
        assert_eq!(decode_book(b"garbage"), None);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let cache = BookCache::disabled();
        for _ in 0..1000 {
            let ttl = cache.jittered(Duration::from_secs(100));
            assert!(ttl >= Duration::from_secs(90) && ttl <= Duration::from_secs(110));
        }
    }
}
