//! One service's endpoints: the registry's passing set (active health) joined with a breaker and an
//! in-flight count per instance (passive health), and the power-of-two-choices pick over them.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use discovery::client::Instance;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{InstanceStatus, UpstreamStatus};
use crate::breaker::{Breaker, BreakerConfig, BreakerState, Outcome, Ticket};

/// One instance with its health and load.
struct Endpoint {
    /// Shared with every request sent to it: a request takes the instance without copying it.
    instance: Arc<Instance>,
    in_flight: AtomicUsize,
    /// A `std` mutex: held only for a few comparisons, never across an `.await`.
    breaker: Mutex<Breaker>,
}

impl Endpoint {
    fn new(service: &str, instance: Instance, config: &Arc<BreakerConfig>) -> Self {
        let now = Instant::now();
        Endpoint {
            breaker: Mutex::new(Breaker::new(config.clone(), service, &instance.id, now)),
            instance: Arc::new(instance),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // The breaker is plain data that every method leaves consistent; a panic elsewhere while
        // it was held does not make it unusable.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the registry still describes the same instance (a changed address is a new one).
    fn is(&self, instance: &Instance) -> bool {
        self.instance.id == instance.id
            && self.instance.address == instance.address
            && self.instance.port == instance.port
    }
}

/// One request in flight to an instance. Dropping it ends the request; [`Lease::record`] first
/// tells the instance's breaker how the request went. A lease dropped without a verdict (the
/// caller gave up) counts for nothing but frees its probe slot.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    /// `None` in panic mode when the breaker would not have admitted the request: its outcome is
    /// not the breaker's business.
    ticket: Option<Ticket>,
}

impl Lease {
    fn new(endpoint: Arc<Endpoint>, ticket: Option<Ticket>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease { endpoint, ticket }
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.endpoint.instance
    }

    /// Whether this request is a half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.is_probe())
    }

