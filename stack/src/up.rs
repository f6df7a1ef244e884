//! `bookstore up`: PostgreSQL, the registry, two books and two orders instances, the gateway,
//! Prometheus and Alertmanager on loopback, with progress, until Ctrl-C or SIGTERM stops everything in reverse order.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::os_user::{self, RunAs};
use crate::postgres::{self, PgBinaries, PgServer, PgSettings, StartOptions};
use crate::process::{ChildSpec, Supervised};
use crate::state::{ADMIN_EMAIL, ProcessInfo, Secrets, State};
use crate::{demo, ports};

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where data, logs and state live.
    #[arg(long, default_value = ".bookstore", env = "BOOKSTORE_DIR")]
    pub dir: PathBuf,
    /// The gateway's port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
    /// The registry's port (0 picks a free one).
    #[arg(long, default_value_t = 8500)]
    pub registry_port: u16,
    /// Instances of each service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub instances: u16,
    /// Redis nodes of the cache ring (0: no cache, books read the database only).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=8))]
    pub redis_nodes: u16,
    /// The Redis AOF fsync policy: `everysec` (a crashed redis-server loses nothing it
    /// acknowledged; a crashed machine up to ~2 s) or `always` (nothing, slower). See docs/CACHE.md.
    #[arg(long, default_value = crate::redis::DEFAULT_APPENDFSYNC, value_parser = ["always", "everysec", "no"])]
    pub redis_appendfsync: String,
    /// PostgreSQL members: 1 runs a single plain server; more run a Patroni cluster (one primary,
    /// the rest streaming replicas, the last of them passive) with etcd. See docs/CLUSTER.md.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub pg_nodes: u16,
    /// Do not load demo data into an empty catalog.
    #[arg(long, env = "BOOKSTORE_NO_DEMO")]
    pub no_demo: bool,
    #[command(flatten)]
    pub monitoring: crate::monitoring::MonitoringArgs,
    /// Print nothing but errors (progress is also hidden when not on a terminal or under CI).
    #[arg(long)]
    pub quiet: bool,
}

/// Everything started so far, so that a failure or a signal at any point stops exactly that.
struct Running {
    dir: PathBuf,
    postgres: Option<PgServer>,
    cluster: Option<crate::cluster::Cluster>,
    /// In start order; stopped in reverse.
    children: Vec<(ProcessInfo, Supervised)>,
    state: State,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let progress = progress_bar(args.quiet);
    let dir = prepare_dir(&args.dir)?;
    let _lock = lock_dir(&dir)?;
    preflight(&args)?;
    let mut running = Running {
        dir: dir.clone(),
        postgres: None,
        cluster: None,
        children: Vec::new(),
        state: State {
            up_pid: std::process::id(),
            ..State::default()
        },
    };
    let signal = platform::shutdown::wait_for_signal();
    tokio::pin!(signal);
    let started = tokio::select! {
        result = start(&args, &mut running, &progress) => result,
        _ = &mut signal => Err(anyhow::anyhow!("interrupted during start-up")),
    };
    progress.finish_and_clear();
    let code = match started {
        Ok(()) => {
            if !args.quiet {
                print_summary(&running.state, &dir);
            }
            supervise(&mut running, &mut signal).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bookstore: {e:#}");
            ExitCode::FAILURE
        }
    };
    shutdown(running, args.quiet).await;
    Ok(code)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    let hidden = quiet
        || std::env::var_os("CI").is_some()
        || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::new(5);
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    for sub in ["logs", "run", "pg", "redis"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    Ok(std::fs::canonicalize(dir)?)
}

/// One `up` per directory: a second one would fight the first over the same data.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::create(dir.join("up.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => anyhow::bail!(
            "the platform is already running from {}: use `bookstore status` to see it or `bookstore down` to stop it",
            dir.display()
        ),
    }
}

fn preflight(args: &UpArgs) -> anyhow::Result<()> {
    PgBinaries::locate()?;
    if args.redis_nodes > 0 {
        crate::redis::locate()?;
    }
    os_user::server_user()?;
    if args.pg_nodes > 1 {
        crate::cluster::etcd::locate()?;
        crate::cluster::patroni::locate()?;
    }
    crate::monitoring::locate(&args.monitoring)?;
    for (port, what, flag) in [
        (args.gateway_port, "gateway", "--gateway-port"),
        (args.registry_port, "registry", "--registry-port"),
    ] {
        anyhow::ensure!(
            port == 0 || ports::is_free(port),
            "port {port} (for the {what}) is already in use: stop whatever listens there or pass {flag} <free port>"
        );
    }
    Ok(())
}

