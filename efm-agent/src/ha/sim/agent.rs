//! An agent's cycle — inputs, the real engine, the executor's effects with injected faults —
//! and the operator's and the runtime's hand-over work.

use super::*;

impl Sim {
    // ---- The agent's cycle: inputs → the real engine → the executor's effects. ----

    pub(super) fn tick(&mut self, i: usize, incarnation: u64) {
        let Some(agent) = self.nodes[i].agent.as_ref().filter(|a| self.nodes[i].up && a.incarnation == incarnation)
        else {
            return;
        };
        if agent.paused_until > self.now {
            // SIGSTOP: the interval fires as soon as the process runs again.
            let at = agent.paused_until;
            self.push(at, Ev::Tick { node: i, incarnation });
            return;
        }
        let n = self.n();
        let now = self.local(i, self.now);
        let group = self.group();
        let in_group = group.is_some_and(|(_, m)| m & (1 << i) != 0);
        let is_leader = group.is_some_and(|(l, _)| l == i);
        let fresh = in_group.then(|| self.log.committed());
        let allowed: BTreeSet<SocketAddr> = self.log.nodes.keys().copied().collect();
        let peers: Vec<PeerView> = (0..n).filter(|&j| j != i).map(|j| self.peer_view(i, j, now)).collect();
        let db = self.local_db(i);
        if db.up == Some(true) {
            // The agent has seen its database run since its last hand-over.
            self.down_since_handover[i] = false;
        }
        let custom = self.nodes[i].custom_failed.then_some("exit value 1 (simulated)");
        let (deadline_ns, max_epoch_seen) = (self.nodes[i].kernel.deadline, self.nodes[i].kernel.max_epoch_seen);

        let Some(agent) = self.nodes[i].agent.as_mut() else { return };
        if let Some(c) = fresh {
            agent.committed = Some(c);
        }
        let events = std::mem::take(&mut agent.inbox);
        let Agent { engine, committed, last_fence, .. } = &mut *agent;
        let step = engine.step(&Inputs {
            now_ns: now,
            committed: committed.as_ref(),
            allowed: &allowed,
            registered: true,
            is_leader,
            peers: &peers,
            db,
            db_error: None,
            custom_monitor_failed: custom,
            stop_cluster: false,
            kernel: KernelState { fence: *last_fence, deadline_ns, max_epoch_seen },
            events: &events,
            ping_failed: &std::collections::BTreeSet::new(),
        });
        // The executor: the kernel first (as `HaRuntime::write_fence`).
        let d = step.desired;
        *last_fence = Some(d.fence_state(0, Duration::from_nanos(LEASE), db.lsn));
        let changed = agent.last_outcome.as_ref() != Some(&step.outcome);
        agent.last_outcome = Some(step.outcome.clone());
        let k = &mut self.nodes[i].kernel;
        k.fenced = d.fenced;
        k.lease_enforced = d.lease_enforced;
        k.lease_k = d.lease_k;
        k.epoch = d.epoch;
        k.role = d.ping_flags & ROLE_MASK;
        if changed {
            self.note(&format!(
                "n{i}: {} [fenced={} lease={}/k{} epoch={} endorse={:?}]",
                step.outcome,
                d.fenced,
                d.lease_enforced,
                d.lease_k,
                d.epoch,
                d.endorse.map(index_of)
            ));
        }
        for a in step.actions {
            self.act(i, incarnation, a);
        }
        // PINGs, with the flags the engine decided (lease lapsed included).
        let endorse = d.endorse.map(index_of);
        for j in (0..n).filter(|&j| j != i) {
            let Some(agent) = self.nodes[i].agent.as_mut() else { return };
            agent.seq += 1;
            let id = (incarnation, agent.seq);
            let flags = d.ping_flags | if endorse == Some(j) { FLAG_ENDORSE } else { 0 };
            self.send(i, j, Ev::Ping { from: i, to: j, id, flags, epoch: d.epoch, lsn: db.lsn });
        }
        let next = self.now + self.real(i, HB_INTERVAL);
        self.push(next, Ev::Tick { node: i, incarnation });
    }

    /// Hands a proposal to the log: it commits if its proposer is connected to the majority
    /// group now (and no injected leader change loses it); otherwise it is lost, and the engine
    /// proposes it again.
    pub(super) fn submit(&mut self, i: usize, p: Proposal) {
        let in_group = self.group().is_some_and(|(_, m)| m & (1 << i) != 0);
        if in_group && !self.fx_rng.chance(self.sched.effects.proposal_loss) {
            self.note(&format!("n{i}: proposes {p:?}"));
            let at = self.now + self.rng.between(2 * MS, 10 * MS);
            self.push(at, Ev::Commit { from: i, proposal: p });
        } else {
            self.res.proposals_dropped += 1;
            self.note(&format!("n{i}: proposal lost: {p:?}"));
        }
    }

