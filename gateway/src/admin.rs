//! `GET /admin/upstreams` (admin only): every instance with its health, breaker state, in-flight
//! count and recent error rate, and each service's breaker — what `bookstore status` shows too.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use platform::ApiError;
use serde::{Deserialize, Serialize};

use crate::balance::UpstreamStatus;
use crate::stack::Observed;

/// One service as the admin sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub status: UpstreamStatus,
    /// The service breaker: `closed`, `open` or `half_open`.
    pub service_breaker: String,
}

pub async fn upstreams(State(observed): State<Observed>, request: Request) -> Response {
    let Some(user) = crate::auth::identity(&request) else {
        return ApiError::Unauthorized("log in as the admin to see the upstreams".into())
            .into_response();
    };
    if let Err(forbidden) = user.require_admin() {
        return forbidden.into_response();
    }
    let services: Vec<ServiceView> = observed
        .snapshot()
        .into_iter()
        .map(|(status, breaker)| ServiceView {
            status,
            service_breaker: serde_json::to_value(breaker)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        })
        .collect();
    Json(serde_json::json!({ "services": services })).into_response()
}
