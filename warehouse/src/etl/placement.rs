//! Where a run reads: on a replicated cluster, one replica for both source databases, chosen per
//! run, else the primary. The reasoning (docs/WAREHOUSE.md, "Reading from replicas"):
//!
//! - **One member for both databases.** A run reads orders first and books second and relies on
//!   the books snapshot being at least as new as the orders one (a sold book is always there). On one
//!   member replay only moves forward, so books read after orders there is at least as new; two
//!   members chosen independently would not be. When the books cluster has no member of that name,
//!   both databases are read from their primaries.
//! - **Never behind the last run.** Each watermark is stored with the WAL position its snapshot was
//!   taken at. A replica serves a run only once its replay has passed the previous run's position
//!   (per database), so a snapshot never sees less than the one before it — a replica switch between
//!   runs cannot move the watermark backwards. A replica that has not passed it is waited for (up to
//!   `etl.replica_wait_seconds`), then the run reads the primary.
//! - **A changed history is read again.** Watermarks are transaction ids. A failover with
//!   asynchronous replication can lose the old primary's last transactions; the new primary hands out
//!   their ids again, below the recorded watermark, and an incremental run would skip those rows for
//!   good. So every run asks the primary for its history — the system identifier and the timeline,
//!   which a promotion (or a point-in-time restore) increments — and when it differs from the one
//!   stored with the watermark, the run reads every row, from the primary. The loads are idempotent
//!   upserts, so reading everything again is safe, and a complete read removes the facts the source
//!   no longer has (the lost transactions' rows; [`super::load`]).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use platform::db::DbConfig;
use platform::db::cluster::ClusterPool;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use super::watermark::Watermarks;

/// Inside a source's snapshot transaction: whether the member is a standby, and its position — the
/// replayed position on a standby, the WAL insert position on a primary (test and eventual commits
/// run with `synchronous_commit` below `on`, so a visible commit may not be *written* yet; its
/// record is always *inserted*).
pub const POSITION_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
          ELSE pg_current_wal_insert_lsn() END)::text";

/// The history a primary is on: the cluster (system identifier) and timeline. The timeline comes
/// from the current WAL file's name, exact at once after a promotion (`pg_control_checkpoint()`
/// still shows the old one until the next checkpoint).
const HISTORY_SQL: &str = "SELECT (SELECT system_identifier FROM pg_control_system()), \
    ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int";

/// Whether a member is a standby whose replay has passed `$1` (any position when `$1` is NULL).
const PASSED_SQL: &str = "SELECT pg_is_in_recovery() \
    AND ($1::text IS NULL OR pg_last_wal_replay_lsn() >= $1::text::pg_lsn)";

/// A source database: one server, or every member of a replicated cluster.
#[derive(Clone)]
pub enum SourcePool {
    Single(PgPool),
    Cluster(ClusterPool),
}

impl From<PgPool> for SourcePool {
    fn from(pool: PgPool) -> SourcePool {
        SourcePool::Single(pool)
    }
}

impl SourcePool {
    /// A pool that connects on first use: a source that is down at start-up fails the runs
    /// (recorded, alerted on), not the process. A multi-host URL (the Patroni cluster) gets the
    /// cluster-aware pool, which waits for the cluster at start-up and follows failovers.
    pub async fn connect(config: &DbConfig) -> anyhow::Result<SourcePool> {
        if platform::db::is_multi_host(&config.url) {
            return Ok(SourcePool::Cluster(ClusterPool::connect(config).await?));
        }
        let options = PgConnectOptions::from_str(&config.url).map_err(|e| {
            anyhow::anyhow!(
                "invalid database url {}: {e}",
                platform::db::redact(&config.url)
            )
        })?;
        Ok(SourcePool::Single(
            platform::db::acquire::pool_options(
                config.max_connections.clamp(1, 4),
                Duration::from_millis(config.acquire_timeout_ms),
                None,
            )
            .connect_lazy_with(options),
        ))
    }

    /// The primary (the one server, for a single one).
    pub fn primary(&self) -> &PgPool {
        match self {
            SourcePool::Single(pool) => pool,
            SourcePool::Cluster(cluster) => cluster.primary(),
        }
    }

    /// The primary's name (`host:port`) as far as the pool knows.
    fn primary_name(&self) -> String {
        match self {
            SourcePool::Single(pool) => {
                let options = pool.connect_options();
                format!("{}:{}", options.get_host(), options.get_port())
            }
            SourcePool::Cluster(cluster) => {
                let topology = cluster.topology();
                topology
                    .routed_to
                    .and_then(|i| topology.nodes.get(i))
                    .map_or_else(|| "the primary".to_owned(), |n| n.node.clone())
            }
        }
    }

    pub async fn close(&self) {
        self.primary().close().await;
    }
}

/// A primary's history: a WAL position only compares with one of the same history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub system: i64,
    pub timeline: i32,
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "system {} timeline {}", self.system, self.timeline)
    }
}

/// Where a snapshot was taken: its WAL position (`pg_lsn` text) and the history it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub lsn: String,
    pub history: History,
}

