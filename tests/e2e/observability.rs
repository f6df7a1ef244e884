//! The observability files in `deploy/`: the alert rules pass `promtool check rules` and their unit
//! tests, the Prometheus config template renders to a valid config, every dashboard panel has a
//! data source and a query that parses, and every metric the dashboards and rules use is exported
//! by a live platform.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use testkit::TestPlatform;

use crate::checkout::Shop;
use crate::{bookstore, client, metric};

/// Names Prometheus makes itself (not exported by any process).
const MADE_BY_PROMETHEUS: &[&str] = &["up"];

/// Counters a process creates only when their event first happens; a short test on a healthy
/// platform cannot make these happen. Each must still be emitted by a `metrics::` macro in the
/// workspace's sources (checked below), so a renamed metric fails the test all the same. Every
/// other counter is created at 0 when its process starts (so `rate()` sees its first event).
const EMITTED_ON_FIRST_EVENT: &[(&str, &str)] = &[
    (
        "coordinator_protocol_violations_total",
        "only when a participant gives an answer the protocol rules out (its op × answer pairs are many)",
    ),
    (
        "bookstore_pg_node_is_primary",
        "only on the Patroni cluster; this test runs the single server",
    ),
    (
        "bookstore_pg_node_up",
        "only on the Patroni cluster; this test runs the single server",
    ),
    (
        "bookstore_pg_replication_lag_seconds",
        "only on the Patroni cluster; this test runs the single server",
    ),
    (
        "bookstore_pg_replication_lag_bytes",
        "only on the Patroni cluster; this test runs the single server",
    ),
    (
        "bookstore_pg_failovers_total",
        "only when a cluster-aware pool sees the primary change",
    ),
    (
        "bookstore_pg_pool_errors_total",
        "only when idempotent database work is retried",
    ),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn prometheus_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

/// `promtool` with `args` in `dir`; `None` when promtool is not installed and this is not CI
/// (then the caller skips, saying so). Under CI (`CI` set) a missing promtool fails the test.
fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<Option<std::process::Output>> {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => Ok(Some(output)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::ensure!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed, and CI is set: install it (scripts/setup.sh --test)"
            );
            eprintln!(
                "SKIPPED: promtool is not installed (apt-get install prometheus, or \
                 scripts/setup.sh --test); the rule checks did not run"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn ensure_success(output: &std::process::Output, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Every dashboard file with its parsed JSON.
fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir = root().join("deploy/grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
            found.push((path.display().to_string(), json));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    anyhow::ensure!(!found.is_empty(), "no dashboards in {}", dir.display());
    Ok(found)
}

/// Every panel of a dashboard, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL expression of the dashboards: the panels' targets, and the selectors of the
/// `label_values(<selector>, <label>)` variable queries.
fn dashboard_exprs() -> anyhow::Result<Vec<String>> {
    let mut exprs = Vec::new();
    for (_, dashboard) in dashboards()? {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    exprs.push(expr.to_owned());
                }
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] == "query" {
                let query = variable["definition"].as_str().unwrap_or_default();
                let selector = query
                    .strip_prefix("label_values(")
                    .and_then(|rest| rest.rsplit_once(','))
                    .map(|(selector, _)| selector.to_owned())
                    .ok_or_else(|| anyhow::anyhow!("unexpected variable query {query:?}"))?;
                exprs.push(selector);
            }
        }
    }
    Ok(exprs)
}

/// The `expr` of every rule in `alerts.yml` (inline, or a `|` block of more indented lines).
fn rule_exprs() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml"))?;
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value == "|" || value == ">" {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(value.to_owned());
        }
    }
    let alerts = lines
        .iter()
        .filter(|l| {
            l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:")
        })
        .count();
    anyhow::ensure!(
        alerts == exprs.len() && alerts > 0,
        "{alerts} rules but {} expressions read from alerts.yml",
        exprs.len()
    );
    Ok(exprs)
}

