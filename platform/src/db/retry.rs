//! What a database error means for the caller: a lost connection, a read-only standby (the write
//! reached a demoted primary), or a serialization conflict may succeed when tried again — but only
//! work that is safe to repeat is retried, and nothing else is retried blindly.

use std::time::Duration;

/// The kinds of failure a caller treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No connection, or it broke (failover, restart, network): SQLSTATE 08*, 57P01–57P03, I/O,
    /// pool timeouts. A write may or may not have committed.
    ConnectionLost,
    /// 25006: the transaction ran on a standby (a stale route during a failover). Nothing committed.
    ReadOnly,
    /// 40001 / 40P01: aborted for a conflict. Nothing committed.
    Serialization,
    /// Anything else (constraint violations, bad SQL, …): retrying would fail the same way.
    Other,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ConnectionLost => "connection_lost",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::Serialization => "serialization",
            ErrorClass::Other => "other",
        }
    }

    /// Whether idempotent work may be tried again.
    pub fn is_retryable(self) -> bool {
        self != ErrorClass::Other
    }
}

pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => ErrorClass::ConnectionLost,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("25006") => ErrorClass::ReadOnly,
            Some("40001" | "40P01") => ErrorClass::Serialization,
            Some(code) if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") => {
                ErrorClass::ConnectionLost
            }
            _ => ErrorClass::Other,
        },
        _ => ErrorClass::Other,
    }
}

/// Runs `work` (which must be idempotent: safe to apply twice, e.g. keyed by an idempotency key or a
/// conditional update) until it succeeds, fails for a non-retryable reason, or `budget` is spent.
/// Every failure is counted in `bookstore_pg_pool_errors_total{class}`.
pub async fn retry_idempotent<T, F, Fut>(budget: Duration, mut work: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut pause = Duration::from_millis(50);
    loop {
        match work().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let class = classify(&err);
                metrics::counter!("bookstore_pg_pool_errors_total", "class" => class.as_str())
                    .increment(1);
                if !class.is_retryable() || tokio::time::Instant::now() + pause > deadline {
                    return Err(err);
                }
                tracing::warn!(error = %err, class = class.as_str(), "retrying idempotent database work");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn io_error() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn transport_failures_are_connection_losses_and_decode_errors_are_not() {
        assert_eq!(classify(&io_error()), ErrorClass::ConnectionLost);
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            ErrorClass::ConnectionLost
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
        assert!(!ErrorClass::Other.is_retryable());
        assert!(ErrorClass::ReadOnly.is_retryable() && ErrorClass::Serialization.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn idempotent_work_is_retried_through_a_failover_but_other_errors_are_not()
    -> anyhow::Result<()> {
        let calls = AtomicU32::new(0);
        let value = retry_idempotent(Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(io_error()),
                _ => Ok(7),
            }
        })
        .await?;
        assert_eq!((value, calls.load(Ordering::SeqCst)), (7, 3));

        let calls = AtomicU32::new(0);
        let refused = retry_idempotent(Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(sqlx::Error::RowNotFound)
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a non-retryable error is not retried"
        );

        let calls = AtomicU32::new(0);
        let gave_up = retry_idempotent(Duration::from_secs(2), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(io_error())
        })
        .await;
        assert!(gave_up.is_err());
        assert!(
            calls.load(Ordering::SeqCst) < 10,
            "the budget bounds the retries"
        );
        Ok(())
    }
}
