//! The gateway under real faults: processes killed, frozen, failing, a registry that disappears.
//! Each test asserts what the client saw (no failed request, fast 503s) and what the gateway did
//! (breaker states, attempts counted from its own /metrics).

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use testkit::TestPlatform;

use crate::{bookstore, client, metric, superuser_url};

/// A platform whose gateway does not rate-limit: these tests load it from one address on purpose.
async fn start() -> anyhow::Result<TestPlatform> {
    TestPlatform::start_with(
        bookstore(),
        &[("BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED", "false")],
    )
    .await
}

fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid as i32), signal)?;
    Ok(())
}

/// The registry id of an instance: `<kind>-<port>`.
fn instance_id(kind: &str, url: &str) -> String {
    format!("{kind}-{}", url.rsplit(':').next().unwrap_or_default())
}

/// Sends `GET /api/books?limit=1` from `workers` loops for `duration`; returns every status (0 = no answer).
async fn read_load(gateway: &str, workers: usize, duration: Duration) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let url = format!("{gateway}/api/books?limit=1");
        tasks.push(tokio::spawn(async move {
            let client = client();
            let until = tokio::time::Instant::now() + duration;
            let mut statuses = Vec::new();
            while tokio::time::Instant::now() < until {
                let status = client
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    all
}

fn assert_all_ok(statuses: &[u16]) {
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        statuses.len(),
        failed
    );
}

/// Polls `name{labels}` until it equals `value`; returns how long that took.
async fn wait_for_metric(
    gateway: &str,
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        if metric(gateway, name, labels).await? == value {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{name}{labels:?} did not reach {value} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_books_instance_killed_during_reads_fails_no_request_and_is_ejected_within_a_second()
-> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    let victim = platform.processes("books")[0].clone();
    let id = instance_id("books", &victim.url);
    let load = tokio::spawn({
        let gw = gw.clone();
        async move { read_load(&gw, 4, Duration::from_secs(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(victim.pid, Signal::SIGKILL)?;
    let ejected_after = wait_for_metric(
        &gw,
        "gateway_breaker_state",
        &[("instance", &id)],
        1.0,
        Duration::from_secs(5),
    )
    .await?;
    assert!(
        ejected_after <= Duration::from_secs(1),
        "ejected after {ejected_after:?}"
    );
    assert_all_ok(&load.await?);
    Ok(())
}

#[tokio::test]
async fn a_frozen_instance_is_timed_out_rerouted_ejected_and_returns_through_half_open()
-> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    let victim = platform.processes("books")[0].clone();
    let id = instance_id("books", &victim.url);
    signal(victim.pid, Signal::SIGSTOP)?;
    // Attempts on the frozen instance time out and are rerouted; enough of them open its breaker.
    let load = tokio::spawn({
        let gw = gw.clone();
        async move { read_load(&gw, 4, Duration::from_secs(8)).await }
    });
    wait_for_metric(
        &gw,
        "gateway_breaker_state",
        &[("instance", &id)],
        1.0,
        Duration::from_secs(8),
    )
    .await?;
    assert_all_ok(&load.await?);
    assert!(metric(&gw, "gateway_reroutes_total", &[("upstream", "books")]).await? >= 1.0);
    signal(victim.pid, Signal::SIGCONT)?;
    // Traffic lets a half-open probe through once the open time is over; it succeeds and closes.
    let load = tokio::spawn({
        let gw = gw.clone();
        async move { read_load(&gw, 1, Duration::from_secs(12)).await }
    });
    wait_for_metric(
        &gw,
        "gateway_breaker_state",
        &[("instance", &id)],
        0.0,
        Duration::from_secs(12),
    )
    .await?;
    let transitions = metric(
        &gw,
        "gateway_breaker_transitions_total",
        &[("instance", &id), ("to", "half-open")],
    )
    .await?;
    assert!(transitions >= 1.0, "it came back through half-open");
    load.abort();
    Ok(())
}

#[tokio::test]
async fn an_instance_answering_errors_is_ejected_by_its_error_rate_and_clients_see_none()
-> anyhow::Result<()> {
    // Only the rate window may eject it here: with the default 5 consecutive failures, an instance
    // failing 60 % of requests opens on its first five calls 0.6^5 ≈ 8 % of the time — before it
    // served any success, which is what this test tells apart from "ejected on one error".
    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED", "false"),
            ("BOOKSTORE_GATEWAY__BREAKER__CONSECUTIVE_FAILURES", "1000"),
        ],
    )
    .await?;
    let gw = platform.gateway_url().to_owned();
    let faulty = platform
        .spawn_instance(
            bookstore(),
            "books",
            "books-faulty",
            &[("BOOKSTORE_HTTP__FAULTS__ERROR_RATE", "0.6")],
        )
        .await?;
    let id = instance_id("books", &faulty.url);
    // Wait until the gateway routes to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&gw, "gateway_upstream_requests_total", &[("instance", &id)]).await? == 0.0 {
        client()
            .get(format!("{gw}/api/books?limit=1"))
            .send()
            .await?;
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the gateway never routed to {id}"
        );
    }
    let statuses = read_load(&gw, 2, Duration::from_secs(3)).await;
    assert_all_ok(&statuses);
    assert_eq!(
        metric(&gw, "gateway_breaker_state", &[("instance", &id)]).await?,
        1.0,
        "ejected"
    );
    let served_ok = metric(
        &gw,
        "gateway_upstream_requests_total",
        &[("instance", &id), ("outcome", "200")],
    )
    .await?;
    assert!(
        served_ok >= 1.0,
        "it was not ejected on its first error: it served {served_ok} successes first"
    );
    drop(faulty);
    Ok(())
}

#[tokio::test]
async fn with_every_instance_down_clients_get_fast_503s_and_attempts_stay_within_budget()
-> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    // Down, not dying: a request written into a socket the kernel has not closed yet (a big process
    // takes a while to tear down) dies with the process, and the last one tried answers 502 (the
    // exchange broke off) rather than 503 (nothing reachable). CI saw that once.
    for instance in platform.processes("books") {
        stack::chaos::launch::kill_and_wait(instance.pid).await?;
    }
    let client = client();
    let attempts_before = metric(
        &gw,
        "gateway_upstream_requests_total",
        &[("upstream", "books")],
    )
    .await?;
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = tokio::time::Instant::now();
        let response = client.get(format!("{gw}/api/books?limit=1")).send().await?;
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "503s must be fast: slowest {slowest:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_service_breaker_state",
            &[("upstream", "books")]
        )
        .await?,
        1.0,
        "the service breaker tripped"
    );
    let attempts = metric(
        &gw,
        "gateway_upstream_requests_total",
        &[("upstream", "books")],
    )
    .await?
        - attempts_before;
    // Each request tries each of the two dead instances at most once (never the same one twice, so
    // no retry storm); once reroutes are over half the recent traffic the service breaker trips and
    // no request reaches an instance at all (checked just below).
    assert!(
        attempts <= 2.0 * 30.0,
        "{attempts} requests were sent to dead instances"
    );
    let after_trip = metric(
        &gw,
        "gateway_upstream_requests_total",
        &[("upstream", "books")],
    )
    .await?;
    for _ in 0..10 {
        client.get(format!("{gw}/api/books?limit=1")).send().await?;
    }
    let more = metric(
        &gw,
        "gateway_upstream_requests_total",
        &[("upstream", "books")],
    )
    .await?
        - after_trip;
    assert!(
        more <= 1.0,
        "an open service breaker sends at most one probe, sent {more}"
    );
    Ok(())
}

