//! What a running `bookstore up` tells other commands: `.bookstore/state.json` (processes, ports,
//! URLs) and `.bookstore/secrets.json` (generated passwords, mode 0600, reused on every start).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One supervised process as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    pub name: String,
    pub kind: String,
    pub pid: u32,
    /// Base URL of its HTTP server (for PostgreSQL: its connection address without credentials).
    pub url: String,
    pub log: PathBuf,
}

/// The platform as last written by `up`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The `bookstore up` process supervising everything.
    pub up_pid: u32,
    pub gateway_url: String,
    pub registry_url: String,
    pub postgres_port: u16,
    /// True once every process answered ready and demo data is in place.
    pub ready: bool,
    pub processes: Vec<ProcessInfo>,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn read(dir: &Path) -> anyhow::Result<Option<State>> {
        match std::fs::read(Self::path(dir)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Written atomically (temp file + rename) so readers never see half a file.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        write_atomically(&Self::path(dir), &serde_json::to_vec_pretty(self)?, 0o644)
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(Self::path(dir));
    }
}

/// Passwords generated on the first `up` and kept for the next ones.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub postgres_superuser: String,
    pub books_db: String,
    pub orders_db: String,
}

impl Secrets {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Secrets> {
        let path = dir.join("secrets.json");
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        let secrets = Secrets {
            postgres_superuser: generate_password(),
            books_db: generate_password(),
            orders_db: generate_password(),
        };
        write_atomically(&path, &serde_json::to_vec_pretty(&secrets)?, 0o600)?;
        Ok(secrets)
    }
}

/// 24 alphanumeric characters: ~142 bits, and safe inside SQL literals and URLs without escaping.
pub fn generate_password() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_private_and_then_reused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = Secrets::load_or_create(dir.path())?;
        let second = Secrets::load_or_create(dir.path())?;
        assert_eq!(first.books_db, second.books_db);
        assert_ne!(first.books_db, first.orders_db);
        let mode = std::fs::metadata(dir.path().join("secrets.json"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn state_round_trips() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(State::read(dir.path())?, None);
        let state = State {
            up_pid: 7,
            ready: true,
            ..State::default()
        };
        state.write(dir.path())?;
        assert_eq!(State::read(dir.path())?, Some(state));
        Ok(())
    }
}
