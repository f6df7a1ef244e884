//! `POST /internal/books/quote`: the current price and stock of the books a checkout is about to
//! reserve, so the orders service can compute the order's total before the transaction starts. The
//! `reserve` branch then refuses if a price changed in between, so a quote can never be stale at
//! commit.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use platform::ApiError;
use platform::auth::InternalCaller;
use platform::extract::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::AppState;

/// Most books one quote may name.
const MAX_BOOKS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub book_ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct QuotedBook {
    pub id: Uuid,
    pub title: String,
    pub price_cents: i64,
    pub stock: i32,
}

/// The books found (live ones only) and the ids that are not in the catalog.
#[derive(Debug, Serialize, Deserialize)]
pub struct Quote {
    pub books: Vec<QuotedBook>,
    pub missing: Vec<Uuid>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/internal/books/quote", post(quote))
}

async fn quote(
    _: InternalCaller,
    State(state): State<AppState>,
    Json(request): Json<QuoteRequest>,
) -> Result<Json<Quote>, ApiError> {
    if request.book_ids.is_empty() || request.book_ids.len() > MAX_BOOKS {
        return Err(ApiError::invalid(
            "book_ids",
            format!("name 1 to {MAX_BOOKS} books"),
        ));
    }
    let books: Vec<QuotedBook> = sqlx::query_as(
        "SELECT id, title, price_cents, stock FROM books
         WHERE id = ANY($1) AND deleted_at IS NULL ORDER BY id",
    )
    .bind(&request.book_ids)
    .fetch_all(state.pool())
    .await?;
    let missing = request
        .book_ids
        .iter()
        .filter(|id| !books.iter().any(|b| b.id == **id))
        .copied()
        .collect();
    Ok(Json(Quote { books, missing }))
}
