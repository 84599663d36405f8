//! Tests of `leader.rs`: promotion proposals and the candidate choice.

use super::tests::*;
use super::*;

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
    assert!(
        matches!(promote, Proposal::Promote { candidate, expected_epoch: 1, lsn: 120, .. } if candidate == addr(2))
    );
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

/// The voters changed during the epoch and an earlier set lacks a majority of votes (the
/// state machine would refuse): the leader waits, even with a majority of the current set.
#[test]
fn leader_waits_while_an_earlier_voter_set_of_the_epoch_lacks_a_majority() {
    let mut e = Engine::new(PeerlessWitness::cfg());
    let mut c = committed(1, Some(1));
    let dead = PeerView { alive: false, agent_age: None, ..primary_view(1, 1, 0) };
    let peers = [dead, standby_view(2, 1, 120)];
    c.votes.extend([addr(2), addr(3)]);
    c.votes_short = true;
    for now in [10, 20, 120, 1_130] {
        let s = step(&mut e, now, Some(&c), true, &peers, LocalDb::default(), &[]);
        assert!(!proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "at {now} ms");
    }
    c.votes_short = false;
    let s = step(&mut e, 2_200, Some(&c), true, &peers, LocalDb::default(), &[]);
    assert!(proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })), "{:?}", s.outcome);
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
    assert_eq!(
        candidate_of(&five([1, 0, 1], [true, true, false]), &peers, 0),
        Ok(addr(2)),
        "priority 0 and promotable=false never"
    );
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
    PeerView {
        agent_age: Some(Duration::from_millis(now - arrival)),
        lsn: lsn_at(arrival),
        ..standby_view(i, epoch, 0)
    }
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
    assert!(
        matches!(&s.outcome, Outcome::ComparingPositions { waiting_for, .. } if waiting_for.contains(&addr(4))),
        "{}",
        s.outcome
    );
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
    assert!(
        !proposals(&s).iter().any(|p| matches!(p, Proposal::Promote { .. })),
        "the old primary has not stopped yet"
    );
    c.votes.insert(addr(1));
    let s = step(&mut e, 10, Some(&c), true, &peers, LocalDb::default(), &[]);
    let promote = proposals(&s).into_iter().find(|p| matches!(p, Proposal::Promote { .. }));
    assert!(
        matches!(promote, Some(Proposal::Promote { candidate, expected_epoch: 1, .. }) if candidate == addr(2)),
        "the operator's target, not the LSN-best standby: {promote:?}"
    );
}

#[test]
fn remote_promotion_hooks_fire_on_uninvolved_nodes_only() {
    let mut e = Engine::new(EngineConfig { is_witness: true, ..cfg(3) });
    let c1 = committed(1, Some(1));
    let s =
        step(&mut e, 0, Some(&c1), false, &[primary_view(1, 1, 10), standby_view(2, 1, 100)], LocalDb::default(), &[]);
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
