//! Watching for split brain during a database scenario: every half second each member is asked
//! whether it is in recovery and, if not, to commit a probe row. A member *accepts writes* when the
//! probe commits within a second (a commit waiting for a synchronous standby it cannot reach is
//! not accepted: no client would hear it succeed). Split brain is two members accepting writes in
//! one round, or a member accepting writes again after another one did.

use std::str::FromStr;
use std::time::Duration;

use loadgen::Check;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{ClusterInfo, MemberInfo};

use super::database::member_url;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const ROUND_EVERY: Duration = Duration::from_millis(500);

/// One sampling round: when (since the load began) and which members committed a probe.
#[derive(Debug, Clone)]
pub struct Round {
    pub at: Duration,
    pub writers: Vec<String>,
}

pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Round>>,
}

impl Sampler {
    /// Creates the probe table on the current primary and starts sampling.
    pub async fn start(
        info: &ClusterInfo,
        primary: &MemberInfo,
        password: &str,
        since: Instant,
    ) -> anyhow::Result<Sampler> {
        let options =
            PgConnectOptions::from_str(&member_url(password, primary.pg_port, "postgres"))?;
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bookstore_chaos_probe \
             (member text NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut conn)
        .await?;
        let _ = conn.close().await;
        let (stop, mut stopped) = watch::channel(false);
        let members: Vec<(String, String)> = info
            .members
            .iter()
            .map(|m| (m.name.clone(), member_url(password, m.pg_port, "postgres")))
            .collect();
        let task = tokio::spawn(async move {
            let mut rounds = Vec::new();
            loop {
                let at = since.elapsed();
                let probes = members
                    .iter()
                    .map(|(name, url)| async move { probe(name, url).await.then(|| name.clone()) });
                let writers: Vec<String> = futures::future::join_all(probes)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                rounds.push(Round { at, writers });
                tokio::select! {
                    _ = stopped.changed() => return rounds,
                    _ = tokio::time::sleep(ROUND_EVERY) => {}
                }
            }
        });
        Ok(Sampler { stop, task })
    }

    pub async fn finish(self) -> Vec<Round> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Whether `url`'s member is out of recovery and commits a probe row within the timeout.
async fn probe(name: &str, url: &str) -> bool {
    let Ok(options) = PgConnectOptions::from_str(url) else {
        return false;
    };
    let work = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?;
        if recovering {
            return anyhow::Ok(false);
        }
        sqlx::query("INSERT INTO bookstore_chaos_probe (member) VALUES ($1)")
            .bind(name)
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        anyhow::Ok(true)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, work).await,
        Ok(Ok(true))
    )
}

/// The verdict over all rounds.
pub fn verdict(rounds: &[Round]) -> Check {
    let mut offenders = Vec::new();
    // Who accepted writes, in order, with the span of rounds each did.
    let mut reigns: Vec<(String, Duration, Duration)> = Vec::new();
    for round in rounds {
        if round.writers.len() > 1 {
            offenders.push(format!(
                "at {} ms {} all accepted writes",
                round.at.as_millis(),
                round.writers.join(", ")
            ));
        }
        for writer in &round.writers {
            match reigns.last_mut() {
                Some((name, _, until)) if name == writer => *until = round.at,
                _ => {
                    if reigns.iter().any(|(name, _, _)| name == writer) {
                        offenders.push(format!(
                            "{writer} accepted writes again at {} ms after another member had",
                            round.at.as_millis()
                        ));
                    }
                    reigns.push((writer.clone(), round.at, round.at));
                }
            }
        }
    }
    let history = reigns
        .iter()
        .map(|(name, from, to)| format!("{name} {}–{} ms", from.as_millis(), to.as_millis()))
        .collect::<Vec<_>>()
        .join(", then ");
    let shown: Vec<&str> = offenders.iter().take(3).map(String::as_str).collect();
    Check {
        name: "no split brain",
        ok: offenders.is_empty() && !reigns.is_empty(),
        detail: if reigns.is_empty() {
            format!(
                "no member accepted a probe write in {} rounds",
                rounds.len()
            )
        } else if offenders.is_empty() {
            format!("{} rounds, one writer at a time: {history}", rounds.len())
        } else {
            format!("{}; writers: {history}", shown.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ms: u64, writers: &[&str]) -> Round {
        Round {
            at: Duration::from_millis(ms),
            writers: writers.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    #[test]
    fn one_writer_after_another_passes_and_two_at_once_or_a_comeback_fail() {
        let failover = [
            round(0, &["pg-1"]),
            round(500, &["pg-1"]),
            round(1000, &[]),
            round(1500, &["pg-2"]),
        ];
        let check = verdict(&failover);
        assert!(check.ok, "{}", check.detail);
        assert!(
            check.detail.contains("pg-1 0–500 ms, then pg-2"),
            "{}",
            check.detail
        );
        assert!(!verdict(&[round(0, &["pg-1", "pg-2"])]).ok);
        let comeback = [
            round(0, &["pg-1"]),
            round(500, &["pg-2"]),
            round(1000, &["pg-1"]),
        ];
        assert!(!verdict(&comeback).ok);
        assert!(
            !verdict(&[round(0, &[])]).ok,
            "no writer at all proves nothing"
        );
    }
}
