//! `bookstore restore`: check the manifest's checksums, restore into a named database or a scratch
//! server, and with `--verify` compare every table with the fingerprints the source replica had at
//! the backup's LSN.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use stack::postgres::PgBinaries;

use crate::fingerprint::{self, Mismatch};
use crate::manifest::{DumpFile, Manifest};
use crate::progress;
use crate::scratch::Scratch;
use crate::tools;
use crate::url::{self, ClusterUrl, HostPort};

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// A backup directory written by `bookstore backup` (holding manifest.json).
    #[arg(long)]
    pub from: PathBuf,
    /// Restore into this new database on the server of --url (refused if it exists).
    #[arg(long, requires = "url", conflicts_with = "scratch")]
    pub into_database: Option<String>,
    /// The server to restore into (with --into-database); the first host that is not a replica is used.
    #[arg(long, env = "BOOKSTORE_RESTORE_URL")]
    pub url: Option<String>,
    /// Restore every database into a throw-away server started from the machine's binaries.
    #[arg(long)]
    pub scratch: bool,
    /// Which database of the backup to restore (default: all with --scratch, the only one otherwise).
    #[arg(long)]
    pub database: Option<String>,
    /// After restoring, compare each table's row count and content hash with the source at the
    /// backup's LSN (implies --scratch unless --into-database is given).
    #[arg(long)]
    pub verify: bool,
    /// Do not restore ownership and privileges (the roles of the source need not exist).
    #[arg(long)]
    pub no_owner: bool,
    /// Print only errors and the final summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::read(&args.from)?;
    manifest.check_files(&args.from)?;
    progress::note(
        args.quiet,
        &format!(
            "{}: checksums match ({} file(s)); taken from {} at LSN {}",
            args.from.display(),
            manifest.databases.len(),
            manifest.node,
            manifest.lsn
        ),
    );
    let bins = PgBinaries::locate()?;
    let chosen = select(
        &manifest,
        args.database.as_deref(),
        args.into_database.is_some(),
    )?;
    match (&args.into_database, &args.url) {
        (Some(name), Some(raw)) => {
            let url = url::parse(raw).context("--url")?;
            let dump = chosen
                .first()
                .ok_or_else(|| anyhow::anyhow!("nothing to restore"))?;
            let node = writable_node(&url).await?;
            restore_one(&bins, &url, &node, &args, dump, name, args.no_owner).await?;
            if args.verify {
                verify(&url, &node, &[(dump, name.clone())], args.quiet).await?;
            }
            println!("restored {} into database {name} on {node}", dump.database);
            Ok(ExitCode::SUCCESS)
        }
        (Some(_), None) => {
            anyhow::bail!("--into-database needs --url (the server to restore into)")
        }
        (None, _) if args.scratch || args.verify => into_scratch(&bins, &args, &chosen).await,
        (None, _) => {
            anyhow::bail!("say where to restore: --into-database NAME --url URL, or --scratch")
        }
    }
}

