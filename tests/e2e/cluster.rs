//! The platform on the real Patroni cluster (`bookstore up`'s default: one primary, four
//! replicas — the last passive — and etcd), under faults, asserting invariants:
//! - the primary's postmaster SIGKILLed (Patroni alive), and the whole primary node (PostgreSQL and
//!   Patroni) SIGKILLed, during acknowledged top-ups and eventual reads: no acknowledged write lost
//!   or applied twice, every eventual read succeeds, every write attempt either succeeds or is
//!   answered 503 + `Retry-After` problem+json, the old primary rejoins as a replica;
//! - replicas dying (one, then the synchronous standby with another, then the last candidate):
//!   nothing fails, strong writes continue with another synchronous standby, then on the primary
//!   alone (`synchronous_mode` is not strict);
//! - 2PC checkouts in flight when the primary dies: their prepared transactions survive promotion,
//!   the coordinator finishes them, stock and credit are conserved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stack::cluster::{ClusterInfo, MemberInfo, topology};
use testkit::TestPlatform;

use crate::checkout::{Customer, FAST_RECOVERY, Shop};
use crate::{bookstore, client, new_customer};

/// How long one top-up (or checkout) is retried (same Idempotency-Key) before the test gives up.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// What the client traffic saw; shared between the traffic's tasks and the test.
#[derive(Debug, Default, Clone)]
struct Seen {
    acknowledged_cents: i64,
    acknowledged: u32,
    /// The longest time between two acknowledgements: the write gap the client saw.
    worst_gap: Duration,
    last_ack: Option<Instant>,
    /// Write attempts answered 503 + `Retry-After` problem+json: "retry later", as promised.
    failed_writes: u32,
    /// Write attempts that failed any other way (status and body, or the transport error).
    broken_writes: Vec<String>,
    reads: u32,
    /// Every failed eventual read (status and body, or the transport error).
    failed_reads: Vec<String>,
    /// When the first and the last failed read happened: the eventual-read outage.
    read_outage: Option<(Instant, Instant)>,
}

impl Seen {
    fn read_outage(&self) -> Duration {
        self.read_outage
            .map_or(Duration::ZERO, |(first, last)| last - first)
    }

    /// The distinct failures, for a readable assertion message.
    fn read_failures(&self) -> Vec<&String> {
        let mut distinct: Vec<&String> = self.failed_reads.iter().collect();
        distinct.sort();
        distinct.dedup();
        distinct
    }
}

type Shared = Arc<Mutex<Seen>>;

fn snapshot(seen: &Shared) -> Seen {
    seen.lock().map(|s| s.clone()).unwrap_or_default()
}

fn record(seen: &Shared, change: impl FnOnce(&mut Seen)) {
    if let Ok(mut s) = seen.lock() {
        change(&mut s);
    }
}

struct Writer {
    client: reqwest::Client,
    url: String,
    token: String,
    seen: Shared,
}

