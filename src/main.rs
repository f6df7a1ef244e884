//! `bookstore`: one binary for every component of the platform and for the operator commands.
//! It only parses the command line and hands over to the component's library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bookstore",
    version,
    about = "The bookstore platform: every component and the commands to run them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole platform on loopback (PostgreSQL, registry, services, gateway) and supervise it.
    Up(stack::up::UpArgs),
    /// Show every process of a running platform with its health.
    Status(stack::status::StatusArgs),
    /// Stop a platform started by `bookstore up` in the background.
    Down(stack::status::DownArgs),
    /// Send a weighted mix of shop requests to a running platform and report latency and errors.
    Loadgen(stack::chaos::LoadgenArgs),
    /// Break a running platform under load (kill, freeze, skew…) and check its invariants.
    Chaos(stack::chaos::ChaosArgs),
    /// Run the API gateway.
    Gateway(ComponentArgs),
    /// Run the service registry (a Consul HTTP API subset).
    Discovery(ComponentArgs),
    /// Run a books service instance.
    Books(ComponentArgs),
    /// Run an orders service instance.
    Orders(ComponentArgs),
    /// Run a transaction coordinator instance (two-phase commit and sagas for checkout).
    Coordinator(ComponentArgs),
    /// Back up databases from a paused replica of a cluster (multi-host URL), with a manifest.
    Backup(backup::BackupArgs),
    /// Restore a backup into a new database or a scratch server; --verify compares it with the source.
    Restore(backup::RestoreArgs),
    /// Run the data warehouse (scheduled ETL + reports API), or `warehouse load` for one load now.
    Warehouse(WarehouseArgs),
    /// Apply the database accounts (deploy/postgres/accounts.toml) to a server or cluster.
    Accounts(stack::accounts_cli::AccountsArgs),
}

#[derive(clap::Args)]
struct WarehouseArgs {
    #[command(flatten)]
    component: ComponentArgs,
    #[command(subcommand)]
    action: Option<WarehouseAction>,
}

#[derive(Subcommand)]
enum WarehouseAction {
    /// Run one load now, with progress, and exit (non-zero if it failed).
    Load {
        /// Read every source row instead of the rows committed since the last successful run.
        #[arg(long)]
        full: bool,
    },
}

#[derive(clap::Args)]
struct ComponentArgs {
    /// A TOML config file; environment variables `BOOKSTORE_<SECTION>__<FIELD>` override it.
    #[arg(long, env = "BOOKSTORE_CONFIG")]
    config: Option<PathBuf>,
}

/// A service's own config plus where to register it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct Registered<T> {
    #[serde(flatten)]
    service: T,
    registry: discovery::client::RegistryConfig,
    /// After deregistering on shutdown, how long to keep serving so that watchers (the gateway)
    /// stop routing here before the listener closes.
    drain_after_deregister_ms: u64,
}

impl<T: Default> Default for Registered<T> {
    fn default() -> Self {
        Registered {
            service: T::default(),
            registry: discovery::client::RegistryConfig::default(),
            drain_after_deregister_ms: 500,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// One clear sentence (with its causes), never a backtrace.
fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("bookstore: {err:#}");
    ExitCode::FAILURE
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => stack::up::run(args).await,
        Command::Status(args) => stack::status::run(args).await,
        Command::Down(args) => stack::status::down(args).await,
        Command::Loadgen(args) => stack::chaos::loadgen(args).await,
        Command::Chaos(args) => stack::chaos::chaos(args).await,
        Command::Gateway(args) => component("gateway", args, run_gateway).await,
        Command::Discovery(args) => component("discovery", args, run_discovery).await,
        Command::Books(args) => component("books", args, run_books).await,
        Command::Orders(args) => component("orders", args, run_orders).await,
        Command::Coordinator(args) => component("coordinator", args, run_coordinator).await,
        Command::Backup(args) => backup::backup::run(args).await,
        Command::Restore(args) => backup::restore::run(args).await,
        Command::Accounts(args) => stack::accounts_cli::run(args).await,
        Command::Warehouse(WarehouseArgs {
            component: args,
            action: Some(WarehouseAction::Load { full }),
        }) => warehouse::cli::load(args.config.as_deref(), full).await,
        Command::Warehouse(args) => component("warehouse", args.component, run_warehouse).await,
    }
}

async fn component<F, Fut>(name: &str, args: ComponentArgs, body: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Option<PathBuf>, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    platform::telemetry::init_service(name, args.config.as_deref());
    platform::metrics::install(name);
    let shutdown = platform::shutdown::on_signal();
    let result = body(args.config, shutdown).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "{name} stopped with an error");
    }
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_gateway(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config: gateway::Config = platform::config::load(file.as_deref())?;
    // Refuse to start without a usable signing key, whether or not the auth layer is wired yet.
    config.auth.validate()?;
    let app = gateway::Application::build(config, shutdown.clone()).await?;
    tracing::info!(addr = %app.local_addr(), "gateway listening");
    app.run_until_stopped(shutdown).await
}

