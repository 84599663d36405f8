//! The client, the invariants checked after every event, and the run itself.

use super::*;

impl Sim {
    // ---- The client. ----

    /// Every 20–60 ms the client sends a write to each node whose kernel lets client traffic in
    /// (a client may still hold an old address of the VIP): 30 % are long statements that sleep
    /// 0.5–3 s inside the database before they commit, the rest take 1–20 ms.
    pub(super) fn client_tick(&mut self) {
        for i in 0..self.n() {
            if self.serving_now(i) {
                let long = self.client_rng.chance(0.3);
                let d = if long {
                    self.client_rng.between(500 * MS, 3 * SEC)
                } else {
                    self.client_rng.between(MS, 20 * MS)
                };
                let (life, epoch, started) = (self.db_life[i], self.db_epoch[i], self.now);
                self.push(self.now + d, Ev::StatementDone { node: i, life, epoch, started, long });
            }
        }
        let next = self.now + self.client_rng.between(20 * MS, 60 * MS);
        self.push(next, Ev::ClientTick);
    }

    /// A statement commits in a database that still runs (whatever its kernel does: the fence
    /// does not reach inside `PostgreSQL`); its acknowledgement leaves only through the egress
    /// fence. Invariant (8): no acknowledgement of an older epoch's primary after the first
    /// acknowledgement of a newer one.
    pub(super) fn statement_done(&mut self, i: usize, life: u64, epoch: u64, started: u64, long: bool) {
        let nd = &self.nodes[i];
        if !nd.up || nd.db != Db::Primary || self.db_life[i] != life {
            self.res.statements_lost += 1;
            return;
        }
        let kernel_serves = nd.kernel.fence_reason(self.local(i, self.now)).is_none();
        if self.params.egress_fence && !kernel_serves {
            // Committed locally; the egress fence turns the result into a RST.
            self.res.statements_unacknowledged += 1;
            return;
        }
        self.res.acks += 1;
        self.res.long_acks += u64::from(long);
        match self.acks.newest {
            Some((e, first)) if epoch < e => {
                self.violate(&format!(
                    "n{i} acknowledged a write of epoch {epoch} (received {}, {}) after the first acknowledgement of epoch {e} at {}",
                    ts(started),
                    if long { "long statement" } else { "short statement" },
                    ts(first)
                ));
            }
            Some((e, _)) if epoch == e => {}
            _ => self.acks.newest = Some((epoch, self.now)),
        }
    }

    // ---- Invariants. ----

    pub(super) fn serving_now(&self, i: usize) -> bool {
        let nd = &self.nodes[i];
        nd.up && nd.db == Db::Primary && nd.kernel.fence_reason(self.local(i, self.now)).is_none()
    }

    pub(super) fn violate(&mut self, what: &str) {
        if self.res.violation.is_some() {
            return;
        }
        let mut s = format!("SAFETY VIOLATION at {}: {what}\n", ts(self.now));
        self.describe(&mut s);
        self.res.violation = Some(s);
    }

