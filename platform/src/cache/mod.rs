//! The Redis cache ring: client-side consistent hashing over the configured nodes, a breaker per node,
//! and operations that never fail the caller.
//!
//! - **Ownership**: [`ring::Ring`] (hashring, virtual nodes, explicit key bytes) over the nodes in
//!   the ring right now; every process configured with the same node list agrees on owners.
//! - **Failures**: every operation has a short timeout. A node whose connection breaks is ejected at
//!   once, one that times out `eject_after_failures` times in a row too; its keys re-map to the
//!   others. A health loop pings members and brings ejected nodes back, **flushing them first**
//!   (see [`node`]), so a returning node cannot serve an entry that was invalidated while it was away.
//! - **Reads never fail because of the cache**: [`Cache::get`] answers [`Lookup::Unavailable`] on
//!   any error and the caller reads the database.
//! - **Invalidation** writes a short-lived *tombstone* on every node in the ring, not only the owner,
//!   so that a fill racing the write loses wherever it lands (two processes may briefly disagree on
//!   membership while one has ejected a node the other still uses). Fills are `SET … NX`, so a
//!   tombstone makes them no-ops until it expires. docs/CACHE.md has the full argument.
//!
//! Metrics (Prometheus): `bookstore_cache_requests_total{result=hit|miss|error}`,
//! `bookstore_cache_ejections_total{node}`, `bookstore_cache_flushes_total{node}`,
//! `bookstore_cache_node_up{node}`, `bookstore_cache_invalidation_errors_total{node}`.

mod node;
pub mod ring;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use node::{Node, Outcome};
use ring::Ring;

/// The value of a tombstone. Cached values never start with a NUL byte (callers store JSON/text).
const TOMBSTONE: &[u8] = b"\0tombstone";

/// Where the cache nodes are and how patient to be with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// The Redis nodes as `host:port`, in the same order in every process (they name the ring's
    /// points). Empty: no cache, every read goes to the database.
    pub nodes: Vec<String>,
    /// The Redis database (index) holding cache entries; `FLUSHDB` empties only this one, so other
    /// data on the same nodes (the ratings stream lives in another database) survives a flush.
    pub database: u8,
    /// Points per node on the ring (at least 100 keeps the shares within a few percent).
    pub virtual_nodes: u32,
    /// The most one cache operation may take before the caller goes on without it.
    pub op_timeout_ms: u64,
    /// The most connecting to a node (and flushing it on the way in) may take.
    pub connect_timeout_ms: u64,
    /// How often members are pinged and ejected nodes retried.
    pub health_interval_ms: u64,
    /// Timeouts in a row that eject a node (a broken connection ejects at once).
    pub eject_after_failures: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            nodes: Vec::new(),
            database: 0,
            virtual_nodes: ring::DEFAULT_VIRTUAL_NODES,
            op_timeout_ms: 100,
            connect_timeout_ms: 300,
            health_interval_ms: 250,
            eject_after_failures: 3,
        }
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The cached value.
    Hit(Vec<u8>),
    /// Nothing cached: read the database, then [`Cache::fill`].
    Miss,
    /// Recently invalidated (a tombstone): read the database, do not fill.
    Invalidated,
    /// The cache could not answer: read the database (a fill would most likely fail too).
    Unavailable,
}

/// The ring client. Cheap to clone; every clone shares the nodes and the health loop.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    names: Vec<String>,
    nodes: Vec<Node>,
    /// The ring over the nodes that are up; rebuilt on every membership change.
    ring: RwLock<Arc<Ring>>,
    op_timeout: Duration,
}

