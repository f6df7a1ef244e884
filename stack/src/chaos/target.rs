//! What `loadgen` and `chaos` aim at: a running `bookstore up`, found through its state and
//! secrets — the gateway, the admin login that funds the generator's customers, and superuser
//! connections to the databases for the invariant checks.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::postgres::SUPERUSER;
use crate::state::{ADMIN_EMAIL, Secrets, State};

/// A running platform.
pub struct Platform {
    pub dir: PathBuf,
    pub state: State,
    pub secrets: Secrets,
}

impl Platform {
    pub fn find(dir: &Path) -> anyhow::Result<Platform> {
        let state = State::read(dir)?.filter(|s| s.ready).ok_or_else(|| {
            anyhow::anyhow!(
                "no ready platform runs from {}: start one with `bookstore up --dir {}`",
                dir.display(),
                dir.display()
            )
        })?;
        anyhow::ensure!(
            Secrets::path(dir).is_file(),
            "{} is missing: it is written by `bookstore up`",
            Secrets::path(dir).display()
        );
        Ok(Platform {
            dir: dir.to_path_buf(),
            secrets: Secrets::load_or_create(dir)?,
            state,
        })
    }

    pub fn target(&self, gateway: Option<&str>) -> loadgen::Target {
        loadgen::Target {
            gateway: gateway.unwrap_or(&self.state.gateway_url).to_owned(),
            admin_email: ADMIN_EMAIL.to_owned(),
            admin_password: self.secrets.admin_password.clone(),
        }
    }

    /// The superuser URL of `database` on the platform's PostgreSQL server (`postgres_port`: with
    /// a cluster, its first member, which need not be the primary; [`databases`](Self::databases)
    /// follows the primary).
    pub fn admin_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.secrets.postgres_superuser, self.state.postgres_port
        )
    }

    /// Connections to the databases on the *current* primary: with a Patroni cluster, the member
    /// Patroni names leader whose PostgreSQL accepts writes (waiting up to 90 s for one, as after
    /// a failover); with one server, that server.
    pub async fn databases(&self) -> anyhow::Result<loadgen::Databases> {
        let port = match &self.state.cluster {
            Some(cluster) => {
                super::database::primary(
                    cluster,
                    &self.secrets.postgres_superuser,
                    Duration::from_secs(90),
                )
                .await?
                .pg_port
            }
            None => self.state.postgres_port,
        };
        Ok(loadgen::Databases {
            books: self.pool(port, "books").await?,
            orders: self.pool(port, "orders").await?,
        })
    }

    async fn pool(&self, port: u16, database: &str) -> anyhow::Result<sqlx::PgPool> {
        let url = super::database::member_url(&self.secrets.postgres_superuser, port, database);
        let options = PgConnectOptions::from_str(&url)?;
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the {database} database: {e}"))
    }
}
