//! `spawn_app()` and the request helpers every test uses.

use books::{Application, Config};
use platform::auth::{AuthConfig, Role, TokenIssuer};
use reqwest::Response;
use serde_json::{Value, json};
use testkit::TestPostgres;
use tokio_util::sync::CancellationToken;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// The signing key every test app uses.
pub const JWT_SECRET: &str = "books-tests-jwt-secret-0123456789abcdef";

/// The auth settings of a test app.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: JWT_SECRET.into(),
        internal_token: "books-tests-internal-token".into(),
        ..AuthConfig::default()
    }
}

/// A fresh access token signed with the test key.
pub fn token_for(subject: &str, role: Role) -> String {
    TokenIssuer::new(&auth_config())
        .expect("valid auth config")
        .issue(subject, role)
        .expect("signed")
        .access_token
}

/// `Authorization` value of a token for the admin.
pub fn admin_bearer() -> String {
    format!("Bearer {}", token_for("admin", Role::Admin))
}

/// `Authorization` value of a token for some customer.
pub fn customer_bearer() -> String {
    format!(
        "Bearer {}",
        token_for("0190c2a4-0000-7000-8000-0000000000c1", Role::Customer)
    )
}

/// A running books service on its own PostgreSQL. Dropping it stops the server and the database.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The `books` role's URL, for tests that look at rows the API hides.
    pub db_url: String,
    pub pg: TestPostgres,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], after `customise` has adjusted the configuration.
pub async fn spawn_app_with(customise: impl FnOnce(&mut Config)) -> TestApp {
    let pg = TestPostgres::start().await.expect("start PostgreSQL");
    let db_url = pg
        .service_database("books")
        .await
        .expect("create the books database");
    spawn_app_on(pg, db_url, customise).await
}

/// Like [`spawn_app_with`], on a database the test prepared (the application applies whatever
/// migrations it lacks).
pub async fn spawn_app_on(
    pg: TestPostgres,
    db_url: String,
    customise: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.http.shutdown_grace_seconds = 1;
    config.db.url = db_url.clone();
    config.db.acquire_timeout_ms = 1000;
    config.auth = auth_config();
    customise(&mut config);
    let app = Application::build(config)
        .await
        .expect("build the application");
    let address = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        db_url,
        pg,
        shutdown,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_book(&self, body: &Value) -> Response {
        self.post_raw(body.to_string(), "application/json").await
    }

    /// A POST as the admin with any body and content type, for malformed input.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, content_type: &str) -> Response {
        self.client
            .post(self.url("/api/books"))
            .header("authorization", admin_bearer())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /api/books")
    }

    /// Creates a book that must be accepted; returns the `Book` JSON.
    pub async fn create_book(&self, body: &Value) -> Value {
        let response = self.post_book(body).await;
        assert_eq!(response.status(), 201, "creating {body}");
        response.json().await.expect("a Book")
    }

    pub async fn get_book(&self, id: &str) -> Response {
        self.client
            .get(self.url(&format!("/api/books/{id}")))
            .send()
            .await
            .expect("GET /api/books/{id}")
    }

    /// `GET /api/books` with the parameters form-encoded (so any text can be sent).
    pub async fn list_books(&self, params: &[(&str, &str)]) -> Response {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        self.client
            .get(self.url(&format!("/api/books?{query}")))
            .send()
            .await
            .expect("GET /api/books")
    }

    /// Walks every page of a list; returns the items in order and how many pages it took.
    pub async fn list_all(&self, params: &[(&str, &str)]) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for pages in 1..1000 {
            let mut query = params.to_vec();
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let page = self.list_page(&query).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return (items, pages),
            }
        }
        panic!("pagination never ended");
    }

    /// One page that must be a 200.
    pub async fn list_page(&self, params: &[(&str, &str)]) -> Value {
        let response = self.list_books(params).await;
        assert_eq!(response.status(), 200, "listing with {params:?}");
        response.json().await.expect("a page")
    }

    pub async fn put_book(&self, id: &str, if_match: Option<&str>, body: &Value) -> Response {
        let mut request = self
            .client
            .put(self.url(&format!("/api/books/{id}")))
            .header("authorization", admin_bearer())
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        request.send().await.expect("PUT /api/books/{id}")
    }

    pub async fn delete_book(&self, id: &str, if_match: Option<&str>) -> Response {
        let mut request = self
            .client
            .delete(self.url(&format!("/api/books/{id}")))
            .header("authorization", admin_bearer());
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        request.send().await.expect("DELETE /api/books/{id}")
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// A valid ISBN-13 made from `n`: 978, nine digits of `n`, and the check digit.
pub fn isbn13(n: u64) -> String {
    let body = format!("978{:09}", n % 1_000_000_000);
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// A valid body; `n` makes the ISBN and the title unique (and titles sort by `n`).
pub fn book(n: u64) -> Value {
    json!({
        "isbn": isbn13(n),
        "title": format!("Book {n:03}"),
        "author": "Ann Author",
        "genre": "Fiction",
        "price_cents": 1000 + n,
        "stock": 5
    })
}

/// A valid body with the given title, author and genre.
pub fn titled(n: u64, title: &str, author: &str, genre: &str) -> Value {
    let mut body = book(n);
    body["title"] = json!(title);
    body["author"] = json!(author);
    body["genre"] = json!(genre);
    body
}

/// Asserts `response` is a problem+json with `status` and a non-empty detail; returns the body.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    assert_ne!(actual, 500, "a 500 is always a bug: {text}");
    assert_eq!(actual, status, "{text}");
    assert_eq!(content_type, PROBLEM_JSON, "{text}");
    let body: Value = serde_json::from_str(&text).expect("problem body is JSON");
    assert_eq!(body["status"], status, "{text}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty()),
        "problem without detail: {text}"
    );
    body
}

/// The `field` names of a 422's `errors`.
pub fn fields_of(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The `ETag` header of a response.
pub fn etag_of(response: &Response) -> String {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag")
        .to_owned()
}

/// The `id` of a `Book` JSON.
pub fn id_of(book: &Value) -> String {
    book["id"].as_str().expect("an id").to_owned()
}

/// [`books::ratings::persister::totals_off`], for tests: a failed read is a failed test.
pub async fn rating_totals_off(db: &sqlx::PgPool) -> Vec<String> {
    books::ratings::persister::totals_off(db)
        .await
        .expect("the rating totals")
}

/// Panics naming every book whose totals are not its rating rows' (see [`rating_totals_off`]).
pub async fn assert_rating_totals_match_rows(db: &sqlx::PgPool) {
    let off = rating_totals_off(db).await;
    assert!(off.is_empty(), "rating totals off: {off:#?}");
}
