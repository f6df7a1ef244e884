//! Who may do what to the catalog: anyone reads, only the admin writes. The service checks the token
//! itself, so a request that bypasses the gateway is checked just the same.

use platform::auth::{AuthConfig, Role, TokenIssuer};
use reqwest::Method;

use crate::helpers::{
    admin_bearer, assert_problem, auth_config, book, customer_bearer, etag_of, id_of, spawn_app,
};

/// Sends `method path` with `authorization` (if any) and a valid book body on writes.
async fn send(
    app: &crate::helpers::TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method.clone(), app.url(path));
    if method == Method::POST || method == Method::PUT {
        request = request.json(&book(99));
    }
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(version) = if_match {
        request = request.header("if-match", version);
    }
    request.send().await.expect("request sent")
}

#[tokio::test]
async fn anyone_reads_but_only_the_admin_writes() {
    let app = spawn_app().await;
    let created = app.post_book(&book(1)).await;
    let etag = etag_of(&created);
    let id = id_of(&created.json().await.expect("a Book"));
    let one = format!("/api/books/{id}");
    let (admin, customer) = (admin_bearer(), customer_bearer());

    for path in ["/api/books", one.as_str()] {
        for who in [None, Some(customer.as_str()), Some(admin.as_str())] {
            let response = send(&app, Method::GET, path, who, None).await;
            assert_eq!(response.status(), 200, "GET {path} as {who:?}");
        }
    }
    for (method, path) in [
        (Method::POST, "/api/books"),
        (Method::PUT, one.as_str()),
        (Method::DELETE, one.as_str()),
    ] {
        let anonymous = send(&app, method.clone(), path, None, Some(&etag)).await;
        assert_eq!(
            anonymous.headers()["www-authenticate"],
            "Bearer realm=\"bookstore\""
        );
        assert_problem(anonymous, 401).await;
        let response = send(&app, method.clone(), path, Some(&customer), Some(&etag)).await;
        assert_problem(response, 403).await;
    }
    assert_eq!(
        app.get_book(&id).await.status(),
        200,
        "no refused write changed anything"
    );
    let put = send(&app, Method::PUT, &one, Some(&admin), Some(&etag)).await;
    assert_eq!(put.status(), 200);
    let delete = send(&app, Method::DELETE, &one, Some(&admin), None).await;
    assert_eq!(delete.status(), 204);
}

#[tokio::test]
async fn a_customer_is_refused_before_the_body_is_read() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/books"))
        .header("authorization", customer_bearer())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_problem(response, 403).await;
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_401_even_on_public_reads() {
    let app = spawn_app().await;
    let foreign = TokenIssuer::new(&AuthConfig {
        jwt_secret: "some-other-platform-key-0123456789abcdef".into(),
        ..auth_config()
    })
    .expect("valid")
    .issue("admin", Role::Admin)
    .expect("signed")
    .access_token;
    let expired = TokenIssuer::new(&auth_config())
        .expect("valid")
        .issue_at("admin", Role::Admin, unix_now() - 3600)
        .expect("signed")
        .access_token;
    for (name, value) in [
        ("foreign key", format!("Bearer {foreign}")),
        ("expired", format!("Bearer {expired}")),
        ("not a bearer", "Basic YWRtaW46YWRtaW4=".to_owned()),
        ("garbage", "Bearer abc.def.ghi".to_owned()),
    ] {
        for method in [Method::GET, Method::POST] {
            let response = send(&app, method.clone(), "/api/books", Some(&value), None).await;
            let problem = assert_problem(response, 401).await;
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                !detail.contains(&foreign) && !detail.contains(&expired),
                "{name}: the detail echoes the token"
            );
        }
    }
}

#[tokio::test]
async fn the_service_refuses_to_start_without_a_long_enough_signing_key() {
    for secret in ["", "too-short-for-hs256"] {
        let config = books::Config {
            auth: AuthConfig {
                jwt_secret: secret.into(),
                ..AuthConfig::default()
            },
            ..books::Config::default()
        };
        let err = books::Application::build(config).await.err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("auth.jwt_secret"), "{message}");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
