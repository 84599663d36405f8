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
    assert!(
        matches!(&s.outcome, Outcome::PromotionRefused { epoch: 1, reason } if reason.contains("02:00:00:00:00:01"))
    );
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
        let s =
            e.step(&Inputs { ping_failed: &orphaned, ..inputs(now, Some(&c), true, &peers, LocalDb::default(), &[]) });
        if promotes(&s) {
            last = Some(s.outcome);
            break;
        }
    }
    assert_eq!(last, Some(Outcome::PromotionProposed { candidate: addr(4), epoch: 1 }));
    // Only orphaned standbys: no promotion, and the reason says why.
    let both: BTreeSet<SocketAddr> = [addr(2), addr(4)].into();
    let mut e =
        Engine::new(EngineConfig { ping_server: Some("198.18.0.9".parse().unwrap()), ..PeerlessWitness::cfg() });
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

/// Steps a leading witness (node 3) with the log's voters allowed.
fn leader_step(e: &mut Engine, now: u64, c: &Committed, peers: &[PeerView]) -> Step {
    let allowed: BTreeSet<SocketAddr> = c.nodes.keys().copied().collect();
    e.step(&Inputs { allowed: &allowed, ..inputs(now, Some(c), true, peers, LocalDb::default(), &[]) })
}

#[test]
fn the_leader_says_when_no_standby_agent_is_left() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let c = committed(1, Some(1));
    let s = leader_step(&mut e, 0, &c, &[primary_view(1, 1, 10), standby_view(2, 1, 100)]);
    assert!(notices(&s).is_empty());
    let gone = PeerView { alive: false, agent_age: Some(Duration::from_secs(1)), ..standby_view(2, 1, 100) };
    let s = leader_step(&mut e, 50, &c, &[primary_view(1, 1, 10), gone]);
    assert_eq!(notices(&s), vec![Notice::NoStandbyAgent]);
    let s = leader_step(&mut e, 100, &c, &[primary_view(1, 1, 10), gone]);
    assert!(notices(&s).is_empty(), "once until a standby agent is back");
}

#[test]
fn the_leader_says_when_the_standbys_drop_to_minimum_standbys() {
    let mut c = committed(1, Some(1));
    c.nodes.insert(addr(4), NodeMeta { witness: false, priority: 2, promotable: true });
    let mut e = Engine::new(EngineConfig { minimum_standbys: 1, ..PeerlessWitness::cfg() });
    let both = [primary_view(1, 1, 10), standby_view(2, 1, 100), standby_view(4, 1, 100)];
    assert!(notices(&leader_step(&mut e, 0, &c, &both)).is_empty());
    let down = PeerView { db_up: false, role: PeerRole::Idle, ..standby_view(4, 1, 0) };
    let s = leader_step(&mut e, 50, &c, &[primary_view(1, 1, 10), standby_view(2, 1, 100), down]);
    assert!(notices(&s).contains(&Notice::NoStandbysAvailable { minimum: 1 }), "{:?}", notices(&s));
}

#[test]
fn a_node_cut_off_from_the_majority_says_so_and_says_when_it_is_back() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let all = [primary_view(1, 1, 10), witness_view(3, 1)];
    let allowed: BTreeSet<SocketAddr> = c.nodes.keys().copied().collect();
    let at = |e: &mut Engine, now: u64, peers: &[PeerView], ping: &BTreeSet<SocketAddr>| {
        e.step(&Inputs { allowed: &allowed, ping_failed: ping, ..inputs(now, Some(&c), false, peers, STANDBY_DB, &[]) })
    };
    let none = BTreeSet::new();
    assert!(notices(&at(&mut e, 0, &all, &none)).is_empty());
    let dead = |p: PeerView| PeerView { alive: false, agent_age: None, ..p };
    let s = at(&mut e, 50, &[dead(primary_view(1, 1, 10)), dead(witness_view(3, 1))], &none);
    assert!(notices(&s).contains(&Notice::NodesIsolated { visible: vec![] }), "{:?}", notices(&s));
    let s = at(&mut e, 100, &all, &none);
    assert!(notices(&s).contains(&Notice::NoLongerIsolated));
    // Five voters, two visible besides itself is a majority; one is a subset.
    let mut c5 = c.clone();
    c5.nodes.insert(addr(4), NodeMeta { witness: false, priority: 1, promotable: true });
    c5.nodes.insert(addr(5), NodeMeta { witness: false, priority: 1, promotable: true });
    let allowed5: BTreeSet<SocketAddr> = c5.nodes.keys().copied().collect();
    let mut e = Engine::new(cfg(2));
    let peers5 = [primary_view(1, 1, 10), witness_view(3, 1), standby_view(4, 1, 0), standby_view(5, 1, 0)];
    let _ = e.step(&Inputs { allowed: &allowed5, ..inputs(0, Some(&c5), false, &peers5, STANDBY_DB, &[]) });
    let cut =
        [primary_view(1, 1, 10), dead(witness_view(3, 1)), dead(standby_view(4, 1, 0)), dead(standby_view(5, 1, 0))];
    let s = e.step(&Inputs { allowed: &allowed5, ..inputs(50, Some(&c5), false, &cut, STANDBY_DB, &[]) });
    assert_eq!(notices(&s), vec![Notice::SubsetDisconnected { visible: vec![addr(1).to_string()] }]);
}

