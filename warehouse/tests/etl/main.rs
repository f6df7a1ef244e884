//! The warehouse against real PostgreSQL: incremental correctness under concurrent writes, late
//! commits, idempotence, full = incremental, failures and catching up, non-overlapping runs, and
//! the reports checked against the source data; reading replicas of a replicated source.

mod consistency;
mod failures;
mod helpers;
mod incremental;
mod replicas;
mod reports;
