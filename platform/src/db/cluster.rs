//! A cluster-aware pool: knows every member of a replicated PostgreSQL (a multi-host URL
//! `postgres://user:pw@h1:p1,h2:p2,…/db`), finds the primary with `pg_is_in_recovery()`, routes
//! writes and strong reads to it and eventual reads to replicas whose lag is under a limit. A probe
//! loop notices a failover within `probe_interval` (+ a connect timeout) and re-points the primary
//! pool; a connection that lands on a replica is refused, so no write ever reaches a standby.
//! On a cluster every connection commits with `synchronous_commit = remote_apply` (the strong
//! model); eventual writes opt out per transaction with [`EVENTUAL_COMMIT`].

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::DbConfig;

/// Run first in an eventual-model write transaction: the commit waits for the local WAL flush only.
pub const EVENTUAL_COMMIT: &str = "SET LOCAL synchronous_commit = local";

/// How often each member is probed, and the lag a replica may have and still serve eventual reads.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub probe_interval: Duration,
    pub connect_timeout: Duration,
    pub max_lag_bytes: u64,
    pub max_lag_seconds: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            probe_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            max_lag_bytes: 1024 * 1024,
            max_lag_seconds: 5.0,
        }
    }
}

/// What the last probe of one member found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NodeState {
    /// `host:port`, also the `node` label of the metrics.
    pub node: String,
    pub up: bool,
    pub primary: bool,
    /// Bytes of WAL the primary has that this replica has not replayed (0 for the primary).
    pub lag_bytes: u64,
    /// Age of the last replayed transaction while replay is behind (0 when caught up).
    pub lag_seconds: f64,
    /// `bookstore.nofailover` is on: the passive member.
    pub passive: bool,
}

/// The whole cluster as the pool sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Topology {
    pub nodes: Vec<NodeState>,
    /// Primary changes seen since start.
    pub failovers: u64,
    /// The member the primary pool connects to (kept while no primary answers).
    pub routed_to: Option<usize>,
}

impl Topology {
    pub fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.up && n.primary)
    }
}

/// One member: where it is and a small pool for eventual reads.
struct Node {
    name: String,
    options: PgConnectOptions,
    readers: PgPool,
}

/// The pool. Cheap to clone; the probe loop ends when the primary pool is closed.
#[derive(Clone)]
pub struct ClusterPool {
    primary: PgPool,
    nodes: Arc<Vec<Node>>,
    topology: Arc<RwLock<Topology>>,
    settings: ProbeSettings,
}

/// The URL split into one single-host URL per member.
pub fn member_urls(url: &str) -> anyhow::Result<Vec<String>> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("a database URL starts with postgres://"))?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let urls: Vec<String> = hosts
        .split(',')
        .map(|host| format!("{scheme}://{userinfo}{host}{path}"))
        .collect();
    anyhow::ensure!(
        hosts.split(',').all(|h| !h.is_empty()),
        "the database URL has an empty host in its host list"
    );
    Ok(urls)
}

impl ClusterPool {
    /// Connects to every member, waits (up to the start-up timeout) for a primary, and starts the
    /// probe loop.
    pub async fn connect(config: &DbConfig) -> anyhow::Result<ClusterPool> {
        Self::connect_with(config, ProbeSettings::default()).await
    }

    pub async fn connect_with(
        config: &DbConfig,
        settings: ProbeSettings,
    ) -> anyhow::Result<ClusterPool> {
        let urls = member_urls(&config.url)?;
        let strong = urls.len() > 1;
        let mut nodes = Vec::new();
        for url in &urls {
            let mut options = PgConnectOptions::from_str(url)
                .map_err(|e| anyhow::anyhow!("invalid database url {}: {e}", super::redact(url)))?;
            if strong {
                options = options.options([("synchronous_commit", "remote_apply")]);
            }
            let name = format!("{}:{}", options.get_host(), options.get_port());
            let readers = PgPoolOptions::new()
                .max_connections(config.max_connections.div_ceil(2).max(1))
                .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
                .connect_lazy_with(options.clone());
            nodes.push(Node {
                name,
                options,
                readers,
            });
        }
        let topology = Topology {
            nodes: nodes
                .iter()
                .map(|n| NodeState {
                    node: n.name.clone(),
                    ..NodeState::default()
                })
                .collect(),
            failovers: 0,
            routed_to: None,
        };
        let primary = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .after_connect(|conn, _| Box::pin(async move { refuse_standby(conn).await }))
            .connect_lazy_with(nodes[0].options.clone());
        let pool = ClusterPool {
            primary,
            nodes: Arc::new(nodes),
            topology: Arc::new(RwLock::new(topology)),
            settings,
        };
        pool.wait_for_primary(Duration::from_secs(config.startup_timeout_seconds))
            .await?;
        tokio::spawn(pool.clone().probe_loop());
        Ok(pool)
    }