/// The metric names a PromQL expression reads: every identifier that is not a function or
/// aggregation (followed by `(`), a keyword, a label name (inside `{…}` or the `(…)` after
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`), a string, a number or a duration.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter to its closing one, strings included.
    let skip_to = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '#' {
            i = skip_to(i + 1, '\n');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (…) (…)`: an aggregation whose grouping comes before its argument.
            let next_word: String = chars[next..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let called = chars.get(next) == Some(&'(')
                || (next_word == "by" || next_word == "without")
                    && !LABEL_LISTS.contains(&word.as_str());
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    i = skip_to(next + 1, ')');
                }
            } else if !called && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric name the dashboards and alert rules read, with where it is used.
fn referenced_metrics() -> anyhow::Result<BTreeMap<String, Vec<&'static str>>> {
    let mut names: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for expr in dashboard_exprs()? {
        for name in metric_names(&expr) {
            names.entry(name).or_default().push("dashboards");
        }
    }
    for expr in rule_exprs()? {
        for name in metric_names(&expr) {
            names.entry(name).or_default().push("alerts.yml");
        }
    }
    for used_by in names.values_mut() {
        used_by.dedup();
    }
    Ok(names)
}

/// The `label="value"` (equality) matchers of a PromQL expression's selectors, with their metric:
/// a panel filtering on a label value no series has would stay empty without any error.
fn equality_matchers(expr: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let metric: String = rest[..open]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let inner = &rest[open + 1..];
        let mut matchers = inner;
        while let Some(quote) = matchers.find('"') {
            let head = &matchers[..quote];
            let value_start = quote + 1;
            let Some(len) = matchers[value_start..].find('"') else {
                break;
            };
            let value = &matchers[value_start..value_start + len];
            let (label, op) = match head
                .trim_end()
                .strip_suffix("=~")
                .or(head.trim_end().strip_suffix("!~"))
            {
                Some(label) => (label, "~"),
                None => match head.trim_end().strip_suffix("!=") {
                    Some(label) => (label, "!="),
                    None => (head.trim_end().trim_end_matches('='), "="),
                },
            };
            let label = label.trim().trim_start_matches(',').trim();
            if op == "=" && !metric.is_empty() && !value.contains('$') {
                found.push((metric.clone(), label.to_owned(), value.to_owned()));
            }
            matchers = &matchers[value_start + len + 1..];
            if matchers.trim_start().starts_with('}') {
                break;
            }
        }
        rest = &inner[inner.len() - matchers.len()..];
    }
    found
}

/// One sample line of a text exposition: its name and labels.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    if line[name_end..].starts_with('{') {
        let mut rest = &line[name_end + 1..];
        while let Some(eq) = rest.find("=\"") {
            let label = rest[..eq].trim_start_matches(',').trim().to_owned();
            let value_part = &rest[eq + 2..];
            let mut value = String::new();
            let mut chars = value_part.char_indices();
            let mut end = value_part.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(if escaped == 'n' { '\n' } else { escaped });
                        }
                    }
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    other => value.push(other),
                }
            }
            labels.insert(label, value);
            rest = &value_part[end..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    Some((name, labels))
}

