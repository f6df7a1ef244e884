//! `spawn_app()`: the real application on a random port with its own throw-away PostgreSQL, and a
//! `TestApp` with request helpers. Set `TEST_LOG=1` to see the service's logs.

use chrono::{DateTime, Utc};
use orders::{Application, Config};
use platform::auth::{AuthConfig, Role, TokenIssuer};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::TestPostgres;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The signing key, and the admin account, of every test app.
pub const JWT_SECRET: &str = "orders-tests-jwt-secret-0123456789abcdef";
pub const ADMIN_EMAIL: &str = "admin@bookstore.local";
pub const ADMIN_PASSWORD: &str = "orders-tests-admin-password";
/// The password of customers made by [`TestApp::create_customer`].
pub const CUSTOMER_PASSWORD: &str = "correct horse";

/// The auth settings of a test app.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        jwt_secret: JWT_SECRET.into(),
        internal_token: "orders-tests-internal-token".into(),
        admin_password: ADMIN_PASSWORD.into(),
        ..AuthConfig::default()
    }
}

/// `Authorization: Bearer …` for `subject` with `role`, signed with the test key.
pub fn bearer(subject: &str, role: Role) -> String {
    let token = TokenIssuer::new(&auth_config())
        .expect("valid auth config")
        .issue(subject, role)
        .expect("signed")
        .access_token;
    format!("Bearer {token}")
}

