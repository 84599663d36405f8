//! Table tests: one per decision of the engine.

use super::*;

const MS: u64 = 1_000_000;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, i], 7800))
}

fn cfg(me: u8) -> EngineConfig {
    EngineConfig::basic(addr(me), false, Duration::from_secs(1), Duration::from_millis(50))
}

/// Three voters: 1 primary, 2 standby, 3 witness.
fn committed(epoch: u64, primary: Option<u8>) -> Committed {
    let mut nodes = BTreeMap::new();
    nodes.insert(addr(1), NodeMeta { witness: false, priority: 1, promotable: true });
    nodes.insert(addr(2), NodeMeta { witness: false, priority: 1, promotable: true });
    nodes.insert(addr(3), NodeMeta { witness: true, priority: 0, promotable: false });
    Committed { epoch, primary: primary.map(addr), nodes, votes: BTreeSet::new(), auto_failover: true, previous_primary: None, handover: None }
}

fn primary_view(i: u8, epoch: u64, age_ms: u64) -> PeerView {
    PeerView {
        addr: addr(i),
        alive: age_ms <= 500,
        agent_age: Some(Duration::from_millis(age_ms)),
        role: PeerRole::Primary,
        epoch,
        db_up: true,
        fenced: false,
        lsn: 100,
    }
}

fn standby_view(i: u8, epoch: u64, lsn: u64) -> PeerView {
    PeerView { role: PeerRole::Standby, lsn, ..primary_view(i, epoch, 10) }
}

fn witness_view(i: u8, epoch: u64) -> PeerView {
    PeerView { role: PeerRole::Witness, db_up: false, ..primary_view(i, epoch, 10) }
}

const STANDBY_DB: LocalDb = LocalDb { up: Some(true), in_recovery: Some(true), failed: false, lsn: 100, timeline: 1, upstream: None };
const PRIMARY_DB: LocalDb = LocalDb { up: Some(true), in_recovery: Some(false), failed: false, lsn: 100, timeline: 1, upstream: None };
static NO_MEMBERS: BTreeSet<SocketAddr> = BTreeSet::new();

/// The inputs of a step with nothing unusual: registered, no custom monitor, no stop, a kernel
/// that holds no fence yet.
fn inputs<'a>(now_ms: u64, c: Option<&'a Committed>, leader: bool, peers: &'a [PeerView], db: LocalDb, events: &'a [Event]) -> Inputs<'a> {
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
    }
}

fn step(e: &mut Engine, now_ms: u64, c: Option<&Committed>, leader: bool, peers: &[PeerView], db: LocalDb, events: &[Event]) -> Step {
    e.step(&inputs(now_ms, c, leader, peers, db, events))
}

/// A kernel holding `epoch`'s enforced lease (k = 1) whose deadline passed `lapsed_ms` ago at
/// `now_ms` (`None`: valid for another second).
fn lease_kernel(epoch: u64, now_ms: u64, lapsed_ms: Option<u64>) -> KernelState {
    let fence = FenceState { flags: efm_common::maps::FENCE_LEASE_ENFORCED, epoch, lease_k: 1, lease_timeout_ns: 1_000 * MS, ..FenceState::default() };
    let deadline_ns = lapsed_ms.map_or((now_ms + 1_000) * MS, |l| (now_ms - l) * MS);
    KernelState { fence: Some(fence), deadline_ns, max_epoch_seen: epoch }
}

fn proposals(s: &Step) -> Vec<Proposal> {
    s.actions.iter().filter_map(|a| if let Action::Propose(p) = a { Some(p.clone()) } else { None }).collect()
}

#[test]
fn a_primary_database_stays_fenced_until_the_cluster_agrees() {
    let mut e = Engine::new(cfg(1));
    let s = step(&mut e, 0, None, false, &[], PRIMARY_DB, &[]);
    assert!(s.desired.fenced && !s.desired.vip);
    assert_eq!(s.outcome, Outcome::NotJoined);
    // Joined, no primary yet: registers itself, still fenced.
    let c = committed(0, None);
    let s = step(&mut e, 10, Some(&c), false, &[], PRIMARY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::SetPrimary { node: addr(1), expected_epoch: 0 }]);
    assert!(s.desired.fenced);
    assert_eq!(s.outcome, Outcome::RegisteringPrimary);
    let s = step(&mut e, 20, Some(&c), false, &[], PRIMARY_DB, &[]);
    assert!(proposals(&s).is_empty(), "not again at once");
    let s = step(&mut e, 1_020, Some(&c), false, &[], PRIMARY_DB, &[]);
    assert_eq!(proposals(&s).len(), 1, "repeated while the log does not show it");
}

#[test]
fn a_vote_the_log_did_not_record_is_proposed_again() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let mut c = committed(1, Some(1));
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    assert!(proposals(&step(&mut e, 0, Some(&c), false, &[dead], LocalDb::default(), &[])).is_empty());
    assert_eq!(proposals(&step(&mut e, 1_200, Some(&c), false, &[dead], LocalDb::default(), &[])).len(), 1);
    assert!(proposals(&step(&mut e, 1_700, Some(&c), false, &[dead], LocalDb::default(), &[])).is_empty());
    assert_eq!(proposals(&step(&mut e, 2_200, Some(&c), false, &[dead], LocalDb::default(), &[])).len(), 1);
    c.votes.insert(addr(3));
    assert!(proposals(&step(&mut e, 4_000, Some(&c), false, &[dead], LocalDb::default(), &[])).is_empty());
}

#[test]
fn committed_primary_serves_under_the_lease_with_the_vip() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), true, &[standby_view(2, 1, 90), witness_view(3, 1)], PRIMARY_DB, &[]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 });
    assert!(!s.desired.fenced && s.desired.lease_enforced && s.desired.vip);
    assert_eq!(s.desired.lease_k, 1, "3 voters: majority 2, one endorsement besides itself");
    assert_eq!(s.desired.epoch, 1);
    assert_eq!(s.desired.ping_flags, ROLE_PRIMARY | FLAG_DB_UP);
    assert!(s.actions.is_empty());
}

