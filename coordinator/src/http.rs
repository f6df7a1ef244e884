//! The coordinator's internal API (`InternalCaller` only):
//!
//! - `POST /internal/transactions` `{"gxid","mode","branches":[{"service","branch","payload"}],
//!   "timeout_ms","wait_ms"}` → 200 with the transaction once final, 202 with its current state
//!   when it is not final after `wait_ms` (the work goes on). The same gxid again is idempotent
//!   (its state, waiting the same way); a different body under a known gxid is a 422.
//! - `GET /internal/transactions/{gxid}` → the same representation (200 final, 202 not yet), 404
//!   when unknown.
//!
//! The representation is [`TransactionView`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::StatusCode;
use platform::ApiError;
use platform::auth::{InternalCaller, TokenVerifier};
use platform::deadline::Deadline;
use platform::extract::{Json, Path};
use uuid::Uuid;

use crate::core::Coordinator;
use crate::model::{Submission, SubmissionBody, TransactionView};

/// Answer this much before the caller's own deadline (`x-request-timeout-ms`), so it gets a 202
/// rather than a 504.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(crate) struct AppState {
    pub coordinator: Arc<Coordinator>,
    pub verifier: Arc<TokenVerifier>,
}

impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Arc<TokenVerifier> {
        state.verifier.clone()
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/internal/transactions", post(submit))
        .route("/internal/transactions/{gxid}", get(read))
        .with_state(state)
}

async fn submit(
    _: InternalCaller,
    State(state): State<AppState>,
    deadline: Option<Extension<Deadline>>,
    Json(body): Json<SubmissionBody>,
) -> Result<Response, ApiError> {
    let coordinator = &state.coordinator;
    let submission = Submission::parse(body, &coordinator.config)?;
    let view = coordinator.submit(&submission).await?;
    if view.is_final {
        return Ok(answer(view));
    }
    let mut wait = Duration::from_millis(submission.wait_ms);
    if let Some(Extension(deadline)) = deadline {
        wait = wait.min(deadline.remaining().saturating_sub(DEADLINE_MARGIN));
    }
    let view = coordinator
        .wait_final(submission.gxid, wait)
        .await?
        .unwrap_or(view);
    Ok(answer(view))
}

async fn read(
    _: InternalCaller,
    State(state): State<AppState>,
    Path(gxid): Path<Uuid>,
) -> Result<Response, ApiError> {
    let stored = crate::store::load(&state.coordinator.pool, gxid).await?;
    match stored {
        Some(stored) => Ok(answer(stored.view)),
        None => Err(ApiError::NotFound(format!(
            "no transaction has the gxid {gxid}"
        ))),
    }
}

fn answer(view: TransactionView) -> Response {
    let status = if view.is_final {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(view)).into_response()
}
