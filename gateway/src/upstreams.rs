//! The healthy instances of each routed service, kept current by registry watches, and the choice of
//! one per request (round robin for now; a balancer layer replaces it in the resilience work).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use discovery::client::{Instance, RegistryConfig, watch_healthy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One service's live instance set and its round-robin position.
struct ServiceSet {
    instances: watch::Receiver<Vec<Instance>>,
    next: AtomicUsize,
}

/// Every routed service's instances. The watches keep the last known set while the registry is down.
pub struct Upstreams {
    services: BTreeMap<String, ServiceSet>,
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
                (
                    name,
                    ServiceSet {
                        instances,
                        next: AtomicUsize::new(0),
                    },
                )
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
                (
                    name,
                    ServiceSet {
                        instances,
                        next: AtomicUsize::new(0),
                    },
                )
            })
            .collect();
        Upstreams { services }
    }

    /// Every service's live instance set, for the balancer.
    pub fn receivers(&self) -> Vec<(String, watch::Receiver<Vec<Instance>>)> {
        self.services
            .iter()
            .map(|(name, set)| (name.clone(), set.instances.clone()))
            .collect()
    }

    /// The next instance of `service` in round-robin order, if it has any healthy one.
    pub fn pick(&self, service: &str) -> Option<Instance> {
        let set = self.services.get(service)?;
        let instances = set.instances.borrow();
        if instances.is_empty() {
            return None;
        }
        let n = set.next.fetch_add(1, Ordering::Relaxed);
        instances.get(n % instances.len()).cloned()
    }

    /// The current healthy instances per service (for status pages).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Instance>> {
        self.services
            .iter()
            .map(|(name, set)| (name.clone(), set.instances.borrow().clone()))
            .collect()
    }

    /// Services that have no healthy instance right now.
    pub fn services_without_instances(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, set)| set.instances.borrow().is_empty())
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
    fn picks_rotate_over_every_instance() {
        let upstreams = Upstreams::fixed(vec![("books".into(), vec![instance(1), instance(2)])]);
        let ports: Vec<u16> = (0..4)
            .filter_map(|_| upstreams.pick("books"))
            .map(|i| i.port)
            .collect();
        assert_eq!(ports, vec![1, 2, 1, 2]);
    }

    #[test]
    fn a_service_without_instances_has_no_pick() {
        let upstreams = Upstreams::fixed(vec![("books".into(), Vec::new())]);
        assert!(upstreams.pick("books").is_none());
        assert!(upstreams.pick("unknown").is_none());
        assert_eq!(upstreams.services_without_instances(), vec!["books"]);
    }
}