#[tokio::test]
async fn traffic_continues_without_the_registry_and_instances_re_register_when_it_returns()
-> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    let registry = platform.processes("discovery")[0].clone();
    signal(registry.pid, Signal::SIGKILL)?;
    assert_all_ok(&read_load(&gw, 2, Duration::from_secs(2)).await);

    // The registry comes back empty on the same address; the services' agents re-register.
    let listen = registry.url.trim_start_matches("http://").to_owned();
    let mut spec = stack::process::ChildSpec::new(
        "discovery-again",
        bookstore(),
        platform.dir().join("logs/discovery-again.log"),
    )
    .args(["discovery"])
    .env("BOOKSTORE_HTTP__LISTEN", listen);
    spec.parent_death_signal = Signal::SIGKILL;
    let mut again = stack::process::Supervised::spawn(&spec)?;
    again
        .wait_until_ready(
            &format!("{}/health/ready", registry.url),
            Duration::from_secs(10),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let healthy: serde_json::Value = client()
            .get(format!("{}/v1/health/service/books?passing", registry.url))
            .send()
            .await?
            .json()
            .await?;
        if healthy.as_array().map(Vec::len) == Some(2) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "instances did not re-register: {healthy}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Changes are seen again: an instance that leaves is taken out of rotation without failures.
    let leaving = platform.processes("books")[0].clone();
    let load = tokio::spawn({
        let gw = gw.clone();
        async move { read_load(&gw, 2, Duration::from_secs(3)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(leaving.pid, Signal::SIGTERM)?;
    assert_all_ok(&load.await?);
    again.stop(Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_never_delivered_twice_even_after_a_timeout()
-> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url().to_owned();
    let frozen = platform.processes("orders")[0].clone();
    signal(frozen.pid, Signal::SIGSTOP)?;
    let client = client();
    let mut emails = Vec::new();
    let mut timed_out = 0;
    for n in 0..20 {
        let email = format!("once-{n}-{}@example.com", std::process::id());
        let response = client
            .post(format!("{gw}/api/customers"))
            .json(&json!({"email": email, "name": "Only Once", "password": "long-enough-pw"}))
            .send()
            .await?;
        match response.status().as_u16() {
            201 => {}
            504 => timed_out += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
        emails.push(email);
        if timed_out >= 2 {
            break;
        }
    }
    assert!(
        timed_out >= 1,
        "no POST reached the frozen instance; the test proved nothing"
    );
    signal(frozen.pid, Signal::SIGCONT)?;
    tokio::time::sleep(Duration::from_secs(2)).await; // the thawed instance handles what it had queued
    let db = sqlx::PgPool::connect(&superuser_url(&platform, "orders")?).await?;
    for email in &emails {
        let copies: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE email = $1")
            .bind(email)
            .fetch_one(&db)
            .await?;
        assert!(copies <= 1, "{email} was created {copies} times");
    }
    Ok(())
}
