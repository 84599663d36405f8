//! Tests of `effects.rs`: stop-cluster, load-balancer hooks, the VIP after a database stop, the
//! kernel peer table, the lease floor and lapse flag, ending sessions, remote checks.

use efm_common::wire::FLAG_LEASE_LAPSED;

use super::tests::*;
use super::*;

fn lb(s: &Step) -> Vec<(bool, SocketAddr, bool)> {
    s.actions
        .iter()
        .filter_map(|a| {
            if let Action::LoadBalancer { attach, node, primary } = a {
                Some((*attach, *node, *primary))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn stop_cluster_starts_nothing_lifts_the_lease_and_exits_after_the_linger() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert!(s.desired.lease_enforced && !s.desired.fenced);
    let stop = |now: u64, db: LocalDb| Inputs { stop_cluster: true, ..inputs(now, Some(&c), false, &peers, db, &[]) };
    let s = e.step(&stop(100, PRIMARY_DB));
    assert!(!s.desired.fenced && !s.desired.lease_enforced, "serves without endorsements: the voters' agents exit");
    assert!(!s.actions.contains(&Action::Exit));
    // Peers exiting look like a failure: nothing is started any more.
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let s = e.step(&stop(1_000, failed));
    assert!(
        !s.actions.iter().any(|a| matches!(a, Action::PrimaryDbFailed { .. } | Action::Propose(_))),
        "{:?}",
        s.actions
    );
    let s = e.step(&stop(1_600, PRIMARY_DB));
    assert_eq!(s.actions.iter().filter(|a| **a == Action::Exit).count(), 1, "exits 1.5 s after it saw the stop");
    assert!(!e.step(&stop(1_700, PRIMARY_DB)).actions.contains(&Action::Exit), "once");
}

#[test]
fn load_balancer_attach_when_serving_and_detach_when_not() {
    let lb_cfg = |me: u8| EngineConfig { load_balancer: true, ..cfg(me) };
    let mut e = Engine::new(lb_cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert_eq!(lb(&s), vec![(true, addr(1), true)], "attached as a primary");
    assert!(lb(&step(&mut e, 50, Some(&c), false, &peers, PRIMARY_DB, &[])).is_empty(), "once");
    let s = step(&mut e, 100, Some(&c), false, &peers, LocalDb { failed: true, ..PRIMARY_DB }, &[]);
    assert_eq!(lb(&s), vec![(false, addr(1), true)], "detached when its database failed");
    // A standby: attached once its database is monitored, detached when it fails.
    let mut e = Engine::new(lb_cfg(2));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert_eq!(lb(&s), vec![(true, addr(2), false)]);
    let down = LocalDb {
        up: Some(false),
        in_recovery: None,
        failed: true,
        local_check_only: false,
        lsn: 0,
        timeline: 0,
        upstream: None,
    };
    let s = step(&mut e, 100, Some(&c), false, &[primary_view(1, 1, 10)], down, &[]);
    assert_eq!(lb(&s), vec![(false, addr(2), false)]);
    // A node whose database was not running at start is not detached: nothing was attached.
    let mut e = Engine::new(lb_cfg(2));
    assert!(lb(&step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], down, &[])).is_empty());
    // Without the scripts configured: nothing.
    let mut e = Engine::new(cfg(1));
    assert!(lb(&step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[])).is_empty());
}

#[test]
fn the_leader_detaches_a_peer_whose_agent_failed() {
    let mut e =
        Engine::new(EngineConfig { load_balancer: true, detach_on_agent_failure: true, ..PeerlessWitness::cfg() });
    let c = committed(1, Some(1));
    let dead = PeerView { alive: false, agent_age: Some(Duration::from_millis(800)), ..standby_view(2, 1, 100) };
    let s = step(&mut e, 0, Some(&c), true, &[primary_view(1, 1, 10), dead], LocalDb::default(), &[]);
    assert_eq!(lb(&s), vec![(false, addr(2), false)]);
    assert!(
        lb(&step(&mut e, 50, Some(&c), true, &[primary_view(1, 1, 10), dead], LocalDb::default(), &[])).is_empty(),
        "once"
    );
    let _ =
        step(&mut e, 100, Some(&c), true, &[primary_view(1, 1, 10), standby_view(2, 1, 100)], LocalDb::default(), &[]);
    let s = step(&mut e, 150, Some(&c), true, &[primary_view(1, 1, 10), dead], LocalDb::default(), &[]);
    assert_eq!(lb(&s), vec![(false, addr(2), false)], "back and failed again: detached again");
    let mut f =
        Engine::new(EngineConfig { load_balancer: true, detach_on_agent_failure: true, ..PeerlessWitness::cfg() });
    assert!(
        lb(&step(&mut f, 0, Some(&c), false, &[primary_view(1, 1, 10), dead], LocalDb::default(), &[])).is_empty(),
        "only the leader"
    );
}

#[test]
fn the_vip_is_released_only_after_the_database_stop_completed() {
    let mut e =
        Engine::new(EngineConfig { vip: Some("198.18.0.100".parse().unwrap()), stop_failed_primary: true, ..cfg(1) });
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert_eq!(s.actions.last(), Some(&Action::Vip { assign: true }));
    assert!(
        !step(&mut e, 10, Some(&c), false, &peers, PRIMARY_DB, &[])
            .actions
            .iter()
            .any(|a| matches!(a, Action::Vip { .. })),
        "one change at a time"
    );
    let s = step(&mut e, 20, Some(&c), false, &peers, PRIMARY_DB, &[Event::VipDone { assign: true, ok: true }]);
    assert!(s.actions.iter().any(|a| matches!(a, Action::Notify(crate::notify::Event::AssigningVip { .. }))));
    assert!(s.actions.contains(&Action::AnnounceVip));
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let s = step(&mut e, 100, Some(&c), false, &peers, failed, &[]);
    assert!(s.actions.contains(&Action::PrimaryDbFailed { epoch: 1, stop: true }));
    assert!(!s.actions.contains(&Action::Vip { assign: false }), "held while the database stops");
    assert!(!step(&mut e, 2_000, Some(&c), false, &peers, failed, &[])
        .actions
        .contains(&Action::Vip { assign: false }));
    let s = step(&mut e, 2_100, Some(&c), false, &peers, failed, &[Event::DbStopDone]);
    assert!(s.actions.contains(&Action::Vip { assign: false }), "{:?}", s.actions);
}

#[test]
fn the_kernel_peer_table_follows_the_allowed_members() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10), witness_view(3, 1), standby_view(4, 1, 100)];
    let allowed: BTreeSet<SocketAddr> = [addr(1), addr(2), addr(3)].into();
    let s = e.step(&Inputs { allowed: &allowed, ..inputs(0, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert_eq!(
        s.actions.first(),
        Some(&Action::SetPeerTable { members: vec![addr(1), addr(3)] }),
        "before anything else"
    );
    let s = e.step(&Inputs { allowed: &allowed, ..inputs(50, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert!(!s.actions.iter().any(|a| matches!(a, Action::SetPeerTable { .. })));
    let fewer: BTreeSet<SocketAddr> = [addr(1), addr(2)].into();
    let s = e.step(&Inputs { allowed: &fewer, ..inputs(100, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert!(s.actions.contains(&Action::SetPeerTable { members: vec![addr(1)] }));
    let failed = [Event::PeerTableFailed];
    let s = e.step(&Inputs { allowed: &fewer, ..inputs(150, Some(&c), false, &peers, STANDBY_DB, &failed) });
    assert!(s.actions.contains(&Action::SetPeerTable { members: vec![addr(1)] }), "written again after a failure");
}

#[test]
fn a_lapsed_lease_is_announced_only_once_it_was_granted() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let kernel =
        |now: u64, deadline_ms: u64| KernelState { deadline_ns: deadline_ms * MS, ..lease_kernel(1, now, None) };
    let at = |e: &mut Engine, now: u64, deadline_ms: u64| {
        e.step(&Inputs { kernel: kernel(now, deadline_ms), ..inputs(now, Some(&c), false, &[], PRIMARY_DB, &[]) })
    };
    assert_eq!(at(&mut e, 5_000, 0).desired.ping_flags & FLAG_LEASE_LAPSED, 0, "never granted (start-up)");
    // The floor: granted until 6 s (the start of enforcement + lease.timeout), whatever an
    // earlier epoch's deadline says.
    assert_eq!(at(&mut e, 5_500, 4_000).desired.ping_flags & FLAG_LEASE_LAPSED, 0);
    assert_ne!(at(&mut e, 6_100, 4_000).desired.ping_flags & FLAG_LEASE_LAPSED, 0, "granted, then lapsed: said so");
    assert_eq!(at(&mut e, 6_200, 7_000).desired.ping_flags & FLAG_LEASE_LAPSED, 0, "endorsed again");
}

#[test]
fn sessions_end_when_the_kernel_stops_serving_before_the_database_is_stopped() {
    let mut e = Engine::new(EngineConfig { stop_failed_primary: true, ..cfg(1) });
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let valid = |now: u64| lease_kernel(1, now, None);
    let s = e.step(&Inputs { kernel: valid(0), ..inputs(0, Some(&c), false, &peers, PRIMARY_DB, &[]) });
    assert!(!s.actions.iter().any(|a| matches!(a, Action::EndSessions { .. })));
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let s = e.step(&Inputs { kernel: valid(100), ..inputs(100, Some(&c), false, &peers, failed, &[]) });
    let end = s.actions.iter().position(|a| matches!(a, Action::EndSessions { members_spared: false, why: "fenced" }));
    let stop = s.actions.iter().position(|a| matches!(a, Action::PrimaryDbFailed { stop: true, .. }));
    assert!(end.is_some() && stop.is_some() && end < stop, "{:?}", s.actions);
}

#[test]
fn a_promotion_completion_counts_before_the_local_monitor_sees_it() {
    let mut e = Engine::new(cfg(2));
    let c = committed(2, Some(2));
    let peers = [witness_view(3, 2)];
    let s = step(&mut e, 0, Some(&c), false, &peers, STANDBY_DB, &[]);
    assert!(s.actions.iter().any(|a| matches!(a, Action::PromoteLocal { epoch: 2, .. })));
    let s = step(&mut e, 100, Some(&c), false, &peers, STANDBY_DB, &[Event::Promoted { epoch: 2 }]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 }, "pg_promote() confirmed it");
    assert!(!s.desired.fenced && s.db.in_recovery == Some(false));
    let s = step(&mut e, 200, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 });
}
