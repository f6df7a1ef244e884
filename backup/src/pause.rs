//! Pausing WAL replay on the replica we dump, and the promise to resume it. A paused replica stands
//! still at one LSN, so the snapshots taken meanwhile ([`crate::snapshot`]) all show the cluster at
//! that single point; the pause lasts only while they are taken.
//!
//! Replay is resumed by [`PausedReplica::resume`] on every path the tool controls (success, error,
//! SIGINT/SIGTERM — the caller races the pause against the signal). A panic drops the guard, whose
//! `Drop` resumes over a fresh connection. Only SIGKILL (or a power cut) leaves a replica paused: the
//! marker file written before pausing lets the next run find and resume it ([`crate::marker`]).

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::marker::Marker;
use crate::url::{ClusterUrl, HostPort};

/// Session advisory lock held while a run owns a replica's pause (advisory locks work on hot
/// standbys). A second run, or the next run's recovery, sees it held and keeps its hands off.
pub const ADVISORY_LOCK_KEY: i64 = 0x626f_6f6b_6261_6b75; // "bookbaku"

/// A replica whose replay we paused. Resume it with [`PausedReplica::resume`].
pub struct PausedReplica {
    url: ClusterUrl,
    node: HostPort,
    conn: Option<PgConnection>,
    marker: Option<Marker>,
    /// `pg_last_wal_replay_lsn()` once paused: the point the backup shows.
    pub lsn: String,
    /// Commit time of the last transaction replayed (none if nothing was replayed since start).
    pub last_replay_timestamp: Option<String>,
}

/// Takes the lock, leaves a marker, pauses replay and waits (up to `timeout`) until the pause state
/// reads `paused` — `pg_wal_replay_pause()` only *requests* a pause.
pub async fn pause(
    url: &ClusterUrl,
    node: &HostPort,
    marker: Marker,
    timeout: Duration,
) -> anyhow::Result<PausedReplica> {
    let mut conn = PgConnection::connect_with(&url.connect_options(node, url.database())).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(
        locked,
        "another backup holds replica {node} (its advisory lock is taken); wait for it to finish"
    );
    marker.write()?;
    let mut paused = PausedReplica {
        url: url.clone(),
        node: node.clone(),
        conn: Some(conn),
        marker: Some(marker),
        lsn: String::new(),
        last_replay_timestamp: None,
    };
    // From here on the guard is armed: any early return resumes.
    paused.request_and_wait(timeout).await?;
    Ok(paused)
}

impl PausedReplica {
    fn conn(&mut self) -> anyhow::Result<&mut PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the connection to {} is gone", self.node))
    }

    async fn request_and_wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let node = self.node.clone();
        let conn = self.conn()?;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut *conn)
            .await
            .map_err(|e| anyhow::anyhow!("cannot pause replay on {node}: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut *conn)
                .await?;
            if state == "paused" {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "replay on {node} did not pause within {timeout:?} (state: {state})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (lsn, at): (String, Option<String>) = sqlx::query_as(
            "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text",
        )
        .fetch_one(&mut *conn)
        .await?;
        self.lsn = lsn;
        self.last_replay_timestamp = at;
        Ok(())
    }

    /// Fails if replay moved while we dumped (someone resumed it, or the replica was promoted):
    /// then the databases were not all dumped at one LSN.
    pub async fn check_unchanged(&mut self) -> anyhow::Result<()> {
        let node = self.node.clone();
        let (state, lsn): (String, String) = sqlx::query_as(
            "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn()::text",
        )
        .fetch_one(self.conn()?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot re-check replay on {node}: {e}"))?;
        anyhow::ensure!(
            state == "paused" && lsn == self.lsn,
            "replay on {node} moved during the backup (now {state} at {lsn}, paused at {}): someone resumed it, so the dump is not at one LSN",
            self.lsn
        );
        Ok(())
    }

    /// Resumes replay (over a fresh connection if ours broke), checks it took, removes the marker.
    pub async fn resume(mut self) -> anyhow::Result<()> {
        let conn = self.conn.take();
        // Taken either way: on failure the marker file stays for the next run, and `Drop` has
        // nothing left to retry.
        let marker = self.marker.take();
        let result = resume_on(&self.url, &self.node, conn).await;
        if result.is_ok()
            && let Some(marker) = marker
        {
            marker.remove();
        }
        result
    }
}

impl Drop for PausedReplica {
    /// Only reached without `resume` (a panic or an early `?`): resume from a helper thread with its
    /// own runtime, since `Drop` cannot await.
    fn drop(&mut self) {
        let Some(marker) = self.marker.take() else {
            return;
        };
        let (url, node) = (self.url.clone(), self.node.clone());
        drop(self.conn.take());
        let resumed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(resume_on(&url, &node, None))
        })
        .join();
        match resumed {
            Ok(Ok(())) => marker.remove(),
            _ => eprintln!(
                "warning: could not resume replay on {}; the next backup run resumes it, or run SELECT pg_wal_replay_resume() there",
                self.node
            ),
        }
    }
}

/// `pg_wal_replay_resume()` on `node`, retried for a few seconds over fresh connections.
pub async fn resume_on(
    url: &ClusterUrl,
    node: &HostPort,
    conn: Option<PgConnection>,
) -> anyhow::Result<()> {
    let mut conn = conn;
    let mut last_error = None;
    for _ in 0..10 {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                match PgConnection::connect_with(&url.connect_options(node, url.database())).await {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = Some(anyhow::anyhow!(e));
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
        };
        match resume_with(&mut c).await {
            Ok(()) => {
                let _ = c.close().await;
                return Ok(());
            }
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let e = last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
    Err(e.context(format!(
        "could not resume replay on {node}: run SELECT pg_wal_replay_resume() there"
    )))
}

async fn resume_with(conn: &mut PgConnection) -> anyhow::Result<()> {
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    if !in_recovery {
        // Promoted meanwhile: promotion ends the pause, nothing to resume.
        return Ok(());
    }
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut *conn)
        .await?;
    let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(
        state == "not paused",
        "replay still reads {state} after resuming"
    );
    Ok(())
}
