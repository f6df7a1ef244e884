//! The catalog's transitions, driven with explicit instants: no sleeping.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::server::checks::{CheckKind, CheckSpec, HttpProbe};

const SECOND: Duration = Duration::from_secs(1);

fn ttl_check(id: &str, ttl: Duration, deregister_after: Option<Duration>) -> CheckSpec {
    CheckSpec {
        id: id.into(),
        name: format!("{id} check"),
        notes: String::new(),
        kind: CheckKind::Ttl(ttl),
        status: Status::Critical,
        deregister_after,
    }
}

fn http_check(id: &str) -> CheckSpec {
    CheckSpec {
        kind: CheckKind::Http(HttpProbe {
            url: "http://127.0.0.1:1/health".into(),
            method: "GET".into(),
            headers: HashMap::new(),
            interval: SECOND,
            timeout: SECOND,
        }),
        ..ttl_check(id, SECOND, None)
    }
}

fn service(id: &str, name: &str, checks: Vec<CheckSpec>) -> NewService {
    NewService {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port: 8081,
        tags: vec!["v1".into()],
        meta: HashMap::new(),
        checks,
    }
}

fn status_of(catalog: &Catalog, id: &str) -> Vec<Status> {
    catalog
        .instances()
        .filter(|i| i.id == id)
        .flat_map(|i| i.checks.iter().map(|c| c.status))
        .collect()
}

/// Applies `f` and asserts that the index rose exactly when `f` reported a change.
fn apply(catalog: &mut Catalog, f: impl FnOnce(&mut Catalog) -> Vec<Change>) -> Vec<Change> {
    let before = catalog.index();
    let changes = f(catalog);
    if changes.is_empty() {
        assert_eq!(catalog.index(), before, "a no-op must not move the index");
    } else {
        assert!(catalog.index() > before, "{changes:?} must move the index");
    }
    changes
}

fn register(catalog: &mut Catalog, service: NewService, now: Instant) -> Vec<Change> {
    apply(catalog, |c| {
        c.register(service, now).expect("the registration is valid")
    })
}

fn report(catalog: &mut Catalog, check_id: &str, status: Status, now: Instant) -> Vec<Change> {
    apply(catalog, |c| {
        c.report(check_id, status, String::new(), now)
            .expect("the check exists")
    })
}

#[test]
fn registering_bumps_the_index_and_repeating_it_identically_does_not() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let web = service(
        "web-1",
        "web",
        vec![ttl_check("service:web-1", 10 * SECOND, None)],
    );
    let first = register(&mut catalog, web.clone(), now);
    assert_eq!(
        first,
        vec![Change::Registered {
            id: "web-1".into(),
            name: "web".into(),
            replaced: false
        }]
    );
    assert!(register(&mut catalog, web.clone(), now).is_empty());

    let moved = NewService { port: 9090, ..web };
    let second = register(&mut catalog, moved, now);
    assert_eq!(
        second,
        vec![Change::Registered {
            id: "web-1".into(),
            name: "web".into(),
            replaced: true
        }]
    );
    assert_eq!(catalog.instances().count(), 1);
}

#[test]
fn every_status_change_bumps_the_index_and_a_repeated_status_does_not() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let web = service(
        "web-1",
        "web",
        vec![ttl_check("service:web-1", 10 * SECOND, None)],
    );
    register(&mut catalog, web, now);
    for (status, changes) in [
        (Status::Passing, 1),
        (Status::Passing, 0),
        (Status::Warning, 1),
        (Status::Critical, 1),
        (Status::Critical, 0),
        (Status::Passing, 1),
    ] {
        assert_eq!(
            report(&mut catalog, "service:web-1", status, now).len(),
            changes,
            "{status}"
        );
    }
    assert_eq!(status_of(&catalog, "web-1"), vec![Status::Passing]);
}

#[test]
fn an_unpassed_ttl_check_turns_critical_on_the_first_tick_after_its_ttl() {
    let (mut catalog, start) = (Catalog::default(), Instant::now());
    let web = service(
        "web-1",
        "web",
        vec![ttl_check("service:web-1", 10 * SECOND, None)],
    );
    register(&mut catalog, web, start);
    report(&mut catalog, "service:web-1", Status::Passing, start);

    assert!(apply(&mut catalog, |c| c.tick(start + 9 * SECOND)).is_empty());
    let expired = apply(&mut catalog, |c| c.tick(start + 11 * SECOND));
    assert_eq!(
        expired,
        vec![Change::StatusChanged {
            check_id: "service:web-1".into(),
            service_id: "web-1".into(),
            from: Status::Passing,
            to: Status::Critical,
        }]
    );
    assert!(apply(&mut catalog, |c| c.tick(start + 12 * SECOND)).is_empty());
}

