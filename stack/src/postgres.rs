//! A PostgreSQL server of our own: located binaries, `initdb`, start on a chosen port as the right OS
//! user, service roles and databases, clean stop. Used by `bookstore up` and by the test harness.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::os_user::{self, RunAs};
use crate::process::{ChildSpec, Supervised};

/// The superuser every cluster we create has.
pub const SUPERUSER: &str = "postgres";

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds PostgreSQL 15+ server binaries: `BOOKSTORE_PG_BIN`, Debian's layout, then `PATH`.
    pub fn locate() -> anyhow::Result<PgBinaries> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(dir) = std::env::var("BOOKSTORE_PG_BIN") {
            candidates.push(dir.into());
        }
        for version in [17, 16, 15] {
            candidates.push(format!("/usr/lib/postgresql/{version}/bin").into());
        }
        if let Ok(path) = std::env::var("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates
            .into_iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
            .map(|bin_dir| PgBinaries { bin_dir })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "PostgreSQL server binaries (initdb, postgres) were not found: install them with `apt-get install postgresql-15` or set BOOKSTORE_PG_BIN to their directory"
                )
            })
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Server settings that differ between a launcher and a test run.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `false` turns off fsync and friends: fast, and fine for throw-away test clusters only.
    pub durable: bool,
    pub max_connections: u32,
    /// Needed by two-phase commit (PREPARE TRANSACTION); every server we start has it.
    pub max_prepared_transactions: u32,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            durable: true,
            max_connections: 200,
            max_prepared_transactions: 100,
        }
    }
}

/// Creates a new cluster in `data_dir` (which must not exist yet): superuser `postgres` with
/// `password`, password (SCRAM) authentication over TCP, trust only on the private Unix socket.
/// `C.UTF-8`: byte-order sorting like `C`, but `lower()` and text search fold non-ASCII letters.
pub async fn init_cluster(
    bins: &PgBinaries,
    data_dir: &Path,
    password: &str,
    run_as: Option<RunAs>,
) -> anyhow::Result<()> {
    init_cluster_with(bins, data_dir, password, run_as, &[]).await
}

