//! The simulated world: set-up, clocks, links, the log's leader, and what an agent reads.

use super::*;

impl Sim {
    pub(super) fn new(sched: Schedule, params: Params) -> Self {
        let n = sched.n;
        let mut log = Log {
            epoch: 1,
            primary: Some(0),
            votes: BTreeSet::new(),
            history: vec![(1, 0)],
            nodes: BTreeMap::new(),
            previous_primary: None,
            switchover: None,
        };
        let mut rng = Rng(sched.seed ^ 0xA5A5_5A5A_1234_5678);
        let mut nodes = Vec::new();
        for i in 0..n {
            let witness = sched.witness == Some(i);
            log.nodes.insert(addr(i), NodeMeta { witness, priority: u32::from(!witness), promotable: !witness });
            nodes.push(Node {
                witness,
                rate: sched.rates[i],
                offset: sched.offsets[i],
                up: true,
                db: match (witness, i) {
                    (true, _) => Db::None,
                    (false, 0) => Db::Primary,
                    _ => Db::Standby,
                },
                lag: rng.between(0, 100),
                kernel: Kernel::fresh(),
                agent: None,
                incarnations: 0,
                custom_failed: false,
                probe_failed: false,
                probe_failed_once: false,
                exit_seen: true,
            });
        }
        let loss = sched.loss;
        let sched_seed = sched.seed;
        let mut sim = Self {
            params,
            sched,
            nodes,
            log,
            down: [[0; MAX_N]; MAX_N],
            loss,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng,
            trace: Vec::new(),
            serving: 0,
            wal_head: 0,
            checked_at: 0,
            warm: false,
            outages: Vec::new(),
            last_fault: 0,
            healthy_after_last_fault: true,
            res: RunResult::default(),
            handovers: Vec::new(),
            handed_over: [None; MAX_N],
            down_since_handover: [false; MAX_N],
            stop_pending: [false; MAX_N],
            touched: [None; MAX_N],
            stop_slack: 0,
            extra_delay: 0,
            promotion_failed: false,
            fx_rng: Rng(sched_seed ^ 0xF0F0_E44E_C7C0_0000),
            client_rng: Rng(sched_seed ^ 0xC11E_47C1_1E47_0000),
            db_life: [0; MAX_N],
            db_epoch: {
                let mut e = [0; MAX_N];
                e[0] = 1;
                e
            },
            acks: Acks::default(),
        };
        for i in 0..n {
            sim.start_agent(i);
        }
        for (at, f) in sim.sched.faults.clone() {
            sim.push(at, Ev::Fault(f));
        }
        for (at, o) in sim.sched.operator.clone() {
            sim.push(at, Ev::Operator(o));
        }
        sim.push(10 * MS, Ev::ClientTick);
        sim
    }

    pub(super) fn n(&self) -> usize {
        self.sched.n
    }

    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    pub(super) fn note(&mut self, line: &str) {
        self.trace.push(format!("{} {line}", ts(self.now)));
    }

    /// Node `i`'s monotonic clock at real time `t`.
    pub(super) fn local(&self, i: usize, t: u64) -> u64 {
        self.nodes[i].offset + to_u64(to_f64(t) * self.nodes[i].rate)
    }

    /// Real time at which node `i`'s clock reads `l`.
    pub(super) fn real_at(&self, i: usize, l: u64) -> u64 {
        to_u64(to_f64(l.saturating_sub(self.nodes[i].offset)) / self.nodes[i].rate)
    }

    /// Real duration of `d` on node `i`'s clock.
    pub(super) fn real(&self, i: usize, d: u64) -> u64 {
        to_u64(to_f64(d) / self.nodes[i].rate).max(1)
    }

    pub(super) fn link(&self, from: usize, to: usize) -> bool {
        self.down[from][to] == 0
    }

    pub(super) fn agent_running(&self, i: usize) -> bool {
        self.nodes[i].up && self.nodes[i].agent.as_ref().is_some_and(|a| a.paused_until <= self.now)
    }

    /// The largest set of running agents that are pairwise connected both ways (lowest mask
    /// among equals).
    pub(super) fn clique(&self, running: impl Fn(usize) -> bool) -> u32 {
        let n = self.n();
        let mut best = 0u32;
        for m in 1u32..1 << n {
            if m.count_ones() <= best.count_ones() {
                continue;
            }
            let members: Vec<usize> = (0..n).filter(|&i| m & (1 << i) != 0).collect();
            if members
                .iter()
                .all(|&a| running(a) && members.iter().all(|&b| a == b || (self.link(a, b) && self.link(b, a))))
            {
                best = m;
            }
        }
        best
    }

