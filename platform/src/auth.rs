//! Authentication and authorization shared by every process: the `[auth]` config, short-lived HS256
//! access tokens (JWT) and the extractors handlers declare to say who may call them.
//!
//! - [`AuthConfig`]: the signing key, token lifetime, internal credential and admin account. A
//!   process builds a [`TokenVerifier`] from it at start-up, which refuses a missing or short key.
//! - [`TokenIssuer`] signs tokens (only the login route needs it); [`TokenVerifier`] checks them:
//!   HS256 only, signature, `exp` (with [`LEEWAY_SECONDS`] of clock skew), `iss` = [`ISSUER`].
//! - Extractors: [`AuthUser`] (401 without a valid token), [`MaybeAuthUser`] (anonymous is fine, a
//!   present-but-invalid token is still 401), [`AdminUser`] (403 for a non-admin, before the body is
//!   read), [`InternalCaller`] (`x-internal-token`, for `/internal/*` routes). Handlers that decide
//!   per resource call [`AuthUser::require_admin`] or [`AuthUser::require_self_or_admin`] (403).
//!
//! **How extractors find the verifier:** through axum's `FromRef`. A service keeps an
//! `Arc<TokenVerifier>` in its state and implements `FromRef<AppState> for Arc<TokenVerifier>`; no
//! extra layer or request extension is involved, so a router without a verifier does not compile.
//!
//! No token, password or secret is ever logged or put in an error detail: [`Secret`] and
//! [`AccessToken`] print `***` in `Debug`, and rejection details only say *why* a token was refused.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::request::Parts;
use http::{HeaderMap, HeaderName, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::problem::{ApiError, Problem};

/// The `iss` of every token this platform issues, and the only one it accepts.
pub const ISSUER: &str = "bookstore";
/// Clock skew tolerated when checking `exp`.
pub const LEEWAY_SECONDS: u64 = 5;
/// Shortest signing key accepted (HS256 wants at least as many bytes as the hash: 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest bearer token looked at; anything longer is refused before any cryptography.
const MAX_TOKEN_BYTES: usize = 4096;
/// The header that carries the internal credential on service-to-service calls.
pub const INTERNAL_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-internal-token");

/// A secret string from config. `Debug` prints `***`; use [`Secret::expose`] where the value is
/// really needed (signing, comparing). Serializes as the plain value (the config loader needs that),
/// so never log a serialized config.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

/// The `[auth]` section of the services' and the gateway's config (`BOOKSTORE_AUTH__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HS256 signing key, at least 32 bytes; the same in every process. Required: a process refuses
    /// to start without it. `bookstore up` generates one into `secrets.json`.
    pub jwt_secret: Secret,
    /// Lifetime of an access token (default 900 s = 15 minutes); then the client logs in again.
    pub token_ttl_seconds: u64,
    /// The credential `/internal/*` routes require in `x-internal-token`. Empty: every internal
    /// call is refused.
    pub internal_token: Secret,
    /// The admin account's login email (default `admin@bookstore.local`).
    pub admin_email: String,
    /// The admin account's password. Empty: nobody can log in as admin.
    pub admin_password: Secret,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: Secret::default(),
            token_ttl_seconds: 900,
            internal_token: Secret::default(),
            admin_email: "admin@bookstore.local".into(),
            admin_password: Secret::default(),
        }
    }
}

/// Why an [`AuthConfig`] cannot be used; one sentence for a person.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error(
        "auth.jwt_secret is missing or shorter than {MIN_SECRET_BYTES} bytes: set \
         BOOKSTORE_AUTH__JWT_SECRET to a random string of at least {MIN_SECRET_BYTES} characters \
         (`bookstore up` generates one in <dir>/secrets.json)"
    )]
    WeakSecret,
    #[error("auth.token_ttl_seconds must be between 1 and 86400, got {0}")]
    BadTtl(u64),
}

