//! The shipped accounts (`deploy/postgres/accounts.toml`) applied to a real PostgreSQL: each service
//! role reaches only its own database, the warehouse reader reads books and orders (tables created
//! later included) and writes nothing; applying twice changes nothing.

use sqlx::PgPool;
use stack::accounts::{self, Accounts};
use testkit::TestPostgres;

/// Test passwords are alphanumeric, like generated ones.
fn password(role: &str) -> String {
    format!("{}pw", role.replace('_', ""))
}

fn url(pg: &TestPostgres, role: &str, database: &str) -> String {
    format!(
        "postgres://{role}:{}@127.0.0.1:{}/{database}",
        password(role),
        pg.port()
    )
}

async fn apply(pg: &TestPostgres) -> anyhow::Result<()> {
    let admin = async |db: &str| Ok(PgPool::connect(&pg.admin_url(db)).await?);
    accounts::apply(&Accounts::shipped()?, admin, password).await
}

#[tokio::test]
async fn each_service_role_reaches_only_its_database_and_the_reader_only_reads()
-> anyhow::Result<()> {
    let pg = TestPostgres::start().await?;
    apply(&pg).await?;
    let books = PgPool::connect(&url(&pg, "books", "books")).await?;
    sqlx::query("CREATE TABLE before_grant (id int)")
        .execute(&books)
        .await?;
    apply(&pg).await?; // idempotent, and grants SELECT on tables that exist now
    sqlx::query("CREATE TABLE after_grant (id int)")
        .execute(&books)
        .await?;
    sqlx::query("INSERT INTO after_grant VALUES (1)")
        .execute(&books)
        .await?;

    for (role, foreign) in [
        ("books", "orders"),
        ("orders", "coordinator"),
        ("coordinator", "books"),
        ("warehouse_reader", "coordinator"),
    ] {
        assert!(
            PgPool::connect(&url(&pg, role, foreign)).await.is_err(),
            "{role} must not connect to the {foreign} database"
        );
    }
    let refused = sqlx::query("CREATE DATABASE sneaky").execute(&books).await;
    assert!(refused.is_err(), "a service role cannot create databases");
    let refused = sqlx::query("CREATE ROLE sneaky").execute(&books).await;
    assert!(refused.is_err(), "a service role cannot create roles");

    let reader = PgPool::connect(&url(&pg, "warehouse_reader", "books")).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM after_grant")
        .fetch_one(&reader)
        .await?;
    assert_eq!(rows, 1, "the reader sees tables created after the grant");
    sqlx::query("SELECT count(*) FROM before_grant")
        .fetch_one(&reader)
        .await?;
    let write = sqlx::query("INSERT INTO after_grant VALUES (2)")
        .execute(&reader)
        .await;
    assert!(write.is_err(), "the reader writes nothing");
    PgPool::connect(&url(&pg, "warehouse_reader", "orders")).await?;
    Ok(())
}