    /// How long a completion takes to come back: milliseconds, or (injected) much longer.
    pub(super) fn completion_delay(&mut self, lo: u64, hi: u64) -> u64 {
        let slow = self.fx_rng.chance(self.sched.effects.slow_completion);
        self.rng.between(lo, hi) + if slow { self.fx_rng.between(200 * MS, 1_500 * MS) } else { 0 }
    }

    pub(super) fn complete(&mut self, i: usize, incarnation: u64, after: u64, event: Completion) {
        self.push(self.now + after, Ev::Done { node: i, incarnation, event });
    }

    /// The executor's effects, with faults injected.
    pub(super) fn act(&mut self, i: usize, incarnation: u64, a: Action) {
        match a {
            Action::Propose(p @ Proposal::Vote { .. }) => {
                // Recorded durably first (the blocking pool), then proposed.
                let sync = if self.sched.effects.slow_disk {
                    self.fx_rng.between(100 * MS, 800 * MS)
                } else {
                    self.fx_rng.between(MS, 5 * MS)
                };
                if self.fx_rng.chance(self.sched.effects.vote_record_fails) {
                    self.note(&format!("n{i}: recording the vote failed: {p:?} not proposed"));
                } else {
                    self.push(self.now + sync, Ev::VoteRecorded { node: i, incarnation, proposal: p });
                }
            }
            Action::Propose(p) => self.submit(i, p),
            Action::PromoteLocal { epoch, .. } => {
                self.note(&format!("n{i}: PromoteLocal epoch {epoch}"));
                if !self.log.history.contains(&(epoch, i)) {
                    self.violate(&format!(
                        "n{i} executes PromoteLocal for epoch {epoch} without a committed Promote naming it"
                    ));
                }
                let at = self.completion_delay(20 * MS, 300 * MS);
                if self.fx_rng.chance(self.sched.effects.promotion_fails) {
                    // The node stays a fenced candidate until the promotion grace: an outage by
                    // design, not checked for liveness.
                    self.last_fault = self.now;
                    self.healthy_after_last_fault = false;
                    self.promotion_failed = true;
                    self.note(&format!("n{i}: promotion fails (injected)"));
                    self.complete(
                        i,
                        incarnation,
                        at,
                        Completion::PromotionFailed { epoch, reason: "pg_promote() failed (simulated)".into() },
                    );
                } else {
                    self.push(self.now + at, Ev::DbPromoted { node: i, epoch, incarnation });
                }
            }
            Action::PrimaryDbFailed { epoch, stop } => {
                self.note(&format!("n{i}: PrimaryDbFailed epoch {epoch} (stop {stop})"));
                if self.nodes[i].db == Db::Primary && self.sched.effects.remote_false_negative > 0.0 {
                    // Its local checks failed and the other agents' checks wrongly said
                    // "unreachable" (injected): a failover by design, which may find no standby.
                    self.last_fault = self.now;
                    self.healthy_after_last_fault = false;
                    self.promotion_failed = true;
                    self.note(&format!(
                        "n{i}: its serving database was declared failed (injected wrong remote checks)"
                    ));
                }
                self.stop_db(i, incarnation, stop);
            }
            Action::PrimaryIsolated { epoch, stop } => {
                self.note(&format!("n{i}: PrimaryIsolated epoch {epoch} (stop {stop})"));
                self.stop_db(i, incarnation, stop);
            }
            Action::DemoteLocal { epoch, primary, stop } => {
                self.note(&format!(
                    "n{i}: DemoteLocal epoch {epoch} primary {:?} (stop {stop})",
                    primary.map(index_of)
                ));
                self.stop_db(i, incarnation, stop);
            }
            Action::HandOver { epoch, to, demote } => {
                self.note(&format!("n{i}: HandOver epoch {epoch} to n{} (demote {demote})", index_of(to)));
                // Without `demote` the runtime only logs (the kernel is already fenced).
                if demote {
                    self.stop_pending[i] = true;
                    // A clean stop usually takes 50–500 ms; sometimes (a long checkpoint) longer
                    // than the voters' promotion wait.
                    let dur = if self.rng.chance(0.15) {
                        self.rng.between(SEC, 2_500 * MS)
                    } else {
                        self.rng.between(50 * MS, 500 * MS)
                    };
                    let ok = !self.rng.chance(0.08);
                    self.stop_slack = self.stop_slack.max(dur);
                    self.push(self.now + dur, Ev::HandOverDone { node: i, epoch, incarnation, ok });
                }
            }
            Action::Rejoin { epoch, primary, .. } => {
                self.note(&format!("n{i}: Rejoin epoch {epoch} as a standby of n{}", index_of(primary)));
                if self.stop_pending[i] {
                    // Its database was down before the hand-over (failed): the `Promote` did not
                    // wait for the clean stop, and the rejoin runs while `pg_ctl stop` may.
                    self.res.early_rejoins += 1;
                    if self.res.early_rejoin.is_none() {
                        let mut s = format!(
                            "REJOIN at {} of n{i} for epoch {epoch} before its clean stop was reported ({:?})\n",
                            ts(self.now),
                            self.nodes[i].db
                        );
                        self.describe(&mut s);
                        self.res.early_rejoin = Some(s);
                    }
                } else if !self.down_since_handover[i] || self.handed_over[i].is_none_or(|h| h >= epoch) {
                    let mut s = format!(
                        "REJOIN at {} of n{i} for epoch {epoch}: its agent saw its database ({:?} now) run since its hand-over (of epoch {:?})\n",
                        ts(self.now),
                        self.nodes[i].db,
                        self.handed_over[i]
                    );
                    self.describe(&mut s);
                    self.res.stale_rejoin.get_or_insert(s);
                }
                let at = self.now + self.rng.between(100 * MS, 800 * MS);
                self.push(at, Ev::RejoinDone { node: i, epoch, incarnation });
            }
            Action::CheckRemoteDb { node } => {
                let j = index_of(node);
                let at = self.completion_delay(MS, 30 * MS);
                // The result is what the database answers when the check runs.
                let answers = self.nodes[j].up
                    && matches!(self.nodes[j].db, Db::Primary | Db::Standby)
                    && self.link(i, j)
                    && self.link(j, i)
                    && !self.fx_rng.chance(self.sched.effects.remote_false_negative);
                self.complete(i, incarnation, at, Completion::RemoteChecked { node, reachable: answers });
            }
            Action::SetPeerTable { members } => {
                self.nodes[i].kernel.peers = members.iter().fold(0, |m, a| m | 1 << index_of(*a));
            }
            Action::Vip { assign } => {
                let at = self.completion_delay(MS, 20 * MS);
                self.complete(i, incarnation, at, Completion::VipDone { assign, ok: true });
            }
            Action::Register
            | Action::Follow { .. }
            | Action::Notify(_)
            | Action::RemotePrePromotion { .. }
            | Action::RemotePostPromotion { .. }
            | Action::LoadBalancer { .. }
            | Action::EndSessions { .. }
            | Action::AnnounceVip
            | Action::ProbeVip
            | Action::StandbyDbFailed
            | Action::Resumed { .. }
            | Action::AnswerResume { .. }
            | Action::Exit => {}
        }
    }