impl AuthConfig {
    /// Checks what every process needs: a long enough signing key and a sane token lifetime.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.jwt_secret.expose().len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::WeakSecret);
        }
        if !(1..=86_400).contains(&self.token_ttl_seconds) {
            return Err(AuthConfigError::BadTtl(self.token_ttl_seconds));
        }
        Ok(())
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

/// The claims of an access token. `sub` is the customer id for customers and `admin` for the admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    pub iat: u64,
    pub iss: String,
}

/// The subject of the admin's tokens.
pub const ADMIN_SUBJECT: &str = "admin";

/// The login answer: `{access_token, token_type: "Bearer", expires_in}`. `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessToken {
    pub access_token: String,
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"***")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Signs access tokens. Only the process that logs users in needs one.
pub struct TokenIssuer {
    key: EncodingKey,
    ttl_seconds: u64,
}

impl TokenIssuer {
    pub fn new(config: &AuthConfig) -> Result<TokenIssuer, AuthConfigError> {
        config.validate()?;
        Ok(TokenIssuer {
            key: EncodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
            ttl_seconds: config.token_ttl_seconds,
        })
    }

    /// A token for `subject` with `role`, valid from now for the configured lifetime.
    pub fn issue(&self, subject: &str, role: Role) -> Result<AccessToken, ApiError> {
        self.issue_at(subject, role, jsonwebtoken::get_current_timestamp())
    }

    /// Like [`TokenIssuer::issue`] as if the time were `now` (seconds since the epoch); for tests.
    pub fn issue_at(&self, subject: &str, role: Role, now: u64) -> Result<AccessToken, ApiError> {
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iat: now,
            exp: now.saturating_add(self.ttl_seconds),
            iss: ISSUER.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot sign an access token: {e}")))?;
        Ok(AccessToken {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: self.ttl_seconds,
        })
    }
}

/// Why a request's credentials were refused. The messages say why, never what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this route needs an access token: log in with POST /api/auth/token and send \
         Authorization: Bearer <access_token>"
    )]
    Missing,
    #[error("the Authorization header must be exactly one `Bearer <access_token>`")]
    Malformed,
    #[error("the access token has expired: log in again with POST /api/auth/token")]
    Expired,
    #[error(
        "the access token is not valid (bad signature, algorithm, issuer or claims): log in again \
         with POST /api/auth/token"
    )]
    Invalid,
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        ApiError::Unauthorized(err.to_string())
    }
}

/// Verifies access tokens and the internal credential. Built once at start-up, shared through an
/// `Arc` in the service state (see the module docs).
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// SHA-256 of the internal token, or `None` when none is configured.
    internal_digest: Option<[u8; 32]>,
}

impl TokenVerifier {
    /// Fails (so the process refuses to start) when the signing key is missing or short.
    pub fn new(config: &AuthConfig) -> Result<TokenVerifier, AuthConfigError> {
        config.validate()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        let internal = config.internal_token.expose();
        Ok(TokenVerifier {
            key: DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
            validation,
            internal_digest: (!internal.is_empty()).then(|| digest(internal.as_bytes())),
        })
    }

    /// The claims of `token` when it is an HS256 token this platform signed, unexpired, from
    /// [`ISSUER`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }

    /// The identity of a request: `Ok(None)` without an `Authorization` header, an error when one is
    /// present but not a valid bearer token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<AuthUser>, AuthError> {
        match bearer_token(headers)? {
            None => Ok(None),
            Some(token) => self
                .verify(token)
                .map(|claims| Some(AuthUser::from(claims))),
        }
    }

    /// Whether `presented` is the internal credential (constant time; false when none is configured).
    pub fn is_internal_token(&self, presented: &[u8]) -> bool {
        self.internal_digest
            .is_some_and(|expected| bool::from(digest(presented).ct_eq(&expected)))
    }
}

/// The token of the one `Authorization: Bearer <token>` header, if there is such a header.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(AuthError::Malformed),
    };
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

