//! Logging in, and who may read or change which customer and order. The service checks every token
//! itself, so a request that bypasses the gateway is checked just the same.

use std::time::{Duration, Instant};

use platform::auth::Role;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    ADMIN_EMAIL, ADMIN_PASSWORD, CUSTOMER_PASSWORD, TestApp, TestOrder, assert_problem, bearer,
    bearer_of, error_fields, id_of, spawn_app,
};

/// Logs in and returns the `Authorization` value for the token.
async fn bearer_from_login(app: &TestApp, email: &str, password: &str) -> String {
    let response = app.log_in(email, password).await;
    assert_eq!(response.status(), 200, "login as {email}");
    let body: Value = response.json().await.expect("JSON");
    format!("Bearer {}", body["access_token"].as_str().expect("a token"))
}

#[tokio::test]
async fn customers_and_the_admin_log_in_and_get_a_bearer_token() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let email = customer["email"].as_str().expect("email").to_uppercase();

    let response = app.log_in(&format!("  {email} "), CUSTOMER_PASSWORD).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let own = app
        .get_as(
            &format!("/api/customers/{}", id_of(&customer)),
            Some(&format!("Bearer {token}")),
        )
        .await;
    assert_eq!(own.status(), 200);

    let admin = bearer_from_login(&app, "Admin@Bookstore.Local", ADMIN_PASSWORD).await;
    let any = app
        .get_as(
            &format!("/api/customers/{}", id_of(&customer)),
            Some(&admin),
        )
        .await;
    assert_eq!(any.status(), 200);
}

#[tokio::test]
async fn every_failed_login_is_the_same_401() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let email = customer["email"].as_str().expect("email");
    let mut answers = Vec::new();
    for (email, password) in [
        (email, "wrong horse"),
        ("nobody@example.com", CUSTOMER_PASSWORD),
        (ADMIN_EMAIL, "not the admin password"),
        (email, &"x".repeat(200)),
        ("not even an email", "whatever"),
    ] {
        let response = app.log_in(email, password).await;
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"bookstore\""
        );
        let problem = assert_problem(response, 401).await;
        assert!(!problem.to_string().contains(password));
        answers.push(problem);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "the answers differ: {answers:?}"
    );
}

#[tokio::test]
async fn an_unknown_email_takes_about_as_long_as_a_wrong_password() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let email = customer["email"].as_str().expect("email").to_owned();
    let fastest = |durations: Vec<Duration>| durations.into_iter().min().unwrap_or_default();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(app.log_in(&email, "wrong horse").await.status(), 401);
        known.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(
            app.log_in("nobody@example.com", "wrong horse")
                .await
                .status(),
            401
        );
        unknown.push(started.elapsed());
    }
    let (known, unknown) = (fastest(known), fastest(unknown));
    // Without the dummy verification an unknown email would answer in a fraction of a hash's time.
    assert!(
        unknown * 3 >= known,
        "unknown email {unknown:?} vs wrong password {known:?}"
    );
}

#[tokio::test]
async fn login_bodies_are_validated_like_every_other_body() {
    let app = spawn_app().await;
    let response = app
        .post_as(
            "/api/auth/token",
            &json!({"email": " ", "password": ""}),
            None,
        )
        .await;
    let problem = assert_problem(response, 422).await;
    assert_eq!(error_fields(&problem), ["email", "password"]);
    for body in [
        json!({"email": "a@b.co"}),
        json!({"email": "a@b.co", "password": "x", "role": "admin"}),
        json!({"email": 1, "password": "x"}),
        json!(["a@b.co", "x"]),
    ] {
        let response = app.post_as("/api/auth/token", &body, None).await;
        assert_problem(response, 422).await;
    }
    let response = app
        .post_raw("/api/auth/token", Some("application/json"), "{\"email\":")
        .await;
    assert_problem(response, 400).await;
}

#[tokio::test]
async fn a_customer_reads_and_changes_only_their_own_record_and_orders() {
    let app = spawn_app().await;
    let (alice, bob) = (app.create_customer().await, app.create_customer().await);
    let (alice_auth, bob_auth) = (bearer_of(&alice), bearer_of(&bob));
    let admin = bearer("admin", Role::Admin);
    let order = app
        .insert_order(&TestOrder::committed(
            &alice,
            vec![(Uuid::new_v4(), 1, 500)],
        ))
        .await;
    let id = id_of(&alice);
    let unknown = Uuid::new_v4();

    let cases: Vec<(String, [u16; 4])> = vec![
        // path → [anonymous, alice, bob, admin]
        (format!("/api/customers/{id}"), [401, 200, 403, 200]),
        (format!("/api/customers/{id}/orders"), [401, 200, 403, 200]),
        (format!("/api/orders/{order}"), [401, 200, 403, 200]),
        (format!("/api/customers/{unknown}"), [401, 403, 403, 404]),
        (format!("/api/orders/{unknown}"), [401, 404, 404, 404]),
    ];
    for (path, expected) in &cases {
        for (who, status) in [None, Some(&alice_auth), Some(&bob_auth), Some(&admin)]
            .into_iter()
            .zip(expected)
        {
            let response = app.get_as(path, who.map(String::as_str)).await;
            assert_eq!(
                response.status().as_u16(),
                *status,
                "GET {path} as {}",
                describe(who, &alice_auth, &bob_auth)
            );
        }
    }

    let credit = format!("/api/customers/{id}/credit");
    let body = json!({"amount_cents": 100});
    for (who, status) in [
        (None, 401),
        (Some(&bob_auth), 403),
        (Some(&alice_auth), 200),
        (Some(&admin), 200),
    ] {
        let response = app.post_as(&credit, &body, who.map(String::as_str)).await;
        assert_eq!(response.status().as_u16(), status, "top-up as {who:?}");
    }
    assert_eq!(
        app.credit_of(&id).await,
        200,
        "only the allowed top-ups counted"
    );
    // Bob is refused before his (invalid) body is even looked at.
    let refused = app
        .post_as(&credit, &json!({"amount_cents": -5}), Some(&bob_auth))
        .await;
    assert_problem(refused, 403).await;
}

fn describe(who: Option<&String>, alice: &str, bob: &str) -> &'static str {
    match who.map(String::as_str) {
        None => "anonymous",
        Some(a) if a == alice => "the customer",
        Some(b) if b == bob => "another customer",
        Some(_) => "the admin",
    }
}

#[tokio::test]
async fn identity_headers_sent_by_clients_count_for_nothing() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let path = format!("/api/customers/{}", id_of(&customer));
    let response = app
        .anonymous
        .get(app.url(&path))
        .header("x-user-id", id_of(&customer))
        .header("x-identity-role", "admin")
        .header("x-internal-token", "orders-tests-internal-token")
        .send()
        .await
        .expect("GET");
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn a_token_for_a_customer_that_is_not_a_uuid_owns_nothing() {
    let app = spawn_app().await;
    let customer = app.create_customer().await;
    let odd = bearer("not-a-uuid", Role::Customer);
    let response = app
        .get_as(&format!("/api/customers/{}", id_of(&customer)), Some(&odd))
        .await;
    assert_problem(response, 403).await;
}
