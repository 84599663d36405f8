//! EFM's monitoring states. A database failure (or a database that was not running when the
//! agent started, or a failing custom monitor) suspends monitoring: the node stays fenced and
//! idle until `efm resume` ([`Event::ResumeRequested`]) or, within `auto.resume.failure.period`
//! / `auto.resume.startup.period`, until the database is back in a state the cluster accepts.
//! Stops and starts the engine ordered itself (a `-switchover`'s clean stop, the rejoin after
//! it) are not failures. Both resume paths apply one rule ([`Engine::resumable`]).

use std::net::SocketAddr;

use super::{standby::REJOIN_SETTLE_NS, Action, Committed, Engine, Event, Inputs, LocalDb, Progress};

/// Why a node's database is not monitored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspension {
    pub reason: String,
    pub kind: SuspendKind,
    /// When it began (`CLOCK_MONOTONIC` ns).
    pub since_ns: u64,
}

/// Which `auto.resume.*.period` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendKind {
    /// The database was not running when the agent started (`auto.resume.startup.period`).
    Startup,
    /// The database failed (`auto.resume.failure.period`).
    Failure,
}

/// The monitoring state between steps.
#[derive(Clone, Debug, Default)]
pub(super) struct Monitor {
    pub(super) suspension: Option<Suspension>,
    /// The database's availability in the previous step, and whether there was one.
    last_db_up: Option<bool>,
    db_seen: bool,
    /// A reading fresher than the local monitor's (a promotion that completed, the operator's
    /// check for `efm resume`): (the monitor's reading it supersedes, the fresher one). Used
    /// until the local monitor reports anything else.
    fresher: Option<(LocalDb, LocalDb)>,
}

/// The local monitor's reading without the WAL position (which moves every cycle).
fn same_reading(a: &LocalDb, b: &LocalDb) -> bool {
    LocalDb { lsn: 0, ..*a } == LocalDb { lsn: 0, ..*b }
}

impl Monitor {
    /// `pg_promote()` confirmed the database left recovery: a primary from now on, before the
    /// local monitor's next check says so.
    pub(super) fn promoted(&mut self, reading: LocalDb) {
        let fresh = LocalDb { up: Some(true), in_recovery: Some(false), failed: false, upstream: None, ..reading };
        self.fresher = Some((reading, fresh));
    }
}

impl Engine {
    /// The database as this step sees it: the freshest reading, failed while suspended.
    pub(super) fn monitor(&mut self, inp: &Inputs<'_>, out: &mut Vec<Action>) -> LocalDb {
        let mut db = inp.db;
        if let Some((stale, fresh)) = self.monitor.fresher {
            if same_reading(&stale, &inp.db) {
                db = LocalDb { lsn: inp.db.lsn, ..fresh };
            } else {
                self.monitor.fresher = None;
            }
        }
        if self.cfg.is_witness {
            return db;
        }
        let now = inp.now_ns;
        let planned = self.planned(now);
        let prev = std::mem::replace(&mut self.monitor.last_db_up, db.up);
        let first = !std::mem::replace(&mut self.monitor.db_seen, true);
        if self.monitor.suspension.is_none() {
            let reason = match (prev, db.up) {
                _ if inp.custom_monitor_failed.is_some() => Some((
                    format!("custom monitor: {}", inp.custom_monitor_failed.unwrap_or_default()),
                    SuspendKind::Failure,
                )),
                _ if first && db.up != Some(true) => {
                    Some(("the database was not running when the agent started".to_owned(), SuspendKind::Startup))
                }
                (Some(true) | None, Some(false)) if !planned => Some((
                    format!("database failure: {}", inp.db_error.unwrap_or("it stopped answering")),
                    SuspendKind::Failure,
                )),
                _ => None,
            };
            if let Some((reason, kind)) = reason {
                let period = match kind {
                    SuspendKind::Startup => self.cfg.auto_resume_startup,
                    SuspendKind::Failure => self.cfg.auto_resume_failure,
                };
                if !period.is_zero() {
                    // EFM's "Starting auto resume check" (the agent checks whether it can resume).
                    out.push(Action::Notify(super::Notice::AutoResumeCheckStarted { period_secs: period.as_secs() }));
                }
                self.monitor.suspension = Some(Suspension { reason, kind, since_ns: now });
            }
        }
        let Some(sus) = &self.monitor.suspension else { return db };
        let period = match sus.kind {
            SuspendKind::Startup => self.cfg.auto_resume_startup,
            SuspendKind::Failure => self.cfg.auto_resume_failure,
        };
        let within = now.saturating_sub(sus.since_ns) <= super::duration_ns(period);
        if inp.custom_monitor_failed.is_none()
            && !period.is_zero()
            && within
            && self.resumable(&db, inp.committed).is_ok()
        {
            self.monitor.suspension = None;
            out.push(Action::Resumed { how: "automatically (auto.resume period)" });
            return db;
        }
        db.failed = true;
        db
    }

