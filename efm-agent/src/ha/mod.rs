//! The HA engine: one pure decision step per cycle.
//!
//! Inputs ([`Inputs`]): the committed cluster state (from the Raft log), whether this node leads
//! the log, the detector's view of every peer, the local database, the custom monitor, the
//! kernel's fence and lease as they stand, `efm stop-cluster`, and [`Event`]s: completions of the
//! actions the engine started (promotion, clean stop, rejoin, remote checks, VIP changes,
//! database stops) and operator requests (`efm resume`). Outputs ([`Step`]): the *desired*
//! state of the kernel fence, lease and VIP (level-triggered: the runtime makes the kernel match
//! it every cycle), one-shot [`Action`]s for the runtime to execute (proposals, promotion,
//! demotion, hooks, remote checks, the kernel peer table, ending sessions, VIP changes,
//! notifications, exit) and an [`Outcome`] naming the decision. No I/O, no clock: everything
//! arrives in [`Inputs`]. The runtime (`runtime.rs`) only executes; the simulation (`sim/`)
//! runs this same engine.
//!
//! The step is one ordered cascade ([`Engine::step`]); its parts live by role, as openraft's
//! engine does: [`voter`] (endorsements and votes), [`leader`] (promotion proposals, candidate
//! choice), [`primary`] (this node as the committed primary), [`standby`] (every other own
//! role), [`monitoring`] (EFM's idle state: suspension and resume) and [`effects`] (the
//! kernel's lease floor and lapse flag, peer table, session ending, VIP, load balancer, remote
//! checks, stop-cluster). One-shot decisions are latched per (what, epoch) ([`latch`]).
//!
//! # Safety rules (see DESIGN.md "Safety" and ARCHITECTURE.md)
//!
//! 1. A voter endorses the committed primary of epoch `e` only while it hears that primary's
//!    agent within `endorse_window` (or, its agent absent, its kernel: rule 7), the primary carries epoch `e`, says it is primary, is not
//!    fenced and has its database up — and only until the voter has voted against epoch `e`;
//!    after that, never again for `e`. Exception: while an operator's `-switchover` of epoch `e`
//!    is committed, the primary is fenced on purpose (stopping its database cleanly) and stays
//!    endorsed, so that it can serve at once if the hand-over is called off; its kernel refuses
//!    clients whatever its lease.
//! 2. A voter votes against epoch `e` (a `Vote` entry) only when the primary is suspect and
//!    `promotion_wait = lease.timeout × (1 + drift) + margin` has passed on its own clock since its
//!    own last endorsement of epoch `e`. The primary's lease (k-th newest endorsement arrival +
//!    lease.timeout on its clock, k = majority − 1) has then lapsed with respect to this voter.
//! 3. A promotion is proposed only with votes from a majority of voters for the current epoch;
//!    the state machine re-checks that and the expected epoch when it applies the entry, so at
//!    most one promotion per epoch commits and never without a majority having stopped
//!    endorsing. Two majorities intersect, so the old lease has lapsed everywhere it counted.
//! 4. A node whose database is a primary but which is not the committed primary of the current
//!    epoch is fenced (when in doubt, fence); so is a candidate until its promotion completes,
//!    and a primary whose database failed. Such a primary fences its kernel first and then votes
//!    against its own epoch; it stays fenced for that epoch even if the database comes back, so
//!    the other voters may vote at once when they see its vote in the log.
//! 5. A vote is proposed only after it is recorded durably (the runtime writes and syncs
//!    `<cluster>.voted` on the blocking pool and proposes on completion); a restarted agent
//!    never endorses an epoch it voted against ([`Engine::set_voted_floor`]).
//! 6. Demotion runs in order: kernel fence (this step's [`Desired`]), end sessions
//!    ([`Action::EndSessions`], before any action that stops the database), stop the database,
//!    and only once that stop completed ([`Event::DbStopDone`]) release the VIP.
//!
//! 7. **An absent agent is not a failure** (EFM never fails over on an agent's exit). A voter
//!    also endorses the committed primary of epoch `e` while that primary's agent is silent
//!    (not heard within `endorse_window`) if its *kernel* answers this voter's PINGs (a PONG
//!    within `node.timeout`, heard after its agent fell silent) saying role primary, epoch `e`,
//!    neither fenced nor lease-lapsed, and the latest evidence about its database (its agent's
//!    last PING, or this voter's remote checks, started every second while the agent is
//!    absent) says it answers and is at most `remote.timeout` + 2 s old; for at most
//!    `agent.absence.timeout` (0: no limit). Why this is safe: the endorsement is for the
//!    committed primary of the current epoch only, exactly as rule 1's; the kernel still grants
//!    and enforces the lease (a PING endorses only the epoch its kernel holds), so a partition
//!    (no PONG heard, no endorsement reaching it) still lets the lease lapse there and the
//!    voters vote after the promotion wait as before, and a kernel that saw a newer epoch or
//!    whose lease lapsed says so in its PONGs and is not endorsed again; a voter never votes
//!    against an epoch in a step in which it endorses it on this evidence, never endorses an
//!    epoch it voted against (rule 5), and counts the promotion wait from its last endorsement
//!    of either kind, so rules 2 and 3 hold unchanged. When the evidence ends (its database
//!    unreachable from here, its kernel silent, fenced or lapsed, the timeout) the voter stops
//!    endorsing and fails over as for any suspect primary.
//!
//! Not a safety rule but the data one: the leader promotes the standby with the most WAL,
//! comparing only fresh positions (at most two heartbeats old) that were read after the failure
//! and have stopped moving, waiting for them at most `position_wait` (see `choose_candidate`).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::notify::Event as Notice;
use efm_common::wire::{FLAG_DB_UP, FLAG_FENCED, FLAG_PING_SERVER_FAILED, ROLE_IDLE, ROLE_PRIMARY, ROLE_WITNESS};

