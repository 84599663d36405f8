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

// ---- An absent primary agent (issue 13): "agent down", not a failure. ----

/// Steps voter 2 with the primary's agent absent since `since_ms` (its last PING said its
/// database was up) and its kernel serving epoch 1; `events` are this step's completions.
fn absent_step(e: &mut Engine, c: &Committed, now_ms: u64, since_ms: u64, events: &[Event]) -> Step {
    let v = absent_primary_view(1, c.epoch, Some(now_ms - since_ms));
    step(e, now_ms, Some(c), false, &[v, witness_view(3, c.epoch)], STANDBY_DB, events)
}

fn checks(s: &Step) -> usize {
    s.actions.iter().filter(|a| matches!(a, Action::CheckRemoteDb { node } if *node == addr(1))).count()
}

#[test]
fn an_absent_primary_agent_is_endorsed_while_its_kernel_serves_and_its_database_answers() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    // Its agent stops at 0: silent past the endorse window, its kernel still answers.
    let s = absent_step(&mut e, &c, 200, 0, &[]);
    assert_eq!(
        s.desired.endorse,
        Some(addr(1)),
        "its last PING said the database was up: endorsed until a check says otherwise"
    );
    assert_eq!(checks(&s), 1, "its database is checked from here at once");
    assert_eq!(s.outcome, Outcome::PrimaryAgentAbsent { primary: addr(1) });
    assert!(proposals(&s).is_empty());
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let s = absent_step(&mut e, &c, 250, 0, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_eq!(checks(&s), 0, "at most one check a second");
    // Minutes later, with a check answered every second: still endorsed, never a vote.
    let mut t = 250;
    while t < 120_000 {
        t += 50;
        let answered = t % 1_000 == 250;
        let s = absent_step(&mut e, &c, t, 0, if answered { &ok } else { &[] });
        assert_eq!(s.desired.endorse, Some(addr(1)), "at {t} ms");
        assert!(proposals(&s).is_empty(), "no vote while endorsing, at {t} ms");
        if t % 1_000 == 200 {
            assert_eq!(checks(&s), 1, "one check a second while the agent is absent, at {t} ms");
        }
    }
    // The agent comes back: endorsed on its own PINGs, no more checks.
    let s = step(&mut e, t + 50, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_eq!(s.outcome, Outcome::Standby { primary: Some(addr(1)), endorsing: true });
    assert_eq!(checks(&s), 0);
}

#[test]
fn an_absent_primary_agent_whose_database_stops_answering_is_failed_over() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let down = [Event::RemoteChecked { node: addr(1), reachable: false }];
    step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    let s = absent_step(&mut e, &c, 5_000, 0, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    let s = absent_step(&mut e, &c, 6_000, 0, &down);
    assert_eq!(s.desired.endorse, None, "its database does not answer from here");
    assert!(
        matches!(s.outcome, Outcome::PrimarySuspect { reason, .. } if reason.contains("unreachable")),
        "{}",
        s.outcome
    );
    assert!(proposals(&s).is_empty(), "the promotion wait counts from the last endorsement (5 s)");
    let wait_ms = 1_000 * 105 / 100 + 50;
    let s = absent_step(&mut e, &c, 5_000 + wait_ms - 1, 0, &[]);
    assert!(proposals(&s).is_empty(), "one ms early");
    let s = absent_step(&mut e, &c, 5_000 + wait_ms, 0, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
    // Voted: never endorsed again in this epoch, even if the database answers again.
    let s = absent_step(&mut e, &c, 8_000, 0, &ok);
    assert_eq!(s.desired.endorse, None, "a voter never endorses an epoch it voted against");
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }], "proposed again until the log has it");
}

