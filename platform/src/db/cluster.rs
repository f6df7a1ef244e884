//! A cluster-aware pool: knows every member of a replicated PostgreSQL (a multi-host URL
//! `postgres://user:pw@h1:p1,h2:p2,…/db`), finds the primary with `pg_is_in_recovery()`, routes
//! writes and strong reads to it and eventual reads to replicas whose lag is under a limit. A probe
//! loop notices a failover within `probe_interval` (+ a connect timeout) and re-points the primary
//! pool; a connection that lands on a replica is refused, so no write ever reaches a standby.
//! On a cluster every connection commits with `synchronous_commit = remote_apply` (the strong
//! model); eventual writes opt out per transaction with [`EVENTUAL_COMMIT`].
//!
//! While no primary answers (a failover in progress), the replicas keep serving eventual reads —
//! their lag measured against the newest WAL position known to exist — and the primary pool fails
//! new connections at once instead of waiting out its acquire timeout, so writes are answered
//! "unavailable, retry" promptly rather than timing out.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use super::DbConfig;
use super::acquire::{self, Fence};
use super::clock::{self, ClockOffset};

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
    /// Rounds in a row this member let its probe time out while keeping its last state (see
    /// [`SILENT_ROUNDS_TO_DOWN`]).
    #[serde(skip)]
    pub silent_rounds: u32,
}

/// The whole cluster as the pool sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Topology {
    pub nodes: Vec<NodeState>,
    /// Primary changes seen since start.
    pub failovers: u64,
    /// The member the primary pool last connected to (kept while no primary answers).
    pub routed_to: Option<usize>,
    /// No primary answered the last probe: new primary connections fail at once.
    pub writes_refused: bool,
    /// The newest WAL position known to exist, as a byte position: the primary's, or while none
    /// answers, the furthest of the last primary's and the replicas'. Replicas' lag is measured
    /// against it.
    pub newest_lsn: Option<i64>,
    /// This process's clock against the database's, read by the last probe round (the primary's
    /// answer, else the first member's that answered); `None` when no member answered.
    pub clock: Option<ClockOffset>,
    /// When the last probe round ended.
    #[serde(skip)]
    pub probed_at: Option<tokio::time::Instant>,
}

impl Topology {
    pub fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.up && n.primary)
    }
}

/// The clock reading of a round: the primary's, else the first answer's. Every member's clock is
/// the same reference in a healthy cluster; the primary's is the one writes are stamped with.
fn round_clock<'a>(answered: impl Iterator<Item = &'a Probe> + Clone) -> Option<ClockOffset> {
    answered
        .clone()
        .find(|p| !p.in_recovery)
        .or_else(|| answered.clone().next())
        .map(|p| p.clock)
}

/// One member: where it is and a small pool for eventual reads.
struct Node {
    name: String,
    options: PgConnectOptions,
    readers: PgPool,
    /// Raised when the member's server restarted or went down (closed the probe's connection,
    /// refused a new one): its read pool's older connections are dropped unused ([`acquire`]).
    fence: Fence,
    /// The server's start time the last probe saw (`pg_postmaster_start_time()`, µs since the
    /// epoch; 0 before the first answer): a change means a restart, which closed every connection.
    started: AtomicI64,
}

