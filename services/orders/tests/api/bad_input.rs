//! Malformed requests: each gets a problem+json with the documented status, never a 500.

use serde_json::json;

use crate::helpers::{assert_problem, id_of, spawn_app};

const SIGN_UP: &str = "/api/customers";

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let id = id_of(&app.create_customer().await);
    // None of these names a field, so each fails as syntax before any field rule can apply.
    for body in ["{", "not json", "{'x': 1}", "", "nul", "{\""] {
        assert_problem(
            app.post_raw(SIGN_UP, Some("application/json"), body).await,
            400,
        )
        .await;
        let credit = format!("/api/customers/{id}/credit");
        assert_problem(
            app.post_raw(&credit, Some("application/json"), body).await,
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn wrongly_typed_fields_are_422() {
    let app = spawn_app().await;
    for body in [
        json!({"email": 5, "name": "Ada", "password": "correct horse"}),
        json!({"email": "ada@example.com", "name": ["Ada"], "password": "correct horse"}),
        json!({"email": "ada@example.com", "name": "Ada", "password": true}),
        json!(["ada@example.com", "Ada", "correct horse"]),
        json!("ada@example.com"),
        json!(null),
    ] {
        assert_problem(app.post_json(SIGN_UP, &body).await, 422).await;
    }
}

#[tokio::test]
async fn missing_fields_are_422() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({"email": "ada@example.com", "name": "Ada"}),
        json!({"name": "Ada", "password": "correct horse"}),
        json!({"email": null, "name": "Ada", "password": "correct horse"}),
    ] {
        assert_problem(app.post_json(SIGN_UP, &body).await, 422).await;
    }
}

#[tokio::test]
async fn unknown_fields_are_422() {
    let app = spawn_app().await;
    let body = json!({"email": "ada@example.com", "name": "Ada", "password": "correct horse", "role": "admin"});
    assert_problem(app.post_json(SIGN_UP, &body).await, 422).await;
    let id = id_of(&app.create_customer().await);
    let credit = format!("/api/customers/{id}/credit");
    let body = json!({"amount_cents": 100, "currency": "USD"});
    assert_problem(app.post_json(&credit, &body).await, 422).await;
    assert_eq!(app.credit_of(&id).await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_declared_as_json_is_415() {
    let app = spawn_app().await;
    let body = r#"{"email": "ada@example.com", "name": "Ada", "password": "correct horse"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        assert_problem(app.post_raw(SIGN_UP, content_type, body).await, 415).await;
    }
}

#[tokio::test]
async fn an_oversize_body_is_413() {
    let app = spawn_app().await;
    let body = json!({"email": "ada@example.com", "name": "x".repeat(100 * 1024), "password": "correct horse"});

    assert_problem(app.post_json(SIGN_UP, &body).await, 413).await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems_too() {
    let app = spawn_app().await;
    assert_problem(app.get("/api/customer").await, 404).await;
    let response = app
        .client
        .delete(app.url("/api/customers"))
        .send()
        .await
        .expect("sent");
    assert_problem(response, 405).await;
}