#[test]
fn standby_endorses_a_healthy_primary_only() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 40)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert!(!s.desired.fenced && !s.desired.lease_enforced);
    assert_eq!(s.outcome, Outcome::Standby { primary: Some(addr(1)), endorsing: true });
    for bad in [
        primary_view(1, 1, 200),                                // not heard within endorse_window
        PeerView { epoch: 0, ..primary_view(1, 1, 10) },        // other epoch
        PeerView { fenced: true, ..primary_view(1, 1, 10) },    // fenced
        PeerView { db_up: false, ..primary_view(1, 1, 10) },    // database down
        PeerView { role: PeerRole::Idle, ..primary_view(1, 1, 10) },
    ] {
        let s = step(&mut e, 10, Some(&c), false, &[bad], STANDBY_DB, &[]);
        assert_eq!(s.desired.endorse, None, "{bad:?}");
    }
}

#[test]
fn vote_waits_for_the_lease_after_the_last_endorsement_and_is_final() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let wait_ms = 1_000 * 105 / 100 + 50; // lease × (1 + drift) + margin
    step(&mut e, 1_000, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    // The primary goes silent; suspect once node.timeout passes, but no vote before the wait.
    let silent = |now: u64| PeerView { alive: false, agent_age: Some(Duration::from_millis(now - 1_000)), ..primary_view(1, 1, 0) };
    let s = step(&mut e, 1_600, Some(&c), false, &[silent(1_600)], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty());
    assert!(matches!(s.outcome, Outcome::PrimarySuspect { .. }), "{}", s.outcome);
    let s = step(&mut e, 1_000 + wait_ms - 1, Some(&c), false, &[silent(1_000 + wait_ms - 1)], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "one ms early");
    let s = step(&mut e, 1_000 + wait_ms, Some(&c), false, &[silent(1_000 + wait_ms)], STANDBY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
    assert_eq!(s.outcome, Outcome::Voted { epoch: 1 });
    // The primary comes back: never endorsed again in this epoch, and no second vote.
    let s = step(&mut e, 3_000, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, None);
    assert!(proposals(&s).is_empty());
}

#[test]
fn a_restarted_voter_waits_the_promotion_wait_from_its_start() {
    // Its previous life may have endorsed the primary just before the restart.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let c = committed(1, Some(1));
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    let s = step(&mut e, 10, Some(&c), false, &[dead], LocalDb::default(), &[]);
    assert!(proposals(&s).is_empty(), "no vote right after start");
    let s = step(&mut e, 10 + 1_099, Some(&c), false, &[dead], LocalDb::default(), &[]);
    assert!(proposals(&s).is_empty(), "1 ms before the wait is over");
    let s = step(&mut e, 10 + 1_100, Some(&c), false, &[dead], LocalDb::default(), &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(3), epoch: 1 }]);
    assert!(!s.desired.fenced);
    assert_eq!(s.desired.ping_flags & efm_common::wire::ROLE_MASK, ROLE_WITNESS);
}

struct PeerlessWitness;
impl PeerlessWitness {
    fn cfg() -> EngineConfig {
        EngineConfig { is_witness: true, ..cfg(3) }
    }
}

#[test]
fn database_failure_needs_confirmation_from_here() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let down = PeerView { db_up: false, ..primary_view(1, 1, 10) };
    let s = step(&mut e, 0, Some(&c), false, &[down], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "not yet confirmed");
    assert!(s.actions.contains(&Action::CheckRemoteDb { node: addr(1) }), "checked from here");
    let s = step(&mut e, 500, Some(&c), false, &[down], STANDBY_DB, &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::CheckRemoteDb { .. })), "at most once a second");
    let s = step(&mut e, 1_200, Some(&c), false, &[down], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "still not confirmed");
    let confirmed = [Event::RemoteChecked { node: addr(1), reachable: false }];
    let s = step(&mut e, 1_210, Some(&c), false, &[down], STANDBY_DB, &confirmed);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
}

#[test]
fn leader_promotes_only_with_a_majority_of_votes() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let mut c = committed(1, Some(1));
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    let peers = [dead, standby_view(2, 1, 120)];
    c.votes.insert(addr(3));
    let s = step(&mut e, 10, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "1 vote of 3");
    c.votes.insert(addr(2));
    // The standby's position must be read after the first vote (10 ms) and settled.
    let s = step(&mut e, 20, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert_eq!(s.outcome, Outcome::ComparingPositions { epoch: 1, waiting_for: vec![addr(2)] });
    assert!(proposals(&s).is_empty());
    let s = step(&mut e, 120, Some(&c), true, &peers, LocalDb::default(), &[]);
    let promote = proposals(&s).into_iter().find(|p| matches!(p, Proposal::Promote { .. })).expect("promote");
    assert!(matches!(promote, Proposal::Promote { candidate, expected_epoch: 1, lsn: 120, .. } if candidate == addr(2)));
    assert_eq!(s.outcome, Outcome::PromotionProposed { candidate: addr(2), epoch: 1 });
    let s = step(&mut e, 130, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "not again at once");
    let s = step(&mut e, 1_130, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "retried while the epoch stands");
    // A follower with the same votes does not propose.
    let mut f = Engine::new(PeerlessWitness::cfg());
    let s = step(&mut f, 10, Some(&c), false, &peers, LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })));
}

/// Five voters: primary 1 failed; standbys 2, 4, 5 with given LSNs and priorities.
fn five(prio: [u32; 3], promotable: [bool; 3]) -> Committed {
    let mut c = committed(7, Some(1));
    for (i, n) in [2u8, 4, 5].into_iter().enumerate() {
        c.nodes.insert(addr(n), NodeMeta { witness: false, priority: prio[i], promotable: promotable[i] });
    }
    for v in [2u8, 3, 4] {
        c.votes.insert(addr(v));
    }
    c
}

fn candidate_of(c: &Committed, peers: &[PeerView], min: u32) -> Result<SocketAddr, String> {
    let mut e = Engine::new(EngineConfig { minimum_standbys: min, ..PeerlessWitness::cfg() });
    decide(&mut e, c, 10, |_| peers.to_vec(), LocalDb::default()).1
}

