//! How a pool hands out a connection. sqlx's default checks every idle connection with a ping (a
//! protocol `Sync` and its answer) before handing it out (`test_before_acquire`): a whole database
//! round trip per acquire, about a third of a checkout's. Every pool of ours instead
//!
//! - pings only a connection that has been idle for longer than [`PING_IDLE_AFTER`]. sqlx already
//!   pings each connection when it is *released* (and closes it if that fails), so a connection
//!   idle for less than that answered a moment ago; under load every connection is.
//! - drops, without a round trip, every connection made before its [`Fence`] was last raised: the
//!   cluster pool's probe raises the primary pool's when the primary moves to another member (a
//!   failover) and a pool's when the server it connects to restarted (its
//!   `pg_postmaster_start_time()` changed) or went down (closed the probe's connection or refused
//!   a new one — not a probe that merely timed out), so connections to a server that died are
//!   not handed out once the probe has noticed.
//!
//! What is left: a server that dies (or restarts) within [`PING_IDLE_AFTER`] of a connection's
//! last use, before the probe noticed (within its interval, 500 ms). The statement on that connection fails with a lost
//! connection (`retry::ErrorClass::ConnectionLost`) — as one would when the server dies between
//! the ping and the statement, or during it, which every caller handles already: idempotent work is
//! retried ([`super::retry::retry_idempotent`], the coordinator's loops, the participants' callers),
//! clients get 503 + `Retry-After` problem+json ([`crate::problem`]) — and sqlx's ping on release
//! closes the connection, so the next call gets a fresh one.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::PgPoolOptions;

/// An idle connection is pinged before it is handed out only after this long unused.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The clock a [`Fence`] is read against (an `Instant` cannot live in an atomic).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A mark a pool's connections must be younger than. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<AtomicU64>);

impl Fence {
    pub fn new() -> Fence {
        Fence::default()
    }

    /// From now on, connections made before this moment are dropped instead of handed out.
    pub fn raise(&self) {
        let now = nanos(ORIGIN.elapsed()).max(1);
        self.0.fetch_max(now, Ordering::AcqRel);
    }

    /// Whether a connection of this `age` was made before the fence was last raised.
    pub fn excludes(&self, age: Duration) -> bool {
        let raised = self.0.load(Ordering::Acquire);
        raised != 0 && nanos(ORIGIN.elapsed().saturating_sub(age)) < raised
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What to do with an idle connection before handing it out.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Drop,
    Ping,
    Hand,
}

fn check(age: Duration, idle_for: Duration, fence: Option<&Fence>) -> Check {
    if fence.is_some_and(|f| f.excludes(age)) {
        Check::Drop
    } else if idle_for > PING_IDLE_AFTER {
        Check::Ping
    } else {
        Check::Hand
    }
}

/// Pool options every pool of ours starts from: the acquire check above instead of sqlx's ping on
/// every acquire; `fence` when something (the cluster probe) knows when connections went stale.
pub fn pool_options(
    max_connections: u32,
    acquire_timeout: Duration,
    fence: Option<Fence>,
) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta: PoolConnectionMetadata| {
            let verdict = check(meta.age, meta.idle_for, fence.as_ref());
            Box::pin(async move {
                match verdict {
                    Check::Drop => Ok(false),
                    // An error drops the connection and the pool tries the next (or a new) one.
                    Check::Ping => conn.ping().await.map(|()| true),
                    Check::Hand => Ok(true),
                }
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ms(age_ms: u64, idle_ms: u64, fence: Option<&Fence>) -> Check {
        check(
            Duration::from_millis(age_ms),
            Duration::from_millis(idle_ms),
            fence,
        )
    }

    #[test]
    fn only_a_connection_idle_for_a_while_is_pinged() {
        assert_eq!(check_ms(60_000, 5, None), Check::Hand);
        assert_eq!(check_ms(60_000, 999, None), Check::Hand);
        assert_eq!(check_ms(60_000, 1_001, None), Check::Ping);
    }

    #[test]
    fn connections_made_before_the_fence_was_raised_are_dropped_unpinged() {
        let fence = Fence::new();
        assert!(!fence.excludes(Duration::from_secs(3600)), "never raised");
        // Let some time pass since the origin so an age can reach back before the raise.
        std::thread::sleep(Duration::from_millis(30));
        fence.raise();
        assert!(fence.excludes(Duration::from_millis(20)), "made before");
        assert_eq!(check_ms(20, 0, Some(&fence)), Check::Drop);
        std::thread::sleep(Duration::from_millis(10));
        assert!(!fence.excludes(Duration::from_millis(2)), "made after");
        assert_eq!(check_ms(2, 0, Some(&fence)), Check::Hand);
        assert_eq!(check_ms(2, 1_500, Some(&fence)), Check::Ping);
    }
}
