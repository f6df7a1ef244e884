//! Per-table fingerprints: row count and a SHA-256 of the rows in a fixed order. Taken in the dump's
//! own snapshot (so they describe the cluster at the backup's LSN) and again on a restored copy; equal
//! fingerprints mean the restore holds exactly the rows the replica held.

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFingerprint {
    /// `schema.table`, quoted as SQL needs it.
    pub table: String,
    pub rows: u64,
    pub sha256: String,
}

/// Output settings that change how values print; fixed so both sides print alike.
const SESSION: &[&str] = &[
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
];

/// Fingerprints of every ordinary, logged user table of the connected database. Unlogged tables are
/// left out: a standby has no data for them and pg_dump skips their contents there.
pub async fn fingerprint_database(
    conn: &mut PgConnection,
) -> anyhow::Result<Vec<TableFingerprint>> {
    for statement in SESSION {
        sqlx::query(*statement).execute(&mut *conn).await?;
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND c.relpersistence = 'p'
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
          ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\"",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        out.push(fingerprint_table(conn, &table).await?);
    }
    Ok(out)
}

/// Streams the table's rows (as row literals, sorted byte-wise) through SHA-256, so a table of any
/// size is hashed without holding it in memory.
async fn fingerprint_table(
    conn: &mut PgConnection,
    table: &str,
) -> anyhow::Result<TableFingerprint> {
    let copy = format!(
        "COPY (SELECT t::text FROM ONLY {table} t ORDER BY t::text COLLATE \"C\") TO STDOUT"
    );
    let mut stream = conn
        .copy_out_raw(&copy)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {table}: {e}"))?;
    let mut hasher = Sha256::new();
    let mut rows = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        hasher.update(&chunk);
    }
    Ok(TableFingerprint {
        table: table.to_owned(),
        rows,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// One difference between what the manifest expects and what a database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub table: String,
    pub what: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.table, self.what)
    }
}

/// Every table missing, extra, or differing in row count or content.
pub fn compare(expected: &[TableFingerprint], actual: &[TableFingerprint]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for want in expected {
        match actual.iter().find(|a| a.table == want.table) {
            None => out.push(Mismatch {
                table: want.table.clone(),
                what: "missing from the restore".into(),
            }),
            Some(got) if got.rows != want.rows => out.push(Mismatch {
                table: want.table.clone(),
                what: format!("{} rows, the source had {}", got.rows, want.rows),
            }),
            Some(got) if got.sha256 != want.sha256 => out.push(Mismatch {
                table: want.table.clone(),
                what: "same row count but different contents".into(),
            }),
            Some(_) => {}
        }
    }
    for got in actual {
        if !expected.iter().any(|e| e.table == got.table) {
            out.push(Mismatch {
                table: got.table.clone(),
                what: "not in the source".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(table: &str, rows: u64, sha: &str) -> TableFingerprint {
        TableFingerprint {
            table: table.into(),
            rows,
            sha256: sha.into(),
        }
    }

    #[test]
    fn compare_names_every_kind_of_difference() {
        let expected = vec![
            fp("a", 1, "x"),
            fp("b", 2, "y"),
            fp("c", 3, "z"),
            fp("d", 0, "e"),
        ];
        let actual = vec![
            fp("a", 1, "x"),
            fp("b", 3, "y"),
            fp("c", 3, "q"),
            fp("f", 0, "e"),
        ];
        let found: Vec<String> = compare(&expected, &actual)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "b: 3 rows, the source had 2",
                "c: same row count but different contents",
                "d: missing from the restore",
                "f: not in the source",
            ]
        );
        assert!(compare(&expected, &expected).is_empty());
    }
}
