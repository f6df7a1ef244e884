//! `/api/books`: the catalog resource. Handlers only extract, call a parser and run one statement;
//! every rule about what a valid book is lives in `crate::domain`.
//!
//! Anyone may read (a token, when sent, must still be valid); writes need the admin, checked by the
//! first extractor so a customer gets 403 before the body is even looked at.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::HeaderValue;
use http::StatusCode;
use http::header::{CONTENT_TYPE, LOCATION};
use platform::auth::{AdminUser, MaybeAuthUser};
use platform::extract::{Json, Path, Query};
use platform::pagination::{Page, PageQuery};
use platform::{ApiError, FieldError};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::AppState;
use super::error::on_write;
use super::etag::{IfMatch, MaybeIfMatch, etag};
use crate::cache::CachedBook;
use crate::domain::book::{book_columns, with_totals};
use crate::domain::{Book, BookBody, BookFilter, BookRow, NewBook};

/// The query string of the list, kept as text so that each bad value gets this API's own 400.
#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    author: Option<String>,
    genre: Option<String>,
    q: Option<String>,
}

/// The list's sort key, and so what a cursor holds: the title orders, the id breaks ties.
type ListKey = (String, Uuid);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/books", get(list_books).post(create_book))
        .route(
            "/api/books/{id}",
            get(get_book).put(update_book).delete(delete_book),
        )
}

/// Keyset pagination: `(title, id) > cursor` (never OFFSET), so rows inserted before the cursor
/// while a client walks the pages neither repeat nor hide anything after it. The page is chosen
/// from `books` alone and only its rows are joined to their totals: with the join inside, the
/// planner prefers walking the title index to sorting the few books of a rare author or genre
/// (measured: 9 ms instead of 0.2 ms for 20 of 20 000 books).
const LIST_BOOKS: &str = concat!(
    "SELECT ",
    book_columns!(),
    " FROM (SELECT id, isbn, title, author, genre, price_cents, stock, version, updated_at
              FROM books
             WHERE deleted_at IS NULL
               AND ($1::text IS NULL OR lower(author) = lower($1))
               AND ($2::text IS NULL OR lower(genre) = lower($2))
               AND ($3::text IS NULL
                    OR search @@ websearch_to_tsquery('simple', $3)
                    OR ($4::text IS NOT NULL AND search @@ to_tsquery('simple', $4)))
               AND ($5::text IS NULL OR (title, id) > ($5, $6::uuid))
             ORDER BY title, id
             LIMIT $7) b",
    with_totals!(),
    "ORDER BY b.title, b.id"
);

