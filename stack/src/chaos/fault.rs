//! Injecting a scenario's fault and undoing it.

use std::path::Path;
use std::time::Duration;

use crate::state::{ProcessInfo, State};

use super::launch::{self, Frozen, Launch, Until};
use super::restart::{self, Request};
use super::scenario::Scenario;

/// A fault in place, holding what it takes to undo it.
pub enum Injected {
    None,
    Killed(Launch),
    Frozen(Frozen),
    KilledRedis {
        info: ProcessInfo,
        appendfsync: String,
    },
    /// The victim runs again under a skewed clock (`now` is its entry); undoing restarts it with
    /// the real one.
    Skewed {
        launch: Launch,
        now: ProcessInfo,
    },
    /// A fault of the PostgreSQL cluster (victims chosen from its topology).
    Database(super::database::Fault),
}

/// The victim's current entry (`up` records restarts in `state.json`).
fn find(dir: &Path, name: &str) -> anyhow::Result<ProcessInfo> {
    let state = State::read(dir)?.ok_or_else(|| anyhow::anyhow!("the platform stopped"))?;
    state
        .processes
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the platform has no process {name} (started with fewer instances or Redis nodes?)"
            )
        })
}

pub async fn inject(dir: &Path, scenario: Scenario) -> anyhow::Result<Injected> {
    if scenario.needs_cluster() {
        return Ok(Injected::Database(
            super::database::inject(dir, scenario).await?,
        ));
    }
    let Some(victim) = scenario.victim() else {
        return Ok(Injected::None);
    };
    let info = find(dir, victim)?;
    if scenario == Scenario::FreezeInstance {
        return Ok(Injected::Frozen(Frozen::freeze(info.pid)?));
    }
    if scenario == Scenario::KillRedis {
        let addr = info.url.trim_start_matches("redis://").to_owned();
        let appendfsync = launch::redis_appendfsync(&addr)
            .await
            .unwrap_or_else(|| crate::redis::DEFAULT_APPENDFSYNC.to_owned());
        launch::kill_and_wait(info.pid).await?;
        return Ok(Injected::KilledRedis { info, appendfsync });
    }
    let launch = Launch::capture(&info)?;
    if let Some(offset) = scenario.skew() {
        // The restart only carries the skew in; it is not the fault, so it is graceful. The
        // instance must notice its clock and keep itself out of rotation (docs/CLUSTER.md, "Clocks").
        launch::terminate_and_wait(info.pid).await?;
        let now = launch
            .respawn_until(dir, &faketime_env(offset)?, Until::NotReadyBecause("clock"))
            .await?;
        return Ok(Injected::Skewed { launch, now });
    }
    launch::kill_and_wait(info.pid).await?;
    Ok(Injected::Killed(launch))
}

/// Undoes the fault; notes on how recovery went, with when (since undoing began) — database
/// faults report their stages.
pub async fn restore(
    dir: &Path,
    injected: Injected,
    password: &str,
) -> anyhow::Result<Vec<(Duration, String)>> {
    if let Injected::Database(fault) = injected {
        return super::database::restore(dir, fault, password).await;
    }
    restore_process(dir, injected).await.map(|()| Vec::new())
}

async fn restore_process(dir: &Path, injected: Injected) -> anyhow::Result<()> {
    match injected {
        Injected::None | Injected::Database(_) => Ok(()),
        Injected::Frozen(frozen) => frozen.thaw(),
        Injected::Killed(launch) => launch.respawn(dir, &[]).await.map(drop),
        Injected::Skewed { launch, now } => {
            launch::terminate_and_wait(now.pid).await?;
            // Restarted from the first launch: the skewed one's pid is the one to see replaced.
            let launch = Launch {
                info: now,
                ..launch
            };
            launch.respawn(dir, &[]).await.map(drop)
        }
        Injected::KilledRedis { info, appendfsync } => {
            restart_redis(dir, &info, &appendfsync).await
        }
    }
}

/// On its old port and append-only file, with its old `appendfsync`, like `up` started it.
async fn restart_redis(dir: &Path, info: &ProcessInfo, appendfsync: &str) -> anyhow::Result<()> {
    let port: u16 = info
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {}", info.url))?;
    let data = std::fs::canonicalize(
        dir.join("redis")
            .join(info.name.trim_start_matches("redis-")),
    )?;
    let request = Request {
        name: info.name.clone(),
        program: crate::redis::locate()?,
        args: crate::redis::server_args(&data, port, appendfsync),
        env: Vec::new(),
    };
    restart::ask(dir, &request)?;
    restart::wait_restarted(dir, &info.name, info.pid, Duration::from_secs(60)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !crate::redis::ping(port).await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} did not answer PING within 30 s",
            info.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// libfaketime preloaded with a fixed offset for the wall clock only: `FAKETIME_DONT_FAKE_MONOTONIC`
/// keeps the monotonic clock (timers, timeouts, breaker windows) real, as on a host whose wall
/// clock is off.
fn faketime_env(offset: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let library = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .ok_or_else(|| {
        anyhow::anyhow!(
            "libfaketime is not installed: run scripts/setup.sh (apt-get install faketime)"
        )
    })?;
    Ok(vec![
        ("LD_PRELOAD", library.to_owned()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ])
}