async fn start(args: &UpArgs, running: &mut Running, progress: &ProgressBar) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the bookstore executable")?;
    let secrets = Secrets::load_or_create(&running.dir)?;
    // PostgreSQL (initdb, start, accounts: most of a start), the cache nodes and the registry need
    // none of each other, so they start together; the services need all three.
    step(
        progress,
        "starting PostgreSQL, the Redis cache nodes and the registry",
    );
    let dir = running.dir.clone();
    let database = async {
        if args.pg_nodes > 1 {
            start_cluster(args, running, &secrets, progress).await
        } else {
            start_postgres(running, &secrets).await
        }
    };
    let registry_component = Component {
        name: "discovery".into(),
        kind: "discovery",
        env: vec![(
            "BOOKSTORE_HTTP__LISTEN",
            format!("127.0.0.1:{}", args.registry_port),
        )],
    };
    let (database, (redis, cache_nodes), (discovery, registry)) = tokio::join!(
        database,
        start_redis(args, &dir),
        launch_all(&dir, &exe, vec![registry_component]),
    );
    record(running, redis.into_iter().chain(discovery))?;
    database?;
    let cache_nodes = cache_nodes?;
    let registry = registry?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the registry was not started"))?;
    let db_hosts = match &running.state.cluster {
        Some(cluster) => cluster.hosts(),
        None => format!("127.0.0.1:{}", running.state.postgres_port),
    };
    running.state.registry_url = registry.clone();
    running.state.write(&running.dir)?;
    step(progress, "starting books, orders and coordinator instances");
    let services = [
        (
            "coordinator",
            format!(
                "postgres://coordinator:{}@{db_hosts}/coordinator",
                secrets.coordinator_db
            ),
        ),
        (
            "books",
            format!("postgres://books:{}@{db_hosts}/books", secrets.books_db),
        ),
        (
            "orders",
            format!("postgres://orders:{}@{db_hosts}/orders", secrets.orders_db),
        ),
    ];
    let auth_env = secrets.auth_env();
    let mut components = Vec::new();
    for (kind, db_url) in &services {
        for n in 1..=args.instances {
            let mut env = vec![
                ("BOOKSTORE_HTTP__LISTEN", "127.0.0.1:0".to_string()),
                ("BOOKSTORE_DB__URL", db_url.clone()),
                ("BOOKSTORE_REGISTRY__URL", registry.clone()),
            ];
            env.extend(auth_env.iter().cloned());
            if *kind == "books" && !cache_nodes.is_empty() {
                env.push(("BOOKSTORE_CACHE__NODES", cache_nodes_setting(&cache_nodes)));
            }
            components.push(Component {
                name: format!("{kind}-{n}"),
                kind,
                env,
            });
        }
    }
    components.push(warehouse(&registry, &secrets, &db_hosts));
    // None of them needs another at start-up (each finds its peers through the registry when it
    // calls them, and migrations take a lock), so they start together: on two cores that is
    // about half the time of one after another.
    spawn_all(running, &exe, components).await?;
    step(progress, "starting the gateway");
    let mut gateway_env = vec![
        (
            "BOOKSTORE_HTTP__LISTEN",
            format!("127.0.0.1:{}", args.gateway_port),
        ),
        ("BOOKSTORE_REGISTRY__URL", registry.clone()),
    ];
    gateway_env.extend(auth_env);
    let gateway = spawn(running, &exe, "gateway", "gateway", &gateway_env).await?;
    running.state.gateway_url = gateway.clone();
    step(progress, "starting Prometheus and Alertmanager");
    start_monitoring(args, running, &registry, &gateway).await?;
    step(progress, "checking demo data");
    let admin = demo::Admin {
        email: ADMIN_EMAIL,
        password: &secrets.admin_password,
    };
    if !args.no_demo && demo::load_if_empty(&gateway, &admin, progress).await? {
        tracing::info!("demo data loaded");
    }
    running.state.ready = true;
    running.state.write(&running.dir)
}

