//! The gateway's configuration. Every knob has a default that works on loopback.

use discovery::client::RegistryConfig;
use platform::server::HttpConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The public listener (default 127.0.0.1:8080) and its body limit.
    pub http: HttpConfig,
    /// Where the registry is; the gateway watches it for healthy instances.
    pub registry: RegistryConfig,
    /// Path prefixes and the service each one goes to; the longest matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// How the gateway talks to upstream instances.
    pub upstream: UpstreamConfig,
}

/// One routing rule: requests whose path is `prefix` or starts with `prefix/` go to `service`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteConfig {
    pub prefix: String,
    pub service: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// Time allowed to open a TCP connection to an instance.
    pub connect_timeout_ms: u64,
    /// Time allowed for a whole upstream exchange, from sending to the last byte of the answer.
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections kept per instance.
    pub pool_max_idle_per_host: usize,
    /// How long an idle keep-alive connection is kept.
    pub pool_idle_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let route = |prefix: &str, service: &str| RouteConfig {
            prefix: prefix.into(),
            service: service.into(),
        };
        Config {
            http: HttpConfig {
                listen: "127.0.0.1:8080".into(),
                body_limit_bytes: 1024 * 1024,
                ..HttpConfig::default()
            },
            registry: RegistryConfig::default(),
            routes: vec![
                route("/api/books", "books"),
                route("/api/customers", "orders"),
                route("/api/orders", "orders"),
            ],
            upstream: UpstreamConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 1000,
            request_timeout_ms: 10_000,
            pool_max_idle_per_host: 64,
            pool_idle_timeout_ms: 90_000,
        }
    }
}