#[test]
fn an_absent_primary_agent_without_an_answer_from_its_database_is_not_endorsed_for_long() {
    // Checks that never come back (hung): the agent's last word counts remote.timeout + 2 s.
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    let s = absent_step(&mut e, &c, 3_990, 0, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    let s = absent_step(&mut e, &c, 4_010, 0, &[]);
    assert_eq!(s.desired.endorse, None, "no evidence about its database any more");
    let s = absent_step(&mut e, &c, 4_000 + 1_100, 0, &[]);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
}

#[test]
fn an_absent_primary_agent_is_endorsed_only_on_a_serving_kernel_of_the_epoch() {
    let c = committed(1, Some(1));
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let serving = absent_primary_view(1, 1, Some(900));
    for (what, bad) in [
        ("kernel silent (partition, node down)", PeerView { node_age: Some(Duration::from_millis(600)), ..serving }),
        ("kernel never heard", PeerView { node_age: None, ..serving }),
        ("lease lapsed or fenced", PeerView { kernel: KernelPong { fenced: true, ..serving.kernel }, ..serving }),
        ("another epoch", PeerView { kernel: KernelPong { epoch: 2, ..serving.kernel }, ..serving }),
        ("not primary", PeerView { kernel: KernelPong { role: PeerRole::Standby, ..serving.kernel }, ..serving }),
    ] {
        let mut e = Engine::new(cfg(2));
        step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
        let s = step(&mut e, 400, Some(&c), false, &[bad, witness_view(3, 1)], STANDBY_DB, &ok);
        assert_eq!(s.desired.endorse, None, "{what}");
        let s = step(&mut e, 1_200, Some(&c), false, &[bad, witness_view(3, 1)], STANDBY_DB, &[]);
        assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }], "{what}: fails over as before");
    }
    // A kernel that saw a higher epoch than this voter's log: this log is behind, no endorsement.
    let mut e = Engine::new(cfg(2));
    let peers = [serving, witness_view(3, 1)];
    let s = e.step(&Inputs {
        kernel: KernelState { max_epoch_seen: 2, ..KernelState::default() },
        ..inputs(400, Some(&c), false, &peers, STANDBY_DB, &ok)
    });
    assert_eq!(s.desired.endorse, None);
}

#[test]
fn primary_agent_absence_timeout_bounds_the_endorsement() {
    let mut e = Engine::new(EngineConfig { agent_absence_timeout: Duration::from_secs(5), ..cfg(2) });
    let c = committed(1, Some(1));
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    let s = absent_step(&mut e, &c, 5_000, 0, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)), "absent for 5 s: still endorsed");
    let s = absent_step(&mut e, &c, 5_050, 0, &ok);
    assert_eq!(s.desired.endorse, None, "absent longer than agent.absence.timeout");
    assert!(
        matches!(s.outcome, Outcome::PrimarySuspect { reason, .. } if reason.contains("absence.timeout")),
        "{}",
        s.outcome
    );
    let s = absent_step(&mut e, &c, 5_000 + 1_100, 0, &ok);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
}

#[test]
fn a_voter_restarted_during_the_absence_endorses_on_a_check_of_its_own() {
    // It never heard the primary's agent: no PING to vouch for the database, a check must.
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let v = absent_primary_view(1, 1, None);
    let s = step(&mut e, 0, Some(&c), false, &[v, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, None);
    assert_eq!(checks(&s), 1);
    assert!(proposals(&s).is_empty());
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let s = step(&mut e, 30, Some(&c), false, &[v, witness_view(3, 1)], STANDBY_DB, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_eq!(s.outcome, Outcome::PrimaryAgentAbsent { primary: addr(1) });
}

#[test]
fn a_voter_that_voted_never_endorses_an_absent_primary_of_that_epoch() {
    let mut e = Engine::new(cfg(2));
    e.set_voted_floor(1);
    let c = committed(1, Some(1));
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let s = absent_step(&mut e, &c, 500, 0, &ok);
    assert_eq!(s.desired.endorse, None);
    let mut c = committed(1, Some(1));
    c.votes.insert(addr(2));
    let mut e = Engine::new(cfg(2));
    let s = absent_step(&mut e, &c, 500, 0, &ok);
    assert_eq!(s.desired.endorse, None, "its vote in the log");
}

#[test]
fn one_failed_check_of_an_absent_primary_is_retried_before_any_vote() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let ok = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let down = [Event::RemoteChecked { node: addr(1), reachable: false }];
    step(&mut e, 0, Some(&c), false, &[primary_view(1, 1, 10), witness_view(3, 1)], STANDBY_DB, &[]);
    let s = absent_step(&mut e, &c, 1_000, 0, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_eq!(checks(&s), 1);
    let s = absent_step(&mut e, &c, 2_000, 0, &[]);
    assert_eq!(checks(&s), 1, "one a second");
    // That check fails (a lost connection): not endorsed, and checked again 250 ms later.
    let s = absent_step(&mut e, &c, 2_050, 0, &down);
    assert_eq!(s.desired.endorse, None);
    let s = absent_step(&mut e, &c, 2_200, 0, &[]);
    assert_eq!(checks(&s), 0);
    let s = absent_step(&mut e, &c, 2_250, 0, &[]);
    assert_eq!(checks(&s), 1, "retried 250 ms after the failed one started");
    let s = absent_step(&mut e, &c, 2_300, 0, &ok);
    assert_eq!(s.desired.endorse, Some(addr(1)), "the retry answered: endorsed again");
    assert!(proposals(&s).is_empty());
}