/// The primary's history, asked of the primary (a standby cannot name its timeline exactly).
pub async fn history(primary: &PgPool, database: &str) -> anyhow::Result<History> {
    let (system, timeline): (i64, i32) = sqlx::query_as(HISTORY_SQL)
        .fetch_one(primary)
        .await
        .with_context(|| format!("Failed to ask the {database} primary for its timeline"))?;
    Ok(History { system, timeline })
}

/// One member chosen for a database.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub pool: PgPool,
}

/// Where this run reads, and whether it must read everything.
pub struct Placement {
    pub orders: Member,
    pub books: Member,
    /// The primaries' histories when the run began, stored with the new watermarks.
    pub orders_history: History,
    pub books_history: History,
    /// Why this run reads every row (the history changed since the last run), if it must.
    pub reread: Option<String>,
}

/// Chooses where a run reads (see the module documentation).
pub async fn place(
    books: &SourcePool,
    orders: &SourcePool,
    last: &Watermarks,
    replica_wait: Duration,
) -> anyhow::Result<Placement> {
    let orders_history = history(orders.primary(), "orders").await?;
    let books_history = history(books.primary(), "books").await?;
    let mut reread = None;
    for (database, now) in [("orders", orders_history), ("books", books_history)] {
        if let Some(before) = last.position(database)
            && before.history != now
        {
            reread = Some(format!(
                "the {database} database's history changed ({} → {now}): reading every row again",
                before.history
            ));
        }
    }
    let primaries = |reread| Placement {
        orders: Member {
            name: orders.primary_name(),
            pool: orders.primary().clone(),
        },
        books: Member {
            name: books.primary_name(),
            pool: books.primary().clone(),
        },
        orders_history,
        books_history,
        reread,
    };
    if let Some(why) = reread {
        // Read the new history where it is written: a replica may still be on the old one.
        tracing::warn!(reason = %why, "ETL reads everything again, from the primary");
        return Ok(primaries(Some(why)));
    }
    let (SourcePool::Cluster(orders_cluster), SourcePool::Cluster(books_cluster)) = (orders, books)
    else {
        return Ok(primaries(None));
    };
    let need_orders = last.position("orders").map(|p| p.lsn.as_str());
    let need_books = last.position("books").map(|p| p.lsn.as_str());
    // Both databases on the same member; the cluster pool's probe (every 500 ms) says which
    // replicas are up and under the lag limit, re-read on every poll. The passive member first:
    // Patroni never makes it the synchronous standby, whose replay a long read could hold up
    // (a recovery conflict waits up to `max_standby_streaming_delay`), and with it every
    // `remote_apply` commit; then the least lagging.
    let candidates = || -> Vec<(String, PgPool, PgPool)> {
        let mut replicas = orders_cluster.replica_members();
        replicas.sort_by_key(|n| (!n.passive, n.lag_bytes));
        replicas
            .into_iter()
            .map(|n| n.node)
            .filter_map(|name| {
                let orders = orders_cluster.member(&name)?.clone();
                let books = books_cluster.member(&name)?.clone();
                Some((name, orders, books))
            })
            .collect()
    };
    let chosen = |name: &str, o: &PgPool, b: &PgPool| Placement {
        orders: Member {
            name: name.to_owned(),
            pool: o.clone(),
        },
        books: Member {
            name: name.to_owned(),
            pool: b.clone(),
        },
        orders_history,
        books_history,
        reread: None,
    };
    // A replica that has passed the last run's positions, best first; else wait a while for one
    // to get there (a replica that was stopped or paused and is catching up).
    let deadline = tokio::time::Instant::now() + replica_wait;
    loop {
        let candidates = candidates();
        for (name, o, b) in &candidates {
            if passed(o, need_orders).await && passed(b, need_books).await {
                return Ok(chosen(name, o, b));
            }
        }
        if candidates.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::info!(wait = ?replica_wait,
                "no replica has replayed past the last ETL run's position; reading the primary");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(primaries(None))
}

/// Whether `pool`'s member is a standby that has replayed past `lsn`; an unreachable member has not.
async fn passed(pool: &PgPool, lsn: Option<&str>) -> bool {
    match sqlx::query_scalar::<_, Option<bool>>(PASSED_SQL)
        .bind(lsn)
        .fetch_one(pool)
        .await
    {
        Ok(passed) => passed.unwrap_or(false),
        Err(e) => {
            tracing::debug!(error = %e, "replica check failed; trying another member");
            false
        }
    }
}

/// `etl_runs.source`: `replica host:port` when both databases were read from one member, else one
/// entry per database.
pub fn describe(orders: (&str, bool), books: (&str, bool)) -> String {
    let role = |replica: bool| if replica { "replica" } else { "primary" };
    if orders == books {
        format!("{} {}", role(orders.1), orders.0)
    } else {
        format!(
            "orders: {} {}; books: {} {}",
            role(orders.1),
            orders.0,
            role(books.1),
            books.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_names_one_member_or_one_per_database() {
        assert_eq!(
            describe(("h:1", true), ("h:1", true)),
            "replica h:1".to_owned()
        );
        assert_eq!(
            describe(("h:1", true), ("h:2", false)),
            "orders: replica h:1; books: primary h:2".to_owned()
        );
    }
}
