//! The schedule: an incremental run at start-up (catching up on whatever happened while no
//! warehouse ran), then one at every time the cron expression names. Runs that fall due while one
//! is still going simply wait for the lock; a missed tick is not made up twice.

use std::str::FromStr;

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::etl::{Etl, Mode, Trigger};
use crate::progress::Quiet;

/// Parses a cron expression (`sec min hour day-of-month month day-of-week [year]`, UTC).
pub fn parse(expression: &str) -> anyhow::Result<cron::Schedule> {
    cron::Schedule::from_str(expression).with_context(|| {
        format!(
            "etl.schedule {expression:?} is not a cron expression \
             (six fields, seconds first: \"0 */5 * * * *\" is every five minutes)"
        )
    })
}

/// Runs until `shutdown`.
pub async fn run(etl: Etl, shutdown: CancellationToken) {
    let schedule = match parse(&etl.settings().schedule) {
        Ok(schedule) => schedule,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "no ETL schedule");
            return;
        }
    };
    if let Ok(Some(at)) = crate::etl::runs::loaded_at(etl.warehouse()).await {
        crate::etl::telemetry::set_last_success(at);
    }
    crate::etl::telemetry::describe();
    loop {
        let run = etl.run(
            Uuid::now_v7(),
            Mode::Incremental,
            Trigger::Scheduled,
            &Quiet,
        );
        tokio::select! {
            _ = run => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::warn!("the ETL schedule names no future time; no more scheduled runs");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_every_five_minutes() {
        let schedule = parse(&crate::EtlSettings::default().schedule).expect("valid");
        let times: Vec<_> = schedule.upcoming(Utc).take(2).collect();
        assert_eq!((times[1] - times[0]).num_seconds(), 300);
    }

    #[test]
    fn a_bad_expression_is_one_clear_error() {
        let error = parse("every five minutes").expect_err("invalid");
        assert!(format!("{error:#}").contains("etl.schedule"), "{error:#}");
    }
}