    /// Writes and strong reads: always the current primary.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Eventual reads: a replica whose lag is under the limit (the least lagging one, the passive
    /// member last), else the primary.
    pub fn eventual(&self) -> &PgPool {
        let topology = self.topology();
        let best = topology
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up && !n.primary)
            .filter(|(_, n)| n.lag_bytes <= self.settings.max_lag_bytes)
            .filter(|(_, n)| n.lag_seconds <= self.settings.max_lag_seconds)
            .min_by_key(|(_, n)| (n.passive, n.lag_bytes));
        match best {
            Some((index, _)) => &self.nodes[index].readers,
            None => &self.primary,
        }
    }

    /// The last probe's view.
    pub fn topology(&self) -> Topology {
        self.topology.read().map(|t| t.clone()).unwrap_or_default()
    }

    async fn wait_for_primary(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut probes: Vec<Option<PgConnection>> = Vec::new();
        probes.resize_with(self.nodes.len(), || None);
        loop {
            self.probe_all(&mut probes).await;
            if self.topology().primary().is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!("no primary among {} within {within:?}", names.join(", "));
            }
            tracing::warn!("no primary PostgreSQL reachable yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn probe_loop(self) {
        let mut probes: Vec<Option<PgConnection>> = Vec::new();
        probes.resize_with(self.nodes.len(), || None);
        while !self.primary.is_closed() {
            self.probe_all(&mut probes).await;
            tokio::time::sleep(self.settings.probe_interval).await;
        }
        for node in self.nodes.iter() {
            node.readers.close().await;
        }
    }

    /// Probes every member once (in parallel), then updates the topology, the metrics and, when
    /// the primary changed, where the primary pool connects.
    async fn probe_all(&self, probes: &mut [Option<PgConnection>]) {
        let timeout = self.settings.connect_timeout;
        let results = futures_util::future::join_all(
            self.nodes
                .iter()
                .zip(probes.iter_mut())
                .map(|(node, conn)| probe(node, conn, timeout)),
        )
        .await;
        let primary_lsn = results
            .iter()
            .flatten()
            .find(|p| !p.in_recovery)
            .map(|p| p.lsn);
        let mut topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
        for (state, result) in topology.nodes.iter_mut().zip(&results) {
            *state = node_state(&state.node, result.as_ref(), primary_lsn);
        }
        if let Some(new) = topology.primary()
            && topology.routed_to != Some(new)
        {
            if topology.routed_to.replace(new).is_some() {
                topology.failovers += 1;
                metrics::counter!("bookstore_pg_failovers_total").increment(1);
                tracing::warn!(primary = %self.nodes[new].name, "the primary changed; re-routing writes");
            }
            self.primary
                .set_connect_options(self.nodes[new].options.clone());
        }
        record_metrics(&topology);
    }
}

