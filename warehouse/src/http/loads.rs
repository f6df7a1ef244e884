//! `POST /api/reports/loads` starts an incremental load now (202 `{run_id}`); it runs in the
//! background, after any run in progress. `GET /api/reports/loads/{id}` shows its `etl_runs` row
//! (404 until the run has started).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use platform::ApiError;
use platform::auth::AdminUser;
use platform::extract::{Json, Path};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use crate::etl::runs::{self, RunRecord};
use crate::etl::{Mode, Trigger};
use crate::progress::Quiet;

#[derive(Debug, Serialize, Deserialize)]
pub struct LoadStarted {
    pub run_id: Uuid,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/reports/loads", post(start_load))
        .route("/api/reports/loads/{id}", get(get_load))
}

async fn start_load(
    _admin: AdminUser,
    State(state): State<AppState>,
) -> (StatusCode, Json<LoadStarted>) {
    let run_id = Uuid::now_v7();
    let etl = state.etl.clone();
    tokio::spawn(async move {
        etl.run(run_id, Mode::Incremental, Trigger::Api, &Quiet)
            .await;
    });
    (StatusCode::ACCEPTED, Json(LoadStarted { run_id }))
}

async fn get_load(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RunRecord>, ApiError> {
    runs::find(state.etl.warehouse(), id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no load {id} has started (yet)")))
}