/// Steps the leader every heartbeat (50 ms) from `from_ms` until it proposes a promotion or
/// finds no candidate (at most 2 s); the peers as they are at each time. Returns when, and what.
fn decide(
    e: &mut Engine,
    c: &Committed,
    from_ms: u64,
    peers_at: impl Fn(u64) -> Vec<PeerView>,
    db: LocalDb,
) -> (u64, Result<SocketAddr, String>) {
    let mut now = from_ms;
    loop {
        let s = step(e, now, Some(c), true, &peers_at(now), db, &[]);
        match s.outcome {
            Outcome::ComparingPositions { .. } if now < from_ms + 2_000 => now += 50,
            Outcome::PromotionProposed { candidate, .. } => return (now, Ok(candidate)),
            Outcome::NoCandidate { reason, .. } => return (now, Err(reason)),
            o => panic!("unexpected {o}"),
        }
    }
}

fn outcome_of(c: &Committed, peers: &[PeerView], min: u32) -> Result<SocketAddr, String> {
    let mut e = Engine::new(EngineConfig { minimum_standbys: min, ..PeerlessWitness::cfg() });
    let s = step(&mut e, 10, Some(c), true, peers, LocalDb::default(), &[]);
    match s.outcome {
        Outcome::PromotionProposed { candidate, .. } => Ok(candidate),
        Outcome::NoCandidate { reason, .. } => Err(reason),
        o => panic!("unexpected {o}"),
    }
}

#[test]
fn candidate_is_most_advanced_then_priority_then_address() {
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 7, 0) };
    let peers = [dead, standby_view(2, 7, 100), standby_view(4, 7, 300), standby_view(5, 7, 300)];
    assert_eq!(candidate_of(&five([1, 1, 1], [true; 3]), &peers, 0), Ok(addr(4)), "LSN, then address");
    assert_eq!(candidate_of(&five([1, 2, 1], [true; 3]), &peers, 0), Ok(addr(5)), "priority breaks the LSN tie");
    assert_eq!(candidate_of(&five([1, 0, 1], [true, true, false]), &peers, 0), Ok(addr(2)), "priority 0 and promotable=false never");
    let err = candidate_of(&five([0, 0, 0], [true; 3]), &peers, 0).unwrap_err();
    assert!(err.contains("promotable"), "{err}");
    let err = candidate_of(&five([1, 1, 1], [true; 3]), &peers, 3).unwrap_err();
    assert!(err.contains("minimum.standbys=3"), "{err}");
    assert_eq!(candidate_of(&five([1, 1, 1], [true; 3]), &peers, 2), Ok(addr(4)), "two standbys remain");
    // Refusals need no positions: they come at once.
    let err = outcome_of(&five([1, 1, 1], [true; 3]), &peers, 3).unwrap_err();
    assert!(err.contains("minimum.standbys=3"), "{err}");
}

/// A standby's position as the leader sees it at `now` (ms): its PINGs arrive every 50 ms (the
/// last one `age_ms` ago), carrying `lsn_at(arrival)`.
fn reporting(i: u8, epoch: u64, now: u64, age_ms: u64, lsn_at: impl Fn(u64) -> u64) -> PeerView {
    let arrival = (now - now % 50).saturating_sub(age_ms / 50 * 50);
    PeerView { agent_age: Some(Duration::from_millis(now - arrival)), lsn: lsn_at(arrival), ..standby_view(i, epoch, 0) }
}

#[test]
fn automatic_failover_puts_the_wal_position_before_priority() {
    // README: `efm promote` chooses by priority then WAL; automatic failover WAL first.
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 7, 0) };
    let peers = [dead, standby_view(2, 7, 100), standby_view(4, 7, 300), standby_view(5, 7, 200)];
    assert_eq!(candidate_of(&five([1, 3, 2], [true; 3]), &peers, 0), Ok(addr(4)), "priority 3 but the most WAL");
    let tie = [dead, standby_view(2, 7, 300), standby_view(4, 7, 300), standby_view(5, 7, 300)];
    assert_eq!(candidate_of(&five([3, 2, 1], [true; 3]), &tie, 0), Ok(addr(5)), "equal WAL: priority");
    assert_eq!(candidate_of(&five([1, 1, 1], [true; 3]), &tie, 0), Ok(addr(2)), "equal WAL and priority: address");
}

#[test]
fn a_stale_position_is_not_trusted() {
    let c = five([1, 1, 1], [true; 3]);
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 7, 0) };
    // n4 is the current standby (1 MB ahead), but its agent's last PING is 300 ms old (more
    // than two heartbeats; still alive for the detector): its number is not compared. The
    // leader waits for it, at most `position_wait`, rather than promote n2 or n5 over it.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let peers = |now: u64| {
        vec![
            dead,
            reporting(2, 7, now, 0, |_| 1_000),
            PeerView { agent_age: Some(Duration::from_millis(300)), ..standby_view(4, 7, 1_001_000) },
            reporting(5, 7, now, 0, |_| 1_000),
        ]
    };
    let s = step(&mut e, 10, Some(&c), true, &peers(10), LocalDb::default(), &[]);
    assert!(matches!(&s.outcome, Outcome::ComparingPositions { waiting_for, .. } if waiting_for.contains(&addr(4))), "{}", s.outcome);
    // n4's agent reports again, with a fresh position: it wins as soon as it is settled.
    let fresh = |now: u64| {
        let mut p = peers(now);
        p[2] = if now < 60 { p[2] } else { reporting(4, 7, now, 0, |_| 1_001_000) };
        p
    };
    let (at, who) = decide(&mut e, &c, 60, fresh, LocalDb::default());
    assert_eq!(who, Ok(addr(4)));
    assert!(at <= 10 + 400, "decided {at} ms: within position_wait of the first due step");
    // An agent advertises 0 ("unknown") when its own sample is older than two heartbeats: the
    // leader waits for it and never compares 0 as a position while anyone else is known.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let unknown = |now: u64| {
        vec![dead, reporting(2, 7, now, 0, |_| 1_000), reporting(4, 7, now, 0, |_| 0), reporting(5, 7, now, 0, |_| 900)]
    };
    let (at, who) = decide(&mut e, &c, 10, unknown, LocalDb::default());
    assert!(at >= 10 + 400, "waited position_wait ({at} ms) for n4's position");
    assert_eq!(who, Ok(addr(2)), "then the most advanced known position");
    // A stale high number never beats a fresh one once the wait is over.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let stale_high = |now: u64| {
        vec![
            dead,
            PeerView { agent_age: Some(Duration::from_millis(400)), ..standby_view(2, 7, 9_000_000) },
            reporting(4, 7, now, 0, |_| 1_000),
        ]
    };
    let (_, who) = decide(&mut e, &c, 10, stale_high, LocalDb::default());
    assert_eq!(who, Ok(addr(4)));
}

