//! Every kind of bad body: each must be a problem+json with a detail, and never a 500.

use serde_json::{Value, json};

use crate::helpers::{admin_bearer, assert_problem, book, fields_of, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    for body in ["{", "{\"isbn\": }", "not json", "{\"title\": \"x\",}", ""] {
        assert_problem(app.post_raw(body, "application/json").await, 400).await;
    }
}

#[tokio::test]
async fn wrong_json_types_are_a_422() {
    let app = spawn_app().await;
    for (field, value) in [
        ("price_cents", json!("1000")),
        ("stock", json!(true)),
        ("title", json!(5)),
        ("isbn", Value::Null),
        ("author", json!(["a"])),
        ("genre", json!({"name": "x"})),
    ] {
        let mut body = book(1);
        body[field] = value;
        assert_problem(app.post_book(&body).await, 422).await;
    }
    for body in [json!([]), json!("book"), json!(null), json!(42)] {
        assert_problem(app.post_book(&body).await, 422).await;
    }
}

#[tokio::test]
async fn missing_and_unknown_fields_are_a_422() {
    let app = spawn_app().await;
    for field in ["isbn", "title", "author", "genre", "price_cents", "stock"] {
        let mut body = book(1);
        body.as_object_mut().map(|o| o.remove(field));
        let problem = assert_problem(app.post_book(&body).await, 422).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(field)
        );
    }
    let mut body = book(1);
    body["prise_cents"] = json!(1);
    assert_problem(app.post_book(&body).await, 422).await;
}

#[tokio::test]
async fn negative_huge_and_fractional_numbers_are_a_422_naming_the_field() {
    let app = spawn_app().await;
    for field in ["price_cents", "stock"] {
        for raw in [
            "-1",
            "1e30",
            "9223372036854775808",
            "18446744073709551616",
            "1.5",
            "100000001",
            "-9223372036854775809",
        ] {
            let body = book(1).to_string().replace(
                &format!("\"{field}\":{}", book(1)[field]),
                &format!("\"{field}\":{raw}"),
            );
            assert!(body.contains(raw), "{body}");
            let response = app.post_raw(body, "application/json").await;
            let problem = assert_problem(response, 422).await;
            let named = fields_of(&problem).contains(&field.to_string())
                || problem["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(field);
            assert!(named, "{field}={raw}: {problem}");
        }
    }
    // Beyond f64, serde_json's parser itself gives up: a syntax error (400), still never a 500.
    let beyond_f64 = book(1).to_string().replace(":1001,", ":1e400,");
    assert_problem(app.post_raw(beyond_f64, "application/json").await, 400).await;
    let mut stock_too_big = book(1);
    stock_too_big["stock"] = json!(1_000_001);
    assert_eq!(
        fields_of(&assert_problem(app.post_book(&stock_too_big).await, 422).await),
        ["stock"]
    );
}

#[tokio::test]
async fn an_isbn_with_a_wrong_check_digit_or_shape_is_a_422() {
    let app = spawn_app().await;
    for isbn in [
        "978-0-306-40615-8",
        "0306406153",
        "12345",
        "978030640615X",
        "abc",
        "",
    ] {
        let mut body = book(1);
        body["isbn"] = json!(isbn);
        let problem = assert_problem(app.post_book(&body).await, 422).await;
        assert_eq!(fields_of(&problem), ["isbn"], "{isbn}");
    }
}

#[tokio::test]
async fn empty_and_too_long_strings_are_a_422_naming_every_field_at_once() {
    let app = spawn_app().await;
    let body = json!({
        "isbn": "", "title": "x".repeat(301), "author": "  ", "genre": "g".repeat(65),
        "price_cents": -1, "stock": -1
    });
    let problem = assert_problem(app.post_book(&body).await, 422).await;
    assert_eq!(
        fields_of(&problem),
        ["isbn", "title", "author", "genre", "price_cents", "stock"]
    );
    let mut nul = book(1);
    nul["title"] = json!("nul\u{0}byte");
    assert_eq!(
        fields_of(&assert_problem(app.post_book(&nul).await, 422).await),
        ["title"]
    );
    let mut longest = book(1);
    longest["title"] = json!("é".repeat(300));
    longest["author"] = json!("a".repeat(200));
    longest["genre"] = json!("g".repeat(64));
    app.create_book(&longest).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = spawn_app_with(|config| config.http.body_limit_bytes = 1024).await;
    let mut body = book(1);
    body["title"] = json!("x".repeat(2000));
    assert_problem(app.post_book(&body).await, 413).await;
    body["title"] = json!("x".repeat(4 << 20));
    assert_problem(app.post_book(&body).await, 413).await;
    assert_eq!(
        app.post_book(&book(1)).await.status(),
        201,
        "a small body still works"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = spawn_app().await;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let response = app.post_raw(book(1).to_string(), content_type).await;
        assert_problem(response, 415).await;
    }
    let response = app
        .client
        .post(app.url("/api/books"))
        .header("authorization", admin_bearer())
        .body(book(1).to_string())
        .send()
        .await
        .expect("POST");
    assert_problem(response, 415).await;
}
