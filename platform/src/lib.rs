//! What every bookstore process shares, and nothing else: configuration, telemetry, the HTTP server
//! bootstrap (health, metrics, graceful shutdown), problem+json errors, request extractors that turn
//! bad input into those errors, cursor pagination, the PostgreSQL pool and the Redis cache ring.
//!
//! No business logic lives here; components build on it and talk to each other only over HTTP.

pub mod access_log;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod deadline;
pub mod extract;
pub mod faults;
pub mod limits;
pub mod live_gauges;
pub mod metrics;
pub mod otlp;
pub mod pagination;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use problem::{ApiError, FieldError, Problem};
