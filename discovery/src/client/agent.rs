//! Keeps one instance registered: register with a TTL check, pass it every heartbeat — or fail it,
//! when the instance's own readiness endpoint says it is not ready —, register again when the
//! registry has forgotten us (restarted: it answers 404 for our check), deregister on shutdown. The
//! registry being down never stops the service; it is retried with backoff, and only changes of
//! state are logged, not every heartbeat.

use std::time::Duration;

use http::StatusCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::backoff::Backoff;
use crate::client::{Registration, RegistryConfig, http_client, sleep_or_shutdown};
use crate::duration::RawDuration;
use crate::wire::{CheckDefinition, ServiceDefinition};

/// Shutdown must not hang on a registry that is gone.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the agent until `shutdown` fires; the task ends after the best-effort deregistration.
/// An empty `config.url` registers nothing.
pub fn spawn_agent(
    config: RegistryConfig,
    registration: Registration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if !config.is_enabled() {
            tracing::info!(service = %registration.name, "no registry configured; not registering");
            return;
        }
        match Agent::new(config, registration) {
            Ok(agent) => agent.run(shutdown).await,
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "cannot start the registry agent; this instance will not be discoverable"
            ),
        }
    })
}

enum PassError {
    /// The registry does not know our check: register again.
    Forgotten,
    Failed(anyhow::Error),
}

struct Agent {
    config: RegistryConfig,
    registration: Registration,
    check_id: String,
    heartbeat: Duration,
    client: reqwest::Client,
    /// Where to ask whether this instance is ready (see [`Registration::ready_url`]).
    ready: Option<url::Url>,
}

/// What a heartbeat reports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Ready,
    NotReady(String),
}

impl Agent {
    fn new(config: RegistryConfig, mut registration: Registration) -> anyhow::Result<Agent> {
        if registration.id.is_empty() {
            registration.id = registration.name.clone();
        }
        let heartbeat = Duration::from_millis(config.heartbeat_ms.max(50));
        if heartbeat >= Duration::from_secs(config.ttl_seconds) {
            tracing::warn!(
                heartbeat_ms = config.heartbeat_ms,
                ttl_seconds = config.ttl_seconds,
                "the heartbeat is not shorter than the TTL; this instance will flap between healthy and critical"
            );
        }
        config.endpoint(&[])?;
        let ready = match registration.ready_url.as_deref() {
            Some(raw) => Some(
                url::Url::parse(raw)
                    .map_err(|e| anyhow::anyhow!("the readiness URL {raw:?} is not a URL: {e}"))?,
            ),
            None => None,
        };
        // A call may take at most a heartbeat (within 1–5 s), so a hung registry cannot stall the loop.
        let client = http_client(heartbeat.clamp(Duration::from_secs(1), Duration::from_secs(5)))?;
        Ok(Agent {
            check_id: format!("service:{}", registration.id),
            config,
            registration,
            heartbeat,
            client,
            ready,
        })
    }

