//! The background loops that keep leases and take over the work of coordinators that are gone:
//!
//! - **renewal** (every `lease_renew_ms`): extends the lease of every transaction this process
//!   drives, in one statement; a lease the database no longer shows as ours (taken over) cancels its
//!   driver at once.
//! - **recovery** (every `recovery_interval_ms`): claims unfinished transactions whose lease expired
//!   (see [`store::claim_expired`]) and drives each to its end: `preparing` → presumed abort,
//!   `committing` → commit all, `aborting` → abort all, saga `running` → continue (compensate once
//!   past its deadline), `compensating` → continue. It also refreshes the in-doubt gauge.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::core::Coordinator;
use crate::metrics;
use crate::store;

pub(crate) async fn renew_leases(coordinator: Arc<Coordinator>) {
    let mut ticker = ticker(coordinator.config.lease_renew_ms);
    loop {
        tokio::select! {
            () = coordinator.stopping.cancelled() => return,
            _ = ticker.tick() => {}
        }
        coordinator.renew_once().await;
    }
}

pub(crate) async fn recover(coordinator: Arc<Coordinator>) {
    let mut ticker = ticker(coordinator.config.recovery_interval_ms);
    loop {
        tokio::select! {
            () = coordinator.stopping.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = coordinator.recover_once().await {
            tracing::warn!(error = %e, "recovery pass failed; trying again next interval");
        }
        match store::count_in_doubt(&coordinator.pool).await {
            Ok(count) => metrics::in_doubt(count),
            Err(e) => tracing::debug!(error = %e, "cannot count in-doubt transactions"),
        }
    }
}

fn ticker(period_ms: u64) -> tokio::time::Interval {
    let period = Duration::from_millis(period_ms.max(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

impl Coordinator {
    pub(crate) async fn renew_once(&self) {
        let held = self.leases.snapshot();
        if held.is_empty() {
            return;
        }
        let pairs: Vec<_> = held.iter().map(|l| (l.gxid, l.epoch)).collect();
        let sent = Instant::now();
        match store::renew(&self.pool, &self.owner, &pairs, self.config.lease_ms).await {
            Ok(renewed) => {
                let renewed: HashSet<_> = renewed.into_iter().collect();
                for lease in held {
                    if renewed.contains(&lease.gxid) {
                        lease.renewed(sent, self.config.lease());
                    } else if !lease.is_finishing() && !lease.is_cancelled() {
                        tracing::warn!(gxid = %lease.gxid, epoch = lease.epoch,
                            "lease taken over by another coordinator; stopping its driver");
                        lease.cancel();
                    }
                }
            }
            // Local validity runs out on its own if this persists; the drivers then stop.
            Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
        }
    }

    /// One recovery pass; returns how many transactions it claimed.
    pub(crate) async fn recover_once(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let _gate = self.recovery_gate.lock().await;
        if self.stopping.is_cancelled() {
            return Ok(0);
        }
        let sent = Instant::now();
        let claimed = store::claim_expired(
            &self.pool,
            &self.owner,
            self.config.lease_ms,
            self.config.recovery_batch,
        )
        .await?;
        for claim in &claimed {
            tracing::info!(gxid = %claim.gxid, state = %claim.state, epoch = claim.epoch,
                previous_owner = claim.previous_owner.as_deref().unwrap_or(""),
                "recovering a transaction whose lease expired");
            metrics::recovered(claim.state);
            self.spawn_driver(claim.gxid, claim.epoch, sent, false, None);
        }
        Ok(claimed.len())
    }
}
