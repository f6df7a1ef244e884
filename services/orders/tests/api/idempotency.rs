use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, error_fields, id_of, spawn_app, spawn_app_with};

#[tokio::test]
async fn repeating_a_top_up_with_the_same_key_credits_once_and_replays_the_first_answer() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let body = json!({"amount_cents": 700});

    let first = app.top_up(&id, &body, Some("retry-me-1")).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.text().await.expect("body");

    let second = app.top_up(&id, &body, Some("retry-me-1")).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["content-type"], "application/json");
    let second = second.text().await.expect("body");

    assert_eq!(
        second, first,
        "the replay is byte-for-byte the first answer"
    );
    assert_eq!(app.credit_of(&id).await, 700);
}

#[tokio::test]
async fn a_new_key_credits_again() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let body = json!({"amount_cents": 700});

    app.top_up(&id, &body, Some("key-a")).await;
    let response = app.top_up(&id, &body, Some("key-b")).await;

    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.credit_of(&id).await, 1_400);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_rejected_with_422() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    app.top_up(&id, &json!({"amount_cents": 700}), Some("k"))
        .await;

    let response = app
        .top_up(&id, &json!({"amount_cents": 701}), Some("k"))
        .await;

    let problem = assert_problem(response, 422).await;
    assert_eq!(error_fields(&problem), ["Idempotency-Key"]);
    assert_eq!(app.credit_of(&id).await, 700);
}

#[tokio::test]
async fn keys_are_scoped_to_one_customer() {
    let app = spawn_app().await;
    let (a, b) = (
        id_of(&app.create_customer().await),
        id_of(&app.create_customer().await),
    );
    let body = json!({"amount_cents": 300});

    app.top_up(&a, &body, Some("shared-key")).await;
    let response = app.top_up(&b, &body, Some("shared-key")).await;

    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        (app.credit_of(&a).await, app.credit_of(&b).await),
        (300, 300)
    );
}

#[tokio::test]
async fn ten_concurrent_top_ups_with_one_key_credit_exactly_once() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let body = json!({"amount_cents": 1_234});

    let responses = join_all((0..10).map(|_| app.top_up(&id, &body, Some("same-key")))).await;

    let mut replayed = 0;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        replayed += usize::from(response.headers().get("idempotent-replayed").is_some());
        bodies.push(response.json::<Value>().await.expect("JSON"));
    }
    assert_eq!(replayed, 9, "one request did the work, nine replayed it");
    assert!(
        bodies
            .iter()
            .all(|b| b == &bodies[0] && b["credit_cents"] == 1_234)
    );
    assert_eq!(app.credit_of(&id).await, 1_234);
}

#[tokio::test]
async fn a_request_that_failed_leaves_its_key_unused() {
    let app = spawn_app_with(|config| config.credit.max_balance_cents = 1_000).await;
    let id = id_of(&app.create_customer().await);

    let over_cap = app
        .top_up(&id, &json!({"amount_cents": 1_001}), Some("k"))
        .await;
    assert_problem(over_cap, 422).await;
    let retry = app
        .top_up(&id, &json!({"amount_cents": 1_000}), Some("k"))
        .await;

    assert_eq!(retry.status(), 200);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.credit_of(&id).await, 1_000);
}

#[tokio::test]
async fn malformed_idempotency_keys_are_rejected_with_400_and_credit_nothing() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let too_long = "k".repeat(256);
    let cases: [&[u8]; 5] = [
        b"",
        too_long.as_bytes(),
        b"tab\tinside",
        b"two words",
        "ключ".as_bytes(),
    ];
    for key in cases {
        let response = app.top_up_with_key_bytes(&id, key).await;
        assert_problem(response, 400).await;
    }
    assert_eq!(app.credit_of(&id).await, 0);
    let longest = app
        .top_up_with_key_bytes(&id, "k".repeat(255).as_bytes())
        .await;
    assert_eq!(longest.status(), 200);
}
