//! The kernel's heartbeat handling and the faults of a schedule.

use super::*;

impl Sim {
    // ---- The kernel. ----

    pub(super) fn on_ping(&mut self, from: usize, to: usize, id: (u64, u64), flags: u16, epoch: u64, lsn: u64) {
        if !self.nodes[to].up {
            return;
        }
        let now = self.local(to, self.now);
        let k = &mut self.nodes[to].kernel;
        if k.peers & (1 << from) == 0 {
            return;
        }
        let s = &mut k.slots[from];
        if id <= s.ping_id {
            return;
        }
        s.ping_id = id;
        s.arrival = now;
        s.flags = flags;
        s.epoch = epoch;
        s.lsn = lsn;
        s.pings += 1;
        let fenced = k.raise_epoch(epoch);
        if flags & FLAG_ENDORSE != 0 && epoch == k.epoch {
            k.endorse[from] = now;
            k.deadline = lease_deadline(&k.endorse, k.lease_k, LEASE);
        }
        let pong_epoch = k.epoch;
        // As `efm-ebpf` builds the PONG: the role from `EFM_FENCE`, lease lapsed or fenced by
        // the serving rule at this moment.
        let pong_flags = (k.role & ROLE_MASK)
            | match k.fence_reason(now) {
                Some("lease lapsed") => FLAG_LEASE_LAPSED,
                Some(_) => FLAG_FENCED,
                None => 0,
            };
        if fenced {
            self.note(&format!("n{to}: kernel epoch-fenced by n{from}'s PING (epoch {epoch})"));
        }
        self.send(to, from, Ev::Pong { from: to, to: from, id, epoch: pong_epoch, flags: pong_flags });
    }

    pub(super) fn on_pong(&mut self, from: usize, to: usize, id: (u64, u64), epoch: u64, flags: u16) {
        if !self.nodes[to].up {
            return;
        }
        let now = self.local(to, self.now);
        let k = &mut self.nodes[to].kernel;
        if k.peers & (1 << from) == 0 {
            return;
        }
        let s = &mut k.slots[from];
        if id <= s.pong_id {
            return;
        }
        s.pong_id = id;
        s.pongs += 1;
        s.pong_arrival = now;
        s.pong_flags = flags;
        s.pong_epoch = epoch;
        if k.raise_epoch(epoch) {
            self.note(&format!("n{to}: kernel epoch-fenced by n{from}'s PONG (epoch {epoch})"));
        }
    }

    // ---- Faults. ----

    pub(super) fn resolve(&self, t: Target) -> usize {
        match t {
            Target::Primary => self.log.primary.unwrap_or(0),
            Target::Node(i) => i,
            Target::NonPrimary(salt) => {
                let others: Vec<usize> = (0..self.n()).filter(|&j| Some(j) != self.log.primary).collect();
                others[salt % others.len()]
            }
        }
    }

