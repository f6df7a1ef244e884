use serde_json::Value;

use crate::helpers::{assert_problem, book, id_of, spawn_app};

#[tokio::test]
async fn a_deleted_book_is_hidden_from_every_read_and_write() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    app.create_book(&book(2)).await;
    assert_eq!(app.delete_book(&id, None).await.status(), 204);

    assert_problem(app.get_book(&id).await, 404).await;
    assert_problem(app.put_book(&id, Some("\"2\""), &book(1)).await, 404).await;
    for params in [vec![], vec![("q", "Book")], vec![("author", "Ann Author")]] {
        let (items, _) = app.list_all(&params).await;
        assert!(
            items.iter().all(|b| id_of(b) != id),
            "listed after delete: {params:?}"
        );
        assert_eq!(items.len(), 1);
    }
}

#[tokio::test]
async fn a_deleted_book_stays_in_the_database_for_order_history() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_eq!(app.delete_book(&id, None).await.status(), 204);
    let pool = sqlx::PgPool::connect(&app.db_url).await.expect("connect");
    let (deleted, version): (bool, i64) =
        sqlx::query_as("SELECT deleted_at IS NOT NULL, version FROM books WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .expect("the row is kept");
    assert!(deleted);
    assert_eq!(version, 2, "a delete is a change the warehouse can see");
}

#[tokio::test]
async fn deleting_twice_or_an_unknown_or_malformed_id_fails_cleanly() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_eq!(app.delete_book(&id, None).await.status(), 204);
    assert_problem(app.delete_book(&id, None).await, 404).await;
    assert_problem(app.delete_book(&id, Some("\"1\"")).await, 404).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_problem(app.delete_book(&unknown, None).await, 404).await;
    assert_problem(app.delete_book("42", None).await, 400).await;
}

#[tokio::test]
async fn deleting_with_if_match_requires_the_current_version() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_eq!(
        app.put_book(&id, Some("\"1\""), &book(1)).await.status(),
        200
    );
    assert_problem(app.delete_book(&id, Some("\"1\"")).await, 412).await;
    assert_problem(app.delete_book(&id, Some("garbage")).await, 400).await;
    assert_eq!(app.get_book(&id).await.status(), 200, "still there");
    assert_eq!(app.delete_book(&id, Some("W/\"2\"")).await.status(), 204);
}

#[tokio::test]
async fn a_deleted_books_isbn_can_be_used_again() {
    let app = spawn_app().await;
    let old = id_of(&app.create_book(&book(1)).await);
    assert_eq!(app.delete_book(&old, None).await.status(), 204);
    let new: Value = app.create_book(&book(1)).await;
    assert_ne!(id_of(&new), old);
    // And a second live copy is still refused.
    assert_problem(app.post_book(&book(1)).await, 409).await;
}