/// The sample names of a text exposition (`name{labels} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// True when some `.rs` file under `dir` records `name` through a `metrics::` macro.
fn emitted_in_source(dir: &Path, name: &str) -> anyhow::Result<bool> {
    let needle = format!("(\"{name}\"");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == ".git")
            {
                continue;
            }
            if emitted_in_source(&path, name)? {
                return Ok(true);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            let compact: String = text.split_whitespace().collect();
            if ["counter!", "gauge!", "histogram!"]
                .iter()
                .any(|m| compact.contains(&format!("metrics::{m}{needle}")))
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[test]
fn observability_metric_names_are_read_from_promql_as_prometheus_would() {
    let expr = r#"histogram_quantile(0.99, sum by (le, service) (rate(http_request_duration_seconds_bucket{route!~"/health/.*|x_total", service=~"$service"}[5m])))
        / on (service) group_left(route) sum without (instance) (gateway_in_flight offset 10m)
        or vector(0) and max(coordinator_in_doubt_transactions) > 1e3 unless up == 0"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "coordinator_in_doubt_transactions",
            "gateway_in_flight",
            "http_request_duration_seconds_bucket",
            "up"
        ]
    );
    assert_eq!(
        equality_matchers(
            r#"sum(rate(x_total{service="orders", route=~"/api/.*", method="POST"}[5m])) / y{a!="b",c="$v"} or z{route="/api/books/{id}"}"#
        ),
        [
            (
                "x_total".to_owned(),
                "service".to_owned(),
                "orders".to_owned()
            ),
            ("x_total".to_owned(), "method".to_owned(), "POST".to_owned()),
            (
                "z".to_owned(),
                "route".to_owned(),
                "/api/books/{id}".to_owned()
            ),
        ]
    );
    let (name, labels) = parse_sample(r#"h_bucket{route="/api/books/{id}",q="a\"b",le="+Inf"} 2"#)
        .unwrap_or_default();
    assert_eq!(name, "h_bucket");
    assert_eq!(
        labels.get("route").map(String::as_str),
        Some("/api/books/{id}")
    );
    assert_eq!(labels.get("q").map(String::as_str), Some("a\"b"));
    assert_eq!(labels.get("le").map(String::as_str), Some("+Inf"));
    let exposition = "# TYPE a_total counter\na_total{x=\"1\"} 3\nb 1\nc_bucket{le=\"+Inf\"} 2\n";
    let samples: Vec<String> = sample_names(exposition).into_iter().collect();
    assert_eq!(samples, ["a_total", "b", "c_bucket"]);
}

#[test]
fn observability_alert_rules_pass_promtool_check_and_their_unit_tests() -> anyhow::Result<()> {
    let dir = prometheus_dir();
    let Some(check) = promtool(&dir, &["check", "rules", "alerts.yml"])? else {
        return Ok(());
    };
    ensure_success(&check, "promtool check rules alerts.yml")?;
    let Some(tests) = promtool(&dir, &["test", "rules", "alerts.test.yml"])? else {
        return Ok(());
    };
    ensure_success(&tests, "promtool test rules alerts.test.yml")?;
    // Every rule has a unit test that expects it to fire.
    let tests_text = std::fs::read_to_string(dir.join("alerts.test.yml"))?;
    let rules_text = std::fs::read_to_string(dir.join("alerts.yml"))?;
    for alert in rules_text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(str::trim)
    {
        let fires = tests_text.split("alertname:").skip(1).any(|case| {
            case.split_whitespace().next() == Some(alert) && case.contains("exp_labels")
        });
        assert!(fires, "no unit test of {alert} expects it to fire");
    }
    Ok(())
}

