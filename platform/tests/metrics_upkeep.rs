//! The recorder folds histogram samples into their buckets on its own, not only when scraped: a
//! process nobody scrapes must not grow with every request it answers.
//!
//! The exporter keeps its pending samples to itself; a counting allocator is the one way to see
//! them, hence the workspace's only `unsafe` (a pass-through to `System`).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to `System` unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` hold for `System` too.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

#[test]
fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    const PILE: u32 = 1_000_000;
    platform::metrics::install("upkeep-test");
    let histogram = metrics::histogram!("upkeep_test_seconds");
    let before = live();
    for i in 0..PILE {
        histogram.record(f64::from(i % 1000) * 1e-5);
    }
    // Each sample waits as a value and a time, 24 bytes: 24 MB unless an upkeep folds them. (One
    // may already have run while they were recorded.)
    let bound = isize::try_from(PILE).unwrap_or(isize::MAX) * 24 / 4;
    // The folded blocks are freed through crossbeam's epochs, which advance as threads record (a
    // serving process records all the time): keep recording a trickle while waiting.
    let mut recorded = PILE;
    let deadline = Instant::now() + Duration::from_secs(5);
    while live() - before > bound {
        assert!(
            Instant::now() < deadline,
            "no upkeep in 5 s: {} bytes still held after {recorded} samples",
            live() - before
        );
        for _ in 0..1000 {
            histogram.record(1e-3);
        }
        recorded += 1000;
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = platform::metrics::render();
    let count = format!(r#"upkeep_test_seconds_count{{service="upkeep-test"}} {recorded}"#);
    assert!(text.lines().any(|line| line == count), "{text}");
}
