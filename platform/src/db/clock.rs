//! How far this process's wall clock is from the database server's.
//!
//! Tokens (`exp`), breaker and lease deadlines are judged with the local clock, so an instance whose
//! clock has drifted refuses valid tokens or keeps leases too long. The database is the reference
//! every instance already talks to (CockroachDB does the same with its peers and shuts a node down
//! past its max offset). An instance further off than the limit reports itself not ready, so the
//! registry takes it out of rotation before it answers anyone — see docs/CLUSTER.md, "Clocks".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgPool;

/// One measurement: `offset` > 0 means this process's clock is ahead of the database's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClockOffset {
    /// Local time minus database time at the moment the database read its clock, in seconds.
    pub offset_seconds: f64,
    /// Half the round trip: the database read its clock somewhere in that window.
    pub uncertainty_seconds: f64,
}

impl ClockOffset {
    /// From the local times before and after the query and the database's time: the database
    /// read its clock somewhere between them, so the midpoint is the best guess.
    pub fn from_readings(sent: f64, database: f64, received: f64) -> ClockOffset {
        let half_round_trip = ((received - sent) / 2.0).max(0.0);
        ClockOffset {
            offset_seconds: sent + half_round_trip - database,
            uncertainty_seconds: half_round_trip,
        }
    }

    /// `Err` with a reason when the clock is *certainly* further off than `max` (the round trip is
    /// given the benefit of the doubt, so a slow query never makes an instance unready).
    pub fn within(&self, max: Duration) -> Result<(), String> {
        let certain = self.offset_seconds.abs() - self.uncertainty_seconds;
        if certain <= max.as_secs_f64() {
            return Ok(());
        }
        let direction = if self.offset_seconds > 0.0 {
            "ahead of"
        } else {
            "behind"
        };
        Err(format!(
            "clock: this process's clock is {:.1} s {direction} the database's (limit {:.1} s): \
             tokens and deadlines would be judged wrongly; fix the host's time synchronisation",
            self.offset_seconds.abs(),
            max.as_secs_f64()
        ))
    }
}

/// Reads the database's clock once (`clock_timestamp()`, the time of the read, not of the
/// transaction's start) and records the offset in `bookstore_clock_offset_seconds`.
pub async fn measure(pool: &PgPool) -> Result<ClockOffset, sqlx::Error> {
    let sent = unix_now();
    let database: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(pool)
        .await?;
    let offset = ClockOffset::from_readings(sent, database, unix_now());
    metrics::gauge!("bookstore_clock_offset_seconds").set(offset.offset_seconds);
    Ok(offset)
}

/// Seconds since the epoch by this process's wall clock (the one tokens are judged with).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_midpoint_of_the_round_trip_is_compared_with_the_database_time() {
        let ahead = ClockOffset::from_readings(3_600.0, 0.5, 3_601.0);
        assert_eq!(ahead.offset_seconds, 3_600.0);
        assert_eq!(ahead.uncertainty_seconds, 0.5);
        let behind = ClockOffset::from_readings(100.0, 3_700.0, 100.0);
        assert_eq!(behind.offset_seconds, -3_600.0);
    }

    #[test]
    fn only_an_offset_certainly_over_the_limit_is_refused() {
        let max = Duration::from_secs(2);
        assert!(
            ClockOffset::from_readings(10.0, 10.0, 10.0)
                .within(max)
                .is_ok()
        );
        // 3 s off, but the round trip took 4 s: it may be 1 s off, so it passes.
        assert!(
            ClockOffset::from_readings(0.0, -1.0, 4.0)
                .within(max)
                .is_ok()
        );
        let ahead = ClockOffset::from_readings(3_600.0, 0.0, 3_600.0)
            .within(max)
            .expect_err("an hour ahead");
        assert!(ahead.contains("3600.0 s ahead of"), "{ahead}");
        let behind = ClockOffset::from_readings(0.0, 3.0, 0.0)
            .within(max)
            .expect_err("3 s behind");
        assert!(behind.contains("3.0 s behind"), "{behind}");
    }
}
