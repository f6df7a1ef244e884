//! Checkout: the orders service's part in the distributed transaction (the `place` branch) and the
//! public `/api/checkout` routes that start one. See docs/TRANSACTIONS.md.

pub mod http;
pub mod ledger;
pub mod peers;
pub mod place;
pub mod request;

use std::time::Duration;

use discovery::client::RegistryConfig;
use serde::{Deserialize, Serialize};

pub use place::PlaceOrder;

/// How checkout reaches its peers and how long it waits for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckoutConfig {
    /// The whole transaction's deadline, given to the coordinator (default 10 000).
    pub timeout_ms: u64,
    /// How long the coordinator holds the answer back waiting for a final state before it says
    /// 202 (default 5 000); the checkout then finishes in the background.
    pub wait_ms: u64,
    /// The limit on one call to books or the coordinator, on top of `wait_ms` (default 3 000).
    pub call_timeout_ms: u64,
    /// Registry names of the peers (defaults `books`, `orders`, `coordinator`).
    pub books_service: String,
    pub orders_service: String,
    pub coordinator_service: String,
    /// Where the peers are found; the `bookstore` binary fills it in from its `registry` section.
    /// Without it checkout answers 503.
    #[serde(skip)]
    pub registry: Option<RegistryConfig>,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        CheckoutConfig {
            timeout_ms: 10_000,
            wait_ms: 5_000,
            call_timeout_ms: 3_000,
            books_service: "books".into(),
            orders_service: "orders".into(),
            coordinator_service: "coordinator".into(),
            registry: None,
        }
    }
}

impl CheckoutConfig {
    fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

/// What the checkout handlers need beyond the database.
#[derive(Clone)]
pub struct Checkout {
    pub peers: peers::Peers,
    pub config: CheckoutConfig,
}

#[cfg(test)]
mod tests {
    /// The barrier table is the participant module's; this service's migration must be its copy.
    #[test]
    fn the_barrier_migration_is_the_participant_modules_ddl() {
        assert_eq!(
            include_str!("../../migrations/0004_participant_barrier.sql"),
            coordinator::participant::BARRIER_DDL
        );
    }
}
