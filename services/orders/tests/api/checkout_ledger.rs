//! The checkout record's guard between a request forgetting its checkout (its own submission was
//! certainly not sent) and a repeat of it resubmitting the same checkout: whichever comes first
//! wins, so a transaction never runs without its record (which would free the key for a second
//! purchase).

use orders::checkout::ledger::{self, NewCheckout};
use orders::domain::OrderMode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::spawn_app;

async fn started(app: &crate::helpers::TestApp, key: &str) -> Uuid {
    let customer = app.create_customer().await;
    let customer_id: Uuid = customer["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("customer id");
    let lines = json!([{"book_id": Uuid::now_v7(), "quantity": 1, "price_cents": 100}]);
    let new = NewCheckout {
        id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        customer_id,
        key,
        hash: &[7; 32],
        mode: OrderMode::TwoPhaseCommit,
        total_cents: Some(100),
        lines: Some(&lines),
        problem: None,
    };
    let (row, created) = ledger::start(&app.db, &new).await.expect("recorded");
    assert!(created);
    row.id
}

async fn exists(app: &crate::helpers::TestApp, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM checkouts WHERE id = $1)")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .expect("query")
}

#[tokio::test]
async fn a_checkout_marked_for_resubmission_is_not_forgotten_and_a_forgotten_one_is_not_resubmitted()
 {
    let app = spawn_app().await;

    // The repeat marks it first: the first request's forget keeps it.
    let id = started(&app, "resubmitted-first").await;
    assert!(ledger::mark_submitting(&app.db, id).await.expect("mark"));
    ledger::forget(&app.db, id).await.expect("forget");
    assert!(
        exists(&app, id).await,
        "a checkout about to be resubmitted was forgotten"
    );

    // The first request forgets it first: the repeat must not submit it.
    let id = started(&app, "forgotten-first").await;
    ledger::forget(&app.db, id).await.expect("forget");
    assert!(!exists(&app, id).await);
    assert!(!ledger::mark_submitting(&app.db, id).await.expect("mark"));
}
