//! Integration tests: the real application on a random port against a real, throw-away PostgreSQL,
//! driven over HTTP the way clients drive it. One binary, so everything is compiled and linked once.

mod auth;
mod cache;
mod create;
mod delete;
mod helpers;
mod list;
mod ops;
mod rating_totals;
mod ratings;
mod read;
mod search;
mod totals_table;
mod update;
mod validation;
