//! Tests of `monitoring.rs`: EFM's idle state — suspension, `efm resume`, automatic resume.

use super::tests::*;
use super::*;

const DOWN: LocalDb = LocalDb {
    up: Some(false),
    in_recovery: None,
    failed: true,
    local_check_only: false,
    lsn: 0,
    timeline: 0,
    upstream: None,
};

fn streaming_from(i: u8) -> LocalDb {
    LocalDb { upstream: Some(addr(i).ip()), ..STANDBY_DB }
}

fn answers(s: &Step) -> Vec<Result<String, String>> {
    s.actions
        .iter()
        .filter_map(|a| if let Action::AnswerResume { result, .. } = a { Some(result.clone()) } else { None })
        .collect()
}

fn resumed(s: &Step) -> bool {
    s.actions.iter().any(|a| matches!(a, Action::Resumed { .. }))
}

#[test]
fn a_database_failure_suspends_monitoring_until_efm_resume() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let s = step(&mut e, 0, Some(&c), false, &peers, streaming_from(1), &[]);
    assert!(matches!(s.outcome, Outcome::Standby { .. }) && s.suspended.is_none());
    let s = e.step(&Inputs { db_error: Some("connection refused"), ..inputs(100, Some(&c), false, &peers, DOWN, &[]) });
    let sus = s.suspended.clone().expect("suspended");
    assert_eq!(sus.kind, SuspendKind::Failure);
    assert!(sus.reason.contains("connection refused"), "{}", sus.reason);
    assert!(s.desired.fenced && s.outcome == Outcome::Idle);
    // The database comes back: still idle (no auto.resume period), fenced.
    let s = step(&mut e, 200, Some(&c), false, &peers, streaming_from(1), &[]);
    assert!(s.suspended.is_some() && s.desired.fenced && s.outcome == Outcome::Idle, "{:?}", s.outcome);
    // `efm resume` while the database does not stream from the primary: refused, with why.
    let ask = [Event::ResumeRequested { id: 1, db: STANDBY_DB }];
    let s = step(&mut e, 300, Some(&c), false, &peers, streaming_from(1), &ask);
    assert!(matches!(&answers(&s)[..], [Err(why)] if why.contains("is not streaming")), "{:?}", answers(&s));
    assert!(s.suspended.is_some() && !resumed(&s));
    // Streaming from the primary: resumed, in this very step.
    let ask = [Event::ResumeRequested { id: 2, db: streaming_from(1) }];
    let s = step(&mut e, 400, Some(&c), false, &peers, streaming_from(1), &ask);
    assert!(matches!(&answers(&s)[..], [Ok(why)] if why.contains("standby of the primary")), "{:?}", answers(&s));
    assert!(resumed(&s) && s.suspended.is_none());
    assert!(matches!(s.outcome, Outcome::Standby { .. }) && !s.desired.fenced);
    // Nothing to resume any more.
    let ask = [Event::ResumeRequested { id: 3, db: streaming_from(1) }];
    let s = step(&mut e, 500, Some(&c), false, &peers, streaming_from(1), &ask);
    assert!(matches!(&answers(&s)[..], [Ok(why)] if why.contains("nothing to resume")));
}

#[test]
fn efm_resume_counts_the_operators_fresh_reading_until_the_monitor_reports_again() {
    let mut e = Engine::new(cfg(2));
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, streaming_from(1), &[]);
    let _ = step(&mut e, 100, Some(&c), false, &peers, DOWN, &[]);
    // The local monitor still says down (its next check is `local.period` away).
    let ask = [Event::ResumeRequested { id: 1, db: streaming_from(1) }];
    let s = step(&mut e, 200, Some(&c), false, &peers, DOWN, &ask);
    assert!(resumed(&s) && !s.desired.fenced, "the operator's reading counts");
    let s = step(&mut e, 300, Some(&c), false, &peers, DOWN, &[]);
    assert!(s.suspended.is_none() && !s.desired.fenced && s.db.up == Some(true));
    // The monitor reports anew (down again): its reading counts, as a new failure.
    let s = step(&mut e, 400, Some(&c), false, &peers, LocalDb { timeline: 2, ..DOWN }, &[]);
    assert!(s.desired.fenced && s.db.up == Some(false));
}

