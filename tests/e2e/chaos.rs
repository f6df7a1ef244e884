//! `bookstore chaos --short` as the test suite runs it: every runnable scenario once, under light
//! load, on two platforms; the invariants must hold after every one, and the checker itself must
//! fail when the databases are tampered with.

use std::time::Duration;

use sqlx::PgPool;
use stack::chaos::report::ChaosReport;
use stack::chaos::{Plan, Scenario, Session};

use crate::{bookstore, start};

/// Every invariant was checked and holds.
fn assert_invariants(report: &ChaosReport) {
    assert_eq!(report.invariants.len(), 7, "{}", report.summary());
    for check in &report.invariants {
        assert!(
            check.ok,
            "{}: {} broken: {}",
            report.scenario, check.name, check.detail
        );
    }
}

/// The fault was injected and undone, and the platform kept its guarantees. `control` is the
/// availability of the fault-free run on the same platform: a machine too busy to serve everything
/// without a fault cannot be held to more with one, so only the scenario's own loss is judged.
fn assert_pass(report: &ChaosReport, control: f64) {
    assert_invariants(report);
    assert!(
        report.events.iter().any(|e| e.what.starts_with("restored")),
        "{}: the fault was not undone: {:?}",
        report.scenario,
        report.events
    );
    assert!(
        report.reasons.iter().all(|r| r.starts_with("availability")),
        "{}",
        report.summary()
    );
    let allowed = report.min_availability - (1.0 - control);
    assert!(report.availability >= allowed, "{}", report.summary());
}

/// A known weakness (docs/LOADGEN.md, "What the scenarios found"): the scenario may lose some
/// availability, but only to failures of `kind`, and never an invariant.
fn assert_pass_or_only(report: &ChaosReport, kind: &str) {
    assert_invariants(report);
    let load = report.load.as_ref().expect("a load report");
    for error in &load.errors {
        assert_eq!(
            error.kind,
            kind,
            "{}: unexpected failures: {}",
            report.scenario,
            report.summary()
        );
    }
}

async fn run(session: &mut Session, scenario: Scenario) -> anyhow::Result<ChaosReport> {
    let report = session.run(scenario).await?;
    eprintln!("{}", report.summary());
    if let Some(load) = report.load.as_ref().filter(|l| !l.errors.is_empty()) {
        eprintln!("    errors: {:?}", load.errors);
    }
    Ok(report)
}

