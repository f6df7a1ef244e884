//! Extra service instances joined to a running [`TestPlatform`]: the same binary, database and
//! registry as the platform's own, with settings of the test's choosing (e.g. injected faults).

use std::path::Path;
use std::time::Duration;

use stack::process::{ChildSpec, Supervised};
use stack::state::Secrets;

use crate::TestPlatform;

/// A component process started by a test; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Instance {
    pub process: Supervised,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl TestPlatform {
    /// Starts one more `kind` instance (`books`, `orders` or `coordinator`) registered like the others, with
    /// `extra_env` (`BOOKSTORE_…` settings) on top, and waits until it is ready.
    pub async fn spawn_instance(
        &self,
        bookstore: &Path,
        kind: &str,
        name: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Instance> {
        let secrets = Secrets::load_or_create(self.dir())?;
        let password = match kind {
            "books" => &secrets.books_db,
            "orders" => &secrets.orders_db,
            "coordinator" => &secrets.coordinator_db,
            other => anyhow::bail!("no database for {other}"),
        };
        let port = self.state().postgres_port;
        let port_file = self.dir().join("run").join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&port_file);
        let mut spec = ChildSpec::new(
            name,
            bookstore,
            self.dir().join("logs").join(format!("{name}.log")),
        )
        .args([kind])
        .env("BOOKSTORE_HTTP__LISTEN", "127.0.0.1:0")
        .env("BOOKSTORE_HTTP__PORT_FILE", port_file.display().to_string())
        .env(
            "BOOKSTORE_DB__URL",
            format!("postgres://{kind}:{password}@127.0.0.1:{port}/{kind}"),
        )
        .env("BOOKSTORE_REGISTRY__URL", self.registry_url());
        // The platform's auth settings (signing key, internal token, admin), like `up` gives its own.
        for (key, value) in secrets.auth_env() {
            spec = spec.env(key, value);
        }
        if kind == "books" {
            // The same cache ring as the platform's books: an instance outside it would not
            // invalidate what the others cache, and they could serve what it replaced.
            let nodes: Vec<String> = self
                .processes("redis")
                .iter()
                .map(|p| format!("\"{}\"", p.url.trim_start_matches("redis://")))
                .collect();
            if !nodes.is_empty() {
                spec = spec.env("BOOKSTORE_CACHE__NODES", format!("[{}]", nodes.join(",")));
            }
        }
        for (key, value) in extra_env {
            spec = spec.env(*key, *value);
        }
        let mut process = Supervised::spawn(&spec)?;
        let addr = process
            .wait_for_port_file(&port_file, Duration::from_secs(30))
            .await?;
        let url = format!("http://{addr}");
        process
            .wait_until_ready(&format!("{url}/health/ready"), Duration::from_secs(60))
            .await?;
        Ok(Instance { process, url })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.process.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.process.signal(nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if self.process.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.signal(nix::sys::signal::Signal::SIGKILL);
    }
}
