use super::*;

fn node(port: u16, role: Role, passive: bool, sync: SyncState) -> Node {
    Node {
        addr: HostPort {
            host: "127.0.0.1".into(),
            port,
        },
        role,
        passive,
        server_version: "15".into(),
        system_identifier: "1".into(),
        pause_state: "not paused".into(),
        receiver_name: None,
        sync_state: sync,
    }
}

fn topology(nodes: Vec<Node>) -> Topology {
    Topology {
        nodes,
        unreachable: Vec::new(),
    }
}

#[test]
fn a_passive_replica_is_preferred_over_an_asynchronous_one() {
    let t = topology(vec![
        node(1, Role::Primary, false, SyncState::Unknown),
        node(2, Role::Replica, false, SyncState::Async),
        node(3, Role::Replica, true, SyncState::Async),
    ]);
    let choice = choose(&t, false).expect("a replica");
    assert_eq!(choice.node.addr.port, 3);
    assert!(choice.reason.contains("passive"));
}

#[test]
fn an_asynchronous_replica_beats_a_potential_one_and_a_sync_one_is_never_chosen() {
    let t = topology(vec![
        node(1, Role::Primary, false, SyncState::Unknown),
        node(2, Role::Replica, false, SyncState::Sync),
        node(3, Role::Replica, false, SyncState::Potential),
        node(4, Role::Replica, false, SyncState::Async),
    ]);
    assert_eq!(choose(&t, false).expect("a replica").node.addr.port, 4);
    let only_sync = topology(vec![
        node(1, Role::Primary, false, SyncState::Unknown),
        node(2, Role::Replica, false, SyncState::Sync),
        node(3, Role::Replica, true, SyncState::Quorum),
    ]);
    let refused = choose(&only_sync, false).expect_err("no usable replica");
    assert!(refused.to_string().contains("--allow-primary"), "{refused}");
    assert!(
        refused.to_string().contains("127.0.0.1:2: it is sync"),
        "{refused}"
    );
}

#[test]
fn the_primary_is_chosen_only_when_allowed() {
    let t = topology(vec![node(1, Role::Primary, false, SyncState::Unknown)]);
    assert!(choose(&t, false).is_err());
    let choice = choose(&t, true).expect("allowed");
    assert_eq!(choice.node.role, Role::Primary);
}

#[test]
fn a_replica_paused_by_someone_else_is_skipped() {
    let mut paused = node(2, Role::Replica, true, SyncState::Async);
    paused.pause_state = "paused".into();
    let t = topology(vec![
        node(1, Role::Primary, false, SyncState::Unknown),
        paused,
        node(3, Role::Replica, false, SyncState::Async),
    ]);
    assert_eq!(choose(&t, false).expect("a replica").node.addr.port, 3);
}

#[test]
fn two_primaries_are_a_split_cluster() {
    let t = topology(vec![
        node(1, Role::Primary, false, SyncState::Unknown),
        node(2, Role::Primary, false, SyncState::Unknown),
    ]);
    let e = choose(&t, true).expect_err("split");
    assert!(e.to_string().contains("split"), "{e}");
}

#[test]
fn the_receiver_name_comes_from_conninfo_then_cluster_name() {
    let info = "user=postgres host=127.0.0.1 port=5 application_name=replica2 sslmode=prefer";
    assert_eq!(receiver_name(Some(info), "ignored"), "replica2");
    assert_eq!(receiver_name(Some("host=x"), "pg-b"), "pg-b");
    assert_eq!(receiver_name(None, ""), "walreceiver");
}

#[test]
fn disagreeing_rows_for_one_name_make_the_state_unknown() {
    let rows = vec![
        Standby {
            application_name: "walreceiver".into(),
            sync_state: "sync".into(),
        },
        Standby {
            application_name: "walreceiver".into(),
            sync_state: "async".into(),
        },
        Standby {
            application_name: "r3".into(),
            sync_state: "async".into(),
        },
    ];
    assert_eq!(
        sync_state_of(Some("walreceiver"), &rows),
        SyncState::Unknown
    );
    assert_eq!(sync_state_of(Some("r3"), &rows), SyncState::Async);
    assert_eq!(sync_state_of(Some("r9"), &rows), SyncState::Unknown);
}