/// [`init_cluster`] with extra initdb arguments (e.g. `--no-sync` for a throw-away cluster, which
/// halves initdb's time on a busy disk).
pub async fn init_cluster_with(
    bins: &PgBinaries,
    data_dir: &Path,
    password: &str,
    run_as: Option<RunAs>,
    extra_args: &[&str],
) -> anyhow::Result<()> {
    let parent = data_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", data_dir.display()))?;
    std::fs::create_dir_all(parent)?;
    let pwfile = parent.join(".initdb-pw");
    std::fs::write(&pwfile, password)?;
    os_user::hand_over(&pwfile, run_as)?;
    std::fs::create_dir_all(data_dir)?;
    os_user::hand_over(data_dir, run_as)?;
    let mut command = tokio::process::Command::new(bins.tool("initdb"));
    command
        .arg("--pgdata")
        .arg(data_dir)
        .args([
            "--username",
            SUPERUSER,
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
        ])
        .args(["--auth-local", "trust", "--auth-host", "scram-sha-256"])
        .args(extra_args)
        .arg(format!("--pwfile={}", pwfile.display()));
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    let output = command.output().await;
    let _ = std::fs::remove_file(&pwfile);
    let output = output.map_err(|e| anyhow::anyhow!("cannot run initdb: {e}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A running PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    pub data_dir: PathBuf,
    superuser_password: String,
    process: Supervised,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// How to start one server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub port: u16,
    pub superuser_password: String,
    pub run_as: Option<RunAs>,
    pub settings: PgSettings,
    /// Sent to the postmaster if we die first: SIGINT (fast shutdown) for a launcher,
    /// SIGQUIT (immediate) for throw-away test servers.
    pub on_parent_death: Signal,
}

impl StartOptions {
    /// A throw-away server whose data is `<dir>/data` (socket and log in `dir` too): fsync off, and
    /// an immediate stop (SIGQUIT) if we die first. For tests and scratch restores.
    pub fn throwaway(dir: &Path, port: u16, password: &str, run_as: Option<RunAs>) -> StartOptions {
        StartOptions {
            data_dir: dir.join("data"),
            socket_dir: dir.join("run"),
            log_file: dir.join("postgres.log"),
            port,
            superuser_password: password.to_owned(),
            run_as,
            settings: PgSettings {
                durable: false,
                ..PgSettings::default()
            },
            on_parent_death: Signal::SIGQUIT,
        }
    }
}

/// Starts the server and waits until it accepts connections. A port taken by someone else is a clear
/// error (`PortInUse`) so callers can pick another.
pub async fn start(bins: &PgBinaries, options: &StartOptions) -> anyhow::Result<PgServer> {
    std::fs::create_dir_all(&options.socket_dir)?;
    os_user::hand_over(&options.socket_dir, options.run_as)?;
    let settings = &options.settings;
    let mut args: Vec<String> = vec![
        "-D".into(),
        options.data_dir.display().to_string(),
        "-p".into(),
        options.port.to_string(),
        "-k".into(),
        options.socket_dir.display().to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        format!("max_connections={}", settings.max_connections),
        "-c".into(),
        format!(
            "max_prepared_transactions={}",
            settings.max_prepared_transactions
        ),
    ];
    if !settings.durable {
        for setting in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            args.extend(["-c".to_string(), setting.to_string()]);
        }
    }
    let mut spec = ChildSpec::new("postgres", bins.tool("postgres"), &options.log_file).args(args);
    spec.run_as = options.run_as;
    spec.stop_signal = Signal::SIGINT;
    spec.parent_death_signal = options.on_parent_death;
    let mut process = Supervised::spawn(&spec)?;
    let server = wait_accepting(&mut process, options).await;
    match server {
        Ok(()) => Ok(PgServer {
            port: options.port,
            data_dir: options.data_dir.clone(),
            superuser_password: options.superuser_password.clone(),
            process,
        }),
        Err(e) => {
            let _ = process.stop(Duration::from_secs(5)).await;
            Err(e)
        }
    }
}

/// Starts a server on a probed free loopback port, retrying (5 times) when another process takes
/// the port between the probe and the bind. `options(port)` describes the server on that port.
pub async fn start_on_free_port(
    bins: &PgBinaries,
    options: impl Fn(u16) -> StartOptions,
) -> anyhow::Result<PgServer> {
    let mut last_error = None;
    for _ in 0..5 {
        match start(bins, &options(crate::ports::free_port()?)).await {
            Ok(server) => return Ok(server),
            Err(e) if e.is::<PortInUse>() => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free port for PostgreSQL")))
}

/// Start-up failed because the port was taken; retry elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("port {0} is already in use")]
pub struct PortInUse(pub u16);

async fn wait_accepting(process: &mut Supervised, options: &StartOptions) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let url = admin_url_for(options.port, &options.superuser_password, "postgres");
    loop {
        if let Some(status) = process.exited() {
            let tail = process.log_tail(20);
            if tail.contains("Address already in use") {
                return Err(PortInUse(options.port).into());
            }
            anyhow::bail!("PostgreSQL exited during start-up ({status}):\n{tail}");
        }
        if let Ok(options) = PgConnectOptions::from_str(&url)
            && let Ok(conn) = sqlx::PgConnection::connect_with(&options).await
        {
            let _ = conn.close().await;
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "PostgreSQL did not accept connections within 60 s:\n{}",
                process.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_url_for(port: u16, password: &str, database: &str) -> String {
    format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/{database}")
}

impl PgServer {
    /// A superuser URL for `database`.
    pub fn admin_url(&self, database: &str) -> String {
        admin_url_for(self.port, &self.superuser_password, database)
    }

    /// A URL logging in as `role` with `password`.
    pub fn url(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub async fn admin_pool(&self, database: &str) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.admin_url(database))
            .await?)
    }

    /// Creates (or updates the password of) login role `name` and a database `name` it owns, which
    /// nobody else may connect to. Idempotent, so `up` can run it on every start.
    pub async fn ensure_service_database(&self, name: &str, password: &str) -> anyhow::Result<()> {
        let admin = self.admin_pool("postgres").await?;
        crate::accounts::ensure_login_role(&admin, name, password).await?;
        crate::accounts::ensure_owned_database(&admin, name, name).await?;
        admin.close().await;
        Ok(())
    }

    /// Makes the server's roles and databases match the accounts description.
    pub async fn apply_accounts(
        &self,
        accounts: &crate::accounts::Accounts,
        password: impl Fn(&str) -> String,
    ) -> anyhow::Result<()> {
        crate::accounts::apply(
            accounts,
            async |db: &str| self.admin_pool(db).await,
            password,
        )
        .await
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Fast shutdown (rolls back open transactions, keeps prepared ones), then waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.process.stop(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Immediate shutdown (SIGQUIT) and a short wait, callable from `Drop`: for throw-away servers
    /// whose data is deleted anyway.
    pub fn stop_immediately(&mut self) {
        let _ = self.process.signal(Signal::SIGQUIT);
        for _ in 0..100 {
            if self.process.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn process_mut(&mut self) -> &mut Supervised {
        &mut self.process
    }
}
