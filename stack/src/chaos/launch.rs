//! Faults on single processes of a running platform, and bringing them back the way `up` started
//! them: the same program, arguments and environment (read from `/proc/<pid>` before the kill),
//! log and port file — the registry on its old port — started by `up` itself on request
//! (see [`super::restart`]).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::restart::{self, Request};
use crate::state::ProcessInfo;

/// How a process was started, as the kernel still knows it.
#[derive(Debug, Clone)]
pub struct Launch {
    pub info: ProcessInfo,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// Reads `/proc/<pid>/cmdline` and `environ` of a running process.
    pub fn capture(info: &ProcessInfo) -> anyhow::Result<Launch> {
        let read = |file: &str| {
            std::fs::read(format!("/proc/{}/{file}", info.pid)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read /proc/{}/{file} of {}: {e}",
                    info.pid,
                    info.name
                )
            })
        };
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        };
        let args = split(read("cmdline")?);
        anyhow::ensure!(!args.is_empty(), "{} has no command line", info.name);
        let env = split(read("environ")?)
            .into_iter()
            .filter_map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        Ok(Launch {
            info: info.clone(),
            args,
            env,
        })
    }

    /// Asks `up` to start the process again with `extra_env` on top, and waits until it is ready.
    /// The registry keeps its old port, because everyone else was told that one.
    pub async fn respawn(
        &self,
        dir: &Path,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<ProcessInfo> {
        self.respawn_until(dir, extra_env, Until::Ready).await
    }

    /// Like [`Launch::respawn`], waiting for `until` instead of readiness.
    pub async fn respawn_until(
        &self,
        dir: &Path,
        extra_env: &[(&str, String)],
        until: Until,
    ) -> anyhow::Result<ProcessInfo> {
        let mut env = self.env.clone();
        if self.info.kind == "discovery" {
            let port = self.info.url.rsplit(':').next().unwrap_or("0").to_owned();
            set(
                &mut env,
                "BOOKSTORE_HTTP__LISTEN",
                format!("127.0.0.1:{port}"),
            );
        }
        for (key, value) in extra_env {
            set(&mut env, key, value.clone());
        }
        let request = Request {
            name: self.info.name.clone(),
            program: self.args[0].clone().into(),
            args: self.args[1..].to_vec(),
            env,
        };
        restart::ask(dir, &request)?;
        let info =
            restart::wait_restarted(dir, &self.info.name, self.info.pid, Duration::from_secs(60))
                .await?;
        wait_health(
            &format!("{}/health/ready", info.url),
            until,
            Duration::from_secs(60),
        )
        .await?;
        Ok(info)
    }
}

/// What a respawn waits for.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// `/health/ready` answers 2xx.
    Ready,
    /// `/health/ready` answers 503 with a reason containing the text: the process runs and
    /// refuses traffic on purpose (a skewed clock).
    NotReadyBecause(&'static str),
}

async fn wait_health(url: &str, until: Until, patience: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Ok(response) = http.get(url).send().await {
            let status = response.status();
            match until {
                Until::Ready if status.is_success() => return Ok(()),
                Until::NotReadyBecause(reason)
                    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && response
                            .text()
                            .await
                            .is_ok_and(|body| body.contains(reason)) =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{url} did not reach {until:?} within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value));
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| anyhow::anyhow!("pid {pid} out of range"))?;
    kill(Pid::from_raw(pid), signal)
        .map_err(|e| anyhow::anyhow!("cannot send {signal} to {pid}: {e}"))
}

/// SIGKILL, then waits until the process is gone (or a zombie its parent has yet to reap: it holds
/// no sockets any more).
pub async fn kill_and_wait(pid: u32) -> anyhow::Result<()> {
    stop_and_wait(pid, Signal::SIGKILL, Duration::from_secs(5)).await
}

/// SIGTERM (deregister, drain, exit — an operator's restart), then waits like [`kill_and_wait`].
pub async fn terminate_and_wait(pid: u32) -> anyhow::Result<()> {
    stop_and_wait(pid, Signal::SIGTERM, Duration::from_secs(30)).await
}

async fn stop_and_wait(pid: u32, sent: Signal, patience: Duration) -> anyhow::Result<()> {
    signal(pid, sent)?;
    wait_exit(pid, patience)
        .await
        .map_err(|e| anyhow::anyhow!("{e} of {sent}"))
}

/// Waits up to `patience` until `pid` is gone, or a zombie its parent has yet to reap (it holds no
/// sockets any more): `kill(2)` only queues a signal, and a big process takes a while to tear down.
pub async fn wait_exit(pid: u32, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("process {pid} did not exit within {patience:?}")
}

/// A process stopped with SIGSTOP; dropping this sends SIGCONT, so an error or a panic never leaves
/// a platform frozen.
pub struct Frozen {
    pid: u32,
    thawed: bool,
}

impl Frozen {
    pub fn freeze(pid: u32) -> anyhow::Result<Frozen> {
        signal(pid, Signal::SIGSTOP)?;
        Ok(Frozen { pid, thawed: false })
    }

    pub fn thaw(mut self) -> anyhow::Result<()> {
        self.thawed = true;
        signal(self.pid, Signal::SIGCONT)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = signal(self.pid, Signal::SIGCONT);
        }
    }
}

/// The `appendfsync` policy a running Redis node uses (its command line is overwritten by its
/// process title, so ask it), for restarting it the same way.
pub async fn redis_appendfsync(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$11\r\nappendfsync\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    ["always", "everysec", "no"]
        .into_iter()
        .find(|policy| text.lines().any(|line| line == *policy))
        .map(str::to_owned)
}