async fn run_discovery(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config: discovery::server::Config = platform::config::load(file.as_deref())?;
    discovery::server::run(config, shutdown).await
}

async fn run_books(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config: Registered<books::Config> = platform::config::load(file.as_deref())?;
    serve_component("books", config, books::Application::build, shutdown).await
}

async fn run_orders(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut config: Registered<orders::Config> = platform::config::load(file.as_deref())?;
    // Checkout finds books and the coordinator through the same registry the instance joins.
    config.service.checkout.registry = Some(config.registry.clone());
    serve_component("orders", config, orders::Application::build, shutdown).await
}

async fn run_coordinator(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut config: Registered<coordinator::Config> = platform::config::load(file.as_deref())?;
    // `registry` is read once, by the wrapper: the coordinator finds participants where it registers.
    config.service.registry = config.registry.clone();
    serve_component(
        "coordinator",
        config,
        coordinator::Application::build,
        shutdown,
    )
    .await
}

async fn run_warehouse(file: Option<PathBuf>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config: Registered<warehouse::Config> = platform::config::load(file.as_deref())?;
    serve_component("warehouse", config, warehouse::Application::build, shutdown).await
}

/// A registered component's application, as [`serve_component`] drives it.
trait Serve: Sized {
    fn local_addr(&self) -> std::net::SocketAddr;
    fn serve(
        self,
        stop: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static;
}

/// Each application already has both as inherent methods; this only names them once.
macro_rules! impl_serve {
    ($($app:ty),*) => {$(
        impl Serve for $app {
            fn local_addr(&self) -> std::net::SocketAddr {
                <$app>::local_addr(self)
            }
            fn serve(
                self,
                stop: CancellationToken,
            ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
                <$app>::run_until_stopped(self, stop)
            }
        }
    )*};
}

impl_serve!(
    books::Application,
    orders::Application,
    coordinator::Application,
    warehouse::Application
);

/// Builds the component from its config and serves it while registered ([`serve_registered`]).
async fn serve_component<C, A, Fut>(
    name: &str,
    config: Registered<C>,
    build: impl FnOnce(C) -> Fut,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<A>>,
    A: Serve,
{
    let app = build(config.service).await?;
    let addr = app.local_addr();
    serve_registered(
        name,
        addr,
        config.registry,
        config.drain_after_deregister_ms,
        shutdown,
        |stop| app.serve(stop),
    )
    .await
}

/// Serves while registered. On shutdown the order matters: deregister first, keep serving for
/// `drain_ms` while watchers drop this instance, and only then stop accepting and drain in-flight
/// requests — so a rolling restart fails no request.
async fn serve_registered<F, Fut>(
    name: &str,
    addr: std::net::SocketAddr,
    registry: discovery::client::RegistryConfig,
    drain_ms: u64,
    shutdown: CancellationToken,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop_serving = CancellationToken::new();
    let stop_agent = CancellationToken::new();
    // Refuse before serving: an instance nobody can reach would pass its checks and take no traffic.
    let agent = register(name, addr, registry, stop_agent.clone())?;
    let mut serving = tokio::spawn(serve(stop_serving.clone()));
    let finished_early = tokio::select! {
        result = &mut serving => Some(result),
        _ = shutdown.cancelled() => None,
    };
    stop_agent.cancel();
    let _ = agent.await;
    let result = match finished_early {
        Some(result) => result,
        None => {
            tokio::time::sleep(std::time::Duration::from_millis(drain_ms)).await;
            stop_serving.cancel();
            serving.await
        }
    };
    result.map_err(|e| anyhow::anyhow!("{name} server task failed: {e}"))?
}

/// The instance's own readiness endpoint, as its registry agent reaches it (on this host).
fn ready_url(addr: std::net::SocketAddr) -> String {
    let mut local = addr;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{local}/health/ready")
}

/// Registers the instance under its advertised address (see `discovery::client::advertise`) and
/// keeps it registered until shutdown, when the agent deregisters it (before the listener stops, so
/// the gateway stops sending traffic first).
fn register(
    name: &str,
    addr: std::net::SocketAddr,
    registry: discovery::client::RegistryConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use discovery::client::advertise;
    tracing::info!(%addr, "{name} listening");
    let host = advertise::advertised_host(addr, &registry.advertise_address)?;
    let registration = discovery::client::Registration {
        name: name.to_owned(),
        id: advertise::instance_id(name, &host, addr.port()),
        address: host,
        port: addr.port(),
        tags: Vec::new(),
        meta: Default::default(),
        ready_url: Some(ready_url(addr)),
    };
    Ok(discovery::client::spawn_agent(
        registry,
        registration,
        shutdown,
    ))
}
