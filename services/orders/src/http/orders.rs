//! Reading orders: one by id, and a customer's orders newest first.
//!
//! Pages are keyset-paginated on `(created_at, id)`, the order of the `orders_customer_created_idx`
//! index, so a page costs the same however deep it is and rows inserted meanwhile shift nothing.

use std::collections::HashMap;

use anyhow::anyhow;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use platform::ApiError;
use platform::auth::AuthUser;
use platform::extract::{Json, Path, Query};
use platform::pagination::{Page, PageQuery, PageRequest};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AppState, OwnCustomer, ensure_customer_exists};
use crate::domain::{Order, OrderLine, OrderMode, OrderStatus};

/// The sort key a cursor carries: the last order shown.
type OrderKey = (DateTime<Utc>, Uuid);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders/{id}", get(get_order))
        .route("/api/customers/{id}/orders", get(list_customer_orders))
}

/// The order's owner or the admin; another customer gets 403 (an unknown id is 404 for everyone).
/// A checkout's order shows as `pending` until the checkout commits, `aborted` if it did not.
async fn get_order(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    // An order a checkout has not committed (yet) exists only in the checkout's record.
    let order = match load(&state.pool, id).await? {
        Some(order) => Some(order),
        None => crate::checkout::http::pending_order(&state, id).await?,
    };
    let order = order.ok_or_else(|| ApiError::NotFound(format!("no order has the id {id}")))?;
    user.require_self_or_admin(order.customer_id)?;
    Ok(Json(order))
}

/// One order with its lines, if it exists.
pub(crate) async fn load(pool: &PgPool, id: Uuid) -> Result<Option<Order>, ApiError> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, mode, status, total_cents, reason, created_at, updated_at
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut orders = with_lines(pool, vec![row]).await?;
    orders
        .pop()
        .map(Some)
        .ok_or_else(|| ApiError::Internal(anyhow!("an order vanished while its lines were read")))
}

/// `GET /api/customers/{id}/orders?limit&cursor`: 404 for an unknown customer, even with no orders.
async fn list_customer_orders(
    OwnCustomer(customer_id): OwnCustomer,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<Order>>, ApiError> {
    let page: PageRequest<OrderKey> = query.parse()?;
    ensure_customer_exists(&state.pool, customer_id).await?;
    let (after_time, after_id) = page.after.unzip();
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, mode, status, total_cents, reason, created_at, updated_at
         FROM orders
         WHERE customer_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC
         LIMIT $4",
    )
    .bind(customer_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let orders = with_lines(&state.pool, rows).await?;
    Ok(Json(Page::from_rows(orders, page.limit, |o| {
        (o.created_at, o.id)
    })))
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    mode: String,
    status: String,
    total_cents: i64,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    order_id: Uuid,
    book_id: Uuid,
    quantity: i32,
    price_cents: i64,
}

/// Loads the lines of all `rows` in one query and assembles the orders, keeping the rows' order.
async fn with_lines(pool: &PgPool, rows: Vec<OrderRow>) -> Result<Vec<Order>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, book_id, quantity, price_cents FROM order_lines
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_order: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
    for line in lines {
        by_order.entry(line.order_id).or_default().push(OrderLine {
            book_id: line.book_id,
            quantity: line.quantity,
            price_cents: line.price_cents,
        });
    }
    rows.into_iter()
        .map(|row| {
            let lines = by_order.remove(&row.id).unwrap_or_default();
            assemble(row, lines)
        })
        .collect()
}

/// The CHECK constraints make unknown modes and statuses impossible; meeting one is a bug (500).
fn assemble(row: OrderRow, lines: Vec<OrderLine>) -> Result<Order, ApiError> {
    let mode = OrderMode::parse(&row.mode)
        .ok_or_else(|| anyhow!("order {} has unknown mode {:?}", row.id, row.mode))?;
    let status = OrderStatus::parse(&row.status)
        .ok_or_else(|| anyhow!("order {} has unknown status {:?}", row.id, row.status))?;
    Ok(Order {
        id: row.id,
        customer_id: row.customer_id,
        mode,
        status,
        lines,
        total_cents: row.total_cents,
        reason: row.reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
