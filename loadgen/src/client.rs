//! The few public API calls every client of a running platform starts with — sign up, log in,
//! read the catalog — shared by the load generator and the end-to-end tests.

use serde_json::{Value, json};

/// `POST /api/auth/token`; the access token.
pub async fn log_in(
    http: &reqwest::Client,
    gateway: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{gateway}/api/auth/token"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the login answer has no access_token"))
}

/// `POST /api/customers`, then [`log_in`]; returns `(customer id, access token)`.
pub async fn sign_up(
    http: &reqwest::Client,
    gateway: &str,
    email: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<(String, String)> {
    let created: Value = http
        .post(format!("{gateway}/api/customers"))
        .json(&json!({"email": email, "name": name, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("sign-up answered without an id: {created}"))?
        .to_owned();
    Ok((id, log_in(http, gateway, email, password).await?))
}

/// Every book in the catalog, walking `GET /api/books` page by page.
pub async fn all_books(http: &reqwest::Client, gateway: &str) -> anyhow::Result<Vec<Value>> {
    let mut books = Vec::new();
    let mut url = format!("{gateway}/api/books?limit=100");
    loop {
        let page: Value = http
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
