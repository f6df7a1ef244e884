//! A throw-away PostgreSQL per test. `initdb` runs once per machine into a cached template (guarded by a
//! file lock, so parallel test processes share it safely); each test copies the template, which takes a
//! fraction of initdb's time, and starts its own server on a free port with fsync off.

use std::path::{Path, PathBuf};

use stack::os_user::{self, RunAs};
use stack::postgres::{self, PgBinaries, PgServer, StartOptions};

/// The superuser password of every test cluster; they listen on loopback only and live for one test.
pub(crate) const TEST_PASSWORD: &str = "testkit";
/// Bump when the template's initdb options change, so stale caches are not reused.
const TEMPLATE_VERSION: &str = "v2";

/// A running PostgreSQL server owned by one test.
pub struct TestPostgres {
    server: Option<PgServer>,
    _dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts a fresh server with the superuser `postgres`.
    pub async fn start() -> anyhow::Result<TestPostgres> {
        let bins = PgBinaries::locate()?;
        let run_as = os_user::server_user()?;
        let template = ensure_template(&bins, run_as).await?;
        let dir = tempfile::Builder::new().prefix("bookstore-pg-").tempdir()?;
        os_user::hand_over(dir.path(), run_as)?;
        let data_dir = dir.path().join("data");
        copy_dir(&template, &data_dir).await?;
        Self::start_in(&bins, run_as, dir).await
    }

    /// Starts the server whose data directory is `<dir>/data` on a free port (retried if taken).
    pub(crate) async fn start_in(
        bins: &PgBinaries,
        run_as: Option<RunAs>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<TestPostgres> {
        let server = postgres::start_on_free_port(bins, |port| {
            StartOptions::throwaway(dir.path(), port, TEST_PASSWORD, run_as)
        })
        .await?;
        Ok(TestPostgres {
            server: Some(server),
            _dir: dir,
        })
    }

    /// The server's directory (data in `data/`, log in `postgres.log`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn server(&self) -> &PgServer {
        // Only `Drop` takes the server out.
        self.server.as_ref().expect("server present until drop")
    }

    pub fn port(&self) -> u16 {
        self.server().port
    }

    /// A superuser URL for `database`.
    pub fn admin_url(&self, database: &str) -> String {
        self.server().admin_url(database)
    }

    /// Creates a login role and a database of the same name it owns; returns the role's URL.
    pub async fn service_database(&self, name: &str) -> anyhow::Result<String> {
        let password = format!("{name}pw");
        self.server()
            .ensure_service_database(name, &password)
            .await?;
        Ok(self.server().url(name, &password, name))
    }

    /// Applies the shipped accounts (`deploy/postgres/accounts.toml`), every role's password being
    /// [`role_password`] as in [`service_database`](Self::service_database); nothing to remember:
    /// [`role_url`](Self::role_url) builds any role's URL.
    pub async fn apply_accounts(&self) -> anyhow::Result<()> {
        let accounts = stack::accounts::Accounts::shipped()?;
        self.server().apply_accounts(&accounts, role_password).await
    }

    /// The URL of `role` (password [`role_password`]) on `database`.
    pub fn role_url(&self, role: &str, database: &str) -> String {
        self.server().url(role, &role_password(role), database)
    }

    /// The server itself, for tests that stop or signal it.
    pub fn server_mut(&mut self) -> &mut PgServer {
        self.server.as_mut().expect("server present until drop")
    }
}

/// A test role's password: its name without underscores, then `pw` (the stack only takes
/// alphanumeric passwords); for a service role the same as [`TestPostgres::service_database`]'s.
pub fn role_password(role: &str) -> String {
    format!("{}pw", role.replace('_', ""))
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the data is thrown away with the directory anyway.
        if let Some(mut server) = self.server.take() {
            server.stop_immediately();
        }
    }
}

/// The cached, initialised data directory every test copies.
async fn ensure_template(bins: &PgBinaries, run_as: Option<RunAs>) -> anyhow::Result<PathBuf> {
    let root = std::env::temp_dir().join("bookstore-testkit");
    std::fs::create_dir_all(&root)?;
    let version = bins
        .bin_dir
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let template = root.join(format!("pg-template-{TEMPLATE_VERSION}-{version}"));
    let lock = std::fs::File::create(root.join("template.lock"))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    let result = async {
        if template.join("PG_VERSION").is_file() {
            return Ok(template.clone());
        }
        let scratch = root.join(format!("init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        postgres::init_cluster(bins, &scratch.join("data"), TEST_PASSWORD, run_as).await?;
        let _ = std::fs::remove_dir_all(&template);
        std::fs::rename(scratch.join("data"), &template)?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(template.clone())
    }
    .await;
    let _ = lock.unlock();
    result
}

/// `cp -a`, which keeps the owner (the database user) and modes PostgreSQL insists on.
async fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "copying the PostgreSQL template failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_test_server_creates_service_databases_only_their_role_can_use() -> anyhow::Result<()>
    {
        let pg = TestPostgres::start().await?;
        let url = pg.service_database("books").await?;
        let pool = sqlx::PgPool::connect(&url).await?;
        let who: String = sqlx::query_scalar("SELECT current_user")
            .fetch_one(&pool)
            .await?;
        assert_eq!(who, "books");
        let max_prepared: String = sqlx::query_scalar("SHOW max_prepared_transactions")
            .fetch_one(&pool)
            .await?;
        assert_eq!(max_prepared, "100");
        pg.service_database("orders").await?;
        let wrong = url.replace("/books", "/orders");
        assert!(
            sqlx::PgPool::connect(&wrong).await.is_err(),
            "the books role must not connect to the orders database"
        );
        Ok(())
    }

    #[tokio::test]
    async fn servers_started_in_parallel_do_not_clash() -> anyhow::Result<()> {
        let (a, b) = tokio::try_join!(TestPostgres::start(), TestPostgres::start())?;
        assert_ne!(a.port(), b.port());
        Ok(())
    }
}
