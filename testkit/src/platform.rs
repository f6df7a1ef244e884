//! The whole platform as users run it: the real `bookstore up` in a temporary directory, on free
//! ports. Tests read its state (pids, URLs) to drive the gateway or to signal single processes.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use stack::process::{ChildSpec, Supervised};
use stack::state::{ProcessInfo, State};

/// A running `bookstore up`. Dropping it stops the platform (SIGTERM, then SIGKILL after 30 s).
pub struct TestPlatform {
    up: Option<Supervised>,
    dir: PathBuf,
    state: State,
    _tempdir: Option<tempfile::TempDir>,
}

impl TestPlatform {
    /// Starts the platform from `bookstore` (pass `env!("CARGO_BIN_EXE_bookstore")`) in a new directory.
    pub async fn start(bookstore: &Path) -> anyhow::Result<TestPlatform> {
        Self::start_with(bookstore, &[]).await
    }

    /// Like [`start`](Self::start), with component settings for `up` to pass on
    /// (`BOOKSTORE_<KIND>__<SETTING>`, see `stack::up::component_overrides`).
    pub async fn start_with(
        bookstore: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestPlatform> {
        Self::start_nodes(bookstore, env, 1).await
    }

    /// The platform on the real Patroni cluster `bookstore up` runs by default (one primary, four
    /// replicas, etcd): slower to start (~20–30 s), so only cluster tests use it.
    pub async fn start_cluster(
        bookstore: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestPlatform> {
        Self::start_nodes(bookstore, env, 5).await
    }

    async fn start_nodes(
        bookstore: &Path,
        env: &[(&str, &str)],
        pg_nodes: u16,
    ) -> anyhow::Result<TestPlatform> {
        let tempdir = tempfile::Builder::new().prefix("bookstore-up-").tempdir()?;
        let dir = tempdir.path().to_path_buf();
        let mut platform = Self::launch(bookstore, &dir, env, pg_nodes).await?;
        platform._tempdir = Some(tempdir);
        Ok(platform)
    }

    /// Starts the platform in `dir`, which may hold data of an earlier run.
    pub async fn start_in(bookstore: &Path, dir: &Path) -> anyhow::Result<TestPlatform> {
        Self::launch(bookstore, dir, &[], 1).await
    }

    /// Starts `bookstore up` with `--pg-nodes pg_nodes` (1: the single plain PostgreSQL that keeps
    /// the end-to-end tests fast).
    async fn launch(
        bookstore: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        pg_nodes: u16,
    ) -> anyhow::Result<TestPlatform> {
        std::fs::create_dir_all(dir)?;
        let spec = ChildSpec::new("bookstore up", bookstore, dir.join("up.log")).args([
            "up",
            "--dir",
            &dir.display().to_string(),
            "--gateway-port",
            "0",
            "--registry-port",
            "0",
            "--pg-nodes",
            &pg_nodes.to_string(),
            "--quiet",
        ]);
        // Prometheus and Alertmanager only for the tests that ask for them (with
        // `BOOKSTORE_NO_MONITORING=false`): two more servers per platform would slow every test.
        let spec = spec.env("BOOKSTORE_NO_MONITORING", "true");
        let spec = env
            .iter()
            .fold(spec, |spec, (key, value)| spec.env(*key, *value));
        let mut up = Supervised::spawn(&spec)?;
        let state = wait_until_ready(&mut up, dir).await?;
        Ok(TestPlatform {
            up: Some(up),
            dir: dir.to_path_buf(),
            state,
            _tempdir: None,
        })
    }

    pub fn gateway_url(&self) -> &str {
        &self.state.gateway_url
    }

    pub fn registry_url(&self) -> &str {
        &self.state.registry_url
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The processes of one kind (`books`, `orders`, `gateway`, `discovery`, `postgres`).
    pub fn processes(&self, kind: &str) -> Vec<ProcessInfo> {
        self.state
            .processes
            .iter()
            .filter(|p| p.kind == kind)
            .cloned()
            .collect()
    }

    /// Sends SIGTERM to `bookstore up` and waits for it to finish stopping everything.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let mut up = self
            .up
            .take()
            .ok_or_else(|| anyhow::anyhow!("already stopped"))?;
        up.stop(Duration::from_secs(60)).await
    }

    /// Keeps the directory (for a restart in the same place) and hands it to the caller.
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tempdir.take()
    }
}

async fn wait_until_ready(up: &mut Supervised, dir: &Path) -> anyhow::Result<State> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(state)) = State::read(dir)
            && state.ready
            && state.up_pid == up.pid().unwrap_or(0)
        {
            return Ok(state);
        }
        if let Some(status) = up.exited() {
            anyhow::bail!("bookstore up exited ({status}):\n{}", up.log_tail(30));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "bookstore up was not ready within 180 s:\n{}",
            up.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        let Some(mut up) = self.up.take() else { return };
        let _ = up.signal(Signal::SIGTERM);
        for _ in 0..300 {
            if up.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = up.signal(Signal::SIGKILL);
    }
}
