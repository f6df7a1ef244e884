use std::time::Duration;

use crate::helpers::{assert_problem, book, id_of, spawn_app};

#[tokio::test]
async fn readiness_is_200_while_the_database_answers() {
    let app = spawn_app().await;
    assert_eq!(app.get_text("/health/live").await.0, 200);
    assert_eq!(app.get_text("/health/ready").await.0, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_never_by_raw_id() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_eq!(app.get_book(&id).await.status(), 200);
    let (status, metrics) = app.get_text("/metrics").await;
    assert_eq!(status, 200);
    // Other tests share the process-wide recorder, so look for this request's series only.
    let series = "route=\"/api/books/{id}\",status=\"200\"";
    let counted = metrics.lines().any(|l| {
        l.starts_with("http_requests_total") && l.contains("method=\"GET\"") && l.contains(series)
    });
    assert!(
        counted,
        "no GET /api/books/{{id}} in http_requests_total:\n{metrics}"
    );
    assert!(!metrics.contains(&id), "a raw id leaked into the metrics");
}

#[tokio::test]
async fn while_the_database_is_down_requests_are_503_not_500() {
    let mut app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    app.pg
        .server_mut()
        .process_mut()
        .stop(Duration::from_secs(10))
        .await
        .expect("stop PostgreSQL");
    assert_problem(app.get_book(&id).await, 503).await;
    assert_problem(app.list_books(&[]).await, 503).await;
    assert_problem(app.post_book(&book(2)).await, 503).await;
    assert_eq!(app.get_text("/health/ready").await.0, 503);
}