#[test]
fn a_member_without_a_heartbeat_slot_and_a_log_behind_the_kernel_are_reported() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let mut allowed: BTreeSet<SocketAddr> = c.nodes.keys().copied().collect();
    allowed.insert(addr(9));
    let peers = [primary_view(1, 1, 10), witness_view(3, 1)];
    let kernel = KernelState { max_epoch_seen: 2, ..KernelState::default() };
    let s = e.step(&Inputs { allowed: &allowed, kernel, ..inputs(0, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert!(matches!(&notices(&s)[..], [Notice::CommunicationError { node, .. }] if *node == addr(9).to_string()));
    let s = e.step(&Inputs { allowed: &allowed, kernel, ..inputs(4_000, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert!(notices(&s).is_empty(), "once per member; the log may catch up within 5 s");
    let s = e.step(&Inputs { allowed: &allowed, kernel, ..inputs(5_100, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert!(matches!(&notices(&s)[..], [Notice::InternalStateMismatch { detail }] if detail.contains("epoch 2")));
}

#[test]
fn a_standby_without_auto_reconfigure_says_it_still_follows_another_server() {
    let mut e = Engine::new(EngineConfig { auto_reconfigure: false, ..cfg(2) });
    let c = committed(2, Some(4));
    let old = LocalDb { upstream: Some(addr(1).ip()), ..STANDBY_DB };
    let s = step(&mut e, 0, Some(&c), false, &[witness_view(3, 2)], old, &[]);
    assert_eq!(notices(&s), vec![Notice::StandbyNotReconfigured { new_primary: addr(4).to_string() }]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::Follow { .. })));
    let s = step(&mut e, 50, Some(&c), false, &[witness_view(3, 2)], old, &[]);
    assert!(notices(&s).is_empty(), "once per epoch");
}

#[test]
fn a_vip_found_on_a_non_primary_is_released_with_efms_notice_and_a_failed_assignment_is_reported_once() {
    let vip = Some("198.18.0.100".parse().unwrap());
    let mut e = Engine::new(EngineConfig { vip, ..cfg(2) });
    e.set_vip_held(true);
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert!(s.actions.contains(&Action::Vip { assign: false }));
    assert_eq!(notices(&s), vec![Notice::VipOnNonPrimary { vip: "198.18.0.100".into() }]);
    // The primary fails to assign it: one notice per run of failures.
    let mut p = Engine::new(EngineConfig { vip, ..cfg(1) });
    let s = step(&mut p, 0, Some(&c), false, &[standby_view(2, 1, 0)], PRIMARY_DB, &[]);
    assert!(s.actions.contains(&Action::Vip { assign: true }));
    let failed = [Event::VipDone { assign: true, ok: false }];
    let s = step(&mut p, 50, Some(&c), false, &[standby_view(2, 1, 0)], PRIMARY_DB, &failed);
    assert!(matches!(&notices(&s)[..], [Notice::VipAssignFailed { .. }]));
    let s = step(&mut p, 100, Some(&c), false, &[standby_view(2, 1, 0)], PRIMARY_DB, &failed);
    assert!(notices(&s).is_empty(), "retried, not notified again");
}

#[test]
fn an_auto_resume_period_announces_the_check() {
    let mut e = Engine::new(EngineConfig { auto_resume_failure: Duration::from_secs(30), ..cfg(2) });
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, STANDBY_DB, &[]);
    let down = LocalDb { up: Some(false), failed: true, ..STANDBY_DB };
    let s = step(&mut e, 50, Some(&c), false, &peers, down, &[]);
    assert!(notices(&s).contains(&Notice::AutoResumeCheckStarted { period_secs: 30 }), "{:?}", notices(&s));
}

#[test]
fn the_leader_says_when_the_primary_database_answers_while_its_agent_is_gone() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let c = committed(1, Some(1));
    let gone = PeerView { alive: false, agent_age: Some(Duration::from_secs(2)), ..primary_view(1, 1, 0) };
    let s = step(&mut e, 0, Some(&c), true, &[gone], LocalDb::default(), &[]);
    assert!(!notices(&s).iter().any(|n| matches!(n, Notice::PromotionRefusedPrimaryRunning { .. })));
    let answered = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let s = step(&mut e, 100, Some(&c), true, &[gone], LocalDb::default(), &answered);
    assert_eq!(
        notices(&s).into_iter().filter(|n| matches!(n, Notice::PromotionRefusedPrimaryRunning { .. })).count(),
        1
    );
    let s = step(&mut e, 200, Some(&c), true, &[gone], LocalDb::default(), &[]);
    assert!(!notices(&s).iter().any(|n| matches!(n, Notice::PromotionRefusedPrimaryRunning { .. })), "once");
}
