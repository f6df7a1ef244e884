//! The highly available PostgreSQL `bookstore up` runs by default and cluster tests start: one etcd
//! and Patroni members — one primary and streaming replicas on loopback, synchronous mode on, the
//! last replica a passive member (never promoted, never synchronous; backups read from it).
//! Members run as the database user like the single server; stopping asks every Patroni to stop its
//! PostgreSQL, then stops leftover postmasters through `postmaster.pid` (they are not Patroni's children).

pub mod etcd;
pub mod launch;
pub mod patroni;
pub mod topology;

pub use launch::{ClusterInfo, MemberInfo};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use crate::os_user::{self, RunAs};
use crate::postgres::{PgBinaries, SUPERUSER};
use crate::process::Supervised;
use patroni::{MemberSpec, MemberView};

/// The Patroni scope (cluster name) of every cluster we start.
pub const SCOPE: &str = "bookstore";

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Holds `etcd/`, one directory per member and `ports.json`.
    pub dir: PathBuf,
    /// Members in all: one primary and `members - 1` replicas (the last of them passive when ≥ 3).
    pub members: usize,
    pub superuser_password: String,
    pub replication_password: String,
    pub run_as: Option<RunAs>,
    pub durable: bool,
    /// Sent to etcd and every Patroni if we die first (Patroni then stops its PostgreSQL).
    pub on_parent_death: Signal,
}

/// One running member.
pub struct Member {
    pub spec: MemberSpec,
    pub process: Supervised,
}

impl Member {
    /// The postmaster's PID from `postmaster.pid`, when it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        postmaster_pid(&self.spec.data_dir())
    }
}

/// A running cluster. Dropping it without [`stop`](Cluster::stop) kills everything at once.
pub struct Cluster {
    pub etcd: etcd::Etcd,
    pub members: Vec<Member>,
    superuser_password: String,
    http: reqwest::Client,
}

/// Ports kept between runs, so a restarted cluster keeps its addresses (and etcd its peer URL).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    /// (PostgreSQL, REST API) per member.
    members: Vec<(u16, u16)>,
}

impl Ports {
    fn load_or_pick(dir: &Path, members: usize) -> anyhow::Result<Ports> {
        let path = dir.join("ports.json");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(ports) = serde_json::from_slice::<Ports>(&bytes)
            && ports.members.len() == members
            && ports.all().iter().all(|p| crate::ports::is_free(*p))
        {
            return Ok(ports);
        }
        let mut picked = crate::ports::free_ports(2 + 2 * members)?.into_iter();
        let mut next = || {
            picked
                .next()
                .ok_or_else(|| anyhow::anyhow!("too few free ports"))
        };
        let ports = Ports {
            etcd_client: next()?,
            etcd_peer: next()?,
            members: (0..members)
                .map(|_| Ok((next()?, next()?)))
                .collect::<anyhow::Result<_>>()?,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&ports)?)?;
        Ok(ports)
    }

    fn all(&self) -> Vec<u16> {
        let mut all = vec![self.etcd_client, self.etcd_peer];
        all.extend(self.members.iter().flat_map(|(pg, rest)| [*pg, *rest]));
        all
    }
}

/// Member names: `pg-1` … `pg-n`.
pub fn member_name(index: usize) -> String {
    format!("pg-{}", index + 1)
}

