//! Service discovery for the bookstore: a registry server speaking the subset of Consul's HTTP API we
//! use ([`server`]), and the client every service uses to register itself and watch healthy
//! instances of others ([`client`]). Both speak plain Consul, so real Consul can replace the server.

pub mod client;
pub mod duration;
pub mod server;
pub mod wire;
