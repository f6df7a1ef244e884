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

    /// The superuser URL of `database` on the platform's PostgreSQL. With one server that is
    /// `postgres_port`; a replicated cluster will answer with its current primary here.
    pub fn admin_url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.secrets.postgres_superuser, self.state.postgres_port
        )
    }

    pub async fn databases(&self) -> anyhow::Result<loadgen::Databases> {
        Ok(loadgen::Databases {
            books: self.pool("books").await?,
            orders: self.pool("orders").await?,
        })
    }

    async fn pool(&self, database: &str) -> anyhow::Result<sqlx::PgPool> {
        let options = PgConnectOptions::from_str(&self.admin_url(database))?;
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the {database} database: {e}"))
    }
}
