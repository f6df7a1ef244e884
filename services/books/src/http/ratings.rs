//! `POST /api/books/{id}/ratings` (written behind, see crate::ratings) and `GET /api/books/top`.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use platform::ApiError;
use platform::auth::{AuthUser, MaybeAuthUser};
use platform::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::books::{book_is_live, json_body, not_found, to_json};
use crate::domain::{Book, BookRow, NewRating, RatingBody};
use crate::ratings::TOP_BOOKS;

/// Longest leaderboard one request may ask for.
const MAX_TOP: i64 = 100;
const DEFAULT_TOP: i64 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/books/top", get(top_books))
        .route("/api/books/{id}/ratings", post(rate_book))
}

/// 202 once the rating is in the stream; persisted shortly after by a persister. A customer's new
/// rating of the same book replaces the old one. The book must be live — asked of the cache first
/// (a key of its own that ratings never invalidate), so a burst of ratings costs the database
/// nothing, and ratings of a known book are accepted even while the database is down.
async fn rate_book(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<RatingBody>,
) -> Result<Response, ApiError> {
    let customer = user.customer_id().ok_or_else(|| {
        ApiError::Forbidden(
            "ratings are given by customers; the admin has no rating to give".into(),
        )
    })?;
    let rating = NewRating::parse(&body).map_err(|errors| {
        ApiError::check(errors)
            .err()
            .unwrap_or_else(|| ApiError::invalid("body", "is not a valid rating"))
    })?;
    if !book_is_live(&state, id).await? {
        return Err(not_found(id));
    }
    if state.ratings_write_through {
        let rating_id =
            crate::ratings::write_through(state.pool(), &state.cache, customer, id, &rating)
                .await?;
        return Ok(rating_id_body(StatusCode::CREATED, rating_id));
    }
    let stream = state
        .ratings
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable {
            detail: "ratings are not being accepted: no ratings stream is configured".into(),
            retry_after: 60,
        })?;
    let rating_id = stream.append(customer, id, &rating).await?;
    // Debug, not info: the access log already has a line for every request (with its request and
    // trace ids), and the client has the rating id; a second line per rating only cost CPU.
    tracing::debug!(%rating_id, book_id = %id, "rating accepted");
    Ok(rating_id_body(StatusCode::ACCEPTED, rating_id))
}

/// `{"rating_id": "<uuid>"}`, written without building a JSON value (a UUID needs no escaping).
fn rating_id_body(status: StatusCode, rating_id: Uuid) -> Response {
    json_body(
        status,
        None,
        format!(r#"{{"rating_id":"{rating_id}"}}"#).as_bytes(),
    )
}

#[derive(Debug, Deserialize)]
struct TopParams {
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct TopItem {
    book: Book,
    average: Option<f64>,
    count: i64,
}

/// The best-rated live books: highest average first, more ratings breaking ties. Cached like a list
/// page (retired by every write, ratings included).
async fn top_books(
    _: MaybeAuthUser,
    State(state): State<AppState>,
    Query(params): Query<TopParams>,
) -> Result<Response, ApiError> {
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_TOP,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_TOP}, got {text:?}"
                ))
            })?,
    };
    let reader = state.clone();
    let body = state
        .cache()
        .list_page(&format!("top:{limit}"), move || {
            Box::pin(async move {
                let read = reader.read_catalog(|pool| async move {
                    sqlx::query_as::<_, BookRow>(TOP_BOOKS)
                        .bind(limit)
                        .fetch_all(&pool)
                        .await
                });
                read.await?.try_map(|rows| {
                    let items: Vec<TopItem> = rows
                        .into_iter()
                        .map(|row| {
                            let book = Book::from(row);
                            TopItem {
                                average: book.rating.average,
                                count: book.rating.count,
                                book,
                            }
                        })
                        .collect();
                    to_json(&json!({ "items": items }))
                })
            })
        })
        .await?;
    Ok(json_body(StatusCode::OK, None, &body))
}
