//! The gateway routes every public resource to its service and answers everything else itself.

use serde_json::{Value, json};

use crate::{admin_token, all_books, client, expect_problem, log_in, metric, start};

#[tokio::test]
async fn the_gateway_serves_books_customers_and_orders_from_their_services() -> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url();
    let client = client();

    // The demo catalog: at least 50 books over several genres and authors.
    let books = all_books(&client, gw).await?;
    assert!(books.len() >= 50, "demo catalog has {} books", books.len());
    let genres: std::collections::HashSet<_> = books.iter().map(|b| b["genre"].clone()).collect();
    assert!(genres.len() >= 5);

    // Filters and search pass through with their query strings.
    let page: Value = client
        .get(format!("{gw}/api/books?author=jane%20austen&limit=2"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert!(page["next_cursor"].is_string());

    // Create, read with ETag, update with If-Match, stale update refused (as the admin).
    let admin = admin_token(&client, &platform).await?;
    let created = client
        .post(format!("{gw}/api/books"))
        .bearer_auth(&admin)
        .json(
            &json!({"isbn": "978-0-306-40615-7", "title": "Gateway Testing", "author": "E. Tester",
                      "genre": "technical", "price_cents": 1999, "stock": 3}),
        )
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str()?.to_owned();
    let book: Value = created.json().await?;
    let got = client.get(format!("{gw}{location}")).send().await?;
    assert_eq!(got.headers()["etag"], "\"1\"");
    let update = json!({"isbn": "9780306406157", "title": "Gateway Testing, 2nd ed.", "author": "E. Tester",
                        "genre": "technical", "price_cents": 2499, "stock": 3});
    let updated = client
        .put(format!("{gw}{location}"))
        .bearer_auth(&admin)
        .header("if-match", "\"1\"")
        .json(&update)
        .send()
        .await?;
    assert_eq!(updated.status(), 200);
    let stale = client
        .put(format!("{gw}{location}"))
        .bearer_auth(&admin)
        .header("if-match", "\"1\"")
        .json(&update)
        .send()
        .await?;
    expect_problem(stale, 412).await;

    // Customers and their (still empty) orders.
    let customer: Value = client
        .post(format!("{gw}/api/customers"))
        .json(&json!({"email": "e2e@example.com", "name": "End To End", "password": "long-enough-pw"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = customer["id"].as_str().unwrap_or_default();
    let token = log_in(&client, gw, "e2e@example.com", "long-enough-pw").await?;
    let topped: Value = client
        .post(format!("{gw}/api/customers/{id}/credit"))
        .bearer_auth(&token)
        .json(&json!({"amount_cents": 1500}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(topped["credit_cents"], 1500);
    let orders: Value = client
        .get(format!("{gw}/api/customers/{id}/orders"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(orders["items"], json!([]));
    let unknown_order = client
        .get(format!(
            "{gw}/api/orders/{}",
            book["id"].as_str().unwrap_or_default()
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    expect_problem(unknown_order, 404).await;
    Ok(())
}

#[tokio::test]
async fn the_gateway_answers_unroutable_and_oversize_requests_with_problems() -> anyhow::Result<()>
{
    let platform = start().await?;
    let gw = platform.gateway_url();
    let client = client();
    for path in ["/api/nothing-here", "/internal/prepare", "/api/booksx"] {
        let response = client.get(format!("{gw}{path}")).send().await?;
        expect_problem(response, 404).await;
    }
    let huge = "x".repeat(2 * 1024 * 1024);
    let response = client
        .post(format!("{gw}/api/books"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    expect_problem(response, 413).await;
    let malformed = client
        .post(format!("{gw}/api/customers"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await?;
    expect_problem(malformed, 400).await;
    Ok(())
}

#[tokio::test]
async fn requests_carry_a_request_id_and_are_spread_over_both_instances() -> anyhow::Result<()> {
    let platform = start().await?;
    let gw = platform.gateway_url();
    let client = client();
    let response = client
        .get(format!("{gw}/api/books?limit=1"))
        .header("x-request-id", "e2e-request-42")
        .send()
        .await?;
    assert_eq!(response.headers()["x-request-id"], "e2e-request-42");
    let fresh = client.get(format!("{gw}/api/books?limit=1")).send().await?;
    assert!(
        fresh.headers().contains_key("x-request-id"),
        "the gateway assigns one when absent"
    );

    let before = list_requests_per_instance(&platform).await?;
    // The two requests above opened the first connections to books.
    let opened_before = metric(gw, "gateway_upstream_connections_opened_total", &[]).await?;
    assert!(opened_before >= 1.0, "connections opened: {opened_before}");
    for _ in 0..20 {
        client
            .get(format!("{gw}/api/books?limit=1"))
            .send()
            .await?
            .error_for_status()?;
    }
    let after = list_requests_per_instance(&platform).await?;
    let served: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(served.len(), 2);
    assert_eq!(served.iter().sum::<f64>(), 20.0, "{served:?}");
    assert!(
        served.iter().all(|n| *n >= 5.0),
        "round robin spreads the load: {served:?}"
    );
    // Keep-alive to the instances: at most one new connection per instance and serving thread.
    let opened =
        metric(gw, "gateway_upstream_connections_opened_total", &[]).await? - opened_before;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let instances = platform.processes("books").len();
    assert!(
        opened <= (instances * threads) as f64,
        "{opened} connections opened for 20 requests"
    );
    Ok(())
}

/// `GET /api/books` requests each books instance has served, from its own /metrics.
async fn list_requests_per_instance(platform: &testkit::TestPlatform) -> anyhow::Result<Vec<f64>> {
    let mut counts = Vec::new();
    for instance in platform.processes("books") {
        let labels = [("route", "/api/books"), ("method", "GET")];
        counts.push(metric(&instance.url, "http_requests_total", &labels).await?);
    }
    Ok(counts)
}
