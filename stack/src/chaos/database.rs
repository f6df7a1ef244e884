//! The database scenarios on the Patroni cluster `up --pg-nodes N` runs: the victims are found in
//! the cluster's topology at fault time (Patroni's REST API), never by fixed names, and undoing a
//! fault waits until the cluster is whole again — the victim a streaming replica that has replayed
//! the current primary's WAL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use tokio::time::Instant;

use crate::cluster::patroni::{self, MemberView};
use crate::cluster::{ClusterInfo, MemberInfo, topology};
use crate::postgres::SUPERUSER;
use crate::state::State;
use anyhow::Context;

use super::launch;
use super::partition::Partition;
use super::restart::{self, Request};
use super::scenario::Scenario;

/// A database fault in place.
pub enum Fault {
    /// Whole nodes (Patroni and PostgreSQL) SIGKILLed: `up` starts their Patroni again.
    KilledNodes(Vec<(MemberInfo, u32)>),
    /// The primary's postmaster SIGKILLed, its Patroni alive: Patroni fails over to the
    /// synchronous standby and brings the old primary back as a replica by itself.
    KilledPrimary(MemberInfo),
    /// The primary cut off from etcd and the other members.
    Partitioned(MemberInfo, Partition),
}

/// The cluster `state.json` records, or why there is none.
pub fn cluster_info(dir: &Path) -> anyhow::Result<ClusterInfo> {
    State::read(dir)?
        .and_then(|s| s.cluster)
        .ok_or_else(|| anyhow::anyhow!("the platform runs no PostgreSQL cluster (--pg-nodes 1)"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// Patroni's view of the cluster now.
pub async fn view(info: &ClusterInfo) -> anyhow::Result<Vec<MemberView>> {
    topology::fetch(&http(), info).await
}

fn member<'a>(info: &'a ClusterInfo, name: &str) -> anyhow::Result<&'a MemberInfo> {
    info.members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| anyhow::anyhow!("Patroni reports a member {name} that up did not start"))
}

/// A superuser URL for `database` on one member.
pub fn member_url(password: &str, port: u16, database: &str) -> String {
    format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/{database}")
}

async fn query_bool(password: &str, port: u16, sql: &'static str) -> anyhow::Result<bool> {
    let options = PgConnectOptions::from_str(&member_url(password, port, "postgres"))?;
    let work = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let value: bool = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        let _ = conn.close().await;
        anyhow::Ok(value)
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 3 s"))?
}