/// Compares two secrets in time that depends on neither their contents nor their lengths (both are
/// hashed first). For passwords and tokens taken from config.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(digest(a).ct_eq(&digest(b)))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// An authenticated caller. As an extractor: 401 (`WWW-Authenticate: Bearer`) without a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The token's `sub`: a customer id, or [`ADMIN_SUBJECT`].
    pub subject: String,
    pub role: Role,
}

impl From<Claims> for AuthUser {
    fn from(claims: Claims) -> AuthUser {
        AuthUser {
            subject: claims.sub,
            role: claims.role,
        }
    }
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The customer this token speaks for (`None` for the admin).
    pub fn customer_id(&self) -> Option<Uuid> {
        match self.role {
            Role::Customer => self.subject.parse().ok(),
            Role::Admin => None,
        }
    }

    /// 403 unless the caller is the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only the admin may do this; customers may read the catalog and their own records"
                    .into(),
            ))
        }
    }

    /// 403 unless the caller is the admin or the customer `customer_id` itself.
    pub fn require_self_or_admin(&self, customer_id: Uuid) -> Result<(), ApiError> {
        if self.is_admin() || self.customer_id() == Some(customer_id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "a customer may only read and change their own record and orders".into(),
            ))
        }
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let verifier = Arc::<TokenVerifier>::from_ref(state);
        verifier
            .authenticate(&parts.headers)?
            .ok_or_else(|| AuthError::Missing.into())
    }
}

/// The caller if there is one. No `Authorization` header is anonymous (`None`); a header that does
/// not verify is still a 401, so a client with an expired token learns it even on public routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl<S> FromRequestParts<S> for MaybeAuthUser
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let verifier = Arc::<TokenVerifier>::from_ref(state);
        Ok(MaybeAuthUser(verifier.authenticate(&parts.headers)?))
    }
}

/// The admin. 401 without a valid token, 403 for a customer — decided before the body is read, so a
/// customer never learns anything from validation errors on an admin route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser(pub AuthUser);

impl<S> FromRequestParts<S> for AdminUser
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require_admin()?;
        Ok(AdminUser(user))
    }
}

/// Another platform process, proven by the `x-internal-token` header (compared in constant time).
/// For `/internal/*` routes, which the gateway never routes; anything else is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalCaller;

