//! Tests of the guarded promotion (`check.vip.before.promotion`, `ping.server.ip`) and of the
//! standby database failure notifications.

use super::tests::*;
use super::*;
use efm_common::wire::FLAG_PING_SERVER_FAILED;

fn guarded_witness() -> EngineConfig {
    EngineConfig { vip_guard: true, vip: Some("198.18.0.100".parse().unwrap()), ..PeerlessWitness::cfg() }
}

fn notices(s: &Step) -> Vec<Notice> {
    s.actions.iter().filter_map(|a| if let Action::Notify(n) = a { Some(n.clone()) } else { None }).collect()
}

fn promotes(s: &Step) -> bool {
    proposals(s).iter().any(|p| matches!(p, Proposal::Promote { .. }))
}

fn probes(s: &Step) -> usize {
    s.actions.iter().filter(|a| matches!(a, Action::ProbeVip)).count()
}

/// Primary 1 dead, standby 2 alive, 2 and 3 voted: a promotion of 2 is due.
fn due() -> (Committed, [PeerView; 2]) {
    let mut c = committed(1, Some(1));
    c.votes.extend([addr(2), addr(3)]);
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    (c, [dead, standby_view(2, 1, 120)])
}

#[test]
fn a_vip_answered_elsewhere_refuses_the_promotion_until_it_is_silent() {
    let mut e = Engine::new(guarded_witness());
    let (c, peers) = due();
    // The probe starts as soon as the promotion is due, beside the wait for positions.
    let s = step(&mut e, 10, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert_eq!(probes(&s), 1);
    assert!(!promotes(&s));
    // Positions settled, probe still running: no proposal.
    let s = step(&mut e, 200, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert_eq!(s.outcome, Outcome::CheckingVip { epoch: 1 });
    assert!(!promotes(&s) && probes(&s) == 0, "one probe at a time");
    // Another host answers: refused, EFM's notification once.
    let answered = [Event::VipProbed { holder: Some("02:00:00:00:00:01".into()) }];
    let s = step(&mut e, 300, Some(&c), true, &peers, LocalDb::default(), &answered);
    assert!(matches!(&s.outcome, Outcome::PromotionRefused { epoch: 1, reason } if reason.contains("02:00:00:00:00:01")));
    assert!(!promotes(&s));
    assert_eq!(
        notices(&s),
        vec![Notice::PromotionRefusedVipAssigned { vip: "198.18.0.100".into(), candidate: addr(2).to_string() }]
    );
    // Still refused while the answer is fresh; probed again after a second; no second notice.
    let s = step(&mut e, 800, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(matches!(s.outcome, Outcome::PromotionRefused { .. }) && probes(&s) == 0 && !promotes(&s));
    let s = step(&mut e, 1_400, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert_eq!(probes(&s), 1, "asked again");
    let s = step(&mut e, 1_700, Some(&c), true, &peers, LocalDb::default(), &answered);
    assert!(matches!(s.outcome, Outcome::PromotionRefused { .. }) && !promotes(&s));
    assert!(notices(&s).is_empty(), "one notification per epoch");
    // Nobody answers any more: the promotion proceeds at once.
    let s = step(&mut e, 2_800, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert_eq!(probes(&s), 1);
    let s = step(&mut e, 3_100, Some(&c), true, &peers, LocalDb::default(), &[Event::VipProbed { holder: None }]);
    assert!(promotes(&s), "{:?}", s.outcome);
    assert_eq!(s.outcome, Outcome::PromotionProposed { candidate: addr(2), epoch: 1 });
}

#[test]
fn without_the_guard_nothing_is_probed() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let (c, peers) = due();
    for now in [10, 200] {
        let s = step(&mut e, now, Some(&c), true, &peers, LocalDb::default(), &[]);
        assert_eq!(probes(&s), 0);
        if now == 200 {
            assert!(promotes(&s), "{:?}", s.outcome);
        }
    }
}

#[test]
fn a_candidate_that_cannot_reach_the_ping_server_is_not_chosen() {
    let mut c = committed(1, Some(1));
    c.nodes.insert(addr(4), NodeMeta { witness: false, priority: 2, promotable: true });
    c.votes.extend([addr(2), addr(3), addr(4)]);
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    // 2 is ahead and preferred, but declines.
    let peers = [dead, standby_view(2, 1, 200), standby_view(4, 1, 100)];
    let orphaned: BTreeSet<SocketAddr> = [addr(2)].into();
    let mut e = Engine::new(PeerlessWitness::cfg());
    let mut last = None;
    for now in [10, 200, 400] {
        let s = e.step(&Inputs { ping_failed: &orphaned, ..inputs(now, Some(&c), true, &peers, LocalDb::default(), &[]) });
        if promotes(&s) {
            last = Some(s.outcome);
            break;
        }
    }
    assert_eq!(last, Some(Outcome::PromotionProposed { candidate: addr(4), epoch: 1 }));
    // Only orphaned standbys: no promotion, and the reason says why.
    let both: BTreeSet<SocketAddr> = [addr(2), addr(4)].into();
    let mut e = Engine::new(EngineConfig { ping_server: Some("198.18.0.9".parse().unwrap()), ..PeerlessWitness::cfg() });
    let s = e.step(&Inputs { ping_failed: &both, ..inputs(10, Some(&c), true, &peers, LocalDb::default(), &[]) });
    assert!(!promotes(&s));
    assert!(
        matches!(&s.outcome, Outcome::NoCandidate { reason, .. } if reason.contains("ping.server.ip 198.18.0.9")),
        "{:?}",
        s.outcome
    );
    assert!(matches!(&notices(&s)[..], [Notice::FailoverNotOccurred { .. }]));
}

#[test]
fn an_orphaned_standby_says_so_in_its_pings_and_declines_once_a_promotion_is_due() {
    let me: BTreeSet<SocketAddr> = [addr(2)].into();
    let mut e = Engine::new(EngineConfig { ping_server: Some("198.18.0.9".parse().unwrap()), ..cfg(2) });
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10), witness_view(3, 1)];
    let s = e.step(&Inputs { ping_failed: &me, ..inputs(0, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert_ne!(s.desired.ping_flags & FLAG_PING_SERVER_FAILED, 0, "the leader learns it from the PINGs");
    assert!(notices(&s).is_empty(), "no promotion is due");
    let (c, _) = due();
    let dead = [PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) }, witness_view(3, 1)];
    let s = e.step(&Inputs { ping_failed: &me, ..inputs(100, Some(&c), false, &dead, STANDBY_DB, &[]) });
    assert_eq!(notices(&s), vec![Notice::PromotionRefusedOrphaned { server: "198.18.0.9".into() }]);
    let s = e.step(&Inputs { ping_failed: &me, ..inputs(200, Some(&c), false, &dead, STANDBY_DB, &[]) });
    assert!(notices(&s).is_empty(), "once per epoch");
    let s = step(&mut e, 300, Some(&c), false, &dead, STANDBY_DB, &[]);
    assert_eq!(s.desired.ping_flags & FLAG_PING_SERVER_FAILED, 0, "reached again");
}

#[test]
fn a_standby_database_failure_notifies_and_runs_the_failure_script_once() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), false, &peers, STANDBY_DB, &[]);
    assert!(!s.actions.contains(&Action::StandbyDbFailed));
    let down = LocalDb { up: Some(false), failed: true, ..STANDBY_DB };
    let s = e.step(&Inputs { db_error: Some("postmaster died"), ..inputs(100, Some(&c), false, &peers, down, &[]) });
    assert!(s.actions.contains(&Action::StandbyDbFailed), "{:?}", s.actions);
    assert_eq!(
        notices(&s),
        vec![Notice::DatabaseFailure { role: crate::notify::NodeRole::Standby, node: addr(2).to_string() }]
    );
    let s = step(&mut e, 200, Some(&c), false, &peers, down, &[]);
    assert!(!s.actions.contains(&Action::StandbyDbFailed) && notices(&s).is_empty(), "once per failure");
}

