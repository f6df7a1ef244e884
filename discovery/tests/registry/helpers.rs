//! Test drivers: `Api` sends requests through the router without sockets; `TestRegistry` runs the
//! real server on a free port and can restart it, fresh, on the same port.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use discovery::server::{self, Config, Registry};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use platform::server::{HttpConfig, Server};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// An answer: status, headers and the body as JSON (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("an X-Consul-Index header")
    }
}

/// The router over a fresh registry, driven with `oneshot`.
#[derive(Clone)]
pub struct Api {
    pub shutdown: CancellationToken,
    router: Router,
}

impl Api {
    pub fn new() -> Api {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(&Config::default(), shutdown.clone());
        Api {
            router: server::router(registry),
            shutdown,
        }
    }

    pub async fn send(&self, method: &str, uri: &str, body: Option<Value>) -> Answer {
        let body = body.map_or_else(Body::empty, |json| Body::from(json.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("a readable body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.send("GET", uri, None).await
    }

    pub async fn put(&self, uri: &str, body: Option<Value>) -> Answer {
        self.send("PUT", uri, body).await
    }

    /// Registers `id` of service `name` with a 10 s TTL check `service:<id>`, then reports `status`.
    pub async fn register_ttl(&self, name: &str, id: &str, status: &str) {
        let body = json!({"ID": id, "Name": name, "Address": "127.0.0.1", "Port": 8081, "Tags": ["v1"],
                          "Check": {"TTL": "10s"}});
        assert_eq!(
            self.put("/v1/agent/service/register", Some(body))
                .await
                .status,
            StatusCode::OK
        );
        let verb = match status {
            "passing" => "pass",
            "warning" => "warn",
            _ => "fail",
        };
        let reported = self
            .put(&format!("/v1/agent/check/{verb}/service:{id}"), None)
            .await;
        assert_eq!(reported.status, StatusCode::OK);
    }
}

/// The real server on 127.0.0.1, checks evaluated every 100 ms.
pub struct TestRegistry {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        TestRegistry::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(listen: &str) -> TestRegistry {
        let config = Config {
            http: HttpConfig {
                listen: listen.into(),
                shutdown_grace_seconds: 1,
                ..HttpConfig::default()
            },
            check_interval_ms: 100,
            ..Config::default()
        };
        let server = Server::bind(&config.http).await.expect("a free port");
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(server, config, shutdown.clone()));
        TestRegistry {
            addr,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the registry stops cleanly: {stopped:?}"
        );
    }

    /// Stops this registry and starts a fresh one (empty state) on the same port.
    pub async fn restart(self) -> TestRegistry {
        let addr = self.addr;
        self.stop().await;
        TestRegistry::start_on(&addr.to_string()).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.url()))
            .await
            .expect("the registry answers");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("a JSON body")
    }

    pub async fn put(&self, path: &str, body: Value) -> StatusCode {
        let response = reqwest::Client::new()
            .put(format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .expect("the registry answers");
        response.status()
    }
}

/// An address nothing listens on (yet).
pub async fn unused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    listener.local_addr().expect("an address")
}

/// Polls `condition` every 50 ms until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
