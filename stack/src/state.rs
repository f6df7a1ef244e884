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
    /// The PostgreSQL cluster's members, when `up` runs one (`--pg-nodes` > 1).
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterInfo>,
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

/// The admin account's login email on a platform started by `up`.
pub const ADMIN_EMAIL: &str = "admin@bookstore.local";

/// Passwords and keys generated on the first `up` and kept for the next ones. A `secrets.json`
/// written before a field existed gets that field generated (and saved) on the next `up`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub postgres_superuser: String,
    pub books_db: String,
    pub orders_db: String,
    /// The coordinator's database password.
    #[serde(default)]
    pub coordinator_db: String,
    /// The HS256 key every service and the gateway sign and verify access tokens with.
    #[serde(default)]
    pub jwt_secret: String,
    /// The credential for service-to-service `/internal/*` calls.
    #[serde(default)]
    pub internal_token: String,
    /// The admin account's password (its email is `auth.admin_email`, `admin@bookstore.local`).
    #[serde(default)]
    pub admin_password: String,
    /// Passwords of the other roles in `deploy/postgres/accounts.toml` and of the cluster's
    /// replication role (`replicator`), generated when first needed.
    #[serde(default)]
    pub role_passwords: std::collections::BTreeMap<String, String>,
}

impl Secrets {
    /// The `[auth]` settings every service and the gateway get, as `BOOKSTORE_AUTH__*` variables.
    pub fn auth_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BOOKSTORE_AUTH__JWT_SECRET", self.jwt_secret.clone()),
            (
                "BOOKSTORE_AUTH__INTERNAL_TOKEN",
                self.internal_token.clone(),
            ),
            ("BOOKSTORE_AUTH__ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
            (
                "BOOKSTORE_AUTH__ADMIN_PASSWORD",
                self.admin_password.clone(),
            ),
        ]
    }

    /// The password of a database role (empty for a role `up` does not know).
    pub fn password_for(&self, role: &str) -> String {
        self.fixed_password(role)
            .or_else(|| self.role_passwords.get(role))
            .cloned()
            .unwrap_or_default()
    }

    fn fixed_password(&self, role: &str) -> Option<&String> {
        match role {
            "books" => Some(&self.books_db),
            "orders" => Some(&self.orders_db),
            "coordinator" => Some(&self.coordinator_db),
            _ => None,
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join("secrets.json")
    }

    pub fn load_or_create(dir: &Path) -> anyhow::Result<Secrets> {
        let path = Self::path(dir);
        let (mut secrets, mut changed) = match std::fs::read(&path) {
            Ok(bytes) => (serde_json::from_slice::<Secrets>(&bytes)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Secrets {
                    postgres_superuser: generate_password(),
                    books_db: generate_password(),
                    orders_db: generate_password(),
                    coordinator_db: String::new(),
                    jwt_secret: String::new(),
                    internal_token: String::new(),
                    admin_password: String::new(),
                    role_passwords: Default::default(),
                },
                true,
            ),
            Err(e) => return Err(e.into()),
        };
        for (field, length) in [
            (&mut secrets.coordinator_db, 24),
            (&mut secrets.jwt_secret, 48),
            (&mut secrets.internal_token, 32),
            (&mut secrets.admin_password, 24),
        ] {
            if field.is_empty() {
                *field = generate_secret(length);
                changed = true;
            }
        }
        for role in crate::accounts::Accounts::shipped()?
            .roles()
            .into_iter()
            .chain([crate::cluster::patroni::REPLICATION_USER])
        {
            if secrets.fixed_password(role).is_none() && !secrets.role_passwords.contains_key(role)
            {
                secrets
                    .role_passwords
                    .insert(role.to_owned(), generate_password());
                changed = true;
            }
        }
        if changed {
            write_atomically(&path, &serde_json::to_vec_pretty(&secrets)?, 0o600)?;
        }
        Ok(secrets)
    }
}

/// 24 alphanumeric characters: ~142 bits, and safe inside SQL literals and URLs without escaping.
pub fn generate_password() -> String {
    generate_secret(24)
}

/// `length` random alphanumeric characters (~5.95 bits each).
pub fn generate_secret(length: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(length)
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
    fn auth_secrets_are_generated_long_enough_and_reused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = Secrets::load_or_create(dir.path())?;
        assert!(first.jwt_secret.len() >= 32, "HS256 needs a 32-byte key");
        assert!(!first.internal_token.is_empty() && !first.admin_password.is_empty());
        let second = Secrets::load_or_create(dir.path())?;
        assert_eq!(
            (first.jwt_secret, first.admin_password),
            (second.jwt_secret, second.admin_password)
        );
        Ok(())
    }

    #[test]
    fn an_old_secrets_file_gets_the_new_fields_and_keeps_the_old_ones() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secrets.json");
        std::fs::write(
            &path,
            r#"{"postgres_superuser": "pg-old", "books_db": "books-old", "orders_db": "orders-old"}"#,
        )?;
        let upgraded = Secrets::load_or_create(dir.path())?;
        assert_eq!(upgraded.books_db, "books-old");
        assert_eq!(upgraded.postgres_superuser, "pg-old");
        assert!(upgraded.jwt_secret.len() >= 32);
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        assert_eq!(saved["jwt_secret"], upgraded.jwt_secret.as_str());
        assert_eq!(saved["orders_db"], "orders-old");
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
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
