//! The gateway's configuration. Every knob has a default that works on loopback.

use discovery::client::RegistryConfig;

use crate::balance::BalanceConfig;
use crate::breaker::BreakerConfig;
use crate::budget::BudgetConfig;
use crate::deadline::TimeoutConfig;
use crate::rate_limit::RateLimitConfig;
use crate::retry::RetryConfig;
use crate::service_breaker::ServiceBreakerConfig;
use crate::shed::ShedConfig;
use platform::server::HttpConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The public listener (default 127.0.0.1:8080) and its body limit.
    pub http: HttpConfig,
    /// Threads serving requests, each an event loop of its own over its own connections and
    /// upstream pools (`Server::serve_per_core`); 0 = one per CPU.
    pub threads: usize,
    /// Where the registry is; the gateway watches it for healthy instances.
    pub registry: RegistryConfig,
    /// Path prefixes and the service each one goes to; the longest matching prefix wins.
    pub routes: Vec<RouteConfig>,
    /// How the gateway talks to upstream instances.
    pub upstream: UpstreamConfig,
    /// Token verification (the signing key is required) for the auth layer.
    pub auth: platform::auth::AuthConfig,
    /// Per-route timeouts: the deadline of the whole request, all attempts included.
    pub timeouts: TimeoutConfig,
    /// Per-attempt timeout of the balancer.
    pub balance: BalanceConfig,
    /// Per-instance circuit breakers (passive health, ejection, half-open probes, panic mode).
    pub breaker: BreakerConfig,
    /// Reroutes to another instance: attempts and backoff.
    pub retry: RetryConfig,
    /// The retry budget: retries may never exceed this share of the requests in flight.
    pub budget: BudgetConfig,
    /// Per-service breaker on reroutes: fail fast while a service is failing.
    pub service_breaker: ServiceBreakerConfig,
    /// Per-client token bucket.
    pub rate_limit: RateLimitConfig,
    /// Global concurrency limit: shed, never queue.
    pub shed: ShedConfig,
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
            threads: 0,
            registry: RegistryConfig::default(),
            routes: vec![
                route("/api/auth", "orders"),
                route("/api/books", "books"),
                route("/api/checkout", "orders"),
                route("/api/customers", "orders"),
                route("/api/orders", "orders"),
                route("/api/reports", "warehouse"),
            ],
            upstream: UpstreamConfig::default(),
            auth: platform::auth::AuthConfig::default(),
            timeouts: TimeoutConfig::default(),
            balance: BalanceConfig::default(),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            budget: BudgetConfig::default(),
            service_breaker: ServiceBreakerConfig::default(),
            rate_limit: RateLimitConfig::default(),
            shed: ShedConfig::default(),
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
