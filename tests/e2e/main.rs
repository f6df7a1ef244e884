//! End-to-end tests: the real `bookstore up` (real PostgreSQL, registry, two books and two orders
//! instances, gateway) driven through the gateway, as a user would.

mod authz;
mod backup;
mod cache;
mod chaos;
mod checkout;
mod cli;
mod cluster;
mod deploy;
mod gateway;
mod lifecycle;
mod monitoring;
mod observability;
mod otlp;
mod ratings;
mod resilience;
mod traces;
mod traffic;
mod transactions;
mod warehouse;

use std::path::Path;

use serde_json::Value;
use testkit::TestPlatform;

pub fn bookstore() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_bookstore"))
}

pub async fn start() -> anyhow::Result<TestPlatform> {
    TestPlatform::start(bookstore()).await
}

/// `bookstore up --quiet` in `dir` with the gateway on `gateway_port` and the registry on any free
/// port, for the tests that run `up` themselves to see how it fails.
pub fn up_command(dir: &Path, gateway_port: &str) -> std::process::Command {
    let mut command = std::process::Command::new(bookstore());
    command
        .args(["up", "--quiet", "--registry-port", "0", "--gateway-port"])
        .arg(gateway_port)
        .arg("--dir")
        .arg(dir);
    command
}

/// A client that never follows redirects and times out, so a hung server fails the test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Asserts a problem+json answer with the given status and a non-empty detail; returns the body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "problem without detail: {body}"
    );
    body
}

/// The secrets `bookstore up` generated for a platform (`<dir>/secrets.json`).
pub fn secrets(platform: &TestPlatform) -> anyhow::Result<Value> {
    let bytes = std::fs::read(platform.dir().join("secrets.json"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

pub use loadgen::client::{all_books, log_in};

/// An access token for the platform's admin (password from `secrets.json`).
pub async fn admin_token(
    client: &reqwest::Client,
    platform: &TestPlatform,
) -> anyhow::Result<String> {
    let secrets = secrets(platform)?;
    let password = secrets["admin_password"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("secrets.json has no admin_password"))?;
    log_in(
        client,
        platform.gateway_url(),
        "admin@bookstore.local",
        password,
    )
    .await
}

/// Signs a new customer up and logs them in; returns `(customer id, access token)`.
pub async fn new_customer(
    client: &reqwest::Client,
    gateway: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<(String, String)> {
    loadgen::client::sign_up(client, gateway, email, "E2E Customer", password).await
}

/// Sum of every sample of `name` in the `/metrics` of the process at `base`, over the series whose
/// labels contain all of `labels` (`key="value"` pairs).
pub async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A superuser URL for one of the platform's databases, for tests that check invariants in SQL.
pub fn superuser_url(platform: &TestPlatform, database: &str) -> anyhow::Result<String> {
    let secrets = stack::state::Secrets::load_or_create(platform.dir())?;
    Ok(format!(
        "postgres://postgres:{}@127.0.0.1:{}/{database}",
        secrets.postgres_superuser,
        platform.state().postgres_port
    ))
}
