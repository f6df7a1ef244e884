//! `bookstore loadgen` and `bookstore chaos`: load on a running platform, and faults injected
//! under that load with the invariants checked afterwards (see docs/LOADGEN.md).

pub mod database;
pub mod fault;
pub mod launch;
pub mod partition;
pub mod report;
pub mod restart;
pub mod scenario;
pub mod session;
pub mod settle;
pub mod split_brain;
pub mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use scenario::Scenario;
pub use session::{Plan, Session};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The directory `bookstore up` runs from (its gateway, admin login and databases).
    #[arg(long, default_value = ".bookstore", env = "BOOKSTORE_DIR")]
    pub dir: PathBuf,
    /// Another gateway URL than the platform's own (e.g. through a proxy).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Open model: requests per second, sent on schedule whatever the answers do (the default, 20/s).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed model: this many clients, each sending when its last answer came.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to run: `30s`, `2m`, `90`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Weights, e.g. `browse=30,search=15,view=30,rate=8,top_up=7,checkout_2pc=5,checkout_saga=5`.
    #[arg(long)]
    pub mix: Option<String>,
    /// Customers to sign up and fund for the run.
    #[arg(long, default_value_t = 10)]
    pub customers: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Check the invariants in the databases afterwards (exit status 1 if one is broken).
    #[arg(long)]
    pub check: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// A scenario, a comma-separated list, `all`, or `list` to show them.
    pub scenario: String,
    /// The directory `bookstore up` runs from.
    #[arg(long, default_value = ".bookstore", env = "BOOKSTORE_DIR")]
    pub dir: PathBuf,
    /// Light load for a few seconds per scenario (what the tests run).
    #[arg(long)]
    pub short: bool,
    /// Load duration per scenario (the fault comes at 25 %, is undone at 60 %).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests per second during each scenario.
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub async fn loadgen(args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    let platform = target::Platform::find(&args.dir)?;
    let mix = match &args.mix {
        Some(text) => loadgen::Mix::parse(text)?,
        None => loadgen::Mix::default(),
    };
    let load = match args.concurrency {
        Some(clients) => loadgen::Load::Concurrency(clients),
        None => loadgen::Load::Rate(args.rate.unwrap_or(20.0)),
    };
    let databases = if args.check {
        Some(platform.databases().await?)
    } else {
        None
    };
    let baseline = match &databases {
        Some(db) => Some(db.baseline().await?),
        None => None,
    };
    let mut ledger = loadgen::Ledger::default();
    let shop = loadgen::Shop::open(
        &platform.target(args.gateway.as_deref()),
        args.customers,
        args.timeout,
        &mut ledger,
    )
    .await?;
    let shop = Arc::new(shop);
    let settings = loadgen::Settings {
        mix,
        load,
        duration: args.duration,
        max_in_flight: 4096,
        quiet: args.quiet || args.json,
    };
    let run = loadgen::runner::run(shop.clone(), &settings).await;
    let report = loadgen::LoadReport::new(&run, load);
    ledger.merge(run.ledger);
    let mut broken = false;
    let mut checks = Vec::new();
    if let (Some(db), Some(baseline)) = (&databases, &baseline) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        shop.resolve_top_ups(&mut ledger, deadline).await;
        shop.resolve_pending_orders(&mut ledger, deadline).await;
        checks = db.check(baseline, &ledger, Duration::from_secs(60)).await?;
        broken = checks.iter().any(|c| !c.ok);
    }
    if args.json {
        let view = serde_json::json!({"report": report, "invariants": checks});
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", report.table());
        for check in &checks {
            println!(
                "{} {}: {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
    }
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    if args.scenario == "list" {
        for scenario in Scenario::ALL {
            let note = if scenario.needs_cluster() {
                "  (needs the PostgreSQL cluster)"
            } else {
                ""
            };
            println!("{:<18} {}{note}", scenario.name(), scenario.description());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios = scenario::select(&args.scenario)?;
    let mut plan = if args.short {
        Plan::short()
    } else {
        Plan::full(args.duration, args.rate)
    };
    plan.quiet = args.quiet || args.json || args.short;
    let mut session = Session::open(&args.dir, plan).await?;
    let mut reports = Vec::new();
    for scenario in scenarios {
        if !args.json {
            eprintln!("chaos: {} — {}", scenario.name(), scenario.description());
        }
        let report = session.run(scenario).await;
        let report = match report {
            Ok(report) => report,
            Err(e) => return Err(e.context(format!("scenario {scenario}"))),
        };
        let path = report.write(&args.dir)?;
        if !args.json {
            println!("{}\n    report: {}", report.summary(), path.display());
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    let failed = reports.iter().any(|r| r.verdict == "fail");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `500ms`, `30s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