    /// Asks the instance's readiness endpoint (ready when none is set).
    async fn health(&self) -> Health {
        let Some(url) = &self.ready else {
            return Health::Ready;
        };
        match self.client.get(url.clone()).send().await {
            Ok(response) if response.status().is_success() => Health::Ready,
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                Health::NotReady(format!(
                    "readiness answered {status}: {}",
                    first_line(&body)
                ))
            }
            Err(e) => Health::NotReady(format!("readiness did not answer: {e}")),
        }
    }

    async fn run(self, shutdown: CancellationToken) {
        let id = &self.registration.id;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut registered = false;
        let mut reachable = true;
        let mut last_health = Health::Ready;
        loop {
            if !registered {
                match self.register(&self.health().await).await {
                    Ok(()) => {
                        tracing::info!(service = %self.registration.name, id = %id, "registered with the registry");
                        (registered, reachable) = (true, true);
                        backoff.reset();
                    }
                    Err(e) => {
                        if std::mem::take(&mut reachable) {
                            tracing::warn!(id = %id, error = format!("{e:#}"), "cannot register with the registry; retrying");
                        }
                        if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if sleep_or_shutdown(self.heartbeat, &shutdown).await {
                break;
            }
            let health = self.health().await;
            if health != last_health {
                match &health {
                    Health::Ready => tracing::info!(id = %id, "ready again; reporting passing"),
                    Health::NotReady(why) => {
                        tracing::warn!(id = %id, reason = %why, "not ready; reporting critical")
                    }
                }
                last_health = health.clone();
            }
            match self.report(&health).await {
                Ok(()) if !reachable => {
                    tracing::info!(id = %id, "registry reachable again");
                    reachable = true;
                }
                Ok(()) => {}
                Err(PassError::Forgotten) => {
                    tracing::warn!(id = %id, "the registry forgot this instance; registering again");
                    registered = false;
                }
                Err(PassError::Failed(e)) => {
                    if std::mem::take(&mut reachable) {
                        tracing::warn!(id = %id, error = format!("{e:#}"), "cannot reach the registry; still trying");
                    }
                }
            }
        }
        self.deregister().await;
    }

    /// Registers with a TTL check whose ID we choose, so we know what to pass; passing when ready
    /// (the service starts its agent once it is ready to serve), critical otherwise.
    async fn register(&self, health: &Health) -> anyhow::Result<()> {
        let r = &self.registration;
        let definition = ServiceDefinition {
            id: Some(r.id.clone()),
            name: r.name.clone(),
            address: Some(r.address.clone()),
            port: Some(r.port),
            tags: Some(r.tags.clone()),
            meta: Some(r.meta.clone()),
            check: Some(CheckDefinition {
                check_id: Some(self.check_id.clone()),
                name: Some(format!("{} heartbeat", r.name)),
                ttl: Some(RawDuration::seconds(self.config.ttl_seconds.max(1))),
                deregister_critical_service_after: Some(RawDuration::seconds(
                    self.config.deregister_critical_after_seconds,
                )),
                status: Some(
                    match health {
                        Health::Ready => "passing",
                        Health::NotReady(_) => "critical",
                    }
                    .into(),
                ),
                ..CheckDefinition::default()
            }),
            checks: None,
        };
        let url = self
            .config
            .endpoint(&["v1", "agent", "service", "register"])?;
        let response = self.client.put(url).json(&definition).send().await?;
        expect_success(response).await
    }

    /// Passes the check when ready, fails it with the reason as its note when not.
    async fn report(&self, health: &Health) -> Result<(), PassError> {
        let verb = match health {
            Health::Ready => "pass",
            Health::NotReady(_) => "fail",
        };
        let mut url = self
            .config
            .endpoint(&["v1", "agent", "check", verb, &self.check_id])
            .map_err(PassError::Failed)?;
        if let Health::NotReady(why) = health {
            url.query_pairs_mut().append_pair("note", why);
        }
        let response = self
            .client
            .put(url)
            .send()
            .await
            .map_err(|e| PassError::Failed(e.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        // Consul before 1.11 answered 500 "CheckID … does not have associated TTL" for unknown checks.
        if status == StatusCode::NOT_FOUND || body.contains("does not have associated TTL") {
            return Err(PassError::Forgotten);
        }
        Err(PassError::Failed(anyhow::anyhow!(
            "registry answered {status}: {}",
            first_line(&body)
        )))
    }

    async fn deregister(&self) {
        let id = &self.registration.id;
        let attempt = async {
            let url = self
                .config
                .endpoint(&["v1", "agent", "service", "deregister", id])?;
            let response = self
                .client
                .put(url)
                .timeout(DEREGISTER_TIMEOUT)
                .send()
                .await?;
            expect_success(response).await
        };
        match attempt.await {
            Ok(()) => tracing::info!(id = %id, "deregistered from the registry"),
            Err(e) => tracing::warn!(id = %id, error = format!("{e:#}"),
                "could not deregister; the registry will drop this instance once its TTL runs out"),
        }
    }
}

async fn expect_success(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("registry answered {status}: {}", first_line(&body))
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}
