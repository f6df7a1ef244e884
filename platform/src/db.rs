//! The PostgreSQL pool. Start-up waits for the database (launch order must not matter), and the URL's
//! password never reaches a log line.

pub mod acquire;
pub mod clock;
pub mod cluster;
pub mod retry;

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// The database part of a service's config.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DbConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Upper bound of pooled connections per process.
    pub max_connections: u32,
    /// How long a request waits for a free connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// How long start-up keeps retrying an unreachable database before giving up.
    pub startup_timeout_seconds: u64,
    /// How far this process's clock may be from the database's before the process reports itself
    /// not ready ([`clock`]); below the tokens' leeway ([`crate::auth::LEEWAY_SECONDS`]). 0 turns
    /// the check off.
    pub max_clock_offset_ms: u64,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            url: String::new(),
            max_connections: 10,
            acquire_timeout_ms: 3000,
            startup_timeout_seconds: 30,
            max_clock_offset_ms: 2000,
        }
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// Whether `url` lists several hosts (`postgres://u:p@h1:p1,h2:p2/db`).
pub fn is_multi_host(url: &str) -> bool {
    cluster::member_urls(url).is_ok_and(|urls| urls.len() > 1)
}

/// The URL with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    if is_multi_host(url)
        && let Some((userinfo, rest)) = url.rsplit_once('@')
        && let Some((user, _password)) = userinfo.rsplit_once(':')
    {
        return format!("{user}:***@{rest}");
    }
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable database url>".into(),
    }
}

/// Connects, retrying until `startup_timeout_seconds` so a service may start before its database.
/// A multi-host URL (a replicated cluster) gets the cluster-aware pool's primary pool, which
/// follows failovers by itself; see [`cluster::ClusterPool`].
pub async fn connect(config: &DbConfig) -> anyhow::Result<PgPool> {
    if is_multi_host(&config.url) {
        return Ok(cluster::ClusterPool::connect(config)
            .await?
            .primary()
            .clone());
    }
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| anyhow::anyhow!("invalid database url {}: {e}", redact(&config.url)))?;
    let pool_options = acquire::pool_options(
        config.max_connections,
        Duration::from_millis(config.acquire_timeout_ms),
        None,
    );
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(config.startup_timeout_seconds);
    loop {
        match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, url = %redact(&config.url), "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                anyhow::bail!("cannot reach the database at {}: {e}", redact(&config.url))
            }
        }
    }
}

/// Where [`Pools::read_primary_else_replica`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Strong: every acknowledged write is visible.
    Primary,
    /// Eventual: a replica under the lag limit, while the primary could not be had.
    Replica,
}

/// A service's pools when it also reads in the eventual model: writes and strong reads go to
/// [`Pools::primary`]; [`Pools::eventual`] is a lagging-but-bounded replica on a cluster and the same
/// single pool otherwise, so callers need not know which they run on.
#[derive(Clone)]
pub struct Pools {
    primary: PgPool,
    cluster: Option<cluster::ClusterPool>,
    /// [`DbConfig::max_clock_offset_ms`]; `None` when off.
    max_clock_offset: Option<Duration>,
}

impl Pools {
    /// Like [`connect`], keeping the cluster-aware pool (when the URL lists several hosts) for
    /// eventual reads.
    pub async fn connect(config: &DbConfig) -> anyhow::Result<Pools> {
        // At 0 from the start on any server, so `rate()` sees the first fallback (only a cluster
        // ever falls back).
        metrics::counter!("bookstore_pg_replica_fallback_reads_total").increment(0);
        if is_multi_host(&config.url) {
            let cluster = cluster::ClusterPool::connect(config).await?;
            return Ok(Pools {
                primary: cluster.primary().clone(),
                cluster: Some(cluster),
                max_clock_offset: None,
            }
            .with_max_clock_offset(config.max_clock_offset_ms));
        }
        Ok(Pools::single(connect(config).await?).with_max_clock_offset(config.max_clock_offset_ms))
    }

    /// One plain pool for everything (a single server), with the default clock offset limit.
    pub fn single(pool: PgPool) -> Pools {
        Pools {
            primary: pool,
            cluster: None,
            max_clock_offset: None,
        }
        .with_max_clock_offset(DbConfig::default().max_clock_offset_ms)
    }

