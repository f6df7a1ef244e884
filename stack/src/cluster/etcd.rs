//! One etcd server on loopback: the distributed configuration store Patroni keeps the leader lock
//! and the members' state in. A single member is enough on one machine; it is not the thing under test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{ChildSpec, Supervised};

/// A running etcd.
pub struct Etcd {
    pub client_port: u16,
    pub process: Supervised,
}

/// Where etcd keeps its data and log, and the ports it listens on.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub on_parent_death: Signal,
}

/// `etcd` from `PATH` (the `etcd-server` package), with a hint naming the setup script when missing.
pub fn locate() -> anyhow::Result<PathBuf> {
    find_on_path("etcd").ok_or_else(|| {
        anyhow::anyhow!(
            "etcd was not found: run scripts/setup.sh (apt-get install etcd-server), or start a single plain PostgreSQL with --pg-nodes 1"
        )
    })
}

/// The first executable `name` on `PATH`, then in `/usr/bin`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Starts etcd and waits until its `/health` answers true.
pub async fn start(binary: &Path, options: &EtcdOptions) -> anyhow::Result<Etcd> {
    std::fs::create_dir_all(&options.data_dir)?;
    let client = format!("http://127.0.0.1:{}", options.client_port);
    let peer = format!("http://127.0.0.1:{}", options.peer_port);
    let spec = ChildSpec::new("etcd", binary, &options.log_file)
        .args(["--name", "etcd1", "--data-dir"])
        .args([options.data_dir.display().to_string()])
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("etcd1={peer}")])
        .args(["--initial-cluster-state", "new", "--log-level", "warn"]);
    let mut spec = spec;
    spec.parent_death_signal = options.on_parent_death;
    let mut process = Supervised::spawn(&spec)?;
    match wait_healthy(&mut process, &client).await {
        Ok(()) => Ok(Etcd {
            client_port: options.client_port,
            process,
        }),
        Err(e) => {
            let _ = process.stop(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

async fn wait_healthy(process: &mut Supervised, client_url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.exited() {
            anyhow::bail!(
                "etcd exited during start-up ({status}):\n{}",
                process.log_tail(20)
            );
        }
        if let Ok(response) = http.get(format!("{client_url}/health")).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && body["health"] == "true"
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "etcd was not healthy within 30 s:\n{}",
            process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
