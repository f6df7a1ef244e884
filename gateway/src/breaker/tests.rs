//! The breaker alone, on explicit instants: every test says exactly when it is closed, open or
//! half-open.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn breaker(config: BreakerConfig) -> (Breaker, Instant) {
    let now = Instant::now();
    (Breaker::new(Arc::new(config), "books", "books-1", now), now)
}

fn call(b: &mut Breaker, outcome: Outcome, now: Instant) {
    let ticket = b.try_acquire(now).expect("the breaker admits this call");
    b.record(ticket, outcome, now);
}

const FAIL: Outcome = Outcome::Failure("5xx");
const OK: Outcome = Outcome::Success;

/// Opens a default breaker with consecutive failures at `now`.
fn eject(b: &mut Breaker, now: Instant) {
    for _ in 0..5 {
        call(b, FAIL, now);
    }
    assert_eq!(b.state(now), BreakerState::Open);
}

#[test]
fn opens_after_n_consecutive_failures_and_not_before() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    for _ in 0..4 {
        call(&mut b, FAIL, t0);
    }
    assert_eq!(b.state(t0), BreakerState::Closed);
    call(&mut b, FAIL, t0);
    assert_eq!(b.state(t0), BreakerState::Open);
    assert!(!b.admits(t0));
    assert!(b.try_acquire(t0).is_none());
    assert_eq!(b.ejections(), 1);
    assert_eq!(b.open_remaining(t0), ms(1_000));
}

#[test]
fn a_success_breaks_the_run_of_failures() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    for outcome in [FAIL, FAIL, FAIL, FAIL, OK, FAIL, FAIL, FAIL, FAIL] {
        call(&mut b, outcome, t0);
    }
    // 8 of 9 failed, but fewer than min_calls (10) and never 5 in a row.
    assert_eq!(b.state(t0), BreakerState::Closed);
}

#[test]
fn one_error_in_a_healthy_stream_does_not_open() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    for i in 0..100u64 {
        let outcome = if i == 50 { FAIL } else { OK };
        call(&mut b, outcome, t0 + ms(i * 10));
    }
    assert_eq!(b.state(t0 + ms(1_000)), BreakerState::Closed);
    assert_eq!(b.ejections(), 0);
}

#[test]
fn a_40_percent_failure_rate_stays_closed() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    let pattern = [FAIL, OK, FAIL, OK, OK];
    for i in 0..40u64 {
        let now = t0 + ms(i * 50);
        call(&mut b, pattern[(i % 5) as usize], now);
        assert_eq!(b.state(now), BreakerState::Closed, "after call {i}");
    }
    assert!((b.error_rate(t0 + ms(2_000)) - 0.4).abs() < 1e-9);
}

#[test]
fn a_60_percent_failure_rate_opens_once_min_calls_is_reached() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    let calls = [OK, FAIL, FAIL, OK, FAIL, FAIL, OK, FAIL, OK, FAIL];
    for (i, outcome) in calls.iter().enumerate() {
        assert_eq!(b.state(t0), BreakerState::Closed, "before call {i}");
        call(&mut b, *outcome, t0);
    }
    // 6 of 10: the tenth call reaches min_calls with a rate over 50 %.
    assert_eq!(b.state(t0), BreakerState::Open);
}

#[test]
fn failures_that_left_the_window_no_longer_count() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    for _ in 0..4 {
        call(&mut b, FAIL, t0);
        call(&mut b, OK, t0);
    }
    // 11 s later the first eight calls are out of the 10 s window: two failures in a row and
    // two calls in the window open nothing.
    let later = t0 + ms(11_000);
    call(&mut b, FAIL, later);
    call(&mut b, FAIL, later);
    assert_eq!(b.recent_calls(later), 2);
    assert_eq!(b.state(later), BreakerState::Closed);
}

#[test]
fn open_time_doubles_with_each_ejection_in_a_row_up_to_the_cap() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    eject(&mut b, t0);
    let mut now = t0;
    for expected in [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
        assert_eq!(b.open_remaining(now), ms(expected));
        assert_eq!(b.state(now + ms(expected - 1)), BreakerState::Open);
        now += ms(expected);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        call(&mut b, FAIL, now);
        assert_eq!(b.state(now), BreakerState::Open);
    }
    assert_eq!(b.ejections(), 8);
}

#[test]
fn the_streak_starts_over_after_staying_closed_as_long_as_the_cap() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    // Ejected twice in a row (1 s, then 2 s), then recovers at 3 s.
    eject(&mut b, t0);
    call(&mut b, FAIL, t0 + ms(1_000));
    call(&mut b, OK, t0 + ms(3_000));
    assert_eq!(b.state(t0 + ms(3_000)), BreakerState::Closed);
    // Ejected again 10 s later: still the same streak, 4 s.
    let t1 = t0 + ms(13_000);
    eject(&mut b, t1);
    assert_eq!(b.open_remaining(t1), ms(4_000));
    call(&mut b, OK, t1 + ms(4_000));
    // Healthy for 30 s (the cap) before the next ejection: back to 1 s.
    let t2 = t1 + ms(4_000 + 30_000);
    eject(&mut b, t2);
    assert_eq!(b.open_remaining(t2), ms(1_000));
}

