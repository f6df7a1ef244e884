//! The chaos scenarios: what each breaks, what it expects of the platform, and the ones that wait
//! for the replicated PostgreSQL cluster.

use std::fmt;
use std::str::FromStr;

use loadgen::{Mix, Operation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// No fault: the control run the others are compared with.
    Steady,
    KillInstance,
    FreezeInstance,
    KillRedis,
    KillCoordinator,
    KillRegistry,
    SkewClockAhead,
    SkewClockBehind,
    KillPrimary,
    KillReplica,
    KillTwoReplicas,
    PartitionPrimary,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Steady,
        Scenario::KillInstance,
        Scenario::FreezeInstance,
        Scenario::KillRedis,
        Scenario::KillCoordinator,
        Scenario::KillRegistry,
        Scenario::SkewClockAhead,
        Scenario::SkewClockBehind,
        Scenario::KillPrimary,
        Scenario::KillReplica,
        Scenario::KillTwoReplicas,
        Scenario::PartitionPrimary,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::KillInstance => "kill-instance",
            Scenario::FreezeInstance => "freeze-instance",
            Scenario::KillRedis => "kill-redis",
            Scenario::KillCoordinator => "kill-coordinator",
            Scenario::KillRegistry => "kill-registry",
            Scenario::SkewClockAhead => "skew-clock-ahead",
            Scenario::SkewClockBehind => "skew-clock-behind",
            Scenario::KillPrimary => "kill-primary",
            Scenario::KillReplica => "kill-replica",
            Scenario::KillTwoReplicas => "kill-two-replicas",
            Scenario::PartitionPrimary => "partition-primary",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Steady => "no fault (the control run)",
            Scenario::KillInstance => "SIGKILL books-1, restart it later",
            Scenario::FreezeInstance => "SIGSTOP orders-1, SIGCONT later",
            Scenario::KillRedis => {
                "SIGKILL redis-2, restart it on its port and append-only file later"
            }
            Scenario::KillCoordinator => {
                "SIGKILL coordinator-1 under a checkout-heavy mix, restart it later"
            }
            Scenario::KillRegistry => "SIGKILL the registry, restart it on its port later",
            Scenario::SkewClockAhead => {
                "restart orders-2 with its clock 1 hour ahead (faketime): it must keep itself out of rotation"
            }
            Scenario::SkewClockBehind => {
                "restart orders-2 with its clock 1 hour behind (faketime): it must keep itself out of rotation"
            }
            Scenario::KillPrimary => "SIGKILL the database primary, bring it back as a replica",
            Scenario::KillReplica => "SIGKILL one database replica",
            Scenario::KillTwoReplicas => "SIGKILL two database replicas at once",
            Scenario::PartitionPrimary => {
                "cut the primary off from etcd and the other nodes: no split brain, no lost write"
            }
        }
    }

    /// The scenarios that need a replicated PostgreSQL (`up` runs one plain server today).
    pub fn needs_cluster(self) -> bool {
        matches!(
            self,
            Scenario::KillPrimary
                | Scenario::KillReplica
                | Scenario::KillTwoReplicas
                | Scenario::PartitionPrimary
        )
    }

    /// The process the fault hits (by its name in `state.json`).
    pub fn victim(self) -> Option<&'static str> {
        match self {
            Scenario::KillInstance => Some("books-1"),
            Scenario::FreezeInstance => Some("orders-1"),
            Scenario::KillRedis => Some("redis-2"),
            Scenario::KillCoordinator => Some("coordinator-1"),
            Scenario::KillRegistry => Some("discovery"),
            Scenario::SkewClockAhead | Scenario::SkewClockBehind => Some("orders-2"),
            _ => None,
        }
    }

    /// The least share of requests that must succeed (or be refused by design) for a pass. A
    /// killed process is routed around (reads, and writes with an `Idempotency-Key`, are retried
    /// on the other instance), so only requests in flight at the kill may fail; a frozen one holds
    /// its requests until their deadline before the breaker opens.
    pub fn min_availability(self) -> f64 {
        match self {
            Scenario::Steady | Scenario::KillRegistry => 0.99,
            Scenario::SkewClockAhead | Scenario::SkewClockBehind => 0.99,
            Scenario::KillInstance | Scenario::KillRedis | Scenario::KillCoordinator => 0.97,
            Scenario::FreezeInstance => 0.95,
            _ => 0.95,
        }
    }

    /// The request mix while the fault runs.
    pub fn mix(self) -> Mix {
        match self {
            // "While checkouts commit": half of all requests are checkouts.
            Scenario::KillCoordinator => Mix::new(&[
                (Operation::View, 30),
                (Operation::TopUp, 20),
                (Operation::Checkout2pc, 25),
                (Operation::CheckoutSaga, 25),
            ])
            .unwrap_or_default(),
            _ => Mix::default(),
        }
    }

    /// The clock offset of the skew scenarios, in libfaketime's syntax.
    pub fn skew(self) -> Option<&'static str> {
        match self {
            Scenario::SkewClockAhead => Some("+1h"),
            Scenario::SkewClockBehind => Some("-1h"),
            _ => None,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|sc| sc.name()).collect();
                anyhow::anyhow!(
                    "unknown scenario {s:?}: one of all, list, {}",
                    names.join(", ")
                )
            })
    }
}

/// Parses `all` (every scenario this platform can run) or a comma-separated list of names.
pub fn select(text: &str) -> anyhow::Result<Vec<Scenario>> {
    if text == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    text.split(',').map(|name| name.trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_all_selects_every_scenario() {
        for scenario in Scenario::ALL {
            assert_eq!(
                scenario.name().parse::<Scenario>().expect("known"),
                scenario
            );
        }
        assert_eq!(select("all").expect("all").len(), Scenario::ALL.len());
        assert_eq!(
            select("kill-redis, steady").expect("list"),
            [Scenario::KillRedis, Scenario::Steady]
        );
        assert!(select("kill-everything").is_err());
    }

    #[test]
    fn every_runnable_fault_names_its_victim_and_cluster_ones_wait_for_the_cluster() {
        for scenario in Scenario::ALL {
            let runnable_fault = scenario != Scenario::Steady && !scenario.needs_cluster();
            assert_eq!(scenario.victim().is_some(), runnable_fault, "{scenario}");
        }
    }
}
