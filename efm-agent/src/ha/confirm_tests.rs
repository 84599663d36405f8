//! Tests of `confirm.rs`: a primary database failure seen only by the local checks is
//! confirmed by the other agents' remote checks first.

use efm_common::wire::{FLAG_DB_CHECK, FLAG_PRIMARY_DB_REACHED, FLAG_PRIMARY_DB_UNREACHABLE};

use super::tests::*;
use super::*;

/// The primary's database as the runtime reports it when only the local checks fail (the last
/// good check said primary; the postmaster was not seen to exit).
const CHECKS_FAIL: LocalDb = LocalDb { up: Some(false), failed: true, local_check_only: true, ..PRIMARY_DB };
/// ... and when the postmaster exited and the final check failed.
const EXITED: LocalDb = LocalDb { up: Some(false), failed: true, local_check_only: false, ..PRIMARY_DB };

/// A standby of epoch 1 whose PINGs report `found` about the primary's database.
fn standby_reporting(i: u8, found: Option<bool>) -> PeerView {
    PeerView { primary_db: found, ..standby_view(i, 1, 90) }
}

fn witness_reporting(found: Option<bool>) -> PeerView {
    PeerView { primary_db: found, ..witness_view(3, 1) }
}

fn notices(s: &Step) -> Vec<Notice> {
    s.actions.iter().filter_map(|a| if let Action::Notify(n) = a { Some(n.clone()) } else { None }).collect()
}

fn failed_over(s: &Step) -> bool {
    s.actions.iter().any(|a| matches!(a, Action::PrimaryDbFailed { .. })) || !proposals(s).is_empty()
}

/// The primary of epoch 1 (node 1) that has served, at `now_ms` with `db` and `peers`.
fn primary_step(e: &mut Engine, now_ms: u64, db: LocalDb, peers: &[PeerView]) -> Step {
    let c = committed(1, Some(1));
    e.step(&Inputs {
        db_error: Some("sorry, too many clients already (53300)"),
        ..inputs(now_ms, Some(&c), true, peers, db, &[])
    })
}

#[test]
fn a_database_another_agent_reaches_is_not_failed_over_the_primary_idles() {
    let mut e = Engine::new(cfg(1));
    let quiet = [standby_reporting(2, None), witness_reporting(None)];
    assert_eq!(primary_step(&mut e, 0, PRIMARY_DB, &quiet).outcome, Outcome::Primary { epoch: 1 });
    // The local checks fail: keep serving, ask the others.
    let s = primary_step(&mut e, 100, CHECKS_FAIL, &quiet);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 });
    assert!(!s.desired.fenced && s.desired.lease_enforced && s.desired.vip, "serves on, VIP kept: {:?}", s.desired);
    assert_eq!(s.desired.ping_flags, ROLE_PRIMARY | FLAG_DB_CHECK, "asks for checks; no FLAG_DB_UP");
    assert!(!failed_over(&s), "{:?}", s.actions);
    // The standby reached it: no failover, idle, EFM's notification once.
    let reached = [standby_reporting(2, Some(true)), witness_reporting(Some(false))];
    let s = primary_step(&mut e, 600, CHECKS_FAIL, &reached);
    assert_eq!(s.outcome, Outcome::PrimaryIdle { epoch: 1, reached_by: addr(2) });
    assert!(!s.desired.fenced && s.desired.lease_enforced && s.desired.vip);
    assert_eq!(s.desired.ping_flags, ROLE_PRIMARY | FLAG_DB_CHECK);
    assert_eq!(notices(&s), vec![Notice::PrimaryCannotPingLocalDb]);
    assert!(!failed_over(&s));
    let sus = s.suspended.clone().expect("the agent is idle");
    assert!(sus.reason.contains("53300") && sus.reason.contains("198.18.0.2:7800"), "{}", sus.reason);
    // Long after remote.timeout: still no failover while an agent keeps reaching it.
    for t in (1_000..20_000).step_by(500) {
        let s = primary_step(&mut e, t, CHECKS_FAIL, &reached);
        assert_eq!(s.outcome, Outcome::PrimaryIdle { epoch: 1, reached_by: addr(2) }, "at {t} ms");
        assert!(notices(&s).is_empty() && !failed_over(&s), "at {t} ms: {:?}", s.actions);
    }
    // The local checks work again, but the agent stays idle until `efm resume` ...
    let s = primary_step(&mut e, 20_000, PRIMARY_DB, &reached);
    assert_eq!(s.outcome, Outcome::PrimaryIdle { epoch: 1, reached_by: addr(2) });
    assert!(s.suspended.is_some() && !failed_over(&s));
    // ... which resumes it: monitored, FLAG_DB_UP again.
    let c = committed(1, Some(1));
    let ask = [Event::ResumeRequested { id: 7, db: PRIMARY_DB }];
    let s = e.step(&inputs(20_100, Some(&c), true, &reached, PRIMARY_DB, &ask));
    assert!(s.actions.iter().any(|a| matches!(a, Action::AnswerResume { id: 7, result: Ok(_) })), "{:?}", s.actions);
    assert_eq!(s.outcome, Outcome::Primary { epoch: 1 });
    assert_eq!(s.desired.ping_flags, ROLE_PRIMARY | FLAG_DB_UP);
    assert!(s.suspended.is_none());
}

