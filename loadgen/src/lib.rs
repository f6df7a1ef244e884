//! `bookstore loadgen`'s engine: a weighted mix of shop operations sent through the gateway by
//! customers it signs up itself, open-model (a rate, latency from the intended send time) or
//! closed (a concurrency), with HDR percentiles per operation, errors by kind, a ledger of every
//! acknowledged write, and the invariant checks that compare that ledger with the databases.

pub mod client;
pub mod invariants;
pub mod ledger;
pub mod mix;
pub mod progress;
pub mod report;
pub mod runner;
pub mod shop;
pub mod stats;

pub use invariants::{Baseline, Check, Databases};
pub use ledger::Ledger;
pub use mix::{Mix, Operation};
pub use report::LoadReport;
pub use runner::{Load, Run, Settings};
pub use shop::{Shop, Target};
