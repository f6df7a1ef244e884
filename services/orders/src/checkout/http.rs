//! `POST /api/checkout`, and the order of a checkout that has not committed (yet).
//!
//! The orders service starts the global transaction and the coordinator drives it: record the
//! checkout under its Idempotency-Key, quote the prices from books, hand both branches (books
//! `reserve`, orders `place`) to the coordinator, and answer with what it decided — 201 with the
//! order, 409 naming what is short, or 202 with the order as `pending` when the outcome is not known
//! yet. The coordinator finishes it; `GET /api/orders/{id}` follows it ([`pending_order`]).

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use http::Method;
use platform::auth::AuthUser;
use platform::extract::Json;
use platform::problem::PROBLEM_JSON;
use platform::{ApiError, Problem};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ledger::{self, CheckoutRow};
use super::peers::PeerError;
use super::place::{PlacedLine, Placement};
use super::request::{CheckoutBody, CheckoutRequest};
use crate::domain::{Order, OrderLine, OrderMode, OrderStatus};
use crate::http::AppState;
use crate::http::idempotency::{IDEMPOTENT_REPLAYED, IdempotencyKey};

/// A checkout the coordinator does not know this long after it was recorded never reached it (the
/// handler gives up submitting long before), so it is final: aborted, nothing happened.
const NEVER_SUBMITTED_AFTER: Duration = Duration::from_secs(300);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/checkout", post(checkout))
}

/// The customer checking out: 401 without a valid token, 403 for the admin (who has no credit) —
/// decided before the key or the body is looked at.
pub struct Shopper(Uuid);

impl FromRequestParts<AppState> for Shopper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.customer_id().map(Shopper).ok_or_else(|| {
            ApiError::Forbidden("checkout is for customers; the admin account has no credit".into())
        })
    }
}

async fn checkout(
    Shopper(customer_id): Shopper,
    State(state): State<AppState>,
    key: IdempotencyKey,
    Json(body): Json<CheckoutBody>,
) -> Result<Response, ApiError> {
    let request = CheckoutRequest::parse(body)?;
    let hash = request_hash(&request)?;
    // Quoted before the checkout is recorded, so that recording it is one write. A repeated
    // request costs a quote it does not use; a quote that fails still lets a repeat replay.
    let quote = match &state.checkout {
        Some(checkout) => quote(checkout, &request, checkout.config.call_timeout()).await,
        None => Err(unavailable(
            "checkout is not available: this instance has no registry",
        )),
    };
    let quote = match quote {
        Ok(quote) => quote,
        Err(err) => {
            return match ledger::find(&state.pool, customer_id, key.as_str()).await? {
                Some(row) => replay(&state, row, &hash).await,
                None => Err(err),
            };
        }
    };
    let (id, order_id) = (Uuid::now_v7(), Uuid::now_v7());
    let placement = placement(order_id, customer_id, &request, &quote);
    let problem = unknown_books(id, &quote);
    let lines = serde_json::to_value(&placement.lines)
        .map_err(|e| anyhow::Error::new(e).context("Failed to serialize the order lines"))?;
    let new = ledger::NewCheckout {
        id,
        order_id,
        customer_id,
        key: key.as_str(),
        hash: &hash,
        mode: request.mode,
        total_cents: problem.is_none().then_some(placement.total_cents),
        lines: problem.is_none().then_some(&lines),
        problem: problem.as_ref(),
    };
    let (row, created) = ledger::start(&state.pool, &new).await?;
    if !created {
        return replay(&state, row, &hash).await;
    }
    let row = if row.is_final() {
        row
    } else {
        run(&state, row, &placement).await?
    };
    // This request recorded the checkout and ran it: a committed one is answered from its record
    // (what the order was placed with), not by reading the order back — the order is that record's
    // placement, stamped with the record's time (see `place::insert_order`).
    if row.status == "committed" {
        return Ok(created_answer(&row, committed_order(&row)));
    }
    answer(&state, &row).await
}