    /// Sets [`DbConfig::max_clock_offset_ms`] (0: no clock check).
    pub fn with_max_clock_offset(mut self, ms: u64) -> Pools {
        self.max_clock_offset = (ms > 0).then(|| Duration::from_millis(ms));
        self
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Chosen per call, so it follows lag and failovers (see [`cluster::ClusterPool::eventual`]).
    pub fn eventual(&self) -> &PgPool {
        match &self.cluster {
            Some(cluster) => cluster.eventual(),
            None => &self.primary,
        }
    }

    /// Runs `read` in the eventual model: on the best replica under the lag limit, and when that
    /// fails for want of a connection (a replica that died before the probe noticed), on the next
    /// one, and last on the primary ([`cluster::ClusterPool::eventual_candidates`]). Any other
    /// error is returned at once. On a single server: the one pool.
    pub async fn read_eventually<T, F, Fut>(&self, mut read: F) -> Result<T, sqlx::Error>
    where
        F: FnMut(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let candidates: Vec<PgPool> = match &self.cluster {
            Some(cluster) => cluster.eventual_candidates().into_iter().cloned().collect(),
            None => return read(self.primary.clone()).await,
        };
        let mut last = sqlx::Error::PoolClosed;
        for pool in candidates {
            match read(pool).await {
                Ok(value) => return Ok(value),
                Err(err) if retry::classify(&err) == retry::ErrorClass::ConnectionLost => {
                    let class = retry::ErrorClass::ConnectionLost.as_str();
                    metrics::counter!("bookstore_pg_pool_errors_total", "class" => class)
                        .increment(1);
                    tracing::warn!(error = %err, "eventual read failed on one member; trying the next");
                    last = err;
                }
                Err(err) => return Err(err),
            }
        }
        Err(last)
    }

    /// Runs `read` on the primary — strong: it sees every acknowledged write — and, when the
    /// primary cannot be had (no primary answers the probe, or the connection to it is lost: a
    /// failover in progress), in the eventual model on a replica under the lag limit
    /// ([`Pools::read_eventually`]). The answer says which, so a caller can decline to cache an
    /// eventual answer. For data whose readers tolerate bounded staleness while the primary is
    /// away (browsing the catalog), not for money or stock.
    pub async fn read_primary_else_replica<T, F, Fut>(
        &self,
        mut read: F,
    ) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: FnMut(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let Some(cluster) = &self.cluster else {
            return Ok((read(self.primary.clone()).await?, ReadFrom::Primary));
        };
        if !cluster.topology().writes_refused {
            match read(self.primary.clone()).await {
                Ok(value) => return Ok((value, ReadFrom::Primary)),
                Err(err) if retry::classify(&err) == retry::ErrorClass::ConnectionLost => {
                    tracing::warn!(error = %err, "the primary is out of reach; reading a replica");
                }
                Err(err) => return Err(err),
            }
        }
        metrics::counter!("bookstore_pg_replica_fallback_reads_total").increment(1);
        Ok((self.read_eventually(read).await?, ReadFrom::Replica))
    }

    /// Readiness: on a single server, the database answers a trivial query; on a cluster, the
    /// primary or a replica under the lag limit answers the pool's probe
    /// ([`cluster::ClusterPool::serving`]) — an instance that can still serve eventual reads
    /// while the primary fails over stays in rotation, and answers writes 503 + `Retry-After`.
    /// Either way, this process's clock must be within the limit of the database's
    /// ([`clock`]): a skewed instance would refuse valid tokens. On a cluster the clock is the
    /// one the last probe round read over the probe's own connections: a pooled connection to a
    /// server that has just died (idle for under a second, so handed out unpinged) failed the
    /// check before while the instance was serving (a flaky readiness with the primary down).
    pub async fn ready(&self) -> Result<(), String> {
        let offset = match &self.cluster {
            Some(cluster) => {
                cluster.serving()?;
                cluster.topology().clock
            }
            None if self.max_clock_offset.is_some() => Some(
                clock::measure(&self.primary)
                    .await
                    .map_err(|e| format!("database: {e}"))?,
            ),
            None => return ping(&self.primary).await,
        };
        match (self.max_clock_offset, offset) {
            (Some(max), Some(offset)) => offset.within(max),
            _ => Ok(()),
        }
    }

    /// The cluster as this process's pool sees it (its last probe round); `None` on a single
    /// server. For tests that must wait for the pool's view of a change, not only for the change.
    pub fn topology(&self) -> Option<cluster::Topology> {
        self.cluster.as_ref().map(cluster::ClusterPool::topology)
    }

    /// [`Pools::ready`] as the server's readiness check.
    pub fn ready_check(&self) -> crate::server::ReadyCheck {
        let pools = self.clone();
        std::sync::Arc::new(move || {
            let pools = pools.clone();
            Box::pin(async move { pools.ready().await })
        })
    }
}

/// Readiness: the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("database: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        let red = redact("postgres://books:s3cret@127.0.0.1:5432/books");
        assert!(!red.contains("s3cret"));
        assert!(red.contains("books:***@127.0.0.1:5432/books"), "{red}");
        let many = redact("postgres://books:s3cret@127.0.0.1:1,127.0.0.1:2/books");
        assert_eq!(many, "postgres://books:***@127.0.0.1:1,127.0.0.1:2/books");
    }
}
