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
            Scenario::KillPrimary => {
                "SIGKILL the database primary's PostgreSQL: Patroni fails over, brings it back as a replica"
            }
            Scenario::KillReplica => {
                "SIGKILL the synchronous standby's node (Patroni + PostgreSQL), restart its Patroni later"
            }
            Scenario::KillTwoReplicas => {
                "SIGKILL two replica nodes at once (the synchronous standby and another), restart them later"
            }
            Scenario::PartitionPrimary => {
                "cut the primary off from etcd and the other members (cgroup + nftables): no split brain, no lost write"
            }
        }
    }

    /// The scenarios that need the replicated PostgreSQL (`up --pg-nodes 5`, the default; not
    /// available with `--pg-nodes 1`). Their victims are picked from the cluster's topology at
    /// fault time, not named here.
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
            // Replicas: reads move to the others, commits wait at most a Patroni loop for a new
            // synchronous standby. Nothing should fail but what was in flight on the killed node.
            Scenario::KillReplica | Scenario::KillTwoReplicas => 0.97,
            // A write gap of about 4 s (postmaster dead → sync standby promoted) while reads go on.
            Scenario::KillPrimary => 0.70,
            // No primary for ttl + a loop (≈ 22 s): every write in that window fails by design,
            // and clients that reached the isolated primary wait for their timeout (docs/LOADGEN.md).
            Scenario::PartitionPrimary => 0.60,
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

    /// The shortest load run that shows the scenario whole: a database fault lasts until Patroni
    /// has reacted (a failover takes up to ttl + loop_wait = 22 s), and the load should outlast
    /// the recovery. `Plan::short`'s few seconds are raised to this.
    pub fn min_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Scenario::KillReplica | Scenario::KillTwoReplicas => 12,
            Scenario::KillPrimary => 16,
            Scenario::PartitionPrimary => 40,
            _ => 0,
        })
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
    fn process_faults_name_their_victim_and_database_ones_find_it_in_the_topology() {
        for scenario in Scenario::ALL {
            let process_fault = scenario != Scenario::Steady && !scenario.needs_cluster();
            assert_eq!(scenario.victim().is_some(), process_fault, "{scenario}");
            assert_eq!(
                scenario.min_duration() > std::time::Duration::ZERO,
                scenario.needs_cluster(),
                "{scenario}"
            );
        }
    }
}
