//! The shared registry state behind the HTTP handlers: the [`Catalog`] under a lock, a watch channel
//! that wakes blocking queries when the index rises, and the logs and metrics of every change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::server::Config;
use crate::server::checks::Status;
use crate::server::registration::NewService;
use crate::server::state::{Catalog, Change, CheckError, ProbeJob};

/// Who this registry says it is, as Consul's agent would (`Node` in answers, `/v1/agent/self`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
}

/// Cheap to clone; every clone shares one catalog.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<Guarded>,
    changes: watch::Sender<u64>,
    node: NodeInfo,
    shutdown: CancellationToken,
}

struct Guarded {
    catalog: Catalog,
    /// Service names with a `discovery_services` series, so a vanished service is set to 0. (The
    /// label is `service_name`: `service` is the global label naming the process.)
    published: BTreeSet<String>,
}

impl Registry {
    /// A fresh, empty registry. Blocking queries answer at once when `shutdown` fires, so the server
    /// can drain without waiting out long polls.
    pub fn new(config: &Config, shutdown: CancellationToken) -> Registry {
        let address = match config.http.listen.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_unspecified() => addr.ip().to_string(),
            _ => "127.0.0.1".to_owned(),
        };
        let node = NodeInfo {
            id: uuid::Uuid::new_v4().to_string(),
            name: config.node_name.clone(),
            address,
            datacenter: config.datacenter.clone(),
        };
        let catalog = Catalog::default();
        let (changes, _) = watch::channel(catalog.index());
        Registry {
            inner: Arc::new(Inner {
                state: Mutex::new(Guarded {
                    catalog,
                    published: BTreeSet::new(),
                }),
                changes,
                node,
                shutdown,
            }),
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.inner.node
    }

    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// A receiver that sees every later index change (subscribe before reading, to miss none).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Runs `f` on a consistent view of the catalog.
    pub(crate) async fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.inner.state.lock().await.catalog)
    }

    pub(crate) async fn register(&self, service: NewService) -> Result<(), String> {
        let mut state = self.inner.state.lock().await;
        let changes = state.catalog.register(service, Instant::now())?;
        self.commit(&mut state, changes);
        Ok(())
    }

    /// Returns whether the ID was registered.
    pub(crate) async fn deregister(&self, id: &str) -> bool {
        let mut state = self.inner.state.lock().await;
        let changes = state.catalog.deregister(id);
        let removed = !changes.is_empty();
        self.commit(&mut state, changes);
        removed
    }

    pub(crate) async fn report(
        &self,
        check_id: &str,
        status: Status,
        output: String,
    ) -> Result<(), CheckError> {
        let mut state = self.inner.state.lock().await;
        let changes = state
            .catalog
            .report(check_id, status, output, Instant::now())?;
        self.commit(&mut state, changes);
        Ok(())
    }

    /// Expires TTLs, reaps long-critical instances and hands out the HTTP probes now due.
    pub(crate) async fn tick(&self) -> Vec<ProbeJob> {
        let mut state = self.inner.state.lock().await;
        let now = Instant::now();
        let changes = state.catalog.tick(now);
        self.commit(&mut state, changes);
        state.catalog.due_probes(now)
    }

    pub(crate) async fn record_probe(&self, job: &ProbeJob, status: Status, output: String) {
        let mut state = self.inner.state.lock().await;
        let changes = state
            .catalog
            .record_probe(job, status, output, Instant::now());
        self.commit(&mut state, changes);
    }

    /// Logs the changes, refreshes the gauges and wakes blocking queries; a no-op does none of it.
    fn commit(&self, state: &mut Guarded, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        changes.iter().for_each(log_change);
        publish_metrics(state);
        self.inner.changes.send_replace(state.catalog.index());
    }
}

fn log_change(change: &Change) {
    match change {
        Change::Registered { id, name, replaced } => {
            tracing::info!(service = %name, id = %id, replaced, "service registered");
        }
        Change::Deregistered { id, name } => {
            tracing::info!(service = %name, id = %id, "service deregistered");
        }
        Change::StatusChanged {
            check_id,
            service_id,
            from,
            to,
        } => {
            if *to == Status::Critical {
                tracing::warn!(check = %check_id, id = %service_id, %from, %to, "check status changed");
            } else {
                tracing::info!(check = %check_id, id = %service_id, %from, %to, "check status changed");
            }
        }
        Change::Reaped { id, name, check_id } => {
            tracing::warn!(service = %name, id = %id, check = %check_id,
                "service deregistered: its check stayed critical past DeregisterCriticalServiceAfter");
        }
    }
}

fn publish_metrics(state: &mut Guarded) {
    let mut per_service: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_status: BTreeMap<Status, usize> = Status::ALL.into_iter().map(|s| (s, 0)).collect();
    for instance in state.catalog.instances() {
        *per_service.entry(instance.name.clone()).or_default() += 1;
        for check in &instance.checks {
            *per_status.entry(check.status).or_default() += 1;
        }
    }
    for gone in state
        .published
        .iter()
        .filter(|name| !per_service.contains_key(*name))
    {
        metrics::gauge!("discovery_services", "service_name" => gone.clone()).set(0.0);
    }
    for (name, count) in &per_service {
        metrics::gauge!("discovery_services", "service_name" => name.clone()).set(*count as f64);
    }
    for (status, count) in per_status {
        metrics::gauge!("discovery_checks", "status" => status.as_str()).set(count as f64);
    }
    metrics::gauge!("discovery_index").set(state.catalog.index() as f64);
    state.published.extend(per_service.into_keys());
}
