//! One Redis node of the ring: its connection, its breaker and its way back in.
//!
//! Only the health loop ([`Node::check`]) ever opens a connection. A request that finds the node
//! failing (a dropped connection at once, or `eject_after_failures` timeouts in a row) drops the
//! connection, which ejects the node: the ring is rebuilt without it and its keys re-map to the
//! others. The health loop then reconnects and, because the node may hold entries written before a
//! change this process invalidated elsewhere (or its AOF may have brought back old ones after a
//! restart), runs `FLUSHDB` on the cache database *before* the node rejoins the ring. A restarted
//! Redis always breaks the old TCP connection, so no request can reach a restarted node without
//! passing through that flush.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

/// A node's live state; shared by requests (read) and the health loop (write).
pub(crate) struct Node {
    /// `host:port`, the node's name on the ring and in metrics.
    pub(crate) name: String,
    client: Option<redis::Client>,
    conn: RwLock<Option<MultiplexedConnection>>,
    /// Failures (timeouts) in a row since the last success.
    failures: AtomicU32,
    /// Set by any failure: the next connection must flush before the node is used.
    must_flush: AtomicBool,
}

/// What a request learned about a node from one operation.
pub(crate) enum Outcome {
    Ok,
    /// The node answered too slowly: counts towards ejection.
    Slow,
    /// The connection is gone or refused: eject at once.
    Broken,
    /// An error about the command, not the node (e.g. a wrong type): the node is fine.
    Refused,
}

impl Outcome {
    pub(crate) fn of(err: &RedisError) -> Outcome {
        if err.is_timeout() {
            Outcome::Slow
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
        {
            Outcome::Broken
        } else {
            Outcome::Refused
        }
    }
}

impl Node {
    pub(crate) fn new(name: &str, database: u8) -> Node {
        let client = redis::Client::open(format!("redis://{name}/{database}"))
            .map_err(|e| tracing::error!(node = name, error = %e, "invalid cache node address"))
            .ok();
        Node {
            name: name.to_owned(),
            client,
            conn: RwLock::new(None),
            failures: AtomicU32::new(0),
            must_flush: AtomicBool::new(false),
        }
    }

    /// The connection, when the node is in the ring.
    pub(crate) fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_up(&self) -> bool {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Applies what one operation learned; true when this ejected the node (the ring must be
    /// rebuilt).
    pub(crate) fn record(&self, outcome: Outcome, eject_after: u32) -> bool {
        match outcome {
            Outcome::Ok | Outcome::Refused => {
                self.failures.store(0, Ordering::Relaxed);
                false
            }
            Outcome::Slow => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                failures >= eject_after.max(1) && self.eject("timeouts")
            }
            Outcome::Broken => self.eject("connection lost"),
        }
    }

    /// Drops the connection so the node leaves the ring; true if it was in it.
    pub(crate) fn eject(&self, why: &str) -> bool {
        self.must_flush.store(true, Ordering::SeqCst);
        let was_up = self
            .conn
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some();
        if was_up {
            tracing::warn!(node = %self.name, reason = why, "cache node ejected; its keys re-map to the others");
            metrics::counter!("bookstore_cache_ejections_total", "node" => self.name.clone())
                .increment(1);
            metrics::gauge!("bookstore_cache_node_up", "node" => self.name.clone()).set(0.0);
        }
        was_up
    }

    /// One health round: ping a node in the ring (ejecting it on failure), or try to bring an
    /// ejected one back (flushing it first). True when membership changed.
    pub(crate) async fn check(&self, connect_timeout: Duration, op_timeout: Duration) -> bool {
        if let Some(mut conn) = self.connection() {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            return match tokio::time::timeout(op_timeout, ping).await {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => self.record(Outcome::of(&e), 1),
                Err(_) => self.record(Outcome::Slow, 1),
            };
        }
        let Some(client) = &self.client else {
            return false;
        };
        match self.admit(client, connect_timeout, op_timeout).await {
            Ok(conn) => {
                self.failures.store(0, Ordering::Relaxed);
                *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                metrics::gauge!("bookstore_cache_node_up", "node" => self.name.clone()).set(1.0);
                tracing::info!(node = %self.name, "cache node joined the ring");
                true
            }
            Err(e) => {
                // Never reached, or failed on the way in: whatever it holds is suspect from now on.
                self.must_flush.store(true, Ordering::SeqCst);
                tracing::debug!(node = %self.name, error = %e, "cache node still unavailable");
                false
            }
        }
    }

    /// Connects, and flushes the cache database when this node failed since it was last used.
    async fn admit(
        &self,
        client: &redis::Client,
        connect_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(op_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.must_flush.load(Ordering::SeqCst) {
            // A flush of a large database can take longer than a read: give it the connect budget.
            let cmd = redis::cmd("FLUSHDB");
            let flush = cmd.query_async::<String>(&mut conn);
            tokio::time::timeout(connect_timeout.max(op_timeout), flush)
                .await
                .map_err(|_| {
                    RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "FLUSHDB timed out",
                    ))
                })??;
            self.must_flush.store(false, Ordering::SeqCst);
            metrics::counter!("bookstore_cache_flushes_total", "node" => self.name.clone())
                .increment(1);
            tracing::info!(node = %self.name, "cache node flushed before rejoining the ring");
        } else {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
        }
        Ok(conn)
    }
}
