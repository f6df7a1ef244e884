//! The local launcher and everything that starts real servers on loopback: PostgreSQL (as an
//! unprivileged OS user when run as root), the Redis nodes of the cache ring, supervised `bookstore` component processes, and the
//! operator commands `up`, `status` and `down`. The test harness (`testkit`) reuses the same code, so
//! what tests start is what users run.

pub mod accounts;
pub mod accounts_cli;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod monitoring;
pub mod os_user;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod state;
pub mod status;
pub mod up;
