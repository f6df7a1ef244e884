//! `bookstore status` (every process with its health) and `bookstore down` (stop a running `up`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::state::{ProcessInfo, State};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The directory `bookstore up` runs from.
    #[arg(long, default_value = ".bookstore", env = "BOOKSTORE_DIR")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// The directory `bookstore up` runs from.
    #[arg(long, default_value = ".bookstore", env = "BOOKSTORE_DIR")]
    pub dir: PathBuf,
}

/// How one process looks right now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub name: String,
    pub pid: u32,
    pub url: String,
    /// `ready`, `not ready: <reason>`, `not answering` or `exited`.
    pub health: String,
    pub log: PathBuf,
}

fn not_running(dir: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the platform is not running from {} (no state.json): start it with `bookstore up`",
        dir.display()
    )
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let state = State::read(&args.dir)?.ok_or_else(|| not_running(&args.dir))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut rows = Vec::new();
    for process in &state.processes {
        rows.push(Health {
            name: process.name.clone(),
            pid: process.pid,
            url: process.url.clone(),
            health: probe(&client, process).await,
            log: process.log.clone(),
        });
    }
    let healthy = rows.iter().all(|r| r.health == "ready");
    let upstreams = gateway_view(&client, &args.dir, &state.gateway_url).await;
    let topology = match &state.cluster {
        Some(info) => Some(crate::cluster::topology::fetch(&client, info).await),
        None => None,
    };
    if args.json {
        let cluster = topology.as_ref().and_then(|t| t.as_ref().ok());
        let view = serde_json::json!({"processes": rows, "upstreams": upstreams.as_ref().ok(), "cluster": cluster});
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "supervisor pid {}   gateway {}   registry {}",
            state.up_pid, state.gateway_url, state.registry_url
        );
        println!("{:<12} {:>8}  {:<28} HEALTH", "PROCESS", "PID", "URL");
        for row in &rows {
            println!(
                "{:<12} {:>8}  {:<28} {}",
                row.name, row.pid, row.url, row.health
            );
        }
    }
    if !args.json {
        if let Some(topology) = &topology {
            crate::cluster::topology::print(topology);
        }
        print_upstreams(&upstreams);
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The gateway's own view (`/admin/upstreams`): breakers, in-flight requests, error rates.
async fn gateway_view(
    client: &reqwest::Client,
    dir: &std::path::Path,
    gateway: &str,
) -> anyhow::Result<serde_json::Value> {
    let secrets = crate::state::Secrets::load_or_create(dir)?;
    let login =
        serde_json::json!({"email": crate::state::ADMIN_EMAIL, "password": secrets.admin_password});
    let token: serde_json::Value = client
        .post(format!("{gateway}/api/auth/token"))
        .json(&login)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = token["access_token"].as_str().unwrap_or_default();
    Ok(client
        .get(format!("{gateway}/admin/upstreams"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn print_upstreams(view: &anyhow::Result<serde_json::Value>) {
    let services = match view {
        Ok(view) => view["services"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            println!("\nthe gateway's view of its upstreams is unavailable: {e:#}");
            return;
        }
    };
    println!(
        "\n{:<10} {:<14} {:<21} {:<10} {:>9} {:>7} {:>9}",
        "UPSTREAM", "INSTANCE", "ADDRESS", "BREAKER", "IN-FLIGHT", "ERRORS", "EJECTIONS"
    );
    for service in &services {
        let name = service["service"].as_str().unwrap_or_default();
        for instance in service["instances"].as_array().into_iter().flatten() {
            let address = format!(
                "{}:{}",
                instance["address"].as_str().unwrap_or_default(),
                instance["port"]
            );
            println!(
                "{:<10} {:<14} {:<21} {:<10} {:>9} {:>6.1}% {:>9}",
                name,
                instance["id"].as_str().unwrap_or_default(),
                address,
                instance["state"].as_str().unwrap_or_default(),
                instance["in_flight"].as_u64().unwrap_or(0),
                instance["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                instance["ejections"].as_u64().unwrap_or(0),
            );
        }
        let panic = if service["panic_mode"].as_bool() == Some(true) {
            ", panic mode (routing to all)"
        } else {
            ""
        };
        println!(
            "{:<10} service breaker {}{panic}",
            name,
            service["service_breaker"].as_str().unwrap_or("?")
        );
    }
}

async fn probe(client: &reqwest::Client, process: &ProcessInfo) -> String {
    if !alive(process.pid) {
        return "exited".into();
    }
    if matches!(process.kind.as_str(), "postgres" | "redis" | "etcd") {
        let addr = process.url.rsplit("://").next().unwrap_or_default();
        return match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => "ready".into(),
            Err(_) => "not answering".into(),
        };
    }
    match client
        .get(format!(
            "{}{}",
            process.url,
            crate::monitoring::ready_path(&process.kind)
        ))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => "ready".into(),
        Ok(r) => format!("not ready: {}", r.text().await.unwrap_or_default().trim()),
        Err(_) => "not answering".into(),
    }
}

fn alive(pid: u32) -> bool {
    pid != 0 && kill(Pid::from_raw(pid as i32), None).is_ok()
}

pub async fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let state = State::read(&args.dir)?.ok_or_else(|| not_running(&args.dir))?;
    anyhow::ensure!(
        alive(state.up_pid),
        "the supervisor (pid {}) is gone; remove {} and start again",
        state.up_pid,
        State::path(&args.dir).display()
    );
    kill(Pid::from_raw(state.up_pid as i32), Signal::SIGTERM)?;
    for _ in 0..600 {
        if !alive(state.up_pid) {
            println!("stopped");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the platform (pid {}) did not stop within 60 s",
        state.up_pid
    )
}
