//! Exported snapshots: one open `REPEATABLE READ` transaction per database, each exporting its
//! snapshot for pg_dump (`--snapshot`) and the fingerprints to import.
//!
//! Why: a snapshot can only be imported in the database it was taken in, so one snapshot cannot
//! cover several databases. Taken on a replica while its replay is paused, though, every database's
//! snapshot shows the same LSN — and then replay can resume at once, because the dumps read the
//! snapshots, not the moving replica. That keeps the pause to milliseconds, which matters under
//! Patroni: on PostgreSQL 14+ it resumes any paused replay at its next loop (it cannot tell an
//! operator's pause from the one PostgreSQL makes after a parameter change), so a pause held for a
//! whole dump does not survive there.

use sqlx::{Connection, PgConnection};

use crate::url::{ClusterUrl, HostPort};

/// Open transactions holding one exported snapshot per database. Dropping closes the
/// connections, which ends the transactions; [`Snapshots::release`] does it politely.
pub struct Snapshots {
    held: Vec<Held>,
}

struct Held {
    database: String,
    conn: PgConnection,
    id: String,
}

/// Exporting and importing a snapshot both need a REPEATABLE READ transaction; nothing here writes.
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Opens a connection to every database on `node` and exports its snapshot. The snapshot is taken
/// by the first statement of the transaction, `pg_export_snapshot()` itself.
pub async fn export(
    url: &ClusterUrl,
    node: &HostPort,
    databases: &[String],
) -> anyhow::Result<Snapshots> {
    let mut held = Vec::with_capacity(databases.len());
    for database in databases {
        let mut conn = PgConnection::connect_with(&url.connect_options(node, database))
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {database} on {node}: {e}"))?;
        sqlx::query(BEGIN_SNAPSHOT).execute(&mut conn).await?;
        let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot export a snapshot of {database} on {node}: {e}")
            })?;
        held.push(Held {
            database: database.clone(),
            conn,
            id,
        });
    }
    Ok(Snapshots { held })
}

impl Snapshots {
    /// The snapshot id exported in `database`.
    pub fn id(&self, database: &str) -> anyhow::Result<&str> {
        self.held
            .iter()
            .find(|h| h.database == database)
            .map(|h| h.id.as_str())
            .ok_or_else(|| anyhow::anyhow!("no snapshot was exported for {database}"))
    }

    /// Ends the transactions; the snapshot ids stop being importable.
    pub async fn release(self) {
        for held in self.held {
            let mut conn = held.conn;
            let _ = sqlx::query("COMMIT").execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }
}

/// Starts a read-only transaction on `conn` that sees exactly the exported snapshot `id`.
pub async fn import(conn: &mut PgConnection, id: &str) -> anyhow::Result<()> {
    sqlx::query(BEGIN_SNAPSHOT).execute(&mut *conn).await?;
    // SET TRANSACTION SNAPSHOT takes no bind parameters; the id is a server-made token, quoted anyway.
    let quoted = id.replace('\'', "''");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET TRANSACTION SNAPSHOT '{quoted}'"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