#[test]
fn the_most_advanced_fresh_and_settled_position_wins() {
    let c = five([1, 1, 1], [true; 3]);
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 7, 0) };
    // n2 is 1 MB behind and stays there; n4's walreceiver still writes the old primary's last
    // WAL until 200 ms, passing n2 only at 150 ms. Before that n4 looks behind: the leader
    // must not decide on moving positions.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let peers = |now: u64| {
        vec![
            dead,
            reporting(2, 7, now, 0, |_| 5_000_000),
            reporting(4, 7, now, 0, |t| 4_000_000 + 10_000 * t.min(200)),
            reporting(5, 7, now, 0, |_| 1_000),
        ]
    };
    let (at, who) = decide(&mut e, &c, 10, peers, LocalDb::default());
    assert_eq!(who, Ok(addr(4)), "decided at {at} ms");
    assert!(at > 200, "not before n4's position stopped moving ({at} ms)");
    assert!(at <= 10 + 400, "within position_wait ({at} ms)");
    // A position reported before the first vote (before the failure) is not final, even if it
    // did not move: the leader waits for a report read after the vote.
    let mut e = Engine::new(PeerlessWitness::cfg());
    let old = |now: u64| vec![dead, reporting(2, 7, now, 0, |_| 5_000_000), reporting(4, 7, now, 0, |_| 6_000_000)];
    let (at, who) = decide(&mut e, &c, 10, old, LocalDb::default());
    assert_eq!(who, Ok(addr(4)));
    assert!(at >= 10 + 100, "a report arriving two heartbeats after the vote ({at} ms)");
    // This node's own position counts the same way (the runtime passes 0 when its sample is
    // older than two heartbeats): a leading standby 1 MB behind does not promote itself.
    let mut me = committed(7, Some(1));
    me.votes.insert(addr(2));
    me.votes.insert(addr(3));
    me.votes.insert(addr(4));
    me.nodes.insert(addr(4), NodeMeta { witness: false, priority: 1, promotable: true });
    let mut e = Engine::new(cfg(2));
    let behind = LocalDb { lsn: 1_000, ..STANDBY_DB };
    let (_, who) = decide(&mut e, &me, 10, |now| vec![dead, reporting(4, 7, now, 0, |_| 1_001_000)], behind);
    assert_eq!(who, Ok(addr(4)));
    let mut e = Engine::new(cfg(2));
    let (_, who) = decide(&mut e, &me, 10, |now| vec![dead, reporting(4, 7, now, 0, |_| 0)], behind);
    assert_eq!(who, Ok(addr(2)), "n4's position stayed unknown for the whole wait");
}

#[test]
fn named_standby_promotes_once_and_stays_fenced_until_done() {
    let mut e = Engine::new(cfg(2));
    let c = committed(2, Some(2));
    let peers = [witness_view(3, 2)];
    let s = step(&mut e, 0, Some(&c), false, &peers, STANDBY_DB, &[]);
    assert_eq!(s.actions, vec![Action::PromoteLocal { epoch: 2, old_primary: None }]);
    assert!(s.desired.fenced, "fenced until the promotion is done");
    assert!(s.desired.vip, "but already holding the VIP, so clients find it at once");
    assert_eq!(s.desired.epoch, 2, "adopts the new epoch at once: its PINGs fence the old primary");
    assert_eq!(s.outcome, Outcome::Candidate { epoch: 2 });
    // pg_promote() done but the runtime has not finished (VIP, scripts): still fenced.
    let s = step(&mut e, 50, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert!(s.desired.fenced && s.actions.is_empty());
    let s = step(&mut e, 100, Some(&c), false, &peers, PRIMARY_DB, &[Event::Promoted { epoch: 2 }]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 });
    assert!(!s.desired.fenced && s.desired.lease_enforced && s.desired.vip);
}

#[test]
fn old_primary_is_fenced_and_demoted() {
    let mut e = Engine::new(cfg(1));
    let c = committed(2, Some(2));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(2, 2, 10)], PRIMARY_DB, &[]);
    assert!(s.desired.fenced && !s.desired.vip && !s.desired.lease_enforced);
    assert!(s.actions.contains(&Action::DemoteLocal { epoch: 2, primary: Some(addr(2)), stop: false }));
    assert_eq!(s.outcome, Outcome::FencedOldPrimary { epoch: 2 });
    assert_eq!(s.desired.endorse, Some(addr(2)), "still a voter: it vouches for the legitimate primary");
    let s = step(&mut e, 10, Some(&c), false, &[primary_view(2, 2, 10)], PRIMARY_DB, &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::DemoteLocal { .. })), "once per epoch");
}

#[test]
fn failed_primary_database_fences_and_releases_the_vip() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let s = step(&mut e, 0, Some(&c), true, &[standby_view(2, 1, 90)], failed, &[]);
    assert!(s.desired.fenced && !s.desired.vip);
    assert_eq!(s.desired.ping_flags & (FLAG_FENCED | FLAG_DB_UP), FLAG_FENCED);
    assert!(s.actions.contains(&Action::PrimaryDbFailed { epoch: 1, stop: false }));
    assert!(s.actions.contains(&Action::Propose(Proposal::Vote { voter: addr(1), epoch: 1 })), "votes against itself");
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed);
}