impl Writer {
    /// One top-up, retried with the same key until acknowledged: retrying is safe because the key
    /// makes the service apply it once.
    async fn top_up(&self, n: u32) -> anyhow::Result<()> {
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
                    record(&self.seen, |s| {
                        s.acknowledged_cents += amount;
                        s.acknowledged += 1;
                        let now = Instant::now();
                        if let Some(last) = s.last_ack.replace(now) {
                            s.worst_gap = s.worst_gap.max(now - last);
                        }
                    });
                    return Ok(());
                }
                Ok(response) if response.status().is_client_error() => {
                    anyhow::bail!("top-up {n} refused: {}", response.text().await?)
                }
                Ok(response) if is_retry_later(&response) => {
                    record(&self.seen, |s| s.failed_writes += 1)
                }
                Ok(response) => {
                    let failure = format!("{}: {}", response.status(), response.text().await?);
                    record(&self.seen, |s| s.broken_writes.push(failure));
                }
                Err(e) => record(&self.seen, |s| s.broken_writes.push(format!("{e:#}"))),
            }
            anyhow::ensure!(
                started.elapsed() < RETRY_BUDGET,
                "top-up {n} not acknowledged within {RETRY_BUDGET:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A 503 with `Retry-After` and a problem+json body: "unavailable, retry later" — what a write may
/// answer while there is no primary.
fn is_retry_later(response: &reqwest::Response) -> bool {
    let headers = response.headers();
    response.status() == StatusCode::SERVICE_UNAVAILABLE
        && headers.contains_key(reqwest::header::RETRY_AFTER)
        && headers
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/problem+json")
}

/// What every failover must keep: each eventual read succeeded, and each write attempt either
/// succeeded or was answered 503 + `Retry-After` problem+json (the client retries it with its key).
fn assert_failover_invariants(seen: &Seen) {
    assert!(
        seen.failed_reads.is_empty(),
        "{} of {} eventual reads failed over {:?}: {:?}",
        seen.failed_reads.len(),
        seen.reads + seen.failed_reads.len() as u32,
        seen.read_outage(),
        seen.read_failures()
    );
    assert!(
        seen.broken_writes.is_empty(),
        "write attempts failed other than 503 + Retry-After: {:?}",
        seen.broken_writes
    );
}

/// A customer's stream of strong writes (top-ups, one after another) and reads that must go on
/// while there is no primary — their messages (read from a replica) and catalog reads that miss
/// the cache (read from the primary, and from a replica while no primary can be had) — running in
/// the background until [`Traffic::stop`].
struct Traffic {
    seen: Shared,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

impl Traffic {
    fn start(gateway: &str, id: &str, token: &str) -> Traffic {
        let seen = Shared::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let writer = Writer {
            client: client(),
            url: format!("{gateway}/api/customers/{id}/credit"),
            token: token.to_owned(),
            seen: seen.clone(),
        };
        let writing = stop.clone();
        tasks.spawn(async move {
            let mut n = 0;
            while !writing.load(Ordering::Relaxed) {
                writer.top_up(n).await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        });
        let (reading, shared) = (stop.clone(), seen.clone());
        let messages = format!("{gateway}/api/customers/{id}/messages?limit=5");
        let catalog = format!("{gateway}/api/books");
        let token = token.to_owned();
        tasks.spawn(async move {
            let http = client();
            let mut n: u64 = 0;
            while !reading.load(Ordering::Relaxed) {
                n += 1;
                // In turn: the customer's messages, then catalog reads no cache can answer (a book
                // that does not exist, a search never made before), which must reach a database.
                let (request, expected) = match n % 3 {
                    0 => (http.get(&messages).bearer_auth(&token), StatusCode::OK),
                    1 => (
                        http.get(format!("{catalog}/00000000-0000-4000-8000-{n:012x}")),
                        StatusCode::NOT_FOUND,
                    ),
                    _ => (
                        http.get(format!("{catalog}?search=nosuchword{n}&limit=1")),
                        StatusCode::OK,
                    ),
                };
                let failure = match request.send().await {
                    Ok(r) if r.status() == expected => None,
                    Ok(r) => Some(format!("{}: {}", r.status(), r.text().await?)),
                    Err(e) => Some(format!("{e:#}")),
                };
                record(&shared, |s| match failure {
                    None => s.reads += 1,
                    Some(f) => {
                        s.failed_reads.push(f);
                        let now = Instant::now();
                        s.read_outage = Some((s.read_outage.map_or(now, |o| o.0), now));
                    }
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        });
        Traffic { seen, stop, tasks }
    }

    /// Waits until `writes` more top-ups and `reads` more reads have succeeded from now.
    async fn progress(&self, writes: u32, reads: u32, within: Duration) -> anyhow::Result<Seen> {
        let start = snapshot(&self.seen);
        let deadline = Instant::now() + within;
        loop {
            let now = snapshot(&self.seen);
            if now.acknowledged >= start.acknowledged + writes && now.reads >= start.reads + reads {
                return Ok(now);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "traffic stalled: {writes} writes and {reads} reads not done within {within:?} \
                 (seen {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) -> anyhow::Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(snapshot(&self.seen))
    }
}

async fn view(info: &ClusterInfo) -> anyhow::Result<Vec<stack::cluster::patroni::MemberView>> {
    topology::fetch(&client(), info).await
}

fn member_named<'a>(info: &'a ClusterInfo, name: &str) -> anyhow::Result<&'a MemberInfo> {
    info.members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not a member we started"))
}

/// The members Patroni currently gives `role` (`leader`, `sync_standby`, `replica`).
async fn with_role(info: &ClusterInfo, role: &str) -> anyhow::Result<Vec<MemberInfo>> {
    view(info)
        .await?
        .iter()
        .filter(|m| m.role == role)
        .map(|m| member_named(info, &m.name).cloned())
        .collect()
}

async fn leader(info: &ClusterInfo) -> anyhow::Result<MemberInfo> {
    with_role(info, "leader")
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("Patroni names no leader"))
}

/// Waits until Patroni names a leader other than `old`.
async fn new_leader(info: &ClusterInfo, old: &MemberInfo) -> anyhow::Result<MemberInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(new) = leader(info).await
            && new.name != old.name
        {
            return Ok(new);
        }
        anyhow::ensure!(Instant::now() < deadline, "no new leader within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn member_url(platform: &TestPlatform, member: &MemberInfo, db: &str) -> anyhow::Result<String> {
    let secrets = stack::state::Secrets::load_or_create(platform.dir())?;
    Ok(format!(
        "postgres://postgres:{}@127.0.0.1:{}/{db}",
        secrets.postgres_superuser, member.pg_port
    ))
}

/// SIGKILL of the member's postmaster only: its Patroni lives and notices on its next loop.
fn kill_postmaster(member: &MemberInfo) -> anyhow::Result<()> {
    let pid = stack::cluster::postmaster_pid(&member.data_dir)
        .ok_or_else(|| anyhow::anyhow!("{} has no postmaster", member.name))?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    Ok(())
}

/// The whole node dies: SIGKILL of its Patroni (the process `up` started) and its postmaster.
fn kill_node(platform: &TestPlatform, member: &MemberInfo) -> anyhow::Result<()> {
    let patroni = platform
        .state()
        .processes
        .iter()
        .find(|p| p.name == member.name)
        .ok_or_else(|| anyhow::anyhow!("state.json has no process {}", member.name))?
        .pid;
    kill(Pid::from_raw(i32::try_from(patroni)?), Signal::SIGKILL)?;
    kill_postmaster(member)
}

/// The customer's credit as stored on `member` (the primary: where acknowledged writes must be).
async fn credit_on(
    platform: &TestPlatform,
    member: &MemberInfo,
    customer: &str,
) -> anyhow::Result<i64> {
    let pool = sqlx::PgPool::connect(&member_url(platform, member, "orders")?).await?;
    let credit = sqlx::query_scalar("SELECT credit_cents FROM customers WHERE id = $1::uuid")
        .bind(customer)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(credit)
}

/// Waits until `member` is a replica that has replayed at least the primary's LSN of now.
async fn wait_rejoined(
    platform: &TestPlatform,
    old: &MemberInfo,
    info: &ClusterInfo,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let new_leader = leader(info).await?;
    let primary = sqlx::PgPool::connect(&member_url(platform, &new_leader, "orders")?).await?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&primary)
        .await?;
    loop {
        if let Ok(pool) = sqlx::PgPool::connect(&member_url(platform, old, "orders")?).await {
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

/// `up` waits for every replica to replay the accounts before it starts the services, so no
/// service's first probe asks a replica for a database it does not have yet (PostgreSQL logs each
/// such connection as a FATAL, into Patroni's log).
fn assert_no_missing_database(member: &MemberInfo) -> anyhow::Result<()> {
    let dir = member
        .data_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no member directory", member.name))?;
    let log = std::fs::read_to_string(dir.join("patroni.log"))?;
    let missing: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("FATAL:  database \"") && line.contains("does not exist"))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} was asked for a database it had not replayed yet:\n{}",
        member.name,
        missing.join("\n")
    );
    Ok(())
}

fn cluster_info(platform: &TestPlatform) -> anyhow::Result<ClusterInfo> {
    let info = platform
        .state()
        .cluster
        .clone()
        .ok_or_else(|| anyhow::anyhow!("state.json records no cluster"))?;
    anyhow::ensure!(info.members.len() == 5, "expected 5 members: {info:?}");
    Ok(info)
}

/// A Patroni the test started again; killed if the test fails before stopping it (declared after
/// the platform, it drops first, and `up`'s shutdown then stops the postmaster it left).
struct Respawned(stack::process::Supervised);

impl Drop for Respawned {
    fn drop(&mut self) {
        let _ = self.0.signal(Signal::SIGKILL);
    }
}

/// A cluster platform with a customer whose traffic runs: what each failover test starts from.
struct Scene {
    platform: TestPlatform,
    info: ClusterInfo,
    id: String,
    primary: MemberInfo,
    /// The customer's credit before the traffic.
    before: i64,
    traffic: Traffic,
}

impl Scene {
    async fn start(email: &str) -> anyhow::Result<Scene> {
        let platform = TestPlatform::start_cluster(bookstore(), &[]).await?;
        let info = cluster_info(&platform)?;
        for member in &info.members {
            assert_no_missing_database(member)?;
        }
        let gateway = platform.gateway_url().to_owned();
        let (id, token) = new_customer(&client(), &gateway, email, "cluster-pass-1").await?;
        let primary = leader(&info).await?;
        let before = credit_on(&platform, &primary, &id).await?;
        let traffic = Traffic::start(&gateway, &id, &token);
        Ok(Scene {
            platform,
            info,
            id,
            primary,
            before,
            traffic,
        })
    }
}

/// The primary's postmaster is SIGKILLed; Patroni promotes the synchronous standby within a loop
/// or two. Meanwhile every eventual read is answered by a replica (the pool keeps trusting the
/// replicas while no primary answers; a read whose replica breaks moves to the next one), and
/// every write either commits or is answered 503 + `Retry-After` at once (the primary pool fails
/// fast while there is no primary; the gateway passes the answer through without ejecting the
/// instances, which stay ready). No read may fail: the only read that could — one whose every
/// candidate member broke at once — would need two members dying together, which this test does
/// not do.
#[tokio::test]
async fn the_primary_dying_during_top_ups_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let Scene {
        platform,
        info,
        id,
        primary: old,
        before,
        traffic,
    } = Scene::start("failover@example.com").await?;
    traffic.progress(20, 20, Duration::from_secs(60)).await?;
    kill_postmaster(&old)?;
    let killed = Instant::now();
    traffic.progress(30, 20, Duration::from_secs(90)).await?;
    let resumed = killed.elapsed();
    let seen = traffic.stop().await?;
    let new = new_leader(&info, &old).await?;
    assert!(!new.passive, "the passive member is never promoted");
    assert_eq!(
        credit_on(&platform, &new, &id).await? - before,
        seen.acknowledged_cents,
        "every acknowledged top-up applied exactly once, on the new primary"
    );
    assert_failover_invariants(&seen);
    let rejoin = wait_rejoined(&platform, &old, &info).await?;
    eprintln!(
        "failover (postmaster): worst write gap {:?} ({} write attempts answered 503 + \
         Retry-After), 30 writes after the kill within {resumed:?}; eventual reads: {} ok, none \
         failed; old primary caught up {rejoin:?} later",
        seen.worst_gap, seen.failed_writes, seen.reads
    );
    platform.stop().await?;
    Ok(())
}

/// The whole primary node dies (Patroni too): nobody releases the leader key, so there is no
/// primary for about `ttl` (20 s). The same invariants as for the postmaster crash hold over that
/// whole gap — every eventual read served by a replica, every write committed or answered 503 +
/// `Retry-After` — and the node, its Patroni started again, rejoins as a replica.
#[tokio::test]
async fn the_whole_primary_node_dying_loses_no_acknowledged_write_and_it_rejoins()
-> anyhow::Result<()> {
    let Scene {
        platform,
        info,
        id,
        primary: old,
        before,
        traffic,
    } = Scene::start("node@example.com").await?;
    traffic.progress(10, 20, Duration::from_secs(60)).await?;

    kill_node(&platform, &old)?;
    let killed = Instant::now();
    // Writes resume once the leader key expires (ttl) and a replica is promoted.
    traffic.progress(10, 20, Duration::from_secs(90)).await?;
    let resumed = killed.elapsed();
    let seen = traffic.stop().await?;

    let new = new_leader(&info, &old).await?;
    assert!(!new.passive, "the passive member is never promoted");
    assert_eq!(
        credit_on(&platform, &new, &id).await? - before,
        seen.acknowledged_cents,
        "every acknowledged top-up applied exactly once, on the new primary"
    );
    assert_failover_invariants(&seen);

    // The node comes back: its Patroni, started again the way `up` started it, rewinds the old
    // primary and rejoins it as a replica that catches up.
    let mut patroni = Respawned(old.respawn_patroni()?);
    let rejoin = wait_rejoined(&platform, &old, &info).await?;
    eprintln!(
        "failover (whole node): worst write gap {:?} ({} write attempts answered 503 + \
         Retry-After, {} acknowledged), 10 writes after the kill within {resumed:?}; eventual \
         reads: {} ok, none failed; old primary rejoined and caught up {rejoin:?} after its \
         Patroni restarted",
        seen.worst_gap, seen.failed_writes, seen.acknowledged, seen.reads
    );
    patroni.0.stop(Duration::from_secs(30)).await?;
    platform.stop().await?;
    Ok(())
}

/// Replicas die one after another: first an asynchronous one, then the synchronous standby and
/// the passive member at once (the last candidate becomes synchronous), then that one too (no
/// candidate left: `synchronous_mode` is not strict, so the primary commits alone).
#[tokio::test]
async fn replicas_dying_fail_nothing_and_strong_writes_continue() -> anyhow::Result<()> {
    let Scene {
        platform,
        info,
        id,
        primary,
        before,
        traffic,
    } = Scene::start("replicas@example.com").await?;
    let calm = traffic.progress(10, 20, Duration::from_secs(60)).await?;

    let asynchronous: Vec<MemberInfo> = with_role(&info, "replica")
        .await?
        .into_iter()
        .filter(|m| !m.passive)
        .collect();
    anyhow::ensure!(asynchronous.len() == 2, "{asynchronous:?}");
    kill_node(&platform, &asynchronous[0])?;
    let one_down = traffic.progress(20, 40, Duration::from_secs(60)).await?;
    assert_eq!(
        (one_down.failed_writes, one_down.failed_reads.len()),
        (calm.failed_writes, calm.failed_reads.len()),
        "a replica dying fails nothing: {:?}",
        one_down.read_failures()
    );

    let sync = with_role(&info, "sync_standby").await?;
    let passive = member_named(&info, &member_passive(&info)?)?.clone();
    anyhow::ensure!(sync.len() == 1, "{sync:?}");
    kill_node(&platform, &sync[0])?;
    kill_node(&platform, &passive)?;
    let last = &asynchronous[1];
    wait_for_sync_standby(&info, Some(&last.name)).await?;
    traffic.progress(10, 20, Duration::from_secs(60)).await?;

    kill_node(&platform, last)?;
    wait_for_sync_standby(&info, None).await?;
    traffic.progress(10, 20, Duration::from_secs(60)).await?;
    let seen = traffic.stop().await?;

    let names: String = sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
        .fetch_one(&sqlx::PgPool::connect(&member_url(&platform, &primary, "orders")?).await?)
        .await?;
    assert_eq!(
        names, "",
        "no synchronous standby left: the primary commits alone"
    );
    assert_eq!(leader(&info).await?.name, primary.name, "no failover");
    assert_eq!(
        credit_on(&platform, &primary, &id).await? - before,
        seen.acknowledged_cents,
        "every acknowledged top-up applied exactly once"
    );
    assert_failover_invariants(&seen);
    eprintln!(
        "replicas dying: worst write gap {:?}, {} failed write attempts of {} acknowledged; \
         {} eventual reads, none failed",
        seen.worst_gap, seen.failed_writes, seen.acknowledged, seen.reads
    );
    platform.stop().await?;
    Ok(())
}

fn member_passive(info: &ClusterInfo) -> anyhow::Result<String> {
    info.members
        .iter()
        .find(|m| m.passive)
        .map(|m| m.name.clone())
        .ok_or_else(|| anyhow::anyhow!("no passive member in {info:?}"))
}

/// Waits until Patroni names `name` as the synchronous standby (`None`: names none).
async fn wait_for_sync_standby(info: &ClusterInfo, name: Option<&str>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync = with_role(info, "sync_standby").await.unwrap_or_default();
        let names: Vec<&str> = sync.iter().map(|m| m.name.as_str()).collect();
        if names == name.into_iter().collect::<Vec<_>>() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "synchronous standby still {names:?}, expected {name:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// 2PC checkouts run concurrently; the primary's postmaster is SIGKILLed as soon as one of them
/// holds a prepared transaction there. Each checkout is retried with its key until it has an
/// answer; afterwards every order is final, nothing is left prepared on the new primary, and
/// stock and credit are conserved.
#[tokio::test]
async fn checkouts_in_flight_when_the_primary_dies_are_finished_by_the_coordinator()
-> anyhow::Result<()> {
    let platform = TestPlatform::start_cluster(bookstore(), &FAST_RECOVERY).await?;
    let info = cluster_info(&platform)?;
    let old = leader(&info).await?;
    let mut shop = Shop::open(platform).await?;
    shop.check_on(old.pg_port).await?;
    let books = [shop.book(500, 300).await?, shop.book(500, 700).await?];
    let mut buyers = Vec::new();
    for _ in 0..6 {
        buyers.push(shop.customer(1_000_000).await?);
    }
    let killed = AtomicBool::new(false);
    let (prepared, finals) = {
        let shop = &shop;
        let buying = buyers.iter().enumerate().map(|(i, buyer)| {
            let (books, killed) = (&books, &killed);
            async move {
                let mut answers = Vec::new();
                // Keep buying until the primary died, then a few checkouts more through the new one.
                let mut after = 0;
                for round in 0..400 {
                    if killed.load(Ordering::Relaxed) {
                        after += 1;
                    }
                    if after > 3 {
                        break;
                    }
                    let items = [(books[i % 2].as_str(), 1), (books[(i + 1) % 2].as_str(), 1)];
                    let key = format!("inflight-{i}-{round}");
                    answers.push(checkout_answered(shop, buyer, &key, &items).await?);
                }
                anyhow::Ok(answers)
            }
        });
        let chaos = async {
            let orders =
                sqlx::PgPool::connect(&member_url(&shop.platform, &old, "orders")?).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts")
                    .fetch_one(&orders)
                    .await?;
                if prepared > 0 {
                    kill_postmaster(&old)?;
                    killed.store(true, Ordering::Relaxed);
                    return anyhow::Ok(prepared);
                }
                anyhow::ensure!(Instant::now() < deadline, "no checkout ever prepared");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (outcomes, prepared) = tokio::join!(futures::future::join_all(buying), chaos);
        let prepared = prepared?;
        // Every checkout ends final: committed or aborted, none pending.
        let mut finals = (0, 0);
        for (buyer, answers) in buyers.iter().zip(outcomes) {
            for answer in answers? {
                let committed = match answer {
                    Answer::Committed => true,
                    Answer::Refused => false,
                    Answer::Pending(id) => shop.settle(buyer, &id).await?["status"] == "committed",
                };
                if committed {
                    finals.0 += 1;
                } else {
                    finals.1 += 1;
                }
            }
        }
        (prepared, finals)
    };
    let new = new_leader(&info, &old).await?;
    shop.check_on(new.pg_port).await?;
    shop.assert_invariants(Duration::from_secs(60)).await?;
    eprintln!(
        "2PC through failover: {prepared} prepared on the primary at the kill; {} checkouts \
         committed, {} not; {} promoted, nothing left prepared",
        finals.0, finals.1, new.name
    );
    assert!(finals.0 > 0, "no checkout committed");
    Ok(())
}

/// How a checkout ended, from the client's side.
enum Answer {
    Committed,
    Refused,
    /// 202: the coordinator finishes it; the order's id.
    Pending(String),
}

/// One checkout retried with its key until it has an answer (201, 202 or 409): the key makes a
/// retry return the first attempt's answer, never a second order.
async fn checkout_answered(
    shop: &Shop,
    buyer: &Customer,
    key: &str,
    items: &[(&str, i64)],
) -> anyhow::Result<Answer> {
    let started = Instant::now();
    loop {
        if let Ok(response) = shop.checkout(buyer, key, "2pc", items).await {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            match status {
                StatusCode::CREATED => return Ok(Answer::Committed),
                StatusCode::CONFLICT => return Ok(Answer::Refused),
                StatusCode::ACCEPTED => {
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    return Ok(Answer::Pending(id));
                }
                s if s.is_client_error() => anyhow::bail!("checkout {key} refused: {s} {body}"),
                _ => {}
            }
        }
        anyhow::ensure!(
            started.elapsed() < RETRY_BUDGET,
            "checkout {key} not answered within {RETRY_BUDGET:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Benchmark, not a check (`bench/cluster.sh`): commits per second on the primary with the strong
/// model (`remote_apply`: the synchronous standby has applied it) and the eventual one (`local`),
/// 4 connections each, the two modes alternated in 5 s rounds on one platform.
#[tokio::test]
#[ignore = "benchmark: bench/cluster.sh"]
async fn commit_throughput_strong_vs_eventual() -> anyhow::Result<()> {
    let platform = TestPlatform::start_cluster(bookstore(), &[]).await?;
    let info = cluster_info(&platform)?;
    let primary = leader(&info).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&member_url(&platform, &primary, "postgres")?)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_commits (id bigserial PRIMARY KEY, at timestamptz)",
    )
    .execute(&pool)
    .await?;
    let mut totals = [0u64; 2];
    for round in 0..6 {
        let mode = ["remote_apply", "local"][round % 2];
        totals[round % 2] += commits_for(&pool, mode, Duration::from_secs(5)).await?;
    }
    let [strong, eventual] = totals.map(|n| n as f64 / 15.0);
    eprintln!(
        "commit throughput: strong (remote_apply) {strong:.0}/s, eventual (local) {eventual:.0}/s, \
         ratio {:.2}",
        strong / eventual
    );
    pool.close().await;
    platform.stop().await?;
    Ok(())
}

/// Single-row insert transactions committed with `synchronous_commit = mode` by 4 workers.
async fn commits_for(pool: &sqlx::PgPool, mode: &str, span: Duration) -> anyhow::Result<u64> {
    let until = Instant::now() + span;
    let workers = (0..4).map(|_| async move {
        let mut done = 0u64;
        while Instant::now() < until {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT set_config('synchronous_commit', $1, true)")
                .bind(mode)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO bench_commits (at) VALUES (now())")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done += 1;
        }
        anyhow::Ok(done)
    });
    let mut total = 0;
    for done in futures::future::join_all(workers).await {
        total += done?;
    }
    Ok(total)
}