pub mod confirm;
#[cfg(test)]
mod confirm_tests;
pub mod effects;
#[cfg(test)]
mod effects_tests;
#[cfg(test)]
mod guard_tests;
pub mod latch;
pub mod leader;
#[cfg(test)]
mod leader_tests;
pub(crate) mod local;
pub mod monitoring;
#[cfg(test)]
mod monitoring_tests;
pub mod primary;
#[cfg(test)]
mod primary_tests;
pub mod runtime;
#[cfg(test)]
mod sim;
pub mod standby;
#[cfg(test)]
mod standby_tests;
#[cfg(test)]
mod tests;
mod types;
pub mod voter;
#[cfg(test)]
mod voter_tests;

use latch::Latches;
pub use monitoring::{SuspendKind, Suspension};
pub use types::*;
use types::{PositionReport, Progress};
#[cfg(test)]
use {efm_common::maps::FenceState, std::collections::BTreeSet};

/// The engine's memory between cycles.
#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// One-shot decisions per (what, epoch).
    latches: Latches,
    /// Last time (ns) this node endorsed, per epoch.
    last_endorse: Option<(u64, u64)>,
    /// The epoch this node voted against (never endorsed again).
    voted: Option<u64>,
    /// When the vote was last proposed (re-proposed until it is committed).
    vote_proposed_ns: u64,
    /// (epoch, when) of the last promotion proposal (re-proposed until the epoch moves on).
    proposed_promote: Option<(u64, u64)>,
    proposed_set_primary: Option<(u64, u64)>,
    /// The local promotion, by epoch ([`Action::PromoteLocal`] → [`Event::Promoted`]).
    promotion: Option<(u64, Progress)>,
    /// The clean stop of a `-switchover` this node (as primary) started, by epoch.
    stop_work: Option<(u64, Progress)>,
    /// The rejoin of this old primary as a standby, by epoch.
    rejoin_work: Option<(u64, Progress)>,
    /// When this node first saw each epoch (for `promotion_grace`).
    epoch_seen: Option<(u64, u64)>,
    /// The first step's time. An agent that (re)started may have endorsed just before, in its
    /// previous life: until `promotion_wait` has passed since then it must not vote.
    started_ns: Option<u64>,
    /// Epochs up to this one were voted against by this node (also in a previous life: the
    /// runtime records it durably before proposing a vote); they are never endorsed again.
    voted_floor: u64,
    /// The hand-over this node (as primary) started, with its epoch.
    handover: Option<(u64, Handover)>,
    handover_cleared: Option<u64>,
    /// A `-quiet` hand-over was requested in this epoch: no notifications for it and the next.
    quiet_from: Option<u64>,
    /// The last epoch this node saw, and the promotion whose remote post-promotion hook is due.
    last_epoch: Option<u64>,
    post_promotion_due: Option<(u64, Option<SocketAddr>)>,
    /// The latest WAL position report of every node (peers from their PINGs, this node from
    /// its own sample), kept every step.
    positions: BTreeMap<SocketAddr, PositionReport>,
    /// (epoch, when) this node first saw a vote against the epoch in the log. A vote comes
    /// after its voter saw the primary fail (dead, cut off past its lease, or its database
    /// failed), so a position read after this moment is read after the failure.
    votes_seen: Option<(u64, u64)>,
    /// (epoch, when) this node, leading the log, first found a promotion due: the bound of the
    /// wait for final positions ([`EngineConfig::position_wait`]) counts from here.
    comparing_since: Option<(u64, u64)>,
    /// EFM's monitoring state (suspension, resume).
    monitor: monitoring::Monitor,
    /// The other agents' confirmation of this primary's database failure (`confirm.rs`).
    confirm: Option<confirm::Confirm>,
    /// The kernel, VIP, load balancer, remote checks and stop-cluster.
    fx: effects::Effects,
}

