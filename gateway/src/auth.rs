//! Authentication at the front door, as a tower layer over the proxy.
//!
//! For every request:
//! - headers only the platform may set are removed, whatever the client sent: `x-internal-token`
//!   (the service-to-service credential) and every `x-identity-*` / `x-user-*`;
//! - a bearer token that is present but does not verify (malformed, bad signature or algorithm,
//!   wrong issuer, expired) is answered here with a 401 problem, and no upstream sees the request;
//! - a valid token's identity is attached to the request as extensions: [`ClientKey`] (the subject,
//!   so the rate limiter limits per user rather than per address) and the [`AuthUser`];
//! - no token at all passes as anonymous: whether a route needs one is the service's decision.
//!
//! The `Authorization` header itself is forwarded unchanged: the services verify the token again
//! (they trust no identity they did not verify), so a request that bypasses the gateway is no less
//! checked.
//!
//! Wiring (in `Application::build` / `run_until_stopped`), outside the rate limiter so it sees the
//! identity: `proxy::router(proxy).layer(auth::AuthLayer::new(&config.auth)?)`.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::{HeaderMap, HeaderName, Request};
use platform::ApiError;
use platform::auth::{AuthConfig, AuthConfigError, AuthUser, TokenVerifier};
use tower::{Layer, Service};

use crate::rate_limit::ClientKey;

/// Header name prefixes a client may never send (identity is the platform's to assert).
const RESERVED_PREFIXES: &[&str] = &["x-identity-", "x-user-"];

/// Verifies bearer tokens and strips client-sent identity headers; see the module docs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
}

impl AuthLayer {
    /// Fails (so the gateway refuses to start) when `auth.jwt_secret` is missing or short.
    pub fn new(config: &AuthConfig) -> Result<AuthLayer, AuthConfigError> {
        Ok(AuthLayer::with_verifier(Arc::new(TokenVerifier::new(
            config,
        )?)))
    }

