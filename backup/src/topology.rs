//! Who is who in the cluster, from SQL alone (so it works the same under Patroni or without it): every
//! host of the URL is asked `pg_is_in_recovery()`, and the primary's `pg_stat_replication` says which
//! replicas are synchronous. Then [`choose`] picks the node to back up from.

use std::time::Duration;

use sqlx::{Connection, PgConnection, Row};

use crate::url::{ClusterUrl, HostPort};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

/// A replica's place in synchronous replication, as the primary's `pg_stat_replication` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    Async,
    Potential,
    Sync,
    Quorum,
    /// The primary was unreachable, did not list the replica, or listed it ambiguously.
    Unknown,
}

impl SyncState {
    fn parse(s: &str) -> SyncState {
        match s {
            "async" => SyncState::Async,
            "potential" => SyncState::Potential,
            "sync" => SyncState::Sync,
            "quorum" => SyncState::Quorum,
            _ => SyncState::Unknown,
        }
    }
}

/// What one reachable node said about itself.
#[derive(Debug, Clone)]
pub struct Node {
    pub addr: HostPort,
    pub role: Role,
    /// Tagged as a passive member (`bookstore.nofailover = on`, or Patroni's `nofailover` tag).
    pub passive: bool,
    pub server_version: String,
    pub system_identifier: String,
    /// `pg_get_wal_replay_pause_state()` on a replica: `not paused`, `pause requested` or `paused`.
    pub pause_state: String,
    /// The name this replica's WAL receiver gives the primary (matched to `pg_stat_replication`).
    pub receiver_name: Option<String>,
    pub sync_state: SyncState,
}

#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<Node>,
    /// Hosts that could not be asked, with the reason.
    pub unreachable: Vec<(HostPort, String)>,
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone)]
struct Standby {
    application_name: String,
    sync_state: String,
}

/// Asks every host of `url`, concurrently.
pub async fn discover(url: &ClusterUrl) -> anyhow::Result<Topology> {
    let timeout = Duration::from_secs(url.connect_timeout.unwrap_or(10).max(1));
    let asks = url.hosts.iter().map(|addr| async move {
        let answer = tokio::time::timeout(timeout, ask(url, addr)).await;
        let answer =
            answer.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
        (addr.clone(), answer)
    });
    let mut topology = Topology::default();
    let mut standbys = Vec::new();
    for (addr, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok((node, rows)) => {
                standbys.extend(rows);
                topology.nodes.push(node);
            }
            Err(e) => topology.unreachable.push((addr, format!("{e:#}"))),
        }
    }
    check_one_cluster(&topology)?;
    for node in &mut topology.nodes {
        if node.role == Role::Replica {
            node.sync_state = sync_state_of(node.receiver_name.as_deref(), &standbys);
        }
    }
    Ok(topology)
}

async fn ask(url: &ClusterUrl, addr: &HostPort) -> anyhow::Result<(Node, Vec<Standby>)> {
    let mut conn = PgConnection::connect_with(&url.connect_options(addr, url.database())).await?;
    let row = sqlx::query(
        "SELECT pg_is_in_recovery() AS replica,
                coalesce(current_setting('bookstore.nofailover', true), '') = 'on' AS passive,
                current_setting('server_version') AS version,
                (SELECT system_identifier::text FROM pg_control_system()) AS system_id,
                CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state()
                     ELSE 'not paused' END AS pause_state,
                (SELECT conninfo FROM pg_stat_wal_receiver LIMIT 1) AS receiver_conninfo,
                current_setting('cluster_name') AS cluster_name",
    )
    .fetch_one(&mut conn)
    .await?;
    let replica: bool = row.try_get("replica")?;
    let receiver_conninfo: Option<String> = row.try_get("receiver_conninfo")?;
    let cluster_name: String = row.try_get("cluster_name")?;
    let node = Node {
        addr: addr.clone(),
        role: if replica {
            Role::Replica
        } else {
            Role::Primary
        },
        passive: row.try_get("passive")?,
        server_version: row.try_get("version")?,
        system_identifier: row
            .try_get::<Option<String>, _>("system_id")?
            .unwrap_or_default(),
        pause_state: row.try_get("pause_state")?,
        receiver_name: replica.then(|| receiver_name(receiver_conninfo.as_deref(), &cluster_name)),
        sync_state: SyncState::Unknown,
    };
    let standbys = if replica {
        Vec::new()
    } else {
        sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "SELECT application_name, sync_state FROM pg_stat_replication",
        )
        .fetch_all(&mut conn)
        .await?
        .into_iter()
        .map(|(name, state)| Standby {
            application_name: name.unwrap_or_default(),
            sync_state: state.unwrap_or_default(),
        })
        .collect()
    };
    let _ = conn.close().await;
    Ok((node, standbys))
}

