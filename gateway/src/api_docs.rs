//! The API description: `GET /openapi.json` (OpenAPI 3.1, `api/openapi.json`) and `GET /docs`, a
//! page that renders it with the description built in — no script, style or font from anywhere
//! else, so it works offline. `tests/openapi.rs` checks the description against the routes the
//! services and the gateway really serve.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The OpenAPI description of every public route.
pub const OPENAPI: &str = include_str!("../api/openapi.json");
const PAGE: &str = include_str!("../api/docs.html");

/// The page with the description in its `<script type="application/json">` (`</` escaped so the
/// JSON cannot close the script element).
static DOCS: LazyLock<String> =
    LazyLock::new(|| PAGE.replace("__OPENAPI_SPEC__", &OPENAPI.replace("</", "<\\/")));

pub fn router() -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn docs() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DOCS.as_str(),
    )
}
