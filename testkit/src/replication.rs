//! A primary with real streaming replicas on loopback, for tests of anything that reads a cluster's
//! topology (backups). The primary comes from the cached template like every [`TestPostgres`]; each
//! replica is a `pg_basebackup -R` of it, run as the database OS user, started on its own free port.
//! Replicas are named (their WAL receiver's `application_name`), so the primary's
//! `pg_stat_replication` and `synchronous_standby_names` can tell them apart.

use std::path::Path;
use std::time::Duration;

use sqlx::Connection;
use stack::os_user::{self, RunAs};
use stack::postgres::PgBinaries;

use crate::postgres::{TEST_PASSWORD, TestPostgres};

/// How to make one replica.
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    /// Its name on the primary (`application_name` of its WAL receiver).
    pub name: String,
    /// Extra `postgresql.conf` settings, e.g. `("bookstore.nofailover", "on")`.
    pub settings: Vec<(String, String)>,
    /// Stop replay just before this LSN and pause there (point-in-time recovery), for checks of
    /// what the cluster held at that point.
    pub recovery_target_lsn: Option<String>,
}

impl ReplicaOptions {
    pub fn named(name: &str) -> ReplicaOptions {
        ReplicaOptions {
            name: name.to_owned(),
            ..ReplicaOptions::default()
        }
    }

    pub fn setting(mut self, key: &str, value: &str) -> ReplicaOptions {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A base backup of the primary, not started yet (start it later with a recovery target).
pub struct BaseBackup {
    dir: tempfile::TempDir,
}

/// A primary and its streaming replicas; every server stops when this drops.
pub struct TestReplicaSet {
    pub primary: TestPostgres,
    pub replicas: Vec<TestPostgres>,
    bins: PgBinaries,
    run_as: Option<RunAs>,
}

impl TestReplicaSet {
    /// A primary and one streaming replica per entry of `replicas`, each caught up.
    pub async fn start(replicas: &[ReplicaOptions]) -> anyhow::Result<TestReplicaSet> {
        let mut set = TestReplicaSet {
            primary: TestPostgres::start().await?,
            replicas: Vec::new(),
            bins: PgBinaries::locate()?,
            run_as: os_user::server_user()?,
        };
        // Keep WAL around for replicas started later from an older base backup.
        set.configure_primary("wal_keep_size", "256MB").await?;
        for options in replicas {
            let backup = set.base_backup().await?;
            let replica = set.start_replica(backup, options).await?;
            set.replicas.push(replica);
        }
        for i in 0..set.replicas.len() {
            set.wait_caught_up(i).await?;
        }
        Ok(set)
    }

    /// `ALTER SYSTEM SET key = 'value'` on the primary and a reload (reloadable settings only, e.g.
    /// `synchronous_standby_names`).
    pub async fn configure_primary(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.primary.admin_url("postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER SYSTEM SET {key} = '{}'",
            value.replace('\'', "''")
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    /// `postgresql://postgres:…@primary,replica1,…/database`: the multi-host URL of the whole set.
    pub fn url(&self, database: &str) -> String {
        let hosts: Vec<String> = std::iter::once(&self.primary)
            .chain(&self.replicas)
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!(
            "postgresql://postgres:{TEST_PASSWORD}@{}/{database}",
            hosts.join(",")
        )
    }

    /// `pg_basebackup` of the primary (WAL included, so it is consistent on its own).
    pub async fn base_backup(&self) -> anyhow::Result<BaseBackup> {
        let dir = tempfile::Builder::new()
            .prefix("bookstore-replica-")
            .tempdir()?;
        os_user::hand_over(dir.path(), self.run_as)?;
        let mut command = tokio::process::Command::new(self.bins.tool("pg_basebackup"));
        command
            .arg("--pgdata")
            .arg(dir.path().join("data"))
            .args([
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
            ])
            .arg(format!("--dbname={}", self.primary_conninfo("basebackup")));
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        let output = command.output().await?;
        anyhow::ensure!(
            output.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(BaseBackup { dir })
    }

    /// Starts a replica from `backup`, streaming from the primary under `options.name`.
    pub async fn start_replica(
        &self,
        backup: BaseBackup,
        options: &ReplicaOptions,
    ) -> anyhow::Result<TestPostgres> {
        let data = backup.dir.path().join("data");
        // Feedback as in the Patroni cluster: the primary keeps the rows a replica's open snapshot
        // (a backup's) still needs, instead of the replica cancelling it after a recovery conflict.
        let mut lines = vec![
            format!(
                "primary_conninfo = '{}'",
                self.primary_conninfo(&options.name)
            ),
            "hot_standby_feedback = on".to_owned(),
        ];
        lines.extend(options.settings.iter().map(|(k, v)| format!("{k} = '{v}'")));
        if let Some(lsn) = &options.recovery_target_lsn {
            lines.push(format!("recovery_target_lsn = '{lsn}'"));
            lines.push("recovery_target_inclusive = off".to_owned());
            lines.push("recovery_target_action = 'pause'".to_owned());
        }
        append_config(&data.join("postgresql.auto.conf"), &lines)?;
        TestPostgres::start_in(&self.bins, self.run_as, backup.dir).await
    }

    fn primary_conninfo(&self, application_name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={TEST_PASSWORD} application_name={application_name}",
            self.primary.port()
        )
    }

    /// Waits until replica `index` has replayed everything the primary had written when called.
    pub async fn wait_caught_up(&self, index: usize) -> anyhow::Result<()> {
        let mut primary = sqlx::PgConnection::connect(&self.primary.admin_url("postgres")).await?;
        // The insert position, not the write position: test servers run with
        // synchronous_commit = off, so a commit that has returned may not be written yet.
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut primary)
            .await?;
        let sql = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)");
        let replica = self.replicas[index].admin_url("postgres");
        wait_sql(&replica, &sql, "the replica to catch up").await
    }
}

/// Polls `sql` (one boolean) on `url` every 25 ms until it reads true; fails after 30 s.
pub async fn wait_sql(url: &str, sql: &str, what: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    let sql = sql.to_owned();
    let result = wait_for(Duration::from_secs(30), what, || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move {
            sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
        }
    })
    .await;
    pool.close().await;
    result
}

/// Polls `check` until it reads true, failing after `deadline` with `what`.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, sqlx::Error>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Appends settings; the file belongs to the database user, and appending keeps its owner.
fn append_config(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_stream_from_the_primary_under_their_names() -> anyhow::Result<()> {
        let set = TestReplicaSet::start(&[
            ReplicaOptions::named("r1"),
            ReplicaOptions::named("r2").setting("bookstore.nofailover", "on"),
        ])
        .await?;
        let primary = sqlx::PgPool::connect(&set.primary.admin_url("postgres")).await?;
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&primary)
            .await?;
        sqlx::query("INSERT INTO t VALUES (42)")
            .execute(&primary)
            .await?;
        let names: Vec<String> =
            sqlx::query_scalar("SELECT application_name FROM pg_stat_replication ORDER BY 1")
                .fetch_all(&primary)
                .await?;
        assert_eq!(names, vec!["r1", "r2"]);
        set.wait_caught_up(1).await?;
        let replica = sqlx::PgPool::connect(&set.replicas[1].admin_url("postgres")).await?;
        let (x, recovering, passive): (i32, bool, String) = sqlx::query_as(
            "SELECT (SELECT x FROM t), pg_is_in_recovery(), current_setting('bookstore.nofailover')",
        )
        .fetch_one(&replica)
        .await?;
        assert_eq!((x, recovering, passive.as_str()), (42, true, "on"));
        Ok(())
    }
}
