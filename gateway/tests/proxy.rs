//! The proxy against real upstream HTTP servers on loopback: what it forwards, what it answers when an
//! upstream is missing, down or slow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use discovery::client::Instance;
use gateway::config::{Config, UpstreamConfig};
use gateway::upstreams::Upstreams;
use platform::server::{HttpConfig, Server, always_ready};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// An upstream that echoes what it received, tagged with its name.
async fn echo_upstream(name: &'static str) -> anyhow::Result<SocketAddr> {
    let app = Router::new().fallback(any(move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, request: Request| async move {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
        let slow = headers.get("x-test-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(ms) = slow {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (
            StatusCode::CREATED,
            [("x-upstream", name), ("connection", "keep-alive")],
            axum::Json(json!({
                "upstream": name, "method": method, "uri": uri, "peer_is_gateway": peer.ip().is_loopback(),
                "body": String::from_utf8_lossy(&body), "x_forwarded_for": header("x-forwarded-for"),
                "x_forwarded_proto": header("x-forwarded-proto"), "x_request_id": header("x-request-id"),
                "traceparent": header("traceparent"), "custom": header("x-custom"),
                "host": header("host"), "x_forwarded_host": header("x-forwarded-host"),
                "request_timeout_ms": header("x-request-timeout-ms"),
                "content_length": header("content-length"), "transfer_encoding": header("transfer-encoding"),
            })),
        )
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

fn instance(id: &str, addr: SocketAddr) -> Instance {
    Instance {
        id: id.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        tags: vec![],
        meta: Default::default(),
    }
}

/// A gateway serving the given instances of `books` (and none of `orders`); returns its base URL.
async fn gateway(
    books: Vec<Instance>,
    upstream: UpstreamConfig,
) -> anyhow::Result<(String, CancellationToken)> {
    gateway_with(books, upstream, |_| {}).await
}

/// [`gateway`], with `adjust` applied to its configuration last.
async fn gateway_with(
    books: Vec<Instance>,
    upstream: UpstreamConfig,
    adjust: impl FnOnce(&mut Config),
) -> anyhow::Result<(String, CancellationToken)> {
    let mut config = Config {
        upstream,
        http: HttpConfig {
            listen: "127.0.0.1:0".into(),
            body_limit_bytes: 1024,
            ..HttpConfig::default()
        },
        ..Config::default()
    };
    config.auth.jwt_secret = "a-test-secret-that-is-long-enough-for-hs256".into();
    config.balance.attempt_timeout_ms = 200;
    adjust(&mut config);
    let upstreams = Arc::new(Upstreams::fixed(vec![
        ("books".into(), books),
        ("orders".into(), vec![]),
    ]));
    let (router, _observed) = gateway::app(&config, upstreams)?;
    let server = Server::bind(&config.http).await?;
    let url = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    // Two threads, as the gateway serves: each with its own upstream pool.
    tokio::spawn(async move { server.serve_per_core(router, always_ready(), stop, 2).await });
    Ok((url, shutdown))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_request_reaches_the_upstream_with_method_path_query_body_and_forwarding_headers()
-> anyhow::Result<()> {
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    let response = client()
        .put(format!("{gw}/api/books/42?x=1&y=%20z"))
        .header("x-custom", "kept")
        .header("x-request-id", "rid-1")
        .body("{\"hello\":\"world\"}")
        .send()
        .await?;
    assert_eq!(response.status(), 201, "upstream status passes through");
    assert_eq!(
        response.headers()["x-upstream"],
        "a",
        "upstream headers pass through"
    );
    assert!(
        !response.headers().contains_key("connection"),
        "hop-by-hop headers are dropped"
    );
    let echo: Value = response.json().await?;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["uri"], "/api/books/42?x=1&y=%20z");
    assert_eq!(echo["body"], "{\"hello\":\"world\"}");
    assert_eq!(echo["custom"], "kept");
    assert_eq!(
        echo["x_request_id"], "rid-1",
        "the request id travels downstream"
    );
    assert_eq!(echo["x_forwarded_for"], "127.0.0.1");
    assert_eq!(echo["x_forwarded_proto"], "http");
    assert_eq!(
        echo["host"],
        upstream.to_string(),
        "Host names the instance"
    );
    assert_eq!(echo["x_forwarded_host"], gw.trim_start_matches("http://"));
    assert_eq!(echo["content_length"], "17");
    // The attempt timeout (200 ms here), well within the route's 5 s.
    assert_eq!(echo["request_timeout_ms"], "200");
    assert!(
        echo["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "a trace context is started"
    );
    Ok(())
}

#[tokio::test]
async fn sequential_requests_are_spread_over_both_instances() -> anyhow::Result<()> {
    let (a, b) = (echo_upstream("a").await?, echo_upstream("b").await?);
    let (gw, _stop) = gateway(
        vec![instance("books-a", a), instance("books-b", b)],
        UpstreamConfig::default(),
    )
    .await?;
    let mut served = std::collections::HashMap::new();
    for _ in 0..40 {
        let echo: Value = client()
            .get(format!("{gw}/api/books"))
            .send()
            .await?
            .json()
            .await?;
        *served
            .entry(echo["upstream"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    // Idle instances tie on in-flight requests; P2C breaks ties at random.
    assert!(
        served.get("a").copied().unwrap_or(0) >= 5 && served.get("b").copied().unwrap_or(0) >= 5,
        "{served:?}"
    );
    Ok(())
}

async fn expect_problem(
    response: reqwest::Response,
    status: u16,
) -> anyhow::Result<reqwest::header::HeaderMap> {
    assert_eq!(response.status().as_u16(), status);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    let body: Value = response.json().await?;
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    Ok(headers)
}

#[tokio::test]
async fn a_service_without_instances_gets_503_with_retry_after() -> anyhow::Result<()> {
    let (gw, _stop) = gateway(vec![], UpstreamConfig::default()).await?;
    let response = client().get(format!("{gw}/api/customers/1")).send().await?;
    let headers = expect_problem(response, 503).await?;
    assert_eq!(headers["retry-after"], "1");
    Ok(())
}

#[tokio::test]
async fn an_instance_that_refuses_connections_gets_503_with_retry_after() -> anyhow::Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?; // closed when dropped
    let (gw, _stop) = gateway(
        vec![instance("books-dead", dead)],
        UpstreamConfig::default(),
    )
    .await?;
    let response = client().get(format!("{gw}/api/books")).send().await?;
    let headers = expect_problem(response, 503).await?;
    assert_eq!(headers["retry-after"], "1");
    Ok(())
}

#[tokio::test]
async fn an_instance_slower_than_the_timeout_gets_504() -> anyhow::Result<()> {
    let upstream = echo_upstream("slow").await?;
    let config = UpstreamConfig {
        request_timeout_ms: 200,
        ..UpstreamConfig::default()
    };
    let (gw, _stop) = gateway(vec![instance("books-slow", upstream)], config).await?;
    let response = client()
        .get(format!("{gw}/api/books"))
        .header("x-test-delay-ms", "2000")
        .send()
        .await?;
    expect_problem(response, 504).await?;
    Ok(())
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_any_upstream_sees_it() -> anyhow::Result<()> {
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    let response = client()
        .post(format!("{gw}/api/books"))
        .body(vec![b'x'; 4096])
        .send()
        .await?;
    expect_problem(response, 413).await?;
    Ok(())
}

#[tokio::test]
async fn unrouted_and_internal_paths_are_404_problems() -> anyhow::Result<()> {
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    for path in ["/internal/prepare", "/api/unknown", "/api", "/nothing"] {
        let response = client().get(format!("{gw}{path}")).send().await?;
        expect_problem(response, 404).await?;
    }
    Ok(())
}

#[tokio::test]
async fn oversize_headers_are_refused_with_431_before_any_upstream_sees_them() -> anyhow::Result<()>
{
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    let response = client()
        .get(format!("{gw}/api/books"))
        .header("x-huge", "x".repeat(20 * 1024))
        .send()
        .await?;
    expect_problem(response, 431).await?;
    Ok(())
}

#[tokio::test]
async fn each_attempt_tells_the_upstream_the_time_it_has_left() -> anyhow::Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?; // closed when dropped
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-dead", dead), instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    for _ in 0..10 {
        // The client's own budget is shorter than the attempt timeout: it is what is left, once
        // (a refused connection first, sometimes, then the reroute).
        let echo: Value = client()
            .get(format!("{gw}/api/books"))
            .header("x-request-timeout-ms", "150")
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(echo["upstream"], "a");
        let left: u64 = echo["request_timeout_ms"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("one x-request-timeout-ms");
        // Never more than the client gave, and never "none left" for a request that is sent.
        assert!((1..=150).contains(&left), "{left}");
    }
    Ok(())
}

#[tokio::test]
async fn a_route_with_its_own_attempt_timeout_waits_longer_than_the_balancers() -> anyhow::Result<()>
{
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway_with(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
        |config| {
            config.timeouts.per_route = vec![gateway::deadline::RouteTimeout {
                prefix: "/api/books/slow".into(),
                method: None,
                timeout_ms: 3_000,
                attempt_ms: Some(2_000),
            }];
        },
    )
    .await?;
    // 500 ms is over the balancer's 200 ms attempt timeout: only the route's own one lets it pass.
    let slow = |path: &str| {
        client()
            .get(format!("{gw}{path}"))
            .header("x-test-delay-ms", "500")
            .send()
    };
    let response = slow("/api/books/slow").await?;
    assert_eq!(response.status(), 201);
    let echo: Value = response.json().await?;
    let told: u64 = echo["request_timeout_ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("x-request-timeout-ms");
    assert!((1_000..=2_000).contains(&told), "{told}");
    expect_problem(slow("/api/books/other").await?, 504).await?;
    Ok(())
}

#[tokio::test]
async fn a_chunked_request_body_is_forwarded_with_its_length() -> anyhow::Result<()> {
    let upstream = echo_upstream("a").await?;
    let (gw, _stop) = gateway(
        vec![instance("books-a", upstream)],
        UpstreamConfig::default(),
    )
    .await?;
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("{\"a\":"), Ok("1}")];
    let response = client()
        .post(format!("{gw}/api/books"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let echo: Value = response.json().await?;
    assert_eq!(echo["body"], "{\"a\":1}");
    assert_eq!(echo["content_length"], "7");
    assert_eq!(echo["transfer_encoding"], "");
    Ok(())
}

#[tokio::test]
async fn an_answer_that_stalls_half_way_is_cut_off_after_the_request_timeout() -> anyhow::Result<()>
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Sends the head and part of the body, then nothing, keeping the connection open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                .await;
            held.push(socket);
        }
    });
    let config = UpstreamConfig {
        request_timeout_ms: 300,
        ..UpstreamConfig::default()
    };
    let (gw, _stop) = gateway(vec![instance("books-stalls", addr)], config).await?;
    let started = std::time::Instant::now();
    let response = client().get(format!("{gw}/api/books")).send().await?;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body was not cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}