#[test]
fn a_database_not_running_at_start_resumes_by_itself_within_the_startup_period() {
    let mut e = Engine::new(EngineConfig { auto_resume_startup: Duration::from_secs(5), ..cfg(2) });
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let s = step(&mut e, 0, Some(&c), false, &peers, DOWN, &[]);
    assert_eq!(s.suspended.as_ref().map(|s| s.kind), Some(SuspendKind::Startup));
    let s = step(&mut e, 1_000, Some(&c), false, &peers, STANDBY_DB, &[]);
    assert!(s.suspended.is_some(), "up, but not streaming from the primary yet");
    let s = step(&mut e, 2_000, Some(&c), false, &peers, streaming_from(1), &[]);
    assert!(resumed(&s) && s.suspended.is_none() && !s.desired.fenced);
}

#[test]
fn auto_resume_applies_only_within_the_failure_period() {
    let mut e = Engine::new(EngineConfig { auto_resume_failure: Duration::from_secs(2), ..cfg(2) });
    let c = committed(1, Some(1));
    let peers = [primary_view(1, 1, 10)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, streaming_from(1), &[]);
    let _ = step(&mut e, 100, Some(&c), false, &peers, DOWN, &[]);
    let s = step(&mut e, 3_000, Some(&c), false, &peers, streaming_from(1), &[]);
    assert!(s.suspended.is_some() && !resumed(&s), "the period is over: only efm resume");
    let mut e = Engine::new(EngineConfig { auto_resume_failure: Duration::from_secs(2), ..cfg(2) });
    let _ = step(&mut e, 0, Some(&c), false, &peers, streaming_from(1), &[]);
    let _ = step(&mut e, 100, Some(&c), false, &peers, DOWN, &[]);
    let s = step(&mut e, 1_500, Some(&c), false, &peers, streaming_from(1), &[]);
    assert!(resumed(&s) && s.suspended.is_none());
}

#[test]
fn a_switchover_stop_is_planned_not_a_failure() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let h = with_handover(c, 2, true);
    let s = step(&mut e, 50, Some(&h), false, &peers, PRIMARY_DB, &[]);
    assert!(s.actions.contains(&Action::HandOver { epoch: 1, to: addr(2), demote: true }));
    let s = step(&mut e, 600, Some(&h), false, &peers, DOWN, &[Event::HandedOver { epoch: 1 }, Event::DbStopDone]);
    assert!(s.suspended.is_none(), "its own clean stop");
    assert_eq!(proposals(&s), vec![Proposal::Vote { voter: addr(1), epoch: 1 }]);
}

#[test]
fn a_failing_custom_monitor_fails_the_primary_over_and_blocks_resume() {
    let mut e = Engine::new(cfg(1));
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let s = e.step(&Inputs {
        custom_monitor_failed: Some("exit value 3"),
        ..inputs(100, Some(&c), false, &peers, PRIMARY_DB, &[])
    });
    assert_eq!(s.suspended.as_ref().map(|s| s.reason.as_str()), Some("custom monitor: exit value 3"));
    assert_eq!(s.outcome, Outcome::PrimaryDatabaseFailed);
    assert!(s.desired.fenced && proposals(&s).contains(&Proposal::Vote { voter: addr(1), epoch: 1 }));
    let ask = [Event::ResumeRequested { id: 7, db: PRIMARY_DB }];
    let s = e.step(&Inputs {
        custom_monitor_failed: Some("exit value 3"),
        ..inputs(200, Some(&c), false, &peers, PRIMARY_DB, &ask)
    });
    assert!(matches!(&answers(&s)[..], [Err(why)] if why.contains("custom monitor script still fails")));
}

/// The two resume paths used to disagree: `efm resume` passed "not voted" where the automatic
/// one asked the engine. Both now apply the engine's rule.
#[test]
fn neither_resume_path_resumes_a_primary_that_gave_its_epoch_up() {
    let mut e = Engine::new(EngineConfig { auto_resume_failure: Duration::from_mins(1), ..cfg(1) });
    e.set_voted_floor(1);
    let c = committed(1, Some(1));
    let peers = [standby_view(2, 1, 100), witness_view(3, 1)];
    let _ = step(&mut e, 0, Some(&c), false, &peers, PRIMARY_DB, &[]);
    let _ = step(&mut e, 100, Some(&c), false, &peers, DOWN, &[]);
    let ask = [Event::ResumeRequested { id: 1, db: PRIMARY_DB }];
    let s = step(&mut e, 200, Some(&c), false, &peers, PRIMARY_DB, &ask);
    assert!(matches!(&answers(&s)[..], [Err(why)] if why.contains("is a primary, but epoch 1")), "{:?}", answers(&s));
    assert!(s.suspended.is_some() && !resumed(&s), "nor automatically");
}
