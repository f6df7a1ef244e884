//! The coordinator against real participants, a real registry and a real PostgreSQL (see
//! `helpers`): both protocols end to end, the HTTP API, recovery, the orphan scan, two coordinators
//! on one database, and crashes at every point of a two-phase commit (in a child process).

mod api;
mod crash;
mod durability;
mod helpers;
mod orphans;
mod recovery;
mod saga;
mod two_phase;