    /// Database stops and starts the engine ordered itself are in progress (a `-switchover`'s
    /// clean stop and the database stopped after it, a rejoin and a moment after it).
    fn planned(&self, now: u64) -> bool {
        matches!(self.stop_work, Some((_, Progress::Running | Progress::Done { .. })))
            || match self.rejoin_work {
                Some((_, Progress::Running)) => true,
                Some((_, Progress::Done { at_ns })) => now.saturating_sub(at_ns) < REJOIN_SETTLE_NS,
                _ => false,
            }
    }

    /// Whether a suspended node may resume: its database runs and is either the primary of the
    /// current epoch (never voted against) or a standby streaming from that primary.
    ///
    /// # Errors
    /// What is wrong with the database, and what to do about it.
    pub fn resumable(&self, db: &LocalDb, committed: Option<&Committed>) -> Result<String, String> {
        let me = self.cfg.me;
        let (Some(true), Some(in_recovery)) = (db.up, db.in_recovery) else {
            return Err(format!("the database of {me} is not running: start it, then run efm resume again"));
        };
        let (epoch, primary) = committed.map_or((0, None), |c| (c.epoch, c.primary));
        let own_vote = committed.is_some_and(|c| c.votes.contains(&me));
        match primary {
            _ if !in_recovery => {
                if primary == Some(me) && !self.voted_against(epoch) && !own_vote {
                    Ok(format!("the database of {me} is the primary of epoch {epoch}"))
                } else {
                    Err(format!(
                        "the database of {me} is a primary, but epoch {epoch} belongs to {}: make it a standby of that primary (for example pg_rewind and standby.signal), start it, then resume",
                        primary.map_or("no node".into(), |p: SocketAddr| p.to_string())
                    ))
                }
            }
            None => Ok(format!("the database of {me} is a standby (no primary is committed yet)")),
            Some(p) if p == me => Err(format!("{me} is the primary of epoch {epoch} but its database is in recovery; wait for the promotion to finish")),
            Some(p) if db.upstream == Some(p.ip()) => Ok(format!("the database of {me} is a standby of the primary {p}")),
            Some(p) => Err(format!(
                "the database of {me} {} , not from the primary of epoch {epoch} ({p}): point primary_conninfo at {}, restart it, then resume",
                db.upstream.map_or("is not streaming".into(), |u| format!("replicates from {u}")),
                p.ip()
            )),
        }
    }

    /// `efm resume`, with the operator's fresh reading of the database.
    pub(super) fn resume_requested(&mut self, id: u64, db: &LocalDb, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        let me = self.cfg.me;
        let result = if self.cfg.is_witness {
            Err("this node is a witness: it has no database to monitor".to_owned())
        } else if self.monitor.suspension.is_none() {
            Ok(format!("the agent on {me} is monitoring its database already; nothing to resume"))
        } else if let Some(c) = inp.custom_monitor_failed {
            Err(format!("the custom monitor script still fails ({c}); fix that first"))
        } else {
            self.resumable(db, inp.committed).inspect(|_| {
                self.monitor.suspension = None;
                self.monitor.fresher = Some((inp.db, *db));
                self.monitor.last_db_up = db.up;
                out.push(Action::Resumed { how: "efm resume" });
            })
        };
        out.push(Action::AnswerResume { id, result });
    }
}

/// The event an operator's `efm resume` becomes.
#[must_use]
pub fn resume_event(id: u64, db: LocalDb) -> Event {
    Event::ResumeRequested { id, db }
}
