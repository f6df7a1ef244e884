//! Restarting a process that chaos killed, *by `bookstore up`*: chaos drops a request (the
//! program, arguments and environment the process was started with) into `run/restart/`, and
//! `up`'s supervision loop starts it as its own child in the dead one's place — so it is stopped in
//! order on shutdown and dies with `up` like every other child. `up` itself still restarts nothing
//! on its own: a crash stays visible.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{ChildSpec, Supervised};
use crate::state::{ProcessInfo, State};

/// What to start in place of the process called `name`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn requests_dir(dir: &Path) -> PathBuf {
    dir.join("run").join("restart")
}

/// Asks `up` to start `request` (written atomically: `up` never reads half a request).
pub fn ask(dir: &Path, request: &Request) -> anyhow::Result<()> {
    let requests = requests_dir(dir);
    std::fs::create_dir_all(&requests)?;
    let tmp = requests.join(format!(".{}.tmp", request.name));
    std::fs::write(&tmp, serde_json::to_vec(request)?)?;
    std::fs::rename(&tmp, requests.join(format!("{}.json", request.name)))?;
    Ok(())
}

/// Waits until `up` has started the process again: `state.json` shows another pid than `old_pid`
/// for `name`. Its entry (pid and URL).
pub async fn wait_restarted(
    dir: &Path,
    name: &str,
    old_pid: u32,
    patience: Duration,
) -> anyhow::Result<ProcessInfo> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(state) = State::read(dir)?
            && let Some(info) = state
                .processes
                .iter()
                .find(|p| p.name == name && p.pid != old_pid && p.pid != 0)
        {
            return Ok(info.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "`bookstore up` did not restart {name} within {patience:?} (is it still running? see its up.log)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Called by `up` on every supervision tick: starts each requested process in the place of its
/// namesake (stopping that one first if it still runs), records it in `state.json`, and returns
/// the names restarted.
pub async fn serve(
    dir: &Path,
    children: &mut [(ProcessInfo, Supervised)],
    mut cluster: Option<&mut crate::cluster::Cluster>,
    state: &mut State,
) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(requests_dir(dir)) else {
        return Vec::new();
    };
    let mut restarted = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let request = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Request>(&bytes).ok());
        let _ = std::fs::remove_file(&path);
        let Some(request) = request else { continue };
        let member = cluster
            .as_deref_mut()
            .and_then(|c| c.members.iter_mut().find(|m| m.spec.name == request.name));
        let started = match member {
            Some(member) => respawn_member(member, &request).await,
            None => start_in_place(children, request).await,
        };
        match started {
            Ok(info) => {
                for p in state.processes.iter_mut().filter(|p| p.name == info.name) {
                    *p = info.clone();
                }
                if let Err(e) = state.write(dir) {
                    eprintln!(
                        "bookstore: cannot record the restart of {}: {e:#}",
                        info.name
                    );
                }
                eprintln!(
                    "bookstore: {} restarted on request (pid {})",
                    info.name, info.pid
                );
                restarted.push(info.name);
            }
            Err(e) => eprintln!("bookstore: restart on request failed: {e:#}"),
        }
    }
    restarted
}

/// A Patroni member whose node was killed: its Patroni is started again on its `patroni.yml`, as
/// the database user, as `up`'s own (it rewinds and rejoins as a replica if another member leads).
async fn respawn_member(
    member: &mut crate::cluster::Member,
    request: &Request,
) -> anyhow::Result<ProcessInfo> {
    member.process.stop(Duration::from_secs(15)).await?;
    crate::cluster::stop_leftover_postmaster(&member.spec.data_dir()).await;
    let started = crate::cluster::patroni::respawn(
        &request.program,
        &member.spec.name,
        &member.spec.dir,
        crate::os_user::server_user()?,
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let info = ProcessInfo {
        name: member.spec.name.clone(),
        kind: "postgres".into(),
        pid: started.pid().unwrap_or(0),
        url: format!("postgres://127.0.0.1:{}", member.spec.pg_port),
        log: member.spec.log_file(),
    };
    member.process = started;
    Ok(info)
}

async fn start_in_place(
    children: &mut [(ProcessInfo, Supervised)],
    request: Request,
) -> anyhow::Result<ProcessInfo> {
    let (info, child) = children
        .iter_mut()
        .find(|(info, _)| info.name == request.name)
        .ok_or_else(|| anyhow::anyhow!("no process named {}", request.name))?;
    child.stop(Duration::from_secs(15)).await?;
    let mut spec =
        ChildSpec::new(&request.name, &request.program, &info.log).args(request.args.clone());
    spec.env = request.env.clone();
    let port_file = request
        .env
        .iter()
        .find(|(k, _)| k == "BOOKSTORE_HTTP__PORT_FILE")
        .map(|(_, v)| PathBuf::from(v));
    if let Some(file) = &port_file {
        let _ = std::fs::remove_file(file);
    }
    let mut started = Supervised::spawn(&spec)?;
    let mut restarted = info.clone();
    restarted.pid = started.pid().unwrap_or(0);
    if let Some(file) = &port_file {
        let addr = started
            .wait_for_port_file(file, Duration::from_secs(30))
            .await?;
        restarted.url = format!("http://{addr}");
    }
    *child = started;
    *info = restarted.clone();
    Ok(restarted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_replaces_the_named_child_and_is_recorded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sleeper.log");
        let spec = ChildSpec::new("sleeper", "/bin/sleep", &log).args(["30"]);
        let old = Supervised::spawn(&spec)?;
        let info = ProcessInfo {
            name: "sleeper".into(),
            kind: "test".into(),
            pid: old.pid().unwrap_or(0),
            url: String::new(),
            log,
        };
        let mut children = vec![(info.clone(), old)];
        let mut state = State {
            processes: vec![info.clone()],
            ..State::default()
        };
        ask(
            dir.path(),
            &Request {
                name: "sleeper".into(),
                program: "/bin/sleep".into(),
                args: vec!["31".into()],
                env: vec![],
            },
        )?;
        let restarted = serve(dir.path(), &mut children, None, &mut state).await;
        assert_eq!(restarted, ["sleeper"]);
        let new_pid = children[0].1.pid().unwrap_or(0);
        assert!(new_pid != 0 && new_pid != info.pid);
        assert_eq!(
            State::read(dir.path())?.map(|s| s.processes[0].pid),
            Some(new_pid)
        );
        assert!(
            serve(dir.path(), &mut children, None, &mut state)
                .await
                .is_empty(),
            "a request is served once"
        );
        children[0].1.stop(Duration::from_secs(5)).await?;
        Ok(())
    }
}
