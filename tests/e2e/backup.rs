//! `bookstore backup` and `bookstore restore` against real streaming replication (a primary and
//! `pg_basebackup -R` replicas) and the Patroni cluster: consistency under write load, the choice of
//! replica, replay running again on every way a run can end, and restores that detect tampering.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use testkit::replication::{wait_for, wait_sql};
use testkit::{ReplicaOptions, TestCluster, TestReplicaSet};

use crate::bookstore;

const ACCOUNTS: i64 = 50;
const OPENING_BALANCE: i64 = 1_000;

/// `bookstore <args>` to completion, with CI set so no progress is drawn.
fn run(args: &[&str]) -> Output {
    Command::new(bookstore())
        .args(args)
        .env("CI", "1")
        .output()
        .expect("bookstore runs")
}

/// `bookstore backup --url URL --out OUT --state-dir STATE EXTRA…` to completion.
fn run_backup(url: &str, out: &Path, state: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "backup",
        "--url",
        url,
        "--out",
        path(out),
        "--state-dir",
        path(state),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn manifest(dir: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("manifest.json"),
    )?)?)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A `bank` database with accounts that transfers move money between (the sum never changes) and a
/// ledger of those transfers.
async fn create_bank(set: &TestReplicaSet) -> anyhow::Result<PgPool> {
    create_bank_at(
        &set.primary.admin_url("postgres"),
        &set.primary.admin_url("bank"),
    )
    .await
}

/// [`create_bank`] on any primary, given its superuser URLs for `postgres` and `bank`.
async fn create_bank_at(postgres_url: &str, bank_url: &str) -> anyhow::Result<PgPool> {
    let admin = PgPool::connect(postgres_url).await?;
    sqlx::query("CREATE DATABASE bank").execute(&admin).await?;
    admin.close().await;
    let bank = PgPool::connect(bank_url).await?;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE transfers (id bigserial PRIMARY KEY, src bigint, dst bigint, amount bigint,
                                 at timestamptz DEFAULT now(), note text);",
    )
    .execute(&bank)
    .await?;
    sqlx::query("INSERT INTO accounts SELECT g, $1 FROM generate_series(1, $2) g")
        .bind(OPENING_BALANCE)
        .bind(ACCOUNTS)
        .execute(&bank)
        .await?;
    Ok(bank)
}

async fn transfer(bank: &PgPool, n: u64) -> anyhow::Result<()> {
    let src = (n * 7 % ACCOUNTS as u64) as i64 + 1;
    let dst = (n * 13 % ACCOUNTS as u64) as i64 + 1;
    let amount = (n % 17) as i64 + 1;
    let mut tx = bank.begin().await?;
    sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
        .bind(src)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
        .bind(dst)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO transfers (src, dst, amount, note) VALUES ($1, $2, $3, 'transfer ' || $4)",
    )
    .bind(src)
    .bind(dst)
    .bind(amount)
    .bind(n as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Transfers on the primary until `stop`; returns how many committed.
fn spawn_writer(
    bank: PgPool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            transfer(&bank, n).await?;
            n += 1;
            done.store(n, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// The rows of `table` as one md5, computed by SQL alone (independent of the tool's fingerprints).
async fn table_md5(url: &str, table: &str) -> anyhow::Result<(i64, String)> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::query("SET TimeZone = 'UTC'")
        .execute(&mut conn)
        .await?;
    let row: (i64, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text COLLATE \"C\")) FROM {table} t"
    )))
    .fetch_one(&mut conn)
    .await?;
    Ok((row.0, row.1.unwrap_or_default()))
}

async fn pause_state(url: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
        .fetch_one(&mut conn)
        .await?)
}