    /// A stop action: with `stop`, the database stops 50–500 ms later (a primary's for good)
    /// and the action reports it done.
    pub(super) fn stop_db(&mut self, i: usize, incarnation: u64, stop: bool) {
        if stop {
            let at = self.completion_delay(50 * MS, 500 * MS);
            self.push(self.now + at, Ev::DbStopped { node: i, incarnation });
        }
    }

    // ---- The operator and the runtime's hand-over work. ----

    /// `efm promote [-switchover]`: as `operator::promote` checks it (a running standby to
    /// promote; with `-switchover`, a running primary), then `RequestSwitchover` for the current
    /// epoch, committed if the log has a connected majority and its apply rules accept it.
    pub(super) fn operator_promote(&mut self, o: OperatorPromote) {
        self.last_fault = self.now;
        self.stop_slack = 0;
        let running = |s: &Self, j: usize| s.nodes[j].up && s.agent_running(j);
        let cands: Vec<usize> = (0..self.n())
            .filter(|&j| {
                self.log.is_db_node(j)
                    && Some(j) != self.log.primary
                    && self.nodes[j].db == Db::Standby
                    && running(self, j)
            })
            .collect();
        let r = if cands.is_empty() {
            Err("no standby can be promoted")
        } else if o.demote && !self.log.primary.is_some_and(|p| running(self, p)) {
            Err("-switchover needs a running primary")
        } else if self.group().is_none() {
            Err("no connected majority")
        } else {
            self.log.request_switchover(cands[o.to % cands.len()], o.demote)
        };
        let to = cands.get(o.to % cands.len().max(1)).copied().unwrap_or(usize::MAX);
        self.note(&format!("OPERATOR promote n{to} (switchover {}) → {r:?}", o.demote));
        if let Ok(from) = r {
            self.res.handovers += 1;
            self.handovers.push(HandoverRec {
                at: self.now,
                epoch: self.log.epoch,
                from,
                to,
                demote: o.demote,
                stopped_at: None,
                failed: false,
                cleared_at: None,
                promoted: None,
                rejoined_at: None,
                served_again: None,
            });
        }
        self.healthy_after_last_fault = self.healthy_majority();
    }

