//! The cache ring against real Redis nodes (`testkit::TestRedis`), and the catalog's cache-aside
//! with two instances on one database and one ring: what a killed node, a returning node and a
//! write do to what readers see.

use std::time::Duration;

use books::{Application, Config};
use platform::cache::{Cache, CacheConfig, Lookup};
use serde_json::{Value, json};
use testkit::TestRedis;
use tokio_util::sync::CancellationToken;

use crate::helpers::{admin_bearer, auth_config, book, etag_of, id_of, spawn_app_with};

async fn nodes(n: usize) -> Vec<TestRedis> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestRedis::start().await.expect("start redis"));
    }
    nodes
}

/// A ring over `nodes`. The operation timeout is generous: these tests are about where keys live
/// and what a *killed* node does (refused connections fail at once), and on a loaded machine the
/// default 100 ms made a live node's answer time out now and then (`Unavailable`, seen in CI).
fn ring_config(nodes: &[TestRedis]) -> CacheConfig {
    CacheConfig {
        nodes: nodes.iter().map(TestRedis::addr).collect(),
        health_interval_ms: 50,
        op_timeout_ms: 2_000,
        ..CacheConfig::default()
    }
}

async fn wait_for_members(cache: &Cache, count: usize) {
    for _ in 0..200 {
        if cache.members().len() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the ring did not reach {count} members: {:?}",
        cache.members()
    );
}

const KEYS: usize = 3000;

fn key(i: usize) -> String {
    format!("books:v1:book:test-{i}")
}

#[tokio::test]
async fn adding_a_node_to_a_live_ring_moves_about_a_quarter_of_the_keys_to_it() {
    let nodes = nodes(4).await;
    let stop = CancellationToken::new();
    let three = Cache::start(ring_config(&nodes[..3]), stop.clone()).await;
    wait_for_members(&three, 3).await;
    for i in 0..KEYS {
        three.fill(&key(i), b"v", Duration::from_secs(60)).await;
    }
    // The same keys through a ring of four: a key still found is one that did not move.
    let four = Cache::start(ring_config(&nodes), stop.clone()).await;
    wait_for_members(&four, 4).await;
    let mut moved = 0;
    for i in 0..KEYS {
        match four.get(&key(i)).await {
            Lookup::Hit(_) => {}
            Lookup::Miss => {
                moved += 1;
                assert_eq!(
                    four.owner(&key(i)),
                    Some(nodes[3].addr()),
                    "moved between old nodes"
                );
            }
            other => panic!("key {i}: {other:?}"),
        }
    }
    let share = moved as f64 / KEYS as f64;
    assert!((0.18..0.32).contains(&share), "moved {share}, ideal 0.25");
    stop.cancel();
}

