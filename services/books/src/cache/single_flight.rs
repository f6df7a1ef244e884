//! Single-flight per key inside one instance: concurrent misses of the same key share one database
//! read, so a cold or just-invalidated hot key costs one query, not one per waiting request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// The flights in the air, by key. `V` is cloned to every waiter (keep it cheap: `Arc`s inside).
pub struct SingleFlight<V: Clone> {
    flights: Mutex<HashMap<String, Shared<BoxFuture<'static, V>>>>,
}

impl<V: Clone + Send + Sync + 'static> Default for SingleFlight<V> {
    fn default() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// Joins the flight for `key`, or starts one with `work` when none is in the air. The work is a
    /// `'static` future so it finishes for the other waiters even if the request that started it
    /// goes away.
    pub async fn run(&self, key: &str, work: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            flights
                .entry(key.to_owned())
                .or_insert_with(|| work().shared())
                .clone()
        };
        let value = flight.clone().await;
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(key);
        }
        value
    }

    /// Flights in the air (for tests).
    pub fn in_flight(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_of_one_key_share_one_run() {
        let flights = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers = (0..20).map(|_| {
            let flights = flights.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                flights
                    .run("k", move || {
                        Box::pin(async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            runs.fetch_add(1, Ordering::SeqCst) + 1
                        })
                    })
                    .await
            })
        });
        for caller in futures::future::join_all(callers).await {
            assert_eq!(caller.expect("caller"), 1);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "a finished flight is removed");
    }

    #[tokio::test]
    async fn different_keys_and_later_calls_run_again() {
        let flights = SingleFlight::<u8>::default();
        assert_eq!(flights.run("a", || Box::pin(async { 1 })).await, 1);
        assert_eq!(flights.run("b", || Box::pin(async { 2 })).await, 2);
        assert_eq!(flights.run("a", || Box::pin(async { 3 })).await, 3);
    }
}
