//! Prometheus and Alertmanager beside the platform, from the machine's packages (`prometheus`,
//! `prometheus-alertmanager`; `scripts/setup.sh` installs them). Prometheus finds every instance
//! through the registry's HTTP service discovery and loads the alert rules; Alertmanager receives
//! what fires. Their configs are the files of `deploy/`, built into the binary so `up` works from
//! any directory, rendered into `<dir>/prometheus/` and `<dir>/alertmanager/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::ports;
use crate::process::{ChildSpec, Supervised};
use crate::state::ProcessInfo;

/// The Prometheus config template for builds without Consul discovery (Debian's).
const PROMETHEUS_TEMPLATE: &str = include_str!("../../deploy/prometheus/prometheus-http-sd.yml");
/// The alert rules.
const ALERT_RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");
/// Alertmanager's routing (no notifier by default).
const ALERTMANAGER_CONFIG: &str = include_str!("../../deploy/alertmanager/alertmanager.yml");

/// The default ports, taken only when free (else a free one is picked and shown).
const PROMETHEUS_DEFAULT_PORT: u16 = 9090;
const ALERTMANAGER_DEFAULT_PORT: u16 = 9093;

#[derive(Debug, Clone, clap::Args)]
pub struct MonitoringArgs {
    /// Do not start Prometheus and Alertmanager.
    #[arg(long, env = "BOOKSTORE_NO_MONITORING")]
    pub no_monitoring: bool,
    /// Prometheus' port (0 picks a free one; by default 9090, or a free one if 9090 is taken).
    #[arg(long)]
    pub prometheus_port: Option<u16>,
    /// Alertmanager's port (0 picks a free one; by default 9093, or a free one if 9093 is taken).
    #[arg(long)]
    pub alertmanager_port: Option<u16>,
    /// How often Prometheus scrapes, asks the registry for instances and evaluates the rules (a
    /// Prometheus duration: `15s`, `1s`, `1m`). Tests lower it to see alerts sooner.
    #[arg(long, default_value = "15s", env = "BOOKSTORE_MONITORING_INTERVAL", value_parser = parse_interval)]
    pub monitoring_interval: String,
}

fn parse_interval(text: &str) -> Result<String, String> {
    let digits = text.trim_end_matches(['s', 'm', 'h']);
    let unit_len = text.len() - digits.len();
    match (digits.parse::<u32>(), unit_len) {
        (Ok(n), 1) if n > 0 => Ok(text.to_owned()),
        _ => Err(format!(
            "`{text}` is not an interval like 15s, 1m or 1h (a positive whole number and one unit)"
        )),
    }
}

/// The two binaries, found before anything starts so a missing package fails fast.
pub struct Binaries {
    prometheus: PathBuf,
    alertmanager: PathBuf,
}

/// Finds the binaries, or `None` when monitoring is off. A missing one is an error that says how to
/// install it or skip monitoring.
pub fn locate(args: &MonitoringArgs) -> anyhow::Result<Option<Binaries>> {
    if args.no_monitoring {
        return Ok(None);
    }
    let find = |name: &str, package: &str| {
        which(name).ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not installed: run scripts/setup.sh (apt-get install {package}), or pass --no-monitoring"
            )
        })
    };
    for (port, flag) in [
        (args.prometheus_port, "--prometheus-port"),
        (args.alertmanager_port, "--alertmanager-port"),
    ] {
        if let Some(port) = port.filter(|p| *p != 0) {
            anyhow::ensure!(
                ports::is_free(port),
                "port {port} is already in use: pass {flag} <free port>, or --no-monitoring"
            );
        }
    }
    Ok(Some(Binaries {
        prometheus: find("prometheus", "prometheus")?,
        alertmanager: find("prometheus-alertmanager", "prometheus-alertmanager")?,
    }))
}

fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|p| p.is_file())
}

/// Where the platform is, for Prometheus to find it.
pub struct Targets<'a> {
    /// `http://host:port` of the registry.
    pub registry_url: &'a str,
    /// `http://host:port` of the gateway.
    pub gateway_url: &'a str,
}

/// Starts Alertmanager, then Prometheus (which sends to it), each ready before the next. Both are
/// pushed onto `started` as soon as they run, so a failure later still stops them.
pub async fn start(
    args: &MonitoringArgs,
    binaries: &Binaries,
    dir: &Path,
    targets: &Targets<'_>,
    started: &mut Vec<(ProcessInfo, Supervised)>,
) -> anyhow::Result<()> {
    let am_dir = prepare(
        dir,
        "alertmanager",
        &[("alertmanager.yml", ALERTMANAGER_CONFIG)],
    )?;
    let alertmanager = Server {
        name: "alertmanager",
        binary: &binaries.alertmanager,
        log: dir.join("logs/alertmanager.log"),
        args: vec![
            flag("config.file", &am_dir.join("alertmanager.yml")),
            flag("storage.path", &am_dir.join("data")),
            // One Alertmanager: no gossip cluster (it would listen on every interface on 9094).
            "--cluster.listen-address=".into(),
        ],
    };
    let am_port = alertmanager
        .start(args.alertmanager_port, ALERTMANAGER_DEFAULT_PORT, started)
        .await?;

    let config = prometheus_config(targets, &args.monitoring_interval, am_port)?;
    let prom_dir = prepare(
        dir,
        "prometheus",
        &[("alerts.yml", ALERT_RULES), ("prometheus.yml", &config)],
    )?;
    let prometheus = Server {
        name: "prometheus",
        binary: &binaries.prometheus,
        log: dir.join("logs/prometheus.log"),
        args: vec![
            flag("config.file", &prom_dir.join("prometheus.yml")),
            flag("storage.tsdb.path", &prom_dir.join("data")),
        ],
    };
    prometheus
        .start(args.prometheus_port, PROMETHEUS_DEFAULT_PORT, started)
        .await?;
    Ok(())
}