/// What one probe query returned.
#[derive(Debug, Clone)]
struct Probe {
    in_recovery: bool,
    /// The primary's current LSN, or a replica's replayed LSN (as a byte position).
    lsn: i64,
    /// The replayed-transaction age while replay is behind what was received.
    behind_seconds: f64,
    passive: bool,
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::float8, \
    CASE WHEN pg_is_in_recovery() AND (pg_is_wal_replay_paused() OR pg_last_wal_replay_lsn() < pg_last_wal_receive_lsn()) \
         THEN COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 ELSE 0 END, \
    COALESCE(current_setting('bookstore.nofailover', true), '') = 'on'";

async fn probe(node: &Node, conn: &mut Option<PgConnection>, timeout: Duration) -> Option<Probe> {
    if conn.is_none() {
        let connected =
            tokio::time::timeout(timeout, PgConnection::connect_with(&node.options)).await;
        *conn = connected.ok().and_then(Result::ok);
    }
    let live = conn.as_mut()?;
    let row: Result<Result<(bool, f64, f64, bool), _>, _> =
        tokio::time::timeout(timeout, sqlx::query_as(PROBE_SQL).fetch_one(live)).await;
    match row {
        Ok(Ok((in_recovery, lsn, behind_seconds, passive))) => Some(Probe {
            in_recovery,
            lsn: lsn as i64,
            behind_seconds,
            passive,
        }),
        _ => {
            *conn = None;
            None
        }
    }
}

fn node_state(name: &str, probe: Option<&Probe>, primary_lsn: Option<i64>) -> NodeState {
    let Some(probe) = probe else {
        return NodeState {
            node: name.to_owned(),
            ..NodeState::default()
        };
    };
    let lag_bytes = match (probe.in_recovery, primary_lsn) {
        (false, _) => 0,
        (true, Some(primary)) => (primary - probe.lsn).max(0) as u64,
        // No primary to compare with: treat the replica as too far behind to trust.
        (true, None) => u64::MAX,
    };
    NodeState {
        node: name.to_owned(),
        up: true,
        primary: !probe.in_recovery,
        lag_bytes,
        lag_seconds: probe.behind_seconds,
        passive: probe.passive,
    }
}

fn record_metrics(topology: &Topology) {
    for node in &topology.nodes {
        let label = node.node.clone();
        metrics::gauge!("bookstore_pg_node_up", "node" => label.clone())
            .set(f64::from(u8::from(node.up)));
        metrics::gauge!("bookstore_pg_node_is_primary", "node" => label.clone())
            .set(f64::from(u8::from(node.up && node.primary)));
        if node.up && !node.primary {
            metrics::gauge!("bookstore_pg_replication_lag_bytes", "node" => label.clone())
                .set(node.lag_bytes.min(1 << 52) as f64);
            metrics::gauge!("bookstore_pg_replication_lag_seconds", "node" => label)
                .set(node.lag_seconds);
        }
    }
}

/// Refuses a connection that reached a standby (a stale address after a failover): the pool then
/// reports an error the caller may retry, instead of failing the write later with 25006.
async fn refuse_standby(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    if standby {
        return Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "reached a standby, not the primary (failover in progress)",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_becomes_one_url_per_member() -> anyhow::Result<()> {
        let urls =
            member_urls("postgres://books:pw@127.0.0.1:5001,127.0.0.1:5002/books?sslmode=disable")?;
        assert_eq!(
            urls,
            [
                "postgres://books:pw@127.0.0.1:5001/books?sslmode=disable",
                "postgres://books:pw@127.0.0.1:5002/books?sslmode=disable"
            ]
        );
        assert_eq!(member_urls("postgres://u@h:1/db")?, ["postgres://u@h:1/db"]);
        assert!(member_urls("postgres://u:p@h:1,,h:2/db").is_err());
        assert!(member_urls("h:1/db").is_err());
        Ok(())
    }

    #[test]
    fn a_replica_lags_by_what_it_has_not_replayed_and_an_orphan_is_untrusted() {
        let replica = Probe {
            in_recovery: true,
            lsn: 900,
            behind_seconds: 0.5,
            passive: true,
        };
        let state = node_state("n", Some(&replica), Some(1000));
        assert_eq!(
            (state.up, state.primary, state.lag_bytes, state.passive),
            (true, false, 100, true)
        );
        assert_eq!(node_state("n", Some(&replica), None).lag_bytes, u64::MAX);
        assert!(!node_state("n", None, Some(1000)).up);
        let primary = Probe {
            in_recovery: false,
            lsn: 1000,
            behind_seconds: 0.0,
            passive: false,
        };
        assert_eq!(node_state("n", Some(&primary), Some(1000)).lag_bytes, 0);
    }
}
