//! Every voter but the primary itself: endorse the committed primary while it is healthy
//! (safety rule 1), vote against its epoch once it is suspect and the promotion wait has passed
//! since this voter's last endorsement (rule 2).

use std::{net::SocketAddr, time::Duration};

use super::{
    duration_ns, effects::REMOTE_EVERY, latch::Latch, retry_due, Action, Committed, Engine, Handover, Inputs, Notice,
    PeerRole, PeerView, Proposal,
};

/// What the voter part decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoterView {
    /// Endorse this primary in the PINGs to it.
    pub endorse: Option<SocketAddr>,
    /// Why the committed primary is suspect, if it is.
    pub suspect: Option<&'static str>,
    /// The primary's agent is absent and this voter endorses it on its kernel's PONGs and its
    /// database's answers.
    pub absent_endorsed: bool,
}

/// How long a remote check of a database counts.
const REMOTE_FRESH: Duration = Duration::from_secs(3);

/// The committed primary's agent, as this voter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absence {
    /// Its agent is heard (or the primary is not healthy for another reason than its agent).
    NotAbsent,
    /// Its agent is absent, its kernel serves the epoch and its database answers from here:
    /// endorsed on that evidence.
    Endorsed,
    /// Its agent is absent and its kernel does not answer, or no longer serves the epoch.
    KernelSilent,
    /// Its agent is absent and the latest check of its database from here failed (or none
    /// answered recently).
    DbUnreachable,
    /// Absent longer than `agent.absence.timeout`.
    TimedOut,
}

impl Engine {
    /// Whether `node`'s database answered the last check from here (fresh checks only: an old
    /// one may be about another epoch's primary on the same node).
    pub(super) fn db_reachable(&self, node: SocketAddr, now_ns: u64) -> Option<bool> {
        self.fx
            .remote
            .get(&node)
            .filter(|r| now_ns.saturating_sub(r.done_ns) < duration_ns(REMOTE_FRESH))
            .and_then(|r| r.reachable)
    }

    /// The evidence about an absent agent's database: the latest of its agent's last PING
    /// (database up or not) and this voter's remote checks, with when it was had.
    fn db_evidence(&self, v: &PeerView, now_ns: u64) -> Option<(u64, bool)> {
        let ping = v.agent_age.map(|a| (now_ns.saturating_sub(duration_ns(a)), v.db_up));
        let check = self.fx.remote.get(&v.addr).and_then(|r| r.reachable.map(|ok| (r.done_ns, ok)));
        match (ping, check) {
            (Some(p), Some(c)) => Some(if c.0 >= p.0 { c } else { p }),
            (p, c) => p.or(c),
        }
    }

    /// Whether the committed primary `v` of `epoch`, not healthy by its agent's PINGs, is an
    /// absent agent on a node that still serves (see [`Absence`]).
    pub(super) fn absence(&self, v: &PeerView, epoch: u64, now_ns: u64) -> Absence {
        let window = self.cfg.endorse_window;
        if v.agent_age.is_some_and(|a| a <= window) {
            // Heard, but not healthy (fenced, database down, another epoch): not an absence.
            return Absence::NotAbsent;
        }
        let k = v.kernel;
        // Its kernel answered recently, and after its agent fell silent (a node that went down
        // stops both at about the same moment: not an absent agent).
        let kernel_heard = v.node_age.is_some_and(|n| {
            n <= self.cfg.node_timeout && v.agent_age.is_none_or(|a| n + self.cfg.heartbeat_interval < a)
        });
        if !(kernel_heard && k.role == PeerRole::Primary && k.epoch == epoch && !k.fenced) {
            return Absence::KernelSilent;
        }
        let timeout = self.cfg.agent_absence_timeout;
        if !timeout.is_zero() {
            // Measured from its agent's last PING, or from this voter's start if it never heard
            // one (it restarted during the absence).
            let since = v
                .agent_age
                .map_or_else(|| self.started_ns.unwrap_or(now_ns), |a| now_ns.saturating_sub(duration_ns(a)));
            if now_ns.saturating_sub(since) > duration_ns(timeout) {
                return Absence::TimedOut;
            }
        }
        // A check is started every second while the agent is absent and answers within
        // remote.timeout; the latest evidence counts that long.
        let fresh_for = duration_ns(self.cfg.remote_timeout + REMOTE_EVERY * 2);
        match self.db_evidence(v, now_ns) {
            Some((at, true)) if now_ns.saturating_sub(at) <= fresh_for => Absence::Endorsed,
            _ => Absence::DbUnreachable,
        }
    }

