//! Tests of `primary.rs`: this node as the committed primary.

use super::tests::*;
use super::*;

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
    let lapsed = |now: u64, ms: Option<u64>| Inputs {
        kernel: lease_kernel(1, now, ms),
        ..inputs(now, Some(&c), false, &[], PRIMARY_DB, &[])
    };
    let s = e.step(&lapsed(5_000, Some(300)));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "a short lapse (start-up, a glitch) is not isolation");
    let s = e.step(&lapsed(6_500, Some(2_000)));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "the lease floor: granted until 6 s");
    let s = e.step(&lapsed(7_200, Some(2_000)));
    assert_eq!(s.outcome, Outcome::PrimaryIsolated { epoch: 1 });
    assert!(!s.desired.vip && s.desired.lease_enforced, "VIP released; the lease keeps clients off");
    assert!(s.actions.contains(&Action::PrimaryIsolated { epoch: 1, stop: false }));
    assert!(proposals(&s).is_empty(), "no vote: nothing sticky");
    assert!(
        !e.step(&lapsed(7_300, Some(2_100))).actions.iter().any(|a| matches!(a, Action::PrimaryIsolated { .. })),
        "once per episode"
    );
    let s = e.step(&lapsed(7_400, None));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 }, "endorsed again: back to primary");
    assert!(s.desired.vip);
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
fn a_hand_over_the_primary_could_not_carry_out_is_called_off_and_it_serves_again() {
    let mut e = Engine::new(cfg(1));
    let c = with_handover(committed(1, Some(1)), 2, true);
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let failed = Event::HandOverFailed { epoch: 1, reason: "pg_ctl stop failed".into() };
    let s = step(&mut e, 100, Some(&c), false, &peers, PRIMARY_DB, std::slice::from_ref(&failed));
    assert_eq!(proposals(&s), vec![Proposal::ClearSwitchover]);
    assert!(s.desired.fenced, "fenced until the log shows the hand-over called off");
    let cleared = committed(1, Some(1));
    let s = step(&mut e, 200, Some(&cleared), false, &peers, PRIMARY_DB, std::slice::from_ref(&failed));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 });
    assert!(!s.desired.fenced && s.desired.vip);
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
    let s = step(&mut e, 400, Some(&h), false, &peers, PRIMARY_DB, std::slice::from_ref(&failed));
    assert_eq!(proposals(&s), vec![Proposal::ClearSwitchover]);
    let s = step(&mut e, 500, Some(&c), false, &peers, PRIMARY_DB, std::slice::from_ref(&failed));
    assert_eq!(s.outcome, Outcome::Primary { epoch: 2 }, "its promotion finished before the hand-over");
    assert!(!s.desired.fenced && s.desired.vip);
    assert!(!s.actions.iter().any(|a| matches!(a, Action::PromoteLocal { .. })));
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
    assert!(
        s.actions.iter().any(|a| matches!(a, Action::Notify(crate::notify::Event::PromotionStarted { .. }))),
        "{:?}",
        s.actions
    );
}
