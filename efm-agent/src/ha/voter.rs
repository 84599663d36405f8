//! Every voter but the primary itself: endorse the committed primary while it is healthy
//! (safety rule 1), vote against its epoch once it is suspect and the promotion wait has passed
//! since this voter's last endorsement (rule 2).

use std::{net::SocketAddr, time::Duration};

use super::{
    duration_ns, latch::Latch, retry_due, Action, Committed, Engine, Handover, Inputs, Notice, PeerRole, Proposal,
};

/// What the voter part decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoterView {
    /// Endorse this primary in the PINGs to it.
    pub endorse: Option<SocketAddr>,
    /// Why the committed primary is suspect, if it is.
    pub suspect: Option<&'static str>,
}

/// How long a remote check of a database counts.
const REMOTE_FRESH: Duration = Duration::from_secs(3);

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
        let mut endorse = None;
        // A kernel that saw a higher epoch than the log means this log copy is behind.
        if healthy && !self.voted_against(c.epoch) && inp.kernel.max_epoch_seen <= c.epoch {
            endorse = Some(p);
            self.last_endorse = Some((c.epoch, inp.now_ns));
        }
        let suspect = match view {
            None => Some("not a known peer"),
            Some(v) if !v.alive => Some("agent not heard within node.timeout"),
            Some(v) if v.epoch == c.epoch && !v.db_up && evidence == Some(false) => {
                Some("database down and unreachable from here")
            }
            Some(v) if v.epoch == c.epoch && v.fenced && v.role == PeerRole::Primary => Some("reports itself fenced"),
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
        }
        VoterView { endorse, suspect }
    }
}
