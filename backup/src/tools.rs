//! pg_dump and pg_restore from the machine's PostgreSQL binaries, run as supervised children: their
//! own process group (Ctrl-C reaches only us, and we stop them), a parent-death signal (they die with
//! us even on SIGKILL), output in a log file whose tail explains a failure.

use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use stack::postgres::PgBinaries;
use stack::process::{ChildSpec, Supervised, log_tail};

use crate::url::ClusterUrl;

/// Runs `tool` with `args` until it exits; while it runs, `watch` (if any) names a file whose size
/// the progress bar shows. Fails with the tool's last error lines.
pub async fn run(
    bins: &PgBinaries,
    tool: &str,
    args: Vec<String>,
    url: &ClusterUrl,
    log: &Path,
    watch: Option<&Path>,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let mut spec = ChildSpec::new(tool, bins.tool(tool), log).args(args);
    if let Some(password) = url.password() {
        spec = spec.env("PGPASSWORD", password);
    }
    let mut child = Supervised::spawn(&spec)?;
    let status = loop {
        if let Some(status) = child.exited() {
            break status;
        }
        if let Some(file) = watch
            && let Ok(meta) = std::fs::metadata(file)
        {
            progress.set_position(meta.len());
        }
        if let Some(table) = current_table(log) {
            progress.set_message(table);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !status.success() {
        let errors: Vec<String> = log_tail(log, 40)
            .lines()
            .filter(|l| l.contains("error") || l.contains("FATAL") || l.contains("detail"))
            .map(str::to_owned)
            .collect();
        let detail = if errors.is_empty() {
            log_tail(log, 5)
        } else {
            errors.join("\n")
        };
        anyhow::bail!("{tool} failed ({status}):\n{detail}");
    }
    // A clean stop on the way out: kill_on_drop only matters when our future is dropped mid-run.
    let _ = child.stop(Duration::from_secs(1)).await;
    Ok(())
}

/// The table the tool's `--verbose` log says it is on.
fn current_table(log: &Path) -> Option<String> {
    let tail = log_tail(log, 3);
    tail.lines().rev().find_map(|l| {
        l.split_once("contents of table ")
            .map(|(_, t)| t.to_owned())
    })
}
