//! Database accounts as code: `deploy/postgres/accounts.toml` (compiled in) names one login role
//! per service, owning only its database, and read-only roles; [`apply`] makes a server match it,
//! idempotently, on the single-server and the cluster path alike.

use serde::Deserialize;
use sqlx::{AssertSqlSafe, PgPool};

/// The accounts file as shipped.
pub const ACCOUNTS_TOML: &str = include_str!("../../deploy/postgres/accounts.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Accounts {
    #[serde(default)]
    pub service: Vec<ServiceAccount>,
    #[serde(default)]
    pub reader: Vec<ReaderAccount>,
}

/// A service's login role and the database it owns.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceAccount {
    pub role: String,
    pub database: String,
}

/// A read-only login role over other roles' databases.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReaderAccount {
    pub role: String,
    pub databases: Vec<String>,
}

impl Accounts {
    /// The shipped description, checked.
    pub fn shipped() -> anyhow::Result<Accounts> {
        Self::parse(ACCOUNTS_TOML)
    }

    pub fn parse(text: &str) -> anyhow::Result<Accounts> {
        let accounts: Accounts = toml::from_str(text)?;
        for name in accounts.names() {
            check_identifier(name)?;
        }
        for reader in &accounts.reader {
            for db in &reader.databases {
                anyhow::ensure!(
                    accounts.owner_of(db).is_some(),
                    "reader {} names database {db}, which no service owns",
                    reader.role
                );
            }
        }
        Ok(accounts)
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        let services = self.service.iter().flat_map(|s| [&s.role, &s.database]);
        let readers = self
            .reader
            .iter()
            .flat_map(|r| std::iter::once(&r.role).chain(&r.databases));
        services.chain(readers)
    }

    pub fn owner_of(&self, database: &str) -> Option<&str> {
        self.service
            .iter()
            .find(|s| s.database == database)
            .map(|s| s.role.as_str())
    }

    /// Every login role, services first.
    pub fn roles(&self) -> Vec<&str> {
        let services = self.service.iter().map(|s| s.role.as_str());
        services
            .chain(self.reader.iter().map(|r| r.role.as_str()))
            .collect()
    }
}

/// Role and database names are plain identifiers, so they never need quoting.
pub fn check_identifier(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(ok, "{name:?} is not a plain lower-case identifier");
    Ok(())
}

/// Makes the server match `accounts`. `admin` gives a superuser pool for a database name;
/// `password` the password of a role (generated passwords are alphanumeric).
pub async fn apply<A, P>(accounts: &Accounts, admin: A, password: P) -> anyhow::Result<()>
where
    A: AsyncFn(&str) -> anyhow::Result<PgPool>,
    P: Fn(&str) -> String,
{
    let root = admin("postgres").await?;
    for role in accounts.roles() {
        ensure_login_role(&root, role, &password(role)).await?;
    }
    for service in &accounts.service {
        ensure_owned_database(&root, &service.role, &service.database).await?;
    }
    for reader in &accounts.reader {
        for database in &reader.databases {
            let owner = accounts.owner_of(database).unwrap_or(database);
            grant_read(
                &root,
                &admin(database).await?,
                &reader.role,
                database,
                owner,
            )
            .await?;
        }
        exec(
            &root,
            format!(
                "ALTER ROLE {} SET default_transaction_read_only = on",
                reader.role
            ),
        )
        .await?;
    }
    root.close().await;
    Ok(())
}

async fn exec(pool: &PgPool, sql: String) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    Ok(())
}

/// Creates `role` or resets its password, and takes away any power beyond logging in. The password
/// may hold any character (operators choose them for `accounts apply`): the server quotes it
/// (`format('%L')`), and no error message repeats the statement that carries it.
pub async fn ensure_login_role(root: &PgPool, role: &str, password: &str) -> anyhow::Result<()> {
    check_identifier(role)?;
    anyhow::ensure!(
        !password.is_empty() && !password.contains('\0'),
        "the password of role {role} is empty or holds a NUL character"
    );
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(root)
            .await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let statement: String = sqlx::query_scalar(
        "SELECT format('%s ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
         PASSWORD %L', $1::text, $2::text, $3::text)",
    )
    .bind(verb)
    .bind(role)
    .bind(password)
    .fetch_one(root)
    .await?;
    sqlx::query(AssertSqlSafe(statement))
        .execute(root)
        .await
        .map_err(|e| anyhow::anyhow!("{verb} ROLE {role} … PASSWORD …: {e}"))?;
    Ok(())
}

/// Creates `database` owned by `owner` if missing; only its owner (and superusers) may connect.
pub async fn ensure_owned_database(
    root: &PgPool,
    owner: &str,
    database: &str,
) -> anyhow::Result<()> {
    check_identifier(database)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(root)
            .await?;
    if !exists {
        exec(root, format!("CREATE DATABASE {database} OWNER {owner}")).await?;
    }
    exec(
        root,
        format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"),
    )
    .await
}

/// SELECT on every table of `database`'s public schema, now and for tables `owner` creates later.
async fn grant_read(
    root: &PgPool,
    db: &PgPool,
    reader: &str,
    database: &str,
    owner: &str,
) -> anyhow::Result<()> {
    exec(
        root,
        format!("GRANT CONNECT ON DATABASE {database} TO {reader}"),
    )
    .await?;
    for sql in [
        format!("GRANT USAGE ON SCHEMA public TO {reader}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}"),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader}"
        ),
    ] {
        exec(db, sql).await?;
    }
    db.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_accounts_name_every_service_and_the_warehouse_reader() -> anyhow::Result<()> {
        let accounts = Accounts::shipped()?;
        for db in ["books", "orders", "coordinator", "warehouse"] {
            assert_eq!(accounts.owner_of(db), Some(db));
        }
        let reader = &accounts.reader[0];
        assert_eq!(reader.role, "warehouse_reader");
        assert_eq!(reader.databases, ["books", "orders"]);
        Ok(())
    }

    #[test]
    fn a_reader_of_an_unowned_database_or_an_odd_name_is_refused() {
        let unowned = "[[reader]]\nrole = \"r\"\ndatabases = [\"nowhere\"]";
        assert!(Accounts::parse(unowned).is_err());
        let odd = "[[service]]\nrole = \"Books; DROP\"\ndatabase = \"books\"";
        assert!(Accounts::parse(odd).is_err());
    }

    #[test]
    fn only_plain_identifiers_are_accepted() {
        for ok in ["books", "orders", "_x1"] {
            assert!(check_identifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Books", "1books", "books; drop", "a-b", &"x".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
