//! The client every service uses: [`spawn_agent`] keeps this instance registered and passing its TTL
//! check, [`watch_healthy`] follows the healthy instances of another service with blocking queries.
//! Both talk plain Consul, survive the registry being down or restarted, and put a timeout on every call.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod advertise;
mod agent;
mod backoff;
mod watch;

pub use agent::spawn_agent;
pub use watch::{healthy_once, watch_healthy};

/// How a service finds the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Base URL of the registry (ours or real Consul); empty disables registering and watching.
    pub url: String,
    /// The TTL of this instance's check: silent this long, it is no longer healthy.
    pub ttl_seconds: u64,
    /// How often the agent passes the TTL check; keep it well under the TTL.
    pub heartbeat_ms: u64,
    /// The registry removes an instance whose check stayed critical this long (e.g. it crashed
    /// without deregistering). Real Consul enforces at least 60.
    pub deregister_critical_after_seconds: u64,
    /// The host others reach this instance at, as registered (an IP or a DNS name). Empty: the
    /// listen address, with 0.0.0.0/:: replaced by the address this host's name resolves to —
    /// what a container needs. See [`advertise`].
    pub advertise_address: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://127.0.0.1:8500".into(),
            ttl_seconds: 10,
            heartbeat_ms: 2000,
            deregister_critical_after_seconds: 60,
            advertise_address: String::new(),
        }
    }
}

impl RegistryConfig {
    pub fn is_enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The registry URL with `segments` appended, each percent-encoded (IDs may hold any character).
    pub(crate) fn endpoint(&self, segments: &[&str]) -> anyhow::Result<url::Url> {
        let mut url = url::Url::parse(self.url.trim())
            .map_err(|e| anyhow::anyhow!("registry url {:?} is not a URL: {e}", self.url))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("registry url {:?} cannot have a path", self.url))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

/// What this instance registers as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// The service name others look up, e.g. "books".
    pub name: String,
    /// Unique per instance, e.g. "books-127.0.0.1-8081".
    pub id: String,
    /// Where others reach this instance (an address they can route to, not 0.0.0.0).
    pub address: String,
    pub port: u16,
    /// Free-form labels others can filter on (`?tag=`).
    pub tags: Vec<String>,
    /// Free-form key/values, e.g. the version.
    pub meta: HashMap<String, String>,
    /// The instance's own readiness URL (e.g. `http://127.0.0.1:8081/health/ready`). When set,
    /// every heartbeat asks it first and reports the check passing only when it answers 2xx —
    /// critical otherwise, with the reason as the note — so an instance that lost its database
    /// leaves every watcher's healthy set within a heartbeat and returns when it recovers. `None`:
    /// the heartbeat only says the process is alive.
    pub ready_url: Option<String>,
}

/// One healthy instance of a watched service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: HashMap<String, String>,
}

impl Instance {
    /// `http://address:port`, bracketing IPv6 addresses.
    pub fn base_url(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("http://[{}]:{}", self.address, self.port)
        } else {
            format!("http://{}:{}", self.address, self.port)
        }
    }
}

/// A client for short registry calls. No TLS (the registry is local); no proxy, so an `HTTP_PROXY`
/// in the environment cannot hijack loopback traffic.
pub(crate) fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2).min(timeout))
        .timeout(timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the registry HTTP client: {e}"))
}

/// Sleeps for `duration` unless `shutdown` fires first; returns true on shutdown.
pub(crate) async fn sleep_or_shutdown(
    duration: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_escape_ids_and_tolerate_a_trailing_slash() {
        let config = RegistryConfig {
            url: "http://127.0.0.1:8500/".into(),
            ..RegistryConfig::default()
        };
        let url = config.endpoint(&["v1", "agent", "check", "pass", "service:a b/c"]);
        assert_eq!(
            url.map(String::from).ok().as_deref(),
            Some("http://127.0.0.1:8500/v1/agent/check/pass/service:a%20b%2Fc")
        );
        let broken = RegistryConfig {
            url: "not a url".into(),
            ..RegistryConfig::default()
        };
        assert!(broken.endpoint(&["v1"]).is_err());
    }

    #[test]
    fn base_urls_bracket_ipv6_addresses() {
        let mut instance = Instance {
            address: "10.0.0.7".into(),
            port: 8081,
            ..Instance::default()
        };
        assert_eq!(instance.base_url(), "http://10.0.0.7:8081");
        instance.address = "::1".into();
        assert_eq!(instance.base_url(), "http://[::1]:8081");
    }
}
