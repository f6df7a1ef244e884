//! `POST /api/auth/token`: email and password in, a short-lived access token out.
//!
//! Customers are checked against their argon2id hash; the admin against the credentials from config
//! (`auth.admin_email` / `auth.admin_password`, compared in constant time). Every refusal is the same
//! 401 with the same detail, and takes about the same time: an unknown email (and the admin) is
//! verified against a dummy hash, so timing does not tell which emails have accounts.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use platform::auth::{
    ADMIN_SUBJECT, AccessToken, AuthConfig, AuthConfigError, MaybeAuthUser, Role, Secret,
    TokenIssuer, TokenVerifier, constant_time_eq,
};
use platform::extract::Json;
use platform::{ApiError, FieldError};
use serde::Deserialize;
use uuid::Uuid;

use super::object::Object;
use super::{AppState, invalid_fields};
use crate::domain::password::MAX_PASSWORD_CHARS;
use crate::domain::{verify_dummy, verify_password};

/// The one answer to every failed login.
const REFUSED: &str = "the email or password is not correct";
/// Longest email worth looking up (the longest one sign-up accepts).
const MAX_EMAIL_LEN: usize = 254;

/// What login needs from the auth config, built once at start-up.
#[derive(Clone)]
pub struct Auth {
    pub verifier: Arc<TokenVerifier>,
    pub issuer: Arc<TokenIssuer>,
    /// `None` when no admin password is configured: then nobody can log in as admin.
    admin: Option<Arc<AdminAccount>>,
}

struct AdminAccount {
    /// Trimmed and lower-cased, like customers' emails.
    email: String,
    password: Secret,
}

impl Auth {
    /// Refuses a config without a usable signing key (so the service refuses to start).
    pub fn new(config: &AuthConfig) -> Result<Auth, AuthConfigError> {
        let admin = (!config.admin_password.is_empty()).then(|| {
            Arc::new(AdminAccount {
                email: config.admin_email.trim().to_ascii_lowercase(),
                password: config.admin_password.clone(),
            })
        });
        Ok(Auth {
            verifier: Arc::new(TokenVerifier::new(config)?),
            issuer: Arc::new(TokenIssuer::new(config)?),
            admin,
        })
    }
}

/// The body; `Debug` is deliberately not derived (it would print the password).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/auth/token", post(log_in))
}

/// 200 `{access_token, token_type: "Bearer", expires_in}`; 401 for any wrong email or password;
/// 422 for an empty field; 400 for a body that is not JSON.
async fn log_in(
    _: MaybeAuthUser,
    State(state): State<AppState>,
    Json(Object(body)): Json<Object<Credentials>>,
) -> Result<Json<AccessToken>, ApiError> {
    let email = body.email.trim().to_ascii_lowercase();
    let mut errors = Vec::new();
    if email.is_empty() {
        errors.push(FieldError::new("email", "must not be empty"));
    } else if email.len() > MAX_EMAIL_LEN {
        errors.push(FieldError::new(
            "email",
            format!("must be at most {MAX_EMAIL_LEN} characters"),
        ));
    }
    if body.password.is_empty() {
        errors.push(FieldError::new("password", "must not be empty"));
    }
    if !errors.is_empty() {
        return Err(invalid_fields(errors));
    }
    // No account has a password this long; still spend the usual time before saying so.
    let password = body.password;
    let plausible = password.chars().count() <= MAX_PASSWORD_CHARS;

    let auth = &state.auth;
    if let Some(admin) = auth
        .admin
        .as_ref()
        .filter(|admin| constant_time_eq(email.as_bytes(), admin.email.as_bytes()))
    {
        let matches = constant_time_eq(password.as_bytes(), admin.password.expose().as_bytes());
        verify_dummy(password).await?;
        return if matches && plausible {
            Ok(Json(auth.issuer.issue(ADMIN_SUBJECT, Role::Admin)?))
        } else {
            Err(refused())
        };
    }

    let account: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, password_hash FROM customers WHERE email = $1")
            .bind(&email)
            .fetch_optional(&state.pool)
            .await?;
    let customer = match account {
        Some((id, hash)) if plausible => verify_password(password, hash).await?.then_some(id),
        _ => {
            verify_dummy(password).await?;
            None
        }
    };
    match customer {
        Some(id) => Ok(Json(auth.issuer.issue(&id.to_string(), Role::Customer)?)),
        None => Err(refused()),
    }
}

fn refused() -> ApiError {
    ApiError::Unauthorized(REFUSED.into())
}
