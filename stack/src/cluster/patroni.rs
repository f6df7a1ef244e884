//! One Patroni member: its configuration (written as JSON, which is YAML too), the supervised
//! `patroni` process running as the database user, and its REST API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::os_user::{self, RunAs};
use crate::process::{ChildSpec, Supervised};

/// The role Patroni creates for streaming replication (and pg_basebackup of new replicas).
pub const REPLICATION_USER: &str = "replicator";

/// The failure-detection timings written into the cluster's DCS configuration at bootstrap.
/// `ttl` is Patroni 3.0's minimum (20 s): it only matters when a whole node (Patroni included) dies.
/// A crashed postmaster under a live Patroni is seen on the next loop, so `loop_wait` (2 s) bounds
/// that write gap; `retry_timeout` is the most `ttl >= loop_wait + 2 * retry_timeout` allows.
pub const TTL_SECONDS: u64 = 20;
pub const LOOP_WAIT_SECONDS: u64 = 2;
pub const RETRY_TIMEOUT_SECONDS: u64 = 9;

/// Everything one member's configuration depends on.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub scope: String,
    pub name: String,
    pub dir: PathBuf,
    pub pg_port: u16,
    pub rest_port: u16,
    pub etcd_port: u16,
    pub bin_dir: PathBuf,
    pub superuser_password: String,
    pub replication_password: String,
    /// A passive member: never promoted, never the synchronous standby (backups read from it).
    pub passive: bool,
    /// `false` turns fsync off: fine for throw-away test clusters (SIGKILL of a process loses
    /// nothing the OS already has; only a machine crash would).
    pub durable: bool,
}

impl MemberSpec {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// Patroni's configuration for this member.
    pub fn config(&self) -> Value {
        let mut parameters = json!({
            "unix_socket_directories": self.dir.join("run").display().to_string(),
            "listen_addresses": "127.0.0.1",
        });
        if self.passive {
            parameters["bookstore.nofailover"] = json!("on");
            // The backup member: replay waits for a conflicting query (a backup's snapshot holding
            // a lock a replayed DDL wants) instead of cancelling it after 30 s. It never becomes
            // primary or sync standby, so its lag delays nobody's commit.
            parameters["max_standby_streaming_delay"] = json!("-1");
        }
        json!({
            "scope": self.scope,
            "name": self.name,
            "namespace": "/bookstore/",
            "log": {"level": "WARNING"},
            "restapi": {
                "listen": format!("127.0.0.1:{}", self.rest_port),
                "connect_address": format!("127.0.0.1:{}", self.rest_port),
            },
            "etcd3": {"hosts": [format!("127.0.0.1:{}", self.etcd_port)]},
            "bootstrap": {
                "dcs": self.dcs(),
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": format!("127.0.0.1:{}", self.pg_port),
                "connect_address": format!("127.0.0.1:{}", self.pg_port),
                "data_dir": self.data_dir().display().to_string(),
                "bin_dir": self.bin_dir.display().to_string(),
                "pgpass": self.dir.join("pgpass").display().to_string(),
                "authentication": {
                    "superuser": {"username": crate::postgres::SUPERUSER, "password": self.superuser_password},
                    "replication": {"username": REPLICATION_USER, "password": self.replication_password},
                    "rewind": {"username": crate::postgres::SUPERUSER, "password": self.superuser_password},
                },
                "basebackup": [{"checkpoint": "fast"}],
                "pg_hba": [
                    "local all all trust",
                    format!("host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256"),
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
                "parameters": parameters,
            },
            "tags": {
                "nofailover": self.passive,
                "nosync": self.passive,
                "noloadbalance": false,
                "clonefrom": false,
            },
        })
    }

    /// The cluster-wide settings (read once, when the cluster is first initialised).
    fn dcs(&self) -> Value {
        let mut parameters = json!({
            "max_connections": 200,
            "max_prepared_transactions": 100,
            "wal_level": "replica",
            "wal_log_hints": "on",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "max_wal_senders": 12,
            "max_replication_slots": 12,
            "wal_keep_size": "256MB",
            // A frozen synchronous standby would otherwise stall commits for the 60 s default.
            "wal_sender_timeout": "5s",
            "wal_receiver_status_interval": "1s",
            // A replica whose streaming failed (its slot not yet made by the leader's next cycle, a
            // new primary not yet up) tries again after this, not the default 5 s: each new
            // replica lost those 5 s at start, and every replica after a failover.
            "wal_retrieve_retry_interval": "1s",
            "password_encryption": "scram-sha-256",
        });
        if !self.durable {
            parameters["fsync"] = json!("off");
        }
        json!({
            "ttl": TTL_SECONDS,
            "loop_wait": LOOP_WAIT_SECONDS,
            "retry_timeout": RETRY_TIMEOUT_SECONDS,
            "maximum_lag_on_failover": 16 * 1024 * 1024,
            "synchronous_mode": true,
            "synchronous_mode_strict": false,
            "primary_start_timeout": 0,
            "postgresql": {
                "use_pg_rewind": true,
                "use_slots": true,
                "parameters": parameters,
            },
        })
    }
}

/// `patroni` (the `patroni` package; it runs under Debian's /usr/bin/python3 through its shebang).
pub fn locate() -> anyhow::Result<PathBuf> {
    super::etcd::find_on_path("patroni").ok_or_else(|| {
        anyhow::anyhow!(
            "patroni was not found: run scripts/setup.sh (apt-get install patroni), or start a single plain PostgreSQL with --pg-nodes 1"
        )
    })
}

/// Writes the member's configuration and starts its Patroni as the database user.
pub fn spawn(
    binary: &Path,
    spec: &MemberSpec,
    run_as: Option<RunAs>,
    on_parent_death: Signal,
) -> anyhow::Result<Supervised> {
    std::fs::create_dir_all(spec.dir.join("run"))?;
    std::fs::write(
        spec.config_file(),
        serde_json::to_vec_pretty(&spec.config())?,
    )?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_file())?;
    os_user::hand_over(&spec.dir, run_as)?;
    run(binary, &spec.name, &spec.dir, run_as, on_parent_death)
}