/// The member Patroni names leader whose PostgreSQL accepts writes, waiting up to `patience`.
pub async fn primary(
    info: &ClusterInfo,
    password: &str,
    patience: Duration,
) -> anyhow::Result<MemberInfo> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(view) = view(info).await
            && let Some(leader) = view.iter().find(|m| m.role == "leader")
            && let Ok(leader) = member(info, &leader.name)
            && matches!(
                query_bool(password, leader.pg_port, "SELECT NOT pg_is_in_recovery()").await,
                Ok(true)
            )
        {
            return Ok(leader.clone());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster had no writable primary within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Picks the victims from the topology now and injects the fault.
pub async fn inject(dir: &Path, scenario: Scenario) -> anyhow::Result<Fault> {
    let info = cluster_info(dir)?;
    let view = view(&info).await?;
    let leader = view
        .iter()
        .find(|m| m.role == "leader")
        .ok_or_else(|| anyhow::anyhow!("Patroni names no leader"))?;
    let leader = member(&info, &leader.name)?.clone();
    // The synchronous standby first (killing it makes Patroni name another), then the other
    // replicas that may be promoted, the passive member last.
    let mut replicas: Vec<&MemberView> = view.iter().filter(|m| m.role != "leader").collect();
    replicas.sort_by_key(|m| (m.role != "sync_standby", m.is_passive(), m.name.clone()));
    let victims = |n: usize| -> anyhow::Result<Vec<MemberInfo>> {
        anyhow::ensure!(
            replicas.len() > n,
            "the cluster has {} replicas; {n} killed would leave none (start it with --pg-nodes 5)",
            replicas.len()
        );
        replicas[..n]
            .iter()
            .map(|m| member(&info, &m.name).cloned())
            .collect()
    };
    match scenario {
        Scenario::KillReplica | Scenario::KillTwoReplicas => {
            let n = if scenario == Scenario::KillReplica {
                1
            } else {
                2
            };
            let mut killed = Vec::new();
            for victim in victims(n)? {
                let pid = kill_node(dir, &victim)?;
                killed.push((victim, pid));
            }
            for (victim, pid) in &killed {
                launch::wait_exit(*pid, Duration::from_secs(10))
                    .await
                    .with_context(|| format!("{} after SIGKILL", victim.name))?;
            }
            Ok(Fault::KilledNodes(killed))
        }
        Scenario::KillPrimary => {
            let pid = crate::cluster::postmaster_pid(&leader.data_dir)
                .ok_or_else(|| anyhow::anyhow!("the primary {} has no postmaster", leader.name))?;
            kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            launch::wait_exit(pid.unsigned_abs(), Duration::from_secs(10))
                .await
                .with_context(|| format!("{} after SIGKILL", leader.name))?;
            Ok(Fault::KilledPrimary(leader))
        }
        Scenario::PartitionPrimary => {
            let patroni_pid = patroni_pid(dir, &leader.name)?;
            let others: Vec<MemberInfo> = info
                .members
                .iter()
                .filter(|m| m.name != leader.name)
                .cloned()
                .collect();
            let etcd_port = port_of(&info.etcd_url)?;
            let partition = Partition::cut(&leader, patroni_pid, &others, etcd_port).await?;
            Ok(Fault::Partitioned(leader, partition))
        }
        _ => anyhow::bail!("{scenario} is not a database scenario"),
    }
}

/// Undoes the fault and waits until the cluster is whole; what happened on the way (and when,
/// since restoring began), for the report's events.
pub async fn restore(
    dir: &Path,
    fault: Fault,
    password: &str,
) -> anyhow::Result<Vec<(Duration, String)>> {
    let info = cluster_info(dir)?;
    let started = Instant::now();
    let mut notes = Vec::new();
    match fault {
        Fault::KilledNodes(killed) => {
            let program = patroni::locate()?;
            for (victim, _) in &killed {
                let member_dir = victim
                    .data_dir
                    .parent()
                    .ok_or_else(|| anyhow::anyhow!("{} has no member directory", victim.name))?;
                restart::ask(
                    dir,
                    &Request {
                        name: victim.name.clone(),
                        program: program.clone(),
                        args: vec![member_dir.join("patroni.yml").display().to_string()],
                        env: Vec::new(),
                    },
                )?;
            }
            for (victim, pid) in &killed {
                restart::wait_restarted(dir, &victim.name, *pid, Duration::from_secs(60)).await?;
            }
            for (victim, _) in &killed {
                wait_rejoined(&info, victim, password).await?;
                notes.push((
                    started.elapsed(),
                    format!(
                        "{} restarted by up, streaming from the primary and caught up",
                        victim.name
                    ),
                ));
            }
        }
        Fault::KilledPrimary(old) => {
            let new = new_primary(&info, &old, password).await?;
            notes.push((
                started.elapsed(),
                format!("{} promoted in place of {}", new.name, old.name),
            ));
            wait_rejoined(&info, &old, password).await?;
            notes.push((
                started.elapsed(),
                format!(
                    "{} back as a replica (Patroni restarted it, rewound if needed), caught up",
                    old.name
                ),
            ));
        }
        Fault::Partitioned(old, partition) => {
            // The partition holds until Patroni has acted on it: a new primary elsewhere and the
            // isolated one demoted. Healing earlier would test nothing.
            let outcome = async {
                let new = new_primary(&info, &old, password).await?;
                notes.push((
                    started.elapsed(),
                    format!("{} promoted while {} was cut off", new.name, old.name),
                ));
                wait_demoted(&old, password).await?;
                notes.push((
                    started.elapsed(),
                    format!("the isolated {} demoted itself (in recovery)", old.name),
                ));
                anyhow::Ok(())
            }
            .await;
            let healed = partition.heal();
            outcome?;
            healed?;
            notes.push((started.elapsed(), "partition healed".to_owned()));
            wait_rejoined(&info, &old, password).await?;
            notes.push((
                started.elapsed(),
                format!("{} back as a replica, caught up", old.name),
            ));
        }
    }
    Ok(notes)
}

/// SIGKILL of a member's Patroni (the process `up` started) and its postmaster: the whole node
/// dies. The Patroni's pid, which `up` replaces when it restarts it.
fn kill_node(dir: &Path, victim: &MemberInfo) -> anyhow::Result<u32> {
    let pid = patroni_pid(dir, &victim.name)?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    if let Some(postmaster) = crate::cluster::postmaster_pid(&victim.data_dir) {
        kill(Pid::from_raw(postmaster), Signal::SIGKILL)?;
    }
    Ok(pid)
}

fn patroni_pid(dir: &Path, name: &str) -> anyhow::Result<u32> {
    State::read(dir)?
        .and_then(|s| s.processes.into_iter().find(|p| p.name == name))
        .map(|p| p.pid)
        .ok_or_else(|| anyhow::anyhow!("state.json has no process {name}"))
}

fn port_of(url: &str) -> anyhow::Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {url}"))
}

