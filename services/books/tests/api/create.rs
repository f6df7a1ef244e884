use serde_json::json;

use crate::helpers::{assert_problem, book, etag_of, isbn13, spawn_app};

#[tokio::test]
async fn creating_a_valid_book_returns_201_with_location_etag_and_the_book() {
    let app = spawn_app().await;
    let mut body = book(1);
    body["title"] = json!("  Dune  ");
    let response = app.post_book(&body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(etag_of(&response), "\"1\"");
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let created: serde_json::Value = response.json().await.expect("a Book");
    assert_eq!(
        location,
        format!("/api/books/{}", created["id"].as_str().expect("id"))
    );
    assert_eq!(created["isbn"], isbn13(1));
    assert_eq!(created["title"], "Dune", "titles are stored trimmed");
    assert_eq!(created["author"], "Ann Author");
    assert_eq!(created["genre"], "Fiction");
    assert_eq!(created["price_cents"], 1001);
    assert_eq!(created["stock"], 5);
    assert_eq!(created["version"], 1);
    assert_eq!(created["rating"], json!({"average": null, "count": 0}));
    assert!(created["updated_at"].is_string());

    let fetched = app
        .client
        .get(app.url(&location))
        .send()
        .await
        .expect("GET");
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        fetched.json::<serde_json::Value>().await.expect("Book"),
        created
    );
}

#[tokio::test]
async fn an_isbn10_with_hyphens_is_stored_as_its_isbn13() {
    let app = spawn_app().await;
    let mut body = book(1);
    body["isbn"] = json!("0-8044-2957-X");
    let created = app.create_book(&body).await;
    assert_eq!(created["isbn"], "9780804429573");
}

#[tokio::test]
async fn creating_a_book_with_a_taken_isbn_is_a_409_naming_the_isbn() {
    let app = spawn_app().await;
    let mut first = book(1);
    first["isbn"] = json!("978-0-306-40615-7");
    app.create_book(&first).await;
    // The same ISBN spelled as an ISBN-10 is the same book.
    for spelling in ["9780306406157", "0-306-40615-2"] {
        let mut second = book(2);
        second["isbn"] = json!(spelling);
        let problem = assert_problem(app.post_book(&second).await, 409).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("9780306406157"), "{detail}");
    }
}
