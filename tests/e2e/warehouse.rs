//! The warehouse in the running platform: real checkouts (2PC and saga) through the gateway while
//! loads are started through the reports API; after the last load every committed order line is in
//! the sales report exactly once.

use std::time::Duration;

use serde_json::Value;

use crate::checkout::Shop;
use crate::{admin_token, expect_problem};

#[tokio::test]
async fn every_committed_checkout_reaches_the_reports_while_loads_run() -> anyhow::Result<()> {
    let mut shop = Shop::open(crate::start().await?).await?;
    let admin = admin_token(&shop.client, &shop.platform).await?;
    let book = shop.book(1_000, 300).await?;
    let buyers = [shop.customer(100_000).await?, shop.customer(100_000).await?];
    let shop = &shop;
    let checkouts = async {
        let mut placed = Vec::new();
        for n in 0..12usize {
            let buyer = &buyers[n % 2];
            let mode = if n % 3 == 0 { "saga" } else { "2pc" };
            let key = format!("warehouse-e2e-{n}-{}", std::process::id());
            let response = shop
                .checkout(buyer, &key, mode, &[(&book, 1 + (n % 3) as i64)])
                .await?;
            let order: Value = response.json().await?;
            placed.push((n % 2, order["id"].as_str().unwrap_or_default().to_owned()));
        }
        anyhow::Ok(placed)
    };
    let loads = async {
        for _ in 0..4 {
            start_load(shop, &admin).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    };
    let (placed, ()) = tokio::try_join!(checkouts, loads)?;
    // What committed, as the orders service says once every checkout has settled.
    let (mut orders, mut units, mut revenue) = (0i64, 0i64, 0i64);
    for (buyer, order_id) in &placed {
        let order = shop.settle(&buyers[*buyer], order_id).await?;
        if order["status"] == "committed" {
            orders += 1;
            for line in order["lines"].as_array().into_iter().flatten() {
                let quantity = line["quantity"].as_i64().unwrap_or(0);
                units += quantity;
                revenue += quantity * line["price_cents"].as_i64().unwrap_or(0);
            }
        }
    }
    assert!(orders > 0, "no checkout committed");
    let run = start_load(shop, &admin).await?;
    wait_for_success(shop, &admin, &run).await?;
    let report: Value = shop
        .client
        .get(format!("{}/api/reports/sales?group_by=genre", shop.gateway))
        .bearer_auth(&admin)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let row = report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "test"))
        .ok_or_else(|| anyhow::anyhow!("no sales of the test genre: {report}"))?;
    assert_eq!(
        (
            row["orders"].as_i64(),
            row["units"].as_i64(),
            row["revenue_cents"].as_i64()
        ),
        (Some(orders), Some(units), Some(revenue)),
        "{report}"
    );
    let bad = shop
        .client
        .get(format!("{}/api/reports/top-books?limit=0", shop.gateway))
        .bearer_auth(&admin)
        .send()
        .await?;
    expect_problem(bad, 400).await;
    Ok(())
}

async fn start_load(shop: &Shop, admin: &str) -> anyhow::Result<String> {
    let started: Value = shop
        .client
        .post(format!("{}/api/reports/loads", shop.gateway))
        .bearer_auth(admin)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(started["run_id"].as_str().unwrap_or_default().to_owned())
}

async fn wait_for_success(shop: &Shop, admin: &str, run: &str) -> anyhow::Result<()> {
    for _ in 0..1200 {
        let response = shop
            .client
            .get(format!("{}/api/reports/loads/{run}", shop.gateway))
            .bearer_auth(admin)
            .send()
            .await?;
        if response.status().is_success() {
            let record: Value = response.json().await?;
            match record["status"].as_str() {
                Some("succeeded") => return Ok(()),
                Some("failed") => anyhow::bail!("the load failed: {record}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("load {run} did not finish in two minutes")
}
