//! One chaos session: the generator's customers on a running platform, then scenario after
//! scenario — load, fault, undo, settle, invariants, verdict.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loadgen::{Baseline, Check, Databases, Ledger, Load, LoadReport, Settings, Shop};
use tokio::time::Instant;

use super::fault;
use super::report::{ChaosReport, Event, judge};
use super::scenario::Scenario;
use super::split_brain::Sampler;
use super::target::Platform;

/// How hard and how long each scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub duration: Duration,
    pub rate: f64,
    pub customers: usize,
    pub quiet: bool,
    /// How long recovery may take to settle before the invariants are judged.
    pub patience: Duration,
}

impl Plan {
    /// Every scenario once with light load: what the test suite runs.
    pub fn short() -> Plan {
        Plan {
            duration: Duration::from_secs(7),
            rate: 12.0,
            customers: 6,
            quiet: true,
            patience: Duration::from_secs(60),
        }
    }

    pub fn full(duration: Duration, rate: f64) -> Plan {
        Plan {
            duration,
            rate,
            customers: 20,
            quiet: false,
            patience: Duration::from_secs(120),
        }
    }

    /// The fault comes after a quarter of the run and is undone at 60 %, so the report shows the
    /// platform before, during and after.
    fn fault_at(duration: Duration) -> Duration {
        duration.mul_f64(0.25)
    }

    /// When undoing starts; a database fault may hold longer, until the cluster has reacted.
    fn restore_at(duration: Duration) -> Duration {
        duration.mul_f64(0.6)
    }
}

pub struct Session {
    platform: Platform,
    shop: Arc<Shop>,
    databases: Databases,
    /// Everything acknowledged since the session's customers were funded.
    ledger: Ledger,
    last_baseline: Option<Baseline>,
    plan: Plan,
}

