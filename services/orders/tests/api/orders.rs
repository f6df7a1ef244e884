use chrono::{Duration, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, TestOrder, assert_problem, id_of, spawn_app};

#[tokio::test]
async fn an_order_is_returned_with_its_lines_in_order_and_its_total() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let (dune, emma) = (Uuid::new_v4(), Uuid::new_v4());
    let id = app
        .insert_order(&TestOrder::committed(
            &customer,
            vec![(dune, 2, 1_250), (emma, 1, 999)],
        ))
        .await;

    let response = app.get(&format!("/api/orders/{id}")).await;

    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.expect("JSON");
    assert_eq!(order["id"], id.to_string());
    assert_eq!(order["customer_id"], customer["id"]);
    assert_eq!(order["mode"], "2pc");
    assert_eq!(order["status"], "committed");
    assert_eq!(order["total_cents"], 3_499);
    assert_eq!(
        order["lines"],
        serde_json::json!([
            {"book_id": dune, "quantity": 2, "price_cents": 1_250},
            {"book_id": emma, "quantity": 1, "price_cents": 999},
        ])
    );
    assert!(
        order.get("reason").is_none(),
        "no reason, no field: {order}"
    );
    assert!(order["created_at"].is_string() && order["updated_at"].is_string());
}

#[tokio::test]
async fn an_aborted_saga_order_carries_its_reason() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let mut order = TestOrder::committed(&customer, vec![(Uuid::new_v4(), 1, 500)]);
    (order.mode, order.status, order.reason) = ("saga", "compensated", Some("out of stock"));
    let id = app.insert_order(&order).await;

    let order: Value = app
        .get(&format!("/api/orders/{id}"))
        .await
        .json()
        .await
        .expect("JSON");

    assert_eq!(
        (order["mode"].as_str(), order["status"].as_str()),
        (Some("saga"), Some("compensated"))
    );
    assert_eq!(order["reason"], "out of stock");
}

#[tokio::test]
async fn an_unknown_order_is_404_and_a_malformed_order_id_is_400() {
    let app = spawn_app().await;
    assert_problem(
        app.get(&format!("/api/orders/{}", Uuid::new_v4())).await,
        404,
    )
    .await;
    for bad in ["42", "not-a-uuid", "%20"] {
        assert_problem(app.get(&format!("/api/orders/{bad}")).await, 400).await;
    }
}

/// Inserts `count` orders one minute apart, plus three sharing one timestamp to exercise the id
/// tie-break; returns their ids newest first.
async fn insert_history(app: &TestApp, customer: &Value, count: i64) -> Vec<String> {
    let start = Utc
        .with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
        .single()
        .expect("valid date");
    let mut inserted = Vec::new();
    for minute in (0..count).chain([count, count, count]) {
        let mut order = TestOrder::committed(customer, vec![(Uuid::new_v4(), 1, 100 + minute)]);
        order.created_at = Some(start + Duration::minutes(minute));
        inserted.push((order.created_at, app.insert_order(&order).await));
    }
    inserted.sort_by(|a, b| b.cmp(a));
    inserted.into_iter().map(|(_, id)| id.to_string()).collect()
}

#[tokio::test]
async fn a_customers_orders_are_listed_newest_first() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let other = app.create_customer().await;
    let expected = insert_history(&app, &customer, 5).await;
    insert_history(&app, &other, 2).await;

    let page: Value = app
        .get(&format!("/api/customers/{}/orders", id_of(&customer)))
        .await
        .json()
        .await
        .expect("JSON");

    let ids: Vec<_> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["items"][0]["lines"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn pagination_walks_every_order_exactly_once() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let expected = insert_history(&app, &customer, 22).await;
    let base = format!("/api/customers/{}/orders?limit=7", id_of(&customer));

    let (mut seen, mut sizes, mut path) = (Vec::new(), Vec::new(), base.clone());
    loop {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.expect("JSON");
        let items = page["items"].as_array().expect("items");
        sizes.push(items.len());
        seen.extend(items.iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{base}&cursor={cursor}"),
            None => break,
        }
    }

    assert_eq!(sizes, [7, 7, 7, 4]);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_customer_without_orders_gets_an_empty_page() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;

    let response = app
        .get(&format!("/api/customers/{}/orders", id_of(&customer)))
        .await;

    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("JSON");
    assert_eq!(page, serde_json::json!({"items": [], "next_cursor": null}));
}

#[tokio::test]
async fn invalid_limits_and_forged_cursors_are_rejected_with_400() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let base = format!("/api/customers/{}/orders", id_of(&customer));
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "cursor=!!!",
        "cursor=bm90IGpzb24",
        "cursor=WyJ5ZXN0ZXJkYXkiLCJ4Il0",
        "cursor=IjIwMjUtMDEtMDFUMDA6MDA6MDBaIg",
    ] {
        let response = app.get(&format!("{base}?{query}")).await;
        assert_problem(response, 400).await;
    }
}
