//! The ETL's metrics (names agreed between helpers; docs/OBSERVABILITY.md):
//! `bookstore_etl_runs_total{status}`, `bookstore_etl_last_success_timestamp_seconds`,
//! `bookstore_etl_rows_total{table}` and `bookstore_etl_run_duration_seconds`.

use super::RunReport;

/// Records one finished run.
pub fn record(report: &RunReport) {
    let status = if report.succeeded() {
        "succeeded"
    } else {
        "failed"
    };
    metrics::counter!("bookstore_etl_runs_total", "status" => status).increment(1);
    metrics::histogram!("bookstore_etl_run_duration_seconds").record(report.duration.as_secs_f64());
    if report.succeeded() {
        set_last_success(chrono::Utc::now());
        for (table, rows) in &report.rows {
            metrics::counter!("bookstore_etl_rows_total", "table" => table.clone())
                .increment(*rows);
        }
    }
}

/// Sets the time of the last successful run (also at start-up, from `etl_runs`, so a restarted
/// process does not look stale until its first run).
pub fn set_last_success(at: chrono::DateTime<chrono::Utc>) {
    let seconds = at.timestamp_millis() as f64 / 1000.0;
    metrics::gauge!("bookstore_etl_last_success_timestamp_seconds").set(seconds);
}

/// Makes every series exist from the start (a counter that was never incremented is absent, and
/// `increase()` over an absent series says nothing).
pub fn describe() {
    for status in ["succeeded", "failed"] {
        metrics::counter!("bookstore_etl_runs_total", "status" => status).increment(0);
    }
}
