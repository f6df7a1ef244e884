//! Which OS user runs the database. PostgreSQL refuses to run as root, so when we are root we run it as
//! the `postgres` user the Debian packages create, and hand it the directories it needs.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, chown};

/// The user a server child process runs as, when it differs from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// `None` when we are not root (children run as us); the `postgres` user when we are.
pub fn server_user() -> anyhow::Result<Option<RunAs>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres")? {
        Some(user) => Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        None => anyhow::bail!(
            "running as root needs an unprivileged 'postgres' OS user for the database: create it with `useradd --system postgres` or run as a normal user"
        ),
    }
}

/// Gives `path` (recursively) to `user`, so the server can write its data, sockets and logs.
pub fn hand_over(path: &Path, user: Option<RunAs>) -> anyhow::Result<()> {
    let Some(user) = user else { return Ok(()) };
    let owner = (Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)));
    chown(path, owner.0, owner.1)
        .map_err(|e| anyhow::anyhow!("cannot hand {} to the database user: {e}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            hand_over(&entry?.path(), Some(user))?;
        }
    }
    Ok(())
}
