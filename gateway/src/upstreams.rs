//! The healthy instances of each routed service, kept current by registry watches (blocking
//! queries). The balancer chooses among them; the gateway's readiness asks whether any is left.

use std::collections::BTreeMap;

use discovery::client::{Instance, RegistryConfig, watch_healthy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every routed service's instances. The watches keep the last known set while the registry is down.
pub struct Upstreams {
    services: BTreeMap<String, watch::Receiver<Vec<Instance>>>,
}

impl Upstreams {
    /// Starts one blocking-query watch per service.
    pub fn watch(
        config: &RegistryConfig,
        services: Vec<String>,
        shutdown: CancellationToken,
    ) -> Self {
        let services = services
            .into_iter()
            .map(|name| {
                let instances = watch_healthy(config, &name, shutdown.clone());
                (name, instances)
            })
            .collect();
        Upstreams { services }
    }

    /// A fixed set of instances per service, for tests that need no registry.
    pub fn fixed(sets: Vec<(String, Vec<Instance>)>) -> Self {
        let services = sets
            .into_iter()
            .map(|(name, list)| {
                let (tx, instances) = watch::channel(list);
                // Keep the sender alive for the process: a fixed set never changes.
                std::mem::forget(tx);
                (name, instances)
            })
            .collect();
        Upstreams { services }
    }

    /// Every service's live instance set, for the balancer.
    pub fn receivers(&self) -> Vec<(String, watch::Receiver<Vec<Instance>>)> {
        self.services
            .iter()
            .map(|(name, instances)| (name.clone(), instances.clone()))
            .collect()
    }

    /// Services that have no healthy instance right now.
    pub fn services_without_instances(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, instances)| instances.borrow().is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(port: u16) -> Instance {
        Instance {
            id: format!("books-{port}"),
            address: "127.0.0.1".into(),
            port,
            tags: Vec::new(),
            meta: Default::default(),
        }
    }

    #[test]
    fn a_service_without_instances_is_reported_as_such() {
        let upstreams = Upstreams::fixed(vec![
            ("books".into(), Vec::new()),
            ("orders".into(), vec![instance(1)]),
        ]);
        assert_eq!(upstreams.services_without_instances(), vec!["books"]);
        let receivers = upstreams.receivers();
        assert_eq!(receivers.len(), 2);
        assert_eq!(receivers[1].1.borrow().len(), 1);
    }
}