/// Waits up to 90 s for a writable primary other than `old`.
async fn new_primary(
    info: &ClusterInfo,
    old: &MemberInfo,
    password: &str,
) -> anyhow::Result<MemberInfo> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(new) = primary(info, password, Duration::from_secs(1)).await
            && new.name != old.name
        {
            return Ok(new);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no member other than {} became a writable primary within 90 s",
            old.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to 60 s until `old`'s PostgreSQL is in recovery (or down).
async fn wait_demoted(old: &MemberInfo, password: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match query_bool(password, old.pg_port, "SELECT pg_is_in_recovery()").await {
            Ok(true) | Err(_) => return Ok(()),
            Ok(false) => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the isolated {} still ran as a primary 60 s after a new one was promoted",
            old.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to 120 s until `member` streams from the current primary and has replayed the
/// primary's WAL position of when it is first asked — as the primary's `pg_stat_replication` sees
/// it (a demoted primary's own replay position may be past that on a diverged timeline, before
/// Patroni rewinds it).
pub async fn wait_rejoined(
    info: &ClusterInfo,
    member: &MemberInfo,
    password: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut target: Option<String> = None;
    loop {
        let check = async {
            let primary = primary(info, password, Duration::from_secs(10)).await?;
            let options =
                PgConnectOptions::from_str(&member_url(password, primary.pg_port, "postgres"))?;
            let mut conn = sqlx::PgConnection::connect_with(&options).await?;
            if target.is_none() {
                let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
                    .fetch_one(&mut conn)
                    .await?;
                target = Some(lsn);
            }
            let streaming: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 \
                 AND state = 'streaming' AND replay_lsn >= $2::pg_lsn)",
            )
            .bind(&member.name)
            .bind(target.as_deref().unwrap_or("0/0"))
            .fetch_one(&mut conn)
            .await?;
            let _ = conn.close().await;
            anyhow::Ok(streaming)
        };
        // Patroni must agree: it may still rewind or restart a member that streamed for a moment.
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(15), check).await
            && settled_in_view(info, &member.name).await
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} was not a caught-up streaming replica within 120 s (see its patroni.log)",
            member.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether Patroni reports `name` running (or streaming) as a replica on the leader's timeline.
async fn settled_in_view(info: &ClusterInfo, name: &str) -> bool {
    let Ok(view) = view(info).await else {
        return false;
    };
    let leader_timeline = view
        .iter()
        .find(|m| m.role == "leader")
        .and_then(|m| m.timeline);
    view.iter().any(|m| {
        m.name == name
            && m.role != "leader"
            && (m.state == "running" || m.state == "streaming")
            && m.timeline.is_some()
            && m.timeline == leader_timeline
    })
}
