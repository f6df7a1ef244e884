//! Before a scenario, wait for the platform to be whole again: the registry's passing instances of
//! every service are exactly the live processes. A SIGKILLed instance stays registered until its
//! TTL runs out; starting the next fault before that would blame it for the last one.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::state::State;

const SERVICES: [&str; 3] = ["books", "orders", "coordinator"];

/// Waits up to `patience`; how long it took, or `None` if the registry never matched.
pub async fn wait_until_whole(
    dir: &std::path::Path,
    patience: Duration,
) -> anyhow::Result<Option<Duration>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = tokio::time::Instant::now();
    while started.elapsed() < patience {
        if whole(&http, dir).await.unwrap_or(false) {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(None)
}

async fn whole(http: &reqwest::Client, dir: &std::path::Path) -> anyhow::Result<bool> {
    let state = State::read(dir)?.ok_or_else(|| anyhow::anyhow!("the platform stopped"))?;
    for service in SERVICES {
        let live: BTreeSet<String> = state
            .processes
            .iter()
            .filter(|p| p.kind == service)
            .filter_map(|p| p.url.rsplit(':').next().map(str::to_owned))
            .collect();
        let entries: Vec<Value> = http
            .get(format!(
                "{}/v1/health/service/{service}?passing",
                state.registry_url
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let passing: BTreeSet<String> = entries
            .iter()
            .filter_map(|e| e["Service"]["Port"].as_u64())
            .map(|port| port.to_string())
            .collect();
        if live != passing {
            return Ok(false);
        }
    }
    Ok(true)
}
