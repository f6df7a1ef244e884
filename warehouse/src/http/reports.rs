//! `GET /api/reports/sales|top-books|ratings`: the figures over the star schema. Every answer says
//! when its data was loaded (`loaded_at`, the end of the last successful run; null before one).

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use platform::ApiError;
use platform::auth::AdminUser;
use platform::extract::{Json, Query};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::params::{DateRange, GroupBy, RangeQuery, limit};
use crate::etl::runs;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopBooksQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingsQuery {
    limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report<R> {
    pub rows: Vec<R>,
    pub loaded_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, PartialEq, Eq)]
pub struct SalesRow {
    pub key: String,
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, PartialEq, Eq)]
pub struct TopBookRow {
    pub book_id: Uuid,
    pub title: String,
    pub units: i64,
    pub revenue_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, PartialEq)]
pub struct RatingRow {
    pub book_id: Uuid,
    pub title: String,
    pub average: f64,
    pub count: i64,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/reports/sales", get(sales))
        .route("/api/reports/top-books", get(top_books))
        .route("/api/reports/ratings", get(ratings))
}

/// What a sales row is keyed by. Author and genre are the book's as it was when sold (the SCD
/// type 2 version the fact points at).
fn sales_key(group_by: GroupBy) -> &'static str {
    match group_by {
        GroupBy::Day => "to_char(d.day, 'YYYY-MM-DD')",
        GroupBy::Author => "coalesce(b.author, '(unknown)')",
        GroupBy::Genre => "coalesce(b.genre, '(unknown)')",
    }
}

async fn sales(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(query): Query<SalesQuery>,
) -> Result<Json<Report<SalesRow>>, ApiError> {
    let group_by = GroupBy::parse(query.group_by.as_deref())?;
    let range = DateRange::parse(&RangeQuery {
        from: query.from,
        to: query.to,
    })?;
    let key = sales_key(group_by);
    let order = if group_by == GroupBy::Day {
        "key"
    } else {
        "revenue_cents DESC, key"
    };
    let rows = sqlx::query_as::<_, SalesRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {key} AS key, count(DISTINCT f.order_id) AS orders,
                sum(f.quantity)::bigint AS units, sum(f.revenue_cents)::bigint AS revenue_cents
         FROM fact_sales f
         JOIN dim_date d ON d.date_key = f.date_key
         LEFT JOIN dim_book b ON b.book_key = f.book_key
         WHERE f.date_key BETWEEN $1 AND $2
         GROUP BY 1 ORDER BY {order}"
    )))
    .bind(range.first_key())
    .bind(range.last_key())
    .fetch_all(state.etl.warehouse())
    .await
    .context("Failed to read the sales report")?;
    report(&state, rows).await
}

async fn top_books(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(query): Query<TopBooksQuery>,
) -> Result<Json<Report<TopBookRow>>, ApiError> {
    let limit = limit(query.limit.as_deref(), 10, 100)?;
    let range = DateRange::parse(&RangeQuery {
        from: query.from,
        to: query.to,
    })?;
    let rows = sqlx::query_as::<_, TopBookRow>(
        "SELECT t.book_id, coalesce(b.title, '(unknown)') AS title, t.units, t.revenue_cents
         FROM (SELECT book_id, sum(quantity)::bigint AS units, sum(revenue_cents)::bigint AS revenue_cents
               FROM fact_sales WHERE date_key BETWEEN $1 AND $2
               GROUP BY book_id) t
         LEFT JOIN dim_book b ON b.book_id = t.book_id AND b.is_current
         ORDER BY t.units DESC, t.revenue_cents DESC, t.book_id
         LIMIT $3",
    )
    .bind(range.first_key())
    .bind(range.last_key())
    .bind(limit)
    .fetch_all(state.etl.warehouse())
    .await
    .context("Failed to read the top books report")?;
    report(&state, rows).await
}

async fn ratings(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(query): Query<RatingsQuery>,
) -> Result<Json<Report<RatingRow>>, ApiError> {
    let limit = limit(query.limit.as_deref(), 100, 1000)?;
    let rows = sqlx::query_as::<_, RatingRow>(
        "SELECT r.book_id, coalesce(b.title, '(unknown)') AS title,
                round(avg(r.stars), 2)::float8 AS average, count(*) AS count
         FROM fact_ratings r
         LEFT JOIN dim_book b ON b.book_id = r.book_id AND b.is_current
         GROUP BY r.book_id, b.title
         ORDER BY average DESC, count DESC, r.book_id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(state.etl.warehouse())
    .await
    .context("Failed to read the ratings report")?;
    report(&state, rows).await
}

async fn report<R>(state: &AppState, rows: Vec<R>) -> Result<Json<Report<R>>, ApiError> {
    let loaded_at = runs::loaded_at(state.etl.warehouse()).await?;
    Ok(Json(Report { rows, loaded_at }))
}