impl Cache {
    /// Builds the ring and starts its health loop (until `stop`), after one round of connecting so
    /// the nodes that answer are in the ring from the first request. Never fails: unreachable nodes
    /// stay out until they answer.
    pub async fn start(config: CacheConfig, stop: CancellationToken) -> Cache {
        let names = config.nodes.clone();
        register_series(&names);
        let nodes = names
            .iter()
            .map(|name| Node::new(name, config.database))
            .collect();
        let cache = Cache {
            inner: Arc::new(Inner {
                ring: RwLock::new(Arc::new(Ring::new(&names, &[], config.virtual_nodes))),
                op_timeout: Duration::from_millis(config.op_timeout_ms.max(1)),
                names,
                nodes,
                config,
            }),
        };
        cache.health_round().await;
        let background = cache.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(background.inner.config.health_interval_ms.max(10));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => background.health_round().await,
                }
            }
        });
        cache
    }

    /// A cache with no nodes: every read is a miss that is not filled.
    pub fn disabled() -> Cache {
        Cache {
            inner: Arc::new(Inner {
                config: CacheConfig::default(),
                names: Vec::new(),
                nodes: Vec::new(),
                ring: RwLock::new(Arc::new(Ring::new(&[], &[], 1))),
                op_timeout: Duration::from_millis(1),
            }),
        }
    }

    /// Whether any node is configured.
    pub fn is_enabled(&self) -> bool {
        !self.inner.nodes.is_empty()
    }

    /// The nodes in the ring right now (`host:port`).
    pub fn members(&self) -> Vec<String> {
        self.ring()
            .members()
            .iter()
            .filter_map(|&i| self.inner.names.get(i).cloned())
            .collect()
    }

    /// The node owning `key` right now, if any is up.
    pub fn owner(&self, key: &str) -> Option<String> {
        let owner = self.ring().owner(key.as_bytes())?;
        self.inner.names.get(owner).cloned()
    }

    /// Reads `key` from its owner.
    pub async fn get(&self, key: &str) -> Lookup {
        let lookup = match self
            .on_owner(key, |mut conn| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await
        {
            Some(Ok(Some(value))) if value == TOMBSTONE => Lookup::Invalidated,
            Some(Ok(Some(value))) => Lookup::Hit(value),
            Some(Ok(None)) => Lookup::Miss,
            Some(Err(())) | None => Lookup::Unavailable,
        };
        let result = match &lookup {
            Lookup::Hit(_) => "hit",
            Lookup::Miss | Lookup::Invalidated => "miss",
            Lookup::Unavailable if !self.is_enabled() => return lookup,
            Lookup::Unavailable => "error",
        };
        metrics::counter!("bookstore_cache_requests_total", "result" => result).increment(1);
        lookup
    }

    /// Reads `key` from its owner, then from every other node in the ring until one has it: for
    /// values written with [`set_everywhere`](Self::set_everywhere) that must survive the owner
    /// changing (a node returning empty after its flush becomes the owner again).
    pub async fn get_anywhere(&self, key: &str) -> Lookup {
        let first = self.get(key).await;
        if matches!(first, Lookup::Hit(_)) {
            return first;
        }
        let ring = self.ring();
        let owner = ring.owner(key.as_bytes());
        for &index in ring.members() {
            if Some(index) == owner {
                continue;
            }
            let node = &self.inner.nodes[index];
            let found = self
                .on_node(node, |mut conn| async move {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                })
                .await;
            if let Some(Ok(Some(value))) = found
                && value != TOMBSTONE
            {
                return Lookup::Hit(value);
            }
        }
        first
    }

    /// Stores `value` under `key` for `ttl` unless the key exists (a value, or a tombstone left by
    /// a recent invalidation): a fill never overwrites, so it cannot undo an invalidation.
    pub async fn fill(&self, key: &str, value: &[u8], ttl: Duration) {
        let ms = ttl.as_millis().max(1) as u64;
        self.on_owner(key, |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn)
                .await
        })
        .await;
    }

    /// Replaces `key` on every node in the ring with a tombstone that lives `hold`: readers miss
    /// and read the database, and fills are refused until it expires. Waits for every node (each
    /// bounded by the operation timeout); a node that fails here is ejected, so it is flushed
    /// before this process uses it again.
    pub async fn invalidate(&self, key: &str, hold: Duration) {
        self.set_everywhere(key, TOMBSTONE, hold).await;
    }

    /// Writes `value` under `key` on every node in the ring (for small shared values that must not
    /// differ between nodes, like a version token), with the same failure handling as
    /// [`invalidate`](Self::invalidate).
    pub async fn set_everywhere(&self, key: &str, value: &[u8], ttl: Duration) {
        let ms = ttl.as_millis().max(1) as u64;
        let ring = self.ring();
        let writes = ring.members().iter().map(|&index| async move {
            let node = &self.inner.nodes[index];
            let ok = self
                .on_node(node, |mut conn| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("PX")
                        .arg(ms)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                })
                .await
                .is_some_and(|r| r.is_ok());
            if !ok {
                metrics::counter!("bookstore_cache_invalidation_errors_total", "node" => node.name.clone())
                    .increment(1);
                // It may still hold the old entry: out of the ring until flushed.
                if node.eject("an invalidation failed") {
                    self.rebuild_ring();
                }
            }
        });
        join_all(writes).await;
    }

    fn ring(&self) -> Arc<Ring> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `op` on the owner of `key`: `None` when no node is up, `Some(Err(()))` when it failed
    /// (already recorded against the node).
    async fn on_owner<T, F, Fut>(&self, key: &str, op: F) -> Option<Result<T, ()>>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let owner = self.ring().owner(key.as_bytes())?;
        self.on_node(&self.inner.nodes[owner], op).await
    }

    async fn on_node<T, F, Fut>(&self, node: &Node, op: F) -> Option<Result<T, ()>>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = node.connection()?;
        let eject_after = self.inner.config.eject_after_failures;
        let (result, outcome) = match tokio::time::timeout(self.inner.op_timeout, op(conn)).await {
            Ok(Ok(value)) => (Ok(value), Outcome::Ok),
            Ok(Err(e)) => {
                tracing::debug!(node = %node.name, error = %e, "cache operation failed");
                (Err(()), Outcome::of(&e))
            }
            Err(_) => (Err(()), Outcome::Slow),
        };
        if node.record(outcome, eject_after) {
            self.rebuild_ring();
        }
        Some(result)
    }

    async fn health_round(&self) {
        let connect = Duration::from_millis(self.inner.config.connect_timeout_ms.max(1));
        let op = self.inner.op_timeout.max(Duration::from_millis(50));
        let changed = join_all(self.inner.nodes.iter().map(|n| n.check(connect, op))).await;
        if changed.into_iter().any(|c| c) {
            self.rebuild_ring();
        }
    }

    fn rebuild_ring(&self) {
        let members: Vec<usize> = (0..self.inner.nodes.len())
            .filter(|&i| self.inner.nodes[i].is_up())
            .collect();
        let ring = Ring::new(&self.inner.names, &members, self.inner.config.virtual_nodes);
        *self
            .inner
            .ring
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        metrics::gauge!("bookstore_cache_ring_members").set(members.len() as f64);
    }
}

