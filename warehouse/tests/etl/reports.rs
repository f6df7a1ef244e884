//! The reports through the real HTTP application, their figures checked against the source data,
//! and bad parameters and callers refused with problem+json.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use platform::auth::{AuthConfig, Role, TokenIssuer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warehouse::etl::Mode;

use crate::helpers::{Harness, reader_url};

const JWT_SECRET: &str = "warehouse-tests-jwt-secret-0123456789abcdef";

fn auth() -> AuthConfig {
    AuthConfig {
        jwt_secret: JWT_SECRET.into(),
        internal_token: "warehouse-tests-internal".into(),
        admin_password: "warehouse-tests-admin".into(),
        ..AuthConfig::default()
    }
}

fn bearer(role: Role) -> String {
    let token = TokenIssuer::new(&auth())
        .expect("auth")
        .issue("someone", role)
        .expect("token");
    format!("Bearer {}", token.access_token)
}

struct App {
    base: String,
    client: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

impl App {
    async fn spawn(h: &Harness) -> App {
        let mut config = warehouse::Config::default();
        config.db.url = h.warehouse_url.clone();
        config.sources.books.url = reader_url(h.pg(), "books");
        config.sources.orders.url = reader_url(h.pg(), "orders");
        config.auth = auth();
        // No scheduled run during the test beyond the start-up one (it only ever catches up).
        config.etl.schedule = "0 0 0 1 1 * 2099".into();
        let app = warehouse::Application::build(config).await.expect("builds");
        let base = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        App {
            base,
            client: reqwest::Client::new(),
            _stop: stop.drop_guard(),
        }
    }

