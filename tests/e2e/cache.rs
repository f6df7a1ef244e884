//! The cache ring on the real platform: `bookstore up` starts three Redis nodes and both books
//! instances read through them. What is asserted is what clients see — never an old value after a
//! write returned, no failed request when a node dies — plus the cache's own metrics.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use testkit::{TestPlatform, TestRedis};

use crate::checkout::Shop;
use crate::{admin_token, all_books, bookstore, client, metric};

/// A platform whose gateway does not rate-limit (the tests load it from one address).
async fn start() -> anyhow::Result<TestPlatform> {
    TestPlatform::start_with(
        bookstore(),
        &[("BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED", "false")],
    )
    .await
}

/// The base URLs of the books instances (read directly, bypassing the gateway's balancing, so a
/// test knows which instance answered).
fn books_instances(platform: &TestPlatform) -> Vec<String> {
    platform
        .processes("books")
        .into_iter()
        .map(|p| p.url)
        .collect()
}

async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// PUT of `book` with one field changed, conditional on its version; the new version.
async fn update(
    client: &reqwest::Client,
    gateway: &str,
    admin: &str,
    book: &Value,
    stock: i64,
) -> anyhow::Result<i64> {
    let id = book["id"].as_str().unwrap_or_default();
    let body = json!({
        "isbn": book["isbn"], "title": book["title"], "author": book["author"],
        "genre": book["genre"], "price_cents": book["price_cents"], "stock": stock,
    });
    let updated: Value = client
        .put(format!("{gateway}/api/books/{id}"))
        .bearer_auth(admin)
        .header("if-match", book["version"].to_string())
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    updated["version"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no version in {updated}"))
}

/// Readers of `urls` (round robin) for as long as `until` is not cancelled; every status seen.
fn read_loop(
    urls: Vec<String>,
    workers: usize,
    until: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let urls = urls.clone();
                let until = until.clone();
                tokio::spawn(async move {
                    let client = client();
                    let mut statuses = Vec::new();
                    let mut i = w;
                    while !until.is_cancelled() {
                        let url = &urls[i % urls.len()];
                        i += 1;
                        let status = client
                            .get(url)
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        statuses.push(status);
                    }
                    statuses
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all
    })
}

fn assert_all_ok(statuses: &[u16]) {
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} reads failed: {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(statuses.len() > 50, "too few reads: {}", statuses.len());
}

#[tokio::test]
async fn after_an_update_returns_neither_books_instance_serves_the_old_value() -> anyhow::Result<()>
{
    let platform = start().await?;
    let client = client();
    let gateway = platform.gateway_url().to_owned();
    let admin = admin_token(&client, &platform).await?;
    let instances = books_instances(&platform);
    let books = all_books(&client, &gateway).await?;
    let targets: Vec<Value> = books.into_iter().take(5).collect();
    // Readers keep both instances filling the cache with whatever they read, so fills race the
    // writes' invalidations all the time.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut urls = Vec::new();
    for base in &instances {
        for book in &targets {
            urls.push(format!(
                "{base}/api/books/{}",
                book["id"].as_str().unwrap_or_default()
            ));
        }
        urls.push(format!("{base}/api/books?limit=100"));
    }
    let readers = read_loop(urls, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    for round in 0..8 {
        for book in &targets {
            let id = book["id"].as_str().unwrap_or_default();
            let current = get_json(&client, &format!("{gateway}/api/books/{id}")).await?;
            let stock = 100 + round;
            let version = update(&client, &gateway, &admin, &current, stock).await?;
            for base in &instances {
                let seen = get_json(&client, &format!("{base}/api/books/{id}")).await?;
                assert_eq!(
                    (seen["version"].as_i64(), seen["stock"].as_i64()),
                    (Some(version), Some(stock)),
                    "{base} served an old book after the update returned"
                );
                let page = get_json(&client, &format!("{base}/api/books?limit=100")).await?;
                let listed = page["items"]
                    .as_array()
                    .and_then(|items| items.iter().find(|b| b["id"] == json!(id)))
                    .cloned()
                    .unwrap_or(Value::Null);
                assert_eq!(
                    listed["version"].as_i64(),
                    Some(version),
                    "{base} served an old list page after the update returned"
                );
            }
        }
    }
    stop.cancel();
    assert_all_ok(&readers.await?);
    // The reads were served from the cache, not just past it.
    let mut hits = 0.0;
    for base in &instances {
        hits += metric(base, "bookstore_cache_requests_total", &[("result", "hit")]).await?;
    }
    assert!(hits > 100.0, "only {hits} cache hits");
    Ok(())
}

#[tokio::test]
async fn after_a_checkout_returns_both_books_instances_show_the_new_stock() -> anyhow::Result<()> {
    let mut shop = Shop::open(start().await?).await?;
    let instances = books_instances(&shop.platform);
    let book = shop.book(20, 500).await?;
    let customer = shop.customer(100_000).await?;
    let mut expected = 20;
    for (n, mode) in ["2pc", "saga", "2pc", "saga"].iter().enumerate() {
        // Both instances have the book cached.
        for base in &instances {
            let seen = get_json(&shop.client, &format!("{base}/api/books/{book}")).await?;
            assert_eq!(seen["stock"].as_i64(), Some(expected));
        }
        let response = shop
            .checkout(&customer, &format!("cache-{n}"), mode, &[(&book, 2)])
            .await?;
        assert_eq!(
            response.status().as_u16(),
            201,
            "{}",
            response.text().await?
        );
        expected -= 2;
        for base in &instances {
            let seen = get_json(&shop.client, &format!("{base}/api/books/{book}")).await?;
            assert_eq!(
                seen["stock"].as_i64(),
                Some(expected),
                "{base} served the stock from before a {mode} checkout that returned"
            );
        }
    }
    shop.assert_invariants(Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_redis_node_killed_during_reads_fails_no_request_and_serves_nothing_stale_when_it_returns()
-> anyhow::Result<()> {
    let platform = start().await?;
    let client = client();
    let gateway = platform.gateway_url().to_owned();
    let admin = admin_token(&client, &platform).await?;
    let instances = books_instances(&platform);
    let books: Vec<Value> = all_books(&client, &gateway).await?;
    // Every book cached through both instances, so the victim holds entries for its share.
    for base in &instances {
        for book in &books {
            get_json(
                &client,
                &format!(
                    "{base}/api/books/{}",
                    book["id"].as_str().unwrap_or_default()
                ),
            )
            .await?;
        }
    }
    let victim = platform
        .processes("redis")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no redis node"))?;
    let addr = victim.url.trim_start_matches("redis://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap_or_default().parse()?;

    let stop = tokio_util::sync::CancellationToken::new();
    let urls: Vec<String> = books
        .iter()
        .map(|b| {
            format!(
                "{gateway}/api/books/{}",
                b["id"].as_str().unwrap_or_default()
            )
        })
        .chain([format!("{gateway}/api/books?limit=20")])
        .collect();
    let readers = read_loop(urls, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL)?;
    tokio::time::sleep(Duration::from_millis(700)).await;

    // While it is down, change a third of the books; its AOF still holds their old entries.
    let mut latest = std::collections::HashMap::new();
    for book in books.iter().take(books.len() / 3 + 1) {
        let version = update(&client, &gateway, &admin, book, 7).await?;
        latest.insert(book["id"].as_str().unwrap_or_default().to_owned(), version);
    }
    for base in &instances {
        let ejected = metric(base, "bookstore_cache_ejections_total", &[("node", &addr)]).await?;
        assert!(ejected >= 1.0, "{base} never ejected {addr}");
    }

    // Back on the same port and data directory (the AOF is replayed), still under load.
    let _returned = TestRedis::start_in(&platform.dir().join("redis/1"), port).await?;
    for base in &instances {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metric(base, "bookstore_cache_node_up", &[("node", &addr)]).await? != 1.0 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{base} did not readmit {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let flushed = metric(base, "bookstore_cache_flushes_total", &[("node", &addr)]).await?;
        assert!(
            flushed >= 1.0,
            "{base} readmitted {addr} without flushing it"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    assert_all_ok(&readers.await?);

    for base in &instances {
        for (id, version) in &latest {
            let seen = get_json(&client, &format!("{base}/api/books/{id}")).await?;
            assert_eq!(
                seen["version"].as_i64(),
                Some(*version),
                "{base} served a stale book from the returned node"
            );
        }
    }
    Ok(())
}
