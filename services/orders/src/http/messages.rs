//! `GET /api/customers/{id}/messages?limit&cursor`: the customer's notifications, newest first.
//!
//! The eventual model: the page is read from a replica whose lag is under the pool's limit (the
//! primary when none is), so a message may show up a moment after the change it reports.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use platform::ApiError;
use platform::extract::{Json, Query};
use platform::pagination::{Page, PageQuery, PageRequest};

use super::{AppState, OwnCustomer, ensure_customer_exists};
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
    // customer too new for the replica (or a replica that just died) is asked of the primary.
    if ensure_customer_exists(state.pools.eventual(), customer_id)
        .await
        .is_err()
    {
        ensure_customer_exists(&state.pool, customer_id).await?;
    }
    let found = match messages::page(state.pools.eventual(), customer_id, &page).await {
        Ok(found) => found,
        // The replica died before the pool's probe noticed: the primary answers this one.
        Err(_) => messages::page(&state.pool, customer_id, &page).await?,
    };
    Ok(Json(found))
}
