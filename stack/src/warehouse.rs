//! What `up` needs for the warehouse: its own database and role, the read-only `warehouse_reader`
//! role it extracts with, and the environment of the `bookstore warehouse` process.
//!
//! The reader role belongs in the stack's declarative accounts (the cluster work adds it there with
//! the same contract: SELECT on every table of `books` and `orders`, present and future). Until then
//! [`ensure_reader_role`] creates it with exactly those grants; delete it once the accounts do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::postgres::PgServer;
use crate::state::generate_password;

/// The read-only role the warehouse ETL connects to the source databases with.
pub const READER_ROLE: &str = "warehouse_reader";
/// The databases the warehouse reads.
pub const SOURCE_DATABASES: [&str; 2] = ["books", "orders"];

/// The warehouse's generated passwords, kept beside `secrets.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarehouseSecrets {
    pub warehouse_db: String,
    pub reader: String,
}

impl WarehouseSecrets {
    pub fn load_or_create(dir: &Path) -> anyhow::Result<WarehouseSecrets> {
        let path = dir.join("warehouse-secrets.json");
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        let secrets = WarehouseSecrets {
            warehouse_db: generate_password(),
            reader: generate_password(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&secrets)?)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)?;
        Ok(secrets)
    }
}

/// Creates (or re-grants) `warehouse_reader`: login, read-only by default, CONNECT on the source
/// databases and SELECT on every table in them, including tables their owners create later.
/// Idempotent; run it after the source databases exist.
pub async fn ensure_reader_role(server: &PgServer, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        password.chars().all(|c| c.is_ascii_alphanumeric()),
        "generated passwords are alphanumeric"
    );
    let admin = server.admin_pool("postgres").await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(READER_ROLE)
            .fetch_one(&admin)
            .await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    for statement in [
        format!("{verb} ROLE {READER_ROLE} LOGIN PASSWORD '{password}'"),
        format!("ALTER ROLE {READER_ROLE} SET default_transaction_read_only = on"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    for database in SOURCE_DATABASES {
        let pool = server.admin_pool(database).await?;
        for statement in [
            format!("GRANT CONNECT ON DATABASE {database} TO {READER_ROLE}"),
            format!("GRANT USAGE ON SCHEMA public TO {READER_ROLE}"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}"),
            // Tables the service's migrations add later are readable too.
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {database} IN SCHEMA public \
                 GRANT SELECT ON TABLES TO {READER_ROLE}"
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    }
    Ok(())
}

/// Prepares the warehouse's database and the reader role, and returns the warehouse process's
/// database settings.
pub async fn prepare(server: &PgServer, dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let secrets = WarehouseSecrets::load_or_create(dir)?;
    server
        .ensure_service_database("warehouse", &secrets.warehouse_db)
        .await?;
    ensure_reader_role(server, &secrets.reader).await?;
    Ok(vec![
        (
            "BOOKSTORE_DB__URL",
            server.url("warehouse", &secrets.warehouse_db, "warehouse"),
        ),
        (
            "BOOKSTORE_SOURCES__BOOKS__URL",
            server.url(READER_ROLE, &secrets.reader, "books"),
        ),
        (
            "BOOKSTORE_SOURCES__ORDERS__URL",
            server.url(READER_ROLE, &secrets.reader, "orders"),
        ),
    ])
}
