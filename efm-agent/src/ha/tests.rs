//! Shared helpers of the engine's tests, and the tests that span roles: the own-role decision
//! table, the order on demotion, members' exemption.

use super::*;

pub(super) const MS: u64 = 1_000_000;

pub(super) fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, i], 7800))
}

pub(super) fn cfg(me: u8) -> EngineConfig {
    EngineConfig::basic(addr(me), false, Duration::from_secs(1), Duration::from_millis(50))
}

/// Three voters: 1 primary, 2 standby, 3 witness.
pub(super) fn committed(epoch: u64, primary: Option<u8>) -> Committed {
    let mut nodes = BTreeMap::new();
    nodes.insert(addr(1), NodeMeta { witness: false, priority: 1, promotable: true });
    nodes.insert(addr(2), NodeMeta { witness: false, priority: 1, promotable: true });
    nodes.insert(addr(3), NodeMeta { witness: true, priority: 0, promotable: false });
    Committed {
        epoch,
        primary: primary.map(addr),
        nodes,
        votes: BTreeSet::new(),
        auto_failover: true,
        previous_primary: None,
        handover: None,
        votes_short: false,
    }
}

pub(super) fn primary_view(i: u8, epoch: u64, age_ms: u64) -> PeerView {
    PeerView {
        addr: addr(i),
        alive: age_ms <= 500,
        agent_age: Some(Duration::from_millis(age_ms)),
        role: PeerRole::Primary,
        epoch,
        db_up: true,
        db_check: false,
        primary_db: None,
        fenced: false,
        lsn: 100,
        node_age: None,
        kernel: KernelPong::default(),
    }
}

/// Primary `i` of `epoch` whose agent was last heard `agent_ms` ago (`None`: never) while its
/// kernel answers (PONG 10 ms ago) serving `epoch` as primary.
pub(super) fn absent_primary_view(i: u8, epoch: u64, agent_ms: Option<u64>) -> PeerView {
    PeerView {
        alive: agent_ms.is_some_and(|a| a <= 500),
        agent_age: agent_ms.map(Duration::from_millis),
        node_age: Some(Duration::from_millis(10)),
        kernel: KernelPong { role: PeerRole::Primary, epoch, fenced: false },
        ..primary_view(i, epoch, 0)
    }
}

pub(super) fn standby_view(i: u8, epoch: u64, lsn: u64) -> PeerView {
    PeerView { role: PeerRole::Standby, lsn, ..primary_view(i, epoch, 10) }
}

pub(super) fn witness_view(i: u8, epoch: u64) -> PeerView {
    PeerView { role: PeerRole::Witness, db_up: false, ..primary_view(i, epoch, 10) }
}

pub(super) const STANDBY_DB: LocalDb = LocalDb {
    up: Some(true),
    in_recovery: Some(true),
    failed: false,
    local_check_only: false,
    lsn: 100,
    timeline: 1,
    upstream: None,
};
pub(super) const PRIMARY_DB: LocalDb = LocalDb {
    up: Some(true),
    in_recovery: Some(false),
    failed: false,
    local_check_only: false,
    lsn: 100,
    timeline: 1,
    upstream: None,
};
pub(super) static NO_MEMBERS: BTreeSet<SocketAddr> = BTreeSet::new();

/// The inputs of a step with nothing unusual: registered, no custom monitor, no stop, a kernel
/// that holds no fence yet.
pub(super) fn inputs<'a>(
    now_ms: u64,
    c: Option<&'a Committed>,
    leader: bool,
    peers: &'a [PeerView],
    db: LocalDb,
    events: &'a [Event],
) -> Inputs<'a> {
    Inputs {
        now_ns: now_ms * MS,
        committed: c,
        allowed: &NO_MEMBERS,
        registered: true,
        is_leader: leader,
        peers,
        db,
        db_error: None,
        custom_monitor_failed: None,
        stop_cluster: false,
        kernel: KernelState::default(),
        events,
        ping_failed: &NO_MEMBERS,
    }
}

