//! Drives the mix against the shop: an open model (a fixed arrival rate, whatever the answers
//! do) or a closed one (a fixed number of clients, each sending when its last answer came).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ledger::Ledger;
use crate::mix::Mix;
use crate::progress::Progress;
use crate::shop::Shop;
use crate::stats::{Outcome, Stats};

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// Requests per second, sent on schedule even while earlier ones are unanswered.
    Rate(f64),
    /// Clients, each with one request outstanding.
    Concurrency(usize),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mix: Mix,
    pub load: Load,
    pub duration: Duration,
    /// Open model only: arrivals beyond this many unanswered requests are not sent but counted as
    /// failed (`generator backlog`), so an unanswering platform cannot exhaust the generator.
    pub max_in_flight: usize,
    pub quiet: bool,
}

/// What one run measured and what the platform acknowledged.
pub struct Run {
    pub stats: Stats,
    pub ledger: Ledger,
    pub elapsed: Duration,
}

/// Shared by every request task.
struct Sink {
    stats: Mutex<Stats>,
    ledger: Mutex<Ledger>,
    requests: AtomicU64,
    failed: AtomicU64,
}

impl Sink {
    fn record(
        &self,
        op: crate::mix::Operation,
        sent: Duration,
        latency: Duration,
        outcome: Outcome,
        ledger: Ledger,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !outcome.available() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut stats) = self.stats.lock() {
            stats.record(op, sent, latency, outcome);
        }
        if let Ok(mut all) = self.ledger.lock() {
            all.merge(ledger);
        }
    }
}

pub async fn run(shop: Arc<Shop>, settings: &Settings) -> Run {
    let sink = Arc::new(Sink {
        stats: Mutex::new(Stats::default()),
        ledger: Mutex::new(Ledger::default()),
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let progress = Progress::new(settings.duration, settings.quiet);
    if let Err(e) = shop.renew_tokens_older_than(TOKEN_RENEWAL).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot renew the load generator's tokens"
        );
    }
    let renewal = tokio::spawn(renew_tokens(shop.clone()));
    let start = Instant::now();
    match settings.load {
        Load::Rate(rate) => open_model(&shop, settings, rate, &sink, start, &progress).await,
        Load::Concurrency(clients) => {
            closed_model(&shop, settings, clients, &sink, start, &progress).await
        }
    }
    renewal.abort();
    let elapsed = start.elapsed();
    let stats = sink.stats.lock().map(|s| s.clone()).unwrap_or_default();
    progress.finish();
    let ledger = sink.ledger.lock().map(|l| l.clone()).unwrap_or_default();
    Run {
        stats,
        ledger,
        elapsed,
    }
}

/// Tokens live 15 minutes: renewed before a run when older than this, and every this often during
/// one, so they are never older than twice this.
const TOKEN_RENEWAL: Duration = Duration::from_secs(300);

/// A run (or a chaos session of many runs) longer than a token lives must not turn into 401s.
async fn renew_tokens(shop: Arc<Shop>) {
    loop {
        tokio::time::sleep(TOKEN_RENEWAL).await;
        if let Err(e) = shop.renew_tokens().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot renew the load generator's tokens"
            );
        }
    }
}

/// The i-th request is due at `start + i / rate`; its latency is measured from then, not from
/// when it could be sent, so a stall shows in the percentiles instead of lowering the load.
async fn open_model(
    shop: &Arc<Shop>,
    settings: &Settings,
    rate: f64,
    sink: &Arc<Sink>,
    start: Instant,
    progress: &Progress,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    let mut due = start;
    while due < start + settings.duration {
        tokio::time::sleep_until(due).await;
        let op = settings.mix.draw(&mut rand::rng());
        let sent = due - start;
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let (shop, sink) = (shop.clone(), sink.clone());
                tasks.spawn(async move {
                    let mut ledger = Ledger::default();
                    let outcome = shop.perform(op, &mut ledger).await;
                    sink.record(op, sent, due.elapsed(), outcome, ledger);
                    drop(permit);
                });
            }
            Err(_) => sink.record(
                op,
                sent,
                due.elapsed(),
                Outcome::Failed("generator backlog".into()),
                Ledger::default(),
            ),
        }
        progress.tick(start.elapsed(), sink_counts(sink));
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        due += interval;
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_model(
    shop: &Arc<Shop>,
    settings: &Settings,
    clients: usize,
    sink: &Arc<Sink>,
    start: Instant,
    progress: &Progress,
) {
    let end = start + settings.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (shop, sink, mix) = (shop.clone(), sink.clone(), settings.mix.clone());
        tasks.spawn(async move {
            while Instant::now() < end {
                let op = mix.draw(&mut rand::rng());
                let sent_at = Instant::now();
                let mut ledger = Ledger::default();
                let outcome = shop.perform(op, &mut ledger).await;
                sink.record(op, sent_at - start, sent_at.elapsed(), outcome, ledger);
            }
        });
    }
    while Instant::now() < end {
        progress.tick(start.elapsed(), sink_counts(sink));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// `(requests, failed)` so far.
fn sink_counts(sink: &Sink) -> (u64, u64) {
    (
        sink.requests.load(Ordering::Relaxed),
        sink.failed.load(Ordering::Relaxed),
    )
}
