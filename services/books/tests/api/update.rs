use serde_json::{Value, json};

use crate::helpers::{assert_problem, book, etag_of, fields_of, id_of, spawn_app};

#[tokio::test]
async fn updating_with_the_current_etag_bumps_version_and_updated_at() {
    let app = spawn_app().await;
    let created = app.create_book(&book(1)).await;
    let id = id_of(&created);
    let mut changes = book(1);
    changes["title"] = json!("A New Title");
    changes["stock"] = json!(0);
    let response = app.put_book(&id, Some("\"1\""), &changes).await;
    assert_eq!(response.status(), 200);
    assert_eq!(etag_of(&response), "\"2\"");
    let updated: Value = response.json().await.expect("Book");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["title"], "A New Title");
    assert_eq!(updated["stock"], 0);
    let at = |b: &Value| {
        b["updated_at"]
            .as_str()
            .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    assert!(at(&updated) > at(&created), "{created} then {updated}");
    let fetched: Value = app.get_book(&id).await.json().await.expect("Book");
    assert_eq!(fetched, updated);
}

#[tokio::test]
async fn weak_and_bare_if_match_versions_are_accepted() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    for (if_match, next) in [("W/\"1\"", 2), ("2", 3), ("\"3\"", 4)] {
        let response = app.put_book(&id, Some(if_match), &book(1)).await;
        assert_eq!(response.status(), 200, "If-Match: {if_match}");
        assert_eq!(etag_of(&response), format!("\"{next}\""));
    }
}

#[tokio::test]
async fn updating_without_if_match_is_a_428() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_problem(app.put_book(&id, None, &book(1)).await, 428).await;
}

#[tokio::test]
async fn updating_with_a_garbage_if_match_is_a_400() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    for garbage in [
        "abc",
        "*",
        "\"1",
        "\"1\", \"2\"",
        "\"-1\"",
        "1.0",
        "99999999999999999999",
    ] {
        let problem = assert_problem(app.put_book(&id, Some(garbage), &book(1)).await, 400).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("If-Match")
        );
    }
}

#[tokio::test]
async fn updating_with_a_stale_if_match_is_a_412_naming_the_current_version() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    assert_eq!(
        app.put_book(&id, Some("\"1\""), &book(1)).await.status(),
        200
    );
    let mut late = book(1);
    late["title"] = json!("Lost Update");
    let problem = assert_problem(app.put_book(&id, Some("\"1\""), &late).await, 412).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("version 2")
    );
    let fetched: Value = app.get_book(&id).await.json().await.expect("Book");
    assert_eq!(
        fetched["title"], "Book 001",
        "the stale write changed nothing"
    );
}

#[tokio::test]
async fn updating_an_unknown_or_malformed_id_is_404_or_400() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_problem(app.put_book(&unknown, Some("\"1\""), &book(1)).await, 404).await;
    assert_problem(app.put_book("nope", Some("\"1\""), &book(1)).await, 400).await;
}

#[tokio::test]
async fn updating_to_another_books_isbn_is_a_409() {
    let app = spawn_app().await;
    app.create_book(&book(1)).await;
    let id = id_of(&app.create_book(&book(2)).await);
    let problem = assert_problem(app.put_book(&id, Some("\"1\""), &book(1)).await, 409).await;
    let isbn = book(1)["isbn"].as_str().unwrap_or_default().to_owned();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&isbn)
    );
}

#[tokio::test]
async fn updating_with_an_invalid_body_is_a_422_naming_every_field() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    let body = json!({
        "isbn": "123", "title": " ", "author": "A", "genre": "G", "price_cents": -5, "stock": 1
    });
    let problem = assert_problem(app.put_book(&id, Some("\"1\""), &body).await, 422).await;
    assert_eq!(fields_of(&problem), ["isbn", "title", "price_cents"]);
    let mut unknown = book(1);
    unknown["id"] = json!(id);
    assert_problem(app.put_book(&id, Some("\"1\""), &unknown).await, 422).await;
}

#[tokio::test]
async fn concurrent_updates_with_the_same_etag_let_exactly_one_win() {
    let app = spawn_app().await;
    let id = id_of(&app.create_book(&book(1)).await);
    for round in 1..=5 {
        let if_match = format!("\"{round}\"");
        let mut a = book(1);
        a["title"] = json!(format!("A{round}"));
        let mut b = book(1);
        b["title"] = json!(format!("B{round}"));
        let (first, second) = tokio::join!(
            app.put_book(&id, Some(&if_match), &a),
            app.put_book(&id, Some(&if_match), &b)
        );
        let mut statuses = [first.status().as_u16(), second.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "round {round}");
    }
    let fetched: Value = app.get_book(&id).await.json().await.expect("Book");
    assert_eq!(fetched["version"], 6);
}