    pub(super) fn describe(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "seed {} ({} voters, witness {:?}, family {:?})",
            self.sched.seed,
            self.n(),
            self.sched.witness,
            self.sched.family
        );
        let _ = writeln!(s, "clock rates {:?}", self.sched.rates);
        let _ = writeln!(s, "base loss {:.3}; faults:", self.sched.loss);
        for (at, f) in &self.sched.faults {
            let _ = writeln!(s, "  {} {f:?}", ts(*at));
        }
        let _ = writeln!(
            s,
            "log: epoch {} primary {:?} votes {:?} history {:?} switchover {:?}",
            self.log.epoch, self.log.primary, self.log.votes, self.log.history, self.log.switchover
        );
        for (at, o) in &self.sched.operator {
            let _ = writeln!(s, "  {} operator {o:?}", ts(*at));
        }
        for h in &self.handovers {
            let _ = writeln!(s, "  hand-over {h:?}");
        }
        for (i, nd) in self.nodes.iter().enumerate() {
            let now = self.local(i, self.now);
            let k = &nd.kernel;
            let _ = writeln!(
                s,
                "  n{i}: up={} db={:?} serving={} kernel: fenced={} enforced={} k={} epoch={} max_epoch_seen={} deadline-now={:.3}ms reason={:?}; agent: {}",
                nd.up,
                nd.db,
                self.serving_now(i),
                k.fenced,
                k.lease_enforced,
                k.lease_k,
                k.epoch,
                k.max_epoch_seen,
                signed_ms(k.deadline, now),
                k.fence_reason(now),
                nd.agent.as_ref().map_or("none".to_string(), |a| format!(
                    "inc {} committed epoch {:?} paused {} outcome {}",
                    a.incarnation,
                    a.committed.as_ref().map(|c| (c.epoch, c.primary.map(index_of))),
                    a.paused_until > self.now,
                    a.last_outcome.as_ref().map_or(String::new(), ToString::to_string)
                )),
            );
        }
        let _ = writeln!(s, "trace (last 120 entries):");
        for line in self.trace.iter().rev().take(120).rev() {
            let _ = writeln!(s, "  {line}");
        }
    }

    pub(super) fn check(&mut self) {
        let n = self.n();
        let serving = (0..n).filter(|&i| self.serving_now(i)).fold(0u32, |m, i| m | 1 << i);
        if serving.count_ones() >= 2 {
            let who: Vec<usize> = (0..n).filter(|&i| serving & (1 << i) != 0).collect();
            let detail = who
                .iter()
                .map(|&i| {
                    let k = &self.nodes[i].kernel;
                    format!(
                        "n{i} (kernel epoch {}, lease left {:.3} ms)",
                        k.epoch,
                        signed_ms(k.deadline, self.local(i, self.now))
                    )
                })
                .collect::<Vec<_>>()
                .join(" and ");
            self.violate(&format!("two nodes serve writes: {detail}"));
        }
        for i in (0..n).filter(|&i| serving & (1 << i) != 0) {
            if let Some(h) = self.handed_over[i].filter(|&h| !self.log.history.iter().any(|&(e, j)| j == i && e > h)) {
                self.violate(&format!(
                    "n{i} handed epoch {h} over with -switchover and serves again without a later committed Promote"
                ));
            }
        }
        if serving != self.serving {
            for i in 0..n {
                let (was, is) = (self.serving & (1 << i) != 0, serving & (1 << i) != 0);
                if is && !was {
                    let now = self.now;
                    for h in self.handovers.iter_mut().filter(|h| h.from == i && h.failed && h.served_again.is_none()) {
                        h.served_again = Some(now);
                    }
                }
                if was != is {
                    let why = self.nodes[i].kernel.fence_reason(self.local(i, self.now));
                    self.note(&format!("n{i} {} serving writes ({why:?})", if is { "starts" } else { "stops" }));
                }
            }
            if serving == 0 && self.warm {
                // Date a lease lapse at its deadline rather than at this check.
                let start = (0..n)
                    .filter(|&i| self.serving & (1 << i) != 0)
                    .map(|i| {
                        let k = &self.nodes[i].kernel;
                        if k.fence_reason(self.local(i, self.now)) == Some("lease lapsed") {
                            self.real_at(i, k.deadline).clamp(self.checked_at, self.now)
                        } else {
                            self.now
                        }
                    })
                    .max()
                    .unwrap_or(self.now);
                self.outages.push((start, None));
            }
            if self.serving == 0 && serving != 0 {
                if let Some(o) = self.outages.last_mut().filter(|o| o.1.is_none()) {
                    o.1 = Some(self.now);
                }
                self.warm = true;
            }
            self.serving = serving;
        }
        if self.serving != 0 {
            self.wal_head = self.now / MS;
        }
        self.checked_at = self.now;
    }

    pub(super) fn run(mut self) -> RunResult {
        let mut events = 0u64;
        while let Some(q) = self.queue.pop() {
            if q.at > RUN_FOR {
                break;
            }
            events += 1;
            if events > 3_000_000 {
                let mut s =
                    format!("RUNAWAY at {}: more than 3 000 000 events; queue {}\n", ts(self.now), self.queue.len());
                self.describe(&mut s);
                self.res.violation = Some(s);
                return self.res;
            }
            self.now = q.at;
            match q.ev {
                Ev::Tick { node, incarnation } => self.tick(node, incarnation),
                Ev::Ping { from, to, id, flags, epoch, lsn } => self.on_ping(from, to, id, flags, epoch, lsn),
                Ev::Pong { from, to, id, epoch, flags } => self.on_pong(from, to, id, epoch, flags),
                Ev::Commit { from, proposal } => {
                    let (epoch, switchover, primary) = (self.log.epoch, self.log.switchover, self.log.primary);
                    let r = self.log.apply(&proposal);
                    self.note(&format!("log: n{from}'s {proposal:?} → {r:?}"));
                    match (&proposal, r) {
                        (Proposal::Promote { candidate, .. }, Ok(())) => {
                            self.res.failovers += 1;
                            self.promoted(index_of(*candidate), epoch, switchover, primary);
                        }
                        (Proposal::ClearSwitchover, Ok(())) => {
                            let now = self.now;
                            for h in self.handovers.iter_mut().filter(|h| h.epoch == epoch && h.cleared_at.is_none()) {
                                h.cleared_at = Some(now);
                            }
                        }
                        _ => {}
                    }
                }
                Ev::DbPromoted { node, epoch, incarnation } => {
                    if self.nodes[node].up && self.nodes[node].db == Db::Standby {
                        if !self.log.history.contains(&(epoch, node)) {
                            self.violate(&format!(
                                "n{node}'s database became primary without a committed Promote for epoch {epoch}"
                            ));
                        }
                        self.nodes[node].db = Db::Primary;
                        self.db_life[node] += 1;
                        self.db_epoch[node] = epoch;
                        self.note(&format!("n{node}: database promoted (epoch {epoch})"));
                        let at = self.completion_delay(0, 20 * MS);
                        self.complete(node, incarnation, at, Completion::Promoted { epoch });
                    }
                }
                Ev::Done { node, incarnation, event } => {
                    let up = self.nodes[node].up;
                    if let Some(a) = self.nodes[node].agent.as_mut().filter(|a| a.incarnation == incarnation && up) {
                        a.inbox.push(event);
                    }
                }
                Ev::VoteRecorded { node, incarnation, proposal } => {
                    if self.nodes[node].up && self.same_agent(node, incarnation) {
                        self.submit(node, proposal);
                    }
                }
                Ev::DbStopped { node, incarnation } => {
                    if self.nodes[node].up {
                        if self.nodes[node].db == Db::Primary {
                            self.nodes[node].db = Db::Failed;
                            self.nodes[node].exit_seen = true;
                            self.db_life[node] += 1;
                            self.note(&format!("n{node}: database stopped by its agent"));
                        }
                        if let Some(a) = self.nodes[node].agent.as_mut().filter(|a| a.incarnation == incarnation) {
                            a.inbox.push(Completion::DbStopDone);
                        }
                    }
                }
                Ev::Fault(f) => self.fault(f),
                Ev::Operator(o) => self.operator_promote(o),
                Ev::HandOverDone { node, epoch, incarnation, ok } => self.hand_over_done(node, epoch, incarnation, ok),
                Ev::RejoinDone { node, epoch, incarnation } => self.rejoin_done(node, epoch, incarnation),
                Ev::ClientTick => self.client_tick(),
                Ev::StatementDone { node, life, epoch, started, long } => {
                    self.statement_done(node, life, epoch, started, long);
                }
            }
            self.check();
            if self.res.violation.is_some() {
                return self.res;
            }
        }
        self.now = RUN_FOR;
        self.check();
        self.finish()
    }

    pub(super) fn finish(mut self) -> RunResult {
        if std::env::var_os("EFM_SIM_TRACE").is_some() {
            let mut s = String::new();
            self.describe(&mut s);
            eprintln!("{s}");
        }
        let after_warm: Vec<(u64, u64)> = self.outages.iter().map(|&(s, e)| (s, e.unwrap_or(RUN_FOR))).collect();
        self.res.max_outage = after_warm.iter().map(|(s, e)| e - s).max();
        if !self.warm {
            self.res.liveness = Some("no node ever served".into());
        }
        if self.healthy_after_last_fault && RUN_FOR - self.last_fault >= STABLE_FOR {
            self.res.checked_liveness = true;
            let t0 = self.last_fault;
            let worst = after_warm.iter().filter(|(_, e)| *e >= t0).map(|&(s, e)| e - s.max(t0)).max().unwrap_or(0);
            self.res.time_to_serving = Some(worst);
            let open = self.outages.last().is_some_and(|o| o.1.is_none());
            // With the primary's agent absent, its database failure is seen by the voters'
            // checks (one a second, each answering within milliseconds here), not by its agent.
            let absent = if matches!(self.sched.family, Family::AbsentAgent(_)) { 1_100 * MS } else { 0 };
            let bound = liveness_bound() + self.stop_slack + self.sched.effects.slack() + absent;
            if worst > bound || open {
                self.res.needs_primary_vote = self.needs_primary_vote();
                let mut s = format!(
                    "LIVENESS{}: {} ms without a serving node after the last fault at {} (bound {} ms){}\n",
                    if self.res.needs_primary_vote { " (needs the primary's own vote)" } else { "" },
                    worst / MS,
                    ts(t0),
                    bound / MS,
                    if open { "; none serves at the end" } else { "" }
                );
                self.describe(&mut s);
                self.res.liveness = Some(s);
            }
        }
        self.check_handovers();
        self.res.handovers_promoted =
            u32::try_from(self.handovers.iter().filter(|h| h.promoted.is_some()).count()).unwrap_or(0);
        self.res.handovers_failed = u32::try_from(self.handovers.iter().filter(|h| h.failed).count()).unwrap_or(0);
        self.res.left_stopped = u32::try_from(self.nodes.iter().filter(|nd| nd.db == Db::Stopped).count()).unwrap_or(0);
        if self.sched.family == Family::ProbeOnly && self.sched.operator.is_empty() {
            // The database served all along and the other agents reached it: no failover, and
            // the primary never stopped serving.
            let t0 = self.sched.faults.first().map_or(0, |f| f.0);
            let outage = self.outages.iter().any(|&(s, e)| e.unwrap_or(RUN_FOR) > t0 && s < RUN_FOR);
            if self.res.failovers > 0 || outage {
                let mut s = format!(
                    "UNNECESSARY FAILOVER OR OUTAGE after the primary's local checks failed (failovers {}, outages {:?})\n",
                    self.res.failovers, self.outages
                );
                self.describe(&mut s);
                self.res.liveness = Some(s);
            }
        }
        if self.sched.family == Family::AbsentAgent(AbsentThen::Nothing) && self.res.violation.is_none() {
            // An absent agent on a node that serves is not a failure: no failover, and the
            // primary serves at the end (its agent restarted and back, or still absent).
            let serves =
                self.nodes[0].db == Db::Primary && self.nodes[0].kernel.fence_reason(self.local(0, self.now)).is_none();
            if self.res.failovers > 0 || self.log.epoch != 1 || !serves {
                let mut s = format!(
                    "ABSENT AGENT: {} failovers, epoch {}, the primary serves at the end: {serves}\n",
                    self.res.failovers, self.log.epoch
                );
                self.describe(&mut s);
                self.res.liveness = Some(s);
            }
        }
        if let (Family::PauseOnly(d), true) = (self.sched.family, self.sched.operator.is_empty()) {
            if d < 900 * MS && self.res.failovers > 0 {
                let mut s = format!("UNNECESSARY FAILOVER after a {} ms pause\n", d / MS);
                self.describe(&mut s);
                self.res.liveness = Some(s);
            }
        }
        self.res
    }

    /// (5) Without faults, a hand-over completes within [`HANDOVER_BOUND`]: the target is
    /// promoted, and a `-switchover` old primary runs as an ordinary standby (unfenced) by then;
    /// a plain promotion leaves it fenced; a hand-over whose clean stop failed is called off and
    /// the old primary serves again, with no failover.
    pub(super) fn check_handovers(&mut self) {
        if self.sched.family != Family::NoFaults || self.res.violation.is_some() {
            return;
        }
        let mut problems = Vec::new();
        for h in &self.handovers {
            let by = h.at + HANDOVER_BOUND;
            let within = |t: Option<u64>| t.is_some_and(|t| t <= by);
            let from = &self.nodes[h.from];
            let outcome = from.agent.as_ref().and_then(|a| a.last_outcome.clone());
            let problem = if h.failed {
                if h.promoted.is_some() {
                    Some("a failover happened after the hand-over was called off".to_string())
                } else if !within(h.served_again) {
                    Some("the old primary does not serve again after its clean stop failed".to_string())
                } else {
                    None
                }
            } else if !h.promoted.is_some_and(|(t, c)| t <= by && c == h.to) {
                Some(format!("the target n{} was not promoted within the bound ({:?})", h.to, h.promoted))
            } else if h.demote {
                let standby =
                    from.db == Db::Standby && !from.kernel.fenced && matches!(outcome, Some(Outcome::Standby { .. }));
                (!within(h.rejoined_at) || !standby)
                    .then(|| format!("the old primary did not rejoin as a standby within the bound (rejoined {:?}, db {:?}, outcome {outcome:?})", h.rejoined_at.map(ts), from.db))
            } else {
                // With `stop.isolated.primary` its database is stopped too: idle, fenced.
                let stopped = self.sched.effects.stop_databases
                    && from.db == Db::Failed
                    && matches!(outcome, Some(Outcome::Idle));
                (!from.kernel.fenced || !(matches!(outcome, Some(Outcome::FencedOldPrimary { .. })) || stopped))
                    .then(|| format!("the old primary is not a fenced old primary at the end (outcome {outcome:?})"))
            };
            if let Some(p) = problem {
                problems.push(format!(
                    "hand-over of epoch {} at {} from n{} to n{} (demote {}): {p}",
                    h.epoch,
                    ts(h.at),
                    h.from,
                    h.to,
                    h.demote
                ));
            }
        }
        if let Some(first) = problems.first() {
            let mut s = format!("HAND-OVER within {} ms: {first}\n", HANDOVER_BOUND / MS);
            self.describe(&mut s);
            self.res.liveness = Some(s);
        }
    }
}
