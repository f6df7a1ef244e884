//! Header limits: a request whose headers are too many or too large is refused with 431 before any
//! handler (or the gateway's proxy) spends work on it. Bodies are limited separately (413).

use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
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

impl HeaderLimits {
    /// The 431 for `request`, if its headers are over the limits.
    fn refuse(&self, request: &Request) -> Option<Response> {
        let headers = request.headers();
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if headers.len() <= self.max_headers && bytes <= self.max_header_bytes {
            return None;
        }
        let detail = format!(
            "the request carries {} header fields ({bytes} bytes); at most {} fields and {} bytes are accepted",
            headers.len(),
            self.max_headers,
            self.max_header_bytes
        );
        let problem = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            detail,
        );
        Some(problem.into_response())
    }
}

/// Layer enforcing [`HeaderLimits`]. A plain tower layer rather than an axum `from_fn`, which
/// boxes and clones the rest of the stack for every request.
impl<S> tower::Layer<S> for HeaderLimits {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Enforce<S> {
        Enforce {
            limits: *self,
            inner,
        }
    }
}

/// See [`HeaderLimits`]' layer.
#[derive(Clone, Debug)]
pub struct Enforce<S> {
    limits: HeaderLimits,
    inner: S,
}

impl<S> tower::Service<Request> for Enforce<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.limits.refuse(&request) {
            Some(refused) => Either::Left(ready(Ok(refused))),
            None => Either::Right(self.inner.call(request)),
        }
    }
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
            .layer(limits);
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
