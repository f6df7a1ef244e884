//! The coordinator itself: what the HTTP handlers, the driver tasks and the background loops share.

use std::sync::Arc;
use std::time::Duration;

use platform::ApiError;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::ParticipantClient;
use crate::config::{CoordinatorConfig, CoordinatorFaults};
use crate::lease::{Lease, Leases};
use crate::model::{Submission, TransactionView};
use crate::store::{self, Fence, Stored};

/// How often a caller waiting for a transaction another coordinator drives re-reads it.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// The same for one this process drives: it hears of every change, so this is only a safety net.
const LOCAL_WAIT_POLL: Duration = Duration::from_secs(1);
/// How long a stopping coordinator waits for its drivers before releasing their leases.
const STOP_DRIVERS_LIMIT: Duration = Duration::from_secs(2);

pub(crate) struct Coordinator {
    pub pool: PgPool,
    pub client: ParticipantClient,
    pub config: CoordinatorConfig,
    pub faults: CoordinatorFaults,
    /// This process's name as a lease owner.
    pub owner: String,
    pub leases: Leases,
    /// The gxid of every state change a local driver makes, to wake the callers waiting for it.
    changes: broadcast::Sender<Uuid>,
    /// Cancelled when the process stops: drivers and loops end, waiting callers answer at once.
    pub stopping: CancellationToken,
    /// Held by a recovery pass from its claim until its drivers are started, and by [`Self::stop`]
    /// once, after cancelling: so no pass can claim a transaction after `stop` released the
    /// leases (it did, once: the peer then waited out the whole lease).
    pub(crate) recovery_gate: tokio::sync::Mutex<()>,
}

impl Coordinator {
    pub(crate) fn new(
        pool: PgPool,
        client: ParticipantClient,
        config: CoordinatorConfig,
        faults: CoordinatorFaults,
        owner: String,
        stopping: CancellationToken,
    ) -> Coordinator {
        Coordinator {
            pool,
            client,
            config,
            faults,
            owner,
            leases: Leases::default(),
            recovery_gate: tokio::sync::Mutex::new(()),
            changes: broadcast::channel(1024).0,
            stopping,
        }
    }

    pub(crate) fn notify_change(&self, gxid: Uuid) {
        // No receiver is fine: nobody is waiting.
        let _ = self.changes.send(gxid);
    }

