//! Sign-up and reading a customer.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::ApiError;
use platform::auth::MaybeAuthUser;
use platform::extract::Json;
use platform::problem::violated_constraint;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::idempotency::Answer;
use super::object::Object;
use super::{AppState, OwnCustomer, customer_not_found, invalid_fields};
use crate::domain::{Customer, CustomerName, Email, NewCustomer, hash_password};

/// `POST /api/customers`. Fields are plain strings here; their rules live in [`NewCustomer::parse`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    pub email: String,
    pub name: String,
    pub password: String,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/customers", post(create_customer))
        .route("/api/customers/{id}", get(get_customer))
}

/// 201 with the new customer and its `Location`; 409 when the email is taken in any letter case.
async fn create_customer(
    _: MaybeAuthUser,
    State(state): State<AppState>,
    Json(Object(body)): Json<Object<SignUp>>,
) -> Result<Response, ApiError> {
    let NewCustomer {
        email,
        name,
        password,
    } = NewCustomer::parse(&body.email, &body.name, body.password).map_err(invalid_fields)?;
    let password_hash = hash_password(password).await?;
    let customer = insert_customer(&state.pool, &email, &name, &password_hash).await?;
    let location = format!("/api/customers/{}", customer.id);
    Ok(Answer::created(location, customer).into_response())
}

async fn insert_customer(
    pool: &PgPool,
    email: &Email,
    name: &CustomerName,
    password_hash: &str,
) -> Result<Customer, ApiError> {
    sqlx::query_as::<_, Customer>(
        "INSERT INTO customers (id, email, name, password_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, email, name, credit_cents, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .fetch_one(pool)
    .await
    .map_err(|e| match violated_constraint(&e) {
        Some("customers_email_key") => {
            ApiError::Conflict("a customer with this email already exists".into())
        }
        _ => e.into(),
    })
}

/// The customer themself or the admin (see [`OwnCustomer`]).
async fn get_customer(
    OwnCustomer(id): OwnCustomer,
    State(state): State<AppState>,
) -> Result<Json<Customer>, ApiError> {
    let customer = find_customer(&state.pool, id)
        .await?
        .ok_or_else(|| customer_not_found(id))?;
    Ok(Json(customer))
}

async fn find_customer(pool: &PgPool, id: Uuid) -> Result<Option<Customer>, ApiError> {
    Ok(sqlx::query_as::<_, Customer>(
        "SELECT id, email, name, credit_cents, created_at FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}
