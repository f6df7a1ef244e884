//! A service whose database refuses its login (a role locked with `NOLOGIN`, a rotated password)
//! answers 503 + `Retry-After`, never 500: nothing the client did is wrong, and nothing was lost.

use axum::response::IntoResponse;
use platform::ApiError;
use sqlx::PgPool;
use testkit::TestPostgres;

#[tokio::test]
async fn a_refused_login_is_a_503_with_retry_after() -> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    let admin = PgPool::connect(&pg.admin_url("postgres")).await?;
    sqlx::query("CREATE ROLE locked LOGIN PASSWORD 'lockedpw'")
        .execute(&admin)
        .await?;
    sqlx::query("ALTER ROLE locked NOLOGIN")
        .execute(&admin)
        .await?;
    let url = format!(
        "postgres://locked:lockedpw@127.0.0.1:{}/postgres",
        pg.port()
    );
    let refused = PgPool::connect(&url)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a NOLOGIN role connected"))?;
    assert!(platform::problem::login_refused(&refused), "{refused:?}");
    let response = ApiError::from(refused).into_response();
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));
    Ok(())
}