#[test]
fn deregister_after_critical_removes_the_instance_only_after_the_configured_time() {
    let (mut catalog, start) = (Catalog::default(), Instant::now());
    let check = ttl_check("service:web-1", 5 * SECOND, Some(60 * SECOND));
    register(&mut catalog, service("web-1", "web", vec![check]), start);
    report(&mut catalog, "service:web-1", Status::Passing, start);

    apply(&mut catalog, |c| c.tick(start + 5 * SECOND)); // critical from here
    assert!(apply(&mut catalog, |c| c.tick(start + 64 * SECOND)).is_empty());
    assert_eq!(catalog.instances().count(), 1);

    let reaped = apply(&mut catalog, |c| c.tick(start + 65 * SECOND));
    assert_eq!(
        reaped,
        vec![Change::Reaped {
            id: "web-1".into(),
            name: "web".into(),
            check_id: "service:web-1".into()
        }]
    );
    assert_eq!(catalog.instances().count(), 0);
}

#[test]
fn an_instance_without_deregister_after_stays_however_long_it_is_critical() {
    let (mut catalog, start) = (Catalog::default(), Instant::now());
    let check = ttl_check("service:web-1", SECOND, None);
    register(&mut catalog, service("web-1", "web", vec![check]), start);
    apply(&mut catalog, |c| c.tick(start + 86_400 * SECOND));
    assert_eq!(status_of(&catalog, "web-1"), vec![Status::Critical]);
}

#[test]
fn deregistering_removes_the_instance_and_an_unknown_id_is_no_change() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    register(&mut catalog, service("web-1", "web", vec![]), now);
    assert!(apply(&mut catalog, |c| c.deregister("web-2")).is_empty());
    assert_eq!(apply(&mut catalog, |c| c.deregister("web-1")).len(), 1);
    assert_eq!(catalog.instances().count(), 0);
}

#[test]
fn reports_for_unknown_checks_and_http_checks_are_refused() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let before = catalog.index();
    assert_eq!(
        catalog.report("service:nope", Status::Passing, String::new(), now),
        Err(CheckError::Unknown)
    );
    register(
        &mut catalog,
        service("web-1", "web", vec![http_check("service:web-1")]),
        now,
    );
    assert_eq!(
        catalog.report("service:web-1", Status::Passing, String::new(), now),
        Err(CheckError::NotTtl)
    );
    assert_eq!(catalog.index(), before + 1);
}

#[test]
fn re_registering_keeps_the_status_of_checks_that_keep_their_id() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let checks = vec![
        ttl_check("a", 10 * SECOND, None),
        ttl_check("b", 10 * SECOND, None),
    ];
    register(&mut catalog, service("web-1", "web", checks), now);
    report(&mut catalog, "a", Status::Passing, now);

    let checks = vec![
        ttl_check("a", 20 * SECOND, None),
        ttl_check("c", 10 * SECOND, None),
    ];
    register(&mut catalog, service("web-1", "web", checks), now);
    assert_eq!(
        status_of(&catalog, "web-1"),
        vec![Status::Passing, Status::Critical]
    );
}

#[test]
fn check_ids_cannot_be_taken_from_another_service() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let check = ttl_check("shared", SECOND, None);
    register(
        &mut catalog,
        service("web-1", "web", vec![check.clone()]),
        now,
    );
    let before = catalog.index();
    assert!(
        catalog
            .register(service("web-2", "web", vec![check]), now)
            .is_err()
    );
    assert_eq!(catalog.index(), before);
}

#[test]
fn a_service_index_moves_only_with_changes_to_that_service() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    register(&mut catalog, service("web-1", "web", vec![]), now);
    let web = catalog.service_index("web");
    register(&mut catalog, service("db-1", "db", vec![]), now);
    assert_eq!(catalog.service_index("web"), web);
    assert!(catalog.service_index("db") > web);

    apply(&mut catalog, |c| c.deregister("web-1"));
    assert!(
        catalog.service_index("web") > catalog.service_index("db"),
        "leaving is a change too"
    );
}

#[test]
fn probe_results_for_a_replaced_registration_are_ignored() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    register(
        &mut catalog,
        service("web-1", "web", vec![http_check("h")]),
        now,
    );
    let jobs = catalog.due_probes(now);
    assert_eq!(jobs.len(), 1);
    assert!(
        catalog.due_probes(now).is_empty(),
        "a probe is handed out once per interval"
    );

    let moved = NewService {
        port: 9999,
        ..service("web-1", "web", vec![http_check("h")])
    };
    register(&mut catalog, moved, now);
    assert!(
        apply(&mut catalog, |c| c.record_probe(
            &jobs[0],
            Status::Passing,
            String::new(),
            now
        ))
        .is_empty()
    );

    let fresh = catalog.due_probes(now);
    let recorded = apply(&mut catalog, |c| {
        c.record_probe(&fresh[0], Status::Passing, String::new(), now)
    });
    assert_eq!(recorded.len(), 1);
}

#[test]
fn passing_means_every_check_passes_and_a_warning_does_not() {
    let (mut catalog, now) = (Catalog::default(), Instant::now());
    let checks = vec![
        ttl_check("a", 10 * SECOND, None),
        ttl_check("b", 10 * SECOND, None),
    ];
    register(&mut catalog, service("web-1", "web", checks), now);
    let passing = |catalog: &Catalog| catalog.instances().all(Instance::is_passing);
    report(&mut catalog, "a", Status::Passing, now);
    assert!(!passing(&catalog));
    report(&mut catalog, "b", Status::Warning, now);
    assert!(!passing(&catalog));
    report(&mut catalog, "b", Status::Passing, now);
    assert!(passing(&catalog));
}
