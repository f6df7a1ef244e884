//! End-to-end tests: the real `bookstore up` (real PostgreSQL, registry, two books and two orders
//! instances, gateway) driven through the gateway, as a user would.

mod cli;
mod gateway;
mod lifecycle;

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