/// The pool. Cheap to clone; the probe loop ends when the primary pool is closed.
#[derive(Clone)]
pub struct ClusterPool {
    primary: PgPool,
    /// Raised when the primary pool is re-pointed at another member (a failover), or the member it
    /// points at restarted or closed the probe's connection (it went down): the connections made
    /// before are dropped unused ([`acquire`]). Not when the primary merely missed a probe round
    /// by a timeout: its open connections keep serving.
    primary_fence: Fence,
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

/// Where the primary pool connects while no primary answers: a socket path that cannot exist
/// (`/dev/null` is no directory). sqlx retries a *refused* connection until the acquire timeout,
/// which would hold every write for that long; this fails at once with an I/O error, which the
/// services answer 503 + `Retry-After` (`platform::problem`, `retry::ErrorClass::ConnectionLost`).
const NO_PRIMARY_SOCKET: &str = "/dev/null/no-primary-answers";

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
            // A replica that cannot hand out a connection within a probe's connect timeout (it
            // died before the probe noticed, or is saturated) is skipped for the next candidate
            // (`Pools::read_eventually`) instead of holding the read for the whole acquire timeout.
            let acquire = Duration::from_millis(config.acquire_timeout_ms)
                .min(settings.connect_timeout)
                .max(Duration::from_millis(1));
            let fence = Fence::new();
            let readers = acquire::pool_options(
                config.max_connections.div_ceil(2).max(1),
                acquire,
                Some(fence.clone()),
            )
            .connect_lazy_with(options.clone());
            nodes.push(Node {
                name,
                options,
                readers,
                fence,
                started: AtomicI64::new(0),
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
            ..Topology::default()
        };
        let primary_fence = Fence::new();
        let primary = acquire::pool_options(
            config.max_connections,
            Duration::from_millis(config.acquire_timeout_ms),
            Some(primary_fence.clone()),
        )
        .after_connect(|conn, _| Box::pin(async move { refuse_standby(conn).await }))
        .connect_lazy_with(nodes[0].options.clone());
        let pool = ClusterPool {
            primary,
            primary_fence,
            nodes: Arc::new(nodes),
            topology: Arc::new(RwLock::new(topology)),
            settings,
        };
        let probes = pool
            .wait_for_primary(Duration::from_secs(config.startup_timeout_seconds))
            .await?;
        tokio::spawn(pool.clone().probe_loop(probes));
        Ok(pool)
    }

    /// Writes and strong reads: always the current primary.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Eventual reads: a replica whose lag is under the limit (the least lagging one, the passive
    /// member last), else the primary.
    pub fn eventual(&self) -> &PgPool {
        self.eventual_candidates()[0]
    }

