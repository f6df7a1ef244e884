//! `bookstore accounts apply`: makes any PostgreSQL server or cluster match the accounts file, the
//! way `up` does on its own servers — for compose, Kubernetes or a cluster run by someone else.
//! Idempotent: it creates what is missing and resets passwords and privileges to what the file says.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection as _, PgPool};

use crate::accounts::{self, Accounts};
use crate::state::Secrets;

#[derive(Debug, clap::Args)]
pub struct AccountsArgs {
    #[command(subcommand)]
    pub action: AccountsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountsAction {
    /// Create or update the roles and databases of the accounts file on the primary.
    Apply(ApplyArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A superuser's URL; several hosts (postgres://postgres@h1:5432,h2:5432/postgres) for a
    /// cluster, whose primary is found. Without a password in it, `PGPASSWORD` is used.
    #[arg(long, env = "BOOKSTORE_ACCOUNTS_URL")]
    pub url: String,
    /// The accounts file. Default: the one built in (deploy/postgres/accounts.toml).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A `secrets.json` as `bookstore up` writes it, for the passwords no variable gives.
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// How long to wait for a reachable primary (a cluster still starting), in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

/// `bookstore accounts …`.
pub async fn run(args: AccountsArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        AccountsAction::Apply(args) => apply(args).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let accounts = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Accounts::parse(&text).with_context(|| format!("{} is invalid", path.display()))?
        }
        None => Accounts::shipped()?,
    };
    let secrets = args.secrets.as_deref().map(load_secrets).transpose()?;
    let passwords = passwords(&accounts, |name| std::env::var(name).ok(), secrets.as_ref())?;
    let primary = find_primary(&args.url, Duration::from_secs(args.wait)).await?;
    let admin = async |database: &str| -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(1)
            .connect_with(primary.clone().database(database))
            .await?)
    };
    let password_of = |role: &str| {
        passwords
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    accounts::apply(&accounts, admin, password_of).await?;
    println!(
        "accounts applied on {}:{}: roles {}; databases {}",
        primary.get_host(),
        primary.get_port(),
        accounts.roles().join(", "),
        accounts
            .service
            .iter()
            .map(|s| s.database.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn load_secrets(path: &Path) -> anyhow::Result<Secrets> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a secrets.json", path.display()))
}

/// The variable that holds `role`'s password: `BOOKS_DB_PASSWORD` for `books` (the names
/// `.env.example` uses); `…_FILE` names a file holding it (Docker and Kubernetes secrets).
pub fn password_variable(role: &str) -> String {
    format!("{}_DB_PASSWORD", role.to_ascii_uppercase())
}

/// Every role's password, from its variable, else the file its `…_FILE` variable names, else
/// `secrets`; one error naming every role left without one.
fn passwords(
    accounts: &Accounts,
    env: impl Fn(&str) -> Option<String>,
    secrets: Option<&Secrets>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for role in accounts.roles() {
        let variable = password_variable(role);
        let from_file = || -> anyhow::Result<Option<String>> {
            let Some(path) = env(&format!("{variable}_FILE")) else {
                return Ok(None);
            };
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{variable}_FILE: cannot read {path}"))?;
            Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
        };
        let password = match env(&variable) {
            Some(value) => Some(value),
            None => from_file()?,
        }
        .or_else(|| secrets.map(|s| s.password_for(role)))
        .filter(|p| !p.is_empty());
        match password {
            Some(password) => found.push((role.to_owned(), password)),
            None => missing.push(variable),
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "no password for {}: set each (or its _FILE variant), or pass --secrets .bookstore/secrets.json",
        missing.join(", ")
    );
    Ok(found)
}

/// The connect options of the member that is not in recovery, waiting up to `wait` for one.
async fn find_primary(url: &str, wait: Duration) -> anyhow::Result<PgConnectOptions> {
    let members = platform::db::cluster::member_urls(url)?;
    let mut options = Vec::new();
    for member in &members {
        let parsed = PgConnectOptions::from_str(member)
            .map_err(|e| anyhow::anyhow!("invalid URL {}: {e}", platform::db::redact(member)))?;
        options.push(parsed);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut seen = Vec::new();
        for member in &options {
            let name = format!("{}:{}", member.get_host(), member.get_port());
            match in_recovery(member).await {
                Ok(false) => return Ok(member.clone()),
                Ok(true) => seen.push(format!("{name} is a standby")),
                Err(e) => seen.push(format!("{name}: {e}")),
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no primary among {} after {} s: {}",
            members.len(),
            wait.as_secs(),
            seen.join("; ")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn in_recovery(member: &PgConnectOptions) -> anyhow::Result<bool> {
    // One plain connection, so a refused or failed login is reported as what it is.
    let connect = PgConnection::connect_with(member);
    let mut connection = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))??;
    let standby = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut connection)
        .await;
    let _ = connection.close().await;
    Ok(standby?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn passwords_come_from_variables_then_files_then_secrets() -> anyhow::Result<()> {
        let accounts = Accounts::parse(
            "[[service]]\nrole = \"books\"\ndatabase = \"books\"\n\
             [[service]]\nrole = \"orders\"\ndatabase = \"orders\"\n\
             [[reader]]\nrole = \"warehouse_reader\"\ndatabases = [\"books\"]",
        )?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("orders-password");
        std::fs::write(&file, "from file\n")?;
        let file = file.display().to_string();
        let env = env_of(&[
            ("BOOKS_DB_PASSWORD", "it's 'quoted'"),
            ("ORDERS_DB_PASSWORD_FILE", &file),
        ]);
        let mut secrets: Secrets =
            serde_json::from_str(r#"{"postgres_superuser":"s","books_db":"b","orders_db":"o"}"#)?;
        secrets
            .role_passwords
            .insert("warehouse_reader".into(), "from secrets".into());
        let found = passwords(&accounts, &env, Some(&secrets))?;
        assert_eq!(
            found,
            [
                ("books".to_owned(), "it's 'quoted'".to_owned()),
                ("orders".to_owned(), "from file".to_owned()),
                ("warehouse_reader".to_owned(), "from secrets".to_owned()),
            ]
        );
        let error = passwords(&accounts, &env, None).expect_err("one is missing");
        assert!(
            error.to_string().contains("WAREHOUSE_READER_DB_PASSWORD"),
            "{error}"
        );
        Ok(())
    }
}
