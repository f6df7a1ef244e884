//! The platform on the real Patroni cluster (`bookstore up`'s default: one primary, four
//! replicas, etcd). SIGKILL of the primary's postmaster during a stream of acknowledged top-ups:
//! the services ride through the failover, no acknowledged write is lost or applied twice, and the
//! old primary rejoins as a replica (pg_rewind) and catches up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stack::cluster::{ClusterInfo, MemberInfo, topology};
use testkit::TestPlatform;

use crate::{bookstore, client, new_customer};

/// How long one top-up is retried (same Idempotency-Key) before the test gives up on it.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

struct Writer {
    client: reqwest::Client,
    url: String,
    token: String,
    acknowledged_cents: i64,
    /// The longest time between two acknowledgements: the write gap the client saw.
    worst_gap: Duration,
    last_ack: Option<Instant>,
    failed_attempts: u32,
}

impl Writer {
    /// One top-up, retried with the same key until acknowledged: retrying is safe because the key
    /// makes the service apply it once.
    async fn top_up(&mut self, n: u32) -> anyhow::Result<()> {
        let key = format!("failover-{n}");
        let amount = i64::from(n % 7 + 1);
        let started = Instant::now();
        loop {
            let answer = self
                .client
                .post(&self.url)
                .bearer_auth(&self.token)
                .header("idempotency-key", &key)
                .json(&json!({"amount_cents": amount}))
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => {
                    self.acknowledged_cents += amount;
                    let now = Instant::now();
                    if let Some(last) = self.last_ack.replace(now) {
                        self.worst_gap = self.worst_gap.max(now - last);
                    }
                    return Ok(());
                }
                Ok(response) if response.status().is_client_error() => {
                    anyhow::bail!("top-up {n} refused: {}", response.text().await?)
                }
                _ => {
                    self.failed_attempts += 1;
                }
            }
            anyhow::ensure!(
                started.elapsed() < RETRY_BUDGET,
                "top-up {n} not acknowledged within {RETRY_BUDGET:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn view(info: &ClusterInfo) -> anyhow::Result<Vec<stack::cluster::patroni::MemberView>> {
    topology::fetch(&client(), info).await
}

async fn leader(info: &ClusterInfo) -> anyhow::Result<MemberInfo> {
    let view = view(info).await?;
    let name = view
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.name.clone())
        .ok_or_else(|| anyhow::anyhow!("no leader in {view:?}"))?;
    info.members
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("leader {name} is not a member we started"))
}

fn member_url(platform: &TestPlatform, member: &MemberInfo) -> anyhow::Result<String> {
    let secrets = stack::state::Secrets::load_or_create(platform.dir())?;
    Ok(format!(
        "postgres://postgres:{}@127.0.0.1:{}/orders",
        secrets.postgres_superuser, member.pg_port
    ))
}

/// Waits until `member` is a replica that has replayed at least the primary's LSN of now.
async fn wait_rejoined(
    platform: &TestPlatform,
    old: &MemberInfo,
    info: &ClusterInfo,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let new_leader = leader(info).await?;
    let primary = sqlx::PgPool::connect(&member_url(platform, &new_leader)?).await?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&primary)
        .await?;
    loop {
        if let Ok(pool) = sqlx::PgPool::connect(&member_url(platform, old)?).await {
            let caught_up: Result<(bool, bool), _> = sqlx::query_as(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= $1::pg_lsn",
            )
            .bind(&target)
            .fetch_one(&pool)
            .await;
            pool.close().await;
            if let Ok((true, true)) = caught_up {
                return Ok(started.elapsed());
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "{} did not rejoin as a caught-up replica within 90 s",
            old.name
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_primary_dying_during_top_ups_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let platform = TestPlatform::start_cluster(bookstore(), &[]).await?;
    let info = platform
        .state()
        .cluster
        .clone()
        .ok_or_else(|| anyhow::anyhow!("state.json records no cluster"))?;
    assert_eq!(info.members.len(), 5);
    let gateway = platform.gateway_url().to_owned();
    let http = client();
    let (id, token) =
        new_customer(&http, &gateway, "failover@example.com", "failover-pass-1").await?;
    let credit = async || -> anyhow::Result<i64> {
        let customer: Value = http
            .get(format!("{gateway}/api/customers/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        customer["credit_cents"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no credit_cents in {customer}"))
    };
    let before = credit().await?;
    let mut writer = Writer {
        client: http.clone(),
        url: format!("{gateway}/api/customers/{id}/credit"),
        token: token.clone(),
        acknowledged_cents: 0,
        worst_gap: Duration::ZERO,
        last_ack: None,
        failed_attempts: 0,
    };
    for n in 0..20 {
        writer.top_up(n).await?;
    }
    let old = leader(&info).await?;
    let pid = stack::cluster::postmaster_pid(&old.data_dir)
        .ok_or_else(|| anyhow::anyhow!("{} has no postmaster", old.name))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    for n in 20..50 {
        writer.top_up(n).await?;
    }
    let new = leader(&info).await?;
    assert_ne!(new.name, old.name, "a replica was promoted");
    assert!(!new.passive, "the passive member is never promoted");

    assert_eq!(
        credit().await? - before,
        writer.acknowledged_cents,
        "every acknowledged top-up applied exactly once"
    );
    let rejoin = wait_rejoined(&platform, &old, &info).await?;
    eprintln!(
        "failover: worst write gap {:?} ({} failed attempts), 30 writes after the kill in {:?}, old primary caught up {:?} later",
        writer.worst_gap,
        writer.failed_attempts,
        killed.elapsed(),
        rejoin
    );
    platform.stop().await?;
    Ok(())
}
