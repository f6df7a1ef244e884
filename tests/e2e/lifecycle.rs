//! Starting, stopping and restarting the platform: nothing left behind, data kept, instances that
//! leave are taken out of rotation.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::{admin_token, all_books, bookstore, client, start};

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
