//! Tests of `standby.rs`: every other own role.

use super::tests::*;
use super::*;

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
fn standby_follows_a_new_primary_once() {
    let mut e = Engine::new(cfg(2));
    let c = committed(3, Some(4));
    let s = step(&mut e, 0, Some(&c), false, &[primary_view(4, 3, 10)], STANDBY_DB, &[]);
    assert!(s.actions.contains(&Action::Follow { primary: addr(4), epoch: 3 }));
    let s = step(&mut e, 10, Some(&c), false, &[primary_view(4, 3, 10)], STANDBY_DB, &[]);
    assert!(s.actions.is_empty());
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
fn a_switched_over_primary_rejoins_as_a_standby_of_the_new_one() {
    let mut e = Engine::new(cfg(1));
    let c = with_handover(committed(1, Some(1)), 2, true);
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let down = LocalDb { up: Some(false), failed: true, ..PRIMARY_DB };
    let _ = step(&mut e, 500, Some(&c), false, &peers, down, &[Event::HandedOver { epoch: 1 }]);
    let mut c2 = committed(2, Some(2));
    c2.previous_primary = Some(addr(1));
    let s = step(
        &mut e,
        800,
        Some(&c2),
        false,
        &[primary_view(2, 2, 10), witness_view(3, 2)],
        down,
        &[Event::HandedOver { epoch: 1 }],
    );
    assert!(s.actions.contains(&Action::Rejoin { epoch: 2, primary: addr(2), source: None }));
    assert_eq!(s.outcome, Outcome::Rejoining { primary: addr(2) });
    assert!(s.desired.fenced);
    // Started as a standby: an ordinary, unfenced standby that follows the new primary.
    let s = step(&mut e, 3_000, Some(&c2), false, &[primary_view(2, 2, 10), witness_view(3, 2)], STANDBY_DB, &[]);
    assert!(matches!(s.outcome, Outcome::Standby { primary: Some(p), .. } if p == addr(2)));
    assert!(!s.desired.fenced);
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

/// Found by the simulation (seed 1028089775286 of the hand-over schedules, with the absent-agent
/// changes' timing): a second hand-over committed while the first target was still promoting;
/// its `pg_promote()` completed after epoch 3 named another node, and its kernel, unfenced as a
/// standby's, let writes in for a moment beside the new primary's.
#[test]
fn a_node_whose_promotion_has_not_reported_stays_fenced_after_the_epoch_moved_on() {
    let mut e = Engine::new(cfg(2));
    let c2 = committed(2, Some(2));
    let s = step(&mut e, 0, Some(&c2), false, &[witness_view(3, 2)], STANDBY_DB, &[]);
    assert!(s.actions.iter().any(|a| matches!(a, Action::PromoteLocal { epoch: 2, .. })));
    // Epoch 3 names node 1 before the promotion reported: still a standby database, but fenced.
    let c3 = committed(3, Some(1));
    let s = step(&mut e, 100, Some(&c3), false, &[primary_view(1, 3, 10), witness_view(3, 3)], STANDBY_DB, &[]);
    assert!(s.desired.fenced, "its database may leave recovery any moment");
    // The promotion reports: the database is a primary of an old epoch, fenced and demoted.
    let done = [Event::Promoted { epoch: 2 }];
    let s = step(&mut e, 200, Some(&c3), false, &[primary_view(1, 3, 10), witness_view(3, 3)], PRIMARY_DB, &done);
    assert!(s.desired.fenced);
    assert_eq!(s.outcome, Outcome::FencedOldPrimary { epoch: 3 });
    // A failed promotion: the standby serves reads again.
    let mut e = Engine::new(cfg(2));
    let _ = step(&mut e, 0, Some(&c2), false, &[witness_view(3, 2)], STANDBY_DB, &[]);
    let failed = [Event::PromotionFailed { epoch: 2, reason: "x".into() }];
    let s = step(&mut e, 100, Some(&c3), false, &[primary_view(1, 3, 10), witness_view(3, 3)], STANDBY_DB, &failed);
    assert!(!s.desired.fenced);
}