/// The answer to a request repeating an earlier one's key: the earlier checkout's answer as it
/// stands now, marked replayed — or a 422 when the key came with another basket.
async fn replay(state: &AppState, row: CheckoutRow, hash: &[u8]) -> Result<Response, ApiError> {
    if row.request_hash != hash {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was already used for another checkout; use a new key for a new basket",
        ));
    }
    let row = refresh(state, row).await?;
    let mut response = answer(state, &row).await?;
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// The order a checkout creates, for `GET /api/orders/{id}` when no order row exists: the checkout
/// is asked how it went first, so a committed one shows the real order, and one still running or
/// aborted shows as `pending` or `aborted`. `None` when no checkout creates this order.
pub async fn pending_order(state: &AppState, order_id: Uuid) -> Result<Option<Order>, ApiError> {
    let Some(row) = ledger::by_order(&state.pool, order_id).await? else {
        return Ok(None);
    };
    let row = refresh(state, row).await?;
    order_of(state, &row).await.map(Some)
}

/// Submits the recorded checkout and records the outcome. When the coordinator certainly never got
/// it, the checkout is forgotten (nothing happened, the key may be used again).
async fn run(
    state: &AppState,
    row: CheckoutRow,
    placement: &Placement,
) -> Result<CheckoutRow, ApiError> {
    let Some(checkout) = &state.checkout else {
        ledger::forget(&state.pool, row.id).await?;
        return Err(unavailable(
            "checkout is not available: this instance has no registry",
        ));
    };
    let config = &checkout.config;
    let submission = submission(&row, config, placement, config.wait_ms);
    let wait = Duration::from_millis(config.wait_ms) + config.call_timeout();
    let outcome = checkout
        .peers
        .coordinator(
            Method::POST,
            "/internal/transactions",
            Some(&submission),
            wait,
        )
        .await;
    match outcome {
        Err(PeerError::NotSent { .. }) => {
            ledger::forget(&state.pool, row.id).await?;
            Err(unavailable(
                "the transaction coordinator is unavailable; try again shortly",
            ))
        }
        Err(PeerError::Ambiguous { reason, .. }) => {
            tracing::warn!(checkout = %row.id, %reason, "checkout outcome unknown for now");
            Ok(ledger::update(&state.pool, &row, "pending", None, None).await?)
        }
        Ok((status, body)) => record(state, &row, status, &body).await,
    }
}

/// Records what the coordinator said about the transaction.
async fn record(
    state: &AppState,
    row: &CheckoutRow,
    status: StatusCode,
    body: &Value,
) -> Result<CheckoutRow, ApiError> {
    let protocol_state = body.get("state").and_then(Value::as_str);
    let (summary, problem) = match (status.is_success(), protocol_state) {
        (true, Some("committed" | "completed")) => ("committed", None),
        (true, Some("aborted" | "compensated")) => ("aborted", Some(refused(row, body))),
        (true, Some(_)) => ("pending", None),
        _ if status.is_client_error() && status != StatusCode::NOT_FOUND => {
            // The coordinator refused the submission itself: a bug on one side or the other.
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the coordinator refused checkout {}: {status} {body}",
                row.id
            )));
        }
        _ => ("pending", None),
    };
    Ok(ledger::update(&state.pool, row, summary, protocol_state, problem.as_ref()).await?)
}

/// A checkout that is not final yet asks the coordinator how it went.
async fn refresh(state: &AppState, row: CheckoutRow) -> Result<CheckoutRow, ApiError> {
    let Some(checkout) = state.checkout.as_ref().filter(|_| !row.is_final()) else {
        return Ok(row);
    };
    let path = format!("/internal/transactions/{}", row.id);
    let call_timeout = checkout.config.call_timeout();
    match checkout
        .peers
        .coordinator(Method::GET, &path, None, call_timeout)
        .await
    {
        // Not recorded there: the first submission was lost (its coordinator died before it
        // recorded it, say). Submitting again is safe — the coordinator takes a gxid once — and
        // lets the checkout finish instead of staying pending.
        Ok((StatusCode::NOT_FOUND, _)) if placement_of(&row).is_some() => {
            resubmit(state, checkout, &row).await
        }
        Ok((StatusCode::NOT_FOUND, _)) if never_submitted(&row) => {
            let problem = aborted_problem(&row, "the checkout never reached the coordinator");
            Ok(ledger::update(&state.pool, &row, "aborted", None, Some(&problem)).await?)
        }
        Ok((status, body)) if status.is_success() => record(state, &row, status, &body).await,
        _ => Ok(row),
    }
}