pub(super) fn step(
    e: &mut Engine,
    now_ms: u64,
    c: Option<&Committed>,
    leader: bool,
    peers: &[PeerView],
    db: LocalDb,
    events: &[Event],
) -> Step {
    e.step(&inputs(now_ms, c, leader, peers, db, events))
}

/// A kernel holding `epoch`'s enforced lease (k = 1) whose deadline passed `lapsed_ms` ago at
/// `now_ms` (`None`: valid for another second).
pub(super) fn lease_kernel(epoch: u64, now_ms: u64, lapsed_ms: Option<u64>) -> KernelState {
    let fence = FenceState {
        flags: efm_common::maps::FENCE_LEASE_ENFORCED,
        epoch,
        lease_k: 1,
        lease_timeout_ns: 1_000 * MS,
        ..FenceState::default()
    };
    let deadline_ns = lapsed_ms.map_or((now_ms + 1_000) * MS, |l| (now_ms - l) * MS);
    KernelState { fence: Some(fence), deadline_ns, max_epoch_seen: epoch }
}

pub(super) fn proposals(s: &Step) -> Vec<Proposal> {
    s.actions.iter().filter_map(|a| if let Action::Propose(p) = a { Some(p.clone()) } else { None }).collect()
}

pub(super) struct PeerlessWitness;
impl PeerlessWitness {
    pub(super) fn cfg() -> EngineConfig {
        EngineConfig { is_witness: true, ..cfg(3) }
    }
}

pub(super) fn with_handover(mut c: Committed, to: u8, demote: bool) -> Committed {
    c.handover = Some(Handover { from: c.primary.unwrap(), to: addr(to), demote, quiet: false, source: None });
    c
}

#[test]
fn outcomes_read_well() {
    assert_eq!(Outcome::Voted { epoch: 4 }.to_string(), "voted against the primary of epoch 4");
    assert_eq!(
        Outcome::PromotionProposed { candidate: addr(2), epoch: 4 }.to_string(),
        "proposed promoting 198.18.0.2:7800 (epoch 4 → 5)"
    );
}

/// Only a hand-over asks the kernel to keep members exempt: a stale old primary (its database
/// still a primary after a newer epoch), a node at start-up and a failed primary fence them.
#[test]
fn members_stay_exempt_only_for_the_primary_handing_over() {
    let mut e = Engine::new(cfg(1));
    let peers = [standby_view(2, 2, 100), witness_view(3, 2)];
    let s = step(&mut e, 0, None, false, &peers, PRIMARY_DB, &[]);
    assert!(s.desired.fenced && !s.desired.members_exempt, "start-up");
    let c = committed(2, Some(2));
    let s = step(&mut e, 50, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert!(s.desired.fenced && !s.desired.members_exempt, "stale primary of an earlier epoch: {:?}", s.outcome);
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), true, &peers, PRIMARY_DB, &[]);
    assert!(!s.desired.fenced && !s.desired.members_exempt, "serving");
    let s = step(&mut e, 50, Some(&with_handover(c, 2, false)), true, &peers, PRIMARY_DB, &[]);
    assert!(s.desired.fenced && s.desired.members_exempt, "plain promote: the old primary hands over too");
}