    pub fn with_verifier(verifier: Arc<TokenVerifier>) -> AuthLayer {
        AuthLayer { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
}

impl<S> Service<Request<Body>> for Authenticate<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        strip_reserved_headers(request.headers_mut());
        match self.verifier.authenticate(request.headers()) {
            Ok(None) => {}
            Ok(Some(user)) => {
                // The rate limiter keys this client by subject (it adds the `sub:` prefix itself).
                let key = ClientKey(user.subject.clone());
                request.extensions_mut().insert(key);
                request.extensions_mut().insert(user);
            }
            Err(err) => {
                metrics::counter!("gateway_auth_rejections_total", "reason" => reason(err))
                    .increment(1);
                return Either::Left(ready(Ok(ApiError::from(err).into_response())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

fn reason(err: platform::auth::AuthError) -> &'static str {
    use platform::auth::AuthError as E;
    match err {
        E::Missing => "missing",
        E::Malformed => "malformed",
        E::Expired => "expired",
        E::Invalid => "invalid",
    }
}

/// Removes `x-internal-token` and every `x-identity-*` / `x-user-*` header.
pub fn strip_reserved_headers(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == platform::auth::INTERNAL_TOKEN_HEADER.as_str()
                || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
}

/// The identity the auth layer attached to a request, if any (for layers inside it).
pub fn identity<B>(request: &Request<B>) -> Option<&AuthUser> {
    request.extensions().get::<AuthUser>()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use super::*;
    use http::{StatusCode, header};
    use http_body_util::BodyExt;
    use platform::auth::{Role, TokenIssuer};
    use tower::ServiceExt;

    const SECRET: &str = "gateway-tests-jwt-secret-0123456789abcdef";

    fn config(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: secret.into(),
            ..AuthConfig::default()
        }
    }

    fn token(secret: &str, role: Role, issued: u64) -> String {
        TokenIssuer::new(&config(secret))
            .expect("valid")
            .issue_at("0190c2a4-0000-7000-8000-0000000000a1", role, issued)
            .expect("signed")
            .access_token
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// What the stub upstream saw: headers, identity and rate-limit key of each request.
    type Seen = Arc<Mutex<Vec<(HeaderMap, Option<AuthUser>, Option<ClientKey>)>>>;

    async fn call(headers: &[(&str, &str)]) -> (Response, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let upstream = tower::service_fn(move |request: Request<Body>| {
            let record = record.clone();
            async move {
                let user = identity(&request).cloned();
                let key = request.extensions().get::<ClientKey>().cloned();
                if let Ok(mut seen) = record.lock() {
                    seen.push((request.headers().clone(), user, key));
                }
                Ok::<_, Infallible>(Response::new(Body::from("upstream")))
            }
        });
        let service = AuthLayer::new(&config(SECRET))
            .expect("valid config")
            .layer(upstream);
        let mut request = Request::get("/api/books");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = service
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .unwrap_or_else(|never| match never {});
        (response, seen)
    }

    fn calls(seen: &Seen) -> Vec<(HeaderMap, Option<AuthUser>, Option<ClientKey>)> {
        seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn anonymous_requests_pass_without_an_identity() {
        let (response, seen) = call(&[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let calls = calls(&seen);
        assert_eq!(calls.len(), 1);
        assert_eq!((&calls[0].1, &calls[0].2), (&None, &None));
    }

    #[tokio::test]
    async fn a_valid_token_passes_unchanged_with_its_identity_attached() {
        let bearer = format!("Bearer {}", token(SECRET, Role::Customer, now()));
        let (response, seen) = call(&[("authorization", &bearer)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let calls = calls(&seen);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0[header::AUTHORIZATION], bearer.as_str());
        let user = calls[0].1.clone().expect("an identity");
        assert_eq!(user.role, Role::Customer);
        assert_eq!(user.subject, "0190c2a4-0000-7000-8000-0000000000a1");
        let key = calls[0].2.clone().map(|ClientKey(k)| k);
        assert_eq!(key.as_deref(), Some("0190c2a4-0000-7000-8000-0000000000a1"));
        let mut limited = Request::new(Body::empty());
        limited.extensions_mut().insert(ClientKey(user.subject));
        assert_eq!(
            crate::rate_limit::client_key(&limited).to_string(),
            "sub:0190c2a4-0000-7000-8000-0000000000a1",
            "the rate limiter keys this client by subject"
        );
    }

    #[tokio::test]
    async fn tokens_that_do_not_verify_are_401_here_and_never_reach_the_upstream() {
        let wrong_key = token("another-platforms-key-0123456789abcdef", Role::Admin, now());
        let expired = token(SECRET, Role::Admin, now() - 3600);
        for value in [
            format!("Bearer {wrong_key}"),
            format!("Bearer {expired}"),
            "Bearer not.a.jwt".to_owned(),
            "Basic YWRtaW46YWRtaW4=".to_owned(),
            "Bearer".to_owned(),
        ] {
            let (response, seen) = call(&[("authorization", &value)]).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{value}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains(&wrong_key) && !body.contains(&expired),
                "{body}"
            );
            assert!(calls(&seen).is_empty(), "no upstream call for {value}");
        }
    }

    #[tokio::test]
    async fn identity_and_internal_headers_from_clients_are_stripped() {
        let (response, seen) = call(&[
            ("x-internal-token", "guess"),
            ("x-user-id", "0190c2a4-0000-7000-8000-0000000000a1"),
            ("X-User-Role", "admin"),
            ("x-identity-subject", "admin"),
            ("x-request-id", "kept"),
            ("x-userland", "kept too"),
        ])
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let calls = calls(&seen);
        let headers = &calls[0].0;
        for stripped in [
            "x-internal-token",
            "x-user-id",
            "x-user-role",
            "x-identity-subject",
        ] {
            assert!(!headers.contains_key(stripped), "{stripped} was forwarded");
        }
        assert_eq!(headers["x-request-id"], "kept");
        assert_eq!(headers["x-userland"], "kept too");
        assert_eq!(
            (&calls[0].1, &calls[0].2),
            (&None, &None),
            "headers never make an identity"
        );
    }

    /// The way the gateway wires it: `proxy::router(proxy).layer(AuthLayer::new(&config.auth)?)`.
    #[tokio::test]
    async fn it_wraps_an_axum_router_as_the_gateway_does() {
        let router = axum::Router::new()
            .route_service(
                "/api/{*path}",
                tower::service_fn(|_: Request<Body>| async {
                    Ok::<_, Infallible>(Response::new(Body::from("proxied")))
                }),
            )
            .layer(AuthLayer::new(&config(SECRET)).expect("valid config"));
        let request = |auth: &str| {
            Request::get("/api/books")
                .header("authorization", auth)
                .body(Body::empty())
                .expect("request")
        };
        let ok = router
            .clone()
            .oneshot(request(&format!(
                "Bearer {}",
                token(SECRET, Role::Admin, now())
            )))
            .await
            .unwrap_or_else(|never| match never {});
        assert_eq!(ok.status(), StatusCode::OK);
        let refused = router
            .oneshot(request("Bearer forged"))
            .await
            .unwrap_or_else(|never| match never {});
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_layer_refuses_a_missing_or_short_key() {
        assert!(AuthLayer::new(&AuthConfig::default()).is_err());
        assert!(AuthLayer::new(&config("short")).is_err());
    }
}
