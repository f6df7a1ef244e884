//! The gateway's per-instance gauges, read from the balancer when `/metrics` is scraped: they
//! exist exactly for the instances the gateway routes to now. Recorded gauges would keep an
//! instance the registry dropped at its last value forever (a breaker "open" for an instance
//! long gone).

use platform::live_gauges::{self, GaugeFamily};

use crate::stack::Observed;

/// Registers the collector for this process (once per gateway).
pub fn register(observed: Observed) {
    live_gauges::register(move || families(&observed));
}

fn families(observed: &Observed) -> Vec<GaugeFamily> {
    let mut state = Vec::new();
    let mut in_flight = Vec::new();
    for (status, _) in observed.snapshot() {
        for instance in status.instances {
            let labels = vec![
                ("upstream", status.service.clone()),
                ("instance", instance.id.clone()),
            ];
            state.push((labels.clone(), instance.state.gauge()));
            in_flight.push((labels, instance.in_flight as f64));
        }
    }
    vec![
        GaugeFamily {
            name: "gateway_breaker_state",
            help: "Each upstream instance's breaker: 0 closed, 1 open, 2 half-open.",
            samples: state,
        },
        GaugeFamily {
            name: "gateway_upstream_in_flight",
            help: "Requests the gateway has in flight to each upstream instance.",
            samples: in_flight,
        },
    ]
}
