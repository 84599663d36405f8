//! Every own role but the committed primary's: an old primary rejoining after a `-switchover`,
//! a primary database that is not (or not yet) the committed one, a standby following the
//! committed primary, and an idle node (database down, unknown or suspended).

use std::net::SocketAddr;

use efm_common::wire::{ROLE_IDLE, ROLE_STANDBY};

use super::{
    latch::Latch, retry_due, Action, Committed, Desired, Engine, Handover, Inputs, LocalDb, Notice, Outcome, Progress,
    Proposal,
};

/// How long after a rejoin finished a database stop still counts as planned (the local monitor
/// needs a moment to see the database up).
pub(super) const REJOIN_SETTLE_NS: u64 = 2_000_000_000;

impl Engine {
    pub(super) fn as_other(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        let me = self.cfg.me;
        let db_flag = Self::db_flags(db);
        let db_is_primary = db.up == Some(true) && db.in_recovery == Some(false);
        if let Some((p, h)) = self.rejoin_due(c, db) {
            return self.rejoining(c, p, h, db_flag, actions);
        }
        if db_is_primary || db.in_recovery == Some(false) {
            // A primary database that is not the committed primary (or none is committed yet).
            if c.primary.is_none() && c.epoch == 0 {
                let due = match self.proposed_set_primary {
                    Some((e, at)) if e == c.epoch => retry_due(at, inp.now_ns),
                    _ => true,
                };
                if due {
                    self.proposed_set_primary = Some((c.epoch, inp.now_ns));
                    actions.push(Action::Propose(Proposal::SetPrimary { node: me, expected_epoch: c.epoch }));
                }
                return (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::RegisteringPrimary);
            }
            if self.latches.once(Latch::Demoted, c.epoch) {
                actions.push(Action::DemoteLocal {
                    epoch: c.epoch,
                    primary: c.primary,
                    stop: self.cfg.stop_isolated_primary,
                });
                actions.push(Action::Notify(Notice::PrimaryFencedOff { node: me.to_string() }));
                actions.push(Action::Notify(Notice::DatabaseWrongState {
                    node: me.to_string(),
                    expected: format!(
                        "in recovery (epoch {} belongs to {})",
                        c.epoch,
                        c.primary.map_or_else(|| "no node".to_owned(), |p| p.to_string())
                    ),
                    found: "a primary (out of recovery); it stays fenced and is made a standby".into(),
                }));
            }
            return (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::FencedOldPrimary { epoch: c.epoch });
        }
        if matches!(self.promotion, Some((pe, Progress::Running)) if pe != c.epoch) {
            // Our promotion for an earlier epoch has not reported back: the database may leave
            // recovery at any moment, after the epoch moved on (found by the simulation, seed
            // 1028089775286 of the hand-over schedules: a second hand-over committed while the
            // first target was still promoting). Fenced until the promotion says how it ended.
            return (
                self.fenced(c.epoch, ROLE_STANDBY | db_flag),
                Outcome::Standby { primary: c.primary, endorsing: false },
            );
        }
        if db.up == Some(true) && !db.failed {
            if let Some(p) = c.primary {
                // Once per epoch; not when the database streams from that primary already.
                if self.cfg.auto_reconfigure
                    && self.latches.once(Latch::Followed, c.epoch)
                    && db.upstream != Some(p.ip())
                {
                    actions.push(Action::Follow { primary: p, epoch: c.epoch });
                }
                // `auto.reconfigure=false`: EFM says once that this standby still follows
                // another server (known only when its upstream is an address).
                if !self.cfg.auto_reconfigure
                    && db.upstream.is_some_and(|u| u != p.ip())
                    && self.latches.once(Latch::Followed, c.epoch)
                {
                    actions.push(Action::Notify(Notice::StandbyNotReconfigured { new_primary: p.to_string() }));
                }
            }
            return (
                self.unfenced(c.epoch, ROLE_STANDBY | db_flag, None),
                Outcome::Standby { primary: c.primary, endorsing: false },
            );
        }
        self.standby_db_failed(inp, actions);
        // Database down or not known yet: it may still be a primary; fence (when in doubt).
        (self.fenced(c.epoch, ROLE_IDLE), Outcome::Idle)
    }

    /// A database that is not the committed primary's failed (EFM's standby database failure;
    /// the monitor suspended monitoring for it): "Standby database failure" and
    /// `script.db.failure`, once per failure. Not for a database that was not running when the
    /// agent started, nor for the custom monitor (it has its own notification).
    fn standby_db_failed(&mut self, inp: &Inputs<'_>, actions: &mut Vec<Action>) {
        let Some(sus) = &self.monitor.suspension else { return };
        if sus.kind != super::SuspendKind::Failure || inp.custom_monitor_failed.is_some() {
            return;
        }
        if self.fx.standby_failure_handled != Some(sus.since_ns) {
            self.fx.standby_failure_handled = Some(sus.since_ns);
            actions.push(Action::StandbyDbFailed);
            actions.push(Action::Notify(Notice::DatabaseFailure {
                role: crate::notify::NodeRole::Standby,
                node: self.cfg.me.to_string(),
            }));
        }
    }

    /// This node handed its epoch over with `-switchover`, a later epoch is committed and the
    /// database is still stopped: time to restart it as a standby of the new primary.
    fn rejoin_due(&self, c: &Committed, db: &LocalDb) -> Option<(SocketAddr, Handover)> {
        let (e, h) = self.handover?;
        let p = c.primary?;
        (h.demote && c.epoch > e && p != self.cfg.me && db.up != Some(true)).then_some((p, h))
    }

    fn rejoining(
        &mut self,
        c: &Committed,
        p: SocketAddr,
        h: Handover,
        db_flag: u16,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        if self.latches.once(Latch::RejoinStarted, c.epoch) {
            self.rejoin_work = Some((c.epoch, Progress::Running));
            // The clean stop's result is consumed: the database is restarted from here on.
            self.stop_work = None;
            actions.push(Action::Rejoin { epoch: c.epoch, primary: p, source: h.source });
        }
        if let Some((we, Progress::Failed { reason })) = &self.rejoin_work {
            if *we == c.epoch && self.latches.once(Latch::RejoinFailureNotified, c.epoch) {
                actions.push(Action::Notify(Notice::DemotionFailed {
                    node: self.cfg.me.to_string(),
                    error: reason.clone(),
                }));
            }
        }
        (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::Rejoining { primary: p })
    }
}
