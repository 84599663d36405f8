//! This node as the committed primary: serve under the lease, promote a standby the log named,
//! hand the epoch over on an operator's request, give the epoch up when the database fails
//! (safety rule 4) — for certain, or as the other agents confirm it (`confirm.rs`) — and run
//! EFM's isolated primary flow when the lease stays lapsed.

use std::time::Duration;

use efm_common::wire::{FLAG_DB_CHECK, ROLE_PRIMARY, ROLE_STANDBY};

use super::{
    confirm::Verdict, latch::Latch, retry_due, Action, Committed, Desired, Engine, Handover, Inputs, LocalDb, Notice,
    Outcome, Progress, Proposal,
};

impl Engine {
    pub(super) fn as_committed_primary(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        k: u32,
        lapsed: Option<Duration>,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        let (me, e) = (self.cfg.me, c.epoch);
        if let Some(h) = c.handover.filter(|h| h.from == me) {
            return self.handing_over(c, inp, db, h, k, actions);
        }
        if self.handover.is_some_and(|(he, _)| he == e) && !self.voted_against(e) {
            // The hand-over was called off before this node voted: it is still the primary.
            self.handover = None;
            self.handover_cleared = None;
        }
        // A database down only to the local checks: the other agents are asked first
        // (confirm.rs); until they answer, or when one of them reaches it, this node stays the
        // serving primary, asking for checks in its PINGs.
        let confirm = self.confirm_primary_db(c, inp, db, actions);
        let unconfirmed = matches!(confirm, Some(Verdict::Asking | Verdict::Reached { .. }));
        let db_flag = Self::db_flags(db) | if unconfirmed { FLAG_DB_CHECK } else { 0 };
        let isolated = lapsed.is_some_and(|d| d >= self.cfg.promotion_wait());
        if !isolated {
            // Endorsed again: the isolation episode is over (the VIP comes back below).
            self.latches.reset(Latch::IsolationHandled, e);
        }
        if isolated && ((!db.failed && db.up != Some(false)) || unconfirmed) {
            // Unendorsed for longer than any voter waits before voting: cut off from a majority.
            // The kernel already refuses clients (lease); give up the VIP and run EFM's isolated
            // primary flow once per episode. No vote and nothing sticky: when endorsements come
            // back, so does the primary.
            if self.latches.once(Latch::IsolationHandled, e) {
                actions.push(Action::PrimaryIsolated { epoch: e, stop: self.cfg.stop_isolated_primary });
                actions.push(Action::Notify(Notice::IsolatedPrimary { node: me.to_string() }));
            }
            return (Self::serving(e, k, db_flag, false), Outcome::PrimaryIsolated { epoch: e });
        }
        match confirm {
            Some(Verdict::Asking) => {
                return (Self::serving(e, k, db_flag, true), Outcome::PrimaryCheckingDb { epoch: e });
            }
            Some(Verdict::Reached { by }) => {
                return (Self::serving(e, k, db_flag, true), Outcome::PrimaryIdle { epoch: e, reached_by: by });
            }
            Some(Verdict::Failed) | None => {}
        }
        if db.failed || db.up == Some(false) || self.voted_against(e) {
            // Fenced by its own kernel from this cycle on, so its vote is safe at once; without
            // it a cluster that has lost another voter could never replace it.
            self.vote_against_own_epoch(c, inp.now_ns, actions);
            if self.latches.once(Latch::DbFailureHandled, e) {
                actions.push(Action::PrimaryDbFailed { epoch: e, stop: self.cfg.stop_failed_primary });
                actions.push(Action::Notify(Notice::DatabaseFailure {
                    role: crate::notify::NodeRole::Primary,
                    node: me.to_string(),
                }));
            }
            return (self.fenced(e, ROLE_PRIMARY), Outcome::PrimaryDatabaseFailed);
        }
        let promoted = matches!(self.promotion, Some((pe, Progress::Done { .. })) if pe == e);
        let db_is_primary = db.up == Some(true) && db.in_recovery == Some(false);
        if db_is_primary && (promoted || !self.latches.fired(Latch::PromoteStarted, e)) {
            // Registered or promoted primary serving under the lease.
            return (Self::serving(e, k, db_flag, true), Outcome::Primary { epoch: e });
        }
        // A standby named primary by the log: promote it (once per epoch).
        if db.up == Some(true) && self.latches.once(Latch::PromoteStarted, e) {
            self.promotion = Some((e, Progress::Running));
            actions.push(Action::PromoteLocal { epoch: e, old_primary: c.previous_primary.filter(|o| *o != me) });
        }
        // Take the VIP at once: the kernel refuses database traffic until the promotion is done
        // (clients get a RST and retry), and the old holder's lease has lapsed, so clients find
        // the new primary as soon as it can serve.
        let mut d = self.fenced(e, ROLE_STANDBY | db_flag);
        d.vip = true;
        (d, Outcome::Candidate { epoch: e })
    }

    /// Votes against this node's own epoch (it is fenced from this step on), again while the
    /// log does not show the vote.
    fn vote_against_own_epoch(&mut self, c: &Committed, now_ns: u64, actions: &mut Vec<Action>) {
        let me = self.cfg.me;
        if !c.votes.contains(&me) && (self.voted != Some(c.epoch) || retry_due(self.vote_proposed_ns, now_ns)) {
            self.voted = Some(c.epoch);
            self.vote_proposed_ns = now_ns;
            actions.push(Action::Propose(Proposal::Vote { voter: me, epoch: c.epoch }));
        }
    }

    /// The old primary's side of an operator hand-over: fenced from this cycle on; votes against
    /// its own epoch at once, or (`-switchover`) once its database stopped cleanly. If the clean
    /// stop fails, it asks the log to call the hand-over off and serves again when it is.
    fn handing_over(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        h: Handover,
        k: u32,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        let (me, e) = (self.cfg.me, c.epoch);
        // Fenced for clients; the cluster's own nodes stay exempt so the standbys receive the
        // last WAL, but only under the lease: cut off from the voters, the node fences its
        // members too (its lease lapses), as it no longer knows it is the primary.
        let fenced = Desired {
            lease_enforced: k > 0,
            lease_k: k,
            members_exempt: true,
            ..self.fenced(e, ROLE_PRIMARY | Self::db_flags(db))
        };
        let outcome = Outcome::HandingOver { epoch: e, to: h.to };
        if self.handover.is_none_or(|(he, _)| he != e) {
            self.handover = Some((e, h));
            self.stop_work = h.demote.then_some((e, Progress::Running));
            actions.push(Action::HandOver { epoch: e, to: h.to, demote: h.demote });
            if !h.quiet {
                actions.push(Action::Notify(Notice::PromotionStarted { candidate: h.to.to_string() }));
            }
        }
        if let Some((we, Progress::Failed { reason })) = &self.stop_work {
            if *we == e && !c.votes.contains(&me) {
                if self.handover_cleared.is_none_or(|at| retry_due(at, inp.now_ns)) {
                    self.handover_cleared = Some(inp.now_ns);
                    actions.push(Action::Propose(Proposal::ClearSwitchover));
                    actions.push(Action::Notify(Notice::PromotionNotOccurred {
                        in_progress: format!("{} (switchover called off: the primary could not stop its database cleanly: {reason}; it serves again)", h.to),
                    }));
                }
                return (fenced, outcome);
            }
        }
        let ready = !h.demote || matches!(self.stop_work, Some((we, Progress::Done { .. })) if we == e);
        if ready {
            self.vote_against_own_epoch(c, inp.now_ns, actions);
        }
        (fenced, outcome)
    }
}