/// Order on demotion: kernel fence → end sessions → stop the database → release the VIP. The
/// engine's part: every step that asks for the database to be stopped (or gives up the VIP)
/// already has the kernel not serving (fenced, or its lease lapsed), so the runtime — which
/// writes the kernel before it starts any action, ends the sessions on that change, and keeps
/// the VIP while a database stop runs — never stops a database, nor drops the VIP, in front of
/// a kernel that still passes clients.
#[test]
fn every_demotion_fences_the_kernel_in_the_step_that_stops_the_database() {
    let stops = |s: &Step| {
        s.actions.iter().any(|a| {
            matches!(
                a,
                Action::PrimaryDbFailed { .. }
                    | Action::DemoteLocal { .. }
                    | Action::PrimaryIsolated { .. }
                    | Action::HandOver { demote: true, .. }
            )
        })
    };
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    // Switchover: fenced in the step that starts the clean stop; the VIP is given up there too,
    // and the runtime holds it until the stop is done.
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let _ = step(&mut e, 0, Some(&c), true, &peers, PRIMARY_DB, &[]);
    let s = step(&mut e, 50, Some(&with_handover(c, 2, true)), true, &peers, PRIMARY_DB, &[]);
    assert!(stops(&s) && s.desired.fenced && !s.desired.vip);
    // Failed primary database.
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), true, &peers, LocalDb { failed: true, ..PRIMARY_DB }, &[]);
    assert!(stops(&s) && s.desired.fenced && !s.desired.vip);
    // Old primary of an earlier epoch.
    let mut e = Engine::new(cfg(1));
    let c = committed(2, Some(2));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(2, 2, 10)], PRIMARY_DB, &[]);
    assert!(stops(&s) && s.desired.fenced && !s.desired.vip);
    // Isolated primary: its kernel stopped serving (lease lapsed) long before the isolated
    // flow; the sessions ended then.
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let s = e.step(&Inputs {
        kernel: lease_kernel(1, 5_000, Some(1_200)),
        ..inputs(5_000, Some(&c), false, &[], PRIMARY_DB, &[])
    });
    assert!(stops(&s) && s.desired.lease_enforced && !s.desired.vip);
}

/// The own-role cascade of [`Engine::own_role`], row by row (the doc table there).
#[test]
#[expect(clippy::too_many_lines, reason = "the decision table, one row per block")]
fn own_role_decision_table() {
    let peers1 = [standby_view(2, 1, 100), witness_view(3, 1)];
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let down = LocalDb {
        up: Some(false),
        in_recovery: None,
        failed: true,
        local_check_only: false,
        lsn: 0,
        timeline: 0,
        upstream: None,
    };
    // (row, outcome kind, fenced, vip, the step)
    let rows: Vec<(u8, &str, bool, bool, Step)> = vec![
        (
            1,
            "witness",
            false,
            false,
            step(
                &mut Engine::new(PeerlessWitness::cfg()),
                0,
                Some(&committed(1, Some(1))),
                false,
                &[primary_view(1, 1, 10)],
                LocalDb::default(),
                &[],
            ),
        ),
        (
            2,
            "handing-over",
            true,
            false,
            step(
                &mut Engine::new(cfg(1)),
                0,
                Some(&with_handover(committed(1, Some(1)), 2, true)),
                false,
                &peers1,
                PRIMARY_DB,
                &[],
            ),
        ),
        (3, "primary-isolated", false, false, {
            let c = committed(1, Some(1));
            Engine::new(cfg(1)).step(&Inputs {
                kernel: lease_kernel(1, 5_000, Some(1_200)),
                ..inputs(5_000, Some(&c), false, &peers1, PRIMARY_DB, &[])
            })
        }),
        (
            4,
            "primary-database-failed",
            true,
            false,
            step(&mut Engine::new(cfg(1)), 0, Some(&committed(1, Some(1))), false, &peers1, failed, &[]),
        ),
        (
            5,
            "primary",
            false,
            true,
            step(&mut Engine::new(cfg(1)), 0, Some(&committed(1, Some(1))), false, &peers1, PRIMARY_DB, &[]),
        ),
        (
            6,
            "candidate",
            true,
            true,
            step(
                &mut Engine::new(cfg(2)),
                0,
                Some(&committed(2, Some(2))),
                false,
                &[witness_view(3, 2)],
                STANDBY_DB,
                &[],
            ),
        ),
        (7, "rejoining", true, false, {
            let mut e = Engine::new(cfg(1));
            let _ =
                step(&mut e, 0, Some(&with_handover(committed(1, Some(1)), 2, true)), false, &peers1, PRIMARY_DB, &[]);
            let _ = step(
                &mut e,
                500,
                Some(&with_handover(committed(1, Some(1)), 2, true)),
                false,
                &peers1,
                down,
                &[Event::HandedOver { epoch: 1 }],
            );
            step(
                &mut e,
                800,
                Some(&committed(2, Some(2))),
                false,
                &[primary_view(2, 2, 10), witness_view(3, 2)],
                down,
                &[],
            )
        }),
        (
            8,
            "registering-primary",
            true,
            false,
            step(&mut Engine::new(cfg(1)), 0, Some(&committed(0, None)), false, &[], PRIMARY_DB, &[]),
        ),
        (
            9,
            "fenced-old-primary",
            true,
            false,
            step(
                &mut Engine::new(cfg(1)),
                0,
                Some(&committed(2, Some(2))),
                false,
                &[primary_view(2, 2, 10)],
                PRIMARY_DB,
                &[],
            ),
        ),
        (
            10,
            "standby",
            false,
            false,
            step(
                &mut Engine::new(cfg(2)),
                0,
                Some(&committed(1, Some(1))),
                false,
                &[primary_view(1, 1, 10)],
                STANDBY_DB,
                &[],
            ),
        ),
        (
            11,
            "idle",
            true,
            false,
            step(
                &mut Engine::new(cfg(2)),
                0,
                Some(&committed(1, Some(1))),
                false,
                &[primary_view(1, 1, 10)],
                down,
                &[],
            ),
        ),
    ];
    for (row, kind, fenced, vip, s) in rows {
        assert_eq!(
            (s.outcome.kind(), s.desired.fenced, s.desired.vip),
            (kind, fenced, vip),
            "row {row}: {}",
            s.outcome
        );
    }
}