    pub(super) fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent = None;
    }

    pub(super) fn touch(&mut self, i: usize) {
        self.touched[i] = Some(self.now);
    }

    pub(super) fn cut(&mut self, links: Vec<(usize, usize)>, heal_after: Option<u64>) {
        for &(a, b) in &links {
            self.down[a][b] += 1;
            self.touch(a);
            self.touch(b);
        }
        if let Some(d) = heal_after {
            self.push(self.now + d, Ev::Fault(Fault::Heal(links)));
        }
    }

    pub(super) fn fault(&mut self, f: Fault) {
        let n = self.n();
        self.res.faults += 1;
        self.last_fault = self.now;
        self.stop_slack = 0;
        let what = match f {
            Fault::KillAgent { who, restart_after } => {
                let i = self.resolve(who);
                self.touch(i);
                self.stop_agent(i);
                if let Some(d) = restart_after {
                    self.push(self.now + d, Ev::Fault(Fault::RestartAgent(i)));
                }
                format!("kill n{i}'s agent (restart after {:?} ms)", restart_after.map(|d| d / MS))
            }
            Fault::RestartAgent(i) => {
                self.touch(i);
                if self.nodes[i].up && self.nodes[i].agent.is_none() {
                    self.start_agent(i);
                }
                format!("restart n{i}'s agent")
            }
            Fault::PauseAgent { who, dur } => {
                let i = self.resolve(who);
                self.touch(i);
                let until = self.now + dur;
                if let Some(a) = self.nodes[i].agent.as_mut() {
                    a.paused_until = a.paused_until.max(until);
                }
                self.push(until, Ev::Fault(Fault::Resume(i)));
                format!("pause n{i}'s agent for {} ms", dur / MS)
            }
            Fault::Resume(i) => {
                self.touch(i);
                format!("n{i}'s pause ends")
            }
            Fault::Cut { who, inbound, outbound, heal_after } => {
                let i = self.resolve(who);
                let mut links = Vec::new();
                for j in (0..n).filter(|&j| j != i) {
                    if inbound {
                        links.push((j, i));
                    }
                    if outbound {
                        links.push((i, j));
                    }
                }
                self.cut(links, heal_after);
                format!(
                    "cut n{i} (inbound {inbound}, outbound {outbound}, heal after {:?} ms)",
                    heal_after.map(|d| d / MS)
                )
            }
            Fault::Partition { side, both_ways, heal_after } => {
                let mut links = Vec::new();
                for a in (0..n).filter(|&a| side & (1 << a) != 0) {
                    for b in (0..n).filter(|&b| side & (1 << b) == 0) {
                        links.push((a, b));
                        if both_ways {
                            links.push((b, a));
                        }
                    }
                }
                self.cut(links, heal_after);
                format!("partition {side:#b} (both ways {both_ways}, heal after {:?} ms)", heal_after.map(|d| d / MS))
            }
            Fault::LinkDown { from, to, heal_after } => {
                self.cut(vec![(from, to)], heal_after);
                format!("link n{from}→n{to} down (heal after {:?} ms)", heal_after.map(|d| d / MS))
            }
            Fault::Heal(links) => {
                for &(a, b) in &links {
                    self.down[a][b] -= 1;
                    self.touch(a);
                    self.touch(b);
                }
                format!("heal {links:?}")
            }
            Fault::NodeDown { who, back_after } => {
                let i = self.resolve(who);
                self.touch(i);
                self.nodes[i].up = false;
                self.db_life[i] += 1;
                self.stop_agent(i);
                if let Some(d) = back_after {
                    self.push(self.now + d, Ev::Fault(Fault::NodeUp(i)));
                }
                format!("node n{i} down (back after {:?} ms)", back_after.map(|d| d / MS))
            }
            Fault::NodeUp(i) => {
                self.touch(i);
                self.nodes[i].up = true;
                self.nodes[i].kernel = Kernel::fresh();
                self.start_agent(i);
                format!("node n{i} boots")
            }
            Fault::DbFail { who, exit_seen } => {
                let i = self.resolve(who);
                // A database stopped for a switchover has nothing left to fail.
                if !matches!(self.nodes[i].db, Db::None | Db::Stopped) {
                    self.nodes[i].db = Db::Failed;
                    self.nodes[i].exit_seen = exit_seen;
                    self.db_life[i] += 1;
                }
                format!(
                    "n{i}'s database fails ({})",
                    if exit_seen { "postmaster exit seen" } else { "local checks only" }
                )
            }
            Fault::ProbeFails { who, heal_after } => {
                let i = self.resolve(who);
                self.touch(i);
                self.nodes[i].probe_failed = true;
                self.nodes[i].probe_failed_once = true;
                if let Some(d) = heal_after {
                    self.push(self.now + d, Ev::Fault(Fault::ProbeHeals(i)));
                }
                format!(
                    "n{i}'s local checks fail while its database serves (healed after {:?} ms)",
                    heal_after.map(|d| d / MS)
                )
            }
            Fault::ProbeHeals(i) => {
                self.nodes[i].probe_failed = false;
                format!("n{i}'s local checks work again")
            }
            Fault::CustomMonitorFails { who } => {
                let i = self.resolve(who);
                self.touch(i);
                if !self.nodes[i].witness {
                    self.nodes[i].custom_failed = true;
                }
                format!("n{i}'s custom monitor fails")
            }
            Fault::Delay { extra, heal_after } => {
                self.extra_delay = extra;
                if extra > 0 {
                    self.push(self.now + heal_after, Ev::Fault(Fault::Delay { extra: 0, heal_after: 0 }));
                }
                format!("messages delayed by {} ms", extra / MS)
            }
            Fault::Loss(p) => {
                self.loss = p;
                format!("message loss {:.0} %", p * 100.0)
            }
        };
        self.note(&format!("FAULT {what}"));
        self.healthy_after_last_fault = self.healthy_majority() && !self.promotion_failed;
    }

    /// The running agents form a fully connected majority with a usable database: a standby, or
    /// the committed primary's primary database.
    pub(super) fn healthy_majority(&self) -> bool {
        let n = self.n();
        let clique = self.clique(|i| self.agent_running(i) || self.pause_ends_now(i));
        clique.count_ones() as usize >= self.log.majority()
            && (0..n).filter(|&i| clique & (1 << i) != 0 && !self.nodes[i].custom_failed).any(|i| {
                // A primary whose epoch a majority voted against never serves again: a standby must.
                (self.nodes[i].db == Db::Standby && !self.nodes[i].probe_failed_once)
                    || (self.nodes[i].db == Db::Primary
                        && self.log.primary == Some(i)
                        && self.log.votes.len() < self.log.majority()
                        // It voted against its own epoch (gave it up, handed it over): it never
                        // serves that epoch again.
                        && !self.log.votes.contains(&i))
            })
    }

    /// A majority of votes against the committed primary's epoch is out of reach without the
    /// primary's own vote (which the engine never casts), although the primary is running and
    /// in the log's majority group.
    pub(super) fn needs_primary_vote(&self) -> bool {
        let (Some(p), Some((_, group))) = (self.log.primary, self.group()) else { return false };
        let mut votes = self.log.votes.clone();
        votes.extend((0..self.n()).filter(|&j| j != p && group & (1 << j) != 0));
        group & (1 << p) != 0 && votes.len() < self.log.majority()
    }

    pub(super) fn pause_ends_now(&self, i: usize) -> bool {
        self.nodes[i].up && self.nodes[i].agent.as_ref().is_some_and(|a| a.paused_until <= self.now + 1)
    }
}