#[test]
fn without_auto_failover_only_a_notification() {
    let mut e = Engine::new(cfg(2));
    let mut c = committed(1, Some(1));
    c.auto_failover = false;
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    let s = step(&mut e, 10, Some(&c), false, &[dead], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty());
    let notes: Vec<_> = s.actions.iter().filter(|a| matches!(a, Action::Notify(_))).collect();
    assert!(matches!(&notes[..], [Action::Notify(crate::notify::Event::ManualFailoverRequired { .. })]));
    assert_eq!(s.outcome, Outcome::ManualFailoverRequired { primary: addr(1) });
    let s = step(&mut e, 20, Some(&c), false, &[dead], STANDBY_DB, &[]);
    assert!(s.actions.is_empty(), "notified once: {:?}", s.actions);
}

#[test]
fn standby_follows_a_new_primary_once() {
    let mut e = Engine::new(cfg(2));
    let c = committed(3, Some(4));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(4, 3, 10)], STANDBY_DB, &[]);
    assert!(s.actions.contains(&Action::Follow { primary: addr(4), epoch: 3 }));
    let s = step(&mut e, 10, Some(&c), false, &[primary_view(4, 3, 10)], STANDBY_DB, &[]);
    assert!(s.actions.is_empty());
}

#[test]
fn failed_promotion_is_treated_as_a_failed_primary_after_the_grace() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let c = committed(2, Some(2));
    let stuck = PeerView { role: PeerRole::Standby, fenced: true, ..primary_view(2, 2, 10) };
    let s = step(&mut e, 0, Some(&c), false, &[stuck], LocalDb::default(), &[]);
    assert!(proposals(&s).is_empty());
    let s = step(&mut e, 31_000, Some(&c), false, &[stuck], LocalDb::default(), &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(3), epoch: 2 }]);
}

#[test]
fn a_vote_recorded_in_the_log_is_never_followed_by_an_endorsement() {
    let mut e = Engine::new(cfg(2));
    let mut c = committed(1, Some(1));
    c.votes.insert(addr(2));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, None, "a restarted agent recovers its vote from the log");
}

#[test]
fn a_primary_that_gave_up_is_replaced_without_the_lease_wait() {
    let mut e = Engine::new(cfg(2));
    let mut c = committed(1, Some(1));
    let fenced = PeerView { fenced: true, db_up: false, ..primary_view(1, 1, 10) };
    step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    let s = step(&mut e, 1_200, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)), "endorsing at 1.2 s");
    let s = step(&mut e, 1_250, Some(&c), false, &[fenced], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "endorsed 50 ms ago: must wait");
    c.votes.insert(addr(1));
    let s = step(&mut e, 1_300, Some(&c), false, &[fenced], STANDBY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }], "its own vote means its kernel is fenced");
}

#[test]
fn a_primary_stays_fenced_for_an_epoch_it_voted_against() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let failed = LocalDb { failed: true, ..PRIMARY_DB };
    let s = step(&mut e, 0, Some(&c), true, &[standby_view(2, 1, 90)], failed, &[]);
    assert!(s.desired.fenced);
    let s = step(&mut e, 100, Some(&c), true, &[standby_view(2, 1, 90)], PRIMARY_DB, &[]);
    assert!(s.desired.fenced && !s.desired.vip, "the database came back, but the epoch is given up");
}

#[test]
fn an_unendorsed_primary_runs_the_isolated_flow_after_the_promotion_wait() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    // The lease floor: counted as granted for `lease.timeout` after this node began enforcing
    // it (at 5 s), so the lapse is measured from 6 s at the earliest.
    let lapsed = |now: u64, ms: Option<u64>| Inputs { kernel: lease_kernel(1, now, ms), ..inputs(now, Some(&c), false, &[], PRIMARY_DB, &[]) };
    let s = e.step(&lapsed(5_000, Some(300)));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "a short lapse (start-up, a glitch) is not isolation");
    let s = e.step(&lapsed(6_500, Some(2_000)));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "the lease floor: granted until 6 s");
    let s = e.step(&lapsed(7_200, Some(2_000)));
    assert_eq!(s.outcome, Outcome::PrimaryIsolated { epoch: 1 });
    assert!(!s.desired.vip && s.desired.lease_enforced, "VIP released; the lease keeps clients off");
    assert!(s.actions.contains(&Action::PrimaryIsolated { epoch: 1, stop: false }));
    assert!(proposals(&s).is_empty(), "no vote: nothing sticky");
    assert!(!e.step(&lapsed(7_300, Some(2_100))).actions.iter().any(|a| matches!(a, Action::PrimaryIsolated { .. })), "once per episode");
    let s = e.step(&lapsed(7_400, None));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "endorsed again: back to primary");
    assert!(s.desired.vip);
}

#[test]
fn a_vote_recorded_before_a_restart_is_never_followed_by_an_endorsement() {
    let mut e = Engine::new(cfg(2));
    e.set_voted_floor(1);
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, None);
    let c2 = committed(2, Some(1));
    let s = step(&mut e, 10, Some(&c2), false, &[primary_view(1, 2, 10)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)), "a later epoch is endorsed again");
}

#[test]
fn a_node_whose_log_is_behind_its_kernel_does_not_endorse() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let s = e.step(&Inputs { kernel: KernelState { max_epoch_seen: 2, ..KernelState::default() }, ..inputs(0, Some(&c), false, &peers, STANDBY_DB, &[]) });
    assert_eq!(s.desired.endorse, None, "epoch 2 exists somewhere: epoch 1 is superseded");
}

#[test]
fn a_database_of_unknown_state_is_fenced() {
    let mut e = Engine::new(cfg(2));
    let c = committed(2, Some(3));
    let unknown = LocalDb::default();
    let s = step(&mut e, 0, Some(&c), false, &[], unknown, &[]);
    assert!(s.desired.fenced, "it may still be a primary");
    let s = step(&mut Engine::new(cfg(2)), 0, None, false, &[], unknown, &[]);
    assert!(s.desired.fenced, "not joined and not known to be a standby");
    let s = step(&mut Engine::new(cfg(2)), 0, None, false, &[], STANDBY_DB, &[]);
    assert!(!s.desired.fenced, "a known standby serves read-only clients");
}

