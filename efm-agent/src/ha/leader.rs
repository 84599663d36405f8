//! The log's leader: once a majority of voters voted against the current epoch (safety rule 3),
//! propose promoting the best standby — the operator's target for a hand-over, else the one
//! with the most WAL among fresh, settled positions — and, on every node, the remote promotion
//! hooks.

use std::net::SocketAddr;

use super::{
    duration_ns, latch::Latch, retry_due, Action, Choice, Committed, Engine, Handover, Inputs, LocalDb, Notice,
    Outcome, PeerRole, Proposal,
};

impl Engine {
    /// The promotion proposal, if this node leads the log and one is due.
    pub(super) fn as_leader(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        handover: Option<Handover>,
        actions: &mut Vec<Action>,
    ) -> Option<Outcome> {
        self.primary_running_notice(c, inp, actions);
        let promote_due = match self.proposed_promote {
            Some((e, at)) if e == c.epoch => retry_due(at, inp.now_ns),
            _ => true,
        };
        // A `-switchover` hand-over is promoted only once the old primary has voted, i.e. has
        // stopped its database cleanly (every acknowledged write is on the standbys), unless
        // its agent is gone, or its database is seen stopped (its own PINGs say it is down and
        // it is unreachable from here) while its vote cannot reach the log.
        let handover_ready = handover.is_none_or(|h| {
            !h.demote
                || c.votes.contains(&h.from)
                || inp.peers.iter().any(|v| {
                    v.addr == h.from && (!v.alive || (!v.db_up && self.db_reachable(v.addr, inp.now_ns) == Some(false)))
                })
        });
        if !(inp.is_leader && c.votes.len() >= c.majority() && !c.votes_short && promote_due && handover_ready) {
            return None;
        }
        // `check.vip.before.promotion`: the probe starts at once, beside the wait for positions.
        let vip = self.vip_clear(c.epoch, inp.now_ns, actions);
        let choice = if let Some((t, lsn)) = handover.and_then(|h| self.handover_target(c, inp, db, h.to)) {
            Ok(Choice::Promote(t, lsn))
        } else {
            if self.comparing_since.is_none_or(|(e, _)| e != c.epoch) {
                self.comparing_since = Some((c.epoch, inp.now_ns));
            }
            self.choose_candidate(c, inp, db)
        };
        Some(match choice {
            Ok(Choice::Wait(waiting_for)) => Outcome::ComparingPositions { epoch: c.epoch, waiting_for },
            Ok(Choice::Promote(_, _)) if vip == Err(None) => Outcome::CheckingVip { epoch: c.epoch },
            Ok(Choice::Promote(candidate, _)) if vip.is_err() => {
                let holder = vip.err().flatten().unwrap_or_default();
                let addr = self.cfg.vip.map_or_else(String::new, |v| v.to_string());
                if self.latches.once(Latch::VipRefusalNotified, c.epoch) {
                    actions.push(Action::Notify(Notice::PromotionRefusedVipAssigned {
                        vip: addr.clone(),
                        candidate: candidate.to_string(),
                    }));
                }
                Outcome::PromotionRefused {
                    epoch: c.epoch,
                    reason: format!(
                        "the VIP {addr} is still answered by another host ({holder}); not promoting {candidate} \
                         while it is (vip.takeover.allowed=true takes it over instead)"
                    ),
                }
            }
            Ok(Choice::Promote(candidate, lsn)) => {
                self.proposed_promote = Some((c.epoch, inp.now_ns));
                actions.push(Action::Propose(Proposal::Promote {
                    candidate,
                    expected_epoch: c.epoch,
                    lsn,
                    reason: match handover {
                        Some(h) if h.demote => format!("switchover from {} requested by the operator", h.from),
                        Some(h) => format!("promotion requested by the operator (primary was {})", h.from),
                        None => format!(
                            "{} of {} voters stopped endorsing {}",
                            c.votes.len(),
                            c.nodes.len(),
                            c.primary.map_or("no primary".into(), |p| p.to_string())
                        ),
                    },
                }));
                Outcome::PromotionProposed { candidate, epoch: c.epoch }
            }
            Err(reason) => {
                if self.latches.once(Latch::NoCandidateNotified, c.epoch) {
                    actions.push(Action::Notify(Notice::FailoverNotOccurred { reason: reason.clone() }));
                }
                Outcome::NoCandidate { epoch: c.epoch, reason }
            }
        })
    }