    pub(super) fn as_voter(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        handover: Option<Handover>,
        actions: &mut Vec<Action>,
    ) -> VoterView {
        let me = self.cfg.me;
        let Some(p) = c.primary.filter(|p| *p != me) else { return VoterView::default() };
        let started = self.started_ns.unwrap_or(inp.now_ns);
        let auto_failover = c.auto_failover || handover.is_some();
        let view = inp.peers.iter().find(|v| v.addr == p);
        let epoch_age = self.epoch_seen.map_or(0, |(_, t)| inp.now_ns.saturating_sub(t));
        // A primary stopping its database cleanly for a `-switchover` is fenced on purpose
        // (its kernel refuses clients whatever its lease) and votes against its epoch once
        // stopped. It stays endorsed meanwhile: if the stop fails, the hand-over is called
        // off and it must serve again at once, under a lease that has not lapsed and with
        // no voter having voted against it (rule 1 exception; see `handing_over`).
        let stopping = handover.is_some_and(|h| h.demote);
        // A primary whose local checks fail asks for remote checks (confirm.rs): its database
        // counts as up unless no agent reaches it and this voter's own check did not either.
        let evidence = self.primary_db_evidence(c, inp, p);
        let healthy = view.is_some_and(|v| {
            v.agent_age.is_some_and(|a| a <= self.cfg.endorse_window)
                && v.epoch == c.epoch
                && v.role == PeerRole::Primary
                && (!v.fenced || stopping)
                && (v.db_up || (v.db_check && evidence != Some(false)))
        });
        // Its agent is absent (stopped, crashed, failing to start) but its kernel serves the
        // epoch and its database answers: "agent down", not a failure (safety rule 7).
        let absence = match view {
            Some(v) if !healthy => self.absence(v, c.epoch, inp.now_ns),
            _ => Absence::NotAbsent,
        };
        let mut endorse = None;
        // A kernel that saw a higher epoch than the log means this log copy is behind.
        if (healthy || absence == Absence::Endorsed)
            && !self.voted_against(c.epoch)
            && inp.kernel.max_epoch_seen <= c.epoch
        {
            endorse = Some(p);
            self.last_endorse = Some((c.epoch, inp.now_ns));
        }
        let suspect = match view {
            // Endorsed on its kernel's word: never a vote against the same epoch meanwhile.
            _ if absence == Absence::Endorsed => None,
            None => Some("not a known peer"),
            Some(_) if absence == Absence::DbUnreachable => Some("agent absent and database unreachable from here"),
            Some(_) if absence == Absence::TimedOut => Some("agent absent longer than agent.absence.timeout"),
            Some(v) if !v.alive => Some("agent not heard within node.timeout"),
            Some(v) if v.epoch == c.epoch && !v.db_up && evidence == Some(false) => {
                Some("database down and unreachable from here")
            }
            Some(v) if v.epoch == c.epoch && v.fenced && v.role == PeerRole::Primary => Some("reports itself fenced"),
            // Its agent came back (restarted) but has not read the log yet: it fences its kernel
            // until it has, and one cut off from the log never will.
            Some(v) if v.epoch == 0 && v.fenced && v.role != PeerRole::Primary => {
                Some("agent restarted, not back in the log (fenced)")
            }
            Some(v)
                if (v.role != PeerRole::Primary || v.fenced)
                    && Duration::from_nanos(epoch_age) > self.cfg.promotion_grace =>
            {
                Some("did not become a working primary")
            }
            _ => None,
        };
        if let Some(reason) = suspect {
            if !auto_failover {
                if self.latches.once(Latch::ManualFailoverNotified, c.epoch) {
                    actions.push(Action::Notify(Notice::ManualFailoverRequired {
                        primary: p.to_string(),
                        reason: reason.to_owned(),
                    }));
                }
            } else if !self.voted_against(c.epoch) {
                // Counted from our last endorsement of this epoch, or from our own start
                // (a previous life of this agent may have endorsed just before).
                // Never before the promotion wait has passed since this voter saw the epoch
                // begin: a new primary gets that long to show itself.
                let epoch_began = self.epoch_seen.map_or(started, |(_, t)| t);
                let since = match self.last_endorse {
                    Some((e, t)) if e == c.epoch => t.max(started),
                    _ => started,
                }
                .max(epoch_began);
                // A primary that voted against its own epoch fenced its kernel before it did
                // and stays fenced for the epoch (rule 4): no lease of its can serve.
                let gave_up = c.votes.contains(&p);
                let waited = gave_up || inp.now_ns.saturating_sub(since) >= duration_ns(self.cfg.promotion_wait());
                if waited {
                    self.voted = Some(c.epoch);
                    self.vote_proposed_ns = inp.now_ns;
                    actions.push(Action::Propose(Proposal::Vote { voter: me, epoch: c.epoch }));
                }
            } else if !c.votes.contains(&me) && retry_due(self.vote_proposed_ns, inp.now_ns) {
                // Voted, but the log has not recorded it (lost proposal, leader change).
                self.vote_proposed_ns = inp.now_ns;
                actions.push(Action::Propose(Proposal::Vote { voter: me, epoch: c.epoch }));
            }
        } else if auto_failover
            && self.voted == Some(c.epoch)
            && !c.votes.contains(&me)
            && retry_due(self.vote_proposed_ns, inp.now_ns)
        {
            // Voted (this voter never endorses the epoch again), the log has not recorded it, and
            // the primary no longer looks suspect (it came back): without the vote it could
            // neither keep its lease nor be replaced.
            self.vote_proposed_ns = inp.now_ns;
            actions.push(Action::Propose(Proposal::Vote { voter: me, epoch: c.epoch }));
        }
        VoterView { endorse, suspect, absent_endorsed: endorse.is_some() && absence == Absence::Endorsed }
    }
}
