//! The deployment files (Dockerfile, docker-compose.yml, deploy/k8s), checked as far as a machine
//! without a container engine can: the compose file parses with `docker-compose config`, every
//! command run from the bookstore image is a real subcommand, every mounted or `COPY`ed file exists,
//! the Kubernetes manifests pass an offline schema validator, and the Postman compose environment
//! points at the port the gateway is published on. Nothing here starts a container.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_norway::Value;

use crate::bookstore;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `program args` in the repo root; `None` when the program is not installed and this is not CI
/// (the caller skips, saying so). Under CI (`CI` set) a missing tool fails the test.
fn tool(program: &str, args: &[&str]) -> anyhow::Result<Option<Output>> {
    match Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => Ok(Some(output)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::ensure!(
                std::env::var_os("CI").is_none(),
                "{program} is not installed, and CI is set: install it (scripts/setup.sh --test)"
            );
            eprintln!("SKIPPED: {program} is not installed (scripts/setup.sh --test installs it)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn succeeded(output: &Output, what: &str) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// The subcommands `bookstore --help` lists (clap's "Commands:" section), without `help`.
fn subcommands() -> anyhow::Result<BTreeSet<String>> {
    let output = Command::new(bookstore()).arg("--help").output()?;
    let help = succeeded(&output, "bookstore --help")?;
    let names: BTreeSet<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(names.contains("books"), "no subcommands in:\n{help}");
    Ok(names)
}

/// The compose file as `docker-compose config` resolves it (anchors merged, `.env.example` read).
fn compose_config() -> anyhow::Result<Option<Value>> {
    let args = [
        "--env-file",
        ".env.example",
        "-f",
        "docker-compose.yml",
        "config",
    ];
    let Some(output) = tool("docker-compose", &args)? else {
        return Ok(None);
    };
    let text = succeeded(&output, "docker-compose config")?;
    Ok(Some(serde_norway::from_str(&text)?))
}

fn services(config: &Value) -> anyhow::Result<&serde_norway::Mapping> {
    config["services"]
        .as_mapping()
        .ok_or_else(|| anyhow::anyhow!("no services in the compose file"))
}

fn name(key: &Value) -> String {
    key.as_str().unwrap_or_default().to_owned()
}

/// Services built from the repository's Dockerfile (the bookstore image).
fn is_bookstore(service: &Value) -> bool {
    let context = service["build"]["context"].as_str().unwrap_or_default();
    Path::new(context) == root()
}

#[test]
fn deploy_the_compose_file_runs_only_real_bookstore_subcommands() -> anyhow::Result<()> {
    let Some(config) = compose_config()? else {
        return Ok(());
    };
    let known = subcommands()?;
    let mut components = BTreeSet::new();
    for (key, service) in services(&config)? {
        if !is_bookstore(service) {
            continue;
        }
        let command = service["command"][0].as_str().unwrap_or_default();
        anyhow::ensure!(
            known.contains(command),
            "service {} runs `bookstore {command}`, not one of {known:?}",
            name(key)
        );
        components.insert(name(key));
    }
    let expected = [
        "books-1",
        "books-2",
        "orders-1",
        "orders-2",
        "coordinator-1",
        "coordinator-2",
        "warehouse",
        "gateway",
    ];
    for component in expected {
        anyhow::ensure!(
            components.contains(component),
            "{component} missing from the bookstore services {components:?}"
        );
    }
    Ok(())
}

#[test]
fn deploy_the_compose_stack_has_every_part_with_ready_checks_and_consul() -> anyhow::Result<()> {
    let Some(config) = compose_config()? else {
        return Ok(());
    };
    let services = services(&config)?;
    for part in [
        "consul",
        "etcd",
        "pg-1",
        "pg-2",
        "pg-3",
        "accounts",
        "redis-1",
        "redis-2",
        "redis-3",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        anyhow::ensure!(services.contains_key(part), "no {part} in the compose file");
    }
    for (key, service) in services.iter().filter(|(_, s)| is_bookstore(s)) {
        let check = serde_norway::to_string(&service["healthcheck"]["test"])?;
        anyhow::ensure!(
            check.contains("/health/ready"),
            "{}: health check {check}",
            name(key)
        );
        let env = &service["environment"];
        anyhow::ensure!(
            env["BOOKSTORE_REGISTRY__URL"].as_str() == Some("http://consul:8500"),
            "{} does not register with Consul: {env:?}",
            name(key)
        );
    }
    Ok(())
}

/// Host paths of the bind mounts (`source:target[:mode]`, or the long form) of every service.
fn bind_sources(config: &Value) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut sources = Vec::new();
    for (key, service) in services(config)? {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = match volume {
                Value::String(short) => short.split(':').next().unwrap_or_default().to_owned(),
                long => long["source"].as_str().unwrap_or_default().to_owned(),
            };
            // Named volumes have no path; bind mounts are absolute after `config`.
            if source.starts_with('/') {
                sources.push((name(key), PathBuf::from(source)));
            }
        }
    }
    Ok(sources)
}

#[test]
fn deploy_every_mounted_and_copied_file_exists() -> anyhow::Result<()> {
    let Some(config) = compose_config()? else {
        return Ok(());
    };
    let sources = bind_sources(&config)?;
    anyhow::ensure!(sources.len() >= 8, "too few bind mounts found: {sources:?}");
    for (service, source) in &sources {
        anyhow::ensure!(
            source.starts_with(root()) && source.exists(),
            "{service} mounts {}, which is not in the repository",
            source.display()
        );
    }
    for (key, service) in services(&config)? {
        if let Some(context) = service["build"]["context"].as_str() {
            let dockerfile = service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile");
            let file = Path::new(context).join(dockerfile);
            anyhow::ensure!(file.exists(), "{} builds {}", name(key), file.display());
            check_copies(&file, Path::new(context))?;
        }
    }
    Ok(())
}

/// Every `COPY` from the build context (not `--from` another stage) names files that exist there.
fn check_copies(dockerfile: &Path, context: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dockerfile)?;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (_, sources) = words
            .split_last()
            .ok_or_else(|| anyhow::anyhow!("{}: {line}", dockerfile.display()))?;
        for source in sources {
            anyhow::ensure!(
                context.join(source).exists(),
                "{} copies {source}, which is not in {}",
                dockerfile.display(),
                context.display()
            );
        }
    }
    Ok(())
}

