use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{gid, submission, world};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_runs_every_action_and_completes() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();

    let (status, body) = coordinator.submit(&submission(gxid, "saga", 4, 5)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "completed");
    assert_eq!(body["mode"], "saga");
    assert_eq!(body["refusal"], json!(null));
    assert_eq!(body["branches"][0]["state"], "done");
    assert_eq!(body["branches"][1]["state"], "done");
    assert_eq!(world.alpha.stock("widget").await, 6);
    assert_eq!(world.beta.stock("gadget").await, 0);
    world.assert_nothing_prepared().await;
    assert_eq!(
        world
            .beta
            .observer
            .count("compensate", &gid(gxid, "take_b")),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_saga_step_is_compensated_with_every_earlier_step() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();

    // alpha's action takes 3 widgets; beta refuses 6 gadgets (5 left).
    let (status, body) = coordinator.submit(&submission(gxid, "saga", 3, 6)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "compensated");
    assert_eq!(body["reason"], "refused");
    assert_eq!(body["refusal"]["kind"], "insufficient-stock");
    assert_eq!(body["branches"][0]["state"], "compensated");
    assert_eq!(body["branches"][1]["state"], "compensated");
    assert_eq!(
        world.alpha.stock("widget").await,
        10,
        "the action was compensated"
    );
    assert_eq!(world.beta.stock("gadget").await, 5);
    // The refused step is compensated too (a null compensation that blocks a late action)…
    assert_eq!(
        world
            .beta
            .observer
            .count("compensate", &gid(gxid, "take_b")),
        1
    );
    let (status, late) = world
        .beta
        .call(
            "saga",
            &gid(gxid, "take_b"),
            "action",
            &json!({"item": "gadget", "quantity": 1}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a late action is blocked: {late}"
    );
    assert_eq!(world.beta.stock("gadget").await, 5);
    // …and so is alpha's action.
    assert_eq!(
        world
            .alpha
            .observer
            .count("compensate", &gid(gxid, "take_a")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_first_step_refusal_compensates_only_that_step() {
    let world = world().await;
    let coordinator = world.coordinator().await;
    let gxid = Uuid::now_v7();

    let (status, body) = coordinator.submit(&submission(gxid, "saga", 11, 1)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "compensated");
    assert_eq!(body["branches"][0]["state"], "compensated");
    assert_eq!(
        body["branches"][1]["state"], "pending",
        "never sent: {body}"
    );
    assert_eq!(world.beta.observer.count("action", &gid(gxid, "take_b")), 0);
    assert_eq!(
        world
            .beta
            .observer
            .count("compensate", &gid(gxid, "take_b")),
        0
    );
    assert_eq!(world.alpha.stock("widget").await, 10);
    assert_eq!(world.beta.stock("gadget").await, 5);
}