async fn list_books(
    _: MaybeAuthUser,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let page = PageQuery {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse::<ListKey>()?;
    let filter = BookFilter::parse(
        params.author.as_deref(),
        params.genre.as_deref(),
        params.q.as_deref(),
    )
    .map_err(ApiError::BadRequest)?;
    // A forged cursor can decode to any title; NUL is the one PostgreSQL would fail the query on.
    let after = page.after;
    if after
        .as_ref()
        .is_some_and(|(title, _)| title.contains('\0'))
    {
        return Err(ApiError::BadRequest(
            "cursor is not one this API issued; start again without it".into(),
        ));
    }
    // Every parameter that shapes the answer, normalised, is the page's cache identity.
    let canonical = serde_json::json!([
        filter.author(),
        filter.genre(),
        filter.search_text(),
        after,
        page.limit
    ])
    .to_string();
    let limit = page.limit;
    let reader = state.clone();
    let body = state
        .cache
        .list_page(&canonical, move || {
            Box::pin(async move {
                let read = reader.read_catalog(|pool| {
                    let (filter, after) = (&filter, &after);
                    async move {
                        sqlx::query_as::<_, BookRow>(LIST_BOOKS)
                            // An unnamed statement is planned for the actual parameters each
                            // time; a cached one would drift to a generic plan, where
                            // `$3 IS NULL OR search @@ …` cannot use the indexes.
                            .persistent(false)
                            .bind(filter.author())
                            .bind(filter.genre())
                            .bind(filter.search_text())
                            .bind(filter.search_prefixes())
                            .bind(after.as_ref().map(|(title, _)| title.as_str()))
                            .bind(after.as_ref().map(|(_, id)| *id))
                            .bind(limit + 1)
                            .fetch_all(&pool)
                            .await
                    }
                });
                let rows = read.await?;
                rows.try_map(|rows| {
                    let page = Page::from_rows(rows, limit, |row| (row.title.clone(), row.id));
                    to_json(&page.map(Book::from))
                })
            })
        })
        .await?;
    Ok(json_body(StatusCode::OK, None, &body))
}

/// Cache-aside (crate::cache): a hit answers without the database, a miss reads it once per key
/// in this instance and fills the cache, "no such book" included (briefly).
async fn get_book(
    _: MaybeAuthUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let found = find_book(&state, id).await?.ok_or_else(|| not_found(id))?;
    Ok(json_body(StatusCode::OK, Some(found.version), &found.json))
}

/// Whether book `id` is live, through the cache: all a rating needs to know (see
/// [`BookCache::book_is_live`]).
pub(super) async fn book_is_live(state: &AppState, id: Uuid) -> Result<bool, ApiError> {
    let reader = state.clone();
    state
        .cache
        .book_is_live(id, move || {
            Box::pin(async move {
                reader
                    .read_catalog(|pool| async move {
                        sqlx::query_scalar(
                            "SELECT EXISTS (SELECT 1 FROM books WHERE id = $1 AND deleted_at IS NULL)",
                        )
                        .bind(id)
                        .fetch_one(&pool)
                        .await
                    })
                    .await
            })
        })
        .await
}

/// A live book through the cache (see [`get_book`]); `None` when there is no such book.
pub(super) async fn find_book(state: &AppState, id: Uuid) -> Result<Option<CachedBook>, ApiError> {
    let reader = state.clone();
    state
        .cache
        .book(id, move || {
            Box::pin(async move {
                let read = reader.read_catalog(|pool| async move {
                    sqlx::query_as::<_, BookRow>(concat!(
                        "SELECT ",
                        book_columns!(),
                        " FROM books b",
                        with_totals!(),
                        "WHERE b.id = $1 AND b.deleted_at IS NULL"
                    ))
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                });
                read.await?.try_map(|row| row.map(cached).transpose())
            })
        })
        .await
}

async fn create_book(
    _: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<BookBody>,
) -> Result<Response, ApiError> {
    let book = NewBook::parse(&body).map_err(invalid)?;
    // The statement's snapshot predates the totals row the insert's trigger adds: it reads as
    // none, which a new book's totals are.
    let row = sqlx::query_as::<_, BookRow>(concat!(
        "WITH b AS (
             INSERT INTO books (id, isbn, title, author, genre, price_cents, stock)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING *)
         SELECT ",
        book_columns!(),
        " FROM b",
        with_totals!()
    ))
    .bind(Uuid::now_v7())
    .bind(book.isbn().as_str())
    .bind(book.title())
    .bind(book.author())
    .bind(book.genre())
    .bind(book.price_cents())
    .bind(book.stock())
    .fetch_one(state.pool())
    .await
    .map_err(|e| on_write(e, book.isbn()))?;
    // A new id has no entry to invalidate (it was never served); only the list pages change.
    state.cache.books_changed(&[]).await;
    let location = format!("/api/books/{}", row.id);
    Ok(([(LOCATION, location)], with_etag(StatusCode::CREATED, row)).into_response())
}

