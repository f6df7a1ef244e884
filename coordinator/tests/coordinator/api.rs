use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{INTERNAL_TOKEN, TestCoordinator, gid, submission, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_a_gxid_is_idempotent_and_a_different_body_is_refused() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let other = world.coordinator().await;
    let gxid = Uuid::now_v7();
    let body = submission(gxid, "2pc", 2, 2);

    let (status, first) = coordinator.submit(&body).await;
    assert_eq!(
        (status, &first["state"]),
        (StatusCode::OK, &json!("committed"))
    );
    // Again, to the same and to another coordinator, with another wait: the same transaction.
    let mut again = body.clone();
    again["wait_ms"] = json!(0);
    for c in [&coordinator, &other] {
        let (status, second) = c.submit(&again).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(second, first);
    }
    assert_eq!(world.alpha.stock("widget").await, 8, "applied once");
    assert_eq!(
        world.alpha.observer.count("prepare", &gid(gxid, "take_a")),
        1
    );

    // The same gxid with another payload, mode or timeout: 422, and nothing changes.
    let mut payload = body.clone();
    payload["branches"][0]["payload"]["quantity"] = json!(3);
    let mut mode = body.clone();
    mode["mode"] = json!("saga");
    let mut timeout = body.clone();
    timeout["timeout_ms"] = json!(4000);
    for changed in [payload, mode, timeout] {
        let (status, problem) = coordinator.submit(&changed).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["type"], "/problems/validation");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("gxid")),
            "{problem}"
        );
    }
    assert_eq!(coordinator.get(gxid).await.1, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_not_final_after_wait_ms_is_answered_202_and_finishes_anyway() {
    let world = world().await;
    let mut config = world.config();
    config.coordinator.participant_timeout_ms = 3000;
    let coordinator = TestCoordinator::start(config).await;
    world
        .alpha
        .observer
        .commit_delay_ms
        .store(1500, std::sync::atomic::Ordering::SeqCst);
    let gxid = Uuid::now_v7();
    let mut body = submission(gxid, "2pc", 1, 1);
    body["wait_ms"] = json!(100);

    let (status, answer) = coordinator.submit(&body).await;

    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["final"], false);
    assert!(
        answer["state"] == "preparing" || answer["state"] == "committing",
        "{answer}"
    );
    let (status, read) = coordinator.get(gxid).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{read}");
    assert_eq!(read["final"], false);
    // A resubmission waits (for as long as it says) and gets the final answer.
    body["wait_ms"] = json!(5000);
    let (status, done) = coordinator.submit(&body).await;
    assert_eq!(
        (status, &done["state"]),
        (StatusCode::OK, &json!("committed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_never_a_500() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let http = reqwest::Client::new();
    let post = |body: String, token: Option<&str>| {
        let mut request = http
            .post(coordinator.url("/internal/transactions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.header("x-internal-token", token);
        }
        request.send()
    };
    let valid = submission(Uuid::now_v7(), "2pc", 1, 1);

    // Without or with a wrong internal token: 401, whatever the body.
    for token in [None, Some("wrong")] {
        let response = post(valid.to_string(), token).await.expect("answer");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut edit = |f: &dyn Fn(&mut Value), field: &'static str| {
        let mut body = valid.clone();
        f(&mut body);
        cases.push((body, field));
    };
    edit(&|b| b["gxid"] = json!("not-a-uuid"), "gxid");
    edit(&|b| b["mode"] = json!("3pc"), "mode");
    edit(&|b| b["branches"] = json!([]), "branches");
    edit(
        &|b| b["branches"][0]["service"] = json!("nowhere"),
        "branches[0].service",
    );
    edit(
        &|b| b["branches"][1]["branch"] = json!("take_a"),
        "branches[1].branch",
    );
    edit(
        &|b| b["branches"][0]["branch"] = json!("Bad Name"),
        "branches[0].branch",
    );
    edit(&|b| b["timeout_ms"] = json!(0), "timeout_ms");
    edit(&|b| b["timeout_ms"] = json!(-5), "timeout_ms");
    edit(&|b| b["wait_ms"] = json!(10_000_000), "wait_ms");
    edit(&|b| b["surprise"] = json!(1), "surprise");
    for (body, field) in cases {
        let response = post(body.to_string(), Some(INTERNAL_TOKEN))
            .await
            .expect("answer");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {body}"
        );
        let problem: Value = response.json().await.expect("problem+json");
        let text = problem.to_string();
        assert!(text.contains(field), "{field} is named: {text}");
    }
    let response = post("{not json".into(), Some(INTERNAL_TOKEN))
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let (status, _) = coordinator.get(Uuid::now_v7()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = http
        .get(coordinator.url("/internal/transactions/12345"))
        .header("x-internal-token", INTERNAL_TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Nothing reached a participant.
    assert_eq!(world.alpha.stock("widget").await, 10);
    // The platform's operations routes are there.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let response = http
            .get(coordinator.url(path))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}