    /// Where an eventual read may go, best first: the replicas under the lag limit (the least
    /// lagging first, the passive member last), then the primary pool. Never empty.
    pub fn eventual_candidates(&self) -> Vec<&PgPool> {
        let topology = self.topology();
        let mut replicas: Vec<(usize, &NodeState)> = topology
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| self.serves_eventual_reads(n))
            .collect();
        replicas.sort_by_key(|(_, n)| (n.passive, n.lag_bytes));
        replicas
            .into_iter()
            .map(|(index, _)| &self.nodes[index].readers)
            .chain(std::iter::once(&self.primary))
            .collect()
    }

    /// The replicas under the lag limit as the last probe saw them, in member order: for a reader
    /// that must pin one member and choose by its own criteria (the warehouse ETL, which reads two
    /// databases of the same member and prefers the passive one). Empty when none qualifies.
    pub fn replica_members(&self) -> Vec<NodeState> {
        self.topology()
            .nodes
            .into_iter()
            .filter(|n| self.serves_eventual_reads(n))
            .collect()
    }

    /// The read pool of one member by name (`host:port`), whatever its role: a connection from it
    /// may land on a replica or — after a failover — on the primary, so a reader that cares checks
    /// `pg_is_in_recovery()` itself. Two cluster pools over the same servers (one per database)
    /// name their members alike, which is how a reader finds both databases on one member.
    pub fn member(&self, node: &str) -> Option<&PgPool> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| &n.readers)
    }

    /// A replica that answered the last probe within the lag limits.
    fn serves_eventual_reads(&self, node: &NodeState) -> bool {
        node.up
            && !node.primary
            && node.lag_bytes <= self.settings.max_lag_bytes
            && node.lag_seconds <= self.settings.max_lag_seconds
    }

    /// Readiness on a cluster: the instance can serve requests while the primary or a replica
    /// under the lag limit answers (with no primary, eventual reads go on and writes are answered
    /// 503 + `Retry-After`); not while no member answers, or while the probe loop has stalled.
    pub fn serving(&self) -> Result<(), String> {
        let topology = self.topology();
        // A round takes an interval plus at most a connect and a query timeout; allow several.
        let stale = (self.settings.probe_interval + self.settings.connect_timeout * 2) * 5;
        match topology.probed_at {
            None => return Err("database: the cluster has not been probed yet".into()),
            Some(at) if at.elapsed() > stale => {
                return Err(format!(
                    "database: the cluster probe has not completed for {:?}",
                    at.elapsed()
                ));
            }
            Some(_) => {}
        }
        if topology.primary().is_some()
            || topology.nodes.iter().any(|n| self.serves_eventual_reads(n))
        {
            return Ok(());
        }
        let up = topology.nodes.iter().filter(|n| n.up).count();
        Err(format!(
            "database: no primary and no replica within the lag limit answers ({up} of {} members up)",
            topology.nodes.len()
        ))
    }

    /// The last probe's view.
    pub fn topology(&self) -> Topology {
        self.topology.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Probes until a primary answers; hands its probe connections on to the probe loop. (A loop
    /// that connected afresh made its first round pay every member's connect and login again,
    /// under the load of a whole platform starting: one timed-out connect to the primary, and a
    /// service that had just found it refused writes for a round.)
    async fn wait_for_primary(
        &self,
        within: Duration,
    ) -> anyhow::Result<Vec<Option<PgConnection>>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut probes: Vec<Option<PgConnection>> = Vec::new();
        probes.resize_with(self.nodes.len(), || None);
        loop {
            self.probe_all(&mut probes).await;
            if self.topology().primary().is_some() {
                return Ok(probes);
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!("no primary among {} within {within:?}", names.join(", "));
            }
            tracing::warn!("no primary PostgreSQL reachable yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn probe_loop(self, mut probes: Vec<Option<PgConnection>>) {
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
        let answers = futures_util::future::join_all(
            self.nodes
                .iter()
                .zip(probes.iter_mut())
                .map(|(node, conn)| probe(node, conn, timeout)),
        )
        .await;
        let mut topology = self.topology.write().unwrap_or_else(|e| e.into_inner());
        let newest = newest_lsn(answers.iter().flatten(), topology.newest_lsn);
        topology.newest_lsn = newest;
        let routed_to = topology.routed_to;
        for (index, ((state, answer), node)) in topology
            .nodes
            .iter_mut()
            .zip(&answers)
            .zip(self.nodes.iter())
            .enumerate()
        {
            *state = next_state(state, answer.as_ref(), newest);
            let restarted = answer.as_ref().is_ok_and(|probe| {
                let before = node.started.swap(probe.started_us, Ordering::AcqRel);
                before != 0 && before != probe.started_us
            });
            if restarted || matches!(answer, Err(Missed::Gone)) {
                // Restarted, or its server closed the probe's connection or refused a new one:
                // every pooled connection to it is dead, so none is handed out to fail a caller.
                node.fence.raise();
                if routed_to == Some(index) {
                    self.primary_fence.raise();
                }
            }
        }
        topology.clock = round_clock(answers.iter().flatten());
        self.route_writes(&mut topology);
        topology.probed_at = Some(tokio::time::Instant::now());
        record_metrics(&topology);
    }

    /// Points the primary pool at the primary the probe found, counting a change as a failover;
    /// with none, at [`NO_PRIMARY_SOCKET`], so writes fail at once until one answers again.
    fn route_writes(&self, topology: &mut Topology) {
        let Some(new) = topology.primary() else {
            if !topology.writes_refused {
                topology.writes_refused = true;
                self.primary
                    .set_connect_options(self.nodes[0].options.clone().socket(NO_PRIMARY_SOCKET));
                tracing::warn!(
                    "no primary answers: writes fail at once, eventual reads go to replicas"
                );
            }
            return;
        };
        if topology.routed_to == Some(new) && !topology.writes_refused {
            return;
        }
        if topology.routed_to.is_some_and(|old| old != new) {
            // The connections to the old primary: dead, or to a server that is no primary.
            self.primary_fence.raise();
            topology.failovers += 1;
            metrics::counter!("bookstore_pg_failovers_total").increment(1);
            tracing::warn!(primary = %self.nodes[new].name, "the primary changed; re-routing writes");
        }
        topology.routed_to = Some(new);
        topology.writes_refused = false;
        self.primary
            .set_connect_options(self.nodes[new].options.clone());
    }
}

/// Timed-out probe rounds in a row after which a member that neither answers nor closed its
/// connection counts as down (≈ 3 s at the default interval and timeout); before that it keeps
/// the state it last answered with. A member whose server closed or refused the probe's
/// connection is down at once. One timeout alone is weak evidence: on a loaded machine a probe
/// can miss its 1 s while the server serves, and treating that as down took the replica out of
/// the eventual reads (or refused writes) for a round, and with the primary gone an instance had
/// nothing left to read from.
pub const SILENT_ROUNDS_TO_DOWN: u32 = 2;

/// The newest WAL position known to exist: the primary's when one answered; else the furthest of
/// the last one known and the replicas' replayed positions. With the primary gone, nothing newer
/// can be committed (a commit waits for the synchronous standby), so a replica that has replayed
/// up to that point is as fresh as the data gets until a new primary takes writes.
fn newest_lsn<'a>(
    answered: impl Iterator<Item = &'a Probe> + Clone,
    known: Option<i64>,
) -> Option<i64> {
    if let Some(primary) = answered.clone().find(|p| !p.in_recovery) {
        return Some(primary.lsn);
    }
    answered.map(|p| p.lsn).chain(known).max()
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
    /// `pg_postmaster_start_time()` in µs since the epoch: a change is a restart.
    started_us: i64,
    /// This process's clock against the server's `clock_timestamp()`, over the probe's round trip.
    clock: ClockOffset,
}

/// What [`PROBE_SQL`] returns, in its column order.
type ProbeRow = (bool, f64, f64, bool, i64, f64);

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::float8, \
    CASE WHEN pg_is_in_recovery() AND (pg_is_wal_replay_paused() OR pg_last_wal_replay_lsn() < pg_last_wal_receive_lsn()) \
         THEN COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 ELSE 0 END, \
    COALESCE(current_setting('bookstore.nofailover', true), '') = 'on', \
    (EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000)::int8, \
    EXTRACT(EPOCH FROM clock_timestamp())::float8";

/// Why a member gave no answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Missed {
    /// Nothing within the timeout: maybe only slow, so its pooled connections are kept.
    Silent,
    /// The connection was closed or refused: the server is down or restarting.
    Gone,
}

