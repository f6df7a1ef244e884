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

/// Lets `user` reach `dir` (which we own) and checks it can pass every directory above it. A
/// private temporary directory (mode 0700) gains the "others may pass through" bit only — not read.
pub fn make_reachable(dir: &Path, user: Option<RunAs>) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(user) = user else { return Ok(()) };
    let dir = std::fs::canonicalize(dir)?;
    let mode = std::fs::metadata(&dir)?.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o001))?;
    }
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        let passable = meta.mode() & 0o001 != 0 || meta.uid() == user.uid;
        anyhow::ensure!(
            passable,
            "the database user cannot reach {}: {} is private; use a --dir outside it or run as a normal user",
            dir.display(),
            ancestor.display()
        );
    }
    Ok(())
}