impl<S> FromRequestParts<S> for InternalCaller
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let verifier = Arc::<TokenVerifier>::from_ref(state);
        let mut values = parts.headers.get_all(INTERNAL_TOKEN_HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if verifier.is_internal_token(value.as_bytes()) => {
                Ok(InternalCaller)
            }
            _ => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "internal routes need the platform's internal credential",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use http::Request;
    use tower::ServiceExt;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: SECRET.into(),
            internal_token: "internal-credential".into(),
            admin_password: "admin-password".into(),
            ..AuthConfig::default()
        }
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&config()).expect("valid config")
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(&config()).expect("valid config")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(role: Role) -> String {
        issuer()
            .issue("0190c2a4-0000-7000-8000-000000000001", role)
            .expect("signed")
            .access_token
    }

    /// Re-encodes the payload of `token` after `edit`, keeping header and signature.
    fn tamper(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64");
        let mut claims: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        edit(&mut claims);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    }

    fn signed_with(claims: &serde_json::Value, key: &str, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("signed")
    }

    fn claims_json(exp: u64, iss: &str) -> serde_json::Value {
        serde_json::json!({"sub": "someone", "role": "customer", "iat": now(), "exp": exp, "iss": iss})
    }

    #[test]
    fn a_fresh_token_verifies_to_its_claims() {
        let claims = verifier().verify(&token(Role::Admin)).expect("valid");
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    fn expired_tokens_are_refused_as_expired() {
        let old = issuer()
            .issue_at("x", Role::Customer, now() - 900 - LEEWAY_SECONDS - 10)
            .expect("signed");
        assert_eq!(
            verifier().verify(&old.access_token),
            Err(AuthError::Expired)
        );
        let within_leeway = issuer()
            .issue_at("x", Role::Customer, now() - 900 + 1)
            .expect("signed");
        assert!(verifier().verify(&within_leeway.access_token).is_ok());
    }

    #[test]
    fn wrong_keys_algorithms_issuers_and_tampered_claims_are_invalid() {
        let later = now() + 600;
        let wrong_key = signed_with(
            &claims_json(later, ISSUER),
            "another-key-that-is-also-32-bytes-long",
            Algorithm::HS256,
        );
        let wrong_iss = signed_with(&claims_json(later, "evil"), SECRET, Algorithm::HS256);
        let hs512 = signed_with(&claims_json(later, ISSUER), SECRET, Algorithm::HS512);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims_json(later, ISSUER).to_string())
        );
        let promoted = tamper(&token(Role::Customer), |c| c["role"] = "admin".into());
        let unknown_role = signed_with(
            &serde_json::json!({"sub": "x", "role": "root", "iat": now(), "exp": later, "iss": ISSUER}),
            SECRET,
            Algorithm::HS256,
        );
        let no_exp = signed_with(
            &serde_json::json!({"sub": "x", "role": "admin", "iat": now(), "iss": ISSUER}),
            SECRET,
            Algorithm::HS256,
        );
        let string_exp = signed_with(
            &serde_json::json!({"sub": "x", "role": "admin", "iat": now(), "exp": "never", "iss": ISSUER}),
            SECRET,
            Algorithm::HS256,
        );
        for (name, token) in [
            ("wrong key", wrong_key),
            ("wrong iss", wrong_iss),
            ("HS512", hs512),
            ("alg none", none),
            ("tampered role", promoted),
            ("unknown role", unknown_role),
            ("no exp", no_exp),
            ("string exp", string_exp),
            ("garbage", "not.a.token".into()),
        ] {
            assert_eq!(verifier().verify(&token), Err(AuthError::Invalid), "{name}");
        }
    }

    #[test]
    fn short_or_missing_secrets_and_silly_lifetimes_are_refused() {
        let mut cfg = config();
        cfg.jwt_secret = "too short".into();
        let err = TokenVerifier::new(&cfg).err();
        assert_eq!(err, Some(AuthConfigError::WeakSecret));
        assert!(
            err.is_some_and(|e| e.to_string().contains("BOOKSTORE_AUTH__JWT_SECRET")),
            "the error says what to set"
        );
        assert!(TokenIssuer::new(&AuthConfig::default()).is_err());
        cfg = config();
        cfg.token_ttl_seconds = 0;
        assert_eq!(cfg.validate(), Err(AuthConfigError::BadTtl(0)));
    }

    #[test]
    fn secrets_and_tokens_never_show_in_debug_output() {
        let text = format!("{:?}", config());
        assert!(
            !text.contains(SECRET) && !text.contains("admin-password"),
            "{text}"
        );
        let token = issuer().issue("x", Role::Admin).expect("signed");
        assert!(!format!("{token:?}").contains(&token.access_token));
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(header::AUTHORIZATION, v.parse().expect("header value"));
            }
            map
        };
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok(Some("abc")));
        for bad in [
            &["Basic dXNlcjpwdw=="][..],
            &["Bearer"],
            &["Bearer "],
            &["abc"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            assert_eq!(
                bearer_token(&headers(bad)),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"Same"));
        assert!(!constant_time_eq(b"same", b"same-but-longer"));
        assert!(verifier().is_internal_token(b"internal-credential"));
        assert!(!verifier().is_internal_token(b"internal-credentia"));
        let mut cfg = config();
        cfg.internal_token = Secret::default();
        let without = TokenVerifier::new(&cfg).expect("valid");
        assert!(
            !without.is_internal_token(b""),
            "no configured token, no access"
        );
    }

    /// A router with one route per extractor, as a service would have.
    fn app() -> Router {
        async fn who(user: AuthUser) -> String {
            user.subject
        }
        async fn maybe(MaybeAuthUser(user): MaybeAuthUser) -> String {
            user.map_or("anonymous".into(), |u| u.subject)
        }
        async fn admin(AdminUser(user): AdminUser) -> String {
            user.subject
        }
        async fn internal(_: InternalCaller) -> &'static str {
            "ok"
        }
        Router::new()
            .route("/who", get(who))
            .route("/maybe", get(maybe))
            .route("/admin", get(admin))
            .route("/internal", get(internal))
            .with_state(Arc::new(verifier()))
    }

    async fn call(path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn extractors_answer_401_403_or_let_the_caller_through() {
        let admin = format!("Bearer {}", token(Role::Admin));
        let customer = format!("Bearer {}", token(Role::Customer));
        let expired = format!(
            "Bearer {}",
            issuer()
                .issue_at("x", Role::Admin, now() - 3600)
                .expect("signed")
                .access_token
        );
        let tampered = format!(
            "Bearer {}",
            tamper(&token(Role::Customer), |c| c["role"] = "admin".into())
        );

        for (path, auth, status) in [
            ("/who", None, 401),
            ("/who", Some(expired.as_str()), 401),
            ("/who", Some(tampered.as_str()), 401),
            ("/who", Some("Basic abc"), 401),
            ("/who", Some(customer.as_str()), 200),
            ("/maybe", None, 200),
            ("/maybe", Some(expired.as_str()), 401),
            ("/maybe", Some(customer.as_str()), 200),
            ("/admin", None, 401),
            ("/admin", Some(customer.as_str()), 403),
            ("/admin", Some(tampered.as_str()), 401),
            ("/admin", Some(admin.as_str()), 200),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let (actual, headers, body) = call(path, &headers).await;
            assert_eq!(actual.as_u16(), status, "{path} {auth:?}: {body}");
            if status == 401 {
                assert_eq!(
                    headers[header::WWW_AUTHENTICATE],
                    "Bearer realm=\"bookstore\""
                );
                assert_eq!(headers[header::CONTENT_TYPE], crate::problem::PROBLEM_JSON);
                let token = auth.unwrap_or_default().trim_start_matches("Bearer ");
                assert!(token.len() < 10 || !body.contains(token), "{body}");
            }
        }
        let (_, _, body) = call("/who", &[("authorization", &expired)]).await;
        assert!(body.contains("expired"), "{body}");
        let (_, _, body) = call("/maybe", &[]).await;
        assert_eq!(body, "anonymous");
    }

    #[tokio::test]
    async fn internal_routes_need_the_internal_credential() {
        for (headers, status) in [
            (&[][..], 401),
            (&[("x-internal-token", "wrong")][..], 401),
            (&[("x-internal-token", "internal-credential")][..], 200),
            (
                &[
                    ("x-internal-token", "internal-credential"),
                    ("x-internal-token", "internal-credential"),
                ][..],
                401,
            ),
        ] {
            let (actual, _, body) = call("/internal", headers).await;
            assert_eq!(actual.as_u16(), status, "{headers:?}: {body}");
        }
    }

    #[test]
    fn self_or_admin_means_exactly_that() {
        let me: Uuid = "0190c2a4-0000-7000-8000-000000000001"
            .parse()
            .expect("uuid");
        let customer = AuthUser {
            subject: me.to_string(),
            role: Role::Customer,
        };
        assert!(customer.require_self_or_admin(me).is_ok());
        assert!(matches!(
            customer.require_self_or_admin(Uuid::nil()),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            customer.require_admin(),
            Err(ApiError::Forbidden(_))
        ));
        let admin = AuthUser {
            subject: ADMIN_SUBJECT.into(),
            role: Role::Admin,
        };
        assert!(admin.require_self_or_admin(me).is_ok() && admin.require_admin().is_ok());
    }
}