/// A full replacement, conditional on the version the client read: one statement, so two writers
/// holding the same ETag cannot both win (the second finds the version moved and updates nothing).
async fn update_book(
    _: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    IfMatch(expected): IfMatch,
    Json(body): Json<BookBody>,
) -> Result<Response, ApiError> {
    let book = NewBook::parse(&body).map_err(invalid)?;
    let updated = sqlx::query_as::<_, BookRow>(concat!(
        "WITH b AS (
             UPDATE books
                SET isbn = $3, title = $4, author = $5, genre = $6, price_cents = $7, stock = $8,
                    version = version + 1
              WHERE id = $1 AND version = $2 AND deleted_at IS NULL
              RETURNING *)
         SELECT ",
        book_columns!(),
        " FROM b",
        with_totals!()
    ))
    .bind(id)
    .bind(expected)
    .bind(book.isbn().as_str())
    .bind(book.title())
    .bind(book.author())
    .bind(book.genre())
    .bind(book.price_cents())
    .bind(book.stock())
    .fetch_optional(state.pool())
    .await
    .map_err(|e| on_write(e, book.isbn()))?;
    match updated {
        Some(row) => {
            // After the commit (the statement ran on its own) and before the answer: once the
            // client sees 200, no instance can serve the old version from the cache.
            state.cache.books_changed(&[id]).await;
            Ok(with_etag(StatusCode::OK, row))
        }
        None => Err(why_unchanged(state.pool(), id, expected).await),
    }
}

/// A soft delete: the row stays for order history and the warehouse, hidden from every read, and its
/// ISBN free for a new book. `If-Match` is optional here; when sent, it must be current.
async fn delete_book(
    _: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    MaybeIfMatch(expected): MaybeIfMatch,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query_scalar::<_, Uuid>(
        "UPDATE books SET deleted_at = now(), version = version + 1
          WHERE id = $1 AND deleted_at IS NULL AND ($2::bigint IS NULL OR version = $2)
          RETURNING id",
    )
    .bind(id)
    .bind(expected)
    .fetch_optional(state.pool())
    .await?;
    match (deleted, expected) {
        (Some(_), _) => {
            state.cache.book_deleted(id).await;
            Ok(StatusCode::NO_CONTENT)
        }
        (None, Some(expected)) => Err(why_unchanged(state.pool(), id, expected).await),
        (None, None) => Err(not_found(id)),
    }
}

/// After a conditional write changed nothing, tells 404 (no live book) from 412 (it moved on).
async fn why_unchanged(pool: &PgPool, id: Uuid, expected: i64) -> ApiError {
    let current = sqlx::query_scalar::<_, i64>(
        "SELECT version FROM books WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await;
    match current {
        Ok(None) => not_found(id),
        Ok(Some(current)) => ApiError::PreconditionFailed(format!(
            "book {id} is at version {current}, not {expected}: fetch it again, reapply your \
             change and send If-Match: \"{current}\""
        )),
        Err(e) => ApiError::from(e),
    }
}

fn with_etag(status: StatusCode, row: BookRow) -> Response {
    let book = Book::from(row);
    (status, [etag(book.version)], Json(book)).into_response()
}

/// A JSON body already serialized (from the cache or for it), with its ETag when it is one book.
pub(super) fn json_body(status: StatusCode, version: Option<i64>, json: &[u8]) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, "application/json")],
        Bytes::copy_from_slice(json),
    )
        .into_response();
    if let Some(version) = version {
        let (name, value) = etag(version);
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The cache's form of a row: its version and the API's JSON.
fn cached(row: BookRow) -> Result<CachedBook, sqlx::Error> {
    let version = row.version;
    let json = to_json(&Book::from(row))?;
    Ok(CachedBook { version, json })
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<Arc<[u8]>, sqlx::Error> {
    serde_json::to_vec(value)
        .map(Arc::from)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub(super) fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no book with id {id}"))
}

/// A 422 naming every invalid field.
fn invalid(errors: Vec<FieldError>) -> ApiError {
    ApiError::check(errors)
        .err()
        .unwrap_or_else(|| ApiError::invalid("body", "is not a valid book"))
}