    pub(super) fn same_agent(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].agent.as_ref().is_some_and(|a| a.incarnation == incarnation)
    }

    /// The runtime's clean stop finished. The database stops even if the agent that started
    /// `pg_ctl stop` has died since; only that agent hears the result.
    pub(super) fn hand_over_done(&mut self, i: usize, epoch: u64, incarnation: u64, ok: bool) {
        if !self.nodes[i].up {
            return;
        }
        let same = self.same_agent(i, incarnation);
        self.stop_pending[i] = false;
        let work = if ok {
            // `pg_ctl stop` of a database that is not running succeeds too.
            if matches!(self.nodes[i].db, Db::Primary | Db::Standby) {
                self.nodes[i].db = Db::Stopped;
                self.db_life[i] += 1;
            }
            self.handed_over[i] = Some(epoch);
            self.down_since_handover[i] = true;
            let now = self.now;
            for h in self.handovers.iter_mut().filter(|h| h.from == i && h.epoch == epoch) {
                h.stopped_at.get_or_insert(now);
            }
            self.note(&format!(
                "n{i}: database stopped cleanly for the hand-over of epoch {epoch} ({:?})",
                self.nodes[i].db
            ));
            Completion::HandedOver { epoch }
        } else {
            self.note(&format!(
                "n{i}: clean stop for the hand-over of epoch {epoch} failed; the database keeps running"
            ));
            for h in self.handovers.iter_mut().filter(|h| h.from == i && h.epoch == epoch) {
                h.failed = true;
            }
            Completion::HandOverFailed { epoch, reason: "pg_ctl stop failed (simulated)".into() }
        };
        if same {
            if let Some(a) = self.nodes[i].agent.as_mut() {
                a.inbox.push(work);
                a.inbox.push(Completion::DbStopDone);
            }
        }
    }

    /// The runtime restarted the stopped old primary as a standby (a failed database stays down).
    pub(super) fn rejoin_done(&mut self, i: usize, epoch: u64, incarnation: u64) {
        if !self.nodes[i].up {
            return;
        }
        if self.nodes[i].db == Db::Stopped {
            self.nodes[i].db = Db::Standby;
            self.nodes[i].lag = self.rng.between(0, 100);
            let now = self.now;
            for h in
                self.handovers.iter_mut().filter(|h| h.from == i && h.rejoined_at.is_none() && h.stopped_at.is_some())
            {
                h.rejoined_at = Some(now);
            }
            self.res.rejoined += 1;
            self.note(&format!("n{i}: database restarted as a standby (epoch {epoch})"));
        }
        let standby = self.nodes[i].db == Db::Standby;
        if let Some(a) = self.nodes[i].agent.as_mut().filter(|a| a.incarnation == incarnation) {
            a.inbox.push(if standby {
                Completion::Rejoined { epoch }
            } else {
                Completion::RejoinFailed { epoch, reason: "the database could not start (simulated)".into() }
            });
        }
    }

    /// A fault touched node `i`'s agent or links since shortly before `since`, or they are not
    /// whole now: a hand-over may then go ahead without the old primary's clean stop.
    pub(super) fn disturbed(&self, i: usize, since: u64) -> bool {
        self.touched[i].is_some_and(|t| t + SEC >= since)
            || !self.agent_running(i)
            || (0..self.n()).any(|j| j != i && (!self.link(i, j) || !self.link(j, i)))
    }

    /// A `Promote` committed: record it against the hand-over of its epoch and check (6).
    pub(super) fn promoted(
        &mut self,
        candidate: usize,
        epoch: u64,
        switchover: Option<(usize, usize, bool, u64)>,
        primary: Option<usize>,
    ) {
        let now = self.now;
        for h in self.handovers.iter_mut().filter(|h| h.epoch == epoch) {
            h.promoted = Some((now, candidate));
        }
        if let Some((from, _, true, e)) = switchover.filter(|s| s.3 == epoch && Some(s.0) == primary) {
            let since = self.handovers.iter().rev().find(|h| h.epoch == e && h.from == from).map_or(now, |h| h.at);
            self.res.switchover_promotes += 1;
            let running = self.nodes[from].up && self.nodes[from].db == Db::Primary;
            self.res.switchover_promotes_running += u32::from(running);
            if running && !self.disturbed(from, since) {
                self.violate(&format!(
                    "the switchover Promote of n{candidate} (epoch {epoch}) committed while n{from}'s database still runs as primary and nothing disturbed n{from}"
                ));
            }
        }
    }
}
