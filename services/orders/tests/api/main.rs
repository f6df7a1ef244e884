//! Integration tests: the real service on a random port over a fresh PostgreSQL per test.

mod auth;
mod bad_input;
mod checkout_ledger;
mod credit;
mod customers;
mod database;
mod helpers;
mod idempotency;
mod messages;
mod messages_cluster;
mod orders;
mod primary_down;
mod sign_up;
