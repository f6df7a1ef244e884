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

/// `POST /api/auth/token`; the access token.
pub async fn log_in(
    client: &reqwest::Client,
    gateway: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let answer: Value = client
        .post(format!("{gateway}/api/auth/token"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no access_token in the login answer"))
}

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
    let customer: Value = client
        .post(format!("{gateway}/api/customers"))
        .json(&serde_json::json!({"email": email, "name": "E2E Customer", "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = customer["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("customer without id"))?
        .to_owned();
    Ok((id, log_in(client, gateway, email, password).await?))
}

/// Every book in the catalog, walking the pages.
pub async fn all_books(client: &reqwest::Client, gateway: &str) -> anyhow::Result<Vec<Value>> {
    let mut books = Vec::new();
    let mut url = format!("{gateway}/api/books?limit=100");
    loop {
        let page: Value = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        books.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("{gateway}/api/books?limit=100&cursor={cursor}"),
            None => return Ok(books),
        }
    }
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
