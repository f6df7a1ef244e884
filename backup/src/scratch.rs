//! A throw-away PostgreSQL server from the machine's binaries (initdb + start on a free loopback port,
//! as the `postgres` OS user when we are root), for `restore --scratch` and `--verify`. It stops and
//! its directory is deleted when dropped.

use stack::os_user;
use stack::postgres::{self, PgBinaries, PgServer, StartOptions};

use crate::url::ClusterUrl;

pub struct Scratch {
    server: Option<PgServer>,
    dir: tempfile::TempDir,
}

impl Scratch {
    pub async fn start(bins: &PgBinaries) -> anyhow::Result<Scratch> {
        let run_as = os_user::server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("bookstore-restore-")
            .tempdir()?;
        os_user::hand_over(dir.path(), run_as)?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        let data_dir = dir.path().join("data");
        // Thrown away afterwards: no need to wait for initdb's fsyncs.
        postgres::init_cluster_with(bins, &data_dir, &password, run_as, &["--no-sync"]).await?;
        let server = postgres::start_on_free_port(bins, |port| {
            StartOptions::throwaway(dir.path(), port, &password, run_as)
        })
        .await?;
        Ok(Scratch {
            server: Some(server),
            dir,
        })
    }

    /// The superuser URL of the scratch server.
    pub fn url(&self) -> anyhow::Result<ClusterUrl> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the scratch server has stopped"))?;
        Ok(server.admin_url("postgres").parse()?)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop().await;
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Immediate shutdown: its data goes with the directory.
        if let Some(mut server) = self.server.take() {
            server.stop_immediately();
        }
    }
}