#[test]
fn half_open_admits_exactly_the_configured_probes_and_a_success_closes() {
    let (mut b, t0) = breaker(BreakerConfig {
        half_open_probes: 2,
        ..BreakerConfig::default()
    });
    eject(&mut b, t0);
    let t1 = t0 + ms(1_000);
    let first = b.try_acquire(t1).expect("first probe");
    let second = b.try_acquire(t1).expect("second probe");
    assert!(first.is_probe() && second.is_probe());
    assert!(b.try_acquire(t1).is_none(), "a third concurrent probe");
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    b.record(first, OK, t1 + ms(10));
    assert_eq!(b.state(t1 + ms(10)), BreakerState::Closed);
    // The other probe's late answer belongs to the half-open epoch and changes nothing.
    b.record(second, FAIL, t1 + ms(20));
    assert_eq!(b.state(t1 + ms(20)), BreakerState::Closed);
    assert!(
        !b.try_acquire(t1 + ms(20))
            .expect("closed admits")
            .is_probe()
    );
}

#[test]
fn a_failed_probe_reopens_for_longer() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    eject(&mut b, t0);
    let t1 = t0 + ms(1_000);
    let probe = b.try_acquire(t1).expect("probe");
    b.record(probe, Outcome::Failure("connect error"), t1 + ms(5));
    assert_eq!(b.state(t1 + ms(5)), BreakerState::Open);
    assert_eq!(b.open_remaining(t1 + ms(5)), ms(2_000));
    assert_eq!(b.ejections(), 2);
}

#[test]
fn a_probe_that_never_settles_times_out_and_reopens() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    eject(&mut b, t0);
    let t1 = t0 + ms(1_000);
    let probe = b.try_acquire(t1).expect("probe");
    assert_eq!(b.state(t1 + ms(1_999)), BreakerState::HalfOpen);
    assert!(!b.admits(t1 + ms(1_999)), "the one probe slot is taken");
    let timed_out = t1 + ms(2_000);
    assert_eq!(b.state(timed_out), BreakerState::Open);
    assert_eq!(b.open_remaining(timed_out), ms(2_000));
    // Its success, arriving after it was given up on, does not close the breaker.
    b.record(probe, OK, timed_out + ms(1));
    assert_eq!(b.state(timed_out + ms(1)), BreakerState::Open);
}

#[test]
fn a_breaker_nobody_looked_at_is_where_it_would_have_been() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    eject(&mut b, t0);
    let _probe = b.try_acquire(t0 + ms(1_000)).expect("probe");
    // The probe timed out at 3 s, reopened for 2 s, and turned half-open again at 5 s.
    assert_eq!(b.state(t0 + ms(5_000)), BreakerState::HalfOpen);
    assert_eq!(b.ejections(), 2);
}

#[test]
fn a_cancelled_probe_frees_its_slot_without_a_verdict() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    eject(&mut b, t0);
    let t1 = t0 + ms(1_000);
    let probe = b.try_acquire(t1).expect("probe");
    b.release(probe, t1);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    assert!(
        b.try_acquire(t1)
            .expect("the slot is free again")
            .is_probe()
    );
}

#[test]
fn answers_to_calls_admitted_before_the_breaker_opened_are_ignored() {
    let (mut b, t0) = breaker(BreakerConfig::default());
    let slow = b.try_acquire(t0).expect("closed admits");
    eject(&mut b, t0);
    let t1 = t0 + ms(1_000);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    // Neither a stale success nor a stale failure moves the half-open breaker.
    b.record(slow, OK, t1);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    b.record(slow, FAIL, t1);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    // Nor does it count in the fresh window once the breaker has closed again.
    call(&mut b, OK, t1);
    assert_eq!(b.state(t1), BreakerState::Closed);
    b.record(slow, FAIL, t1);
    assert_eq!(b.recent_calls(t1), 0);
}

#[test]
fn only_failures_of_the_instance_count() {
    let status = |code: u16| {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::from_u16(code).expect("status");
        Ok(response)
    };
    assert_eq!(classify(&status(200)), Some(OK));
    assert_eq!(classify(&status(404)), Some(OK));
    assert_eq!(classify(&status(501)), Some(OK));
    assert_eq!(classify(&status(503)), Some(FAIL));
    // A 503 with Retry-After is the service's deliberate "a dependency is unavailable": it says
    // nothing about the instance, either way.
    let mut deliberate = Response::new(Body::empty());
    *deliberate.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    deliberate.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    assert_eq!(classify(&Ok(deliberate)), None);
    let instance = || "books-1".to_owned();
    for failure in [
        UpstreamError::Connect {
            instance: instance(),
        },
        UpstreamError::Timeout {
            instance: instance(),
        },
        UpstreamError::Failed {
            instance: instance(),
            reason: "reset".into(),
        },
    ] {
        assert!(matches!(classify(&Err(failure)), Some(Outcome::Failure(_))));
    }
    for neutral in [
        UpstreamError::NoInstance {
            service: "books".into(),
        },
        UpstreamError::ServiceOpen {
            service: "books".into(),
            retry_after: ms(1_000),
        },
        UpstreamError::DeadlineExceeded {
            service: "books".into(),
        },
    ] {
        assert_eq!(classify(&Err(neutral)), None);
    }
}

#[test]
fn settings_that_cannot_work_are_refused() {
    assert!(BreakerConfig::default().validate().is_ok());
    for broken in [
        BreakerConfig {
            failure_rate: 0.0,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            min_calls: 0,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            max_ejection_ms: 10,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            half_open_probes: 0,
            ..BreakerConfig::default()
        },
        BreakerConfig {
            max_ejection_percent: 101,
            ..BreakerConfig::default()
        },
    ] {
        assert!(broken.validate().is_err(), "{broken:?}");
    }
}

#[test]
fn missing_settings_take_their_defaults() {
    let config: BreakerConfig =
        serde_json::from_str(r#"{"consecutive_failures": 3}"#).expect("parses");
    assert_eq!(
        config,
        BreakerConfig {
            consecutive_failures: 3,
            ..BreakerConfig::default()
        }
    );
}
