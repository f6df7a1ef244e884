//! Follows the healthy instances of a service with Consul blocking queries on
//! `/v1/health/service/<name>?passing`. Publishes only when the set changes, keeps the last known set
//! while the registry is down (the gateway keeps routing), and starts over from index 0 when the index
//! goes backwards or the registry was unreachable (it may have restarted with a fresh index).
//!
//! A registry that restarted knows nobody until each instance's agent registers again (within a
//! heartbeat). For one check TTL after such a return the watch therefore publishes the answer *plus*
//! the instances it knew before: an empty or partial answer then means "not re-registered yet", not
//! "gone" — the same benefit of the doubt the registry gives a silent instance. After that the
//! answer is taken as it is.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::backoff::Backoff;
use crate::client::{Instance, RegistryConfig, http_client, sleep_or_shutdown};
use crate::wire::HealthEntry;

/// How long one blocking query waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// The wait, the server's jitter (up to 1/16) and a margin.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60 + 4 + 5);
const ONCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts following `service` (needs a tokio runtime). The receiver starts empty and the background
/// task ends when `shutdown` fires. An empty `config.url` never publishes anything.
pub fn watch_healthy(
    config: &RegistryConfig,
    service: &str,
    shutdown: CancellationToken,
) -> watch::Receiver<Vec<Instance>> {
    let (sender, receiver) = watch::channel(Vec::new());
    let (config, service) = (config.clone(), service.to_owned());
    tokio::spawn(async move {
        if !config.is_enabled() {
            // Keep the sender until shutdown so receivers do not see a closed channel.
            shutdown.cancelled().await;
            return;
        }
        match http_client(WATCH_TIMEOUT) {
            Ok(client) => follow(&client, &config, &service, &sender, &shutdown).await,
            Err(e) => {
                tracing::error!(service = %service, error = format!("{e:#}"), "cannot watch the registry");
                shutdown.cancelled().await;
            }
        }
    });
    receiver
}

/// One non-blocking query for the healthy instances of `service`.
pub async fn healthy_once(config: &RegistryConfig, service: &str) -> anyhow::Result<Vec<Instance>> {
    anyhow::ensure!(config.is_enabled(), "no registry is configured");
    let client = http_client(ONCE_TIMEOUT)?;
    let (instances, _) = query(&client, config, service, 0, WATCH_WAIT).await?;
    Ok(instances)
}

async fn follow(
    client: &reqwest::Client,
    config: &RegistryConfig,
    service: &str,
    sender: &watch::Sender<Vec<Instance>>,
    shutdown: &CancellationToken,
) {
    let mut index = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut reachable = true;
    let grace = Duration::from_secs(config.ttl_seconds.max(1));
    let mut returned: Option<Returned> = None;
    loop {
        let wait = returned
            .as_ref()
            .and_then(|r| r.grace_left(grace))
            .map_or(WATCH_WAIT, |left| left.min(WATCH_WAIT));
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = query(client, config, service, index, wait) => answer,
        };
        match answer {
            Ok((instances, new_index)) => {
                if !reachable {
                    tracing::info!(service = %service, "registry reachable again");
                    reachable = true;
                    returned = Some(Returned::now(sender));
                }
                backoff.reset();
                // Backwards means a restarted registry: ask afresh rather than block on a stale index.
                if new_index < index {
                    returned = Some(Returned::now(sender));
                }
                index = if new_index < index { 0 } else { new_index };
                let instances = match returned.as_ref().filter(|r| r.grace_left(grace).is_some()) {
                    Some(r) => r.with_known(instances),
                    None => {
                        returned = None;
                        instances
                    }
                };
                let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
                let changed = sender.send_if_modified(|known| {
                    let changed = *known != instances;
                    if changed {
                        *known = instances;
                    }
                    changed
                });
                if changed {
                    tracing::info!(service = %service, instances = ?ids, "healthy instances changed");
                }
            }
            Err(e) => {
                if std::mem::take(&mut reachable) {
                    tracing::warn!(service = %service, error = format!("{e:#}"),
                        "cannot reach the registry; keeping the last known instances");
                }
                index = 0;
                if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                    return;
                }
            }
        }
    }
}

/// The registry's return after an outage or a restart, and what the watch knew before it.
struct Returned {
    at: tokio::time::Instant,
    known: Vec<Instance>,
}

impl Returned {
    fn now(sender: &watch::Sender<Vec<Instance>>) -> Returned {
        Returned {
            at: tokio::time::Instant::now(),
            known: sender.borrow().clone(),
        }
    }

    /// Time left to trust the instances known before the return; `None` once it is over.
    fn grace_left(&self, grace: Duration) -> Option<Duration> {
        grace
            .checked_sub(self.at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// The answer plus the instances known before that it does not list (yet), sorted by ID.
    fn with_known(&self, mut instances: Vec<Instance>) -> Vec<Instance> {
        for known in &self.known {
            if !instances.iter().any(|i| i.id == known.id) {
                instances.push(known.clone());
            }
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        instances
    }
}

/// The healthy instances, sorted by ID, and the `X-Consul-Index` of the answer. A blocking query
/// (index > 0) waits at most `wait` (whole seconds, at least one) for a change.
async fn query(
    client: &reqwest::Client,
    config: &RegistryConfig,
    service: &str,
    index: u64,
    wait: Duration,
) -> anyhow::Result<(Vec<Instance>, u64)> {
    let mut url = config.endpoint(&["v1", "health", "service", service])?;
    if index == 0 {
        url.set_query(Some("passing"));
    } else {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        url.set_query(Some(&format!("passing&index={index}&wait={seconds}s")));
    }
    let response = client.get(url).send().await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "registry answered {status}");
    let new_index = response
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let entries: Vec<HealthEntry> = response.json().await?;
    let mut instances: Vec<Instance> = entries
        .into_iter()
        // `?passing` already filters; checking again costs nothing and guards against proxies.
        .filter(|e| e.checks.iter().all(|c| c.status == "passing"))
        .map(|e| Instance {
            // Consul's rule: an empty service address means the node's address.
            address: if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            },
            id: e.service.id,
            port: e.service.port,
            tags: e.service.tags,
            meta: e.service.meta,
        })
        .collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((instances, new_index))
}
