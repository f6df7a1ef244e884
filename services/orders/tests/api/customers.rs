use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{assert_problem, id_of, spawn_app};

#[tokio::test]
async fn a_customer_can_be_read_back_by_id() {
    let app = spawn_app().await;
    let created = app.create_customer().await;

    let response = app
        .get(&format!("/api/customers/{}", id_of(&created)))
        .await;

    assert_eq!(response.status(), 200);
    let fetched: Value = response.json().await.expect("JSON");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn an_unknown_customer_is_404() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    for path in [
        format!("/api/customers/{id}"),
        format!("/api/customers/{id}/orders"),
    ] {
        assert_problem(app.get(&path).await, 404).await;
    }
    let response = app
        .top_up(
            &id.to_string(),
            &serde_json::json!({"amount_cents": 100}),
            None,
        )
        .await;
    assert_problem(response, 404).await;
}

#[tokio::test]
async fn a_malformed_customer_id_is_400() {
    let app = spawn_app().await;
    for id in ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"] {
        for path in [
            format!("/api/customers/{id}"),
            format!("/api/customers/{id}/orders"),
        ] {
            assert_problem(app.get(&path).await, 400).await;
        }
        let response = app
            .top_up(id, &serde_json::json!({"amount_cents": 100}), None)
            .await;
        assert_problem(response, 400).await;
    }
}

#[tokio::test]
async fn the_service_is_ready_while_its_database_answers_and_503_without_it() {
    let mut app = spawn_app().await;
    let customer = app.create_customer().await;
    assert_eq!(app.get("/health/ready").await.status(), 200);

    app.db.close().await;
    app.stop_database();
    assert!(
        <sqlx::PgConnection as sqlx::Connection>::connect(&app.db_url)
            .await
            .is_err(),
        "the database is down"
    );

    assert_eq!(app.get("/health/ready").await.status(), 503);
    let response = app
        .get(&format!("/api/customers/{}", id_of(&customer)))
        .await;
    let problem = assert_problem(response, 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("database")
    );
}