/// The WAL receiver connects with the `application_name` of its `primary_conninfo`, else
/// `cluster_name`, else `walreceiver` — that is the name the primary lists it under.
fn receiver_name(conninfo: Option<&str>, cluster_name: &str) -> String {
    let from_conninfo = conninfo.and_then(|info| {
        info.split_whitespace()
            .find_map(|pair| pair.strip_prefix("application_name="))
            .map(|v| v.trim_matches('\'').to_owned())
    });
    from_conninfo
        .or_else(|| (!cluster_name.is_empty()).then(|| cluster_name.to_owned()))
        .unwrap_or_else(|| "walreceiver".to_owned())
}

/// The state of the standby rows carrying this replica's name; unknown if none or if they disagree.
fn sync_state_of(name: Option<&str>, standbys: &[Standby]) -> SyncState {
    let Some(name) = name else {
        return SyncState::Unknown;
    };
    let mut states = standbys
        .iter()
        .filter(|s| s.application_name == name)
        .map(|s| SyncState::parse(&s.sync_state));
    let first = states.next().unwrap_or(SyncState::Unknown);
    if states.all(|s| s == first) {
        first
    } else {
        SyncState::Unknown
    }
}

fn check_one_cluster(topology: &Topology) -> anyhow::Result<()> {
    let mut ids = topology
        .nodes
        .iter()
        .map(|n| &n.system_identifier)
        .filter(|id| !id.is_empty());
    if let Some(first) = ids.next()
        && ids.any(|id| id != first)
    {
        let list: Vec<String> = topology
            .nodes
            .iter()
            .map(|n| format!("{} is system {}", n.addr, n.system_identifier))
            .collect();
        anyhow::bail!(
            "the hosts of the URL belong to different clusters ({}): list the members of one cluster",
            list.join(", ")
        );
    }
    Ok(())
}

/// The node a backup reads from, and why.
#[derive(Debug, Clone)]
pub struct Choice {
    pub node: Node,
    pub reason: String,
}

/// Prefers, in order: a passive replica, an asynchronous one, a potential synchronous one. Never a
/// synchronous (or quorum) standby: with `synchronous_commit = remote_apply` every commit on the
/// primary waits for it to *apply* WAL, so pausing its replay would stall all writes. A replica whose
/// replay someone else paused is skipped (resuming it at the end would undo their pause). The primary
/// only with `allow_primary`.
pub fn choose(topology: &Topology, allow_primary: bool) -> anyhow::Result<Choice> {
    let primaries: Vec<&Node> = topology
        .nodes
        .iter()
        .filter(|n| n.role == Role::Primary)
        .collect();
    if primaries.len() > 1 {
        let list: Vec<String> = primaries.iter().map(|n| n.addr.to_string()).collect();
        anyhow::bail!(
            "more than one host says it is a primary ({}): the cluster is split; fix it before backing up",
            list.join(", ")
        );
    }
    let rank = |n: &Node| -> Option<(u8, &'static str)> {
        if n.role != Role::Replica || n.pause_state != "not paused" {
            return None;
        }
        match (n.passive, n.sync_state) {
            (_, SyncState::Sync | SyncState::Quorum) => None,
            (true, _) => Some((0, "a passive (nofailover) replica")),
            (false, SyncState::Async) => Some((1, "an asynchronous replica")),
            (false, SyncState::Potential) => Some((2, "a potential synchronous replica")),
            (false, SyncState::Unknown) => None,
        }
    };
    let best = topology
        .nodes
        .iter()
        .filter_map(|n| rank(n).map(|(r, why)| (r, why, n)))
        .min_by_key(|(r, _, n)| (*r, n.addr.clone()));
    if let Some((_, why, node)) = best {
        return Ok(Choice {
            node: node.clone(),
            reason: why.to_owned(),
        });
    }
    let why_not = explain_no_replica(topology);
    match primaries.first() {
        Some(primary) if allow_primary => Ok(Choice {
            node: (*primary).clone(),
            reason: format!("the primary, allowed by --allow-primary ({why_not})"),
        }),
        Some(primary) => anyhow::bail!(
            "no replica can be backed up from ({why_not}); backing up from the primary {} adds load to it and gives each database its own snapshot: pass --allow-primary to accept that",
            primary.addr
        ),
        None => anyhow::bail!("no node can be backed up from ({why_not})"),
    }
}

fn explain_no_replica(topology: &Topology) -> String {
    let mut reasons: Vec<String> = topology
        .nodes
        .iter()
        .filter(|n| n.role == Role::Replica)
        .map(|n| {
            let why = if n.pause_state != "not paused" {
                "its replay is paused by someone else".to_owned()
            } else {
                format!("it is {:?}", n.sync_state).to_lowercase()
            };
            format!("{}: {why}", n.addr)
        })
        .collect();
    reasons.extend(
        topology
            .unreachable
            .iter()
            .map(|(addr, e)| format!("{addr}: unreachable: {e}")),
    );
    if reasons.is_empty() {
        "the URL lists no replica".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