async fn into_scratch(
    bins: &PgBinaries,
    args: &RestoreArgs,
    chosen: &[&DumpFile],
) -> anyhow::Result<ExitCode> {
    progress::note(args.quiet, "starting a scratch PostgreSQL server");
    let scratch = Scratch::start(bins).await?;
    let url = scratch.url()?;
    let node = url.hosts[0].clone();
    let mut restored = Vec::new();
    for dump in chosen {
        // The source's roles do not exist on a fresh server.
        restore_one(bins, &url, &node, args, dump, &dump.database, true).await?;
        restored.push((*dump, dump.database.clone()));
    }
    if args.verify {
        let outcome = verify(&url, &node, &restored, args.quiet).await;
        scratch.stop().await;
        outcome?;
        println!(
            "verified: {} restored into a scratch server equal the source at its LSN",
            restored
                .iter()
                .map(|(d, _)| d.database.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("restored into a scratch server: {}", admin_url(&url, &node));
    println!(
        "it runs until Ctrl-C, then it is stopped and deleted ({})",
        scratch.dir().display()
    );
    platform::shutdown::wait_for_signal().await;
    scratch.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn admin_url(url: &ClusterUrl, node: &HostPort) -> String {
    format!(
        "postgresql://{}:{}@{node}/postgres",
        url.user.as_deref().unwrap_or("postgres"),
        url.password().unwrap_or_default()
    )
}

/// The dumps to restore: the one named, every one (scratch), or the only one (named target).
fn select<'m>(
    manifest: &'m Manifest,
    database: Option<&str>,
    single: bool,
) -> anyhow::Result<Vec<&'m DumpFile>> {
    let names = || {
        manifest
            .databases
            .iter()
            .map(|d| d.database.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match database {
        Some(name) => {
            let dump = manifest
                .databases
                .iter()
                .find(|d| d.database == name)
                .ok_or_else(|| {
                    anyhow::anyhow!("the backup has no database {name:?} (it has: {})", names())
                })?;
            Ok(vec![dump])
        }
        None if single && manifest.databases.len() > 1 => anyhow::bail!(
            "the backup holds several databases ({}): choose one with --database",
            names()
        ),
        None => Ok(manifest.databases.iter().collect()),
    }
}

/// The first host of the URL that accepts writes.
async fn writable_node(url: &ClusterUrl) -> anyhow::Result<HostPort> {
    let mut reasons = Vec::new();
    for node in &url.hosts {
        match PgConnection::connect_with(&url.connect_options(node, url.database())).await {
            Ok(mut conn) => {
                let replica: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut conn)
                    .await?;
                let _ = conn.close().await;
                if !replica {
                    return Ok(node.clone());
                }
                reasons.push(format!("{node} is a replica"));
            }
            Err(e) => reasons.push(format!("{node}: {e}")),
        }
    }
    anyhow::bail!("no host of --url accepts writes ({})", reasons.join("; "))
}

/// Creates `target` (refusing an existing one: a restore never overwrites data) and runs pg_restore.
async fn restore_one(
    bins: &PgBinaries,
    url: &ClusterUrl,
    node: &HostPort,
    args: &RestoreArgs,
    dump: &DumpFile,
    target: &str,
    no_owner: bool,
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&url.connect_options(node, url.database())).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(target)
            .fetch_one(&mut conn)
            .await?;
    anyhow::ensure!(
        !exists,
        "database {target:?} already exists on {node}: restore into a new name, or drop it first"
    );
    let create: String =
        sqlx::query_scalar("SELECT format('CREATE DATABASE %I TEMPLATE template0', $1::text)")
            .bind(target)
            .fetch_one(&mut conn)
            .await?;
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("pg_restore.log");
    let file = args.from.join(&dump.file);
    let bar = progress::spinner(progress::visible(args.quiet));
    bar.set_prefix(format!("restoring {} into {target}", dump.database));
    let mut tool_args = vec![
        "--verbose".to_owned(),
        "--exit-on-error".to_owned(),
        "--no-password".to_owned(),
        format!("--dbname={}", url.conninfo(node, target)),
    ];
    if no_owner {
        tool_args.extend(["--no-owner".to_owned(), "--no-privileges".to_owned()]);
    }
    tool_args.push(file.display().to_string());
    let result = tools::run(bins, "pg_restore", tool_args, url, &log, None, &bar).await;
    bar.finish_and_clear();
    result.with_context(|| format!("restoring {} into {target} on {node}", file.display()))
}

/// Compares each restored database with the manifest's fingerprints; any difference is an error
/// listing them all.
async fn verify(
    url: &ClusterUrl,
    node: &HostPort,
    restored: &[(&DumpFile, String)],
    quiet: bool,
) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    for (dump, target) in restored {
        let Some(expected) = &dump.tables else {
            anyhow::bail!(
                "the backup of {} has no table fingerprints (taken with --no-fingerprints): only its checksums could be verified",
                dump.database
            );
        };
        let mut conn = PgConnection::connect_with(&url.connect_options(node, target)).await?;
        let actual = fingerprint::fingerprint_database(&mut conn).await?;
        let _ = conn.close().await;
        let mismatches: Vec<Mismatch> = fingerprint::compare(expected, &actual);
        let rows: u64 = actual.iter().map(|t| t.rows).sum();
        progress::note(
            quiet,
            &format!(
                "{}: {} tables, {rows} rows, {} difference(s)",
                dump.database,
                actual.len(),
                mismatches.len()
            ),
        );
        problems.extend(mismatches.iter().map(|m| format!("{}.{m}", dump.database)));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "the restore differs from the source at the backup's LSN:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}