#[test]
fn outcomes_read_well() {
    assert_eq!(Outcome::Voted { epoch: 4 }.to_string(), "voted against the primary of epoch 4");
    assert_eq!(
        Outcome::PromotionProposed { candidate: addr(2), epoch: 4 }.to_string(),
        "proposed promoting 198.18.0.2:7800 (epoch 4 → 5)"
    );
}

fn with_handover(mut c: Committed, to: u8, demote: bool) -> Committed {
    c.handover = Some(Handover { from: c.primary.unwrap(), to: addr(to), demote, quiet: false, source: None });
    c
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

#[test]
fn switchover_primary_fences_first_and_votes_only_after_a_clean_stop() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let s = step(&mut e, 0, Some(&c), true, &peers, PRIMARY_DB, &[]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 });
    let c = with_handover(c, 2, true);
    let s = step(&mut e, 50, Some(&c), true, &peers, PRIMARY_DB, &[]);
    assert_eq!(s.outcome, Outcome::HandingOver { epoch: 1, to: addr(2) });
    assert!(s.desired.fenced && !s.desired.vip, "clients cut off at once");
    assert!(
        s.desired.members_exempt && s.desired.lease_enforced && s.desired.lease_k == 1,
        "the standbys keep receiving WAL, but only under the lease"
    );
    assert!(s.actions.contains(&Action::HandOver { epoch: 1, to: addr(2), demote: true }));
    assert!(proposals(&s).is_empty(), "no vote before the database stopped cleanly");
    let s = step(&mut e, 100, Some(&c), true, &peers, PRIMARY_DB, &[]);
    assert!(proposals(&s).is_empty());
    assert!(s.desired.fenced);
    // Stopped: the database is down now, which is not a database failure here.
    let down = LocalDb { up: Some(false), failed: true, ..PRIMARY_DB };
    let s = step(&mut e, 900, Some(&c), true, &peers, down, &[Event::HandedOver { epoch: 1 }]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(1), epoch: 1 }]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::PrimaryDbFailed { .. })));
    assert_eq!(s.outcome, Outcome::HandingOver { epoch: 1, to: addr(2) });
}

#[test]
fn the_leader_promotes_the_switchover_target_only_after_the_old_primary_voted() {
    // Node 3 (witness) leads; 2 is the target, 4 a more advanced standby.
    let mut c = with_handover(committed(1, Some(1)), 2, true);
    c.nodes.insert(addr(4), NodeMeta { witness: false, priority: 1, promotable: true });
    c.votes.insert(addr(2));
    c.votes.insert(addr(3));
    c.votes.insert(addr(4));
    let fenced_primary = PeerView { fenced: true, ..primary_view(1, 1, 10) };
    let peers = [fenced_primary, standby_view(2, 1, 100), standby_view(4, 1, 200)];
    let mut e = Engine::new(EngineConfig { is_witness: true, ..cfg(3) });
    let s = step(&mut e, 0, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "the old primary has not stopped yet");
    c.votes.insert(addr(1));
    let s = step(&mut e, 10, Some(&c), true, &peers, LocalDb::default(), &[]);
    let promote = proposals(&s).into_iter().find(|p| matches!(p, Proposal::Promote { .. }));
    assert!(
        matches!(promote, Some(Proposal::Promote { candidate, expected_epoch: 1, .. }) if candidate == addr(2)),
        "the operator's target, not the LSN-best standby: {promote:?}"
    );
}

#[test]
fn voters_vote_at_once_on_a_manual_promotion_even_with_auto_failover_off() {
    let mut c = with_handover(committed(1, Some(1)), 2, false);
    c.auto_failover = false;
    c.votes.insert(addr(1));
    let fenced_primary = PeerView { fenced: true, ..primary_view(1, 1, 10) };
    let mut e = Engine::new(cfg(2));
    let s = step(&mut e, 0, Some(&c), false, &[fenced_primary, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::Notify(crate::notify::Event::ManualFailoverRequired { .. }))));
}

#[test]
fn a_switched_over_primary_rejoins_as_a_standby_of_the_new_one() {
    let mut e = Engine::new(cfg(1));
    let c = with_handover(committed(1, Some(1)), 2, true);
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let down = LocalDb { up: Some(false), failed: true, ..PRIMARY_DB };
    let _ = step(&mut e, 500, Some(&c), false, &peers, down, &[Event::HandedOver { epoch: 1 }]);
    let mut c2 = committed(2, Some(2));
    c2.previous_primary = Some(addr(1));
    let s = step(&mut e, 800, Some(&c2), false, &[primary_view(2, 2, 10), witness_view(3, 2)], down, &[Event::HandedOver { epoch: 1 }]);
    assert!(s.actions.contains(&Action::Rejoin { epoch: 2, primary: addr(2), source: None }));
    assert_eq!(s.outcome, Outcome::Rejoining { primary: addr(2) });
    assert!(s.desired.fenced);
    // Started as a standby: an ordinary, unfenced standby that follows the new primary.
    let s = step(&mut e, 3_000, Some(&c2), false, &[primary_view(2, 2, 10), witness_view(3, 2)], STANDBY_DB, &[]);
    assert!(matches!(s.outcome, Outcome::Standby { primary: Some(p), .. } if p == addr(2)));
    assert!(!s.desired.fenced);
}

#[test]
fn a_hand_over_the_primary_could_not_carry_out_is_called_off_and_it_serves_again() {
    let mut e = Engine::new(cfg(1));
    let c = with_handover(committed(1, Some(1)), 2, true);
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let failed = Event::HandOverFailed { epoch: 1, reason: "pg_ctl stop failed".into() };
    let s = step(&mut e, 100, Some(&c), false, &peers, PRIMARY_DB, &[failed.clone()]);
    assert_eq!(proposals(&s), vec![Proposal::ClearSwitchover]);
    assert!(s.desired.fenced, "fenced until the log shows the hand-over called off");
    let cleared = committed(1, Some(1));
    let s = step(&mut e, 200, Some(&cleared), false, &peers, PRIMARY_DB, &[failed.clone()]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 });
    assert!(!s.desired.fenced && s.desired.vip);
}