async fn resubmit(
    state: &AppState,
    checkout: &super::Checkout,
    row: &CheckoutRow,
) -> Result<CheckoutRow, ApiError> {
    let Some(placement) = placement_of(row) else {
        return Ok(row.clone());
    };
    // Marked first: the request that started it may be about to forget it (its own submission was
    // not sent); whichever comes first wins, so the record and the transaction never part.
    if !ledger::mark_submitting(&state.pool, row.id).await? {
        return Err(unavailable(
            "this checkout was withdrawn because the coordinator was unreachable; try again",
        ));
    }
    // wait_ms 0: this is a read; the coordinator answers at once and drives it in the background.
    let body = submission(row, &checkout.config, &placement, 0);
    let call_timeout = checkout.config.call_timeout();
    match checkout
        .peers
        .coordinator(
            Method::POST,
            "/internal/transactions",
            Some(&body),
            call_timeout,
        )
        .await
    {
        Ok((status, answer)) if status.is_success() => record(state, row, status, &answer).await,
        _ => Ok(row.clone()),
    }
}

/// What the coordinator is asked to run for a checkout (the same body every time, but `wait_ms`).
fn submission(
    row: &CheckoutRow,
    config: &super::CheckoutConfig,
    placement: &Placement,
    wait_ms: u64,
) -> Value {
    json!({
        "gxid": row.id,
        "mode": placement.mode.as_str(),
        "timeout_ms": config.timeout_ms,
        "wait_ms": wait_ms,
        "branches": [
            { "service": config.books_service, "branch": "reserve",
              "payload": { "items": placement.lines } },
            { "service": config.orders_service, "branch": "place", "payload": placement },
        ],
    })
}

/// The placement a quoted checkout submitted, rebuilt from its record.
fn placement_of(row: &CheckoutRow) -> Option<Placement> {
    let lines: Vec<PlacedLine> = serde_json::from_value(row.lines.clone()?).ok()?;
    Some(Placement {
        order_id: row.order_id,
        customer_id: row.customer_id,
        mode: OrderMode::parse(&row.mode)?,
        lines,
        total_cents: row.total_cents?,
    })
}

fn never_submitted(row: &CheckoutRow) -> bool {
    let age = Utc::now().signed_duration_since(row.created_at);
    age.to_std().is_ok_and(|age| age > NEVER_SUBMITTED_AFTER)
}

/// The response for a checkout's current row: 201 + the order, the stored problem, or 202 + the
/// order as pending; the order's URL follows the checkout either way.
async fn answer(state: &AppState, row: &CheckoutRow) -> Result<Response, ApiError> {
    let status = match row.status.as_str() {
        "aborted" => return Ok(stored_problem(row.problem.as_ref())),
        "committed" => StatusCode::CREATED,
        _ => StatusCode::ACCEPTED,
    };
    let order = order_of(state, row).await?;
    Ok(with_location((status, Json(order)).into_response(), row))
}

/// 201 with the committed order.
fn created_answer(row: &CheckoutRow, order: Order) -> Response {
    with_location((StatusCode::CREATED, Json(order)).into_response(), row)
}

/// The order's URL, which follows the checkout whatever its state.
fn with_location(mut response: Response, row: &CheckoutRow) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/api/orders/{}", row.order_id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The order a committed checkout placed, as `GET /api/orders/{id}` shows it, made from the
/// checkout's record: the `place` branch inserts exactly the record's lines and total, as
/// `committed`, stamped created and updated at the record's `created_at`; nothing changes a
/// committed order afterwards (a compensation only follows a saga that did not complete).
fn committed_order(row: &CheckoutRow) -> Order {
    Order {
        updated_at: row.created_at,
        ..order_from_record(row, OrderStatus::Committed, None)
    }
}

/// The committed order, or one made from the checkout record (pending or aborted).
async fn order_of(state: &AppState, row: &CheckoutRow) -> Result<Order, ApiError> {
    if row.status == "committed"
        && let Some(order) = crate::http::orders::load(&state.pool, row.order_id).await?
    {
        return Ok(order);
    }
    let (status, reason) = match row.status.as_str() {
        "aborted" => {
            let detail = row.problem.as_ref().and_then(|p| p.get("detail"));
            (
                OrderStatus::Aborted,
                detail.and_then(Value::as_str).map(str::to_owned),
            )
        }
        _ => (OrderStatus::Pending, None),
    };
    Ok(order_from_record(row, status, reason))
}