#[test]
fn a_database_not_running_at_start_is_not_a_standby_failure() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10), witness_view(3, 1)];
    let down = LocalDb { up: Some(false), in_recovery: None, failed: true, ..STANDBY_DB };
    let s = step(&mut e, 0, Some(&c), false, &peers, down, &[]);
    assert!(!s.actions.contains(&Action::StandbyDbFailed) && notices(&s).is_empty());
}

#[test]
fn the_leader_tells_a_failed_standby_database_from_an_agent_that_cannot_reach_it() {
    for (reachable, want) in [
        (false, Notice::StandbyDatabaseFailed { node: addr(2).to_string() }),
        (true, Notice::StandbyCannotReachDatabase { node: addr(2).to_string() }),
    ] {
        let mut e = Engine::new(PeerlessWitness::cfg());
        let c = committed(1, Some(1));
        let up = [primary_view(1, 1, 10), standby_view(2, 1, 100)];
        let s = step(&mut e, 0, Some(&c), true, &up, LocalDb::default(), &[]);
        assert!(!s.actions.iter().any(|a| matches!(a, Action::CheckRemoteDb { .. })));
        let down = [primary_view(1, 1, 10), PeerView { db_up: false, role: PeerRole::Idle, ..standby_view(2, 1, 0) }];
        let s = step(&mut e, 50, Some(&c), true, &down, LocalDb::default(), &[]);
        assert!(s.actions.contains(&Action::CheckRemoteDb { node: addr(2) }));
        let s = step(&mut e, 100, Some(&c), true, &down, LocalDb::default(), &[]);
        assert!(!s.actions.contains(&Action::CheckRemoteDb { node: addr(2) }), "one check per failure");
        let done = [Event::RemoteChecked { node: addr(2), reachable }];
        let s = step(&mut e, 2_000, Some(&c), true, &down, LocalDb::default(), &done);
        assert_eq!(notices(&s), vec![want]);
        let s = step(&mut e, 2_100, Some(&c), true, &down, LocalDb::default(), &[]);
        assert!(notices(&s).is_empty() && !s.actions.contains(&Action::CheckRemoteDb { node: addr(2) }));
    }
}

#[test]
fn a_follower_does_not_check_standbys() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let c = committed(1, Some(1));
    let up = [primary_view(1, 1, 10), standby_view(2, 1, 100)];
    let _ = step(&mut e, 0, Some(&c), false, &up, LocalDb::default(), &[]);
    let down = [primary_view(1, 1, 10), PeerView { db_up: false, role: PeerRole::Idle, ..standby_view(2, 1, 0) }];
    let s = step(&mut e, 50, Some(&c), false, &down, LocalDb::default(), &[]);
    assert!(!s.actions.contains(&Action::CheckRemoteDb { node: addr(2) }));
}
