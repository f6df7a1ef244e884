//! Starting, stopping and restarting the platform: nothing left behind, data kept, instances that
//! leave are taken out of rotation.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::{admin_token, all_books, bookstore, client, start, up_command};

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test]
async fn sigterm_stops_every_process_and_a_restart_reuses_the_data() -> anyhow::Result<()> {
    let mut platform = start().await?;
    let dir = platform
        .keep_dir()
        .ok_or_else(|| anyhow::anyhow!("no temp dir"))?;
    let client = client();
    let gw = platform.gateway_url().to_owned();
    let admin = admin_token(&client, &platform).await?;
    let created = client
        .post(format!("{gw}/api/books"))
        .bearer_auth(&admin)
        .json(
            &json!({"isbn": "9780306406157", "title": "Survives Restarts", "author": "A. Keeper",
                      "genre": "technical", "price_cents": 100, "stock": 1}),
        )
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let count_before = all_books(&client, &gw).await?.len();
    let pids: Vec<u32> = platform.state().processes.iter().map(|p| p.pid).collect();
    assert_eq!(
        pids.len(),
        13,
        "postgres, 3 redis, registry, 2 coordinators, 2 books, 2 orders, warehouse, gateway"
    );
    assert!(pids.iter().all(|pid| alive(*pid)));

    let status = platform.stop().await?;
    assert!(
        status.success(),
        "bookstore up exits cleanly on SIGTERM: {status}"
    );
    let leftovers: Vec<u32> = pids.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");

    let again = testkit::TestPlatform::start_in(bookstore(), dir.path()).await?;
    let books = all_books(&client, again.gateway_url()).await?;
    assert_eq!(
        books.len(),
        count_before,
        "no demo data loaded twice, nothing lost"
    );
    assert!(books.iter().any(|b| b["title"] == "Survives Restarts"));
    drop(again);
    Ok(())
}

#[tokio::test]
async fn stopping_an_instance_with_sigterm_fails_no_request() -> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    let victim = platform.processes("books")[0].clone();
    // A steady stream of reads, before, during and after the instance stops.
    let load = tokio::spawn(async move {
        let client = client();
        let mut statuses = Vec::new();
        for _ in 0..150 {
            let status = match client.get(format!("{gw}/api/books?limit=1")).send().await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            };
            statuses.push(status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(Pid::from_raw(victim.pid as i32), Signal::SIGTERM)?;
    let statuses = load.await?;
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(!alive(victim.pid), "the instance has stopped");
    let healthy: serde_json::Value = client()
        .get(format!(
            "{}/v1/health/service/books?passing",
            platform.registry_url()
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        healthy.as_array().map(Vec::len),
        Some(1),
        "it deregistered: {healthy}"
    );
    Ok(())
}

/// A start that fails part-way stops what it had started. PostgreSQL here refuses a data directory
/// it cannot use while the cache nodes and the registry, which start beside it, come up: `up` says
/// what failed, and none of their processes outlives it.
#[tokio::test]
async fn a_start_that_fails_part_way_says_why_and_leaves_no_process_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("pg/data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("PG_VERSION"), "15\n")?;
    let mut up = up_command(dir.path(), "0");
    up.args(["--pg-nodes", "1"])
        .env("BOOKSTORE_NO_MONITORING", "true");
    let output = tokio::process::Command::from(up).output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL exited during start-up"),
        "{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        2,
        "the reason and PostgreSQL's own: {stderr}"
    );
    let logs = dir.path().join("logs");
    for started in ["redis-1.log", "redis-3.log", "discovery.log"] {
        let log = std::fs::read_to_string(logs.join(started))?;
        assert!(!log.is_empty(), "{started} had started");
    }
    assert_eq!(processes_in(dir.path())?, Vec::<String>::new());
    Ok(())
}

/// Processes (but this one) that run in `dir`, were given a path in it, or have it in their
/// environment: redis-server runs in its node's directory, each of ours gets its port file's path.
fn processes_in(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let dir = std::fs::canonicalize(dir)?;
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let read = |name: &str| std::fs::read(path.join(name)).unwrap_or_default();
        let cwd = std::fs::read_link(path.join("cwd")).unwrap_or_default();
        let mentions = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).contains(&needle);
        if cwd.starts_with(&dir) || mentions(read("cmdline")) || mentions(read("environ")) {
            let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    Ok(found)
}