/// Starts etcd, then the first member (which initialises a new cluster) and, once it leads, the
/// replicas together; returns when every replica streams and one is the synchronous standby.
/// `on_step` hears what is happening, for a progress bar.
pub async fn start(
    options: &ClusterOptions,
    on_step: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Cluster> {
    anyhow::ensure!(options.members >= 2, "a cluster needs at least two members");
    let bins = PgBinaries::locate()?;
    let patroni_bin = patroni::locate()?;
    let etcd_bin = etcd::locate()?;
    std::fs::create_dir_all(&options.dir)?;
    os_user::make_reachable(&options.dir, options.run_as)?;
    let ports = Ports::load_or_pick(&options.dir, options.members)?;
    let specs = member_specs(options, &ports, &bins);
    for spec in &specs {
        stop_leftover_postmaster(&spec.data_dir()).await;
    }
    on_step("starting etcd");
    let etcd = etcd::start(
        &etcd_bin,
        &etcd::EtcdOptions {
            data_dir: options.dir.join("etcd"),
            log_file: options.dir.join("etcd.log"),
            client_port: ports.etcd_client,
            peer_port: ports.etcd_peer,
            on_parent_death: options.on_parent_death,
        },
    )
    .await?;
    let mut cluster = Cluster {
        etcd,
        members: Vec::new(),
        superuser_password: options.superuser_password.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?,
    };
    let fresh = !specs[0].data_dir().join("PG_VERSION").is_file();
    let spawn = |spec: &MemberSpec| {
        patroni::spawn(&patroni_bin, spec, options.run_as, options.on_parent_death).map(|process| {
            Member {
                spec: spec.clone(),
                process,
            }
        })
    };
    if fresh {
        on_step("initialising the primary (Patroni)");
        cluster.members.push(spawn(&specs[0])?);
        cluster.wait_for_leader(Duration::from_secs(90)).await?;
        on_step("cloning the replicas");
        for spec in &specs[1..] {
            cluster.members.push(spawn(spec)?);
        }
    } else {
        on_step("starting the Patroni members");
        for spec in &specs {
            cluster.members.push(spawn(spec)?);
        }
    }
    on_step("waiting for streaming replicas and a synchronous standby");
    cluster.wait_replicating(Duration::from_secs(180)).await?;
    Ok(cluster)
}

fn member_specs(options: &ClusterOptions, ports: &Ports, bins: &PgBinaries) -> Vec<MemberSpec> {
    let last = options.members - 1;
    ports
        .members
        .iter()
        .enumerate()
        .map(|(index, (pg_port, rest_port))| MemberSpec {
            scope: SCOPE.into(),
            name: member_name(index),
            dir: options.dir.join(member_name(index)),
            pg_port: *pg_port,
            rest_port: *rest_port,
            etcd_port: ports.etcd_client,
            bin_dir: bins.bin_dir.clone(),
            superuser_password: options.superuser_password.clone(),
            replication_password: options.replication_password.clone(),
            passive: options.members >= 3 && index == last,
            durable: options.durable,
        })
        .collect()
}

impl Cluster {
    /// `host:port` of every member, in member order.
    pub fn hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.spec.pg_port))
            .collect()
    }

    /// A multi-host URL listing every member (the cluster-aware pool finds the primary itself).
    pub fn url(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@{}/{database}",
            self.hosts().join(",")
        )
    }

    /// A superuser multi-host URL listing every member (operator tools such as `bookstore backup`).
    pub fn admin_cluster_url(&self, database: &str) -> String {
        self.url(SUPERUSER, &self.superuser_password, database)
    }

    /// A superuser URL for `database` on one member.
    pub fn admin_url(&self, member: &Member, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.superuser_password, member.spec.pg_port
        )
    }

    /// Patroni's view of the cluster, from the first member whose REST API answers.
    pub async fn view(&self) -> anyhow::Result<Vec<MemberView>> {
        let mut last = anyhow::anyhow!("no member to ask");
        for member in &self.members {
            match patroni::cluster_view(&self.http, &member.spec.rest_url()).await {
                Ok(view) => return Ok(view),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The member Patroni currently names leader, if any.
    pub async fn leader(&self) -> Option<&Member> {
        let view = self.view().await.ok()?;
        let name = view.iter().find(|m| m.role == "leader")?.name.clone();
        self.members.iter().find(|m| m.spec.name == name)
    }

    /// Turns Patroni's maintenance mode on or off and waits until every member's Patroni reports it.
    /// While it is on Patroni changes nothing — no failover, and on PostgreSQL 14+ no resuming of a
    /// replay someone paused (it resumes any paused replay otherwise) — which a deliberate, lasting
    /// pause of replay needs.
    pub async fn set_maintenance(&self, on: bool, within: Duration) -> anyhow::Result<()> {
        let leader = self.wait_for_leader(within).await?;
        self.http
            .patch(format!("{}/config", leader.spec.rest_url()))
            .json(&serde_json::json!({ "pause": on }))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut all = true;
            for member in &self.members {
                all &= patroni::maintenance(&self.http, &member.spec.rest_url()).await == Some(on);
            }
            if all {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "not every Patroni member reported maintenance mode {on} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until some member leads and its PostgreSQL accepts writes.
    pub async fn wait_for_leader(&self, within: Duration) -> anyhow::Result<&Member> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(leader) = self.leader().await
                && self.is_writable(leader).await
            {
                return Ok(leader);
            }
            self.fail_if_a_member_exited()?;
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no PostgreSQL primary within {within:?}; see {}",
                self.log_hint()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn is_writable(&self, member: &Member) -> bool {
        let sql = "SELECT NOT pg_is_in_recovery()";
        matches!(self.query_bool(member, sql).await, Ok(true))
    }

    /// A one-off superuser connection to `member`'s `postgres` database.
    async fn admin_connection(&self, member: &Member) -> anyhow::Result<sqlx::PgConnection> {
        let options = PgConnectOptions::from_str(&self.admin_url(member, "postgres"))?;
        Ok(sqlx::PgConnection::connect_with(&options).await?)
    }

    async fn query_bool(&self, member: &Member, sql: &'static str) -> anyhow::Result<bool> {
        let mut conn = self.admin_connection(member).await?;
        let value: bool = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        let _ = conn.close().await;
        Ok(value)
    }

    /// Waits until every other member streams from the leader and one of them is synchronous
    /// (Patroni 3.0 reports replicas as `running` before they stream, so ask the leader itself).
    pub async fn wait_replicating(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let replicas = self.members.len() as i64 - 1;
        loop {
            if let Ok(leader) = self.wait_for_leader(within).await {
                let options = PgConnectOptions::from_str(&self.admin_url(leader, "postgres"))?;
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await {
                    let counts: Result<(i64, i64), _> = sqlx::query_as(
                        "SELECT count(*) FILTER (WHERE state = 'streaming'), \
                                count(*) FILTER (WHERE sync_state = 'sync') FROM pg_stat_replication",
                    )
                    .fetch_one(&mut conn)
                    .await;
                    let _ = conn.close().await;
                    if let Ok((streaming, sync)) = counts
                        && streaming >= replicas
                        && sync >= 1
                        && self.sync_standby_named().await
                    {
                        return Ok(());
                    }
                }
            }
            self.fail_if_a_member_exited()?;
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the replicas were not all streaming within {within:?}; see {}",
                self.log_hint()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every replica has replayed what the leader has written so far. After the
    /// accounts are applied this means every replica has the new databases: a service's first
    /// probe of a replica otherwise asks for a database the replica has not replayed yet, and the
    /// replica logs a FATAL for it. Each replica is asked itself (`pg_last_wal_replay_lsn()`): the
    /// leader's `pg_stat_replication` learns a replay position only from the replica's next status
    /// message, up to `wal_receiver_status_interval` (10 s) later. A replica that is still behind
    /// when `within` runs out is only reported: it catches up by itself, and the services keep it
    /// out of eventual reads until it does.
    pub async fn wait_replayed(&self, within: Duration) -> anyhow::Result<()> {
        let leader = self.wait_for_leader(within).await?;
        let target: String = {
            let mut conn = self.admin_connection(leader).await?;
            let lsn = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            lsn
        };
        let deadline = tokio::time::Instant::now() + within;
        for member in self
            .members
            .iter()
            .filter(|m| m.spec.name != leader.spec.name)
        {
            while !self.has_replayed(member, &target).await {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        member = %member.spec.name,
                        lsn = %target,
                        "the replica has not replayed the accounts yet; it will catch up by itself"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Whether `member` has replayed the WAL up to `lsn` (false while it cannot be asked).
    async fn has_replayed(&self, member: &Member, lsn: &str) -> bool {
        let check = async {
            let mut conn = self.admin_connection(member).await?;
            let replayed: Option<bool> =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(lsn)
                    .fetch_one(&mut conn)
                    .await?;
            let _ = conn.close().await;
            anyhow::Ok(replayed == Some(true))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Ok(true))
        )
    }

    /// Whether Patroni has recorded a synchronous standby (its `/sync` key, shown as a role).
    async fn sync_standby_named(&self) -> bool {
        self.view()
            .await
            .is_ok_and(|view| view.iter().any(|m| m.role == "sync_standby"))
    }

    fn fail_if_a_member_exited(&self) -> anyhow::Result<()> {
        // `exited` needs `&mut`; a shared check reads the process table instead.
        for member in &self.members {
            let alive = member
                .process
                .pid()
                .is_some_and(|pid| kill(Pid::from_raw(pid as i32), None).is_ok());
            anyhow::ensure!(
                alive,
                "Patroni member {} exited:\n{}",
                member.spec.name,
                member.process.log_tail(20)
            );
        }
        Ok(())
    }

    fn log_hint(&self) -> String {
        self.members
            .iter()
            .map(|m| m.spec.log_file().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Stops every member (Patroni stops its PostgreSQL), leftover postmasters, then etcd.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut stops = tokio::task::JoinSet::new();
        for mut member in std::mem::take(&mut self.members) {
            stops.spawn(async move {
                let _ = member.process.stop(Duration::from_secs(30)).await;
                stop_leftover_postmaster(&member.spec.data_dir()).await;
            });
        }
        while stops.join_next().await.is_some() {}
        self.etcd.process.stop(Duration::from_secs(10)).await?;
        Ok(())
    }
}

impl Drop for Cluster {
    /// Unwinding (a failed test, a failed start): kill at once, postmasters included.
    fn drop(&mut self) {
        for member in &self.members {
            let _ = member.process.signal(Signal::SIGKILL);
            if let Some(pid) = member.postmaster_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
        }
    }
}

/// The postmaster's PID from `data_dir/postmaster.pid`, when that process is alive.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    kill(Pid::from_raw(pid), None).ok().map(|()| pid)
}

/// A postmaster left behind (by a killed launcher, or by a Patroni that stopped without stopping
/// it): fast shutdown, waiting up to 30 s.
pub async fn stop_leftover_postmaster(data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGINT).is_err() {
        return;
    }
    for _ in 0..300 {
        if kill(pid, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGQUIT);
}
