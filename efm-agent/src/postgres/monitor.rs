//! The local database monitor: EFM's `local.period`, `local.timeout`, `local.timeout.final` and
//! `db.reuse.connection.count` (EFM 2.0 guide, §3.2.1 "The Cluster Properties File"; unchanged
//! in 3.x).
//!
//! What the guide specifies, and what this module does:
//!
//! * **`local.period`** — the agent checks its own database on a fixed cadence, one check every
//!   `local.period`. A check is: connect (or reuse a connection, below) and run the probe query.
//!   Only a *positive* answer counts; a refused connection, an authentication error, a failing
//!   query or a check that does not finish are all just "no success".
//! * **`local.timeout`** — the agent watches the time since the last successful check. A single
//!   failed check does not fail the database. Once `local.timeout` has passed without any
//!   successful check (counting from the last success, or from the monitor's start), the agent
//!   stops waiting for the periodic checks and makes one **final check**. A periodic check that
//!   is still hanging at that moment is abandoned (each one is bounded by the same instant).
//! * **`local.timeout.final`** — the final check runs on a fresh connection and gets
//!   `local.timeout.final` to answer. If it succeeds, monitoring simply continues. If it fails
//!   or does not answer in time, the database is declared failed ([`DbEvent::Failed`]).
//!
//!   With the defaults (10 s / 60 s / 10 s): checks every 10 s; after 60 s without a good
//!   answer a final attempt; failure declared when that attempt fails, at the latest 70 s after
//!   the last good answer. A database that refuses connections is declared failed about
//!   `local.timeout` after its last good answer; one that hangs, about
//!   `local.timeout + local.timeout.final` after it.
//! * **`db.reuse.connection.count`** — how many times one connection is *reused* for later
//!   checks before a new one is opened: with `n`, a connection serves `1 + n` checks; `0` (the
//!   default) opens a new connection for every check. A connection on which a check failed is
//!   never reused, and the final check always opens a new one.
//!
//! After a failure the agent keeps checking every `local.period` (bounded by `local.timeout`)
//! and reports [`DbEvent::Recovered`] on the first success.
//!
//! [`LocalMonitor`] is a pure state machine with the clock passed in: [`LocalMonitor::poll`]
//! says what to do next (wait, or run a check with a deadline) and [`LocalMonitor::on_result`]
//! takes the outcome and may produce an event. [`LocalMonitor::run`] drives it against a real
//! database.

use std::{future::Future, time::Duration};

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{connect, probe, DbError, DbInfo, DbTarget};

/// The timing properties of the local check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTimings {
    /// `local.period`: time between checks.
    pub period: Duration,
    /// `local.timeout`: how long without a successful check before the final check.
    pub timeout: Duration,
    /// `local.timeout.final`: how long the final check may take.
    pub timeout_final: Duration,
    /// `db.reuse.connection.count`: times a connection is reused (0 = new one every check).
    pub reuse_count: u64,
}

impl Default for LocalTimings {
    /// EFM's defaults: 10 s, 60 s, 10 s, no reuse.
    fn default() -> Self {
        Self {
            period: Duration::from_secs(10),
            timeout: Duration::from_mins(1),
            timeout_final: Duration::from_secs(10),
            reuse_count: 0,
        }
    }
}

impl LocalTimings {
    /// The timings of a loaded configuration.
    #[must_use]
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            period: c.local_period,
            timeout: c.local_timeout,
            timeout_final: c.local_timeout_final,
            reuse_count: c.db_reuse_connection_count,
        }
    }
}

/// Where the monitor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No check has succeeded yet.
    Starting,
    /// The last success is less than `local.timeout` old (or the final check is not due yet).
    Up,
    /// The final check is running.
    FinalCheck,
    /// The database was declared failed; periodic checks continue, looking for recovery.
    Failed,
}

/// Which kind of check to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A regular check, every `local.period`.
    Periodic,
    /// The last attempt after `local.timeout` without success, bounded by `local.timeout.final`.
    Final,
}

