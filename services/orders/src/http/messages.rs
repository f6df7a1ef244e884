//! `GET /api/customers/{id}/messages?limit&cursor`: the customer's notifications, newest first.
//!
//! The eventual model: the page is read from a replica whose lag is under the pool's limit (the
//! next one, then the primary, when it cannot be reached), so a message may show up a moment
//! after the change it reports — and the route keeps answering while the primary fails over.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use platform::ApiError;
use platform::extract::{Json, Query};
use platform::pagination::{Page, PageQuery, PageRequest};

use super::{AppState, OwnCustomer, customer_exists, ensure_customer_exists};
use crate::messages::{self, Message, MessageKey};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/customers/{id}/messages", get(list_messages))
}

/// The customer themself or the admin (see [`OwnCustomer`]); 404 for an unknown customer.
async fn list_messages(
    OwnCustomer(customer_id): OwnCustomer,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<Message>>, ApiError> {
    let page: PageRequest<MessageKey> = query.parse()?;
    // Existence is read eventually too, so the route answers while the primary fails over; a
    // customer too new for the replicas (or no member answering) is asked of the primary.
    let known = state
        .pools
        .read_eventually(|pool| async move { customer_exists(&pool, customer_id).await })
        .await;
    if !matches!(known, Ok(true)) {
        ensure_customer_exists(&state.pool, customer_id).await?;
    }
    // A replica that died before the pool's probe noticed is skipped for the next one.
    let page = &page;
    let found = state
        .pools
        .read_eventually(|pool| async move { messages::page(&pool, customer_id, page).await })
        .await?;
    Ok(Json(found))
}
