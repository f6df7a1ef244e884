//! Ratings written behind, on the real platform: accepted through the gateway while the books
//! database is out of reach, then persisted exactly once — after a books instance holding
//! unacknowledged entries was SIGKILLed, and after the Redis node holding the stream was SIGKILLed.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{TestPlatform, TestRedis};

use crate::{all_books, bookstore, client, metric, new_customer, superuser_url};

const STREAM: &str = "books:ratings";

/// A platform whose persisters claim a silent consumer's entries after 1.5 s.
async fn start() -> anyhow::Result<TestPlatform> {
    TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED", "false"),
            ("BOOKSTORE_BOOKS__RATINGS__CLAIM_IDLE_MS", "1500"),
            ("BOOKSTORE_BOOKS__RATINGS__RETRY_BACKOFF_MS", "200"),
            ("BOOKSTORE_BOOKS__DB__ACQUIRE_TIMEOUT_MS", "500"),
        ],
    )
    .await
}

/// The books service loses its database: its role may not log in and its sessions are cut.
async fn lock_out_books(db: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ALTER ROLE books NOLOGIN").execute(db).await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'books'")
        .execute(db)
        .await?;
    Ok(())
}

async fn let_books_in(db: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ALTER ROLE books LOGIN").execute(db).await?;
    Ok(())
}

/// The stream node (the first Redis node), database 1.
async fn stream_conn(platform: &TestPlatform) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let node = platform
        .processes("redis")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no redis node"))?;
    let addr = node.url.trim_start_matches("redis://");
    Ok(redis::Client::open(format!("redis://{addr}/1"))?
        .get_multiplexed_async_connection()
        .await?)
}

/// Unacknowledged entries by consumer.
async fn pending_by_consumer(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<(String, i64)>> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("persisters")
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    if let redis::Value::Array(items) = summary
        && let Some(redis::Value::Array(consumers)) = items.get(3)
    {
        for consumer in consumers {
            if let redis::Value::Array(pair) = consumer
                && let [name, count] = pair.as_slice()
            {
                let name: String = redis::from_redis_value(name.clone())?;
                let count: String = redis::from_redis_value(count.clone())?;
                out.push((name, count.parse()?));
            }
        }
    }
    Ok(out)
}

