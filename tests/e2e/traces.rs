//! W3C trace context end to end: one checkout's `traceparent` reaches the gateway, orders, the
//! coordinator and (through the coordinator's participant calls) books, and their JSON log lines
//! carry its trace id.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::TestPlatform;

use crate::bookstore;
use crate::checkout::{Customer, Shop};

/// Every JSON log line of every process of `kind`, parsed (lines that are not JSON skipped).
fn log_lines(platform: &TestPlatform, kind: &str) -> anyhow::Result<Vec<Value>> {
    let mut lines = Vec::new();
    for process in platform.processes(kind) {
        let text = std::fs::read_to_string(&process.log)?;
        lines.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    Ok(lines)
}

fn span_field<'a>(line: &'a Value, field: &str) -> &'a str {
    line["span"][field].as_str().unwrap_or_default()
}

/// A trace id unique to this run (time since the epoch in nanoseconds, and this process).
pub fn unique_trace_id() -> anyhow::Result<String> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(format!(
        "{:024x}{:08x}",
        nanos.as_nanos(),
        std::process::id()
    ))
}

/// A 2PC checkout of one copy of `book` sent with `traceparent`, followed until it committed.
pub async fn committed_checkout(
    shop: &Shop,
    customer: &Customer,
    book: &str,
    traceparent: &str,
) -> anyhow::Result<()> {
    let answer = shop
        .client
        .post(format!("{}/api/checkout", shop.gateway))
        .bearer_auth(&customer.token)
        .header("idempotency-key", format!("traced-{traceparent}"))
        .header("traceparent", traceparent)
        .json(&json!({"mode": "2pc", "items": [{"book_id": book, "quantity": 1}]}))
        .send()
        .await?;
    let status = answer.status().as_u16();
    let order: Value = answer.json().await?;
    anyhow::ensure!(status == 201 || status == 202, "{status}: {order}");
    let settled = shop
        .settle(customer, order["id"].as_str().unwrap_or_default())
        .await?;
    anyhow::ensure!(settled["status"] == "committed", "{settled}");
    Ok(())
}

#[tokio::test]
async fn traces_one_checkouts_trace_id_is_in_the_logs_of_gateway_orders_coordinator_and_books()
-> anyhow::Result<()> {
    let platform = TestPlatform::start_with(bookstore(), &[("BOOKSTORE_NO_DEMO", "true")]).await?;
    let mut shop = Shop::open(platform).await?;
    let book = shop.book(5, 1_000).await?;
    let customer = shop.customer(10_000).await?;

    let trace_id = unique_trace_id()?;
    let parent = format!("{:016x}", u64::from(std::process::id()).max(1));
    committed_checkout(
        &shop,
        &customer,
        &book,
        &format!("00-{trace_id}-{parent}-01"),
    )
    .await?;

    // What each kind of process logged under the trace: the paths of its request spans. Lines go
    // out through a background writer, so wait for them.
    let kinds = ["gateway", "orders", "coordinator", "books"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let traced = loop {
        let mut traced: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for kind in kinds {
            let paths = log_lines(&shop.platform, kind)?
                .iter()
                .filter(|line| span_field(line, "trace_id") == trace_id)
                .map(|line| span_field(line, "path").to_owned())
                .collect();
            traced.insert(kind, paths);
        }
        let books_participated = traced["books"]
            .iter()
            .any(|p| p.starts_with("/internal/2pc/"));
        if traced.values().all(|paths| !paths.is_empty()) && books_participated {
            break traced;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "trace {trace_id} is missing from some logs after 15 s: {traced:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        traced["gateway"].iter().any(|p| p == "/api/checkout"),
        "{traced:?}"
    );
    assert!(
        traced["orders"].iter().any(|p| p == "/api/checkout"),
        "{traced:?}"
    );

    // Every line logged inside a request carries a well-formed trace id.
    for kind in kinds {
        for line in log_lines(&shop.platform, kind)? {
            if line["span"].is_object() {
                let id = span_field(&line, "trace_id");
                assert!(
                    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{kind} logged a request line without a trace id: {line}"
                );
                // OTLP export is off here: none of its span fields reaches the logs.
                assert!(line["span"]["otel.name"].is_null(), "{kind}: {line}");
            }
        }
    }
    Ok(())
}