    async fn get(&self, path: &str, role: Option<Role>) -> (u16, Option<String>, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(role) = role {
            request = request.header("authorization", bearer(role));
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, kind, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn reports_agree_with_the_source_data() {
    let h = Harness::start().await;
    let dune = h.book("Dune", "Herbert", "sf", 1000).await;
    let emma = h.book("Emma", "Austen", "classic", 500).await;
    let persuasion = h.book("Persuasion", "Austen", "classic", 700).await;
    let (ann, bob) = (h.customer("Ann").await, h.customer("Bob").await);
    let day = |d| {
        Some(
            Utc.with_ymd_and_hms(2026, 3, d, 12, 0, 0)
                .single()
                .expect("date"),
        )
    };
    for (customer, lines, on) in [
        (ann, vec![(dune, 1, 1000), (emma, 2, 500)], day(1)),
        (bob, vec![(emma, 1, 450)], day(1)),
        (ann, vec![(persuasion, 3, 700)], day(2)),
        (bob, vec![(dune, 2, 1000)], day(3)),
        (bob, vec![(dune, 9, 1000)], day(20)), // outside the range asked for below
    ] {
        let mut tx = h.orders.begin().await.expect("begin");
        Harness::place_in(&mut tx, customer, &lines, on).await;
        tx.commit().await.expect("commit");
    }
    h.rate(ann, dune, 5).await;
    h.rate(bob, dune, 4).await;
    h.rate(bob, emma, 2).await;
    let app = App::spawn(&h).await;
    h.load(Mode::Incremental).await;

    let range = "from=2026-03-01&to=2026-03-03";
    let (status, _, by_day) = app
        .get(
            &format!("/api/reports/sales?group_by=day&{range}"),
            Some(Role::Admin),
        )
        .await;
    assert_eq!(status, 200, "{by_day}");
    assert!(by_day["loaded_at"].is_string());
    assert_eq!(rows(&by_day), expected_sales(&h, "day").await);
    for group in ["author", "genre"] {
        let (_, _, report) = app
            .get(
                &format!("/api/reports/sales?group_by={group}&{range}"),
                Some(Role::Admin),
            )
            .await;
        assert_eq!(rows(&report), expected_sales(&h, group).await, "{group}");
    }
    let (_, _, top) = app
        .get(
            &format!("/api/reports/top-books?{range}&limit=2"),
            Some(Role::Admin),
        )
        .await;
    let top: Vec<(String, i64, i64)> = top["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["title"].as_str().unwrap_or("").to_owned(),
                r["units"].as_i64().unwrap_or(-1),
                r["revenue_cents"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    // Dune 1 + 2 = 3 units (3000), Persuasion 3 (2100), Emma 2 + 1 = 3 (1450): the tie on
    // units is broken by revenue, and the limit cuts Emma.
    assert_eq!(
        top,
        vec![("Dune".into(), 3, 3000), ("Persuasion".into(), 3, 2100)]
    );
    let (_, _, ratings) = app.get("/api/reports/ratings", Some(Role::Admin)).await;
    let ratings: Vec<(String, f64, i64)> = ratings["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["title"].as_str().unwrap_or("").to_owned(),
                r["average"].as_f64().unwrap_or(-1.0),
                r["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        ratings,
        vec![("Dune".into(), 4.5, 2), ("Emma".into(), 2.0, 1)]
    );
}

/// `{key: (orders, units, revenue)}` of a sales report.
fn rows(report: &Value) -> BTreeMap<String, (i64, i64, i64)> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |f: &str| r[f].as_i64().unwrap_or(-1);
            (
                r["key"].as_str().unwrap_or("").to_owned(),
                (n("orders"), n("units"), n("revenue_cents")),
            )
        })
        .collect()
}

/// The same figures computed straight from the source databases.
async fn expected_sales(h: &Harness, group: &str) -> BTreeMap<String, (i64, i64, i64)> {
    let lines: Vec<(Uuid, Uuid, i32, i64, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT o.id, l.book_id, l.quantity, l.price_cents, (o.created_at AT TIME ZONE 'UTC')::date
         FROM orders o JOIN order_lines l ON l.order_id = o.id
         WHERE o.status = 'committed'
           AND (o.created_at AT TIME ZONE 'UTC')::date BETWEEN '2026-03-01' AND '2026-03-03'",
    )
    .fetch_all(&h.orders)
    .await
    .expect("source");
    let books: BTreeMap<Uuid, (String, String)> =
        sqlx::query_as::<_, (Uuid, String, String)>("SELECT id, author, genre FROM books")
            .fetch_all(&h.books)
            .await
            .expect("books")
            .into_iter()
            .map(|(id, a, g)| (id, (a, g)))
            .collect();
    let mut grouped: BTreeMap<String, (std::collections::BTreeSet<Uuid>, i64, i64)> =
        BTreeMap::new();
    for (order, book, quantity, price, day) in lines {
        let key = match group {
            "day" => day.to_string(),
            "author" => books[&book].0.clone(),
            _ => books[&book].1.clone(),
        };
        let entry = grouped.entry(key).or_default();
        entry.0.insert(order);
        entry.1 += i64::from(quantity);
        entry.2 += i64::from(quantity) * price;
    }
    grouped
        .into_iter()
        .map(|(k, (o, u, r))| (k, (o.len() as i64, u, r)))
        .collect()
}

#[tokio::test]
async fn bad_parameters_and_callers_are_refused_with_problems() {
    let h = Harness::start().await;
    let app = App::spawn(&h).await;
    for path in [
        "/api/reports/sales?group_by=month",
        "/api/reports/sales?from=2026-02-30",
        "/api/reports/sales?from=2026-03-02&to=2026-03-01",
        "/api/reports/sales?from=1900-01-01&to=2026-01-01",
        "/api/reports/sales?colour=blue",
        "/api/reports/top-books?limit=0",
        "/api/reports/top-books?limit=ten",
        "/api/reports/ratings?limit=100000",
        "/api/reports/loads/not-a-uuid",
    ] {
        let (status, kind, body) = app.get(path, Some(Role::Admin)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(kind.as_deref(), Some("application/problem+json"), "{path}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}: {body}"
        );
    }
    let (status, _, _) = app.get("/api/reports/sales", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = app.get("/api/reports/sales", Some(Role::Customer)).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_load_started_through_the_api_runs_and_is_recorded() {
    let h = Harness::start().await;
    let book = h.book("Api", "Author", "g", 100).await;
    let c = h.customer("C").await;
    let app = App::spawn(&h).await;
    h.order(c, &[(book, 1, 100)]).await;
    let response = app
        .client
        .post(format!("{}/api/reports/loads", app.base))
        .header("authorization", bearer(Role::Admin))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("json");
    let run_id = body["run_id"].as_str().expect("run_id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, _, run) = app
            .get(&format!("/api/reports/loads/{run_id}"), Some(Role::Admin))
            .await;
        if status == 200 && run["status"] == "succeeded" {
            break;
        }
        assert!(run["status"] != "failed", "{run}");
        assert!(
            std::time::Instant::now() < deadline,
            "the load never finished: {run}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        Harness::fact_lines(&h.warehouse).await,
        h.source_lines().await
    );
}