#[test]
fn nobody_reaching_the_database_within_the_confirm_wait_fails_it_over() {
    let mut e = Engine::new(cfg(1));
    let wait_ms = u64::try_from(e.config().confirm_wait().as_millis()).unwrap();
    assert_eq!(wait_ms, 2_000 + 1_000 + 200, "remote.timeout + a second + four heartbeats");
    let quiet = [standby_reporting(2, None), witness_reporting(None)];
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &quiet);
    let s = primary_step(&mut e, 1_000, CHECKS_FAIL, &quiet);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 });
    let s = primary_step(&mut e, 1_000 + wait_ms, CHECKS_FAIL, &quiet);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 }, "not before the wait is over");
    let s = primary_step(&mut e, 1_001 + wait_ms, CHECKS_FAIL, &quiet);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed);
    assert!(s.desired.fenced && !s.desired.vip);
    assert!(s.actions.contains(&Action::PrimaryDbFailed { epoch: 1, stop: false }));
    assert!(proposals(&s).contains(&Proposal::Vote { voter: addr(1), epoch: 1 }), "gives its epoch up");
    assert!(notices(&s).iter().any(|n| matches!(n, Notice::DatabaseFailure { .. })));
    assert!(!notices(&s).contains(&Notice::PrimaryCannotPingLocalDb));
    // A report that comes too late changes nothing: the epoch is given up.
    let s = primary_step(&mut e, 2_000 + wait_ms, CHECKS_FAIL, &[standby_reporting(2, Some(true))]);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed);
}

#[test]
fn every_agent_reporting_it_unreachable_for_a_second_fails_it_over_before_the_wait() {
    let mut e = Engine::new(cfg(1));
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &[standby_reporting(2, None), witness_reporting(None)]);
    let unreachable = [standby_reporting(2, Some(false)), witness_reporting(Some(false))];
    let s = primary_step(&mut e, 100, CHECKS_FAIL, &unreachable);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 }, "one round of checks is not enough");
    // A wrong check among them is replaced by the next one: not yet.
    let s = primary_step(&mut e, 700, CHECKS_FAIL, &[standby_reporting(2, None), witness_reporting(Some(false))]);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 });
    let s = primary_step(&mut e, 800, CHECKS_FAIL, &unreachable);
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 });
    let s = primary_step(&mut e, 2_000, CHECKS_FAIL, &unreachable);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed, "unreachable for 1.2 s: confirmed, long before 3.2 s");
    assert!(s.desired.fenced && failed_over(&s));
}

#[test]
fn an_idle_primary_whose_database_then_stops_answering_fails_over() {
    let mut e = Engine::new(cfg(1));
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &[standby_reporting(2, None)]);
    for t in (100..=4_000).step_by(100) {
        let s = primary_step(&mut e, t, CHECKS_FAIL, &[standby_reporting(2, Some(true))]);
        assert!(matches!(s.outcome, Outcome::PrimaryIdle { .. }), "at {t} ms");
    }
    let gone = [standby_reporting(2, Some(false)), witness_reporting(Some(false))];
    let s = primary_step(&mut e, 4_500, CHECKS_FAIL, &gone);
    assert!(matches!(s.outcome, Outcome::PrimaryIdle { .. }), "the first unreachable round");
    let s = primary_step(&mut e, 5_800, CHECKS_FAIL, &gone);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed);
    // Nobody reporting at all since the last reach: the confirm wait counts from that reach.
    let mut e = Engine::new(cfg(1));
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &[standby_reporting(2, None)]);
    let _ = primary_step(&mut e, 100, CHECKS_FAIL, &[standby_reporting(2, Some(true))]);
    let s = primary_step(&mut e, 3_300, CHECKS_FAIL, &[standby_reporting(2, None)]);
    assert!(matches!(s.outcome, Outcome::PrimaryIdle { .. }), "within the wait after the last reach");
    let s = primary_step(&mut e, 3_400, CHECKS_FAIL, &[standby_reporting(2, None)]);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed, "no agent reached it for longer than the wait");
    // The postmaster exiting while idle is definitive at once.
    let mut e = Engine::new(cfg(1));
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &[standby_reporting(2, None)]);
    let _ = primary_step(&mut e, 100, CHECKS_FAIL, &[standby_reporting(2, Some(true))]);
    let s = primary_step(&mut e, 200, EXITED, &[standby_reporting(2, Some(true))]);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed, "pidfd: down for certain");
}

