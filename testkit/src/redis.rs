//! Real Redis nodes for tests, from the machine's `redis-server` (the same start-up code as
//! `bookstore up`): loopback, a free port, AOF on, data in a temporary directory. A node can be
//! killed with SIGKILL and started again on the same port and directory, which is how tests make a
//! cache node fail and return.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use stack::redis::{RedisOptions, RedisServer};

/// A Redis node owned by a test. Dropping it kills the server (and removes its directory when the
/// test created it).
pub struct TestRedis {
    server: Option<RedisServer>,
    options: RedisOptions,
    binary: PathBuf,
    port: u16,
    _tempdir: Option<tempfile::TempDir>,
}

impl TestRedis {
    /// A new node on a free port in a new directory.
    pub async fn start() -> anyhow::Result<TestRedis> {
        let tempdir = tempfile::Builder::new()
            .prefix("bookstore-redis-")
            .tempdir()?;
        let mut redis = Self::start_in(tempdir.path(), 0).await?;
        redis._tempdir = Some(tempdir);
        Ok(redis)
    }

    /// A node with its data in `dir` on `port` (0: a free one) — e.g. to bring back, on the same
    /// address and AOF, a node `bookstore up` started and a test killed.
    pub async fn start_in(dir: &Path, port: u16) -> anyhow::Result<TestRedis> {
        let binary = stack::redis::locate()?;
        let options = RedisOptions {
            name: "test-redis".into(),
            dir: dir.to_path_buf(),
            log_file: dir.join("redis.log"),
            port,
            appendfsync: stack::redis::DEFAULT_APPENDFSYNC.into(),
            on_parent_death: Signal::SIGKILL,
        };
        let server = stack::redis::start(&binary, &options).await?;
        Ok(TestRedis {
            port: server.port,
            server: Some(server),
            options,
            binary,
            _tempdir: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, its name on the cache ring.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then waits for the process to be gone (nothing flushed, nothing said goodbye).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut server) = self.server.take() {
            server.process.signal(Signal::SIGKILL)?;
            server.process.wait().await?;
        }
        Ok(())
    }

    /// Starts the node again on the same port and directory (its AOF is replayed).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let options = RedisOptions {
            port: self.port,
            ..self.options.clone()
        };
        // The old socket may linger for a moment; retry the same port briefly.
        let mut last = None;
        for _ in 0..50 {
            match stack::redis::start(&self.binary, &options).await {
                Ok(server) => {
                    self.server = Some(server);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis did not restart")))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            let _ = server.process.signal(Signal::SIGKILL);
        }
    }
}