    /// The coordination log's leader (the lowest node of the largest connected majority of
    /// running agents) and the group it reaches both ways.
    pub(super) fn group(&self) -> Option<(usize, u32)> {
        let n = self.n();
        let clique = self.clique(|i| self.agent_running(i));
        if (clique.count_ones() as usize) < self.log.majority() {
            return None;
        }
        let l = clique.trailing_zeros() as usize;
        let mask = (0..n)
            .filter(|&j| j == l || (self.agent_running(j) && self.link(l, j) && self.link(j, l)))
            .fold(0u32, |m, j| m | 1 << j);
        Some((l, mask))
    }

    pub(super) fn start_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.incarnations += 1;
        let incarnation = node.incarnations;
        let node = &mut self.nodes[i];
        let cfg = EngineConfig {
            stop_failed_primary: self.sched.effects.stop_databases,
            stop_isolated_primary: self.sched.effects.stop_databases,
            ..engine_cfg(i, node.witness)
        };
        node.agent = Some(Agent {
            engine: Engine::new(cfg),
            incarnation,
            committed: None,
            seq: 0,
            paused_until: 0,
            last_outcome: None,
            inbox: Vec::new(),
            last_fence: None,
        });
        let first = self.now + self.rng.between(MS, HB_INTERVAL);
        self.push(first, Ev::Tick { node: i, incarnation });
    }

    pub(super) fn send(&mut self, from: usize, to: usize, ev: Ev) {
        if !self.nodes[from].up || !self.link(from, to) || self.rng.chance(self.loss) {
            return;
        }
        self.res.messages += 1;
        let at = self.now + self.rng.between(100_000, 3 * MS) + self.extra_delay;
        self.push(at, ev);
    }

    pub(super) fn lsn(&self, i: usize) -> u64 {
        let t = if self.serving != 0 { self.now / MS } else { self.wal_head } + 1_000;
        match self.nodes[i].db {
            Db::Primary => t,
            Db::Standby => t - self.nodes[i].lag,
            Db::None | Db::Failed | Db::Stopped => 0,
        }
    }

    pub(super) fn local_db(&self, i: usize) -> LocalDb {
        let lsn = self.lsn(i);
        let up = |in_recovery: bool| LocalDb {
            up: Some(true),
            in_recovery: Some(in_recovery),
            failed: false,
            local_check_only: false,
            lsn,
            timeline: 1,
            upstream: None,
        };
        // As the runtime reports any database that is down (`failed: db.up == Some(false)`),
        // keeping the role of its last good check; down to the local checks only unless its
        // postmaster was seen to exit. A planned stop (`pg_ctl stop`) ends the postmaster.
        let down = |in_recovery: Option<bool>, local_check_only: bool| LocalDb {
            up: Some(false),
            in_recovery,
            failed: true,
            local_check_only,
            lsn,
            timeline: 1,
            upstream: None,
        };
        let nd = &self.nodes[i];
        match nd.db {
            Db::None => LocalDb::default(),
            Db::Standby if nd.probe_failed => down(Some(true), true),
            Db::Primary if nd.probe_failed => down(Some(false), true),
            Db::Standby => up(true),
            Db::Primary => up(false),
            Db::Failed => down(None, !nd.exit_seen),
            Db::Stopped => down(None, false),
        }
    }

    /// What node `i`'s detector and remote checks say about peer `j`.
    pub(super) fn peer_view(&self, i: usize, j: usize, now: u64) -> PeerView {
        let s = &self.nodes[i].kernel.slots[j];
        let age = (s.pings > 0).then(|| now.saturating_sub(s.arrival));
        PeerView {
            addr: addr(j),
            alive: age.is_some_and(|a| a <= NODE_TIMEOUT),
            agent_age: age.map(Duration::from_nanos),
            role: PeerRole::from_bits(s.flags),
            epoch: s.epoch,
            db_up: s.flags & FLAG_DB_UP != 0,
            db_check: s.flags & FLAG_DB_CHECK != 0,
            primary_db: super::super::confirm::primary_db_flag(s.flags),
            fenced: s.flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0,
            lsn: s.lsn,
            node_age: (s.pongs > 0).then(|| Duration::from_nanos(now.saturating_sub(s.pong_arrival))),
            kernel: if s.pongs > 0 {
                KernelPong {
                    role: PeerRole::from_bits(s.pong_flags & ROLE_MASK),
                    epoch: s.pong_epoch,
                    fenced: s.pong_flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0,
                }
            } else {
                KernelPong::default()
            },
        }
    }
}
