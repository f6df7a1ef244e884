//! The message record: one message per order and credit change, written with the change, listed
//! newest first at `GET /api/customers/{id}/messages` to the customer themself or the admin.

use coordinator::participant::Branch;
use orders::checkout::PlaceOrder;
use orders::checkout::ledger::{self, NewCheckout};
use orders::domain::OrderMode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, bearer_of, id_of, spawn_app};

/// The kinds of the customer's messages, newest first, read as the admin.
async fn kinds(app: &TestApp, customer: &str) -> Vec<String> {
    let page = messages_page(app, customer, "").await;
    assert!(page["next_cursor"].is_null(), "one page expected: {page}");
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["kind"].as_str().expect("kind").to_owned())
        .collect()
}

async fn messages_page(app: &TestApp, customer: &str, query: &str) -> Value {
    let response = app
        .get(&format!("/api/customers/{customer}/messages{query}"))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("page JSON")
}

/// Runs the `place` branch (debit + order) as checkout's participant would, and commits it.
async fn place(app: &TestApp, customer: &str, total: i64, compensate: bool) -> Uuid {
    let order_id = Uuid::now_v7();
    let payload = json!({
        "order_id": order_id, "customer_id": customer, "mode": "saga",
        "lines": [{"book_id": Uuid::now_v7(), "quantity": 1, "price_cents": total}],
        "total_cents": total,
    });
    let mut tx = app.db.begin().await.expect("tx");
    PlaceOrder.apply(&mut tx, &payload).await.expect("placed");
    if compensate {
        PlaceOrder
            .compensate(&mut tx, &payload)
            .await
            .expect("compensated");
    }
    tx.commit().await.expect("commit");
    order_id
}

fn new_checkout<'a>(customer: &str, key: &'a str, problem: Option<&'a Value>) -> NewCheckout<'a> {
    NewCheckout {
        id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        customer_id: customer.parse().expect("uuid"),
        key,
        hash: &[7; 32],
        mode: OrderMode::TwoPhaseCommit,
        total_cents: problem.is_none().then_some(500),
        lines: None,
        problem,
    }
}

#[tokio::test]
async fn every_order_and_credit_change_writes_one_message_newest_first() {
    let app = spawn_app().await;
    let customer = id_of(&app.create_customer().await);
    assert!(kinds(&app, &customer).await.is_empty());

    let top_up = app
        .top_up(&customer, &json!({"amount_cents": 1000}), None)
        .await;
    assert_eq!(top_up.status(), 200);
    place(&app, &customer, 300, false).await;
    place(&app, &customer, 200, true).await;

    // A checkout that commits, and one refused from the start; recording either outcome twice
    // (a repeated request, a late coordinator answer) adds nothing.
    let committed = new_checkout(&customer, "committed-key", None);
    let (row, _) = ledger::start(&app.db, &committed).await.expect("started");
    for _ in 0..2 {
        ledger::update(&app.db, &row, "committed", Some("committed"), None)
            .await
            .expect("committed");
    }
    let problem = json!({"status": 422, "detail": "no book has the id 42"});
    let refused = new_checkout(&customer, "refused-key", Some(&problem));
    let (row, _) = ledger::start(&app.db, &refused).await.expect("refused");
    ledger::update(&app.db, &row, "aborted", None, Some(&problem))
        .await
        .expect("aborted again");

    assert_eq!(
        kinds(&app, &customer).await,
        [
            "order_aborted",
            "order_committed",
            "credit_refunded",
            "credit_debited",
            "order_placed",
            "credit_debited",
            "order_placed",
            "credit_topped_up",
        ]
    );
    let page = messages_page(&app, &customer, "?limit=1").await;
    let aborted = &page["items"][0];
    assert!(
        aborted["text"]
            .as_str()
            .is_some_and(|t| t.contains("no book has the id 42")),
        "{aborted}"
    );
    assert_eq!(app.credit_of(&customer).await, 1000 - 300);
}

#[tokio::test]
async fn a_refused_order_changes_nothing_and_writes_no_placed_message() {
    let app = spawn_app().await;
    let customer = id_of(&app.create_customer().await);
    let payload = json!({
        "order_id": Uuid::now_v7(), "customer_id": customer, "mode": "2pc",
        "lines": [{"book_id": Uuid::now_v7(), "quantity": 1, "price_cents": 100}],
        "total_cents": 100,
    });
    let mut tx = app.db.begin().await.expect("tx");
    assert!(
        PlaceOrder.apply(&mut tx, &payload).await.is_err(),
        "no credit"
    );
    drop(tx);
    assert!(kinds(&app, &customer).await.is_empty());
}

#[tokio::test]
async fn a_repeated_idempotency_key_does_not_repeat_the_message() {
    let app = spawn_app().await;
    let customer = id_of(&app.create_customer().await);
    let body = json!({"amount_cents": 250});
    for _ in 0..3 {
        let response = app.top_up(&customer, &body, Some("top-up-once")).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(kinds(&app, &customer).await, ["credit_topped_up"]);
    let page = messages_page(&app, &customer, "").await;
    assert_eq!(page["items"][0]["amount_cents"], 250);
}

#[tokio::test]
async fn pages_walk_every_message_once_newest_first() {
    let app = spawn_app().await;
    let customer = id_of(&app.create_customer().await);
    for cents in 1..=5 {
        let response = app
            .top_up(&customer, &json!({"amount_cents": cents}), None)
            .await;
        assert_eq!(response.status(), 200);
    }
    let mut amounts = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = messages_page(&app, &customer, &query).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        amounts.extend(
            items
                .iter()
                .map(|m| m["amount_cents"].as_i64().expect("amount")),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(amounts, [5, 4, 3, 2, 1]);
    let bad = app
        .get(&format!("/api/customers/{customer}/messages?limit=0"))
        .await;
    assert_problem(bad, 400).await;
}

#[tokio::test]
async fn a_customer_reads_only_their_own_messages() {
    let app = spawn_app().await;
    let alice = app.create_customer().await;
    let bob = app.create_customer().await;
    let (alice_id, bob_id) = (id_of(&alice), id_of(&bob));
    let response = app
        .top_up(&bob_id, &json!({"amount_cents": 10}), None)
        .await;
    assert_eq!(response.status(), 200);

    let own = app
        .get_as(
            &format!("/api/customers/{alice_id}/messages"),
            Some(&bearer_of(&alice)),
        )
        .await;
    assert_eq!(own.status(), 200);
    let others = app
        .get_as(
            &format!("/api/customers/{bob_id}/messages"),
            Some(&bearer_of(&alice)),
        )
        .await;
    assert_problem(others, 403).await;
    let anonymous = app
        .get_as(&format!("/api/customers/{bob_id}/messages"), None)
        .await;
    assert_problem(anonymous, 401).await;
    let unknown = app
        .get(&format!("/api/customers/{}/messages", Uuid::now_v7()))
        .await;
    assert_problem(unknown, 404).await;
    assert_eq!(kinds(&app, &bob_id).await, ["credit_topped_up"]);
}
