//! Supervised child processes: output to a log file, their own process group (so Ctrl-C reaches only
//! the launcher, which then stops children in order), and a parent-death signal so no child outlives a
//! launcher or test that died without cleaning up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::os_user::RunAs;

/// What to start and how to stop it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_file: PathBuf,
    pub run_as: Option<RunAs>,
    /// The signal that asks for a clean stop (SIGTERM for ours, SIGINT = fast shutdown for PostgreSQL).
    pub stop_signal: Signal,
    /// Sent to the child if the launcher dies first.
    pub parent_death_signal: Signal,
}

impl ChildSpec {
    pub fn new(name: &str, program: impl Into<PathBuf>, log_file: impl Into<PathBuf>) -> Self {
        ChildSpec {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log_file: log_file.into(),
            run_as: None,
            stop_signal: Signal::SIGTERM,
            parent_death_signal: Signal::SIGTERM,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running child we are responsible for stopping.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    pub log_file: PathBuf,
    child: Child,
    stop_signal: Signal,
}

impl Supervised {
    pub fn spawn(spec: &ChildSpec) -> anyhow::Result<Supervised> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(|e| anyhow::anyhow!("cannot open log {}: {e}", spec.log_file.display()))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // Our own settings must not leak into a child from the launcher's environment.
        for (key, _) in std::env::vars() {
            if key.starts_with(platform::config::ENV_PREFIX) {
                command.env_remove(key);
            }
        }
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(user) = spec.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        detach_and_tie_to_parent(&mut command, spec.parent_death_signal);
        let child = command.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start {} ({}): {e}",
                spec.name,
                spec.program.display()
            )
        })?;
        Ok(Supervised {
            name: spec.name.clone(),
            log_file: spec.log_file.clone(),
            child,
            stop_signal: spec.stop_signal,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (SIGKILL, SIGSTOP, SIGCONT… for fault tests).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("{} has already exited", self.name))?;
        kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Asks the child to stop, waits up to `grace`, then kills it. Never leaves it running.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let _ = self.signal(self.stop_signal);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                tracing::warn!(process = %self.name, "did not stop in time; killing it");
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }

    /// Waits for the child to exit by itself.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// The last `lines` lines of the child's log, to explain a failed start.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file, lines)
    }

    /// Waits until the child has written its bound address to `port_file`; fails at once if it exits.
    pub async fn wait_for_port_file(
        &mut self,
        port_file: &Path,
        timeout: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(port_file)
                && let Ok(addr) = text.trim().parse()
            {
                return Ok(addr);
            }
            self.fail_if_exited()?;
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{} did not start listening within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `url` answers 200; fails at once if the child exits.
    pub async fn wait_until_ready(&mut self, url: &str, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            self.fail_if_exited()?;
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} was not ready within {timeout:?}; last log lines:\n{}",
                    self.name,
                    self.log_tail(15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited() {
            anyhow::bail!(
                "{} exited during start-up ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(15)
            );
        }
        Ok(())
    }
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Puts the child in its own process group and asks the kernel to signal it when we die.
#[allow(unsafe_code)]
fn detach_and_tie_to_parent(command: &mut Command, on_parent_death: Signal) {
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe syscalls
    // (setpgid, prctl); it allocates nothing and touches no locks. It runs after setuid, so the
    // kernel does not clear the parent-death signal on the credential change.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(on_parent_death)?;
            Ok(())
        });
    }
}