#[test]
fn a_postmaster_exit_or_a_custom_monitor_failure_fails_over_at_once() {
    let mut e = Engine::new(cfg(1));
    let reached = [standby_reporting(2, Some(true))];
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &reached);
    let s = primary_step(&mut e, 100, EXITED, &reached);
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed, "no confirmation asked");
    assert!(s.desired.fenced && failed_over(&s));
    assert_eq!(s.desired.ping_flags & FLAG_DB_CHECK, 0);

    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let _ = primary_step(&mut e, 0, PRIMARY_DB, &reached);
    let s = e.step(&Inputs {
        custom_monitor_failed: Some("exit value 1"),
        ..inputs(100, Some(&c), true, &reached, CHECKS_FAIL, &[])
    });
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed, "the custom monitor is the operator's own verdict");
}

#[test]
fn a_primary_cut_off_while_its_checks_fail_runs_the_isolated_flow_not_the_failure() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let lapsed = |now: u64, ms: Option<u64>, db: LocalDb| Inputs {
        kernel: lease_kernel(1, now, ms),
        ..inputs(now, Some(&c), false, &[], db, &[])
    };
    let _ = e.step(&lapsed(5_000, None, PRIMARY_DB));
    let s = e.step(&lapsed(6_000, None, CHECKS_FAIL));
    assert_eq!(s.outcome, Outcome::PrimaryCheckingDb { epoch: 1 });
    let s = e.step(&lapsed(7_500, Some(1_400), CHECKS_FAIL));
    assert_eq!(s.outcome, Outcome::PrimaryIsolated { epoch: 1 });
    assert!(!s.desired.vip && s.desired.lease_enforced && !s.desired.fenced);
    assert!(proposals(&s).is_empty(), "cut off, not failed: no vote");
}

#[test]
fn voters_keep_endorsing_a_primary_asking_for_checks_unless_nobody_reaches_its_database() {
    let asking = PeerView { db_up: false, db_check: true, ..primary_view(1, 1, 10) };
    let c = committed(1, Some(1));
    // Standby 2, no check result yet: endorses (it only delays a failover).
    let mut e = Engine::new(cfg(2));
    let s = step(&mut e, 0, Some(&c), false, &[asking, witness_view(3, 1)], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert!(s.actions.contains(&Action::CheckRemoteDb { node: addr(1) }), "checks it: {:?}", s.actions);
    assert_eq!(s.desired.ping_flags & (FLAG_PRIMARY_DB_REACHED | FLAG_PRIMARY_DB_UNREACHABLE), 0);
    // Its check reached the server: endorses, and says so in its PINGs.
    let done = [Event::RemoteChecked { node: addr(1), reachable: true }];
    let s = step(&mut e, 100, Some(&c), false, &[asking, witness_view(3, 1)], STANDBY_DB, &done);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_ne!(s.desired.ping_flags & FLAG_PRIMARY_DB_REACHED, 0);
    assert!(proposals(&s).is_empty());

    // Standby 2 cannot reach it, but the witness does: keeps endorsing, no vote, and EFM's
    // "Database connection failure" once.
    let mut e = Engine::new(cfg(2));
    let witness_reached = PeerView { primary_db: Some(true), ..witness_view(3, 1) };
    let fail = [Event::RemoteChecked { node: addr(1), reachable: false }];
    let s = step(&mut e, 0, Some(&c), false, &[asking, witness_reached], STANDBY_DB, &fail);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    assert_ne!(s.desired.ping_flags & FLAG_PRIMARY_DB_UNREACHABLE, 0);
    assert!(
        matches!(&notices(&s)[..], [Notice::DatabaseConnectionFailure { error }] if error.contains("198.18.0.3:7800")),
        "{:?}",
        notices(&s)
    );
    for t in (100..3_000).step_by(100) {
        let s = step(&mut e, t, Some(&c), false, &[asking, witness_reached], STANDBY_DB, &fail);
        assert_eq!(s.desired.endorse, Some(addr(1)), "at {t} ms");
        assert!(proposals(&s).is_empty() && notices(&s).is_empty(), "at {t} ms: {:?}", s.actions);
    }

    // Nobody reaches it: stops endorsing and votes after the promotion wait.
    let mut e = Engine::new(cfg(2));
    let witness_failed = PeerView { primary_db: Some(false), ..witness_view(3, 1) };
    let s = step(&mut e, 0, Some(&c), false, &[asking, witness_failed], STANDBY_DB, &[]);
    assert_eq!(s.desired.endorse, Some(addr(1)));
    let s = step(&mut e, 50, Some(&c), false, &[asking, witness_failed], STANDBY_DB, &fail);
    assert_eq!(s.desired.endorse, None);
    assert!(matches!(s.outcome, Outcome::PrimarySuspect { .. }), "{:?}", s.outcome);
    assert!(notices(&s).is_empty(), "the database is down, not this node's path: {:?}", notices(&s));
    let s = step(&mut e, 1_200, Some(&c), false, &[asking, witness_failed], STANDBY_DB, &fail);
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(2), epoch: 1 }]);
}