#[test]
fn remote_promotion_hooks_fire_on_uninvolved_nodes_only() {
    let mut e = Engine::new(EngineConfig { is_witness: true, ..cfg(3) });
    let c1 = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c1), false, &[primary_view(1, 1, 10), standby_view(2, 1, 100)], LocalDb::default(), &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::RemotePrePromotion { .. })), "not at the first step");
    let mut c2 = committed(2, Some(2));
    c2.previous_primary = Some(addr(1));
    let candidate = PeerView { fenced: true, role: PeerRole::Standby, ..primary_view(2, 2, 10) };
    let s = step(&mut e, 100, Some(&c2), false, &[primary_view(1, 1, 10), candidate], LocalDb::default(), &[]);
    assert!(s.actions.contains(&Action::RemotePrePromotion { new_primary: addr(2), old_primary: Some(addr(1)) }));
    assert!(!s.actions.iter().any(|a| matches!(a, Action::RemotePostPromotion { .. })), "not serving yet");
    let s = step(&mut e, 200, Some(&c2), false, &[primary_view(2, 2, 10)], LocalDb::default(), &[]);
    assert!(s.actions.contains(&Action::RemotePostPromotion { new_primary: addr(2), old_primary: Some(addr(1)) }));
    let s = step(&mut e, 300, Some(&c2), false, &[primary_view(2, 2, 10)], LocalDb::default(), &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::RemotePostPromotion { .. })), "once");
    // The new primary itself runs neither.
    let mut p = Engine::new(cfg(2));
    let _ = step(&mut p, 0, Some(&c1), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    let s = step(&mut p, 100, Some(&c2), false, &[primary_view(1, 1, 10)], STANDBY_DB, &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::RemotePrePromotion { .. })));
}

/// Found by the simulation (seed 1028089775313, 5 voters, no faults): voters stopped endorsing
/// a primary as soon as it fenced itself for a `-switchover`. A clean stop that took longer than
/// the lease (here 1.7 s) then failed; the hand-over was called off, but the primary's lease had
/// lapsed (its PINGs said so, so nobody endorsed it again) and the voters voted after the
/// promotion wait: the leader failed over to the most advanced standby, not the operator's
/// target, the old primary's database still running.
#[test]
fn voters_keep_endorsing_a_switchover_primary_that_is_stopping_cleanly() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    let stopping = PeerView { fenced: true, ..primary_view(1, 1, 10) };
    let h = with_handover(c.clone(), 2, true);
    let s = step(&mut e, 50, Some(&h), false, &[stopping, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)), "fenced on purpose, by its kernel: its lease is kept");
    let s = step(&mut e, 3_000, Some(&h), false, &[stopping, witness_view(3, 1)], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "endorsed: no vote; it votes itself once stopped, or calls the hand-over off");
    assert_eq!(s.desired.endorse, Some(addr(1)));
    // Called off: the log may show it before the primary's PINGs do.
    let s = step(&mut e, 3_050, Some(&c), false, &[stopping, witness_view(3, 1)], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "endorsed 50 ms ago");
    // The primary serves again and is endorsed.
    let s = step(&mut e, 3_100, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_eq!(s.outcome, Outcome::Standby { primary: Some(addr(1)), endorsing: true });
}

#[test]
fn voters_vote_on_a_switchover_once_the_stopped_primary_voted_or_its_agent_is_gone() {
    let stopping = PeerView { fenced: true, db_up: false, ..primary_view(1, 1, 10) };
    let mut h = with_handover(committed(1, Some(1)), 2, true);
    let mut e = Engine::new(cfg(2));
    let _ = step(&mut e, 0, Some(&h), false, &[stopping, witness_view(3, 1)], STANDBY_DB, &[]);
    h.votes.insert(addr(1));
    let s = step(&mut e, 100, Some(&h), false, &[stopping, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }], "stopped and voted: at once");
    assert_eq!(s.desired.endorse, None, "its database is down");
    let h = with_handover(committed(1, Some(1)), 2, true);
    let gone = PeerView { alive: false, agent_age: Some(Duration::from_millis(600)), ..stopping };
    let mut e = Engine::new(cfg(2));
    let _ = step(&mut e, 0, Some(&h), false, &[gone, witness_view(3, 1)], STANDBY_DB, &[]);
    let s = step(&mut e, 500, Some(&h), false, &[gone, witness_view(3, 1)], STANDBY_DB, &[]);
    assert!(proposals(&s).is_empty(), "the promotion wait still applies");
    let s = step(&mut e, 1_200, Some(&h), false, &[gone, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }], "its agent is gone: after the wait");
}

/// Found by the simulation (seed 1028089775662): the runtime replaces `Work::Promoted` with the
/// hand-over's `HandingOver`/`HandOverFailed`, so a primary promoted in this epoch whose
/// hand-over was called off took itself for a candidate again and stayed fenced.
#[test]
fn a_promoted_primary_serves_again_after_its_hand_over_is_called_off() {
    let mut e = Engine::new(cfg(2));
    let c = committed(2, Some(2));
    let peers = [standby_view(1, 2, 100), witness_view(3, 2)];
    let s = step(&mut e, 0, Some(&c), false, &peers, STANDBY_DB, &[]);
    assert_eq!(s.outcome, Outcome::Candidate { epoch: 2 });
    let s = step(&mut e, 100, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert_eq!(s.outcome, Outcome::Candidate { epoch: 2 });
    let s = step(&mut e, 200, Some(&c), false, &peers, PRIMARY_DB, &[Event::Promoted { epoch: 2 }]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 });
    let h = with_handover(c.clone(), 1, true);
    let s = step(&mut e, 300, Some(&h), false, &peers, PRIMARY_DB, &[Event::Promoted { epoch: 2 }]);
    assert_eq!(s.outcome, Outcome::HandingOver { epoch: 2, to: addr(1) });
    let failed = Event::HandOverFailed { epoch: 2, reason: "pg_ctl stop failed".into() };
    let s = step(&mut e, 400, Some(&h), false, &peers, PRIMARY_DB, &[failed.clone()]);
    assert_eq!(proposals(&s), vec![Proposal::ClearSwitchover]);
    let s = step(&mut e, 500, Some(&c), false, &peers, PRIMARY_DB, &[failed.clone()]);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 }, "its promotion finished before the hand-over");
    assert!(!s.desired.fenced && s.desired.vip);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::PromoteLocal { .. })));
}