/// A check the driver must run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRequest {
    pub kind: CheckKind,
    /// The check counts as failed ([`DbError::Timeout`]) if it has not answered by then.
    pub deadline: Instant,
    /// The driver may run the check on the connection kept from earlier checks; when false it
    /// must close that connection and open a new one.
    pub reuse_connection: bool,
    /// When the check was requested.
    pub started: Instant,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// Run this check and report its outcome with [`LocalMonitor::on_result`].
    Check(CheckRequest),
}

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbEvent {
    /// The first successful check since the monitor started.
    Available(DbInfo),
    /// Another successful check (the server's current role and positions).
    Checked(DbInfo),
    /// A check failed while the database is not (yet) declared failed; the final check comes
    /// once `silent_for` reaches `local.timeout`.
    CheckFailed { error: DbError, silent_for: Duration },
    /// The final check failed too: the local database is failed. `silent_for` is the time since
    /// the last success (or since the monitor started, if there never was one).
    Failed { error: DbError, silent_for: Duration, ever_available: bool },
    /// A check succeeded after the database had been declared failed.
    Recovered(DbInfo),
}

/// EFM's local database check as a state machine (see the module documentation).
#[derive(Debug, Clone)]
pub struct LocalMonitor {
    timings: LocalTimings,
    phase: Phase,
    /// Last successful check, or the start.
    last_ok: Instant,
    ever_available: bool,
    next_periodic: Instant,
    in_flight: Option<CheckRequest>,
    /// Checks done on the currently open connection (0: none open).
    conn_uses: u64,
    last_error: Option<DbError>,
}

impl LocalMonitor {
    /// A monitor whose first check is due at `now`.
    #[must_use]
    pub fn new(timings: LocalTimings, now: Instant) -> Self {
        Self {
            timings,
            phase: Phase::Starting,
            last_ok: now,
            ever_available: false,
            next_periodic: now,
            in_flight: None,
            conn_uses: 0,
            last_error: None,
        }
    }