#[tokio::test]
async fn a_backup_under_write_load_restores_to_exactly_the_state_at_its_lsn() -> anyhow::Result<()>
{
    let set = TestReplicaSet::start(&[ReplicaOptions::named("r1")]).await?;
    let bank = create_bank(&set).await?;
    // The independent witness: a base backup from before the writes, replayed later to the LSN.
    let witness = set.base_backup().await?;
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = spawn_writer(bank.clone(), stop.clone(), done.clone());
    wait_for(Duration::from_secs(30), "some transfers", || {
        let n = done.load(Ordering::Relaxed);
        async move { Ok(n >= 50) }
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("b1");
    let url = set.url("bank");
    let before = done.load(Ordering::Relaxed);
    let state = dir.path().join("state");
    // Off the test's runtime thread, so the writer keeps writing while the backup runs.
    let backup = {
        let (url, out) = (url.clone(), out.clone());
        tokio::task::spawn_blocking(move || run_backup(&url, &out, &state, &[])).await?
    };
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    assert!(backup.status.success(), "{}", text(&backup));
    assert!(during > 0, "writes must run while the backup does");
    let m = manifest(&out)?;
    assert_eq!(m["role"], "replica");
    assert_eq!(m["node"], format!("127.0.0.1:{}", set.replicas[0].port()));
    let lsn = m["lsn"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        pause_state(&set.replicas[0].admin_url("postgres")).await?,
        "not paused"
    );

    // Restored next to the source with the tool's own check (every table equals the replica's
    // fingerprint at the LSN)…
    let restore = run(&[
        "restore",
        "--from",
        path(&out),
        "--into-database",
        "bank_restored",
        "--url",
        &set.primary.admin_url("postgres"),
        "--verify",
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    // …and an independent one: a point-in-time replica stopped exactly at the manifest's LSN.
    let at_lsn = set
        .start_replica(
            witness,
            &ReplicaOptions {
                name: "witness".into(),
                recovery_target_lsn: Some(lsn.clone()),
                ..Default::default()
            },
        )
        .await?;
    let witness_url = at_lsn.admin_url("postgres");
    wait_for(
        Duration::from_secs(30),
        "the witness to stop at the LSN",
        || {
            let url = witness_url.clone();
            async move { Ok(pause_state(&url).await.is_ok_and(|s| s == "paused")) }
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: log {}",
            stack::process::log_tail(&at_lsn.dir().join("postgres.log"), 10)
        )
    })?;
    let restored_url = set.primary.admin_url("bank_restored");
    let mut restored = PgConnection::connect(&restored_url).await?;
    let sum: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
        .fetch_one(&mut restored)
        .await?;
    assert_eq!(
        sum,
        ACCOUNTS * OPENING_BALANCE,
        "money is conserved in the backup"
    );
    for table in ["accounts", "transfers"] {
        let (rows, md5) = table_md5(&restored_url, table).await?;
        assert_eq!(
            (rows, md5),
            table_md5(&at_lsn.admin_url("bank"), table).await?,
            "{table} at {lsn}"
        );
    }
    let (in_backup, _) = table_md5(&restored_url, "transfers").await?;
    assert!(
        in_backup > 0 && (in_backup as u64) < done.load(Ordering::Relaxed),
        "a point in the middle of the writes"
    );
    Ok(())
}

#[tokio::test]
async fn the_passive_replica_is_preferred_and_a_synchronous_one_is_never_paused()
-> anyhow::Result<()> {
    let set = TestReplicaSet::start(&[
        ReplicaOptions::named("r1"),
        ReplicaOptions::named("r2").setting("bookstore.nofailover", "on"),
    ])
    .await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let url = set.url("postgres");
    let out = dir.path().join("passive");
    let first = run_backup(&url, &out, &state, &[]);
    assert!(first.status.success(), "{}", text(&first));
    let m = manifest(&out)?;
    assert_eq!(m["node"], format!("127.0.0.1:{}", set.replicas[1].port()));
    assert_eq!(
        (m["passive"].as_bool(), m["sync_state"].as_str()),
        (Some(true), Some("async"))
    );

    // Make the passive replica synchronous: pausing it would stall commits, so r1 is chosen.
    set.configure_primary("synchronous_standby_names", "r2")
        .await?;
    wait_sql(
        &set.primary.admin_url("postgres"),
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = 'r2' AND sync_state = 'sync')",
        "r2 to be synchronous",
    )
    .await?;
    let out = dir.path().join("async");
    let second = run_backup(&url, &out, &state, &[]);
    assert!(second.status.success(), "{}", text(&second));
    let m = manifest(&out)?;
    assert_eq!(m["node"], format!("127.0.0.1:{}", set.replicas[0].port()));
    assert_eq!(m["sync_state"], "async");

    // A database that does not exist is refused before anything is paused.
    let missing = run_backup(
        &url,
        &dir.path().join("x"),
        &state,
        &["--database", "nosuch"],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("database \"nosuch\" does not exist"),
        "{}",
        text(&missing)
    );
    for replica in &set.replicas {
        assert_eq!(
            pause_state(&replica.admin_url("postgres")).await?,
            "not paused"
        );
    }
    Ok(())
}

/// A replica whose pg_dump will block: the primary holds an ACCESS EXCLUSIVE lock on `bank.accounts`
/// in an open transaction and the replica replays that lock, which it holds until the primary ends
/// that transaction — so pg_dump waits (a real dump in progress) until the test acts.
struct BlockedDump {
    set: TestReplicaSet,
    locker: PgConnection,
    dir: tempfile::TempDir,
}

impl BlockedDump {
    async fn start() -> anyhow::Result<BlockedDump> {
        let set = TestReplicaSet::start(&[ReplicaOptions::named("r1")]).await?;
        create_bank(&set).await?.close().await;
        // The replica must have replayed CREATE DATABASE before the lock check can connect to it.
        set.wait_caught_up(0).await?;
        let mut locker = PgConnection::connect(&set.primary.admin_url("bank")).await?;
        sqlx::raw_sql(
            "BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE; SELECT pg_switch_wal()",
        )
        .execute(&mut locker)
        .await?;
        wait_sql(
            &set.replicas[0].admin_url("bank"),
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'accounts'::regclass)",
            "the replica to replay the lock",
        )
        .await?;
        Ok(BlockedDump {
            set,
            locker,
            dir: tempfile::tempdir()?,
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn_backup(&self, out: &str) -> anyhow::Result<std::process::Child> {
        Ok(Command::new(bookstore())
            .args([
                "backup",
                "--url",
                &self.set.url("bank"),
                "--out",
                path(&self.dir.path().join(out)),
                "--state-dir",
                path(&self.state_dir()),
            ])
            .env("CI", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    fn replica_url(&self) -> String {
        self.set.replicas[0].admin_url("postgres")
    }

    /// Waits until pg_dump's session on the replica waits for the lock; returns its backend pid.
    async fn wait_dump_blocked(&self) -> anyhow::Result<i32> {
        let mut replica = PgConnection::connect(&self.replica_url()).await?;
        let query = "SELECT pid FROM pg_stat_activity WHERE application_name = 'bookstore-backup' AND wait_event_type = 'Lock'";
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = sqlx::query_scalar::<_, i32>(query)
                .fetch_optional(&mut replica)
                .await?
            {
                // The pause lasted only while the snapshots were exported: the dump reads those.
                assert_eq!(pause_state(&self.replica_url()).await?, "not paused");
                assert_eq!(
                    std::fs::read_dir(self.state_dir())?.count(),
                    0,
                    "the pause marker is gone once replay is resumed"
                );
                return Ok(pid);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < until,
                "pg_dump never blocked on the lock"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Releases the primary's lock and checks replay moves again: a row written now reaches the replica.
    async fn release_and_check_replay_moves(mut self) -> anyhow::Result<()> {
        sqlx::raw_sql("ROLLBACK").execute(&mut self.locker).await?;
        sqlx::query("INSERT INTO accounts VALUES (999999, 0)")
            .execute(&mut self.locker)
            .await?;
        wait_sql(
            &self.set.replicas[0].admin_url("bank"),
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = 999999)",
            "replay to move again",
        )
        .await
    }
}

fn wait_child(child: std::process::Child) -> Output {
    child.wait_with_output().expect("bookstore exits")
}

#[tokio::test]
async fn a_failed_dump_is_reported_and_leaves_no_backup() -> anyhow::Result<()> {
    let blocked = BlockedDump::start().await?;
    let child = blocked.spawn_backup("failed")?;
    let pid = blocked.wait_dump_blocked().await?;
    let mut replica = PgConnection::connect(&blocked.replica_url()).await?;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut replica)
        .await?;
    let output = tokio::task::spawn_blocking(move || wait_child(child)).await?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pg_dump failed") && stderr.contains("dumping bank"),
        "{stderr}"
    );
    assert_eq!(pause_state(&blocked.replica_url()).await?, "not paused");
    assert!(
        !blocked.dir.path().join("failed").exists(),
        "no partial backup left behind"
    );
    blocked.release_and_check_replay_moves().await
}

#[tokio::test]
async fn a_backup_interrupted_mid_dump_stops_cleanly() -> anyhow::Result<()> {
    let blocked = BlockedDump::start().await?;
    let child = blocked.spawn_backup("interrupted")?;
    blocked.wait_dump_blocked().await?;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    let output = tokio::task::spawn_blocking(move || wait_child(child)).await?;
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(pause_state(&blocked.replica_url()).await?, "not paused");
    assert!(
        !blocked.dir.path().join("interrupted").exists(),
        "no partial backup left behind"
    );
    blocked.release_and_check_replay_moves().await
}

/// SIGKILL runs no handler. Killed mid-dump, a run leaves nothing behind on the replica (its pause
/// ended when the snapshots were taken). Killed in the milliseconds of the pause itself, it leaves
/// the replica paused and its marker on disk — the state the test builds by hand, as such a kill
/// cannot be aimed — and the next run resumes that replica before anything else.
#[tokio::test]
async fn a_killed_run_leaves_replay_running_or_is_resumed_by_the_next_run() -> anyhow::Result<()> {
    let mut blocked = BlockedDump::start().await?;
    let mut child = blocked.spawn_backup("killed")?;
    blocked.wait_dump_blocked().await?;
    child.kill()?;
    child.wait()?;
    assert_eq!(pause_state(&blocked.replica_url()).await?, "not paused");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocked.locker)
        .await?;
    wait_sql(
        &blocked.replica_url(),
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'bookstore-backup')",
        "the killed run's sessions to end",
    )
    .await?;

    let mut replica = PgConnection::connect(&blocked.replica_url()).await?;
    let system_identifier: String =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&mut replica)
            .await?;
    let node = backup::url::HostPort {
        host: "127.0.0.1".into(),
        port: blocked.set.replicas[0].port(),
    };
    let mut marker = backup::marker::Marker::new(&blocked.state_dir(), &node, &system_identifier);
    marker.pid = dead_pid()?;
    marker.write()?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut replica)
        .await?;
    wait_sql(
        &blocked.replica_url(),
        "SELECT pg_get_wal_replay_pause_state() = 'paused'",
        "replay to pause",
    )
    .await?;

    let out = blocked.dir.path().join("next");
    let next = run_backup(&blocked.set.url("bank"), &out, &blocked.state_dir(), &[]);
    assert!(next.status.success(), "{}", text(&next));
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("left paused by an earlier backup run"),
        "{}",
        text(&next)
    );
    assert!(out.join("manifest.json").is_file());
    assert_eq!(pause_state(&blocked.replica_url()).await?, "not paused");
    assert_eq!(std::fs::read_dir(blocked.state_dir())?.count(), 0);
    blocked.release_and_check_replay_moves().await
}

/// The pid of a process that has exited.
fn dead_pid() -> anyhow::Result<u32> {
    let mut child = Command::new("true").spawn()?;
    let pid = child.id();
    child.wait()?;
    Ok(pid)
}

#[tokio::test]
async fn restore_refuses_a_tampered_dump_and_verify_catches_a_different_table() -> anyhow::Result<()>
{
    let set = TestReplicaSet::start(&[ReplicaOptions::named("r1")]).await?;
    let bank = create_bank(&set).await?;
    for n in 0..20 {
        transfer(&bank, n).await?;
    }
    set.wait_caught_up(0).await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("b");
    let backup = run_backup(&set.url("bank"), &out, &dir.path().join("s"), &[]);
    assert!(backup.status.success(), "{}", text(&backup));

    // A manifest whose fingerprint of one table disagrees with the dump: verify names that table.
    let original = std::fs::read(out.join("manifest.json"))?;
    let mut m: Value = serde_json::from_slice(&original)?;
    let tables = m["databases"][0]["tables"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no tables"))?;
    let accounts = tables
        .iter_mut()
        .find(|t| t["table"] == "public.accounts")
        .ok_or_else(|| anyhow::anyhow!("no accounts"))?;
    accounts["rows"] = (ACCOUNTS + 1).into();
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&m)?)?;
    let differs = run(&["restore", "--from", path(&out), "--verify"]);
    assert!(!differs.status.success(), "{}", text(&differs));
    let stderr = String::from_utf8_lossy(&differs.stderr);
    assert!(
        stderr.contains(&format!(
            "bank.public.accounts: {ACCOUNTS} rows, the source had {}",
            ACCOUNTS + 1
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("transfers"),
        "only the differing table is named: {stderr}"
    );
    std::fs::write(out.join("manifest.json"), original)?;

    // One flipped byte in the dump: refused before anything is restored.
    let file = out.join("bank.dump");
    let mut bytes = std::fs::read(&file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, bytes)?;
    let corrupt = run(&[
        "restore",
        "--from",
        path(&out),
        "--into-database",
        "never",
        "--url",
        &set.primary.admin_url("postgres"),
    ]);
    assert!(!corrupt.status.success(), "{}", text(&corrupt));
    let stderr = String::from_utf8_lossy(&corrupt.stderr);
    assert!(stderr.contains("bank.dump is corrupted"), "{stderr}");
    let mut primary = PgConnection::connect(&set.primary.admin_url("postgres")).await?;
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'never')")
            .fetch_one(&mut primary)
            .await?;
    assert!(!created, "nothing restored from a corrupted file");
    Ok(())
}

#[tokio::test]
async fn without_a_usable_replica_the_primary_needs_allow_primary() -> anyhow::Result<()> {
    let set = TestReplicaSet::start(&[]).await?;
    let dir = tempfile::tempdir()?;
    let url = set.url("postgres");
    let state = dir.path().join("s");
    let refused = run_backup(&url, &dir.path().join("a"), &state, &[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--allow-primary"),
        "{}",
        text(&refused)
    );
    let out = dir.path().join("b");
    let allowed = run_backup(&url, &out, &state, &["--allow-primary"]);
    assert!(allowed.status.success(), "{}", text(&allowed));
    assert!(
        String::from_utf8_lossy(&allowed.stderr).contains("warning: backing up from the primary")
    );
    assert_eq!(manifest(&out)?["role"], "primary");
    Ok(())
}

#[test]
fn a_malformed_url_is_one_clear_sentence_naming_the_fault() {
    let cases = [
        (
            "postgresql://u@h1:5432,h2:54x2/db",
            "the port \"54x2\" of host h2",
        ),
        (
            "postgresql://u@h1,,h3/db",
            "host 2 of the host list is empty",
        ),
        (
            "postgresql://u@h1/db?sslmode=on",
            "sslmode=\"on\" is not valid",
        ),
        (
            "postgresql://u@h1/db?foo=1",
            "unknown query parameter \"foo\"",
        ),
        ("mysql://u@h1/db", "must start with postgresql://"),
        ("postgresql://u@a,b,c/db?port=1,2", "2 ports for 3 hosts"),
    ];
    for (url, expected) in cases {
        let output = run(&["backup", "--url", url]);
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    }
}

/// The same command against the Patroni cluster `bookstore up` runs: given every member in one URL
/// it recognises the passive member from SQL alone and backs up from it while transfers commit on
/// the leader. The dump is held on a replayed table lock for longer than two Patroni loops — Patroni
/// resumes any paused replay at its next loop, which broke a backup that kept replay paused while it
/// dumped — and it can only get that lock because replay runs on during the dump (the lock's release
/// is replayed). The restore verifies with the money sum intact.
#[tokio::test]
async fn a_backup_of_the_patroni_cluster_comes_from_its_passive_member() -> anyhow::Result<()> {
    let test = TestCluster::start(3).await?;
    let cluster = test.cluster();
    let leader = test.leader().await?;
    let bank = create_bank_at(
        &cluster.admin_url(leader, "postgres"),
        &cluster.admin_url(leader, "bank"),
    )
    .await?;
    let passive = cluster
        .members
        .iter()
        .find(|m| m.spec.passive)
        .ok_or_else(|| anyhow::anyhow!("a 3-member test cluster has a passive member"))?;
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = spawn_writer(bank, stop.clone(), done.clone());
    wait_for(Duration::from_secs(30), "some transfers", || {
        let n = done.load(Ordering::Relaxed);
        async move { Ok(n >= 20) }
    })
    .await?;
    // The passive member may not have replayed the database's creation yet (CI saw "database
    // \"bank\" does not exist" once): wait for it before connecting there.
    wait_sql(
        &cluster.admin_url(passive, "postgres"),
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'bank')",
        "the passive member to replay the bank database",
    )
    .await?;
    let passive_bank = cluster.admin_url(passive, "bank");
    let mut locker = PgConnection::connect(&cluster.admin_url(leader, "bank")).await?;
    sqlx::raw_sql("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE; SELECT pg_switch_wal()")
        .execute(&mut locker)
        .await?;
    wait_sql(
        &passive_bank,
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'accounts'::regclass)",
        "the passive member to replay the lock",
    )
    .await?;

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("b");
    let state = dir.path().join("state");
    let url = cluster.admin_cluster_url("bank");
    let backup = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || run_backup(&url, &out, &state, &[]))
    };
    wait_sql(
        &passive_bank,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'bookstore-backup' AND wait_event_type = 'Lock')",
        "pg_dump to wait for the replayed lock",
    )
    .await?;
    // Not a timing assertion: this gives Patroni's loop two chances to resume a paused replay.
    tokio::time::sleep(Duration::from_secs(
        2 * stack::cluster::patroni::LOOP_WAIT_SECONDS + 1,
    ))
    .await;
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await?;
    let backup = backup.await?;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    assert!(backup.status.success(), "{}", text(&backup));

    let m = manifest(&out)?;
    assert_eq!(m["role"], "replica");
    assert_eq!(m["node"], format!("127.0.0.1:{}", passive.spec.pg_port));
    assert_eq!(
        pause_state(&cluster.admin_url(passive, "postgres")).await?,
        "not paused",
        "replay resumed on the passive member"
    );
    let restore = run(&[
        "restore",
        "--from",
        path(&out),
        "--into-database",
        "bank_restored",
        "--url",
        &cluster.admin_url(leader, "postgres"),
        "--verify",
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    let mut restored = PgConnection::connect(&cluster.admin_url(leader, "bank_restored")).await?;
    let sum: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
        .fetch_one(&mut restored)
        .await?;
    assert_eq!(
        sum,
        ACCOUNTS * OPENING_BALANCE,
        "money is conserved in the backup"
    );
    Ok(())
}
