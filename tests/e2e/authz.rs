//! The authorization matrix through the gateway: every public route × {anonymous, customer A,
//! customer B, admin} answers exactly what API.md's "who" column says; forged and expired tokens are
//! 401; identity headers sent by clients count for nothing; `/internal/…` is never routed; and no
//! token, password or key ever reaches a log line.

use std::time::{SystemTime, UNIX_EPOCH};

use platform::auth::{AuthConfig, Role, TokenIssuer};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::TestPlatform;

use crate::{admin_token, client, expect_problem, new_customer, secrets, start};

const PASSWORD: &str = "matrix-password-1";

/// Who sends a request: the index into each row's expected statuses.
#[derive(Debug, Clone, Copy)]
enum Who {
    Anonymous,
    CustomerA,
    CustomerB,
    Admin,
}

const EVERYONE: [Who; 4] = [Who::Anonymous, Who::CustomerA, Who::CustomerB, Who::Admin];

struct Tokens {
    a: String,
    b: String,
    admin: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anonymous => None,
            Who::CustomerA => Some(&self.a),
            Who::CustomerB => Some(&self.b),
            Who::Admin => Some(&self.admin),
        }
    }
}

/// One row: a route and the status each of [`EVERYONE`] gets. `{n}` in the body is replaced by a
/// fresh number per request (unique emails and ISBNs).
struct Row {
    method: Method,
    path: String,
    body: Option<String>,
    if_match: Option<String>,
    expected: [u16; 4],
}

fn row(method: Method, path: impl Into<String>, expected: [u16; 4]) -> Row {
    Row {
        method,
        path: path.into(),
        body: None,
        if_match: None,
        expected,
    }
}

impl Row {
    fn body(mut self, body: impl Into<String>) -> Row {
        self.body = Some(body.into());
        self
    }

    fn if_match(mut self, etag: &str) -> Row {
        self.if_match = Some(etag.to_owned());
        self
    }
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A valid ISBN-13 (979 + 9 digits + check digit) that no demo book has.
fn isbn(n: u128) -> String {
    let body = format!("9791{:08}", n % 100_000_000);
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

async fn send(
    client: &reqwest::Client,
    gateway: &str,
    row: &Row,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client.request(row.method.clone(), format!("{gateway}{}", row.path));
    if let Some(body) = &row.body {
        let n = unique();
        let text = body
            .replace("{n}", &n.to_string())
            .replace("{isbn}", &isbn(n));
        request = request
            .header("content-type", "application/json")
            .body(text);
    }
    if let Some(etag) = &row.if_match {
        request = request.header("if-match", etag);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?)
}

/// Inserts a committed one-line order for `customer` straight into the orders database (checkout
/// does not exist yet); returns its id.
async fn insert_order(platform: &TestPlatform, customer: &str) -> anyhow::Result<String> {
    let secrets = secrets(platform)?;
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/orders",
        secrets["postgres_superuser"].as_str().unwrap_or_default(),
        platform.state().postgres_port
    );
    let db = sqlx::PgPool::connect(&url).await?;
    let mut tx = db.begin().await?;
    let id: String = sqlx::query_scalar(
        "INSERT INTO orders (id, customer_id, mode, status, total_cents)
         VALUES (gen_random_uuid(), $1::uuid, '2pc', 'committed', 500) RETURNING id::text",
    )
    .bind(customer)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
         VALUES ($1::uuid, 1, gen_random_uuid(), 1, 500)",
    )
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    db.close().await;
    Ok(id)
}

