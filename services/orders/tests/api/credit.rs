use serde_json::{Value, json};

use crate::helpers::{assert_problem, error_fields, id_of, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_top_up_adds_exactly_the_amount_and_answers_with_the_new_balance() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);

    let first = app.top_up(&id, &json!({"amount_cents": 2500}), None).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let customer: Value = first.json().await.expect("JSON");
    assert_eq!(customer["credit_cents"], 2500);
    assert_eq!(customer["id"], id.as_str());

    let second: Value = app
        .top_up(&id, &json!({"amount_cents": 1}), None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(second["credit_cents"], 2501);
    assert_eq!(app.credit_of(&id).await, 2501);
}

#[tokio::test]
async fn the_largest_allowed_top_up_is_accepted() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);

    let response = app
        .top_up(&id, &json!({"amount_cents": 1_000_000}), None)
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(app.credit_of(&id).await, 1_000_000);
}

#[tokio::test]
async fn amounts_that_are_not_whole_positive_cents_within_the_limit_are_rejected_with_422() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    let path = format!("/api/customers/{id}/credit");
    let cases = [
        "1e30",
        "9223372036854775808",
        "18446744073709551616",
        "-1",
        "0",
        "1.5",
        "10.0",
        "\"10\"",
        "null",
        "true",
        "[100]",
        "{\"cents\": 1}",
        "1000001",
        "-9223372036854775808",
    ];
    for amount in cases {
        let body = format!("{{\"amount_cents\": {amount}}}");
        let response = app.post_raw(&path, Some("application/json"), body).await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(error_fields(&problem), ["amount_cents"], "{amount}");
    }
    let response = app.post_json(&path, &json!({})).await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(error_fields(&problem), ["amount_cents"], "missing");
    assert_eq!(
        app.credit_of(&id).await,
        0,
        "no rejected amount was credited"
    );
}

#[tokio::test]
async fn a_top_up_that_would_exceed_the_balance_cap_is_rejected_and_credits_nothing() {
    let app = spawn_app_with(|config| config.credit.max_balance_cents = 1_500).await;
    let id = id_of(&app.create_customer().await);
    assert_eq!(
        app.top_up(&id, &json!({"amount_cents": 1_000}), None)
            .await
            .status(),
        200
    );

    let response = app.top_up(&id, &json!({"amount_cents": 501}), None).await;

    let problem = assert_problem(response, 422).await;
    assert_eq!(error_fields(&problem), ["amount_cents"]);
    assert_eq!(app.credit_of(&id).await, 1_000);
    let exactly_to_the_cap = app.top_up(&id, &json!({"amount_cents": 500}), None).await;
    assert_eq!(exactly_to_the_cap.status(), 200);
    assert_eq!(app.credit_of(&id).await, 1_500);
}

#[tokio::test]
async fn the_per_top_up_maximum_is_configurable() {
    let app = spawn_app_with(|config| config.credit.max_topup_cents = 50).await;
    let id = id_of(&app.create_customer().await);

    assert_problem(
        app.top_up(&id, &json!({"amount_cents": 51}), None).await,
        422,
    )
    .await;
    assert_eq!(
        app.top_up(&id, &json!({"amount_cents": 50}), None)
            .await
            .status(),
        200
    );
}