/// The warehouse process (the scheduled ETL and the reports; see docs/WAREHOUSE.md). Its database
/// and the read-only `warehouse_reader` role it extracts with come from the shipped accounts.
fn warehouse(registry: &str, secrets: &Secrets, db_hosts: &str) -> Component {
    let url = |role: &str, database: &str| {
        format!(
            "postgres://{role}:{}@{db_hosts}/{database}",
            secrets.password_for(role)
        )
    };
    let mut env = vec![
        ("BOOKSTORE_DB__URL", url("warehouse", "warehouse")),
        (
            "BOOKSTORE_SOURCES__BOOKS__URL",
            url("warehouse_reader", "books"),
        ),
        (
            "BOOKSTORE_SOURCES__ORDERS__URL",
            url("warehouse_reader", "orders"),
        ),
        ("BOOKSTORE_HTTP__LISTEN", "127.0.0.1:0".to_string()),
        ("BOOKSTORE_REGISTRY__URL", registry.to_string()),
    ];
    env.extend(secrets.auth_env());
    Component {
        name: "warehouse".into(),
        kind: "warehouse",
        env,
    }
}

async fn start_monitoring(
    args: &UpArgs,
    running: &mut Running,
    registry_url: &str,
    gateway_url: &str,
) -> anyhow::Result<()> {
    let Some(binaries) = crate::monitoring::locate(&args.monitoring)? else {
        return Ok(());
    };
    let targets = crate::monitoring::Targets {
        registry_url,
        gateway_url,
    };
    let before = running.children.len();
    let result = crate::monitoring::start(
        &args.monitoring,
        &binaries,
        &running.dir,
        &targets,
        &mut running.children,
    )
    .await;
    let infos = running.children[before..]
        .iter()
        .map(|(info, _)| info.clone());
    running.state.processes.extend(infos);
    result?;
    running.state.write(&running.dir)
}

fn step(progress: &ProgressBar, message: &'static str) {
    progress.inc(1);
    progress.set_message(message);
}

