//! The participant's internal HTTP routes (docs/TRANSACTIONS.md, "Participant protocol").

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::ApiError;
use platform::auth::{InternalCaller, TokenVerifier};
use platform::extract::{Json, Path, Query};
use serde::Deserialize;

use super::engine::{Participant, PreparedGid, SagaState, TwoPcState};
use super::gid::Gid;

#[derive(Clone)]
struct RouteState {
    participant: Arc<Participant>,
    verifier: Arc<TokenVerifier>,
}

impl FromRef<RouteState> for Arc<TokenVerifier> {
    fn from_ref(state: &RouteState) -> Arc<TokenVerifier> {
        state.verifier.clone()
    }
}

impl Participant {
    /// The internal routes, with their own state; merge into a service's (stateless) router:
    ///
    /// - `POST /internal/2pc/{gid}/prepare` (body: the branch payload), `…/commit`, `…/abort`
    /// - `GET /internal/2pc/prepared?prefix=…`
    /// - `POST /internal/saga/{gid}/action`, `…/compensate` (body: the branch payload)
    ///
    /// Every route requires [`InternalCaller`] (401 otherwise, checked before the body is read). A
    /// malformed gid is a 400; errors are problem+json (see
    /// [`ParticipantError`](super::ParticipantError)).
    pub fn router(self, verifier: Arc<TokenVerifier>) -> Router {
        let state = RouteState {
            participant: Arc::new(self),
            verifier,
        };
        Router::new()
            .route("/internal/2pc/prepared", get(list_prepared))
            .route("/internal/2pc/{gid}/prepare", post(prepare))
            .route("/internal/2pc/{gid}/commit", post(commit))
            .route("/internal/2pc/{gid}/abort", post(abort))
            .route("/internal/saga/{gid}/action", post(action))
            .route("/internal/saga/{gid}/compensate", post(compensate))
            .with_state(state)
    }
}

fn parse_gid(text: &str) -> Result<Gid, ApiError> {
    Gid::parse(text).map_err(|e| ApiError::BadRequest(format!("malformed gid in the path: {e}")))
}

/// Runs one operation and answers 200 with its state, or its problem.
async fn answer<T: serde::Serialize>(
    gid: &str,
    op: impl AsyncFnOnce(Gid) -> Result<T, super::ParticipantError>,
) -> Response {
    let gid = match parse_gid(gid) {
        Ok(gid) => gid,
        Err(err) => return err.into_response(),
    };
    match op(gid).await {
        Ok(state) => Json(state).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn prepare(
    _: InternalCaller,
    State(state): State<RouteState>,
    Path(gid): Path<String>,
    Json(payload): Json<serde_json::Value>,
) -> Response {
    answer::<TwoPcState>(&gid, async |gid| {
        state.participant.prepare(&gid, &payload).await
    })
    .await
}

async fn commit(
    _: InternalCaller,
    State(state): State<RouteState>,
    Path(gid): Path<String>,
) -> Response {
    answer::<TwoPcState>(&gid, async |gid| state.participant.commit(&gid).await).await
}

async fn abort(
    _: InternalCaller,
    State(state): State<RouteState>,
    Path(gid): Path<String>,
) -> Response {
    answer::<TwoPcState>(&gid, async |gid| state.participant.abort(&gid).await).await
}

async fn action(
    _: InternalCaller,
    State(state): State<RouteState>,
    Path(gid): Path<String>,
    Json(payload): Json<serde_json::Value>,
) -> Response {
    answer::<SagaState>(&gid, async |gid| {
        state.participant.action(&gid, &payload).await
    })
    .await
}

async fn compensate(
    _: InternalCaller,
    State(state): State<RouteState>,
    Path(gid): Path<String>,
    Json(payload): Json<serde_json::Value>,
) -> Response {
    answer::<SagaState>(&gid, async |gid| {
        state.participant.compensate(&gid, &payload).await
    })
    .await
}

#[derive(Debug, Deserialize)]
struct PreparedQuery {
    /// Only gids starting with this (for example `bkc:`).
    prefix: String,
}

async fn list_prepared(
    _: InternalCaller,
    State(state): State<RouteState>,
    Query(query): Query<PreparedQuery>,
) -> Response {
    match state.participant.prepared(&query.prefix).await {
        Ok(list) => Json::<Vec<PreparedGid>>(list).into_response(),
        Err(err) => err.into_response(),
    }
}