    /// Records `submission` and starts driving it, or — for a gxid already known — checks that it
    /// is the same transaction (422 otherwise). Returns the transaction as it is now.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        submission: &Submission,
    ) -> Result<TransactionView, ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::Unavailable {
                detail: "this coordinator is shutting down; submit to another instance".into(),
                retry_after: 1,
            });
        }
        let sent = Instant::now();
        let inserted = store::insert(
            &self.pool,
            submission,
            &self.config.gid_prefix,
            &self.owner,
            self.config.lease_ms,
        )
        .await?;
        if let Some(stored) = inserted {
            tracing::info!(gxid = %submission.gxid, mode = %submission.mode,
                branches = submission.branches.len(), "transaction recorded");
            let view = stored.view.clone();
            self.spawn_driver(submission.gxid, stored.epoch, sent, true, Some(stored));
            return Ok(view);
        }
        let stored = store::load(&self.pool, submission.gxid)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a recorded transaction vanished"))
            })?;
        if !stored.submission().same_transaction(submission) {
            return Err(ApiError::invalid(
                "gxid",
                "a different transaction was already submitted with this gxid \
                 (mode, branches or timeout_ms differ)",
            ));
        }
        Ok(stored.view)
    }

    /// The transaction `gxid` once it is final, or as it is after `wait` (or when the process
    /// starts stopping).
    pub(crate) async fn wait_final(
        &self,
        gxid: Uuid,
        wait: Duration,
    ) -> Result<Option<TransactionView>, sqlx::Error> {
        let until = Instant::now() + wait;
        // Driven here: follow the driver in memory. Its views are written before they are
        // published, so they are what a read would find.
        let follow = self.leases.get(gxid).map(|lease| lease.follow());
        if let Some(mut follow) = follow
            && let Some(view) = self.follow_driver(&mut follow, until).await
        {
            return Ok(Some(view));
        }
        // Subscribed before the first read, so no change in between goes unheard.
        let mut changes = self.changes.subscribe();
        loop {
            let Some(stored) = store::load(&self.pool, gxid).await? else {
                return Ok(None);
            };
            let now = Instant::now();
            if stored.view.is_final || now >= until || self.stopping.is_cancelled() {
                return Ok(Some(stored.view));
            }
            let poll = if self.leases.holds(gxid) {
                LOCAL_WAIT_POLL
            } else {
                WAIT_POLL
            };
            let next_read = now + poll.min(until - now);
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(changed) if changed != gxid => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(next_read).await;
                        }
                        // Ours, or so many changes that some were dropped: read again.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    },
                    () = tokio::time::sleep_until(next_read) => {}
                    () = self.stopping.cancelled() => {}
                }
                break;
            }
        }
    }

    /// The driver's view once final, or the latest at `until` (or when stopping); `None` when the
    /// driver stopped first, or published nothing yet by then: the database must tell.
    async fn follow_driver(
        &self,
        follow: &mut watch::Receiver<Option<Arc<TransactionView>>>,
        until: Instant,
    ) -> Option<TransactionView> {
        loop {
            let current = follow.borrow_and_update().clone();
            if let Some(view) = &current
                && (view.is_final || Instant::now() >= until || self.stopping.is_cancelled())
            {
                return Some(TransactionView::clone(view));
            }
            tokio::select! {
                changed = follow.changed() => {
                    if changed.is_err() {
                        // Driver gone: its last view counts only if final.
                        let last = follow.borrow().clone();
                        return last.filter(|v| v.is_final).map(|v| TransactionView::clone(&v));
                    }
                }
                () = tokio::time::sleep_until(until) => {
                    return follow.borrow().clone().map(|v| TransactionView::clone(&v));
                }
                () = self.stopping.cancelled() => {
                    return follow.borrow().clone().map(|v| TransactionView::clone(&v));
                }
            }
        }
    }

    /// Starts a driver task for `gxid` under the lease of `epoch`, which the database set no
    /// earlier than `sent`. `fresh`: this process created the transaction (only then may it prepare
    /// a 2PC transaction, and only then do crash faults fire). `known`: the transaction as just
    /// recorded, when this process recorded it.
    pub(crate) fn spawn_driver(
        self: &Arc<Self>,
        gxid: Uuid,
        epoch: i32,
        sent: Instant,
        fresh: bool,
        known: Option<Stored>,
    ) {
        let lease = Arc::new(Lease::new(
            gxid,
            epoch,
            self.stopping.child_token(),
            sent + self.config.lease(),
        ));
        if let Some(known) = &known {
            lease.publish(&known.view);
        }
        self.leases.insert(lease.clone());
        let this = self.clone();
        // The driver works for the request that began the transaction (none for a recovered
        // one): its log lines and participant calls carry that request's trace.
        let drive = async move {
            let fence = Fence {
                gxid,
                owner: this.owner.clone(),
                epoch,
                created_at: None,
            };
            tokio::select! {
                () = lease.lost() => {
                    if this.stopping.is_cancelled() {
                        // Unfinished: hand it over on the way out (see `stop`).
                        this.leases.stopped(&lease);
                        tracing::info!(%gxid, epoch, "stopped driving: shutting down");
                    } else {
                        tracing::warn!(%gxid, epoch, "stopped driving: lease lost");
                    }
                }
                result = this.drive(&fence, &lease, fresh, known) => match result {
                    Ok(()) => {}
                    Err(crate::driver::Stop::LeaseLost) => {
                        tracing::warn!(%gxid, epoch, "lease taken over; another coordinator drives it now");
                    }
                },
            }
            this.leases.remove(&lease);
            this.notify_change(gxid);
        };
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            platform::trace::inherit(drive),
            span,
        ));
    }

    /// Stops every driver (they are cancelled through `stopping`), then lets the leases of the
    /// transactions they left unfinished expire at once, so a peer takes over without waiting for
    /// `lease_ms`. A driver still running after the wait keeps its lease (it simply expires):
    /// releasing it could let a peer drive the transaction while this one still does.
    pub(crate) async fn stop(&self) {
        self.stopping.cancel();
        // A recovery pass under way finishes starting its drivers (which stop at once and join
        // the released ones); later passes see `stopping` and claim nothing.
        drop(self.recovery_gate.lock().await);
        if !self.leases.wait_empty(STOP_DRIVERS_LIMIT).await {
            tracing::warn!("some drivers did not stop in time; their leases will simply expire");
        }
        let stopped = self.leases.take_stopped();
        if stopped.is_empty() {
            return;
        }
        match store::release(&self.pool, &self.owner, &stopped).await {
            Ok(n) => tracing::info!(
                released = n,
                "released the leases of unfinished transactions"
            ),
            Err(e) => tracing::warn!(error = %e, "could not release leases; they will expire"),
        }
    }
}