/// Runs Patroni on the configuration already in `member_dir` (`patroni.yml`, written by
/// [`spawn`]): how a member whose node died is brought back — it rejoins as a replica.
pub fn respawn(
    binary: &Path,
    name: &str,
    member_dir: &Path,
    run_as: Option<RunAs>,
    on_parent_death: Signal,
) -> anyhow::Result<Supervised> {
    anyhow::ensure!(
        member_dir.join("patroni.yml").is_file(),
        "{} holds no patroni.yml",
        member_dir.display()
    );
    run(binary, name, member_dir, run_as, on_parent_death)
}

fn run(
    binary: &Path,
    name: &str,
    member_dir: &Path,
    run_as: Option<RunAs>,
    on_parent_death: Signal,
) -> anyhow::Result<Supervised> {
    let mut child = ChildSpec::new(name, binary, member_dir.join("patroni.log"))
        .args([member_dir.join("patroni.yml").display().to_string()])
        .env("HOME", member_dir.display().to_string())
        .env("PATH", "/usr/bin:/bin");
    child.run_as = run_as;
    child.stop_signal = Signal::SIGTERM;
    child.parent_death_signal = on_parent_death;
    Supervised::spawn(&child)
}

/// One member as Patroni's `GET /cluster` reports it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
pub struct MemberView {
    pub name: String,
    /// `leader`, `sync_standby` or `replica`.
    pub role: String,
    /// `running`, `streaming`, `stopped`, `starting`, …
    pub state: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Replay lag in bytes (Patroni reports `"unknown"` while it cannot tell).
    #[serde(default)]
    pub lag: Option<Value>,
    #[serde(default)]
    pub tags: Option<Value>,
}

impl MemberView {
    pub fn is_passive(&self) -> bool {
        self.tags
            .as_ref()
            .is_some_and(|t| t["nofailover"] == Value::Bool(true))
    }

    pub fn lag_bytes(&self) -> Option<u64> {
        self.lag.as_ref().and_then(Value::as_u64)
    }
}

/// The cluster as one member's REST API sees it (`GET /cluster`).
pub async fn cluster_view(
    http: &reqwest::Client,
    rest_url: &str,
) -> anyhow::Result<Vec<MemberView>> {
    #[derive(serde::Deserialize)]
    struct ClusterView {
        members: Vec<MemberView>,
    }
    let view: ClusterView = http
        .get(format!("{rest_url}/cluster"))
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(view.members)
}

/// Whether the member's Patroni is in maintenance mode (`GET /patroni` shows `"pause": true`);
/// `None` when it cannot be asked.
pub async fn maintenance(http: &reqwest::Client, rest_url: &str) -> Option<bool> {
    let status: Value = http
        .get(format!("{rest_url}/patroni"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(status["pause"].as_bool().unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(passive: bool) -> MemberSpec {
        MemberSpec {
            scope: "bookstore".into(),
            name: "pg-5".into(),
            dir: "/tmp/x/pg-5".into(),
            pg_port: 5500,
            rest_port: 8500,
            etcd_port: 2379,
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            superuser_password: "su".into(),
            replication_password: "rep".into(),
            passive,
            durable: true,
        }
    }

    #[test]
    fn the_passive_member_is_tagged_for_patroni_and_recognisable_from_sql() {
        let config = spec(true).config();
        assert_eq!(config["tags"]["nofailover"], true);
        assert_eq!(config["tags"]["nosync"], true);
        assert_eq!(
            config["postgresql"]["parameters"]["bookstore.nofailover"],
            "on"
        );
        assert_eq!(
            config["postgresql"]["parameters"]["max_standby_streaming_delay"],
            "-1"
        );
        let active = spec(false).config();
        assert_eq!(active["tags"]["nofailover"], false);
        assert!(active["postgresql"]["parameters"]["bookstore.nofailover"].is_null());
        assert!(active["postgresql"]["parameters"]["max_standby_streaming_delay"].is_null());
    }

    #[test]
    fn failure_detection_respects_patronis_constraints() {
        let dcs = &spec(false).config()["bootstrap"]["dcs"];
        let (ttl, loop_wait, retry) = (
            dcs["ttl"].as_u64().unwrap_or(0),
            dcs["loop_wait"].as_u64().unwrap_or(0),
            dcs["retry_timeout"].as_u64().unwrap_or(0),
        );
        assert!(ttl >= 20, "Patroni 3.0's minimum ttl");
        assert!(ttl >= loop_wait + 2 * retry);
        assert_eq!(dcs["synchronous_mode"], true);
        assert_eq!(dcs["postgresql"]["use_pg_rewind"], true);
        assert_eq!(
            dcs["postgresql"]["parameters"]["max_prepared_transactions"],
            100
        );
    }
}
