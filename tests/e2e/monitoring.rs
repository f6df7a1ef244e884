//! `bookstore up` with its monitoring: the Prometheus it starts finds every instance through the
//! registry and scrapes it, `bookstore status` shows both servers ready, and a killed instance's
//! `InstanceDown` alert (the real rule from deploy/prometheus/alerts.yml) reaches its Alertmanager.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use testkit::TestPlatform;

use crate::{bookstore, client};

fn installed(binary: &str) -> anyhow::Result<bool> {
    if Command::new(binary).arg("--version").output().is_ok() {
        return Ok(true);
    }
    anyhow::ensure!(
        std::env::var_os("CI").is_none(),
        "{binary} is not installed, and CI is set: run scripts/setup.sh"
    );
    eprintln!("SKIPPED: {binary} is not installed (scripts/setup.sh installs it)");
    Ok(false)
}

/// Prometheus' active targets as (scrape pool, job, instance, scrape URL, health).
async fn targets(prometheus: &str) -> anyhow::Result<Vec<[String; 5]>> {
    let body: Value = client()
        .get(format!("{prometheus}/api/v1/targets?state=active"))
        .send()
        .await?
        .json()
        .await?;
    let targets = body["data"]["activeTargets"].as_array().cloned();
    Ok(targets
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            [
                text(&t["scrapePool"]),
                text(&t["labels"]["job"]),
                text(&t["labels"]["instance"]),
                text(&t["scrapeUrl"]),
                text(&t["health"]),
            ]
        })
        .collect())
}

/// Waits until every process `up` started that serves metrics is a target scraped up, and returns
/// the targets.
async fn wait_for_every_target_up(
    platform: &TestPlatform,
    prometheus: &str,
) -> anyhow::Result<Vec<[String; 5]>> {
    let expected: BTreeSet<String> = platform
        .state()
        .processes
        .iter()
        .filter(|p| {
            [
                "books",
                "orders",
                "coordinator",
                "warehouse",
                "gateway",
                "discovery",
            ]
            .contains(&&*p.kind)
        })
        .map(|p| format!("{}/metrics", p.url))
        .collect();
    anyhow::ensure!(expected.len() == 9, "processes: {expected:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = targets(prometheus).await.unwrap_or_default();
        let up: BTreeSet<String> = found
            .iter()
            .filter(|t| t[4] == "up")
            .map(|t| t[3].clone())
            .collect();
        if up == expected {
            return Ok(found);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not scrape every process within 30 s: up {up:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn monitoring_up_starts_prometheus_that_scrapes_everything_and_alertmanager_that_gets_its_alerts()
-> anyhow::Result<()> {
    if !installed("prometheus")? || !installed("prometheus-alertmanager")? {
        return Ok(());
    }
    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_NO_DEMO", "true"),
            ("BOOKSTORE_NO_MONITORING", "false"),
            // Scrape, discover and evaluate every second: the alert's own `for: 30s` is what
            // remains to wait for.
            ("BOOKSTORE_MONITORING_INTERVAL", "1s"),
        ],
    )
    .await?;
    let url_of = |kind: &str| -> anyhow::Result<String> {
        let process = platform.processes(kind).into_iter().next();
        Ok(process
            .ok_or_else(|| anyhow::anyhow!("no {kind} in state.json"))?
            .url)
    };
    let prometheus = url_of("prometheus")?;
    let alertmanager = url_of("alertmanager")?;

    // `status` shows both, ready.
    let status = Command::new(bookstore())
        .args(["status", "--json", "--dir"])
        .arg(platform.dir())
        .output()?;
    let view: Value = serde_json::from_slice(&status.stdout)?;
    for kind in ["prometheus", "alertmanager"] {
        let row = view["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == kind);
        let health = row.map(|p| p["health"].clone());
        assert_eq!(health, Some("ready".into()), "status: {view}");
    }

    let found = wait_for_every_target_up(&platform, &prometheus).await?;

    // Kill one books instance; the alert names it by its registered id.
    let victim = platform
        .processes("books")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no books instance"))?;
    let victim_target = found
        .iter()
        .find(|t| t[3] == format!("{}/metrics", victim.url))
        .ok_or_else(|| anyhow::anyhow!("{} is no target: {found:?}", victim.url))?;
    let (job, instance) = (victim_target[1].clone(), victim_target[2].clone());
    assert_eq!(job, "books");
    kill(Pid::from_raw(i32::try_from(victim.pid)?), Signal::SIGKILL)?;

    // InstanceDown holds for 30 s before it fires; then Prometheus sends it to Alertmanager.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    loop {
        if let Ok(answer) = client()
            .get(format!("{alertmanager}/api/v2/alerts?active=true"))
            .send()
            .await
            && let Ok(alerts) = answer.json::<Value>().await
        {
            let down = alerts.as_array().into_iter().flatten().find(|a| {
                a["labels"]["alertname"] == "InstanceDown" && a["labels"]["instance"] == *instance
            });
            if let Some(alert) = down {
                assert_eq!(alert["labels"]["job"], *job, "{alert}");
                assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
                break;
            }
            last = alerts;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "InstanceDown for {instance} did not reach Alertmanager within 90 s; it holds: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Only the killed instance is down: nothing else alerted.
    let alerts: Value = client()
        .get(format!("{alertmanager}/api/v2/alerts?active=true"))
        .send()
        .await?
        .json()
        .await?;
    let others: Vec<&Value> = alerts
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["instance"] != *instance)
        .collect();
    assert!(others.is_empty(), "unexpected alerts: {others:?}");
    Ok(())
}

/// The `gateway_breaker_state` series the gateway exports for each books instance (by registered
/// id), as 0/1/2.
async fn breaker_series(gateway: &str) -> anyhow::Result<BTreeSet<String>> {
    let text = client()
        .get(format!("{gateway}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("gateway_breaker_state{") && l.contains("upstream=\"books\""))
        .filter_map(|l| l.split("instance=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect())
}

/// An instance that leaves (SIGTERM: it deregisters) disappears from the gateway's per-instance
/// gauges instead of keeping its last value forever.
#[tokio::test]
async fn monitoring_the_gateway_stops_exporting_the_breaker_state_of_an_instance_that_left()
-> anyhow::Result<()> {
    let platform = TestPlatform::start_with(bookstore(), &[("BOOKSTORE_NO_DEMO", "true")]).await?;
    let gateway = platform.gateway_url().to_owned();
    let books = platform.processes("books");
    let id = |url: &str| format!("books-{}", url.rsplit(':').next().unwrap_or_default());
    let all: BTreeSet<String> = books.iter().map(|p| id(&p.url)).collect();
    anyhow::ensure!(all.len() == 2, "books instances: {all:?}");
    let (leaving, staying) = (&books[0], id(&books[1].url));

    let wait_for = |expected: BTreeSet<String>| {
        let gateway = gateway.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let found = breaker_series(&gateway).await?;
                if found == expected {
                    return Ok::<_, anyhow::Error>(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "breaker series {found:?}, expected {expected:?} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Traffic to both instances, so a recorded gauge would exist for each.
    for _ in 0..20 {
        client()
            .get(format!("{gateway}/api/books?limit=1"))
            .send()
            .await?
            .error_for_status()?;
    }
    wait_for(all).await?;
    kill(Pid::from_raw(i32::try_from(leaving.pid)?), Signal::SIGTERM)?;
    wait_for(BTreeSet::from([staying])).await?;
    Ok(())
}