/// The candidate choice: promote now, or wait for positions.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Choice {
    Promote(SocketAddr, u64),
    Wait(Vec<SocketAddr>),
}

impl Engine {
    #[must_use]
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            latches: Latches::default(),
            last_endorse: None,
            voted: None,
            vote_proposed_ns: 0,
            proposed_promote: None,
            proposed_set_primary: None,
            promotion: None,
            stop_work: None,
            rejoin_work: None,
            epoch_seen: None,
            started_ns: None,
            voted_floor: 0,
            handover: None,
            handover_cleared: None,
            quiet_from: None,
            last_epoch: None,
            post_promotion_due: None,
            positions: BTreeMap::new(),
            votes_seen: None,
            comparing_since: None,
            monitor: monitoring::Monitor::default(),
            confirm: None,
            fx: effects::Effects::default(),
        }
    }

    /// Epochs up to `epoch` were voted against (from the durable record of a previous life).
    pub fn set_voted_floor(&mut self, epoch: u64) {
        self.voted_floor = self.voted_floor.max(epoch);
    }

    /// Whether this node holds the VIP when the agent starts.
    pub fn set_vip_held(&mut self, held: bool) {
        self.fx.vip.held = held;
        self.fx.vip.found_at_start = held;
    }

    /// The PING that carried an endorsement of `epoch` left at `sent_ns` (after the step that
    /// decided it): the promotion wait counts from the later time.
    pub fn endorsement_sent(&mut self, epoch: u64, sent_ns: u64) {
        if let Some((e, t)) = self.last_endorse.as_mut() {
            if *e == epoch && sent_ns > *t {
                *t = sent_ns;
            }
        }
    }

    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Has this node voted against `epoch` (in this life or a previous one)?
    #[must_use]
    pub fn voted_against(&self, epoch: u64) -> bool {
        self.voted == Some(epoch) || (epoch > 0 && epoch <= self.voted_floor)
    }

    fn db_flags(db: &LocalDb) -> u16 {
        if db.up == Some(true) && !db.failed {
            FLAG_DB_UP
        } else {
            0
        }
    }

    /// One decision cycle: completions, monitoring, the node's decision cascade, then the
    /// effects that follow from it (in the order the runtime must carry them out).
    #[must_use]
    pub fn step(&mut self, inp: &Inputs<'_>) -> Step {
        let mut fx_before = Vec::new();
        let now = inp.now_ns;
        self.started_ns.get_or_insert(now);
        // 1. What happened since the last step (completions, operator requests).
        for ev in inp.events {
            self.absorb(ev, inp, &mut fx_before);
        }
        // 2. EFM's monitoring state: a suspended node's database counts as failed.
        let db = self.monitor(inp, &mut fx_before);
        // 3. How long the kernel's lease has been lapsed (the kernel's rule, lease floor).
        let lease_lapsed_for = self.lease_lapsed_for(inp);
        // 4. The cascade: voter, leader, own role.
        let mut actions = Vec::new();
        let (mut desired, outcome) = match inp.committed {
            None => (self.not_joined(&db), if self.cfg.is_witness { Outcome::Witness } else { Outcome::NotJoined }),
            Some(c) => self.decide(c, inp, &db, lease_lapsed_for, &mut actions),
        };
        // 5. `efm stop-cluster`: nothing is started any more; the process exits shortly.
        if inp.stop_cluster {
            self.stop_cluster(now, &mut desired, &mut actions);
        }
        // 6. Effects: the kernel (peer table, lease floor and lapse flag, ending sessions)
        //    first, then hooks and checks, the decisions, and the VIP after them (a database
        //    stop started above holds it).
        let mut ordered = self.kernel_effects(inp, &mut desired);
        ordered.append(&mut fx_before);
        self.load_balancer(inp, &desired, &outcome, &mut ordered);
        self.remote_checks(inp, &mut ordered);
        self.standby_checks(inp, &mut ordered);
        self.cluster_notices(inp, db.up == Some(true) && db.in_recovery == Some(true) && !db.failed, &mut ordered);
        self.register(inp, &mut ordered);
        self.count_db_stops(&actions);
        ordered.append(&mut actions);
        let non_primary = inp.committed.is_some_and(|c| c.primary != Some(self.cfg.me)) && !self.cfg.is_witness;
        self.vip(now, desired.vip, non_primary, &mut ordered);
        Step { desired, actions: ordered, outcome, suspended: self.monitor.suspension.clone(), db }
    }

    /// Not part of the log yet: anything but a known standby stays fenced until the cluster
    /// agrees (when in doubt, fence).
    fn not_joined(&self, db: &LocalDb) -> Desired {
        let role = if self.cfg.is_witness { ROLE_WITNESS } else { ROLE_IDLE };
        let known_standby = self.cfg.is_witness || db.in_recovery == Some(true);
        Desired {
            fenced: !known_standby,
            lease_enforced: false,
            lease_k: 0,
            members_exempt: false,
            epoch: 0,
            ping_flags: role | Self::db_flags(db) | if known_standby { 0 } else { FLAG_FENCED },
            vip: false,
            endorse: None,
        }
    }

    /// The ordered cascade for a member of the log.
    fn decide(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        lapsed: Option<Duration>,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        let me = self.cfg.me;
        if self.epoch_seen.is_none_or(|(e, _)| e != c.epoch) {
            self.epoch_seen = Some((c.epoch, inp.now_ns));
        }
        self.latches.forget_before(c.epoch.saturating_sub(1));
        // An operator's promotion ignores auto.failover (as EFM's does).
        let handover = c.handover.filter(|h| Some(h.from) == c.primary);
        if let Some(h) = handover {
            // A later hand-over that is not `-quiet` ends the quiet spell of an earlier one.
            self.quiet_from = h.quiet.then_some(c.epoch);
        }
        self.remote_promotion_hooks(c, inp, actions);
        self.track_positions(inp, db);
        if !c.votes.is_empty() && self.votes_seen.is_none_or(|(e, _)| e != c.epoch) {
            self.votes_seen = Some((c.epoch, inp.now_ns));
        }
        // A vote of ours in the log is ours even if this engine did not cast it (restart).
        if c.votes.contains(&me) {
            self.voted = Some(c.epoch);
        }

        // Every voter but the primary itself: endorse it, or vote against it (voter.rs).
        let vote = self.as_voter(c, inp, handover, actions);
        // The log's leader: propose a promotion once a majority voted (leader.rs).
        let promo_outcome = self.as_leader(c, inp, db, handover, actions);
        self.decline_if_orphaned(c, inp, db, actions);
        // This node's own role (primary.rs, standby.rs).
        let (mut desired, outcome) = self.own_role(c, inp, db, lapsed, actions);
        desired.endorse = vote.endorse;
        // What this node's remote checks found about the primary's database (confirm.rs).
        desired.ping_flags |= self.remote_check_flags(c, inp.now_ns);
        self.remote_check_notices(c, inp, actions);
        if inp.ping_failed.contains(&me) {
            desired.ping_flags |= FLAG_PING_SERVER_FAILED;
        }
        let outcome = match outcome {
            Outcome::Standby { primary, .. } => Outcome::Standby { primary, endorsing: vote.endorse.is_some() },
            o => o,
        };

        let mut outcome = Self::headline(c, promo_outcome, outcome, &vote, handover.is_some(), actions);
        if let (true, Some(primary), Outcome::Standby { .. } | Outcome::Witness) =
            (vote.absent_endorsed, c.primary, &outcome)
        {
            outcome = Outcome::PrimaryAgentAbsent { primary };
        }
        if self.quiet_from.is_some_and(|q| c.epoch <= q + 1) {
            actions.retain(|a| !matches!(a, Action::Notify(_)));
        }
        (desired, outcome)
    }

    /// The node's own role: the first row of this table that applies (tested row by row in
    /// `tests.rs`, `own_role_decision_table`).
    ///
    /// | # | condition                                                    | outcome            | kernel                  |
    /// |---|--------------------------------------------------------------|--------------------|-------------------------|
    /// | 1 | witness                                                      | `Witness`          | unfenced, no lease      |
    /// | 2 | committed primary, a hand-over of its epoch committed        | `HandingOver`      | fenced, members exempt under the lease |
    /// | 3 | committed primary, lease lapsed ≥ promotion wait, db up or its failure unconfirmed | `PrimaryIsolated` | lease enforced, no VIP |
    /// | 4a| committed primary, only the local checks fail, another agent reaches the db or has not answered yet (`confirm.rs`) | `PrimaryIdle` / `PrimaryCheckingDb` | unfenced, lease, VIP |
    /// | 4 | committed primary, db failed/down/suspended or epoch given up | `PrimaryDatabaseFailed` | fenced             |
    /// | 5 | committed primary, db a primary (registered or promoted)     | `Primary`          | unfenced, lease, VIP    |
    /// | 6 | committed primary, db a standby                              | `Candidate`        | fenced, VIP (promoting) |
    /// | 7 | handed over with `-switchover`, later epoch, db not up       | `Rejoining`        | fenced                  |
    /// | 8 | db a primary, no primary committed yet (epoch 0)             | `RegisteringPrimary` | fenced                |
    /// | 9 | db a primary, another node committed                         | `FencedOldPrimary` | fenced                  |
    /// |10 | db a standby, up, monitored                                  | `Standby`          | unfenced (reads)        |
    /// |11 | anything else (db down, unknown, suspended)                  | `Idle`             | fenced                  |
    fn own_role(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        lapsed: Option<Duration>,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        let k = u32::try_from(c.majority().saturating_sub(1)).unwrap_or(u32::MAX);
        if self.handover.is_some_and(|(e, _)| c.epoch > e) && db.up == Some(true) {
            // The old primary's database runs again (rejoined, or promoted again): the
            // hand-over is over, and a later failure of the database is not its business.
            self.handover = None;
        }
        if self.cfg.is_witness {
            (self.unfenced(c.epoch, ROLE_WITNESS, None), Outcome::Witness)
        } else if c.primary == Some(self.cfg.me) {
            self.as_committed_primary(c, inp, db, k, lapsed, actions)
        } else {
            self.as_other(c, inp, db, actions)
        }
    }

    /// The cycle's headline: a promotion decision first, then this node's vote, a suspect
    /// primary, else the own role.
    fn headline(
        c: &Committed,
        promo: Option<Outcome>,
        own: Outcome,
        vote: &voter::VoterView,
        handover: bool,
        actions: &[Action],
    ) -> Outcome {
        let auto_failover = c.auto_failover || handover;
        if let Some(o) = promo {
            return o;
        }
        let voted = actions.iter().find_map(|a| match a {
            Action::Propose(Proposal::Vote { epoch, .. }) => Some(*epoch),
            _ => None,
        });
        if let (Some(epoch), false) =
            (voted, matches!(own, Outcome::PrimaryDatabaseFailed | Outcome::HandingOver { .. }))
        {
            return Outcome::Voted { epoch };
        }
        match (vote.suspect, c.primary) {
            (Some(_), Some(p)) if !auto_failover => Outcome::ManualFailoverRequired { primary: p },
            (Some(reason), Some(p)) if matches!(own, Outcome::Standby { .. } | Outcome::Witness | Outcome::Idle) => {
                Outcome::PrimarySuspect { primary: p, reason }
            }
            _ => own,
        }
    }

    /// The primary of `epoch` under its lease (k endorsements; a single-voter cluster, k = 0,
    /// has no lease to enforce), holding the VIP or not.
    fn serving(epoch: u64, k: u32, db_flag: u16, vip: bool) -> Desired {
        Desired {
            fenced: false,
            lease_enforced: k > 0,
            lease_k: k,
            members_exempt: false,
            epoch,
            ping_flags: ROLE_PRIMARY | db_flag,
            vip,
            endorse: None,
        }
    }

    #[expect(clippy::unused_self, reason = "read as a method next to the engine's other role helpers")]
    fn fenced(&self, epoch: u64, ping_flags: u16) -> Desired {
        Desired {
            fenced: true,
            lease_enforced: false,
            lease_k: 0,
            members_exempt: false,
            epoch,
            ping_flags: ping_flags | FLAG_FENCED,
            vip: false,
            endorse: None,
        }
    }

    #[expect(clippy::unused_self, reason = "read as a method next to the engine's other role helpers")]
    fn unfenced(&self, epoch: u64, ping_flags: u16, endorse: Option<SocketAddr>) -> Desired {
        Desired {
            fenced: false,
            lease_enforced: false,
            lease_k: 0,
            members_exempt: false,
            epoch,
            ping_flags,
            vip: false,
            endorse,
        }
    }

    /// Records the WAL positions of this step: a peer's position is new when a new PING
    /// arrived (its arrival time, from the kernel's slot, changed); this node's is read every
    /// step.
    fn track_positions(&mut self, inp: &Inputs<'_>, db: &LocalDb) {
        let mut record = |addr: SocketAddr, arrival_ns: u64, lsn: u64| {
            let e = self.positions.entry(addr).or_insert(PositionReport { arrival_ns, lsn, prev_lsn: None });
            if e.arrival_ns != arrival_ns {
                *e = PositionReport { arrival_ns, lsn, prev_lsn: Some(e.lsn) };
            }
        };
        if !self.cfg.is_witness {
            record(self.cfg.me, inp.now_ns, db.lsn);
        }
        for v in inp.peers {
            if let Some(age) = v.agent_age {
                record(v.addr, inp.now_ns.saturating_sub(duration_ns(age)), v.lsn);
            }
        }
    }

    /// A completion or an operator request.
    fn absorb(&mut self, ev: &Event, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        let now = inp.now_ns;
        match ev {
            Event::Promoted { epoch } => {
                self.promotion = Some((*epoch, Progress::Done { at_ns: now }));
                self.monitor.promoted(inp.db);
            }
            Event::PromotionFailed { epoch, reason } => {
                self.promotion = Some((*epoch, Progress::Failed { reason: reason.clone() }));
            }
            Event::HandedOver { epoch } => self.stop_work = Some((*epoch, Progress::Done { at_ns: now })),
            Event::HandOverFailed { epoch, reason } => {
                self.stop_work = Some((*epoch, Progress::Failed { reason: reason.clone() }));
            }
            Event::Rejoined { epoch } => self.rejoin_work = Some((*epoch, Progress::Done { at_ns: now })),
            Event::RejoinFailed { epoch, reason } => {
                self.rejoin_work = Some((*epoch, Progress::Failed { reason: reason.clone() }));
            }
            Event::DbStopDone => self.fx.vip.db_stops = self.fx.vip.db_stops.saturating_sub(1),
            Event::RemoteChecked { node, reachable } => self.fx.remote_checked(*node, *reachable, now, out),
            Event::VipDone { assign, ok } => self.vip_done(*assign, *ok, out),
            Event::ResumeRequested { id, db } => self.resume_requested(*id, db, inp, out),
            Event::PeerTableFailed => self.fx.peer_table_failed(),
            Event::VipProbed { holder } => self.fx.vip_probed(holder.clone(), now),
        }
    }
}

/// A proposal not reflected in the committed state is repeated after this long.
const RETRY_NS: u64 = 1_000_000_000;

fn retry_due(last_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(last_ns) >= RETRY_NS
}

pub(super) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