impl Missed {
    fn of(err: &sqlx::Error) -> Missed {
        match super::retry::classify(err) {
            super::retry::ErrorClass::ConnectionLost => Missed::Gone,
            _ => Missed::Silent,
        }
    }
}

async fn probe(
    node: &Node,
    conn: &mut Option<PgConnection>,
    timeout: Duration,
) -> Result<Probe, Missed> {
    let live = match conn {
        Some(live) => live,
        None => {
            let connected =
                tokio::time::timeout(timeout, PgConnection::connect_with(&node.options))
                    .await
                    .map_err(|_| Missed::Silent)?
                    .map_err(|e| Missed::of(&e))?;
            conn.insert(connected)
        }
    };
    let sent = clock::unix_now();
    let row: Result<Result<ProbeRow, _>, _> =
        tokio::time::timeout(timeout, sqlx::query_as(PROBE_SQL).fetch_one(live)).await;
    let answer = match row {
        Ok(Ok((in_recovery, lsn, behind_seconds, passive, started_us, database))) => {
            return Ok(Probe {
                in_recovery,
                lsn: lsn as i64,
                behind_seconds,
                passive,
                started_us,
                clock: ClockOffset::from_readings(sent, database, clock::unix_now()),
            });
        }
        Ok(Err(err)) => Missed::of(&err),
        Err(_) => Missed::Silent,
    };
    *conn = None;
    Err(answer)
}

/// A member's state after a round: what it answered; when it timed out, what it last answered,
/// until [`SILENT_ROUNDS_TO_DOWN`] rounds in a row; down when its server closed the connection.
fn next_state(
    previous: &NodeState,
    answer: Result<&Probe, &Missed>,
    newest_lsn: Option<i64>,
) -> NodeState {
    match answer {
        Err(Missed::Silent)
            if previous.up && previous.silent_rounds + 1 < SILENT_ROUNDS_TO_DOWN =>
        {
            NodeState {
                silent_rounds: previous.silent_rounds + 1,
                ..previous.clone()
            }
        }
        _ => node_state(&previous.node, answer.ok(), newest_lsn),
    }
}

fn node_state(name: &str, probe: Option<&Probe>, newest_lsn: Option<i64>) -> NodeState {
    let Some(probe) = probe else {
        return NodeState {
            node: name.to_owned(),
            ..NodeState::default()
        };
    };
    let lag_bytes = match (probe.in_recovery, newest_lsn) {
        (false, _) => 0,
        (true, Some(newest)) => (newest - probe.lsn).max(0) as u64,
        // Nothing to compare with (cannot happen once the replica itself answered): untrusted.
        (true, None) => u64::MAX,
    };
    NodeState {
        node: name.to_owned(),
        up: true,
        primary: !probe.in_recovery,
        lag_bytes,
        lag_seconds: probe.behind_seconds,
        passive: probe.passive,
        silent_rounds: 0,
    }
}

