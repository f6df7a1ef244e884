//! Cutting one cluster member off from etcd and the other members on loopback, where every member
//! shares 127.0.0.1: by process and user, with a cgroup (v2) and nftables (run as root).
//!
//! - The victim's Patroni, postmaster and backends move into their own cgroup; nftables drops what
//!   sockets of that cgroup send to etcd's and the other members' ports.
//! - What the other members send to the victim's PostgreSQL and REST ports is dropped by the
//!   sender's user: members run as the database user, the services and this tool do not — so
//!   clients still reach the isolated primary (the hard case for split brain) while its peers don't.
//!   Its own Patroni (in the cgroup) keeps talking to its own PostgreSQL.
//! - A socket keeps the cgroup it was created in, so the victim's connections made before the move,
//!   and the peers' connections to it, are destroyed (`ss -K`); they are made again, and cut.
//!
//! nft resolves `socket cgroupv2` paths under `/sys/fs/cgroup`, so the cgroup2 hierarchy must be
//! mounted there (or below it, as `unified/` on hybrid systems).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::MemberInfo;

const TABLE: &str = "bookstore_chaos_partition";
const NFT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A partition in place; [`heal`](Partition::heal) removes it.
pub struct Partition {
    /// The cgroup the victim's processes were moved into.
    cgroup: PathBuf,
    /// The cgroup they came from.
    home: PathBuf,
}

