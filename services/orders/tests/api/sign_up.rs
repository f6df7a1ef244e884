use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{assert_problem, error_fields, id_of, spawn_app};

#[tokio::test]
async fn signing_up_returns_201_with_the_customer_and_its_location() {
    let app = spawn_app().await;

    let response = app
        .sign_up(
            "  Ada.Lovelace@Example.COM ",
            "  Ada Lovelace ",
            "correct horse",
        )
        .await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let customer: Value = response.json().await.expect("JSON");
    assert_eq!(location, format!("/api/customers/{}", id_of(&customer)));
    assert_eq!(customer["email"], "ada.lovelace@example.com");
    assert_eq!(customer["name"], "Ada Lovelace");
    assert_eq!(customer["credit_cents"], 0);
    assert!(customer["created_at"].is_string());
    let mut keys: Vec<_> = customer
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "credit_cents", "email", "id", "name"]);
}

#[tokio::test]
async fn the_password_is_stored_as_an_argon2id_hash_and_never_returned() {
    let app = spawn_app().await;

    let response = app.sign_up("ada@example.com", "Ada", "correct horse").await;
    let text = response.text().await.expect("body");

    assert!(
        !text.contains("correct horse") && !text.contains("argon2"),
        "{text}"
    );
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM customers")
        .fetch_one(&app.db)
        .await
        .expect("one customer");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(
        orders::domain::verify_password("correct horse".into(), hash)
            .await
            .expect("verify")
    );
    let fetched = app
        .get(&format!(
            "/api/customers/{}",
            id_of(&serde_json::from_str(&text).expect("json"))
        ))
        .await;
    let fetched = fetched.text().await.expect("body");
    assert!(
        !fetched.contains("password") && !fetched.contains("argon2"),
        "{fetched}"
    );
}

#[tokio::test]
async fn signing_up_again_with_the_same_email_in_another_case_is_a_conflict() {
    let app = spawn_app().await;
    assert_eq!(
        app.sign_up("ada@example.com", "Ada", "correct horse")
            .await
            .status(),
        201
    );

    let response = app
        .sign_up("ADA@Example.com", "Other Ada", "another secret")
        .await;

    let problem = assert_problem(response, 409).await;
    assert_eq!(
        problem["detail"],
        "a customer with this email already exists"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = spawn_app().await;

    let response = app.sign_up("not-an-email", "   ", "short").await;

    let problem = assert_problem(response, 422).await;
    assert_eq!(error_fields(&problem), ["email", "name", "password"]);
}

#[tokio::test]
async fn invalid_emails_are_rejected_with_422_naming_the_email() {
    let app = spawn_app().await;
    let long_local = format!("{}@example.com", "a".repeat(65));
    let long_total = format!("a@{}.com", "b.".repeat(130));
    let cases = [
        ("", "empty"),
        ("   ", "blank"),
        ("plainaddress", "no @"),
        ("@example.com", "no local part"),
        ("ada@", "no domain"),
        ("ada@@example.com", "two @"),
        ("a@b@example.com", "two @ apart"),
        ("ada@localhost", "domain without a dot"),
        ("ada lovelace@example.com", "space in local part"),
        ("ada@exa mple.com", "space in domain"),
        ("ada@-example.com", "label starts with a hyphen"),
        ("ada@example..com", "empty label"),
        ("ada@exam_ple.com", "underscore in domain"),
        ("ada..l@example.com", "double dot in local part"),
        ("adä@example.com", "non-ASCII local part"),
        (long_local.as_str(), "local part over 64"),
        (long_total.as_str(), "over 254 in all"),
    ];
    for (email, why) in cases {
        let response = app.sign_up(email, "Ada", "correct horse").await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(error_fields(&problem), ["email"], "{why}: {email:?}");
    }
}

#[tokio::test]
async fn passwords_shorter_than_8_or_longer_than_128_characters_are_rejected() {
    let app = spawn_app().await;
    for password in [String::new(), "1234567".into(), "x".repeat(129)] {
        let response = app
            .sign_up(&format!("{}@example.com", Uuid::new_v4()), "Ada", &password)
            .await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(
            error_fields(&problem),
            ["password"],
            "{} characters",
            password.len()
        );
    }
}

#[tokio::test]
async fn names_that_are_blank_too_long_or_hold_control_characters_are_rejected() {
    let app = spawn_app().await;
    for name in [
        "".to_string(),
        " \t ".into(),
        "x".repeat(201),
        "Ada\u{0}".into(),
    ] {
        let response = app
            .post_json(
                "/api/customers",
                &json!({"email": "ada@example.com", "name": name, "password": "correct horse"}),
            )
            .await;
        let problem = assert_problem(response, 422).await;
        assert_eq!(error_fields(&problem), ["name"], "{name:?}");
    }
}
