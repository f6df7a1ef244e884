//! The OpenAPI description (`api/openapi.json`) says exactly what is served: every public route
//! the services and the gateway register (read from their sources) is described, with its methods,
//! and nothing else is; every described `/api` path is routed by the gateway's route table to the
//! service that serves it, and every route of the table has described paths. The gateway serves
//! the description at `/openapi.json` and an offline page at `/docs`; a third-party validator
//! accepts it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gateway::config::Config;
use gateway::routes::RouteTable;
use gateway::upstreams::Upstreams;
use serde_json::Value;
use tower::ServiceExt;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn spec() -> Value {
    serde_json::from_str(gateway::api_docs::OPENAPI).expect("api/openapi.json is JSON")
}

/// (method, path) of every operation the description has.
fn described(spec: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_owned(), path.clone()));
            }
        }
    }
    operations
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// (method, path) of every `.route("<path>", get(…).post(…))` in `source` outside its tests.
fn routes_in(source: &str) -> BTreeSet<(String, String)> {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut routes = BTreeSet::new();
    for (at, _) in source.match_indices(".route(") {
        let rest = &source[at + ".route(".len()..];
        let Some(path) = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        // The handlers: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let handlers = &rest[..end];
        for method in METHODS {
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// Every public route registered in the sources, by the crate directory that registers it.
fn served() -> BTreeMap<(String, String), String> {
    let mut served = BTreeMap::new();
    for dir in [
        "services/books",
        "services/orders",
        "warehouse",
        "gateway",
        "platform",
    ] {
        let mut files = Vec::new();
        rust_files(&root().join(dir).join("src"), &mut files);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap_or_default();
            for route in routes_in(&source) {
                if !route.1.starts_with("/internal/") {
                    served.insert(route, dir.to_owned());
                }
            }
        }
    }
    served
}

#[test]
fn the_route_reader_finds_methods_and_skips_tests() {
    let source = r#"
        Router::new().route("/a/{id}", get(one).put(two).delete(three))
            .route(
                "/b",
                post(make).with_state(x),
            );
        #[cfg(test)]
        mod tests { fn f() { Router::new().route("/c", get(x)); } }
    "#;
    let found: Vec<(String, String)> = routes_in(source).into_iter().collect();
    let expected = [
        ("delete", "/a/{id}"),
        ("get", "/a/{id}"),
        ("post", "/b"),
        ("put", "/a/{id}"),
    ]
    .map(|(m, p)| (m.to_owned(), p.to_owned()));
    assert_eq!(found, expected);
}

#[test]
fn every_served_route_is_described_and_every_described_route_is_served() {
    let served = served();
    assert!(served.len() > 10, "too few routes read: {served:?}");
    let served_set: BTreeSet<_> = served.keys().cloned().collect();
    let described = described(&spec());
    let undescribed: Vec<_> = served_set.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served_set).collect();
    assert!(
        undescribed.is_empty(),
        "served but not in gateway/api/openapi.json: {undescribed:?}"
    );
    assert!(
        unserved.is_empty(),
        "in gateway/api/openapi.json but served by nothing: {unserved:?}"
    );
}

#[test]
fn the_gateway_routes_every_described_api_path_to_the_service_that_serves_it() {
    let config = Config::default();
    let table = RouteTable::new(&config.routes).expect("the default routes are valid");
    let served = served();
    for ((method, path), dir) in &served {
        if !path.starts_with("/api/") {
            continue;
        }
        let service = table.resolve(path);
        let expected = dir.strip_prefix("services/").or(Some(dir.as_str()));
        assert_eq!(service, expected, "{method} {path} (served by {dir})");
    }
    // And the other way: every prefix of the table leads to described paths.
    let described = described(&spec());
    for route in &config.routes {
        assert!(
            described.iter().any(|(_, path)| path == &route.prefix
                || path.starts_with(&format!("{}/", route.prefix))),
            "the gateway routes {} to {}, and nothing under it is described",
            route.prefix,
            route.service
        );
    }
}

#[test]
fn the_description_is_openapi_3_1_with_an_operation_id_and_responses_for_each_operation() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }
}

async fn get(path: &str) -> (StatusCode, String, String) {
    let upstreams = Arc::new(Upstreams::fixed(Vec::new()));
    let mut config = Config::default();
    config.auth.jwt_secret = "a-test-secret-that-is-long-enough-for-hs256".into();
    let (router, _observed) = gateway::app(&config, upstreams).expect("gateway app");
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = router.oneshot(request).await.expect("an answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_gateway_serves_the_description_and_a_page_that_needs_nothing_from_elsewhere() {
    let (status, content_type, body) = get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    assert_eq!(serde_json::from_str::<Value>(&body).ok(), Some(spec()));

    let (status, content_type, page) = get("/docs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        !page.contains("__OPENAPI_SPEC__"),
        "the description was not built in"
    );
    assert!(
        page.contains("\"operationId\": \"checkout\""),
        "no description in the page"
    );
    for external in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
        "url(http",
    ] {
        assert!(
            !page.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
}

/// `openapi-spec-validator` (pip; `scripts/setup.sh --test` installs it) accepts the description.
#[test]
fn a_third_party_validator_accepts_the_description() {
    let file = root().join("gateway/api/openapi.json");
    let output = match std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "openapi-spec-validator is not installed, and CI is set: run scripts/setup.sh --test ({e})"
            );
            eprintln!(
                "SKIPPED: openapi-spec-validator is not installed (pip install openapi-spec-validator)"
            );
            return;
        }
    };
    assert!(
        output.status.success(),
        "openapi-spec-validator refused it:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