    /// `script.remote.pre.promotion` when a promotion this node is not part of commits, and
    /// `script.remote.post.promotion` once the new primary serves (PINGs: primary, unfenced, the
    /// new epoch). Not at the first step: a starting agent did not see the promotion happen.
    pub(super) fn remote_promotion_hooks(&mut self, c: &Committed, inp: &Inputs<'_>, actions: &mut Vec<Action>) {
        let me = self.cfg.me;
        let prev = self.last_epoch.replace(c.epoch);
        if let (Some(prev), Some(p)) = (prev, c.primary) {
            let involved = p == me || c.previous_primary == Some(me);
            if c.epoch > prev && prev > 0 && !involved {
                actions.push(Action::RemotePrePromotion { new_primary: p, old_primary: c.previous_primary });
                self.post_promotion_due = Some((c.epoch, c.previous_primary));
            }
        }
        if let (Some((e, old)), Some(p)) = (self.post_promotion_due, c.primary) {
            if e != c.epoch {
                self.post_promotion_due = None;
            } else if inp.peers.iter().any(|v| v.addr == p && v.epoch == e && v.role == PeerRole::Primary && !v.fenced)
            {
                self.post_promotion_due = None;
                actions.push(Action::RemotePostPromotion { new_primary: p, old_primary: old });
            }
        }
    }

    /// EFM's "Standby agent tried to promote, but primary DB is still running": the log's
    /// leader does not hear the primary's agent, but a fresh check from here reaches its
    /// database — no failover (the voters keep endorsing a primary whose agent is merely
    /// absent). Once per episode: again after the primary's agent was heard.
    fn primary_running_notice(&mut self, c: &Committed, inp: &Inputs<'_>, actions: &mut Vec<Action>) {
        let Some(p) = c.primary.filter(|p| *p != self.cfg.me) else { return };
        let Some(v) = inp.peers.iter().find(|v| v.addr == p) else { return };
        if v.alive {
            self.latches.reset(Latch::PrimaryRunningNotified, c.epoch);
            return;
        }
        if inp.is_leader
            && self.db_reachable(p, inp.now_ns) == Some(true)
            && self.latches.once(Latch::PrimaryRunningNotified, c.epoch)
        {
            actions.push(Action::Notify(Notice::PromotionRefusedPrimaryRunning { primary: p.to_string() }));
        }
    }

    /// EFM's orphaned standby: once a promotion is due (a majority voted against the epoch),
    /// a promotable standby whose last check of `ping.server.ip` failed says that it declines
    /// (the leader does not choose it: its PINGs carry `FLAG_PING_SERVER_FAILED`). Once per
    /// epoch.
    pub(super) fn decline_if_orphaned(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        actions: &mut Vec<Action>,
    ) {
        let me = self.cfg.me;
        let m = c.nodes.get(&me).copied().unwrap_or_default();
        let standby = db.up == Some(true) && db.in_recovery == Some(true) && c.primary != Some(me);
        if inp.ping_failed.contains(&me)
            && standby
            && m.promotable
            && m.priority > 0
            && c.votes.len() >= c.majority()
            && self.latches.once(Latch::OrphanedDeclined, c.epoch)
        {
            let server = self.cfg.ping_server.map_or_else(String::new, |p| p.to_string());
            actions.push(Action::Notify(Notice::PromotionRefusedOrphaned { server }));
        }
    }

    /// The hand-over target if it can be promoted now (alive standby with its database up).
    fn handover_target(
        &self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        to: SocketAddr,
    ) -> Option<(SocketAddr, u64)> {
        let m = c.nodes.get(&to).copied().unwrap_or_default();
        if !m.promotable || m.priority == 0 || m.witness {
            return None;
        }
        if inp.ping_failed.contains(&to) {
            return None;
        }
        if to == self.cfg.me {
            let ok = db.up == Some(true) && db.in_recovery == Some(true) && !db.failed;
            return ok.then_some((to, db.lsn));
        }
        inp.peers
            .iter()
            .find(|v| v.addr == to && v.alive && v.role == PeerRole::Standby && v.db_up)
            .map(|v| (to, v.lsn))
    }

