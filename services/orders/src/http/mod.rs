//! The HTTP API: one module per resource, each with its own `router()`, merged here.
//!
//! Who may call what is said by each handler's first extractor: `MaybeAuthUser` (anyone; a token,
//! when sent, must be valid), [`OwnCustomer`] (the customer named in the path, or the admin) or
//! `AuthUser` plus a check on the loaded row (orders: their owner, or the admin).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use platform::auth::{AuthUser, TokenVerifier};
use platform::db::Pools;
use platform::extract::Path;
use platform::{ApiError, FieldError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::CreditConfig;

pub mod credit;
pub mod customers;
pub mod idempotency;
pub mod login;
pub mod messages;
pub mod object;
pub mod orders;

pub use login::Auth;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Writes and strong reads (the primary).
    pub pool: PgPool,
    /// Also eventual reads (a replica on a cluster): the message record.
    pub pools: Pools,
    pub credit: CreditConfig,
    pub auth: Auth,
    /// The peers checkout calls; `None` (no registry) makes checkout answer 503.
    pub checkout: Option<crate::checkout::Checkout>,
}

impl AppState {
    pub fn new(pools: Pools, credit: CreditConfig, auth: Auth) -> Self {
        AppState {
            pool: pools.primary().clone(),
            pools,
            credit,
            auth,
            checkout: None,
        }
    }
}

/// Lets the auth extractors find the token verifier.
impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Arc<TokenVerifier> {
        state.auth.verifier.clone()
    }
}

/// The `{id}` of a `/api/customers/{id}…` route, extracted only when the caller is that customer or
/// the admin: 401 without a valid token, 403 for anyone else — before the body is read, and whether
/// or not the id exists (a customer cannot probe for other customers' ids).
#[derive(Debug, Clone, Copy)]
pub struct OwnCustomer(pub Uuid);

impl FromRequestParts<AppState> for OwnCustomer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state).await?;
        user.require_self_or_admin(id)?;
        Ok(OwnCustomer(id))
    }
}

/// `/api/auth/token`, `/api/customers…` and `/api/orders…`; the server adds health, metrics and the
/// standard layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(login::router())
        .merge(customers::router())
        .merge(credit::router())
        .merge(orders::router())
        .merge(messages::router())
        .merge(crate::checkout::http::router())
        .with_state(state)
}

/// A 422 from the field errors a parser collected. Parsers only fail with at least one error; the
/// fallback keeps an empty list from ever becoming a success.
pub(crate) fn invalid_fields(errors: Vec<FieldError>) -> ApiError {
    ApiError::check(errors)
        .err()
        .unwrap_or_else(|| ApiError::BadRequest("the request is invalid".into()))
}

/// 404 unless the customer exists; read on the primary, so a customer who just signed up is found.
pub(crate) async fn ensure_customer_exists(pool: &PgPool, id: Uuid) -> Result<(), ApiError> {
    if customer_exists(pool, id).await? {
        Ok(())
    } else {
        Err(customer_not_found(id))
    }
}

/// Whether `pool` knows the customer (a replica may not know one who just signed up).
pub(crate) async fn customer_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// The 404 for a customer id nobody has.
pub(crate) fn customer_not_found(id: uuid::Uuid) -> ApiError {
    ApiError::NotFound(format!("no customer has the id {id}"))
}