/// Creates the cache's counters at 0 (and every node down until it answers), so a dashboard's
/// `rate()` sees the first hit, ejection or flush instead of a series that appears at 1.
fn register_series(names: &[String]) {
    if names.is_empty() {
        return;
    }
    for result in ["hit", "miss", "error"] {
        metrics::counter!("bookstore_cache_requests_total", "result" => result).increment(0);
    }
    for name in names {
        let node = name.clone();
        metrics::counter!("bookstore_cache_ejections_total", "node" => node.clone()).increment(0);
        metrics::counter!("bookstore_cache_flushes_total", "node" => node.clone()).increment(0);
        metrics::counter!("bookstore_cache_invalidation_errors_total", "node" => node.clone())
            .increment(0);
        metrics::gauge!("bookstore_cache_node_up", "node" => node).set(0.0);
    }
    metrics::gauge!("bookstore_cache_ring_members").set(0.0);
}

/// Empties the cache database of one node (`bookstore up` does this when it starts the nodes, so a
/// platform never starts on entries its previous run may have left stale).
pub async fn flush_node(node: &str, database: u8, timeout: Duration) -> anyhow::Result<()> {
    let client = redis::Client::open(format!("redis://{node}/{database}"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("FLUSHDB")
        .query_async::<String>(&mut conn)
        .await?;
    Ok(())
}
