//! Redis nodes from the machine's `redis-server`, for `bookstore up` and the test harness: loopback
//! only, append-only file on, data in a directory of ours, on a port we choose (Redis cannot report
//! a port 0 it bound, so we probe a free one and retry if someone takes it first).
//!
//! Durability (docs/CACHE.md): `appendfsync everysec` by default. Redis write(2)s the AOF before it
//! answers a command, so a SIGKILLed (or crashed) `redis-server` loses nothing it acknowledged — the
//! bytes are in the kernel's page cache; only a machine crash or power loss can lose the last
//! second or two. `always` (fsync before answering) closes that too, at the cost of an fsync per
//! event-loop round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ports;
use crate::process::{ChildSpec, Supervised};

/// The `appendfsync` policy unless told otherwise.
pub const DEFAULT_APPENDFSYNC: &str = "everysec";

/// Where `redis-server` is: on PATH, or Debian's place.
pub fn locate() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "redis-server is not installed: run scripts/setup.sh (apt-get install redis-server)"
            )
        })
}

/// One node to start.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub name: String,
    /// Data directory (the AOF lives here); created if missing.
    pub dir: PathBuf,
    pub log_file: PathBuf,
    /// 0: pick a free port.
    pub port: u16,
    /// `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// Sent to the node if its launcher dies.
    pub on_parent_death: Signal,
}

/// A running node.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    pub process: Supervised,
}

impl RedisServer {
    /// `127.0.0.1:<port>`, the node's name on the cache ring.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts a node and waits until it answers `PING` (after loading its AOF). A port taken between
/// the probe and the bind is retried with another one, unless the port was asked for.
pub async fn start(binary: &Path, options: &RedisOptions) -> anyhow::Result<RedisServer> {
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("cannot create {}", options.dir.display()))?;
    let mut last_error = None;
    for _ in 0..5 {
        let port = match options.port {
            0 => ports::free_port()?,
            port => port,
        };
        match start_on(binary, options, port).await {
            Ok(server) => return Ok(server),
            Err(e) if options.port == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis did not start")))
}

async fn start_on(binary: &Path, options: &RedisOptions, port: u16) -> anyhow::Result<RedisServer> {
    let dir = std::fs::canonicalize(&options.dir)?;
    let mut spec = ChildSpec::new(&options.name, binary, &options.log_file).args(server_args(
        &dir,
        port,
        &options.appendfsync,
    ));
    spec.stop_signal = Signal::SIGTERM;
    spec.parent_death_signal = options.on_parent_death;
    let mut process = Supervised::spawn(&spec)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if ping(port).await {
            return Ok(RedisServer { port, process });
        }
        if let Some(status) = process.exited() {
            anyhow::bail!(
                "{} exited during start-up ({status}); last log lines:\n{}",
                options.name,
                process.log_tail(10)
            );
        }
        if tokio::time::Instant::now() > deadline {
            let _ = process.stop(Duration::from_secs(2)).await;
            anyhow::bail!("{} did not answer PING within 20 s", options.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `redis-server`'s command line for a node on `port` with its AOF in `dir` (also what
/// `bookstore chaos` restarts a killed node with).
pub fn server_args(dir: &Path, port: u16, appendfsync: &str) -> Vec<String> {
    vec![
        "--bind".to_string(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--dir".into(),
        dir.display().to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        appendfsync.to_owned(),
        // The AOF is the one persistence; no RDB snapshots competing for the disk.
        "--save".into(),
        String::new(),
        "--daemonize".into(),
        "no".into(),
        "--protected-mode".into(),
        "yes".into(),
        "--logfile".into(),
        String::new(),
    ]
}

/// Whether a Redis on `port` answers `PING` with `PONG` (not `-LOADING`) right now.
pub async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}
