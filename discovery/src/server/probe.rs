//! The registry's check loop: every `check_interval` it expires TTLs, reaps long-critical instances
//! and starts the HTTP probes that are due. Probes run concurrently, each bounded by its timeout, so
//! one slow service never delays another's checks.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::server::checks::{HttpProbe, Status, status_for_http};
use crate::server::registry::Registry;

/// Like Consul, keep at most this much of a probe's body as the check's output.
const MAX_OUTPUT_BYTES: usize = 4096;

/// Runs until `shutdown` fires.
pub async fn run_checks(registry: Registry, interval: Duration, shutdown: CancellationToken) {
    // No proxy: an `HTTP_PROXY` in the environment must not stand between us and the services.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot build the HTTP check client; HTTP checks will fail"))
        .ok();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        while probes.try_join_next().is_some() {}
        for job in registry.tick().await {
            let (registry, client) = (registry.clone(), client.clone());
            probes.spawn(async move {
                let (status, output) = match &client {
                    Some(client) => probe(client, &job.probe).await,
                    None => (
                        Status::Critical,
                        "the registry cannot make HTTP requests".to_owned(),
                    ),
                };
                registry.record_probe(&job, status, output).await;
            });
        }
    }
    probes.shutdown().await;
}

/// One HTTP check: the status from the response code, the output Consul-style.
pub async fn probe(client: &reqwest::Client, probe: &HttpProbe) -> (Status, String) {
    let method =
        reqwest::Method::from_bytes(probe.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = client.request(method, &probe.url).timeout(probe.timeout);
    for (name, values) in &probe.headers {
        for value in values {
            request = request.header(name, value);
        }
    }
    let what = format!("HTTP {} {}", probe.method, probe.url);
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => {
            return (
                Status::Critical,
                format!("{what}: timed out after {:?}", probe.timeout),
            );
        }
        Err(e) => return (Status::Critical, format!("{what}: {e}")),
    };
    let code = response.status();
    let mut body = Vec::new();
    while body.len() < MAX_OUTPUT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_OUTPUT_BYTES);
    let output = format!("{what}: {code} Output: {}", String::from_utf8_lossy(&body));
    (status_for_http(code.as_u16()), output)
}