#[test]
fn observability_every_dashboard_panel_has_a_data_source_and_a_query_that_parses()
-> anyhow::Result<()> {
    let mut uids = BTreeSet::new();
    for (file, dashboard) in dashboards()? {
        let uid = dashboard["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uids.insert(uid.to_owned()),
            "{file}: missing or repeated uid"
        );
        assert!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: no title"
        );
        let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
        assert!(schema >= 36, "{file}: schemaVersion {schema} < 36");
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(panel["id"].as_u64()),
                "{file}: repeated panel id in {title:?}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(
                panel["gridPos"]["w"].as_u64().is_some(),
                "{file}: {title:?} has no gridPos"
            );
            assert!(
                panel["datasource"]["uid"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{file}: panel {title:?} has no data source"
            );
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{file}: panel {title:?} has no target");
            for target in &targets {
                // PromQL (`expr`), or SQL (`rawSql`) for the warehouse's PostgreSQL data source.
                assert!(
                    target["expr"]
                        .as_str()
                        .or_else(|| target["rawSql"].as_str())
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{file}: panel {title:?} has a target without a query"
                );
                assert!(
                    target["datasource"]["uid"]
                        .as_str()
                        .is_some_and(|u| !u.is_empty()),
                    "{file}: a target of {title:?} has no data source"
                );
            }
        }
    }

    // Every query parses as PromQL: promtool checks them as recording rules, with Grafana's
    // variables replaced by values they can take.
    let scratch = tempfile::tempdir()?;
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (n, expr) in dashboard_exprs()?.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace(['$'], "");
        rules.push_str(&format!(
            "      - record: dashboard:query:{n}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    std::fs::write(scratch.path().join("dashboards.yml"), rules)?;
    let Some(check) = promtool(scratch.path(), &["check", "rules", "dashboards.yml"])? else {
        return Ok(());
    };
    ensure_success(&check, "promtool check rules (the dashboards' queries)")
}

#[test]
fn observability_the_prometheus_config_template_renders_to_a_valid_config() -> anyhow::Result<()> {
    let template = std::fs::read_to_string(prometheus_dir().join("prometheus.yml"))?;
    for placeholder in ["${REGISTRY_ADDRESS}", "${GATEWAY_ADDRESS}", "${RULES_FILE}"] {
        assert!(
            template.contains(placeholder),
            "the template lost {placeholder}"
        );
    }
    assert!(
        template.contains("consul_sd_configs:"),
        "services are found through the registry"
    );
    let rendered = template
        .replace("${REGISTRY_ADDRESS}", "127.0.0.1:8500")
        .replace("${GATEWAY_ADDRESS}", "127.0.0.1:8080")
        .replace("${RULES_FILE}", "alerts.yml");
    assert!(
        !rendered.contains("${"),
        "a placeholder is left: {rendered}"
    );
    let scratch = tempfile::tempdir()?;
    std::fs::copy(
        prometheus_dir().join("alerts.yml"),
        scratch.path().join("alerts.yml"),
    )?;
    std::fs::write(scratch.path().join("prometheus.yml"), &rendered)?;
    let Some(check) = promtool(scratch.path(), &["check", "config", "prometheus.yml"])? else {
        return Ok(());
    };
    if !check.status.success()
        && [&check.stdout, &check.stderr]
            .iter()
            .any(|out| String::from_utf8_lossy(out).contains("field consul_sd_configs not found"))
    {
        // Debian builds Prometheus without Consul discovery. Check the rest of the file with
        // the registry block replaced by a static target, and say what was not checked.
        eprintln!("NOTE: this promtool has no consul_sd_configs (Debian build); checking the rest");
        let start = rendered
            .find("    consul_sd_configs:")
            .ok_or_else(|| anyhow::anyhow!("no consul_sd_configs block"))?;
        let end = rendered[start..]
            .find("    relabel_configs:")
            .map(|n| start + n)
            .ok_or_else(|| anyhow::anyhow!("no relabel_configs after consul_sd_configs"))?;
        let without = format!(
            "{}    static_configs:\n      - targets: ['127.0.0.1:1']\n{}",
            &rendered[..start],
            &rendered[end..]
        );
        std::fs::write(scratch.path().join("prometheus.yml"), without)?;
        let Some(check) = promtool(scratch.path(), &["check", "config", "prometheus.yml"])? else {
            return Ok(());
        };
        return ensure_success(&check, "promtool check config (without consul_sd_configs)");
    }
    ensure_success(&check, "promtool check config")
}

#[tokio::test]
async fn observability_every_metric_the_dashboards_and_alerts_use_is_exported_by_a_live_platform()
-> anyhow::Result<()> {
    let referenced = referenced_metrics()?;
    // The allowances must stay true: each is used, and really emitted somewhere in the code.
    for (name, why) in EMITTED_ON_FIRST_EVENT {
        assert!(
            referenced.contains_key(*name),
            "{name} is allowed but no longer used: drop it"
        );
        assert!(
            emitted_in_source(root(), name)?,
            "{name} ({why}) is not recorded by any metrics:: macro in the sources"
        );
    }

    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_NO_DEMO", "true"),
            // The orphan scan sets the oldest-prepared gauge; scan every second, not every 5 s.
            (
                "BOOKSTORE_COORDINATOR__COORDINATOR__ORPHAN_SCAN_INTERVAL_MS",
                "1000",
            ),
            // A small burst, so a handful of concurrent requests are rate-limited below.
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__BURST", "10"),
        ],
    )
    .await?;
    let processes = platform.state().processes.clone();
    let gateway_url = platform.gateway_url().to_owned();

    // Traffic: a book, a customer, one checkout by two-phase commit, a few reads.
    let mut shop = Shop::open(platform).await?;
    let book = shop.book(5, 1_000).await?;
    let customer = shop.customer(10_000).await?;
    let answer = shop
        .checkout(&customer, "observability-1", "2pc", &[(&book, 1)])
        .await?;
    let status = answer.status().as_u16();
    let order: Value = answer.json().await?;
    assert!(
        status == 201 || status == 202,
        "checkout answered {status}: {order}"
    );
    let order_id = order["id"].as_str().unwrap_or_default();
    let settled = shop.settle(&customer, order_id).await?;
    assert_eq!(settled["status"], "committed", "{settled}");
    let client = client();
    let book_url = format!("{gateway_url}/api/books/{book}");
    client.get(&book_url).send().await?.error_for_status()?;
    client
        .get(format!("{gateway_url}/api/books?limit=5"))
        .send()
        .await?
        .error_for_status()?;

    // A books instance dies: the gateway reroutes around it and its breaker opens.
    let victim = processes
        .iter()
        .find(|p| p.kind == "books")
        .ok_or_else(|| anyhow::anyhow!("no books instance in state.json"))?
        .clone();
    kill(Pid::from_raw(i32::try_from(victim.pid)?), Signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        for _ in 0..5 {
            // Paced under the rate limit (50/s per client).
            client.get(&book_url).send().await?;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let transitions = metric(&gateway_url, "gateway_breaker_transitions_total", &[]).await?;
        let reroutes = metric(&gateway_url, "gateway_reroutes_total", &[]).await?;
        if transitions > 0.0 && reroutes > 0.0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no breaker transition and reroute 8 s after killing {}",
            victim.name
        );
    }

    // A burst over the client's bucket of 10: some are rate-limited.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burst = (0..30).map(|_| client.get(&book_url).send());
    let statuses: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .filter_map(|r| r.ok().map(|r| r.status().as_u16()))
        .collect();
    assert!(
        statuses.contains(&429),
        "no request of the burst was limited: {statuses:?}"
    );

    // Scrape every live process.
    let mut exported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut scraped = Vec::new();
    let mut series = Vec::new();
    for process in processes
        .iter()
        .filter(|p| p.url.starts_with("http") && p.pid != victim.pid)
    {
        let response = client
            .get(format!("{}/metrics", process.url))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "{} /metrics: {}",
            process.name,
            response.status()
        );
        let text = response.text().await?;
        for name in sample_names(&text) {
            exported.entry(name).or_default().push(process.name.clone());
        }
        series.extend(text.lines().filter_map(parse_sample));
        scraped.push(process.name.clone());
    }
    for kind in ["gateway", "discovery", "books", "orders", "coordinator"] {
        assert!(
            processes
                .iter()
                .any(|p| p.kind == kind && scraped.contains(&p.name)),
            "no {kind} process was scraped: {scraped:?}"
        );
    }

    let missing: Vec<String> = referenced
        .iter()
        .filter(|(name, _)| !exported.contains_key(*name))
        .filter(|(name, _)| !MADE_BY_PROMETHEUS.contains(&name.as_str()))
        .filter(|(name, _)| !EMITTED_ON_FIRST_EVENT.iter().any(|(n, _)| n == name))
        .map(|(name, used_by)| format!("{name} (used by {})", used_by.join(", ")))
        .collect();
    // Every `label="value"` filter matches some exported series (labels Prometheus adds aside).
    let mut filters = BTreeSet::new();
    for expr in dashboard_exprs()?.iter().chain(rule_exprs()?.iter()) {
        filters.extend(equality_matchers(expr));
    }
    anyhow::ensure!(!filters.is_empty(), "no label filter read from the queries");
    let unmatched: Vec<String> = filters
        .iter()
        .filter(|(metric, label, _)| {
            exported.contains_key(metric)
                && !["instance", "job", "upstream_instance"].contains(&label.as_str())
        })
        .filter(|(metric, label, value)| {
            !series
                .iter()
                .any(|(name, labels)| name == metric && labels.get(label) == Some(value))
        })
        .map(|(metric, label, value)| format!("{metric}{{{label}=\"{value}\"}}"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ that no live process exports ({} scraped: {scraped:?}):\n  {}",
        scraped.len(),
        missing.join("\n  ")
    );
    assert!(
        unmatched.is_empty(),
        "filters in deploy/ that match no exported series:\n  {}",
        unmatched.join("\n  ")
    );
    Ok(())
}