/// One latch used to serve "no standby to promote" and "the old primary could not rejoin": the
/// first to fire in an epoch silenced the other. Each has its own latch now.
#[test]
fn no_candidate_and_a_failed_rejoin_both_notify_in_one_epoch() {
    let notices = |s: &Step| -> Vec<String> {
        s.actions.iter().filter_map(|a| if let Action::Notify(n) = a { Some(format!("{n:?}")) } else { None }).collect()
    };
    let down = LocalDb {
        up: Some(false),
        in_recovery: None,
        failed: true,
        local_check_only: false,
        lsn: 0,
        timeline: 0,
        upstream: None,
    };
    let peers1 = [standby_view(2, 1, 100), witness_view(3, 1)];
    let handover = with_handover(committed(1, Some(1)), 2, true);
    for rejoin_first in [true, false] {
        let mut engine = Engine::new(cfg(1));
        let e = &mut engine;
        let _ = step(e, 0, Some(&handover), false, &peers1, PRIMARY_DB, &[]);
        let _ = step(e, 500, Some(&handover), false, &peers1, down, &[Event::HandedOver { epoch: 1 }]);
        let mut c2 = committed(2, Some(2));
        c2.previous_primary = Some(addr(1));
        let dead2 = PeerView { alive: false, agent_age: None, ..primary_view(2, 2, 0) };
        let rejoin = step(e, 800, Some(&c2), false, &[dead2, witness_view(3, 2)], down, &[]);
        assert!(rejoin.actions.iter().any(|a| matches!(a, Action::Rejoin { epoch: 2, .. })));
        let failed = [Event::RejoinFailed { epoch: 2, reason: "pg_ctl start failed".into() }];
        let mut voted = c2.clone();
        voted.votes = [addr(1), addr(3)].into();
        let (first, second) = if rejoin_first {
            ((&c2, false, &failed[..]), (&voted, true, &[][..]))
        } else {
            ((&voted, true, &[][..]), (&c2, false, &failed[..]))
        };
        let one = step(e, 900, Some(first.0), first.1, &[dead2, witness_view(3, 2)], down, first.2);
        let two = step(e, 1_000, Some(second.0), second.1, &[dead2, witness_view(3, 2)], down, second.2);
        let all: Vec<String> = notices(&one).into_iter().chain(notices(&two)).collect();
        assert!(all.iter().any(|n| n.contains("DemotionFailed")), "rejoin first {rejoin_first}: {all:?}");
        assert!(all.iter().any(|n| n.contains("FailoverNotOccurred")), "rejoin first {rejoin_first}: {all:?}");
    }
}
