//! Traffic control at the gateway: a per-client token bucket (429) and a global concurrency limit
//! that sheds (503) instead of queueing.

use std::time::Duration;

use testkit::TestPlatform;

use crate::{admin_token, bookstore, client, expect_problem};

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_while_others_are_served()
-> anyhow::Result<()> {
    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_NO_DEMO", "true"),
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND", "1"),
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__BURST", "5"),
        ],
    )
    .await?;
    let gw = platform.gateway_url();
    let client = client();
    let admin = admin_token(&client, &platform).await?; // one token of this address's bucket

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = client.get(format!("{gw}/api/books")).send().await?;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            limited = Some(response);
        }
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (3..=5).contains(&served),
        "the burst of 5, less the login: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let limited = limited.ok_or_else(|| anyhow::anyhow!("never limited: {statuses:?}"))?;
    let retry_after: u64 = limited.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry_after), "retry after {retry_after}");
    expect_problem(limited, 429).await;

    // Another client (the admin, keyed by its token's subject) has its own bucket.
    let other = client
        .get(format!("{gw}/api/books"))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(other.status(), 200);
    // And this address is served again once the bucket has refilled.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        client.get(format!("{gw}/api/books")).send().await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn past_its_concurrency_limit_the_gateway_sheds_at_once_instead_of_queueing()
-> anyhow::Result<()> {
    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_NO_DEMO", "true"),
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED", "false"),
            ("BOOKSTORE_GATEWAY__SHED__MAX_IN_FLIGHT", "3"),
            ("BOOKSTORE_BOOKS__HTTP__FAULTS__DELAY_MS", "600"),
        ],
    )
    .await?;
    let url = format!("{}/api/books", platform.gateway_url());
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let response = client().get(url).send().await?;
                let elapsed = started.elapsed();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                anyhow::Ok((status, elapsed, retry_after))
            })
        })
        .collect();
    let mut served = 0;
    let mut shed = 0;
    for task in tasks {
        let (status, elapsed, retry_after) = task.await??;
        match status {
            200 => served += 1,
            503 => {
                shed += 1;
                assert!(
                    elapsed < Duration::from_millis(400),
                    "shed after {elapsed:?}: it waited in a queue"
                );
                assert_eq!(
                    retry_after
                        .and_then(|v| v.to_str().ok().map(str::to_owned))
                        .as_deref(),
                    Some("1")
                );
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert!(served >= 3, "the first three are served: {served}");
    assert!(shed >= 1, "the rest are shed: {shed}");
    assert_eq!(served + shed, 12);
    Ok(())
}