impl Partition {
    pub async fn cut(
        victim: &MemberInfo,
        patroni_pid: u32,
        others: &[MemberInfo],
        etcd_port: u16,
    ) -> anyhow::Result<Partition> {
        anyhow::ensure!(
            nix::unistd::Uid::effective().is_root(),
            "partitioning a member needs root (a cgroup and nftables rules)"
        );
        let nft = tool("nft").ok_or_else(|| {
            anyhow::anyhow!("nft is not installed: run scripts/setup.sh (apt-get install nftables)")
        })?;
        let ss = tool("ss").ok_or_else(|| {
            anyhow::anyhow!("ss is not installed: run scripts/setup.sh (apt-get install iproute2)")
        })?;
        let mount = cgroup2_mount()?;
        let nft_prefix = mount.strip_prefix(NFT_CGROUP_ROOT).map_err(|_| {
            anyhow::anyhow!(
                "cgroup2 is mounted at {}; nft matches cgroups only under {NFT_CGROUP_ROOT}",
                mount.display()
            )
        })?;
        let home_rel = cgroup_of(patroni_pid)?;
        let home = mount.join(home_rel.trim_start_matches('/'));
        let cgroup = home.join(format!("bookstore-partition-{}", victim.name));
        let _ = nft_delete(&nft);
        if !cgroup.is_dir() {
            std::fs::create_dir(&cgroup)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", cgroup.display()))?;
        }
        let partition = Partition {
            cgroup: cgroup.clone(),
            home,
        };
        let postmaster = crate::cluster::postmaster_pid(&victim.data_dir)
            .ok_or_else(|| anyhow::anyhow!("{} has no postmaster", victim.name))?;
        let roots = [patroni_pid as i32, postmaster];
        let mut victims = Vec::new();
        for root in roots {
            victims.push(root);
            victims.extend(children_of(root));
        }
        for pid in &victims {
            // A backend may exit meanwhile: only the two roots must move.
            let moved = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string());
            if let Err(e) = moved
                && roots.contains(pid)
            {
                let _ = partition.heal();
                anyhow::bail!("cannot move pid {pid} into {}: {e}", cgroup.display());
            }
        }
        let rel = nft_prefix.join(cgroup.strip_prefix(&mount)?);
        let level = cgroup.strip_prefix(&mount)?.components().count();
        let uid = std::fs::metadata(&victim.data_dir)?.uid();
        let mut theirs: Vec<u16> = others
            .iter()
            .flat_map(|m| [m.pg_port, rest_port(m)])
            .collect();
        theirs.push(etcd_port);
        let mine = [victim.pg_port, rest_port(victim)];
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let script = format!(
            "table inet {TABLE} {{\n\
               chain output {{\n\
                 type filter hook output priority 0; policy accept;\n\
                 socket cgroupv2 level {level} \"{rel}\" tcp dport {{ {theirs} }} drop\n\
                 socket cgroupv2 level {level} \"{rel}\" accept\n\
                 meta skuid {uid} tcp dport {{ {mine} }} drop\n\
               }}\n\
             }}\n",
            rel = rel.display(),
            theirs = list(&theirs),
            mine = list(&mine),
        );
        if let Err(e) = nft_apply(&nft, &script) {
            let _ = partition.heal();
            return Err(e);
        }
        // Connections made before: the victim's own (any but its servers'), and the peers' to its
        // servers. Destroyed at both ends; they come back in the cgroup and are cut.
        let inodes = socket_inodes(&victims);
        let sockets = tcp_sockets()?;
        let mut cut = HashSet::new();
        for s in &sockets {
            let victims_own = inodes.contains(&s.inode) && !mine.contains(&s.local);
            let peer_to_victim = mine.contains(&s.remote) && s.uid == uid;
            if victims_own || peer_to_victim {
                cut.insert((s.local, s.remote));
                cut.insert((s.remote, s.local));
            }
        }
        for (local, remote) in &cut {
            let _ = Command::new(&ss)
                .args([
                    "-K",
                    "-t",
                    "src",
                    &format!("127.0.0.1:{local}"),
                    "dst",
                    &format!("127.0.0.1:{remote}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(partition)
    }

    /// Removes the rules and moves every process of the cgroup (a restarted postmaster and its
    /// backends too) back where the victim came from.
    pub fn heal(&self) -> anyhow::Result<()> {
        if let Some(nft) = tool("nft") {
            let _ = nft_delete(&nft);
        }
        for _ in 0..50 {
            let procs =
                std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.home.join("cgroup.procs"), pid);
            }
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!(
            "the partition's rules are gone, but {} could not be removed",
            self.cgroup.display()
        )
    }
}

/// An administration tool on `PATH` or in the sbin directories (often not on a user's `PATH`).
fn tool(name: &str) -> Option<PathBuf> {
    crate::cluster::etcd::find_on_path(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

fn rest_port(member: &MemberInfo) -> u16 {
    member
        .rest_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

fn nft_apply(nft: &Path, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft refused the partition's rules (does the kernel match `socket cgroupv2`?): {}\n{script}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn nft_delete(nft: &Path) -> anyhow::Result<()> {
    let status = Command::new(nft)
        .args(["delete", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "no table {TABLE}");
    Ok(())
}

/// Where the cgroup2 hierarchy is mounted (`/proc/self/mountinfo`).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 hierarchy is mounted"))
}

/// The process's cgroup2 path (`0::/path`).
fn cgroup_of(pid: u32) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("pid {pid} is in no cgroup2 group"))
}

/// Every descendant of `pid` (PostgreSQL's backends and auxiliary processes).
fn children_of(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                all.push(child);
                queue.push(child);
            }
        }
    }
    all
}

/// The socket inodes the processes hold open.
fn socket_inodes(pids: &[i32]) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

struct TcpSocket {
    local: u16,
    remote: u16,
    uid: u32,
    inode: u64,
}

/// Established IPv4 TCP sockets on loopback (`/proc/net/tcp`).
fn tcp_sockets() -> anyhow::Result<Vec<TcpSocket>> {
    let text = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(text.lines().skip(1).filter_map(parse_tcp_line).collect())
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    (fields.get(3)? == &"01").then_some(())?;
    Some(TcpSocket {
        local: port(fields.get(1)?)?,
        remote: port(fields.get(2)?)?,
        uid: fields.get(7)?.parse().ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_tcp_line;

    #[test]
    fn established_sockets_are_read_from_proc_net_tcp() {
        let line = "   3: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000   101        0 123456 1 0000000000000000 20 4 30 10 -1";
        let socket = parse_tcp_line(line).expect("parsed");
        assert_eq!(
            (socket.local, socket.remote, socket.uid, socket.inode),
            (8080, 50000, 101, 123456)
        );
        let listening = line.replace(" 01 ", " 0A ");
        assert!(parse_tcp_line(&listening).is_none());
    }
}
