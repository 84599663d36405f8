//! Tests of `voter.rs`: endorsements and votes.

use super::tests::*;
use super::*;

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
fn standby_endorses_a_healthy_primary_only() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 40)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert!(!s.desired.fenced && !s.desired.lease_enforced);
    assert_eq!(s.outcome, Outcome::Standby { primary: Some(addr(1)), endorsing: true });
    for bad in [
        primary_view(1, 1, 200),                             // not heard within endorse_window
        PeerView { epoch: 0, ..primary_view(1, 1, 10) },     // other epoch
        PeerView { fenced: true, ..primary_view(1, 1, 10) }, // fenced
        PeerView { db_up: false, ..primary_view(1, 1, 10) }, // database down
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
    let silent = |now: u64| PeerView {
        alive: false,
        agent_age: Some(Duration::from_millis(now - 1_000)),
        ..primary_view(1, 1, 0)
    };
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
    assert_eq!(
        proposals(&s),
        vec![Proposal::Vote { voter: addr(2), epoch: 1 }],
        "its own vote means its kernel is fenced"
    );
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
    let s = e.step(&Inputs {
        kernel: KernelState { max_epoch_seen: 2, ..KernelState::default() },
        ..inputs(0, Some(&c), false, &peers, STANDBY_DB, &[])
    });
    assert_eq!(s.desired.endorse, None, "epoch 2 exists somewhere: epoch 1 is superseded");
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
    assert!(!s
        .actions
        .iter()
        .any(|a| matches!(a, Action::Notify(crate::notify::Event::ManualFailoverRequired { .. }))));
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