    /// The standby to promote: alive, up, promotable, priority > 0; most advanced WAL position,
    /// then priority (lower first), then address. Refuses when `minimum.standbys` would be
    /// violated.
    ///
    /// Fresh positions: a position is compared only if its report is at most
    /// [`super::EngineConfig::position_max_age`] old (a peer's PING arrived that recently and
    /// carries a non-zero LSN — agents send 0 when their own sample is older than that); an
    /// older one counts as unknown (0, below every known position). The leader waits, at most
    /// [`super::EngineConfig::position_wait`] from when the promotion was first due, until every
    /// candidate's position is final: reported at least `position_max_age` after this node
    /// first saw a vote against the epoch (so read after the failure) and equal to its report
    /// before (no longer moving — a walreceiver may still be writing the old primary's last
    /// WAL). Once the old primary is gone the positions stop moving, so the comparison is exact.
    fn choose_candidate(&self, c: &Committed, inp: &Inputs<'_>, db: &LocalDb) -> Result<Choice, String> {
        // (address, position or 0 when unknown, priority, final)
        let mut cands: Vec<(SocketAddr, u64, u32, bool)> = Vec::new();
        // Standbys that cannot reach `ping.server.ip` decline (they may be the ones cut off).
        let mut declined: Vec<SocketAddr> = Vec::new();
        let meta = |a: &SocketAddr| c.nodes.get(a).copied().unwrap_or_default();
        let max_age = self.cfg.position_max_age();
        let since = self.comparing_since.filter(|(e, _)| *e == c.epoch).map_or(inp.now_ns, |(_, t)| t);
        // A report that arrived `max_age` after the first vote was read after it (agents send
        // nothing older), hence after the failure.
        let after = self.votes_seen.filter(|(e, _)| *e == c.epoch).map_or(since, |(_, t)| t.min(since));
        let settled = |addr: &SocketAddr, lsn: u64| {
            lsn != 0
                && self.positions.get(addr).is_some_and(|r| {
                    r.lsn == lsn
                        && r.prev_lsn == Some(lsn)
                        && r.arrival_ns >= after.saturating_add(duration_ns(max_age))
                })
        };
        if !self.cfg.is_witness
            && Some(self.cfg.me) != c.primary
            && db.up == Some(true)
            && db.in_recovery == Some(true)
            && !db.failed
        {
            let m = meta(&self.cfg.me);
            if inp.ping_failed.contains(&self.cfg.me) {
                declined.push(self.cfg.me);
            } else if m.promotable && m.priority > 0 {
                // The runtime passes 0 when its own sample is older than `position_max_age`.
                let lsn = db.lsn;
                cands.push((self.cfg.me, lsn, m.priority, settled(&self.cfg.me, lsn)));
            }
        }
        // This node counts as a standby also when it declines.
        let mut standbys = usize::from(cands.len() == 1 || !declined.is_empty());
        for v in inp.peers {
            if Some(v.addr) == c.primary || !v.alive || v.role != PeerRole::Standby || !v.db_up {
                continue;
            }
            standbys += 1;
            let m = meta(&v.addr);
            if inp.ping_failed.contains(&v.addr) {
                declined.push(v.addr);
            } else if m.promotable && m.priority > 0 && !m.witness {
                let lsn = if v.agent_age.is_some_and(|a| a <= max_age) { v.lsn } else { 0 };
                cands.push((v.addr, lsn, m.priority, settled(&v.addr, lsn)));
            }
        }
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        let Some(&(best, lsn, _, _)) = cands.first() else {
            return Err(if standbys == 0 {
                "no standby is available".into()
            } else if !declined.is_empty() {
                format!(
                    "no promotable standby can reach ping.server.ip {}: {} declined",
                    self.cfg.ping_server.map_or_else(String::new, |p| p.to_string()),
                    declined.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )
            } else {
                "no available standby is promotable (promotable=false or priority 0)".into()
            });
        };
        let remaining = standbys.saturating_sub(1);
        if remaining < self.cfg.minimum_standbys as usize {
            return Err(format!(
                "promoting {best} would leave {remaining} standby(s), below minimum.standbys={}",
                self.cfg.minimum_standbys
            ));
        }
        let pending: Vec<SocketAddr> = cands.iter().filter(|c| !c.3).map(|c| c.0).collect();
        if !pending.is_empty() && inp.now_ns.saturating_sub(since) < duration_ns(self.cfg.position_wait()) {
            return Ok(Choice::Wait(pending));
        }
        Ok(Choice::Promote(best, lsn))
    }
}