#[tokio::test]
async fn killed_frozen_and_restarted_processes_under_load_keep_every_invariant()
-> anyhow::Result<()> {
    let platform = start().await?;
    let mut session = Session::open(platform.dir(), Plan::short()).await?;
    let steady = run(&mut session, Scenario::Steady).await?;
    assert_invariants(&steady);
    assert_eq!(steady.verdict, "pass", "{}", steady.summary());
    assert!(
        steady.load.as_ref().is_some_and(|l| l.requests > 50),
        "{}",
        steady.summary()
    );
    for scenario in [
        Scenario::KillInstance,
        Scenario::FreezeInstance,
        Scenario::KillRedis,
        Scenario::KillCoordinator,
    ] {
        let report = run(&mut session, scenario).await?;
        assert_pass(&report, steady.availability);
        let path = report.write(platform.dir())?;
        assert!(path.starts_with(platform.dir().join("reports")));
    }
    // Everything chaos killed was restarted by `up` and is ready again.
    let state = stack::state::State::read(platform.dir())?.expect("state");
    for name in ["books-1", "redis-2", "coordinator-1"] {
        let info = state
            .processes
            .iter()
            .find(|p| p.name == name)
            .expect("listed");
        assert!(
            std::path::Path::new(&format!("/proc/{}", info.pid)).exists(),
            "{name} is not running"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_registry_killed_and_clocks_skewed_lose_nothing_the_command_reports_and_tampering_fails_the_check()
-> anyhow::Result<()> {
    let platform = start().await?;
    let mut session = Session::open(platform.dir(), Plan::short()).await?;
    let steady = run(&mut session, Scenario::Steady).await?;
    assert_invariants(&steady);
    // A registry restarted empty makes the gateway drop every instance until they re-register.
    let registry = run(&mut session, Scenario::KillRegistry).await?;
    assert_pass_or_only(&registry, "503 /problems/unavailable");
    // An instance an hour off would see every token as expired (ahead) or keep leases too long
    // (behind): it notices against the database's clock and keeps itself out of rotation (the
    // fault only counts as injected once its readiness says so), so no request fails.
    let ahead = run(&mut session, Scenario::SkewClockAhead).await?;
    assert_pass(&ahead, steady.availability);
    let behind = run(&mut session, Scenario::SkewClockBehind).await?;
    assert_pass(&behind, steady.availability);
    let primary = run(&mut session, Scenario::KillPrimary).await?;
    assert_eq!(primary.verdict, "not available");

    // The command line: percentiles per operation and the invariants, as JSON.
    let output = tokio::process::Command::new(bookstore())
        .args(["loadgen", "--dir", &platform.dir().display().to_string()])
        .args([
            "--duration",
            "3s",
            "--rate",
            "15",
            "--customers",
            "2",
            "--check",
            "--json",
        ])
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert!(
        view["report"]["requests"].as_u64().is_some_and(|n| n >= 30),
        "{view}"
    );
    let operations = view["report"]["operations"].as_array().expect("operations");
    assert!(
        operations
            .iter()
            .all(|op| op["p99_ms"].as_f64().is_some_and(|p| p > 0.0))
    );
    let invariants = view["invariants"].as_array().expect("invariants");
    assert_eq!(invariants.len(), 7);
    assert!(invariants.iter().all(|c| c["ok"] == true), "{view}");

    // The checker is not a rubber stamp: one cent too many on a balance, one copy missing, one
    // rating counted twice.
    let orders = PgPool::connect(&session.admin_url("orders")).await?;
    let books = PgPool::connect(&session.admin_url("books")).await?;
    let customer = session.ledger().top_ups[0].customer_id.clone();
    let tamper_credit = |delta: i64| {
        sqlx::query("UPDATE customers SET credit_cents = credit_cents + $1 WHERE id = $2::uuid")
            .bind(delta)
            .bind(customer.clone())
    };
    tamper_credit(1).execute(&orders).await?;
    let checks = session.recheck(Duration::ZERO).await?;
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    assert_eq!(failed, ["money conserved"], "{checks:?}");
    tamper_credit(-1).execute(&orders).await?;
    let book: String = sqlx::query_scalar("UPDATE books SET stock = stock + 1 WHERE id = (SELECT id FROM books ORDER BY id LIMIT 1) RETURNING id::text")
        .fetch_one(&books)
        .await?;
    let checks = session.recheck(Duration::ZERO).await?;
    let stock = checks
        .iter()
        .find(|c| c.name == "stock conserved")
        .expect("checked");
    assert!(!stock.ok && stock.detail.contains(&book), "{stock:?}");
    sqlx::query("UPDATE books SET stock = stock - 1 WHERE id = $1::uuid")
        .bind(&book)
        .execute(&books)
        .await?;
    // A rating counted twice (what a replayed batch must never do).
    let tamper_totals = |delta: i64| {
        sqlx::query(
            "UPDATE book_rating_totals SET rating_count = rating_count + $1,
                    rating_sum = rating_sum + $1
              WHERE book_id = $2::uuid",
        )
        .bind(delta)
        .bind(book.clone())
    };
    tamper_totals(1).execute(&books).await?;
    let checks = session.recheck(Duration::ZERO).await?;
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    assert!(
        failed.len() == 1
            && failed[0].name == "rating totals are the rows'"
            && failed[0].detail.contains(&book),
        "{checks:?}"
    );
    tamper_totals(-1).execute(&books).await?;
    assert!(session.recheck(Duration::ZERO).await?.iter().all(|c| c.ok));
    Ok(())
}

/// A database scenario passed: the eight invariants (the seven above and no split brain) hold, the
/// fault was undone — the cluster whole again — and availability reached the scenario's floor,
/// less what the fault-free run on the same machine lost.
fn assert_database_pass(report: &ChaosReport, control: f64) {
    assert_eq!(report.invariants.len(), 8, "{}", report.summary());
    for check in &report.invariants {
        assert!(
            check.ok,
            "{}: {} broken: {}",
            report.scenario, check.name, check.detail
        );
    }
    assert!(
        report.events.iter().any(|e| e.what.starts_with("restored")),
        "{}: the fault was not undone: {:?}",
        report.scenario,
        report.events
    );
    assert!(
        report.reasons.iter().all(|r| r.starts_with("availability")),
        "{}",
        report.summary()
    );
    let allowed = report.min_availability - (1.0 - control);
    assert!(
        report.availability >= allowed,
        "{}\nerrors: {:?}",
        report.summary(),
        report.load.as_ref().map(|l| &l.errors)
    );
}

/// The four database scenarios on the 5-member Patroni cluster `up` runs by default, one after
/// another on one platform (a cluster platform takes a minute to start): replicas killed and
/// restarted, the primary's PostgreSQL killed (failover), and the primary cut off from etcd and
/// its peers while clients still reach it. After each, checked on the primary of the moment:
/// nothing acknowledged lost, money and stock conserved, nothing left prepared — and at no time
/// two members accepting writes.
#[tokio::test]
async fn database_nodes_killed_and_the_primary_partitioned_lose_nothing_and_never_split_brain()
-> anyhow::Result<()> {
    let began = std::time::Instant::now();
    let platform = testkit::TestPlatform::start_cluster(bookstore(), &[]).await?;
    eprintln!("cluster platform up in {:?}", began.elapsed());
    let mut session = Session::open(platform.dir(), Plan::short()).await?;
    let steady = run(&mut session, Scenario::Steady).await?;
    assert_invariants(&steady);
    let info = platform.state().cluster.clone().expect("a cluster");
    let mut leaders = Vec::new();
    for scenario in [
        Scenario::KillReplica,
        Scenario::KillTwoReplicas,
        Scenario::KillPrimary,
        Scenario::PartitionPrimary,
    ] {
        let before = stack::chaos::database::primary(
            &info,
            &stack::state::Secrets::load_or_create(platform.dir())?.postgres_superuser,
            Duration::from_secs(30),
        )
        .await?;
        let started = std::time::Instant::now();
        let report = run(&mut session, scenario).await?;
        eprintln!("{scenario} took {:?}", started.elapsed());
        for event in &report.events {
            eprintln!("    {:>6} ms  {}", event.at_ms, event.what);
        }
        assert_database_pass(&report, steady.availability);
        let split_brain = report
            .invariants
            .iter()
            .find(|c| c.name == "no split brain")
            .expect("the split-brain check ran");
        if matches!(scenario, Scenario::KillPrimary | Scenario::PartitionPrimary) {
            // The probes saw the writer change, once.
            assert!(
                split_brain.detail.contains(&format!("{} ", before.name))
                    && split_brain.detail.contains(", then "),
                "{scenario}: {}",
                split_brain.detail
            );
            assert!(
                report.events.iter().any(|e| e.what.contains("promoted")),
                "{}",
                report.summary()
            );
        } else {
            assert!(
                !split_brain.detail.contains(", then "),
                "{}",
                split_brain.detail
            );
        }
        if scenario == Scenario::PartitionPrimary {
            assert!(
                report
                    .events
                    .iter()
                    .any(|e| e.what.contains("demoted itself")),
                "{:?}",
                report.events
            );
        }
        leaders.push(before.name);
    }
    // Whole again: every member runs under `up`, one leader, the rest replicas, none left in the
    // partition's cgroup and no rule left behind.
    let view = stack::chaos::database::view(&info).await?;
    assert_eq!(view.len(), 5, "{view:?}");
    assert_eq!(view.iter().filter(|m| m.role == "leader").count(), 1);
    let timeline = view
        .iter()
        .find(|m| m.role == "leader")
        .and_then(|m| m.timeline);
    assert!(
        view.iter()
            .all(|m| (m.state == "running" || m.state == "streaming") && m.timeline == timeline),
        "{view:?}"
    );
    let rules = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(!rules.contains("bookstore_chaos_partition"), "{rules}");
    eprintln!(
        "leaders before each scenario: {leaders:?}; total {:?}",
        began.elapsed()
    );
    platform.stop().await?;
    Ok(())
}
