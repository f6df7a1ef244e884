//! Integration tests of the registry and its client, one binary (one link) for all of them.
//! `helpers` has the oneshot driver and a real registry on a free port.

mod agent_api;
mod blocking;
mod client_agent;
mod client_watch;
mod compat;
mod helpers;
mod http_checks;
mod prometheus_sd;