async fn start_postgres(running: &mut Running, secrets: &Secrets) -> anyhow::Result<()> {
    let bins = PgBinaries::locate()?;
    let run_as: Option<RunAs> = os_user::server_user()?;
    let dir = &running.dir;
    let data_dir = dir.join("pg/data");
    os_user::make_reachable(dir, run_as)?;
    os_user::hand_over(&dir.join("pg"), run_as)?;
    if !data_dir.join("PG_VERSION").is_file() {
        postgres::init_cluster(&bins, &data_dir, &secrets.postgres_superuser, run_as).await?;
    }
    crate::cluster::stop_leftover_postmaster(&data_dir).await;
    let previous = State::read(dir).ok().flatten().map(|s| s.postgres_port);
    let port = match previous {
        Some(port) if port != 0 && ports::is_free(port) => port,
        _ => ports::free_port()?,
    };
    let log_file = dir.join("logs/postgres.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)?;
    os_user::hand_over(&log_file, run_as)?;
    let options = StartOptions {
        data_dir,
        socket_dir: dir.join("pg/run"),
        log_file: log_file.clone(),
        port,
        superuser_password: secrets.postgres_superuser.clone(),
        run_as,
        settings: PgSettings::default(),
        on_parent_death: nix::sys::signal::Signal::SIGINT,
    };
    let server = postgres::start(&bins, &options).await?;
    let accounts = crate::accounts::Accounts::shipped()?;
    server
        .apply_accounts(&accounts, |role| secrets.password_for(role))
        .await?;
    running.state.postgres_port = port;
    running.state.processes.push(ProcessInfo {
        name: "postgres".into(),
        kind: "postgres".into(),
        pid: server.pid().unwrap_or(0),
        url: format!("postgres://127.0.0.1:{port}"),
        log: log_file,
    });
    running.postgres = Some(server);
    running.state.write(dir)
}

/// Starts the cache ring's Redis nodes (`redis/<n>/` holds each one's AOF) and empties their cache
/// database, so the platform never starts on entries an earlier run may have left stale; the
/// ratings stream's database is kept. Returns the nodes' addresses in ring order.
async fn start_redis(args: &UpArgs, dir: &Path) -> (Started, anyhow::Result<Vec<String>>) {
    let mut started = Vec::new();
    let nodes = start_redis_nodes(args, dir, &mut started).await;
    (started, nodes)
}

/// [`start_redis`]'s work: each node goes into `started` once it is up and emptied, so a failure
/// part-way still hands back the nodes before it to be stopped.
async fn start_redis_nodes(
    args: &UpArgs,
    dir: &Path,
    started: &mut Started,
) -> anyhow::Result<Vec<String>> {
    if args.redis_nodes == 0 {
        return Ok(Vec::new());
    }
    let binary = crate::redis::locate()?;
    let cache = platform::cache::CacheConfig::default();
    let mut nodes = Vec::new();
    for n in 1..=args.redis_nodes {
        let name = format!("redis-{n}");
        let log = log_of(dir, &name);
        let options = crate::redis::RedisOptions {
            name: name.clone(),
            dir: dir.join("redis").join(n.to_string()),
            log_file: log.clone(),
            port: 0,
            appendfsync: args.redis_appendfsync.clone(),
            on_parent_death: nix::sys::signal::Signal::SIGTERM,
        };
        let server = crate::redis::start(&binary, &options).await?;
        let addr = server.addr();
        platform::cache::flush_node(&addr, cache.database, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot empty the cache database of {name} ({addr})"))?;
        let info = ProcessInfo {
            name,
            kind: "redis".into(),
            pid: server.process.pid().unwrap_or(0),
            url: format!("redis://{addr}"),
            log,
        };
        started.push((info, server.process));
        nodes.push(addr);
    }
    Ok(nodes)
}

/// The node list as a figment environment value: a TOML array of strings.
fn cache_nodes_setting(nodes: &[String]) -> String {
    let quoted: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(","))
}

/// The Patroni cluster instead of the single server; its members appear in `status` like processes.
async fn start_cluster(
    args: &UpArgs,
    running: &mut Running,
    secrets: &Secrets,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let on_step = |message: &str| progress.set_message(format!("PostgreSQL cluster: {message}"));
    let (cluster, info) =
        crate::cluster::launch::start_for_up(&running.dir, args.pg_nodes.into(), secrets, &on_step)
            .await?;
    running.state.postgres_port = info.members[0].pg_port;
    running
        .state
        .processes
        .extend(cluster.processes(&running.dir));
    running.state.cluster = Some(info);
    running.cluster = Some(cluster);
    running.state.write(&running.dir)
}

/// One of our own processes to start: `bookstore <kind>` named `name`, with its environment.
struct Component {
    name: String,
    kind: &'static str,
    env: Vec<(&'static str, String)>,
}

/// Starts one component, waits for its address and readiness, and records it. Returns its base URL.
async fn spawn(
    running: &mut Running,
    exe: &Path,
    name: &str,
    kind: &'static str,
    env: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let component = Component {
        name: name.into(),
        kind,
        env: env.to_vec(),
    };
    let mut urls = spawn_all(running, exe, vec![component]).await?;
    urls.pop()
        .ok_or_else(|| anyhow::anyhow!("{name} was not started"))
}

/// Processes started by a step that ran beside others, not yet recorded in [`Running`] (see
/// [`record`]); dropped unrecorded, they are killed.
type Started = Vec<(ProcessInfo, Supervised)>;

/// Starts the components together, waits until every one has its address and is ready, and
/// records them in the given order (so `status`, the state file and the stop order do not depend
/// on which was ready first). Returns their base URLs in that order; the first failure, once all
/// are recorded (a failed start's process is stopped with the rest).
async fn spawn_all(
    running: &mut Running,
    exe: &Path,
    components: Vec<Component>,
) -> anyhow::Result<Vec<String>> {
    let (started, urls) = launch_all(&running.dir, exe, components).await;
    record(running, started)?;
    urls
}

/// [`spawn_all`] without recording: every process it started (even after a failure), and the
/// components' URLs or the first failure.
async fn launch_all(
    dir: &Path,
    exe: &Path,
    components: Vec<Component>,
) -> (Started, anyhow::Result<Vec<String>>) {
    let mut launched = Vec::new();
    let mut failure = None;
    for component in &components {
        match launch(dir, exe, component) {
            Ok(child) => launched.push((component, child)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let results = futures::future::join_all(
        launched
            .iter_mut()
            .map(|(component, child)| until_ready(dir, &component.name, child)),
    )
    .await;
    let mut started = Vec::new();
    let mut urls = Vec::new();
    for ((component, child), result) in launched.into_iter().zip(results) {
        let info = ProcessInfo {
            name: component.name.clone(),
            kind: component.kind.into(),
            pid: child.pid().unwrap_or(0),
            url: result.as_ref().map(Clone::clone).unwrap_or_default(),
            log: log_of(dir, &component.name),
        };
        started.push((info, child));
        match result {
            Ok(url) => urls.push(url),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => (started, Err(e)),
        None => (started, Ok(urls)),
    }
}

/// Adds started processes to what `up` stops and to the state file, in the order given.
fn record(
    running: &mut Running,
    started: impl IntoIterator<Item = (ProcessInfo, Supervised)>,
) -> anyhow::Result<()> {
    for (info, child) in started {
        running.state.processes.push(info.clone());
        running.children.push((info, child));
    }
    running.state.write(&running.dir)
}

fn log_of(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

fn port_file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join("run").join(format!("{name}.addr"))
}

/// Spawns the component's process; it writes its bound address to its port file once listening.
fn launch(dir: &Path, exe: &Path, component: &Component) -> anyhow::Result<Supervised> {
    let port_file = port_file_of(dir, &component.name);
    let _ = std::fs::remove_file(&port_file);
    let mut spec = ChildSpec::new(&component.name, exe, log_of(dir, &component.name))
        .args([component.kind])
        .env("BOOKSTORE_HTTP__PORT_FILE", port_file.display().to_string());
    for (key, value) in &component.env {
        spec = spec.env(*key, value.clone());
    }
    for (key, value) in component_overrides(component.kind, std::env::vars()) {
        spec = spec.env(key, value);
    }
    Supervised::spawn(&spec)
}

/// Waits for a launched component's address, then for its `/health/ready`; its base URL.
async fn until_ready(dir: &Path, name: &str, child: &mut Supervised) -> anyhow::Result<String> {
    let addr = child
        .wait_for_port_file(&port_file_of(dir, name), Duration::from_secs(30))
        .await?;
    let url = format!("http://{addr}");
    child
        .wait_until_ready(&format!("{url}/health/ready"), Duration::from_secs(60))
        .await?;
    Ok(url)
}

/// Settings for one kind of component, given to `up` as `BOOKSTORE_<KIND>__<SETTING>=value` and
/// passed to every process of that kind as `BOOKSTORE_<SETTING>=value` — e.g.
/// `BOOKSTORE_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND=500` or
/// `BOOKSTORE_BOOKS__HTTP__FAULTS__ERROR_RATE=0.1`. They win over what `up` sets itself.
pub fn component_overrides(
    kind: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let prefix = format!("BOOKSTORE_{}__", kind.to_ascii_uppercase());
    vars.filter_map(|(key, value)| {
        let rest = key.strip_prefix(&prefix)?;
        (!rest.is_empty()).then(|| (format!("BOOKSTORE_{rest}"), value))
    })
    .collect()
}

fn print_summary(state: &State, dir: &Path) {
    println!("The bookstore platform is up.");
    println!("  gateway   {}/api/books", state.gateway_url);
    println!("  registry  {}/v1/catalog/services", state.registry_url);
    match &state.cluster {
        Some(cluster) => println!("  database  {} (Patroni cluster)", cluster.hosts()),
        None => println!("  database  127.0.0.1:{}", state.postgres_port),
    }
    for process in &state.processes {
        match process.kind.as_str() {
            "prometheus" => println!("  metrics   {}/targets (Prometheus)", process.url),
            "alertmanager" => println!("  alerts    {}/#/alerts (Alertmanager)", process.url),
            _ => {}
        }
    }
    println!("  logs      {}/", dir.join("logs").display());
    println!(
        "  status    bookstore status --dir {}   stop: Ctrl-C",
        dir.display()
    );
    println!(
        "  admin     {ADMIN_EMAIL}, password in {} (\"admin_password\")",
        Secrets::path(dir).display()
    );
    println!(
        "  demo login: {} / {}   (POST /api/auth/token)",
        demo::CUSTOMERS[0].0,
        demo::DEMO_PASSWORD
    );
}

/// Runs until a signal; a child that exits is reported once and left down (no restart loop that
/// would hide a crash) unless a restart is asked for (`bookstore chaos`, see chaos/restart.rs).
async fn supervise(
    running: &mut Running,
    signal: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let mut reported = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = signal.as_mut() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // `bookstore chaos` asks for what it killed to be started again, as our child.
        let restarted = crate::chaos::restart::serve(
            &running.dir,
            &mut running.children,
            running.cluster.as_mut(),
            &mut running.state,
        );
        for name in restarted.await {
            reported.remove(&name);
        }
        for (info, child) in &mut running.children {
            if let Some(status) = child.exited()
                && reported.insert(info.name.clone())
            {
                eprintln!(
                    "bookstore: {} exited ({status}); see {}",
                    info.name,
                    info.log.display()
                );
            }
        }
    }
}

/// When `up` stops a child of `kind`, lowest first; a tier's children stop together. The front door
/// and its monitors go first, so no new request comes in; then every service at once — each
/// deregisters and keeps serving for `drain_after_deregister_ms` before it stops, and they started
/// together and need none of the others to stop, so their drains overlap instead of adding up
/// (one kind after another, those waits were most of the time `up` took to stop); then the
/// registry, then the cache nodes.
fn stop_tier(kind: &str) -> u8 {
    match kind {
        "gateway" | "prometheus" | "alertmanager" => 0,
        "discovery" => 2,
        "redis" => 3,
        _ => 1,
    }
}

/// Stops the children tier by tier (see [`stop_tier`]), then PostgreSQL, last.
async fn shutdown(mut running: Running, quiet: bool) {
    if !quiet {
        eprintln!("bookstore: stopping…");
    }
    let children = std::mem::take(&mut running.children);
    let last_tier = children.iter().map(|(info, _)| stop_tier(&info.kind)).max();
    let mut tiers: Vec<Vec<_>> = (0..=last_tier.unwrap_or(0)).map(|_| Vec::new()).collect();
    for child in children {
        tiers[usize::from(stop_tier(&child.0.kind))].push(child);
    }
    for tier in tiers {
        futures::future::join_all(tier.into_iter().map(|(info, mut child)| async move {
            if let Err(e) = child.stop(Duration::from_secs(15)).await {
                eprintln!("bookstore: stopping {}: {e:#}", info.name);
            }
        }))
        .await;
    }
    if let Some(pg) = running.postgres.take()
        && let Err(e) = pg.stop().await
    {
        eprintln!("bookstore: stopping PostgreSQL: {e:#}");
    }
    if let Some(cluster) = running.cluster.take()
        && let Err(e) = cluster.stop().await
    {
        eprintln!("bookstore: stopping the PostgreSQL cluster: {e:#}");
    }
    State::remove(&running.dir);
    if !quiet {
        eprintln!("bookstore: stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::{component_overrides, stop_tier};

    #[test]
    fn the_front_door_stops_first_then_every_service_together_then_the_registry_and_cache() {
        let kinds = [
            "gateway",
            "prometheus",
            "alertmanager",
            "books",
            "orders",
            "coordinator",
            "warehouse",
            "discovery",
            "redis",
        ];
        assert_eq!(kinds.map(stop_tier), [0, 0, 0, 1, 1, 1, 1, 2, 3]);
    }

    #[test]
    fn settings_for_one_kind_reach_only_that_kind_without_its_prefix() {
        let vars = [
            ("BOOKSTORE_GATEWAY__RATE_LIMIT__BURST", "5"),
            ("BOOKSTORE_BOOKS__HTTP__FAULTS__ERROR_RATE", "0.5"),
            ("BOOKSTORE_GATEWAY__", "ignored"),
            ("BOOKSTORE_DIR", "/tmp/x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            component_overrides("gateway", vars.clone().into_iter()),
            vec![("BOOKSTORE_RATE_LIMIT__BURST".to_string(), "5".to_string())]
        );
        assert_eq!(
            component_overrides("books", vars.into_iter()),
            vec![(
                "BOOKSTORE_HTTP__FAULTS__ERROR_RATE".to_string(),
                "0.5".to_string()
            )]
        );
    }
}