#[test]
fn deploy_the_dockerfile_builds_the_binary_and_runs_it_unprivileged() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(root().join("Dockerfile"))?;
    for expected in [
        "cargo build --release",
        "--bin bookstore",
        "postgresql-client-15",
        "ENTRYPOINT [\"bookstore\"]",
        "USER bookstore",
    ] {
        anyhow::ensure!(text.contains(expected), "Dockerfile lacks {expected:?}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore"))?;
    anyhow::ensure!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
    check_copies(&root().join("Dockerfile"), &root())
}

#[test]
fn deploy_the_postman_compose_environment_uses_the_published_gateway_port() -> anyhow::Result<()> {
    let Some(config) = compose_config()? else {
        return Ok(());
    };
    let ports = serde_norway::to_string(&config["services"]["gateway"]["ports"])?;
    let path = root().join("postman/compose.postman_environment.json");
    let environment: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let base_url = environment["values"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["key"] == "baseUrl")
        .and_then(|v| v["value"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no baseUrl in the compose environment"))?;
    let port = base_url.rsplit(':').next().unwrap_or_default();
    anyhow::ensure!(
        ports.contains(&format!("published: {port}")) || ports.contains(&format!("{port}:")),
        "Postman's compose baseUrl {base_url} is not where the gateway is published: {ports}"
    );
    Ok(())
}

/// `deploy/k8s` rendered by `kubectl kustomize`, or, without kubectl (optional even under CI), its
/// resource files joined.
fn k8s_manifests() -> anyhow::Result<String> {
    match Command::new("kubectl")
        .args(["kustomize", "deploy/k8s"])
        .current_dir(root())
        .output()
    {
        Ok(output) => return succeeded(&output, "kubectl kustomize deploy/k8s"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("kubectl is not installed: validating deploy/k8s file by file");
        }
        Err(e) => return Err(e.into()),
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| !path.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    let texts: Result<Vec<String>, _> = files.iter().map(std::fs::read_to_string).collect();
    Ok(texts?.join("\n---\n"))
}

#[test]
fn deploy_the_k8s_manifests_pass_the_schema_validator_and_run_real_subcommands()
-> anyhow::Result<()> {
    let manifests = k8s_manifests()?;
    let dir = tempfile::tempdir()?;
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &manifests)?;
    // The validator must be able to fail: a Deployment with a string for replicas.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two, \
         selector: {}, template: {}}\n",
    )?;
    let validate = |file: &Path| {
        let file = file.display().to_string();
        tool("kubernetes-validate", &["--strict", "--quiet", &file])
    };
    if let Some(output) = validate(&broken)? {
        anyhow::ensure!(
            !output.status.success(),
            "the validator accepted a broken manifest"
        );
        let output = validate(&rendered)?.ok_or_else(|| anyhow::anyhow!("validator vanished"))?;
        succeeded(&output, "kubernetes-validate deploy/k8s")?;
    }
    check_deployments(&manifests)
}

