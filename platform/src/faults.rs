//! Fault injection for resilience tests and chaos runs, like Envoy's fault filter: a share of
//! requests answered with an error status, and an added delay. Off by default (all zero); set per
//! process, e.g. `BOOKSTORE_HTTP__FAULTS__ERROR_RATE=0.6`. Applies to API routes only, never to
//! `/health/*` or `/metrics`, so an instance can look alive while it fails its callers.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Share of requests (0.0–1.0) answered with `error_status` instead of being handled.
    pub error_rate: f64,
    /// The status of injected errors (5xx).
    pub error_status: u16,
    /// Delay added before every request is handled.
    pub delay_ms: u64,
}

impl FaultConfig {
    pub fn is_active(&self) -> bool {
        self.error_rate > 0.0 || self.delay_ms > 0
    }
}

/// The middleware; install with `axum::middleware::from_fn_with_state(config, inject)`.
pub async fn inject(State(config): State<FaultConfig>, request: Request, next: Next) -> Response {
    if config.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.delay_ms)).await;
    }
    if config.error_rate > 0.0 && rand::random::<f64>() < config.error_rate {
        metrics::counter!("http_faults_injected_total").increment(1);
        let status = StatusCode::from_u16(config.error_status)
            .ok()
            .filter(StatusCode::is_server_error)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Problem::new(
            status,
            "injected-fault",
            "a fault was injected on purpose (fault injection is on)",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(config: FaultConfig) -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(config, inject))
    }

    async fn status(config: FaultConfig) -> StatusCode {
        let request = Request::builder()
            .uri("/")
            .body(axum::body::Body::empty())
            .expect("request");
        app(config)
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    #[tokio::test]
    async fn no_faults_by_default_and_every_request_fails_at_rate_one() {
        assert_eq!(status(FaultConfig::default()).await, StatusCode::OK);
        let always = FaultConfig {
            error_rate: 1.0,
            error_status: 503,
            delay_ms: 0,
        };
        assert_eq!(status(always).await, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_non_5xx_status_falls_back_to_500() {
        let odd = FaultConfig {
            error_rate: 1.0,
            error_status: 200,
            delay_ms: 0,
        };
        assert_eq!(status(odd).await, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn about_the_configured_share_of_requests_fails() {
        let half = FaultConfig {
            error_rate: 0.5,
            error_status: 500,
            delay_ms: 0,
        };
        let mut failed = 0;
        for _ in 0..400 {
            if status(half.clone()).await.is_server_error() {
                failed += 1;
            }
        }
        assert!((140..=260).contains(&failed), "{failed} of 400");
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_added_before_handling() {
        let slow = FaultConfig {
            error_rate: 0.0,
            error_status: 500,
            delay_ms: 300,
        };
        let started = tokio::time::Instant::now();
        assert_eq!(status(slow).await, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
