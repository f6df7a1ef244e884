//! The cluster as `bookstore up` runs it: in `<dir>/cluster`, as the database user, with the
//! generated passwords, accounts applied on the primary, and what `state.json` records about it.

use std::path::Path;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterOptions};
use crate::accounts::{self, Accounts};
use crate::os_user;
use crate::state::{ProcessInfo, Secrets};

/// The cluster in `state.json`: what `status` and tests need to find every member.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterInfo {
    pub etcd_url: String,
    pub members: Vec<MemberInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    pub pg_port: u16,
    /// Patroni's REST API.
    pub rest_url: String,
    pub data_dir: std::path::PathBuf,
    pub passive: bool,
}

impl MemberInfo {
    /// Starts this member's Patroni again, the way `up` started it (as the database user, on its
    /// `patroni.yml`), after its node died: `up` restarts nothing by itself, so a crash stays
    /// visible. The caller owns the process; Patroni rewinds and rejoins as a replica if another
    /// member leads.
    pub fn respawn_patroni(&self) -> anyhow::Result<crate::process::Supervised> {
        let dir = self
            .data_dir
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no member directory", self.name))?;
        super::patroni::respawn(
            &super::patroni::locate()?,
            &self.name,
            dir,
            os_user::server_user()?,
            Signal::SIGTERM,
        )
    }
}

impl ClusterInfo {
    /// `host:port,host:port,…` for a multi-host URL.
    pub fn hosts(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.pg_port))
            .collect();
        hosts.join(",")
    }
}

/// Starts (or restarts) the cluster of `nodes` members under `dir/cluster` and applies the accounts.
pub async fn start_for_up(
    dir: &Path,
    nodes: usize,
    secrets: &Secrets,
    on_step: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(Cluster, ClusterInfo)> {
    let run_as = os_user::server_user()?;
    // The launcher's directory may be private (a mktemp dir): let the database user pass through.
    os_user::make_reachable(dir, run_as)?;
    let options = ClusterOptions {
        dir: dir.join("cluster"),
        members: nodes,
        superuser_password: secrets.postgres_superuser.clone(),
        replication_password: secrets.password_for(super::patroni::REPLICATION_USER),
        run_as,
        durable: true,
        on_parent_death: Signal::SIGTERM,
    };
    let cluster = super::start(&options, on_step).await?;
    on_step("applying the database accounts");
    apply_accounts(&cluster, secrets).await?;
    cluster
        .wait_replayed(std::time::Duration::from_secs(10))
        .await?;
    let info = cluster.info();
    Ok((cluster, info))
}

/// Applies `deploy/postgres/accounts.toml` on the current primary.
pub async fn apply_accounts(cluster: &Cluster, secrets: &Secrets) -> anyhow::Result<()> {
    let leader = cluster
        .wait_for_leader(std::time::Duration::from_secs(60))
        .await?;
    let admin = async |db: &str| -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&cluster.admin_url(leader, db))
            .await?)
    };
    accounts::apply(&Accounts::shipped()?, admin, |role| {
        secrets.password_for(role)
    })
    .await
}

impl Cluster {
    /// What `state.json` records.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            etcd_url: format!("http://127.0.0.1:{}", self.etcd.client_port),
            members: self
                .members
                .iter()
                .map(|m| MemberInfo {
                    name: m.spec.name.clone(),
                    pg_port: m.spec.pg_port,
                    rest_url: m.spec.rest_url(),
                    data_dir: m.spec.data_dir(),
                    passive: m.spec.passive,
                })
                .collect(),
        }
    }

    /// One `status` row per process: etcd, then each member's Patroni (its PostgreSQL's address).
    pub fn processes(&self, dir: &Path) -> Vec<ProcessInfo> {
        let etcd = ProcessInfo {
            name: "etcd".into(),
            kind: "etcd".into(),
            pid: self.etcd.process.pid().unwrap_or(0),
            url: format!("etcd://127.0.0.1:{}", self.etcd.client_port),
            log: dir.join("cluster/etcd.log"),
        };
        let members = self.members.iter().map(|m| ProcessInfo {
            name: m.spec.name.clone(),
            kind: "postgres".into(),
            pid: m.process.pid().unwrap_or(0),
            url: format!("postgres://127.0.0.1:{}", m.spec.pg_port),
            log: m.spec.log_file(),
        });
        std::iter::once(etcd).chain(members).collect()
    }
}
