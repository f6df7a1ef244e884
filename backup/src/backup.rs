//! `bookstore backup`: find the topology, pick the node, pause its replay just long enough to export
//! one snapshot per database, resume, dump from the snapshots, write the manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use stack::postgres::PgBinaries;
use tokio_util::sync::CancellationToken;

use crate::fingerprint;
use crate::manifest::{DumpFile, Manifest, hash_file};
use crate::marker::{self, Marker, Recovery};
use crate::pause;
use crate::progress;
use crate::snapshot::{self, Snapshots};
use crate::tools;
use crate::topology::{self, Choice, Role, Topology};
use crate::url::{self, ClusterUrl};

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The cluster, as a libpq multi-host URL: postgresql://user:pass@h1:p1,h2:p2/db?sslmode=…
    #[arg(long, env = "BOOKSTORE_BACKUP_URL")]
    pub url: String,
    /// Directory to write the dumps and manifest.json into (must not exist or be empty).
    /// Default: ./backup-<UTC time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A database to dump (repeat for several); default: the URL's database.
    #[arg(long = "database")]
    pub databases: Vec<String>,
    /// Back up from the primary when no replica can be used (loads the primary; no single LSN).
    #[arg(long)]
    pub allow_primary: bool,
    /// Where pause markers live, so a run after a killed one resumes its replica.
    #[arg(long, env = "BOOKSTORE_BACKUP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long to wait for the replica to report its replay paused, in seconds.
    #[arg(long, default_value_t = 30)]
    pub pause_timeout: u64,
    /// pg_dump's --lock-wait-timeout in seconds: fail instead of waiting forever for a table lock
    /// (a DDL lock replayed from the primary is held on the replica until the primary commits).
    #[arg(long, default_value_t = 60)]
    pub lock_wait_timeout: u64,
    /// Skip the per-table fingerprints (row count + content hash) that `restore --verify` checks;
    /// they read every table a second time.
    #[arg(long)]
    pub no_fingerprints: bool,
    /// Print only errors and the final summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

impl BackupArgs {
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }
}

fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("bookstore/backup")
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let url = url::parse(&args.url).context("--url")?;
    // From now on SIGINT/SIGTERM only cancel this token; the dump races it and resumes replay.
    let cancel = platform::shutdown::on_signal();
    let state_dir = args.state_dir();
    report_recoveries(
        &marker::recover_abandoned(&state_dir, &url).await,
        args.quiet,
    );
    let topology = topology::discover(&url).await?;
    report_topology(&topology, args.quiet);
    let choice = topology::choose(&topology, args.allow_primary)?;
    if choice.node.role == Role::Primary {
        eprintln!(
            "warning: backing up from the primary {}: it carries the read load, and each database gets its own snapshot",
            choice.node.addr
        );
    }
    progress::note(
        args.quiet,
        &format!("backing up from {} ({})", choice.node.addr, choice.reason),
    );
    let databases = if args.databases.is_empty() {
        vec![url.database().to_owned()]
    } else {
        args.databases.clone()
    };
    check_databases(&url, &choice, &databases).await?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "backup-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    prepare_out(&out)?;
    let job = Job {
        bins: PgBinaries::locate()?,
        url,
        choice,
        databases,
        out: out.clone(),
        args,
        state_dir,
        cancel,
    };
    match job.run().await {
        Ok(manifest) => {
            println!(
                "backup of {} from {} {} at LSN {} written to {}",
                manifest
                    .databases
                    .iter()
                    .map(|d| d.database.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                match manifest.role {
                    Role::Primary => "primary",
                    Role::Replica => "replica",
                },
                manifest.node,
                manifest.lsn,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            // No manifest means no backup: leave nothing that looks like one.
            let _ = std::fs::remove_dir_all(&out);
            Err(e)
        }
    }
}

fn report_recoveries(outcomes: &[Recovery], quiet: bool) {
    for outcome in outcomes {
        match outcome {
            Recovery::Resumed(node) => eprintln!(
                "warning: replica {node} was left paused by an earlier backup run that died; replay resumed"
            ),
            Recovery::Cleared(node) => {
                progress::note(quiet, &format!("cleared a stale pause marker for {node}"))
            }
            Recovery::InUse(node) => {
                progress::note(quiet, &format!("{node} is in use by another backup run"))
            }
            Recovery::Kept(node, why) => eprintln!(
                "warning: an earlier run left a pause marker for {node}, which could not be checked now ({why}); it is kept for the next run"
            ),
        }
    }
}

fn report_topology(topology: &Topology, quiet: bool) {
    for node in &topology.nodes {
        let role = match node.role {
            Role::Primary => "primary".to_owned(),
            Role::Replica => format!(
                "replica ({:?}{})",
                node.sync_state,
                if node.passive { ", passive" } else { "" }
            )
            .to_lowercase(),
        };
        progress::note(
            quiet,
            &format!(
                "  {}: {role}, PostgreSQL {}",
                node.addr, node.server_version
            ),
        );
    }
    for (addr, why) in &topology.unreachable {
        eprintln!("warning: {addr} is unreachable: {why}");
    }
}

/// Every database asked for must exist on the chosen node: say so before pausing anything.
async fn check_databases(
    url: &ClusterUrl,
    choice: &Choice,
    databases: &[String],
) -> anyhow::Result<()> {
    let mut conn =
        PgConnection::connect_with(&url.connect_options(&choice.node.addr, url.database())).await?;
    let present: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datallowconn")
            .fetch_all(&mut conn)
            .await?;
    let _ = conn.close().await;
    let missing: Vec<&String> = databases.iter().filter(|d| !present.contains(d)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "database {} does not exist on {} (it has: {})",
        missing
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        choice.node.addr,
        present.join(", ")
    );
    Ok(())
}

fn prepare_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out)?.next().is_none();
        anyhow::ensure!(
            empty,
            "{} exists and is not empty: choose a new --out directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// How often to pause again when replay moved while the snapshots were taken.
const FREEZE_ATTEMPTS: u32 = 5;

/// The snapshots a backup dumps from and the point they show.
struct Frozen {
    snapshots: Snapshots,
    lsn: String,
    last_replay_timestamp: Option<String>,
    paused_at: Option<chrono::DateTime<chrono::Utc>>,
    resumed_at: Option<chrono::DateTime<chrono::Utc>>,
}

struct Job {
    bins: PgBinaries,
    url: ClusterUrl,
    choice: Choice,
    databases: Vec<String>,
    out: PathBuf,
    args: BackupArgs,
    state_dir: PathBuf,
    cancel: CancellationToken,
}

impl Job {
    async fn run(&self) -> anyhow::Result<Manifest> {
        let started_at = chrono::Utc::now();
        let frozen = match self.choice.node.role {
            Role::Replica => self.interruptible(self.freeze()).await?,
            Role::Primary => self.snapshot_primary().await?,
        };
        let dumped = self.interruptible(self.dump_all(&frozen.snapshots)).await;
        frozen.snapshots.release().await;
        let manifest = self.manifest(
            started_at,
            frozen.lsn,
            frozen.last_replay_timestamp,
            frozen.paused_at,
            frozen.resumed_at,
            dumped?,
        );
        manifest.write(&self.out)?;
        Ok(manifest)
    }

    /// Pauses replay, exports every database's snapshot at the paused LSN, checks replay stayed
    /// put, and resumes — the pause lasts milliseconds, the dumps then read the snapshots. When
    /// replay moved in between (Patroni resumes any paused replay at its next loop), the snapshots
    /// are not at one LSN: they are dropped and the whole step is tried again.
    async fn freeze(&self) -> anyhow::Result<Frozen> {
        let node = &self.choice.node;
        let timeout = Duration::from_secs(self.args.pause_timeout);
        for attempt in 1..=FREEZE_ATTEMPTS {
            let marker = Marker::new(&self.state_dir, &node.addr, &node.system_identifier);
            let mut paused = pause::pause(&self.url, &node.addr, marker, timeout).await?;
            let paused_at = chrono::Utc::now();
            let exported = snapshot::export(&self.url, &node.addr, &self.databases).await;
            let unchanged = match &exported {
                Ok(_) => paused.check_unchanged().await,
                Err(_) => Ok(()),
            };
            let (lsn, last_replay_timestamp) =
                (paused.lsn.clone(), paused.last_replay_timestamp.clone());
            let resumed = paused.resume().await;
            let resumed_at = chrono::Utc::now();
            let snapshots = match (exported, resumed) {
                (Ok(snapshots), Ok(())) => snapshots,
                (Err(e), Ok(())) => {
                    return Err(e.context(format!("replay on {} was resumed", node.addr)));
                }
                (Ok(snapshots), Err(r)) => {
                    snapshots.release().await;
                    return Err(r);
                }
                (Err(e), Err(r)) => return Err(anyhow::anyhow!("{e:#}; and then {r:#}")),
            };
            if let Err(moved) = unchanged {
                snapshots.release().await;
                eprintln!(
                    "warning: {moved:#} (attempt {attempt} of {FREEZE_ATTEMPTS}); trying again"
                );
                continue;
            }
            progress::note(
                self.args.quiet,
                &format!(
                    "snapshots of {} taken on {} at LSN {lsn}; replay resumed",
                    self.databases.join(", "),
                    node.addr
                ),
            );
            return Ok(Frozen {
                snapshots,
                lsn,
                last_replay_timestamp,
                paused_at: Some(paused_at),
                resumed_at: Some(resumed_at),
            });
        }
        anyhow::bail!(
            "replay on {} was resumed by someone else during each of {FREEZE_ATTEMPTS} pauses, so no set of snapshots shares one LSN; is something resuming replay in a tight loop?",
            node.addr
        )
    }

    /// On the primary nothing stands still: each database gets its own snapshot, taken one after
    /// the other, and the LSN is the primary's once they are all taken.
    async fn snapshot_primary(&self) -> anyhow::Result<Frozen> {
        let snapshots =
            snapshot::export(&self.url, &self.choice.node.addr, &self.databases).await?;
        Ok(Frozen {
            snapshots,
            lsn: self.primary_lsn().await?,
            last_replay_timestamp: None,
            paused_at: None,
            resumed_at: None,
        })
    }

    /// Runs `work` unless SIGINT/SIGTERM comes first; then `work` is dropped, which kills pg_dump.
    async fn interruptible<T>(
        &self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => Err(anyhow::anyhow!("interrupted by a signal; the backup was abandoned")),
        }
    }

    async fn primary_lsn(&self) -> anyhow::Result<String> {
        let addr = &self.choice.node.addr;
        let mut conn =
            PgConnection::connect_with(&self.url.connect_options(addr, self.url.database()))
                .await?;
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(lsn)
    }

    async fn dump_all(&self, snapshots: &Snapshots) -> anyhow::Result<Vec<DumpFile>> {
        let mut files = Vec::new();
        for (i, database) in self.databases.iter().enumerate() {
            let file = file_name(database, i, &files);
            files.push(
                self.dump_one(database, snapshots.id(database)?, file)
                    .await?,
            );
        }
        Ok(files)
    }

    async fn dump_one(
        &self,
        database: &str,
        snapshot: &str,
        file: String,
    ) -> anyhow::Result<DumpFile> {
        let addr = &self.choice.node.addr;
        let path = self.out.join(&file);
        let log = self.out.join(format!("{file}.log"));
        let bar = progress::spinner(progress::visible(self.args.quiet));
        bar.set_prefix(format!("dumping {database}"));
        let args = vec![
            "--format=custom".to_owned(),
            "--verbose".to_owned(),
            "--no-password".to_owned(),
            format!("--lock-wait-timeout={}", self.args.lock_wait_timeout * 1000),
            format!("--snapshot={snapshot}"),
            format!("--file={}", path.display()),
            format!("--dbname={}", self.url.conninfo(addr, database)),
        ];
        tools::run(
            &self.bins,
            "pg_dump",
            args,
            &self.url,
            &log,
            Some(&path),
            &bar,
        )
        .await
        .with_context(|| format!("dumping {database} from {addr}"))?;
        let _ = std::fs::remove_file(&log);
        let tables = if self.args.no_fingerprints {
            None
        } else {
            bar.set_message("fingerprinting tables");
            Some(self.fingerprints(database, snapshot).await?)
        };
        bar.finish_and_clear();
        let (bytes, sha256) = hash_file(&path)?;
        Ok(DumpFile {
            database: database.to_owned(),
            file,
            bytes,
            sha256,
            tables,
        })
    }

    /// Fingerprints read the same snapshot as the dump, so they describe exactly what it holds.
    async fn fingerprints(
        &self,
        database: &str,
        snapshot: &str,
    ) -> anyhow::Result<Vec<fingerprint::TableFingerprint>> {
        let addr = &self.choice.node.addr;
        let mut conn =
            PgConnection::connect_with(&self.url.connect_options(addr, database)).await?;
        snapshot::import(&mut conn, snapshot).await?;
        let tables = fingerprint::fingerprint_database(&mut conn)
            .await
            .with_context(|| format!("fingerprinting {database} on {addr}"))?;
        let _ = sqlx::query("COMMIT").execute(&mut conn).await;
        let _ = conn.close().await;
        Ok(tables)
    }

    fn manifest(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        lsn: String,
        last_replay_timestamp: Option<String>,
        paused_at: Option<chrono::DateTime<chrono::Utc>>,
        resumed_at: Option<chrono::DateTime<chrono::Utc>>,
        databases: Vec<DumpFile>,
    ) -> Manifest {
        let node = &self.choice.node;
        Manifest {
            format: crate::manifest::FORMAT,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            source_url: self.url.to_string(),
            node: node.addr.to_string(),
            role: node.role,
            passive: node.passive,
            sync_state: (node.role == Role::Replica).then_some(node.sync_state),
            system_identifier: node.system_identifier.clone(),
            server_version: node.server_version.clone(),
            lsn,
            last_replay_timestamp,
            started_at,
            paused_at,
            resumed_at,
            finished_at: chrono::Utc::now(),
            databases,
        }
    }
}

/// `<database>.dump` with anything unusual in the name replaced, made unique.
fn file_name(database: &str, index: usize, taken: &[DumpFile]) -> String {
    let clean: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!("{clean}.dump");
    if taken.iter().any(|f| f.file == name) || clean.is_empty() {
        format!("{clean}-{index}.dump")
    } else {
        name
    }
}
