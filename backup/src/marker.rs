//! Markers for pauses in progress. A run writes one (in the state directory) before pausing a replica
//! and removes it after resuming. A marker left behind means a run died without resuming — SIGKILL,
//! or the machine went down — and the next run resumes that replica before anything else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use crate::pause::{self, ADVISORY_LOCK_KEY};
use crate::url::{ClusterUrl, HostPort};

/// One pause, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub host: String,
    pub port: u16,
    pub system_identifier: String,
    pub pid: u32,
    pub paused_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip)]
    path: PathBuf,
}

impl Marker {
    pub fn new(state_dir: &Path, node: &HostPort, system_identifier: &str) -> Marker {
        let name = format!(
            "paused-{}-{}.json",
            node.host.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            node.port
        );
        Marker {
            host: node.host.clone(),
            port: node.port,
            system_identifier: system_identifier.to_owned(),
            pid: std::process::id(),
            paused_at: chrono::Utc::now(),
            path: state_dir.join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Written (and synced) before pausing, so no pause can exist without its marker.
    pub fn write(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&file, self)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            anyhow::anyhow!("cannot write the pause marker {}: {e}", self.path.display())
        })
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn node(&self) -> HostPort {
        HostPort {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// Markers in `state_dir`; unreadable files are reported and skipped.
pub fn load_all(state_dir: &Path) -> Vec<Marker> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut markers = Vec::new();
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let is_marker = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("paused-") && n.ends_with(".json"));
        if !is_marker {
            continue;
        }
        match std::fs::read(&path).map(|b| serde_json::from_slice::<Marker>(&b)) {
            Ok(Ok(mut marker)) => {
                marker.path = path;
                markers.push(marker);
            }
            _ => eprintln!(
                "warning: ignoring unreadable pause marker {}",
                path.display()
            ),
        }
    }
    markers
}

/// What became of one marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The replica was still paused by a dead run; replay is running again.
    Resumed(HostPort),
    /// The dead run's replica was not paused any more; the marker was stale.
    Cleared(HostPort),
    /// A live run still owns it (its process or the advisory lock): left alone.
    InUse(HostPort),
    /// Could not be checked now (unreachable, other cluster): the marker stays.
    Kept(HostPort, String),
}

/// Resumes replicas left paused by runs that died, using `url`'s credentials. A pause is ours to
/// undo only if its marker's process is gone *and* nobody holds the advisory lock on the replica.
pub async fn recover_abandoned(state_dir: &Path, url: &ClusterUrl) -> Vec<Recovery> {
    let mut outcomes = Vec::new();
    for marker in load_all(state_dir) {
        let node = marker.node();
        if marker.pid != std::process::id() && process_alive(marker.pid) {
            outcomes.push(Recovery::InUse(node));
            continue;
        }
        match recover_one(url, &marker).await {
            Ok(outcome) => {
                if !matches!(outcome, Recovery::InUse(_)) {
                    marker.remove();
                }
                outcomes.push(outcome);
            }
            Err(e) => outcomes.push(Recovery::Kept(node, format!("{e:#}"))),
        }
    }
    outcomes
}

async fn recover_one(url: &ClusterUrl, marker: &Marker) -> anyhow::Result<Recovery> {
    let node = marker.node();
    let mut conn = PgConnection::connect_with(&url.connect_options(&node, url.database())).await?;
    let (system_id, in_recovery): (Option<String>, bool) = sqlx::query_as(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery()",
    )
    .fetch_one(&mut conn)
    .await?;
    anyhow::ensure!(
        system_id.as_deref() == Some(marker.system_identifier.as_str()),
        "{node} is now another cluster (system {system_id:?}, the marker says {})",
        marker.system_identifier
    );
    if !in_recovery {
        return Ok(Recovery::Cleared(node));
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        return Ok(Recovery::InUse(node));
    }
    let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
        .fetch_one(&mut conn)
        .await?;
    if state == "not paused" {
        let _ = conn.close().await;
        return Ok(Recovery::Cleared(node));
    }
    pause::resume_on(url, &node, Some(conn)).await?;
    Ok(Recovery::Resumed(node))
}

/// Whether a `bookstore` process with this pid runs on this machine. The advisory lock is the real
/// test; this only spares a live run on another connection a needless check.
fn process_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("bookstore"))
}