fn record_metrics(topology: &Topology) {
    if let Some(clock) = topology.clock {
        metrics::gauge!("bookstore_clock_offset_seconds").set(clock.offset_seconds);
    }
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

    /// A clock reading with no offset.
    const IN_STEP: ClockOffset = ClockOffset {
        offset_seconds: 0.0,
        uncertainty_seconds: 0.0,
    };

    #[test]
    fn a_replica_lags_by_what_it_has_not_replayed_and_an_orphan_is_untrusted() {
        let replica = Probe {
            in_recovery: true,
            lsn: 900,
            behind_seconds: 0.5,
            passive: true,
            started_us: 1,
            clock: IN_STEP,
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
            started_us: 1,
            clock: IN_STEP,
        };
        assert_eq!(node_state("n", Some(&primary), Some(1000)).lag_bytes, 0);
    }

    fn replica_at(lsn: i64) -> Option<Probe> {
        Some(Probe {
            in_recovery: true,
            lsn,
            behind_seconds: 0.0,
            passive: false,
            started_us: 1,
            clock: IN_STEP,
        })
    }

    #[test]
    fn without_a_primary_replicas_lag_behind_the_newest_position_known_to_exist() {
        let primary = Some(Probe {
            in_recovery: false,
            lsn: 1000,
            behind_seconds: 0.0,
            passive: false,
            started_us: 1,
            clock: IN_STEP,
        });
        // A primary answers: its position, whatever was known before.
        assert_eq!(
            newest_lsn([primary, replica_at(900)].iter().flatten(), Some(5000)),
            Some(1000)
        );
        // It died at 1000 (last seen there); the synchronous standby replayed 1000, another 900.
        let failover = [None, replica_at(1000), replica_at(900)];
        let newest = newest_lsn(failover.iter().flatten(), Some(1000));
        assert_eq!(newest, Some(1000));
        let lags: Vec<u64> = failover
            .iter()
            .map(|p| node_state("n", p.as_ref(), newest).lag_bytes)
            .collect();
        assert_eq!(lags, [0, 0, 100]);
        // A replica further than the last primary position seen (it replayed WAL written after
        // the last probe) raises the mark: nobody is measured against a stale one.
        assert_eq!(newest_lsn(failover.iter().flatten(), Some(950)), Some(1000));
        // Nothing answers and nothing was known.
        assert_eq!(newest_lsn([None, None].iter().flatten(), None), None);
    }

    #[test]
    fn a_round_reads_the_clock_of_the_primary_else_of_the_first_member_that_answered() {
        let off_by = |seconds: f64, in_recovery: bool| {
            Some(Probe {
                in_recovery,
                clock: ClockOffset::from_readings(seconds, 0.0, seconds),
                ..replica_at(0).expect("a probe")
            })
        };
        let offset = |results: &[Option<Probe>]| {
            round_clock(results.iter().flatten()).map(|c| c.offset_seconds)
        };
        assert_eq!(offset(&[off_by(1.0, true), off_by(2.0, false)]), Some(2.0));
        assert_eq!(
            offset(&[None, off_by(3.0, true), off_by(4.0, true)]),
            Some(3.0)
        );
        assert_eq!(offset(&[None, None]), None);
    }

    #[test]
    fn a_member_that_times_out_keeps_its_state_for_a_round_and_one_that_hangs_up_is_down() {
        let answered = next_state(
            &NodeState::default(),
            Ok(&replica_at(900).expect("a probe")),
            Some(1000),
        );
        assert_eq!((answered.up, answered.lag_bytes), (true, 100));
        let silent = next_state(&answered, Err(&Missed::Silent), Some(1000));
        assert_eq!(
            silent,
            NodeState {
                silent_rounds: 1,
                ..answered.clone()
            }
        );
        let again = next_state(&silent, Err(&Missed::Silent), Some(1000));
        assert!(!again.up, "silent for {SILENT_ROUNDS_TO_DOWN} rounds");
        assert!(!next_state(&answered, Err(&Missed::Gone), Some(1000)).up);
        let back = next_state(&silent, Ok(&replica_at(1000).expect("a probe")), Some(1000));
        assert_eq!((back.up, back.silent_rounds, back.lag_bytes), (true, 0, 0));
        assert!(
            !next_state(&again, Err(&Missed::Silent), Some(1000)).up,
            "stays down"
        );
    }
}