    #[must_use]
    pub fn timings(&self) -> LocalTimings {
        self.timings
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The most recent failed check's error.
    #[must_use]
    pub fn last_error(&self) -> Option<&DbError> {
        self.last_error.as_ref()
    }

    /// Whether the driver should keep the connection open after the last check.
    #[must_use]
    pub fn keep_connection(&self) -> bool {
        self.conn_uses >= 1 && self.conn_uses <= self.timings.reuse_count
    }

    /// What to do at `now`. While a check is outstanding the same request is returned again.
    pub fn poll(&mut self, now: Instant) -> Step {
        if let Some(r) = self.in_flight {
            return Step::Check(r);
        }
        let final_due = self.last_ok + self.timings.timeout;
        match self.phase {
            Phase::Starting | Phase::Up | Phase::FinalCheck => {
                if now >= final_due {
                    self.phase = Phase::FinalCheck;
                    return self.start(CheckRequest {
                        kind: CheckKind::Final,
                        deadline: now + self.timings.timeout_final,
                        reuse_connection: false,
                        started: now,
                    });
                }
                if now >= self.next_periodic {
                    return self.start(CheckRequest {
                        kind: CheckKind::Periodic,
                        deadline: final_due,
                        reuse_connection: self.keep_connection(),
                        started: now,
                    });
                }
                Step::WaitUntil(self.next_periodic.min(final_due))
            }
            Phase::Failed => {
                if now >= self.next_periodic {
                    return self.start(CheckRequest {
                        kind: CheckKind::Periodic,
                        deadline: now + self.timings.timeout,
                        reuse_connection: self.keep_connection(),
                        started: now,
                    });
                }
                Step::WaitUntil(self.next_periodic)
            }
        }
    }

    fn start(&mut self, r: CheckRequest) -> Step {
        self.in_flight = Some(r);
        Step::Check(r)
    }

    /// A check made outside the monitor (`efm resume`) found the database up at `now`: a
    /// failed monitor counts as recovered from there (so its next failing check is reported
    /// again, and `local.timeout` runs from now), without an event of its own.
    pub fn recovered_elsewhere(&mut self, now: Instant) {
        if self.phase == Phase::Failed {
            self.phase = Phase::Up;
            self.last_ok = now;
            self.last_error = None;
            self.next_periodic = self.next_periodic.min(now + self.timings.period);
        }
    }

    /// The outcome of the outstanding check, observed at `now`. Ignored (returns `None`) when
    /// no check is outstanding.
    pub fn on_result(&mut self, now: Instant, result: Result<DbInfo, DbError>) -> Option<DbEvent> {
        let req = self.in_flight.take()?;
        let next = req.started + self.timings.period;
        self.next_periodic = if next > now { next } else { now };
        match result {
            Ok(info) => {
                self.conn_uses = if req.reuse_connection { self.conn_uses + 1 } else { 1 };
                self.last_ok = now;
                self.last_error = None;
                let first = !self.ever_available;
                self.ever_available = true;
                let was = self.phase;
                self.phase = Phase::Up;
                Some(match was {
                    Phase::Failed => DbEvent::Recovered(info),
                    _ if first => DbEvent::Available(info),
                    _ => DbEvent::Checked(info),
                })
            }
            Err(error) => {
                self.conn_uses = 0;
                self.last_error = Some(error.clone());
                let silent_for = now.saturating_duration_since(self.last_ok);
                match self.phase {
                    Phase::FinalCheck => {
                        self.phase = Phase::Failed;
                        Some(DbEvent::Failed { error, silent_for, ever_available: self.ever_available })
                    }
                    Phase::Starting | Phase::Up => Some(DbEvent::CheckFailed { error, silent_for }),
                    Phase::Failed => None,
                }
            }
        }
    }

    /// Drives the monitor against `target` until `shutdown` completes or the receiver of `tx`
    /// is gone, sending every event.
    pub async fn run(self, target: DbTarget, tx: mpsc::Sender<DbEvent>, shutdown: impl Future<Output = ()>) {
        self.run_with(target, tx, shutdown, None).await;
    }

    /// [`LocalMonitor::run`], also told through `recovered` when a check outside the monitor
    /// found the database up ([`LocalMonitor::recovered_elsewhere`]).
    pub async fn run_with(
        mut self,
        target: DbTarget,
        tx: mpsc::Sender<DbEvent>,
        shutdown: impl Future<Output = ()>,
        mut recovered: Option<mpsc::Receiver<()>>,
    ) {
        tokio::pin!(shutdown);
        let mut client: Option<Client> = None;
        loop {
            match self.poll(Instant::now()) {
                Step::WaitUntil(t) => {
                    let elsewhere = async {
                        match recovered.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep_until(t.into()) => {}
                        Some(()) = elsewhere => self.recovered_elsewhere(Instant::now()),
                        () = &mut shutdown => return,
                    }
                }
                Step::Check(req) => {
                    if req.kind == CheckKind::Final {
                        tracing::warn!(
                            db = %target.addr(),
                            local_timeout_ms = self.timings.timeout.as_millis(),
                            "no successful check of the local database within local.timeout; making the final check"
                        );
                    }
                    if !req.reuse_connection {
                        client = None;
                    }
                    let result = tokio::select! {
                        r = check(&mut client, &target, req.deadline, req.deadline.saturating_duration_since(req.started)) => r,
                        () = &mut shutdown => return,
                    };
                    let event = self.on_result(Instant::now(), result);
                    if !self.keep_connection() {
                        client = None;
                    }
                    if let Some(ev) = event {
                        log_event(&target, &ev);
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn log_event(target: &DbTarget, ev: &DbEvent) {
    let db = target.addr();
    match ev {
        DbEvent::Available(i) => {
            tracing::info!(%db, in_recovery = i.in_recovery, "local database available");
        }
        DbEvent::Checked(_) => tracing::trace!(%db, "local database check succeeded"),
        DbEvent::CheckFailed { error, silent_for } => {
            tracing::warn!(%db, %error, silent_ms = silent_for.as_millis(), "local database check failed");
        }
        DbEvent::Failed { error, silent_for, .. } => {
            tracing::error!(%db, %error, silent_ms = silent_for.as_millis(), "local database failed");
        }
        DbEvent::Recovered(_) => tracing::info!(%db, "local database recovered"),
    }
}

/// One check: (re)connect if needed, then probe, all before `deadline`.
async fn check(
    client: &mut Option<Client>,
    target: &DbTarget,
    deadline: Instant,
    budget: Duration,
) -> Result<DbInfo, DbError> {
    let addr = target.addr();
    let timeout = |stage| DbError::Timeout { addr: addr.clone(), stage, timeout: budget };
    if client.as_ref().is_some_and(Client::is_closed) {
        *client = None;
    }
    if client.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout("connecting"));
        }
        *client = Some(connect(target, left).await.map_err(|e| match e {
            DbError::Timeout { .. } => timeout("connecting"),
            other => other,
        })?);
    }
    let c = client.as_ref().expect("connected above");
    match tokio::time::timeout_at(deadline.into(), probe(c, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(timeout("running the check query")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn info() -> DbInfo {
        DbInfo {
            in_recovery: false,
            server_version_num: 150_000,
            current_lsn: Some(super::super::Lsn(0x0300_0000)),
            receive_lsn: None,
            replay_lsn: None,
            timeline: Some(1),
            is_streaming: false,
            upstream_host: None,
        }
    }

    fn refused() -> DbError {
        DbError::Refused { addr: "127.0.0.1:5432".into() }
    }

    fn timings(reuse: u64) -> LocalTimings {
        LocalTimings { period: 10 * S, timeout: 60 * S, timeout_final: 10 * S, reuse_count: reuse }
    }

    /// Runs the machine from `t0` to `until` against a database whose answer at time `t` is
    /// `db(t)`; a check that answers `Err(Timeout)` is modelled as hanging until its deadline.
    /// Returns the events with their times (seconds after `t0`) and the checks made.
    type Trace = (Vec<(f64, DbEvent)>, Vec<(f64, CheckRequest)>);

    fn simulate(
        m: &mut LocalMonitor,
        t0: Instant,
        until: Duration,
        db: impl Fn(Duration) -> Result<DbInfo, DbError>,
    ) -> Trace {
        let mut now = t0;
        let mut events = Vec::new();
        let mut checks = Vec::new();
        while now < t0 + until {
            match m.poll(now) {
                Step::WaitUntil(t) => {
                    assert!(t > now, "WaitUntil must be in the future");
                    now = t;
                }
                Step::Check(r) => {
                    checks.push(((now - t0).as_secs_f64(), r));
                    let res = db(now - t0);
                    if matches!(res, Err(DbError::Timeout { .. })) {
                        now = r.deadline;
                    }
                    if let Some(ev) = m.on_result(now, res) {
                        events.push(((now - t0).as_secs_f64(), ev));
                    }
                }
            }
        }
        (events, checks)
    }

    fn hang() -> DbError {
        DbError::Timeout { addr: "127.0.0.1:5432".into(), stage: "connecting", timeout: Duration::ZERO }
    }

    #[test]
    fn healthy_database_is_checked_every_period() {
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let (ev, checks) = simulate(&mut m, t0, 35 * S, |_| Ok(info()));
        let at: Vec<f64> = checks.iter().map(|c| c.0).collect();
        assert_eq!(at, [0.0, 10.0, 20.0, 30.0]);
        assert!(matches!(ev[0].1, DbEvent::Available(_)));
        assert!(ev[1..].iter().all(|e| matches!(e.1, DbEvent::Checked(_))));
        assert!(checks.iter().all(|c| c.1.kind == CheckKind::Periodic && !c.1.reuse_connection));
        assert_eq!(m.phase(), Phase::Up);
    }

    #[test]
    fn refused_database_fails_after_local_timeout_then_final_check() {
        // Last success at 20 s; from 25 s the server refuses connections.
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let (ev, checks) = simulate(&mut m, t0, 120 * S, |t| if t < 25 * S { Ok(info()) } else { Err(refused()) });
        // Periodic failures at 30..70 s do not fail the database.
        let failed_checks: Vec<f64> =
            ev.iter().filter(|e| matches!(e.1, DbEvent::CheckFailed { .. })).map(|e| e.0).collect();
        assert_eq!(failed_checks, [30.0, 40.0, 50.0, 60.0, 70.0]);
        // The final check comes exactly local.timeout after the last success, on a new connection.
        let fin: Vec<_> = checks.iter().filter(|c| c.1.kind == CheckKind::Final).collect();
        assert_eq!(fin.len(), 1);
        assert!((fin[0].0 - 80.0).abs() < 1e-9);
        assert!(!fin[0].1.reuse_connection);
        assert_eq!(fin[0].1.deadline, t0 + 90 * S);
        let failed: Vec<_> = ev.iter().filter(|e| matches!(e.1, DbEvent::Failed { .. })).collect();
        assert_eq!(failed.len(), 1);
        assert!((failed[0].0 - 80.0).abs() < 1e-9);
        let DbEvent::Failed { silent_for, ever_available, ref error } = failed[0].1 else { unreachable!() };
        assert_eq!(silent_for, 60 * S);
        assert!(ever_available);
        assert_eq!(*error, refused());
        // After the failure: quiet periodic checks every local.period.
        assert_eq!(m.phase(), Phase::Failed);
        assert!(checks.iter().any(|c| (c.0 - 90.0).abs() < 1e-9));
        assert!(ev.iter().all(|e| e.0 <= 80.0));
    }

    #[test]
    fn hanging_database_fails_after_timeout_plus_final() {
        // Last success at 20 s; from 25 s every attempt hangs.
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let (ev, checks) = simulate(&mut m, t0, 100 * S, |t| if t < 25 * S { Ok(info()) } else { Err(hang()) });
        // The hanging periodic check started at 30 s is cut off at 80 s (last success + timeout).
        let p30 = checks.iter().find(|c| (c.0 - 30.0).abs() < 1e-9).unwrap();
        assert_eq!(p30.1.deadline, t0 + 80 * S);
        let failed: Vec<_> = ev.iter().filter(|e| matches!(e.1, DbEvent::Failed { .. })).collect();
        assert_eq!(failed.len(), 1);
        assert!((failed[0].0 - 90.0).abs() < 1e-9, "failed at {}", failed[0].0);
        let DbEvent::Failed { silent_for, .. } = failed[0].1 else { unreachable!() };
        assert_eq!(silent_for, 70 * S);
    }

    #[test]
    fn successful_final_check_keeps_the_database_up() {
        // Periodic checks fail (e.g. a stale reused connection), but the final check succeeds.
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let mut final_seen = false;
        let mut now = t0;
        let mut events = Vec::new();
        while now < t0 + 100 * S {
            match m.poll(now) {
                Step::WaitUntil(t) => now = t,
                Step::Check(r) => {
                    let res = if now == t0 || r.kind == CheckKind::Final { Ok(info()) } else { Err(refused()) };
                    final_seen |= r.kind == CheckKind::Final;
                    events.extend(m.on_result(now, res));
                }
            }
        }
        assert!(final_seen);
        assert!(!events.iter().any(|e| matches!(e, DbEvent::Failed { .. })));
        assert!(events.iter().any(|e| matches!(e, DbEvent::Checked(_))));
    }

    #[test]
    fn recovery_is_reported_once() {
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let (ev, _) =
            simulate(&mut m, t0, 200 * S, |t| if t < 5 * S || t >= 150 * S { Ok(info()) } else { Err(refused()) });
        let kinds: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e.1 {
                DbEvent::Available(_) => Some("available"),
                DbEvent::Failed { .. } => Some("failed"),
                DbEvent::Recovered(_) => Some("recovered"),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["available", "failed", "recovered"]);
        let rec = ev.iter().find(|e| matches!(e.1, DbEvent::Recovered(_))).unwrap();
        assert!((rec.0 - 150.0).abs() < 1e-9);
        assert_eq!(m.phase(), Phase::Up);
    }

    #[test]
    fn database_never_up_fails_after_timeouts_from_start() {
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        let (ev, _) = simulate(&mut m, t0, 65 * S, |_| Err(refused()));
        let f = ev.iter().find(|e| matches!(e.1, DbEvent::Failed { .. })).unwrap();
        assert!((f.0 - 60.0).abs() < 1e-9);
        assert!(matches!(f.1, DbEvent::Failed { ever_available: false, .. }));
    }

    #[test]
    fn connection_reuse_count() {
        let t0 = Instant::now();
        for reuse in [0_u64, 1, 3] {
            let mut m = LocalMonitor::new(timings(reuse), t0);
            let (_, checks) = simulate(&mut m, t0, 95 * S, |_| Ok(info()));
            let pattern: Vec<bool> = checks.iter().map(|c| c.1.reuse_connection).collect();
            // A connection serves 1 + reuse checks, then a new one is opened.
            let expect: Vec<bool> = (0..pattern.len() as u64).map(|i| !i.is_multiple_of(reuse + 1)).collect();
            assert_eq!(pattern, expect, "reuse={reuse}");
        }
        // A failed check drops the connection.
        let mut m = LocalMonitor::new(timings(5), t0);
        let (_, checks) = simulate(&mut m, t0, 45 * S, |t| if t == 20 * S { Err(refused()) } else { Ok(info()) });
        let pattern: Vec<bool> = checks.iter().map(|c| c.1.reuse_connection).collect();
        assert_eq!(pattern, [false, true, true, false, true]);
    }

    #[test]
    fn a_database_found_up_elsewhere_makes_the_next_failure_count_again() {
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        // Up, then failing until declared failed.
        let (events, _) = simulate(&mut m, t0, 200 * S, |t| if t < 5 * S { Ok(info()) } else { Err(refused()) });
        assert!(events.iter().any(|e| matches!(e.1, DbEvent::Failed { .. })), "{events:?}");
        assert_eq!(m.phase(), Phase::Failed);
        // While failed, failing checks are silent.
        let t1 = t0 + 200 * S;
        let (quiet, _) = simulate(&mut m, t1, 30 * S, |_| Err(refused()));
        assert!(quiet.is_empty(), "{quiet:?}");
        // `efm resume` found it up: the next failures are reported, then a new final check.
        let t2 = t1 + 30 * S;
        m.recovered_elsewhere(t2);
        assert_eq!(m.phase(), Phase::Up);
        let (again, _) = simulate(&mut m, t2, 100 * S, |_| Err(refused()));
        assert!(matches!(again.first().map(|e| &e.1), Some(DbEvent::CheckFailed { .. })), "{again:?}");
        assert!(again.iter().any(|e| matches!(e.1, DbEvent::Failed { .. })), "{again:?}");
    }

    #[test]
    fn poll_repeats_outstanding_check_and_stray_results_are_ignored() {
        let t0 = Instant::now();
        let mut m = LocalMonitor::new(timings(0), t0);
        assert_eq!(m.on_result(t0, Ok(info())), None);
        let a = m.poll(t0);
        assert_eq!(m.poll(t0 + S), a);
        assert!(matches!(m.on_result(t0 + S, Ok(info())), Some(DbEvent::Available(_))));
        assert_eq!(m.poll(t0 + 2 * S), Step::WaitUntil(t0 + 10 * S));
    }
}