/// Posts one rating per book for each customer (`shift` moves the stars, so a second round
/// re-rates every pair with other stars); every rating id accepted.
async fn rate_all(
    client: &reqwest::Client,
    gateway: &str,
    tokens: &[String],
    books: &[String],
    shift: usize,
) -> anyhow::Result<Vec<String>> {
    let mut accepted = Vec::new();
    for token in tokens {
        for (i, book) in books.iter().enumerate() {
            let response = client
                .post(format!("{gateway}/api/books/{book}/ratings"))
                .bearer_auth(token)
                .json(&json!({"stars": 1 + (i + shift) % 5, "text": "e2e"}))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().as_u16() == 202,
                "rating refused: {} {}",
                response.status(),
                response.text().await?
            );
            let body: Value = response.json().await?;
            accepted.push(body["rating_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(accepted)
}

/// Waits until the ratings table holds exactly `accepted` (by rating id, each once); the totals
/// equal the rows at every look, while the backlog drains and after.
async fn wait_for_ratings(
    db: &PgPool,
    accepted: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let mut want = accepted.to_vec();
    want.sort();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut got: Vec<String> =
            sqlx::query_scalar("SELECT rating_id::text FROM ratings ORDER BY rating_id")
                .fetch_all(db)
                .await?;
        got.sort();
        let off = books::ratings::persister::totals_off(db).await?;
        anyhow::ensure!(off.is_empty(), "rating totals off the rows: {off:#?}");
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} of {} accepted ratings persisted (want each exactly once)",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Customers, and the first `n` books cached on both books instances (so their existence is known
/// without the database).
async fn setup(
    platform: &TestPlatform,
    customers: usize,
    n: usize,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let client = client();
    let gateway = platform.gateway_url();
    let mut tokens = Vec::new();
    for c in 0..customers {
        let email = format!("rater{c}-{}@example.com", std::process::id());
        tokens.push(
            new_customer(&client, gateway, &email, "s3cret-passw0rd")
                .await?
                .1,
        );
    }
    let books: Vec<String> = all_books(&client, gateway)
        .await?
        .iter()
        .take(n)
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for instance in platform.processes("books") {
        for book in &books {
            client
                .get(format!("{}/api/books/{book}", instance.url))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    ensure_cached(platform, &client, &books).await?;
    Ok((tokens, books))
}

/// Makes sure every book's entry is in the cache ring, reading a book again while it is not: a
/// cache fill is best effort (it gives up after the ring's timeout, which a loaded machine can
/// exceed), and a rating of a book known neither to the cache nor to a reachable database is
/// refused with 503 — so the tests must not assume the warm-up's fills all landed.
async fn ensure_cached(
    platform: &TestPlatform,
    client: &reqwest::Client,
    books: &[String],
) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    for node in platform.processes("redis") {
        let addr = node.url.trim_start_matches("redis://").to_owned();
        nodes.push(
            redis::Client::open(format!("redis://{addr}/0"))?
                .get_multiplexed_async_connection()
                .await?,
        );
    }
    let instance = platform
        .processes("books")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no books instance"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for book in books {
        let key = format!("books:v1:book:{book}");
        loop {
            let mut cached = false;
            for node in &mut nodes {
                cached |= redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<bool>(node)
                    .await?;
            }
            if cached {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "book {book} never reached the cache"
            );
            client
                .get(format!("{}/api/books/{book}", instance.url))
                .send()
                .await?
                .error_for_status()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// GET `url` as JSON, again after each 503 (the gateway's "try again": an instance killed or just
/// back) for up to 10 s; any other answer is returned as it is.
async fn get_retrying_503(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.get(url).send().await?;
        if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(response.json().await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_books_instance_killed_with_unacknowledged_ratings_while_postgres_was_away_loses_none()
-> anyhow::Result<()> {
    let platform = start().await?;
    let client = client();
    let gateway = platform.gateway_url().to_owned();
    let db = PgPool::connect(&superuser_url(&platform, "books")?).await?;
    let (tokens, books) = setup(&platform, 10, 4).await?;
    let mut stream = stream_conn(&platform).await?;

    lock_out_books(&db).await?;
    // Every customer rates every book, then three of them change every rating (a few, so the
    // instances are not reported unready for want of a database before the kill): the stored
    // rating of those pairs must be the second, counted once.
    let first = rate_all(&client, &gateway, &tokens, &books, 0).await?;
    let mut accepted = rate_all(&client, &gateway, &tokens[..3], &books, 2).await?;
    accepted.extend_from_slice(&first[3 * books.len()..]);
    // Both persisters read entries and cannot commit them: they hold them unacknowledged (and
    // read nothing new while they do; the rest waits undelivered in the stream).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let held = loop {
        let held = pending_by_consumer(&mut stream).await?;
        if held.len() == 2 {
            break held;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "entries not delivered to both persisters: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Kill one instance outright; its entries are nobody's now.
    let victim = platform.processes("books")[0].clone();
    let survivor = platform.processes("books")[1].clone();
    kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL)?;
    let_books_in(&db).await?;

    wait_for_ratings(&db, &accepted, Duration::from_secs(15)).await?;
    // The dead one's entries may be first ratings its customers changed since: the table can be
    // complete before they are claimed. Claimed and persisted late, they must change nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = pending_by_consumer(&mut stream).await?;
        if left.iter().all(|(_, n)| *n == 0) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "unacknowledged entries left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let claimed = metric(&survivor.url, "bookstore_ratings_claimed_total", &[]).await?;
    let victim_held = held.iter().map(|(_, n)| *n).min().unwrap_or_default();
    assert!(
        claimed >= victim_held as f64,
        "the survivor claimed {claimed} entries; the dead one held at least {victim_held}"
    );
    wait_for_ratings(&db, &accepted, Duration::ZERO).await?;
    // The totals are the rows' (replays and claims counted nothing twice).
    let off = books::ratings::persister::totals_off(&db).await?;
    assert!(off.is_empty(), "rating totals off the rows: {off:#?}");
    // And clients see them: on the book and on the leaderboard (the gateway may still answer 503
    // for a moment while it finds the survivor healthy again: a client retries those).
    let book = get_retrying_503(&client, &format!("{gateway}/api/books/{}", books[0])).await?;
    assert_eq!(book["rating"]["count"], json!(tokens.len()), "{book}");
    let top = get_retrying_503(&client, &format!("{gateway}/api/books/top?limit=100")).await?;
    assert!(
        top["items"]
            .as_array()
            .is_some_and(|i| i.len() >= books.len()),
        "{top}"
    );
    Ok(())
}

#[tokio::test]
async fn ratings_acknowledged_before_the_stream_node_is_sigkilled_survive_its_restart()
-> anyhow::Result<()> {
    let platform = start().await?;
    let client = client();
    let gateway = platform.gateway_url().to_owned();
    let db = PgPool::connect(&superuser_url(&platform, "books")?).await?;
    let (tokens, books) = setup(&platform, 8, 3).await?;
    let node = platform
        .processes("redis")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no redis node"))?;
    let port: u16 = node.url.rsplit(':').next().unwrap_or_default().parse()?;

    // Nothing can be persisted: every accepted rating exists only in the stream (appendfsync
    // everysec — written to the AOF before the 202, not necessarily fsynced).
    lock_out_books(&db).await?;
    let accepted = rate_all(&client, &gateway, &tokens, &books, 0).await?;
    // The new server takes the old one's port and AOF: only once the old process is gone.
    stack::chaos::launch::kill_and_wait(node.pid).await?;
    let _back = TestRedis::start_in(&platform.dir().join("redis/1"), port).await?;
    let_books_in(&db).await?;
    wait_for_ratings(&db, &accepted, Duration::from_secs(15)).await?;
    let off = books::ratings::persister::totals_off(&db).await?;
    assert!(off.is_empty(), "rating totals off the rows: {off:#?}");
    Ok(())
}
