//! The test harness every test uses: real PostgreSQL servers, real Redis nodes and real `bookstore` processes on free
//! loopback ports in temporary directories. Everything started here stops when its guard drops — also
//! when a test panics — and, through a parent-death signal, even when the test process is killed.
//! Tests run in parallel without clashing: each gets its own server, directory and ports.

pub mod cluster;
pub mod instances;
pub mod platform;
pub mod postgres;
pub mod redis;
pub mod replication;

pub use cluster::TestCluster;
pub use platform::TestPlatform;
pub use postgres::TestPostgres;
pub use redis::TestRedis;
pub use replication::{ReplicaOptions, TestReplicaSet};
