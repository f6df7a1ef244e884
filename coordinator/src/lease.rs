//! The leases this process holds, one per transaction it drives.
//!
//! A lease is valid locally until `valid_until`: the instant *before* the write that set or renewed
//! it was sent, plus `lease_ms`. The database's expiry is later than that (it is computed when the
//! write runs), so as long as the clocks run at the same rate this process stops driving before any
//! peer may claim the transaction: a driver gives up as soon as its lease is cancelled (a renewal
//! found it taken over, or the process is stopping) or its local validity passes (renewals failed,
//! for example because the database is unreachable).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::TransactionView;

/// One held lease.
#[derive(Debug)]
pub(crate) struct Lease {
    pub gxid: Uuid,
    pub epoch: i32,
    cancel: CancellationToken,
    valid_until: Mutex<Instant>,
    /// Set by the driver just before its final write, which drops the lease in the database: a
    /// renewal that no longer finds it then is no news.
    finishing: AtomicBool,
    /// The transaction as its driver last wrote it, for callers waiting on this process: they
    /// follow the driver in memory instead of reading the database after every change.
    view: watch::Sender<Option<Arc<TransactionView>>>,
}

impl Lease {
    pub(crate) fn new(
        gxid: Uuid,
        epoch: i32,
        cancel: CancellationToken,
        valid_until: Instant,
    ) -> Lease {
        Lease {
            gxid,
            epoch,
            cancel,
            valid_until: Mutex::new(valid_until),
            finishing: AtomicBool::new(false),
            view: watch::channel(None).0,
        }
    }

    /// Publishes the transaction as just written (to the database: never ahead of it).
    pub(crate) fn publish(&self, view: &TransactionView) {
        self.view.send_replace(Some(Arc::new(view.clone())));
    }

    /// Follows what [`Lease::publish`] publishes; closed once the driver is gone.
    pub(crate) fn follow(&self) -> watch::Receiver<Option<Arc<TransactionView>>> {
        self.view.subscribe()
    }

    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Extends local validity to `sent + lease` (`sent`: when the renewal was sent).
    pub(crate) fn renewed(&self, sent: Instant, lease: Duration) {
        let mut until = self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = (*until).max(sent + lease);
    }

    /// Stop driving: taken over, or shutting down.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn set_finishing(&self) {
        self.finishing.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::SeqCst)
    }

    /// Resolves once the driver must stop: the lease was cancelled or its local validity passed
    /// without a renewal.
    pub(crate) async fn lost(&self) {
        loop {
            let until = self.valid_until();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep_until(until) => {
                    if self.valid_until() <= Instant::now() {
                        tracing::warn!(gxid = %self.gxid, "lease not renewed in time; stopping");
                        self.cancel.cancel();
                        return;
                    }
                }
            }
        }
    }
}

/// Every lease this process holds, by gxid.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<Uuid, Arc<Lease>>>,
    emptied: Notify,
    /// (gxid, epoch) of drivers stopped by the shutdown with their transaction unfinished.
    stopped: Mutex<Vec<(Uuid, i32)>>,
}

impl Leases {
    /// Adds `lease`; an older lease of the same transaction (a driver of a previous epoch still
    /// winding down) is cancelled.
    pub(crate) fn insert(&self, lease: Arc<Lease>) {
        let old = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease.gxid, lease);
        if let Some(old) = old {
            old.cancel();
        }
    }

    /// The lease this process holds on `gxid`, if it drives it now.
    pub(crate) fn get(&self, gxid: Uuid) -> Option<Arc<Lease>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&gxid)
            .cloned()
    }

    /// Whether this process drives `gxid` now.
    pub(crate) fn holds(&self, gxid: Uuid) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&gxid)
    }

    /// Removes `lease` (only that one: a newer lease of the same gxid stays).
    pub(crate) fn remove(&self, lease: &Arc<Lease>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(&lease.gxid).is_some_and(|l| Arc::ptr_eq(l, lease)) {
            held.remove(&lease.gxid);
        }
        if held.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Notes that `lease`'s driver stopped for the shutdown, its transaction unfinished.
    pub(crate) fn stopped(&self, lease: &Lease) {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((lease.gxid, lease.epoch));
    }

    pub(crate) fn take_stopped(&self) -> Vec<(Uuid, i32)> {
        std::mem::take(&mut *self.stopped.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<Lease>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Waits (at most `limit`) until no lease is held; true when none is.
    pub(crate) async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return true;
            }
            tokio::select! {
                () = emptied => {}
                () = tokio::time::sleep_until(deadline) => return self.is_empty(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_is_lost_when_its_local_validity_passes_unless_renewed() {
        let lease = Lease::new(
            Uuid::now_v7(),
            1,
            CancellationToken::new(),
            Instant::now() + Duration::from_millis(60),
        );
        let renew_once = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            lease.renewed(Instant::now(), Duration::from_millis(100));
        };
        let started = Instant::now();
        tokio::join!(lease.lost(), renew_once);
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert!(lease.is_cancelled());
    }

    #[tokio::test]
    async fn a_newer_lease_of_the_same_transaction_replaces_and_cancels_the_older() {
        let leases = Leases::default();
        let gxid = Uuid::now_v7();
        let later = Instant::now() + Duration::from_secs(5);
        let old = Arc::new(Lease::new(gxid, 1, CancellationToken::new(), later));
        let new = Arc::new(Lease::new(gxid, 2, CancellationToken::new(), later));
        leases.insert(old.clone());
        leases.insert(new.clone());
        assert!(old.is_cancelled() && !new.is_cancelled());
        leases.remove(&old);
        assert!(
            !leases.is_empty(),
            "removing the old lease keeps the new one"
        );
        leases.remove(&new);
        assert!(leases.wait_empty(Duration::from_millis(10)).await);
    }
}