/// Real Prometheus (the machine's package) finds every books, orders and coordinator instance
/// through the registry — with `http_sd_configs` on the registry's `/v1/prometheus/targets`, since
/// Debian builds Prometheus without Consul discovery — and scrapes every one of them, and the
/// gateway and the registry, successfully.
#[tokio::test]
async fn observability_real_prometheus_finds_every_instance_through_the_registry_and_scrapes_it()
-> anyhow::Result<()> {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed, and CI is set: install it (scripts/setup.sh --test)"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
        return Ok(());
    }
    let platform = TestPlatform::start_with(bookstore(), &[("BOOKSTORE_NO_DEMO", "true")]).await?;
    let host_port = |url: &str| url.trim_start_matches("http://").to_owned();
    let registry = platform.registry_url().to_owned();
    let rendered = std::fs::read_to_string(prometheus_dir().join("prometheus-http-sd.yml"))?
        .replace("${REGISTRY_ADDRESS}", &host_port(&registry))
        .replace("${GATEWAY_ADDRESS}", &host_port(platform.gateway_url()))
        .replace("${RULES_FILE}", "alerts.yml")
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("refresh_interval: 15s", "refresh_interval: 1s");
    anyhow::ensure!(!rendered.contains("${"), "a placeholder is left");
    let scratch = tempfile::tempdir()?;
    std::fs::copy(
        prometheus_dir().join("alerts.yml"),
        scratch.path().join("alerts.yml"),
    )?;
    std::fs::write(scratch.path().join("prometheus.yml"), rendered)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg("--config.file=prometheus.yml")
        .arg("--storage.tsdb.path=data")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(scratch.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(
            scratch.path().join("prometheus.log"),
        )?)
        .kill_on_drop(true)
        .spawn()?;

    // What the registry holds is what Prometheus must find.
    let client = client();
    let mut expected = BTreeSet::new();
    for service in ["books", "orders", "coordinator", "warehouse"] {
        let entries: Value = client
            .get(format!("{registry}/v1/catalog/service/{service}"))
            .send()
            .await?
            .json()
            .await?;
        for entry in entries.as_array().into_iter().flatten() {
            let id = entry["ServiceID"].as_str().unwrap_or_default();
            expected.insert((service.to_owned(), id.to_owned()));
        }
    }
    anyhow::ensure!(expected.len() == 7, "registered: {expected:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(answer) = client
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/targets?state=active"
            ))
            .send()
            .await
            && let Ok(body) = answer.json::<Value>().await
        {
            let targets = body["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = |t: &Value| t["health"] == "up";
            let found: BTreeSet<(String, String)> = targets
                .iter()
                .filter(|t| t["scrapePool"] == "services" && up(t))
                .map(|t| {
                    let label = |n: &str| t["labels"][n].as_str().unwrap_or_default().to_owned();
                    (label("job"), label("instance"))
                })
                .collect();
            let others_up = ["gateway", "discovery"]
                .iter()
                .all(|pool| targets.iter().any(|t| t["scrapePool"] == *pool && up(t)));
            if found == expected && others_up {
                break;
            }
            last = format!("found {found:?}, gateway and registry up: {others_up}");
        }
        if let Ok(Some(status)) = prometheus.try_wait() {
            let log = std::fs::read_to_string(scratch.path().join("prometheus.log"))?;
            anyhow::bail!("prometheus exited ({status}):\n{log}");
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not find and scrape every instance within 30 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    prometheus.kill().await?;
    Ok(())
}
