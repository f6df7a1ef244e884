//! `bookstore warehouse load [--full]`: one load now, with progress, then a one-line summary.

use std::path::Path;
use std::process::ExitCode;

use uuid::Uuid;

use crate::etl::{Mode, Trigger};
use crate::progress::Bar;

/// Loads once from the same config `bookstore warehouse` reads (registry settings are ignored).
pub async fn load(file: Option<&Path>, full: bool) -> anyhow::Result<ExitCode> {
    platform::telemetry::init();
    let config: crate::Config = platform::config::load(file)?;
    let etl = crate::connect(&config).await?;
    let mode = if full { Mode::Full } else { Mode::Incremental };
    let bar = Bar::new();
    let report = etl.run(Uuid::now_v7(), mode, Trigger::Manual, &bar).await;
    bar.finish();
    let rows: Vec<String> = report
        .rows
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    match &report.error {
        None => {
            println!(
                "{} load {} succeeded in {:.1} s; rows changed: {}",
                mode.as_str(),
                report.id,
                report.duration.as_secs_f64(),
                if rows.is_empty() {
                    "none".into()
                } else {
                    rows.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(error) => {
            eprintln!(
                "bookstore: {} load {} failed: {error}",
                mode.as_str(),
                report.id
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