/// `Authorization` value for the customer whose JSON is `customer`.
pub fn bearer_of(customer: &Value) -> String {
    bearer(&id_of(customer), Role::Customer)
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Sends the admin's token on every request (see [`TestApp::anonymous`] for a client without).
    pub client: reqwest::Client,
    /// A client that sends no token.
    pub anonymous: reqwest::Client,
    /// The service role's pool, for direct SQL (inserting orders, inspecting rows).
    pub db: PgPool,
    pub db_url: String,
    /// Kept alive for the test; `None` once [`TestApp::stop_database`] ran.
    pub pg: Option<TestPostgres>,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The service on a free port over `db_url` (a cluster's multi-host URL, say), with `adjust`ed
/// settings; returns its base URL and a guard that stops it when dropped.
pub async fn serve_on(
    db_url: &str,
    adjust: impl FnOnce(&mut Config),
) -> anyhow::Result<(String, platform::db::Pools, tokio_util::sync::DropGuard)> {
    if std::env::var_os("TEST_LOG").is_some() {
        platform::telemetry::init();
    }
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.db.url = db_url.to_owned();
    config.auth = auth_config();
    adjust(&mut config);
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    let pools = app.pools();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone().drop_guard();
    tokio::spawn(app.run_until_stopped(shutdown));
    Ok((base, pools, stop))
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], letting the test adjust the configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        platform::telemetry::init();
    }
    let pg = TestPostgres::start().await.expect("PostgreSQL starts");
    let db_url = pg
        .service_database("orders")
        .await
        .expect("orders database");
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.db.url = db_url.clone();
    config.db.acquire_timeout_ms = 1000;
    config.db.startup_timeout_seconds = 10;
    config.auth = auth_config();
    adjust(&mut config);
    let app = Application::build(config)
        .await
        .expect("application builds");
    let address = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let db = PgPool::connect(&db_url).await.expect("test pool");
    let mut admin = reqwest::header::HeaderMap::new();
    admin.insert(
        reqwest::header::AUTHORIZATION,
        HeaderValue::from_str(&bearer("admin", Role::Admin)).expect("a header value"),
    );
    TestApp {
        address,
        client: reqwest::Client::builder()
            .default_headers(admin)
            .build()
            .expect("client"),
        anonymous: reqwest::Client::new(),
        db,
        db_url,
        pg: Some(pg),
        shutdown,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `GET path` with `authorization` as the `Authorization` header (none when `None`).
    pub async fn get_as(&self, path: &str, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.anonymous.get(self.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.expect("GET sent")
    }

    /// `POST path` with a JSON body, as `authorization` (none when `None`).
    pub async fn post_as(
        &self,
        path: &str,
        body: &Value,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.anonymous.post(self.url(path)).json(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.expect("POST sent")
    }

    /// `POST /api/auth/token`, anonymously.
    pub async fn log_in(&self, email: &str, password: &str) -> reqwest::Response {
        let body = json!({"email": email, "password": password});
        self.post_as("/api/auth/token", &body, None).await
    }

    /// `GET path` as the admin.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST sent")
    }

    /// A POST with exactly these bytes and content type, for malformed-input tests.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.send().await.expect("POST sent")
    }

    pub async fn sign_up(&self, email: &str, name: &str, password: &str) -> reqwest::Response {
        let body = json!({"email": email, "name": name, "password": password});
        self.post_json("/api/customers", &body).await
    }

    /// Signs a fresh customer up through the API and returns its JSON.
    pub async fn create_customer(&self) -> Value {
        let email = format!("reader-{}@example.com", Uuid::new_v4().simple());
        let response = self.sign_up(&email, "A Reader", CUSTOMER_PASSWORD).await;
        assert_eq!(response.status(), 201, "sign-up succeeds");
        response.json().await.expect("customer JSON")
    }

    /// `POST /api/customers/{id}/credit` with `body` and, when given, an `Idempotency-Key`.
    pub async fn top_up(
        &self,
        customer: &str,
        body: &Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(&format!("/api/customers/{customer}/credit")))
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("top-up sent")
    }

    /// A top-up with a raw header value, for keys `&str` cannot express.
    pub async fn top_up_with_key_bytes(&self, customer: &str, key: &[u8]) -> reqwest::Response {
        let key = HeaderValue::from_bytes(key).expect("a value hyper can send");
        self.client
            .post(self.url(&format!("/api/customers/{customer}/credit")))
            .header("Idempotency-Key", key)
            .json(&json!({"amount_cents": 100}))
            .send()
            .await
            .expect("top-up sent")
    }

    pub async fn credit_of(&self, customer: &str) -> i64 {
        let id: Uuid = customer.parse().expect("uuid");
        sqlx::query_scalar("SELECT credit_cents FROM customers WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .expect("customer row")
    }

    /// Inserts an order and its lines directly (checkout does not exist yet); returns its id.
    pub async fn insert_order(&self, order: &TestOrder) -> Uuid {
        let id = Uuid::new_v4();
        let total: i64 = order.lines.iter().map(|l| i64::from(l.1) * l.2).sum();
        let mut tx = self.db.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO orders (id, customer_id, mode, status, total_cents, reason, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()))",
        )
        .bind(id)
        .bind(order.customer_id)
        .bind(order.mode)
        .bind(order.status)
        .bind(total)
        .bind(order.reason)
        .bind(order.created_at)
        .execute(&mut *tx)
        .await
        .expect("order row");
        for (line_no, (book_id, quantity, price_cents)) in (1..).zip(&order.lines) {
            sqlx::query(
                "INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(line_no)
            .bind(book_id)
            .bind(quantity)
            .bind(price_cents)
            .execute(&mut *tx)
            .await
            .expect("order line row");
        }
        tx.commit().await.expect("commit");
        id
    }

    /// Stops PostgreSQL under the running service.
    pub fn stop_database(&mut self) {
        drop(self.pg.take());
    }
}

/// An order to insert with [`TestApp::insert_order`]; lines are `(book_id, quantity, unit price)`.
pub struct TestOrder {
    pub customer_id: Uuid,
    pub mode: &'static str,
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub lines: Vec<(Uuid, i32, i64)>,
    pub created_at: Option<DateTime<Utc>>,
}

impl TestOrder {
    pub fn committed(customer: &Value, lines: Vec<(Uuid, i32, i64)>) -> TestOrder {
        TestOrder {
            customer_id: customer["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("id"),
            mode: "2pc",
            status: "committed",
            reason: None,
            lines,
            created_at: None,
        }
    }
}

/// Asserts `response` is a problem+json with `status` and a non-empty `detail`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body: Value = response.json().await.expect("problem JSON body");
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "body: {body}"
    );
    assert_eq!(body["status"], status, "body: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "problem without detail: {body}");
    body
}

/// The `field`s named in a problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
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

pub fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}