/// `<dir>/<name>/` with its `data/` directory and `files` (name, text) written into it.
fn prepare(dir: &Path, name: &str, files: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("data"))
        .with_context(|| format!("cannot create {}", home.display()))?;
    for (file, text) in files {
        std::fs::write(home.join(file), text)?;
    }
    Ok(home)
}

/// `--name=<path>`, with an absolute path: Prometheus reads relative paths in its config (the
/// rules file) from the config file's directory.
fn flag(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

/// The config `up` gives Prometheus: the HTTP SD template with the platform's addresses and the
/// interval filled in, and Alertmanager to send alerts to.
pub fn prometheus_config(
    targets: &Targets<'_>,
    interval: &str,
    alertmanager_port: u16,
) -> anyhow::Result<String> {
    let host_port = |url: &str| url.trim_start_matches("http://").to_owned();
    let rendered = PROMETHEUS_TEMPLATE
        .replace("${REGISTRY_ADDRESS}", &host_port(targets.registry_url))
        .replace("${GATEWAY_ADDRESS}", &host_port(targets.gateway_url))
        .replace("${RULES_FILE}", "alerts.yml")
        .replace(
            "scrape_interval: 15s",
            &format!("scrape_interval: {interval}"),
        )
        .replace(
            "evaluation_interval: 15s",
            &format!("evaluation_interval: {interval}"),
        )
        .replace(
            "refresh_interval: 15s",
            &format!("refresh_interval: {interval}"),
        );
    anyhow::ensure!(
        !rendered.contains("${"),
        "deploy/prometheus/prometheus-http-sd.yml has a placeholder `up` does not know"
    );
    Ok(format!(
        "{rendered}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager_port}']\n"
    ))
}

/// The path that answers 200 once a process of `kind` is ready, for `status`: Prometheus and
/// Alertmanager have their own.
pub fn ready_path(kind: &str) -> &'static str {
    match kind {
        "prometheus" | "alertmanager" => "/-/ready",
        _ => "/health/ready",
    }
}

/// One of the two servers: both take `--web.listen-address` and answer `/-/ready`.
struct Server<'a> {
    name: &'static str,
    binary: &'a Path,
    log: PathBuf,
    /// Everything but the listen address.
    args: Vec<String>,
}

impl Server<'_> {
    /// Starts on the asked port, or on `default` if free, else on a free one; a port taken between
    /// our probe and its bind is retried (unless asked for). Returns the port.
    async fn start(
        &self,
        asked: Option<u16>,
        default: u16,
        started: &mut Vec<(ProcessInfo, Supervised)>,
    ) -> anyhow::Result<u16> {
        let mut last_error = None;
        for attempt in 0..4 {
            let port = match asked {
                Some(port) if port != 0 => port,
                None if attempt == 0 && ports::is_free(default) => default,
                _ => ports::free_port()?,
            };
            match self.start_on(port).await {
                Ok(running) => {
                    started.push(running);
                    return Ok(port);
                }
                Err(e) if !matches!(asked, Some(p) if p != 0) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{} did not start", self.name)))
    }

    async fn start_on(&self, port: u16) -> anyhow::Result<(ProcessInfo, Supervised)> {
        let spec = ChildSpec::new(self.name, self.binary, &self.log)
            .args([format!("--web.listen-address=127.0.0.1:{port}")])
            .args(self.args.iter().cloned());
        let mut child = Supervised::spawn(&spec)?;
        let url = format!("http://127.0.0.1:{port}");
        if let Err(e) = child
            .wait_until_ready(&format!("{url}/-/ready"), Duration::from_secs(60))
            .await
        {
            let _ = child.stop(Duration::from_secs(5)).await;
            return Err(e);
        }
        let info = ProcessInfo {
            name: self.name.into(),
            kind: self.name.into(),
            pid: child.pid().unwrap_or(0),
            url,
            log: self.log.clone(),
        };
        Ok((info, child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_prometheus_durations() {
        for good in ["15s", "1s", "2m", "1h"] {
            assert_eq!(parse_interval(good).as_deref(), Ok(good));
        }
        for bad in ["", "s", "0s", "15", "1.5s", "15ms", "-1s", "1d"] {
            assert!(parse_interval(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_rendered_config_points_at_the_platform_and_alertmanager() -> anyhow::Result<()> {
        let targets = Targets {
            registry_url: "http://127.0.0.1:8500",
            gateway_url: "http://127.0.0.1:8080",
        };
        let config = prometheus_config(&targets, "2s", 9093)?;
        for line in [
            "  scrape_interval: 2s",
            "  evaluation_interval: 2s",
            "  - alerts.yml",
            "        - targets: ['127.0.0.1:9093']",
        ] {
            assert!(
                config.lines().any(|l| l == line),
                "no `{line}` in:\n{config}"
            );
        }
        assert!(config.contains("http://127.0.0.1:8500/v1/prometheus/targets"));
        assert!(config.contains("targets: [127.0.0.1:8080]"));
        assert!(!config.contains("15s"), "an interval was left at 15s");
        Ok(())
    }
}