    /// Records what the request said about the instance (`None`: nothing) and ends it.
    pub fn record(mut self, outcome: Option<Outcome>) {
        if let (Some(ticket), Some(outcome)) = (self.ticket, outcome) {
            self.ticket = None;
            self.endpoint
                .breaker()
                .record(ticket, outcome, Instant::now());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.endpoint.breaker().release(ticket, Instant::now());
        }
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one service, following the registry's watch.
pub struct EndpointSet {
    service: String,
    config: Arc<BreakerConfig>,
    current: Mutex<Current>,
    /// Whether the last pick was in panic mode, to log entering and leaving it once.
    panicking: AtomicBool,
    rng: Rng,
}

struct Current {
    receiver: watch::Receiver<Vec<Instance>>,
    /// The registry stopped publishing (its sender is gone): the last set stays as it is.
    closed: bool,
    endpoints: Arc<[Arc<Endpoint>]>,
}

impl EndpointSet {
    /// Starts from the receiver's current set; later sets are picked up lazily, at the next pick.
    pub fn new(
        service: &str,
        mut receiver: watch::Receiver<Vec<Instance>>,
        config: Arc<BreakerConfig>,
    ) -> Self {
        let instances = receiver.borrow_and_update().clone();
        let endpoints = instances
            .into_iter()
            .map(|instance| Arc::new(Endpoint::new(service, instance, &config)))
            .collect();
        EndpointSet {
            service: service.to_owned(),
            config,
            current: Mutex::new(Current {
                receiver,
                closed: false,
                endpoints,
            }),
            panicking: AtomicBool::new(false),
            rng: Rng::seeded(),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The current endpoints, after taking in the registry's latest set: instances that stay keep
    /// their breaker and in-flight count, new ones start closed, removed ones are dropped (leases
    /// still out keep theirs alive until they end).
    fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match current.receiver.has_changed() {
            Ok(changed) => changed,
            // Closed: read its last value once, then keep serving from it.
            Err(_) => !current.closed,
        };
        if changed {
            let instances = current.receiver.borrow_and_update().clone();
            current.closed = current.receiver.has_changed().is_err();
            let endpoints = instances
                .into_iter()
                .map(
                    |instance| match current.endpoints.iter().find(|e| e.is(&instance)) {
                        Some(kept) => kept.clone(),
                        None => Arc::new(Endpoint::new(&self.service, instance, &self.config)),
                    },
                )
                .collect();
            current.endpoints = endpoints;
        }
        current.endpoints.clone()
    }

    /// Chooses an instance for one request, never one in `exclude` (those already tried for it).
    /// Power of two choices among instances whose breaker admits a request: two distinct random
    /// candidates, the one with fewer requests in flight wins. In panic mode (more than
    /// `max_ejection_percent` of the instances ejected) breakers are ignored and every
    /// non-excluded instance is a candidate. `None` when there is no candidate.
    pub fn pick(&self, exclude: &[String]) -> Option<Lease> {
        let now = Instant::now();
        let endpoints = self.endpoints();
        let mut ejected = 0;
        let mut allowed = Vec::with_capacity(endpoints.len());
        let mut admitting = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints.iter() {
            let (state, admits) = {
                let mut breaker = endpoint.breaker();
                (breaker.state(now), breaker.admits(now))
            };
            if state != BreakerState::Closed {
                ejected += 1;
            }
            if exclude.contains(&endpoint.instance.id) {
                continue;
            }
            allowed.push(endpoint);
            if admits {
                admitting.push(endpoint);
            }
        }
        if self.panic_mode(ejected, endpoints.len()) {
            let winner = allowed[self.choose(&allowed)?].clone();
            metrics::counter!("gateway_panic_mode_total", "upstream" => self.service.clone())
                .increment(1);
            // A winner that admits the request still learns from it.
            let ticket = winner.breaker().try_acquire(now);
            return Some(Lease::new(winner, ticket));
        }
        // A half-open winner's probe slot may have gone to a concurrent pick: try the next best.
        while let Some(i) = self.choose(&admitting) {
            if let Some(ticket) = admitting[i].breaker().try_acquire(now) {
                return Some(Lease::new(admitting[i].clone(), Some(ticket)));
            }
            admitting.swap_remove(i);
        }
        None
    }

    /// Whether more than the allowed share of instances is ejected; logs entering and leaving.
    fn panic_mode(&self, ejected: usize, total: usize) -> bool {
        let limit = self.config.max_ejection_percent as usize;
        let panic = total > 0 && ejected * 100 > limit * total;
        if self.panicking.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                tracing::warn!(upstream = %self.service, ejected, total, max_ejection_percent = limit,
                    "panic mode: too many instances ejected; routing to all of them");
            } else {
                tracing::info!(upstream = %self.service, ejected, total, "panic mode over");
            }
        }
        panic
    }

    /// Power of two choices: the index of the less loaded of two distinct random candidates (a
    /// tie goes to the first, itself random).
    fn choose(&self, candidates: &[&Arc<Endpoint>]) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => {
                let a = self.rng.below(n);
                let mut b = self.rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                Some(if candidates[b].load() < candidates[a].load() {
                    b
                } else {
                    a
                })
            }
        }
    }

    /// Every instance's health and load now.
    pub fn status(&self) -> UpstreamStatus {
        let now = Instant::now();
        let endpoints = self.endpoints();
        let instances: Vec<InstanceStatus> = endpoints
            .iter()
            .map(|endpoint| {
                let mut breaker = endpoint.breaker();
                let state = breaker.state(now);
                InstanceStatus {
                    id: endpoint.instance.id.clone(),
                    address: endpoint.instance.address.clone(),
                    port: endpoint.instance.port,
                    state,
                    in_flight: endpoint.load(),
                    recent_calls: breaker.recent_calls(now),
                    error_rate: breaker.error_rate(now),
                    ejections: breaker.ejections(),
                    reopens_in_ms: (state == BreakerState::Open)
                        .then(|| breaker.open_remaining(now).as_millis() as u64),
                }
            })
            .collect();
        let ejected = instances
            .iter()
            .filter(|i| i.state != BreakerState::Closed)
            .count();
        let limit = self.config.max_ejection_percent as usize;
        UpstreamStatus {
            service: self.service.clone(),
            panic_mode: !instances.is_empty() && ejected * 100 > limit * instances.len(),
            instances,
        }
    }
}

/// SplitMix64 on an atomic counter: lock-free, good enough to spread picks, no dependency.
struct Rng(AtomicU64);

impl Rng {
    fn seeded() -> Self {
        Rng(AtomicU64::new(
            std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64),
        ))
    }

    fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for small `n` (n > 0).
    fn below(&self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
