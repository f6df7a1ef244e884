use crate::helpers::{assert_problem, book, etag_of, id_of, spawn_app};

#[tokio::test]
async fn fetching_a_book_returns_it_with_its_version_as_etag() {
    let app = spawn_app().await;
    let created = app.create_book(&book(1)).await;
    let response = app.get_book(&id_of(&created)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(etag_of(&response), "\"1\"");
    assert_eq!(
        response.json::<serde_json::Value>().await.expect("Book"),
        created
    );
}

#[tokio::test]
async fn fetching_an_unknown_book_is_a_404_problem() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    assert_problem(app.get_book(&id).await, 404).await;
}

#[tokio::test]
async fn fetching_with_a_malformed_id_is_a_400_problem() {
    let app = spawn_app().await;
    for id in [
        "42",
        "not-a-uuid",
        "%00",
        "0193a6f2-zzzz-7000-8000-000000000000",
    ] {
        assert_problem(app.get_book(id).await, 400).await;
    }
}

#[tokio::test]
async fn an_unknown_route_or_method_is_a_problem_too() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/bookz"))
        .send()
        .await
        .expect("GET");
    assert_problem(response, 404).await;
    let response = app
        .client
        .patch(app.url("/api/books"))
        .send()
        .await
        .expect("PATCH");
    assert_problem(response, 405).await;
}