/// The order as the checkout record describes it.
fn order_from_record(row: &CheckoutRow, status: OrderStatus, reason: Option<String>) -> Order {
    let lines: Vec<OrderLine> = row
        .lines
        .as_ref()
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    Order {
        id: row.order_id,
        customer_id: row.customer_id,
        mode: OrderMode::parse(&row.mode).unwrap_or(OrderMode::TwoPhaseCommit),
        status,
        lines,
        total_cents: row.total_cents.unwrap_or(0),
        reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// The current prices of the basket's books, from books.
async fn quote(
    checkout: &super::Checkout,
    request: &CheckoutRequest,
    timeout: Duration,
) -> Result<Quote, ApiError> {
    let body = json!({ "book_ids": request.book_ids() });
    let result = checkout
        .peers
        .books(Method::POST, "/internal/books/quote", Some(&body), timeout)
        .await;
    match result {
        Ok((StatusCode::OK, body)) => serde_json::from_value(body).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "books sent a quote this service cannot read: {e}"
            ))
        }),
        Ok((status, body)) => Err(ApiError::Internal(anyhow::anyhow!(
            "books refused the quote: {status} {body}"
        ))),
        Err(err) => {
            tracing::warn!(error = %err, "no price quote from books");
            Err(unavailable("the catalog is unavailable; try again shortly"))
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct Quote {
    books: Vec<QuotedBook>,
    missing: Vec<Uuid>,
}

#[derive(Debug, serde::Deserialize)]
struct QuotedBook {
    id: Uuid,
    price_cents: i64,
}

fn unknown_books(checkout_id: Uuid, quote: &Quote) -> Option<Value> {
    if quote.missing.is_empty() {
        return None;
    }
    let refusal = json!({
        "kind": "unknown-book",
        "detail": format!("{} of the books are not in the catalog", quote.missing.len()),
        "book_ids": quote.missing,
    });
    Some(refusal_problem(checkout_id, &refusal))
}

fn placement(
    order_id: Uuid,
    customer_id: Uuid,
    request: &CheckoutRequest,
    quote: &Quote,
) -> Placement {
    let lines: Vec<PlacedLine> = request
        .items
        .iter()
        .map(|item| PlacedLine {
            book_id: item.book_id,
            quantity: item.quantity,
            price_cents: quote
                .books
                .iter()
                .find(|b| b.id == item.book_id)
                .map_or(0, |b| b.price_cents),
        })
        .collect();
    // At most 50 lines × 100 copies × 10^8 cents: far inside i64.
    let total_cents = lines
        .iter()
        .map(|l| i64::from(l.quantity) * l.price_cents)
        .sum();
    Placement {
        order_id,
        customer_id,
        mode: request.mode,
        lines,
        total_cents,
    }
}

/// The 409 for a transaction the coordinator aborted or compensated: the refusal when there was one
/// (what is short), else a plain "it did not complete".
fn refused(row: &CheckoutRow, body: &Value) -> Value {
    match body.get("refusal").filter(|r| r.is_object()) {
        Some(refusal) => refusal_problem(row.id, refusal),
        None => aborted_problem(
            row,
            "the checkout could not complete in time and was rolled back",
        ),
    }
}

fn refusal_problem(checkout_id: Uuid, refusal: &Value) -> Value {
    let kind = refusal
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("refused");
    let detail = refusal
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or("the checkout was refused");
    problem_with(
        Problem::new(StatusCode::CONFLICT, kind, detail),
        checkout_id,
        Some(refusal),
    )
}

fn aborted_problem(row: &CheckoutRow, why: &str) -> Value {
    let detail = format!("{why}; nothing was charged. Check out again with a new Idempotency-Key");
    problem_with(
        Problem::new(StatusCode::CONFLICT, "checkout-aborted", detail),
        row.id,
        None,
    )
}

fn problem_with(problem: Problem, checkout_id: Uuid, refusal: Option<&Value>) -> Value {
    let mut value = serde_json::to_value(problem).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("checkout_id".into(), json!(checkout_id));
        if let Some(refusal) = refusal {
            object.insert("refusal".into(), refusal.clone());
        }
    }
    value
}

fn stored_problem(problem: Option<&Value>) -> Response {
    let problem = problem.cloned().unwrap_or_else(|| json!({}));
    let status = problem
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(StatusCode::CONFLICT);
    let mut response = (status, axum::Json(problem)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::Unavailable {
        detail: detail.into(),
        retry_after: 1,
    }
}

fn request_hash(request: &CheckoutRequest) -> Result<Vec<u8>, ApiError> {
    let canonical = serde_json::to_vec(request)
        .map_err(|e| anyhow::Error::new(e).context("Failed to serialize a checkout for hashing"))?;
    Ok(Sha256::digest(&canonical).to_vec())
}