/// Every Deployment runs a real subcommand and has readiness and liveness probes and resources.
fn check_deployments(manifests: &str) -> anyhow::Result<()> {
    let known = subcommands()?;
    let mut deployed = BTreeSet::new();
    for document in serde_norway::Deserializer::from_str(manifests) {
        let resource = Value::deserialize(document)?;
        if resource["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let name = resource["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let container = &resource["spec"]["template"]["spec"]["containers"][0];
        let command = container["args"][0].as_str().unwrap_or_default();
        anyhow::ensure!(known.contains(command), "{name} runs `bookstore {command}`");
        let ready = container["readinessProbe"]["httpGet"]["path"].as_str();
        let live = container["livenessProbe"]["httpGet"]["path"].as_str();
        anyhow::ensure!(
            ready == Some("/health/ready"),
            "{name} readiness: {ready:?}"
        );
        anyhow::ensure!(live == Some("/health/live"), "{name} liveness: {live:?}");
        let resources = &container["resources"];
        anyhow::ensure!(
            resources["requests"]["cpu"].is_string() && resources["limits"]["memory"].is_string(),
            "{name} resources: {resources:?}"
        );
        deployed.insert(name);
    }
    let expected: BTreeSet<String> = ["gateway", "books", "orders", "coordinator", "warehouse"]
        .map(str::to_owned)
        .into();
    anyhow::ensure!(deployed == expected, "deployments: {deployed:?}");
    Ok(())
}

/// What the accounts look like in the catalog: roles with their attributes and settings, database
/// owners and ACLs, and in each database the public schema's ACL and the default privileges.
async fn accounts_snapshot(server: &testkit::TestPostgres) -> anyhow::Result<Vec<String>> {
    let root = sqlx::PgPool::connect(&server.admin_url("postgres")).await?;
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s super=%s createdb=%s createrole=%s repl=%s login=%s config=%s', \
         rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin, rolconfig) \
         FROM pg_roles WHERE rolname IN ('books','orders','coordinator','warehouse','warehouse_reader') \
         UNION ALL SELECT format('%s owner=%s acl=%s', datname, pg_get_userbyid(datdba), datacl) \
         FROM pg_database WHERE datname IN ('books','orders','coordinator','warehouse') ORDER BY 1",
    )
    .fetch_all(&root)
    .await?;
    root.close().await;
    for database in ["books", "orders"] {
        let pool = sqlx::PgPool::connect(&server.admin_url(database)).await?;
        let more: Vec<String> = sqlx::query_scalar(
            "SELECT format('public acl=%s', nspacl) FROM pg_namespace WHERE nspname = 'public' \
             UNION ALL SELECT format('default %s acl=%s', defaclrole::regrole, defaclacl) \
             FROM pg_default_acl ORDER BY 1",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        rows.extend(more.into_iter().map(|row| format!("{database}: {row}")));
    }
    Ok(rows)
}

/// The compose stack's `deploy/postgres/accounts.sql` (run by psql) leaves a server exactly as
/// `stack::accounts` does from `accounts.toml`, and applying it twice changes nothing.
#[tokio::test]
async fn deploy_the_accounts_sql_matches_the_accounts_file() -> anyhow::Result<()> {
    let by_sql = testkit::TestPostgres::start().await?;
    let mut args = vec![by_sql.admin_url("postgres"), "-q".into()];
    args.extend(["-v".into(), "ON_ERROR_STOP=1".into()]);
    for role in [
        "books",
        "orders",
        "coordinator",
        "warehouse",
        "warehouse_reader",
    ] {
        let password = testkit::postgres::role_password(role);
        args.extend(["-v".into(), format!("{role}_password={password}")]);
    }
    args.extend(["-f".into(), "deploy/postgres/accounts.sql".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for _ in 0..2 {
        let Some(output) = tool("psql", &args)? else {
            return Ok(());
        };
        succeeded(&output, "psql -f deploy/postgres/accounts.sql")?;
    }
    let by_file = testkit::TestPostgres::start().await?;
    by_file.apply_accounts().await?;
    let (sql, file) = (
        accounts_snapshot(&by_sql).await?,
        accounts_snapshot(&by_file).await?,
    );
    anyhow::ensure!(sql.len() >= 9, "{sql:#?}");
    anyhow::ensure!(
        sql == file,
        "accounts.sql:\n{sql:#?}\naccounts.toml:\n{file:#?}"
    );
    // And the passwords it set work.
    let books = sqlx::PgPool::connect(&by_sql.role_url("books", "books")).await?;
    books.close().await;
    Ok(())
}