impl Session {
    /// Finds the platform in `dir`, signs up and funds the generator's customers.
    pub async fn open(dir: &Path, plan: Plan) -> anyhow::Result<Session> {
        let platform = Platform::find(dir)?;
        let databases = platform.databases().await?;
        let mut ledger = Ledger::default();
        let shop = Shop::open(
            &platform.target(None),
            plan.customers,
            Duration::from_secs(10),
            &mut ledger,
        )
        .await?;
        Ok(Session {
            platform,
            shop: Arc::new(shop),
            databases,
            ledger,
            last_baseline: None,
            plan,
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The superuser URL of one of the platform's databases.
    pub fn admin_url(&self, database: &str) -> String {
        self.platform.admin_url(database)
    }

    pub async fn run(&mut self, scenario: Scenario) -> anyhow::Result<ChaosReport> {
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let cluster = self.platform.state.cluster.clone();
        if scenario.needs_cluster() && cluster.is_none() {
            return Ok(not_available(scenario, started_unix_ms));
        }
        let settled =
            super::settle::wait_until_whole(&self.platform.dir, Duration::from_secs(45)).await?;
        if cluster.is_some() {
            // The primary may have moved in an earlier scenario.
            self.databases = self.platform.databases().await?;
        }
        let baseline = self.databases.baseline().await?;
        let duration = self.plan.duration.max(scenario.min_duration());
        let settings = Settings {
            mix: scenario.mix(),
            load: Load::Rate(self.plan.rate),
            duration,
            max_in_flight: 1024,
            quiet: self.plan.quiet,
        };
        let password = self.platform.secrets.postgres_superuser.clone();
        let sampler = match (&cluster, scenario.needs_cluster()) {
            (Some(info), true) => {
                let primary =
                    super::database::primary(info, &password, Duration::from_secs(90)).await?;
                Some(Sampler::start(info, &primary, &password, Instant::now()).await?)
            }
            _ => None,
        };
        let start = Instant::now();
        let shop = self.shop.clone();
        let load_settings = settings.clone();
        let load = tokio::spawn(async move { loadgen::runner::run(shop, &load_settings).await });
        let (mut events, trouble, window) = self.fault_and_undo(scenario, start, duration).await;
        events.insert(
            0,
            Event {
                at_ms: 0,
                what: match settled {
                    Some(took) => format!(
                        "platform whole before the load (waited {} ms for the registry)",
                        took.as_millis()
                    ),
                    None => {
                        "the registry still listed dead instances after 45 s; started anyway".into()
                    }
                },
            },
        );
        let run = load.await?;
        let rounds = match sampler {
            Some(sampler) => Some(sampler.finish().await),
            None => None,
        };
        self.ledger.merge(run.ledger.clone());
        let deadline = tokio::time::Instant::now() + self.plan.patience;
        self.shop.resolve_top_ups(&mut self.ledger, deadline).await;
        self.shop
            .resolve_pending_orders(&mut self.ledger, deadline)
            .await;
        if cluster.is_some() {
            // Checked on the primary of now: what was acknowledged before a failover must be there.
            self.databases = self.platform.databases().await?;
        }
        let mut invariants = self
            .databases
            .check(&baseline, &self.ledger, self.plan.patience)
            .await?;
        if let Some(rounds) = rounds {
            invariants.push(super::split_brain::verdict(&rounds));
        }
        self.last_baseline = Some(baseline);
        let availability = run.stats.availability();
        let during = window.and_then(|(from, to)| run.stats.availability_between(from, to));
        let (verdict, reasons) = judge(
            &invariants,
            availability,
            scenario.min_availability(),
            &trouble,
        );
        Ok(ChaosReport {
            scenario: scenario.name().to_owned(),
            description: scenario.description().to_owned(),
            verdict,
            reasons,
            started_unix_ms,
            events,
            min_availability: scenario.min_availability(),
            availability,
            availability_during_fault: during,
            invariants,
            load: Some(LoadReport::new(&run, settings.load)),
        })
    }

    /// Injects the fault at `fault_at` and undoes it at `restore_at`; the events, any trouble
    /// doing so, and the window the fault was in place.
    async fn fault_and_undo(
        &mut self,
        scenario: Scenario,
        start: Instant,
        duration: Duration,
    ) -> (Vec<Event>, Vec<String>, Option<(Duration, Duration)>) {
        let mut events = Vec::new();
        let mut trouble = Vec::new();
        if scenario.victim().is_none() && !scenario.needs_cluster() {
            return (events, trouble, None);
        }
        let at = |start: Instant| start.elapsed().as_millis() as u64;
        tokio::time::sleep_until(start + Plan::fault_at(duration)).await;
        let fault_began = start.elapsed();
        events.push(Event {
            at_ms: at(start),
            what: format!("fault: {}", scenario.description()),
        });
        let injected = match fault::inject(&self.platform.dir, scenario).await {
            Ok(injected) => injected,
            Err(e) => {
                trouble.push(format!("the fault could not be injected: {e:#}"));
                return (events, trouble, None);
            }
        };
        events.push(Event {
            at_ms: at(start),
            what: "fault in place".into(),
        });
        tokio::time::sleep_until(start + Plan::restore_at(duration)).await;
        let undo_began = start.elapsed();
        events.push(Event {
            at_ms: at(start),
            what: "undoing the fault".into(),
        });
        let password = self.platform.secrets.postgres_superuser.clone();
        let restored = fault::restore(&self.platform.dir, injected, &password).await;
        // A database fault lasts until the cluster has recovered from it (restoring waits for that).
        let fault_ended = if scenario.needs_cluster() {
            start.elapsed()
        } else {
            undo_began
        };
        match restored {
            Ok(notes) => {
                for (after, what) in notes {
                    events.push(Event {
                        at_ms: (undo_began + after).as_millis() as u64,
                        what,
                    });
                }
                events.push(Event {
                    at_ms: at(start),
                    what: "restored: the victim is ready again".into(),
                });
            }
            Err(e) => trouble.push(format!("the fault could not be undone: {e:#}")),
        }
        (events, trouble, Some((fault_began, fault_ended)))
    }

    /// Checks the invariants again against the last scenario's baseline (after someone changed
    /// the databases, say).
    pub async fn recheck(&self, patience: Duration) -> anyhow::Result<Vec<Check>> {
        let baseline = self
            .last_baseline
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no scenario has run yet"))?;
        self.databases.check(baseline, &self.ledger, patience).await
    }
}

fn not_available(scenario: Scenario, started_unix_ms: u128) -> ChaosReport {
    ChaosReport {
        scenario: scenario.name().to_owned(),
        description: scenario.description().to_owned(),
        verdict: "not available".into(),
        reasons: vec![
            "needs the replicated PostgreSQL cluster; this platform runs one plain server \
             (`bookstore up --pg-nodes 1`): start it with the default 5 members"
                .into(),
        ],
        started_unix_ms,
        events: Vec::new(),
        min_availability: scenario.min_availability(),
        availability: 0.0,
        availability_during_fault: None,
        invariants: Vec::new(),
        load: None,
    }
}