/// Found by the simulation (seeds 1028089776307 and 1028089777500, 5 voters): the engine kept
/// the hand-over after the old primary had rejoined, so when its database failed later (as a
/// standby, or as a primary after being promoted again) the next promotion restarted the
/// failed database as a standby (`Rejoin`).
#[test]
fn a_rejoined_old_primary_is_not_rejoined_again_after_a_later_failure() {
    let mut e = Engine::new(cfg(1));
    let c = with_handover(committed(1, Some(1)), 2, true);
    let peers1 = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers1, PRIMARY_DB, &[]);
    let stopped = LocalDb { up: Some(false), in_recovery: None, failed: true, ..PRIMARY_DB };
    let _ = step(&mut e, 500, Some(&c), false, &peers1, stopped, &[Event::HandedOver { epoch: 1 }]);
    let mut c2 = committed(2, Some(2));
    c2.previous_primary = Some(addr(1));
    let peers2 = [primary_view(2, 2, 10), witness_view(3, 2)];
    let s = step(&mut e, 800, Some(&c2), false, &peers2, stopped, &[Event::HandedOver { epoch: 1 }]);
    assert!(s.actions.contains(&Action::Rejoin { epoch: 2, primary: addr(2), source: None }));
    let s = step(&mut e, 2_000, Some(&c2), false, &peers2, STANDBY_DB, &[]);
    assert!(matches!(s.outcome, Outcome::Standby { .. }));
    // Its database fails as a standby; later another standby is promoted.
    let failed = LocalDb { up: Some(false), in_recovery: None, failed: true, ..STANDBY_DB };
    let s = step(&mut e, 3_000, Some(&c2), false, &peers2, failed, &[]);
    assert_eq!(s.outcome, Outcome::Idle, "a failed standby, not an old primary rejoining");
    let mut c3 = committed(3, Some(4));
    c3.nodes.insert(addr(4), NodeMeta { witness: false, priority: 1, promotable: true });
    c3.previous_primary = Some(addr(2));
    let s = step(&mut e, 4_000, Some(&c3), false, &[primary_view(4, 3, 10), witness_view(3, 3)], failed, &[]);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::Rejoin { .. })), "{:?}", s.actions);
    assert_eq!(s.outcome, Outcome::Idle);
}

/// Found by the simulation (seed 1028089776534, 5 voters): the old primary stopped cleanly but
/// could not get its vote into the log (cut off from the leader's side); its agent was still
/// heard, so the leader waited for the vote for ever. Its database is down by its own PINGs and
/// unreachable from here: what the vote would have said.
#[test]
fn the_leader_promotes_the_switchover_target_once_the_old_primary_is_seen_stopped() {
    let mut c = with_handover(committed(1, Some(1)), 2, true);
    c.votes.insert(addr(2));
    c.votes.insert(addr(3));
    let stopping = PeerView { fenced: true, ..primary_view(1, 1, 10) };
    let mut e = Engine::new(EngineConfig { is_witness: true, ..cfg(3) });
    let s = step(&mut e, 0, Some(&c), true, &[stopping, standby_view(2, 1, 100)], LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "its database still runs");
    let unknown = PeerView { db_up: false, ..stopping };
    let s = step(&mut e, 10, Some(&c), true, &[unknown, standby_view(2, 1, 100)], LocalDb::default(), &[]);
    assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "not confirmed from here");
    let stopped = PeerView { db_up: false, ..stopping };
    let checked = [Event::RemoteChecked { node: addr(1), reachable: false }];
    let s = step(&mut e, 20, Some(&c), true, &[stopped, standby_view(2, 1, 100)], LocalDb::default(), &checked);
    let promote = proposals(&s).into_iter().find(|p| matches!(p, Proposal::Promote { .. }));
    assert!(matches!(promote, Some(Proposal::Promote { candidate, .. }) if candidate == addr(2)), "{promote:?}");
}

#[test]
fn a_quiet_hand_over_sends_no_notifications_and_a_later_one_does() {
    let mut e = Engine::new(cfg(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let mut c = with_handover(committed(1, Some(1)), 2, true);
    if let Some(h) = c.handover.as_mut() {
        h.quiet = true;
    }
    let s = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    assert!(s.actions.iter().any(|a| matches!(a, Action::HandOver { .. })));
    assert!(!s.actions.iter().any(|a| matches!(a, Action::Notify(_))), "-quiet: {:?}", s.actions);
    // Next epoch, this node primary again (promoted back) and handing over without -quiet.
    let mut e = Engine::new(cfg(1));
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let loud = with_handover(committed(3, Some(1)), 2, true);
    let s = step(&mut e, 100, Some(&loud), false, &[standby_view(2, 3, 100), witness_view(3, 3)], PRIMARY_DB, &[]);
    assert!(s.actions.iter().any(|a| matches!(a, Action::Notify(crate::notify::Event::PromotionStarted { .. }))), "{:?}", s.actions);
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
            matches!(a, Action::PrimaryDbFailed { .. } | Action::DemoteLocal { .. } | Action::PrimaryIsolated { .. } | Action::HandOver { demote: true, .. })
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
    let s = e.step(&Inputs { kernel: lease_kernel(1, 5_000, Some(1_200)), ..inputs(5_000, Some(&c), false, &[], PRIMARY_DB, &[]) });
    assert!(stops(&s) && s.desired.lease_enforced && !s.desired.vip);
}
