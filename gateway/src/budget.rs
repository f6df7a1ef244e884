//! The retry budget: how many reroutes may run at once, as a share of the requests in flight (as
//! Envoy's `retry_budget`). During an outage every request fails, and without a budget every one
//! would be sent again and again; with it, retries add at most `budget_percent` of the load (but
//! never fewer than `min_retry_concurrency`, so a quiet service can still reroute).
//!
//! A budget is shared per service ([`RetryBudgets::for_service`]). Both counters are held by guards
//! that give back on drop, so a request whose future is cancelled (client gone, deadline passed)
//! never leaks a slot. The retry layer ([`crate::retry`]) takes a [`RequestGuard`] for each request
//! and a [`RetryGuard`] for each retry; this module only counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

/// How large the retry budget is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetConfig {
    /// Retries allowed at once, in percent of the requests in flight to the service (default 20.0).
    pub budget_percent: f64,
    /// Retries always allowed at once, however few requests are in flight (default 3).
    pub min_retry_concurrency: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
}

/// One service's budget.
#[derive(Debug)]
pub struct RetryBudget {
    service: String,
    config: BudgetConfig,
    active_requests: AtomicUsize,
    active_retries: AtomicUsize,
    exhausted: AtomicU64,
}

impl RetryBudget {
    pub fn new(service: impl Into<String>, config: BudgetConfig) -> Arc<RetryBudget> {
        let service = service.into();
        // At 0 from the start, so `rate()` sees the first refusal.
        metrics::counter!("gateway_retry_budget_exhausted_total", "upstream" => service.clone())
            .increment(0);
        Arc::new(RetryBudget {
            service,
            config,
            active_requests: AtomicUsize::new(0),
            active_retries: AtomicUsize::new(0),
            exhausted: AtomicU64::new(0),
        })
    }

    /// Counts one client request as in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.active_requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            budget: self.clone(),
        }
    }

    /// Takes one retry slot, or `None` when the budget is exhausted (counted in
    /// `gateway_retry_budget_exhausted_total{upstream}`).
    pub fn try_withdraw(self: &Arc<Self>) -> Option<RetryGuard> {
        let mut current = self.active_retries.load(Ordering::Acquire);
        loop {
            if current >= self.max_active_retries() {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("gateway_retry_budget_exhausted_total", "upstream" => self.service.clone())
                    .increment(1);
                return None;
            }
            match self.active_retries.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        metrics::gauge!("gateway_retry_budget_active_retries", "upstream" => self.service.clone())
            .increment(1.0);
        Some(RetryGuard {
            budget: self.clone(),
        })
    }

    /// `max(min_retry_concurrency, ceil(budget_percent / 100 × active_requests))`.
    pub fn max_active_retries(&self) -> usize {
        let requests = self.active_requests.load(Ordering::Acquire) as f64;
        let share = (self.config.budget_percent.max(0.0) / 100.0 * requests).ceil();
        // `as` saturates for floats; a share beyond usize is "no limit" in practice.
        (share as usize).max(self.config.min_retry_concurrency)
    }

    pub fn active_requests(&self) -> usize {
        self.active_requests.load(Ordering::Acquire)
    }

    pub fn active_retries(&self) -> usize {
        self.active_retries.load(Ordering::Acquire)
    }

    /// How often a retry was refused since start.
    pub fn exhausted_total(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

/// A client request in flight; gives its count back on drop.
#[derive(Debug)]
pub struct RequestGuard {
    budget: Arc<RetryBudget>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.budget.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight; gives its slot back on drop.
#[derive(Debug)]
pub struct RetryGuard {
    budget: Arc<RetryBudget>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.budget.active_retries.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("gateway_retry_budget_active_retries", "upstream" => self.budget.service.clone())
            .decrement(1.0);
    }
}

/// The budgets of every service, created on first use. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RetryBudgets {
    config: BudgetConfig,
    budgets: Arc<RwLock<HashMap<String, Arc<RetryBudget>>>>,
}

impl RetryBudgets {
    pub fn new(config: BudgetConfig) -> RetryBudgets {
        RetryBudgets {
            config,
            budgets: Arc::default(),
        }
    }

    /// The budget of `service` (the same one for every caller).
    pub fn for_service(&self, service: &str) -> Arc<RetryBudget> {
        if let Some(budget) = self
            .budgets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(service)
        {
            return budget.clone();
        }
        self.budgets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(service.to_owned())
            .or_insert_with(|| RetryBudget::new(service, self.config.clone()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: f64, min: usize) -> Arc<RetryBudget> {
        RetryBudget::new(
            "books",
            BudgetConfig {
                budget_percent: percent,
                min_retry_concurrency: min,
            },
        )
    }

    #[test]
    fn the_minimum_applies_when_few_requests_are_in_flight() {
        let budget = budget(20.0, 3);
        let _requests: Vec<_> = (0..10).map(|_| budget.request()).collect();
        // 20 % of 10 is 2, below the minimum of 3.
        let retries: Vec<_> = (0..3).filter_map(|_| budget.try_withdraw()).collect();
        assert_eq!(retries.len(), 3);
        assert!(budget.try_withdraw().is_none());
        assert_eq!(budget.exhausted_total(), 1);
    }

    #[test]
    fn the_share_applies_when_many_requests_are_in_flight_and_rounds_up() {
        let budget = budget(20.0, 3);
        let _requests: Vec<_> = (0..21).map(|_| budget.request()).collect();
        // ceil(0.2 × 21) = 5
        assert_eq!(budget.max_active_retries(), 5);
        let retries: Vec<_> = (0..6).filter_map(|_| budget.try_withdraw()).collect();
        assert_eq!(retries.len(), 5);
        assert_eq!(budget.exhausted_total(), 1);
    }

    #[test]
    fn dropped_guards_give_their_slots_back() {
        let budget = budget(20.0, 1);
        let request = budget.request();
        let retry = budget.try_withdraw().expect("one retry is always allowed");
        assert!(budget.try_withdraw().is_none());
        drop(retry);
        assert_eq!(budget.active_retries(), 0);
        assert!(budget.try_withdraw().is_some());
        drop(request);
        assert_eq!(budget.active_requests(), 0);
        assert_eq!(budget.active_retries(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_future_gives_its_slots_back() {
        let budget = budget(20.0, 3);
        let held = budget.clone();
        let task = tokio::spawn(async move {
            let _request = held.request();
            let _retry = held.try_withdraw();
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        while budget.active_retries() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert_eq!(budget.active_requests(), 0);
        assert_eq!(budget.active_retries(), 0);
    }

    #[test]
    fn each_service_has_its_own_budget_shared_by_all_callers() {
        let budgets = RetryBudgets::new(BudgetConfig::default());
        let books = budgets.for_service("books");
        let _request = books.request();
        assert_eq!(budgets.for_service("books").active_requests(), 1);
        assert_eq!(budgets.for_service("orders").active_requests(), 0);
    }
}
