//! `manifest.json`: what a backup holds and where it came from — node, role, LSN, times, server
//! version, and each dump file's size and SHA-256 (plus its tables' fingerprints). Restore trusts a
//! file only after its checksum matches.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fingerprint::TableFingerprint;
use crate::topology::{Role, SyncState};

pub const FILE_NAME: &str = "manifest.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The `bookstore` version that wrote it.
    pub tool_version: String,
    /// The URL given, password hidden.
    pub source_url: String,
    /// `host:port` of the node dumped.
    pub node: String,
    pub role: Role,
    pub passive: bool,
    pub sync_state: Option<SyncState>,
    pub system_identifier: String,
    pub server_version: String,
    /// The replica's replay LSN while paused for the snapshots: every database shows the cluster at
    /// this point. For a primary backup, `pg_current_wal_lsn()` once every database's snapshot was
    /// taken (each has its own).
    pub lsn: String,
    pub last_replay_timestamp: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub paused_at: Option<chrono::DateTime<chrono::Utc>>,
    pub resumed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub databases: Vec<DumpFile>,
}

/// One database's dump (pg_dump custom format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpFile {
    pub database: String,
    /// Relative to the backup directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    /// Absent when the backup ran with `--no-fingerprints`.
    pub tables: Option<Vec<TableFingerprint>>,
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(FILE_NAME);
        let file = std::fs::File::create(&path)?;
        serde_json::to_writer_pretty(&file, self)?;
        file.sync_all()?;
        Ok(path)
    }

    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} cannot be read ({e}): is {} a backup directory?",
                path.display(),
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a valid manifest: {e}", path.display()))?;
        anyhow::ensure!(
            manifest.format == FORMAT,
            "{} has format {}; this bookstore reads format {FORMAT}",
            path.display(),
            manifest.format
        );
        Ok(manifest)
    }

    /// Checks every file's size and SHA-256 against the manifest; the first mismatch is an error that
    /// names the file and both values.
    pub fn check_files(&self, dir: &Path) -> anyhow::Result<()> {
        for dump in &self.databases {
            let path = dir.join(&dump.file);
            anyhow::ensure!(
                !dump.file.contains('/') && !dump.file.starts_with('.'),
                "the manifest names an unexpected file {:?}",
                dump.file
            );
            let (bytes, sha256) = hash_file(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            anyhow::ensure!(
                bytes == dump.bytes && sha256 == dump.sha256,
                "{} is corrupted: the manifest says {} bytes with sha256 {}, the file has {bytes} bytes with sha256 {sha256}; do not restore it",
                path.display(),
                dump.bytes,
                dump.sha256
            );
        }
        Ok(())
    }
}

/// Size and SHA-256 (hex) of a file, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, format!("{:x}", hasher.finalize())))
}
