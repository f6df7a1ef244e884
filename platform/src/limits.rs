//! Header limits: a request whose headers are too many or too large is refused with 431 before any
//! handler (or the gateway's proxy) spends work on it. Bodies are limited separately (413).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderLimits {
    /// Most header fields a request may carry.
    pub max_headers: usize,
    /// Most bytes of header names and values together.
    pub max_header_bytes: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_headers: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The middleware; install with `from_fn_with_state(limits, enforce)`.
pub async fn enforce(State(limits): State<HeaderLimits>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > limits.max_headers || bytes > limits.max_header_bytes {
        let detail = format!(
            "the request carries {} header fields ({bytes} bytes); at most {} fields and {} bytes are accepted",
            headers.len(),
            limits.max_headers,
            limits.max_header_bytes
        );
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            detail,
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

    async fn status(limits: HeaderLimits, headers: &[(String, String)]) -> StatusCode {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(limits, enforce));
        let mut request = Request::builder().uri("/");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(axum::body::Body::empty()).expect("request");
        app.oneshot(request).await.expect("infallible").status()
    }

    #[tokio::test]
    async fn ordinary_requests_pass_and_oversize_or_too_many_headers_get_431() {
        let limits = HeaderLimits {
            max_headers: 3,
            max_header_bytes: 100,
        };
        let ok = vec![("a".to_string(), "1".to_string())];
        assert_eq!(status(limits, &ok).await, StatusCode::OK);
        let big = vec![("a".to_string(), "x".repeat(200))];
        assert_eq!(
            status(limits, &big).await,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let many: Vec<_> = (0..4).map(|n| (format!("h{n}"), "v".to_string())).collect();
        assert_eq!(
            status(limits, &many).await,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}