#[tokio::test]
async fn a_killed_node_is_ejected_its_keys_remap_and_it_is_flushed_before_it_serves_again() {
    let mut nodes = nodes(3).await;
    let stop = CancellationToken::new();
    let cache = Cache::start(ring_config(&nodes), stop.clone()).await;
    wait_for_members(&cache, 3).await;
    let victim = nodes[1].addr();
    let owned: Vec<String> = (0..300)
        .map(key)
        .filter(|k| cache.owner(k).as_deref() == Some(&victim))
        .collect();
    let others: Vec<String> = (0..300)
        .map(key)
        .filter(|k| cache.owner(k).as_deref() != Some(&victim))
        .collect();
    assert!(!owned.is_empty() && !others.is_empty());
    for k in owned.iter().chain(&others) {
        cache.fill(k, b"old", Duration::from_secs(60)).await;
    }

    nodes[1].kill().await.expect("kill");
    // The first read after the kill fails (the caller reads the database) and ejects the node —
    // unless the health loop noticed first, and the key already maps elsewhere.
    let first = cache.get(&owned[0]).await;
    assert!(
        matches!(first, Lookup::Unavailable | Lookup::Miss),
        "{first:?}"
    );
    assert!(!cache.members().contains(&victim), "{:?}", cache.members());
    // Its keys now live elsewhere (empty there); nobody else's keys moved.
    for k in &owned {
        assert_ne!(cache.owner(k).as_deref(), Some(victim.as_str()));
        assert_eq!(cache.get(k).await, Lookup::Miss);
    }
    for k in &others {
        assert_eq!(cache.get(k).await, Lookup::Hit(b"old".to_vec()));
    }

    // Back on the same port with its AOF (which still holds "old"): flushed before it rejoins.
    nodes[1].restart().await.expect("restart");
    wait_for_members(&cache, 3).await;
    for k in &owned {
        assert_eq!(cache.owner(k).as_deref(), Some(victim.as_str()));
        assert_eq!(
            cache.get(k).await,
            Lookup::Miss,
            "a returning node served an entry from before it failed"
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn an_invalidation_blocks_the_fill_of_a_reader_that_read_before_the_write() {
    let nodes = nodes(3).await;
    let stop = CancellationToken::new();
    let cache = Cache::start(ring_config(&nodes), stop.clone()).await;
    wait_for_members(&cache, 3).await;
    // A reader misses and reads the old row; the writer commits and invalidates; the reader's
    // fill arrives last. It must not land.
    assert_eq!(cache.get("k").await, Lookup::Miss);
    cache.invalidate("k", Duration::from_secs(5)).await;
    cache.fill("k", b"old", Duration::from_secs(60)).await;
    assert_eq!(cache.get("k").await, Lookup::Invalidated);
    // On every node, so a process that maps the key elsewhere is blocked too.
    for node in &nodes {
        let client = redis::Client::open(format!("redis://{}/0", node.addr())).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert!(value.is_some(), "no tombstone on {}", node.addr());
    }
    stop.cancel();
}

/// A second books instance on the same database and ring.
struct Instance {
    address: String,
    stop: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn instance(db_url: &str, nodes: &[TestRedis]) -> Instance {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.http.shutdown_grace_seconds = 1;
    config.db.url = db_url.to_owned();
    config.auth = auth_config();
    config.cache.ring = ring_config(nodes);
    let app = Application::build(config).await.expect("build");
    let address = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    Instance { address, stop }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn after_an_update_returns_neither_instance_serves_the_old_book_or_page() {
    let nodes = nodes(3).await;
    let ring = ring_config(&nodes);
    let app = spawn_app_with(|c| c.cache.ring = ring.clone()).await;
    let other = instance(&app.db_url, &nodes).await;
    let client = reqwest::Client::new();
    let id = id_of(&app.create_book(&book(1)).await);
    let bases = [app.address.clone(), other.address.clone()];

    for round in 1..=10_i64 {
        // Both instances have the current version cached (book and first page).
        for base in &bases {
            let (status, body) = get(&client, &format!("{base}/api/books/{id}")).await;
            assert_eq!((status, body["version"].as_i64()), (200, Some(round)));
            get(&client, &format!("{base}/api/books?limit=5")).await;
        }
        let mut changes = book(1);
        changes["stock"] = json!(round);
        let response = client
            .put(format!("{}/api/books/{id}", bases[(round % 2) as usize]))
            .header("authorization", admin_bearer())
            .header("if-match", round.to_string())
            .json(&changes)
            .send()
            .await
            .expect("PUT");
        assert_eq!(response.status(), 200);
        assert_eq!(etag_of(&response), format!("\"{}\"", round + 1));
        for base in &bases {
            let (_, body) = get(&client, &format!("{base}/api/books/{id}")).await;
            assert_eq!(
                body["version"].as_i64(),
                Some(round + 1),
                "{base} served a stale book"
            );
            let (_, page) = get(&client, &format!("{base}/api/books?limit=5")).await;
            assert_eq!(
                page["items"][0]["stock"],
                json!(round),
                "{base} served a stale page"
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_book_is_gone_from_both_instances_and_a_404_is_cached_briefly() {
    let nodes = nodes(3).await;
    let ring = ring_config(&nodes);
    let app = spawn_app_with(|c| c.cache.ring = ring.clone()).await;
    let other = instance(&app.db_url, &nodes).await;
    let client = reqwest::Client::new();
    let id = id_of(&app.create_book(&book(2)).await);
    for base in [&app.address, &other.address] {
        assert_eq!(get(&client, &format!("{base}/api/books/{id}")).await.0, 200);
    }
    assert_eq!(app.delete_book(&id, None).await.status(), 204);
    for base in [&app.address, &other.address] {
        assert_eq!(get(&client, &format!("{base}/api/books/{id}")).await.0, 404);
    }
    // An unknown id: the first read fills a negative entry (after the tombstone-free miss).
    let unknown = uuid::Uuid::now_v7();
    let (status, problem) = get(&client, &format!("{}/api/books/{unknown}", app.address)).await;
    assert_eq!(status, 404, "{problem}");
    let probe = Cache::start(ring.clone(), CancellationToken::new()).await;
    wait_for_members(&probe, 3).await;
    assert_eq!(
        probe.get(&format!("books:v1:book:{unknown}")).await,
        Lookup::Hit(b"-".to_vec())
    );
}

#[tokio::test]
async fn with_every_cache_node_down_reads_and_writes_still_succeed() {
    let mut nodes = nodes(2).await;
    let ring = ring_config(&nodes);
    let app = spawn_app_with(|c| c.cache.ring = ring.clone()).await;
    let id = id_of(&app.create_book(&book(3)).await);
    for node in &mut nodes {
        node.kill().await.expect("kill");
    }
    for _ in 0..5 {
        assert_eq!(app.get_book(&id).await.status(), 200);
        assert_eq!(app.list_books(&[]).await.status(), 200);
    }
    let response = app.put_book(&id, Some("1"), &book(3)).await;
    assert_eq!(response.status(), 200);
    let (status, body) = get(&app.client, &app.url(&format!("/api/books/{id}"))).await;
    assert_eq!((status, body["version"].as_i64()), (200, Some(2)));
}