#[tokio::test]
async fn every_public_route_answers_each_caller_exactly_as_the_contract_says() -> anyhow::Result<()>
{
    let platform = start().await?;
    let gw = platform.gateway_url();
    let client = client();
    let n = unique();
    let a_email = format!("matrix-a-{n}@example.com");
    let (a, a_token) = new_customer(&client, gw, &a_email, PASSWORD).await?;
    let (_, b_token) =
        new_customer(&client, gw, &format!("matrix-b-{n}@example.com"), PASSWORD).await?;
    let tokens = Tokens {
        a: a_token,
        b: b_token,
        admin: admin_token(&client, &platform).await?,
    };
    let order = insert_order(&platform, &a).await?;
    let mut books = Vec::new();
    for k in 0..2 {
        let created = client
            .post(format!("{gw}/api/books"))
            .bearer_auth(&tokens.admin)
            .json(
                &json!({"isbn": isbn(n + k), "title": format!("Matrix {k}"), "author": "M. Atrix",
                          "genre": "technical", "price_cents": 100, "stock": 1}),
            )
            .send()
            .await?;
        assert_eq!(created.status(), 201);
        let etag = created.headers()["etag"].to_str()?.to_owned();
        let book: Value = created.json().await?;
        books.push((book["id"].as_str().unwrap_or_default().to_owned(), etag));
    }
    let (book, etag) = books[0].clone();
    let (victim, _) = books[1].clone();
    let unknown = "0190c2a4-0000-7000-8000-00000000dead";
    let book_body = r#"{"isbn": "{isbn}", "title": "Matrix {n}", "author": "M. Atrix",
                       "genre": "technical", "price_cents": 100, "stock": 1}"#;

    // Columns: anonymous, customer A, customer B (another customer), admin.
    let rows = vec![
        row(Method::GET, "/api/books", [200, 200, 200, 200]),
        row(Method::GET, "/api/books?q=matrix", [200, 200, 200, 200]),
        row(Method::GET, format!("/api/books/{book}"), [200, 200, 200, 200]),
        row(Method::GET, format!("/api/books/{unknown}"), [404, 404, 404, 404]),
        row(Method::POST, "/api/books", [401, 403, 403, 201]).body(book_body),
        row(Method::PUT, format!("/api/books/{book}"), [401, 403, 403, 200])
            .body(book_body)
            .if_match(&etag),
        row(Method::DELETE, format!("/api/books/{victim}"), [401, 403, 403, 204]),
        row(Method::POST, "/api/customers", [201, 201, 201, 201]).body(
            r#"{"email": "matrix-{n}@example.com", "name": "Matrix", "password": "long-enough-pw"}"#,
        ),
        row(Method::POST, "/api/auth/token", [200, 200, 200, 200]).body(json!({"email": a_email, "password": PASSWORD}).to_string()),
        row(Method::GET, format!("/api/customers/{a}"), [401, 200, 403, 200]),
        row(Method::POST, format!("/api/customers/{a}/credit"), [401, 200, 403, 200])
            .body(r#"{"amount_cents": 100}"#),
        row(Method::GET, format!("/api/customers/{a}/orders"), [401, 200, 403, 200]),
        row(Method::GET, format!("/api/customers/{a}/messages"), [401, 200, 403, 200]),
        row(Method::GET, format!("/api/orders/{order}"), [401, 200, 403, 200]),
        row(Method::GET, format!("/api/customers/{unknown}"), [401, 403, 403, 404]),
        row(Method::GET, format!("/api/orders/{unknown}"), [401, 404, 404, 404]),
        row(Method::GET, "/api/reports/sales?group_by=genre", [401, 403, 403, 200]),
        row(Method::GET, "/api/reports/top-books?limit=5", [401, 403, 403, 200]),
        row(Method::GET, "/api/reports/ratings", [401, 403, 403, 200]),
        row(Method::POST, "/api/reports/loads", [401, 403, 403, 202]),
        row(Method::GET, "/api/reports/sales?group_by=month", [401, 403, 403, 400]),
    ];
    let mut wrong = Vec::new();
    for row in &rows {
        for (who, expected) in EVERYONE.into_iter().zip(row.expected) {
            let response = send(&client, gw, row, tokens.of(who)).await?;
            let status = response.status().as_u16();
            if status != expected {
                let body = response.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{} {} as {who:?}: {status}, expected {expected} ({body})",
                    row.method, row.path
                ));
            } else if status == 401 || status == 403 {
                expect_problem(response, status).await;
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Only the allowed top-ups counted: A's own and the admin's.
    let me: Value = client
        .get(format!("{gw}/api/customers/{a}"))
        .bearer_auth(&tokens.a)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(me["credit_cents"], 200);

    // Tokens signed with another key, or expired, are 401 everywhere, public reads included.
    let jwt_secret = secrets(&platform)?["jwt_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let now = u64::try_from(unique() / 1_000_000_000).unwrap_or(0);
    let sign = |key: &str, role: Role, at: u64| -> anyhow::Result<String> {
        let issuer = TokenIssuer::new(&AuthConfig {
            jwt_secret: key.into(),
            ..AuthConfig::default()
        })?;
        Ok(issuer.issue_at(&a, role, at)?.access_token)
    };
    let forged = sign("not-the-platforms-key-0123456789abcdef", Role::Admin, now)?;
    let expired = sign(&jwt_secret, Role::Customer, now - 3600)?;
    for token in [&forged, &expired] {
        for path in ["/api/books".to_owned(), format!("/api/customers/{a}")] {
            let response = client
                .get(format!("{gw}{path}"))
                .bearer_auth(token)
                .send()
                .await?;
            assert!(response.headers().contains_key("www-authenticate"));
            let problem = expect_problem(response, 401).await;
            assert!(!problem.to_string().contains(token.as_str()));
        }
    }

    // Identity headers from clients count for nothing, the internal credential included.
    let internal = secrets(&platform)?["internal_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let spoofed = |request: reqwest::RequestBuilder| {
        request
            .header("x-user-id", &a)
            .header("x-user-role", "admin")
            .header("x-identity-subject", "admin")
            .header("x-internal-token", &internal)
    };
    let anonymous = spoofed(client.get(format!("{gw}/api/customers/{a}")))
        .send()
        .await?;
    expect_problem(anonymous, 401).await;
    let as_b = spoofed(client.get(format!("{gw}/api/customers/{a}")))
        .bearer_auth(&tokens.b)
        .send()
        .await?;
    expect_problem(as_b, 403).await;
    let create = spoofed(client.post(format!("{gw}/api/books")))
        .bearer_auth(&tokens.a)
        .json(
            &json!({"isbn": isbn(n + 7), "title": "Spoofed", "author": "S", "genre": "x",
                      "price_cents": 1, "stock": 1}),
        )
        .send()
        .await?;
    expect_problem(create, 403).await;

    // Internal routes are never routed, whoever asks and with whatever credential.
    for path in [
        "/internal/prepare",
        "/internal/anything/at/all",
        "/api/internal/prepare",
    ] {
        for method in [Method::GET, Method::POST] {
            for token in [None, Some(tokens.admin.as_str())] {
                let mut request = client
                    .request(method.clone(), format!("{gw}{path}"))
                    .header("x-internal-token", &internal);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                expect_problem(request.send().await?, 404).await;
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn no_log_line_contains_a_token_a_password_or_a_key() -> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url();
    let client = client();
    let email = format!("logs-{}@example.com", unique());
    let (id, token) = new_customer(&client, gw, &email, PASSWORD).await?;
    let admin = admin_token(&client, &platform).await?;
    // Use the tokens, and get some refused: wrong passwords, a tampered and an expired token.
    for (path, bearer) in [
        (format!("/api/customers/{id}"), token.clone()),
        (format!("/api/customers/{id}/orders"), admin.clone()),
        (format!("/api/customers/{id}"), format!("{token}x")),
        ("/api/books".to_owned(), format!("{admin}x")),
    ] {
        client
            .get(format!("{gw}{path}"))
            .bearer_auth(&bearer)
            .send()
            .await?;
    }
    for password in ["wrong-password-for-logs", PASSWORD] {
        client
            .post(format!("{gw}/api/auth/token"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
    }
    let secrets = secrets(&platform)?;
    let mut needles: Vec<String> = vec![
        token,
        admin,
        PASSWORD.into(),
        "wrong-password-for-logs".into(),
        stack::demo::DEMO_PASSWORD.into(),
    ];
    for key in ["jwt_secret", "internal_token", "admin_password"] {
        needles.push(secrets[key].as_str().unwrap_or_default().to_owned());
    }
    // A token's signature alone is as secret as the token.
    let signatures: Vec<String> = needles
        .iter()
        .filter_map(|t| t.rsplit_once('.').map(|(_, s)| s.to_owned()))
        .filter(|s| s.len() > 20)
        .collect();
    needles.extend(signatures);
    assert!(
        needles.iter().all(|n| n.len() >= 8),
        "every needle is specific"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // let the logs be written

    let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(platform.dir().join("logs"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.push(platform.dir().join("up.log"));
    assert!(logs.len() >= 7, "the logs of every process: {logs:?}");
    let mut leaks = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle.as_str())) {
                leaks.push(format!("{}:{}", log.display(), number + 1));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in log lines: {leaks:?}");
    Ok(())
}
