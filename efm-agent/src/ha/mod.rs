//! The HA engine: one pure decision step per cycle.
//!
//! Inputs: the committed cluster state (from the Raft log), whether this node leads the log, the
//! detector's view of every peer, the local database, and how far local promotion/demotion work
//! has got. Outputs: the *desired* state of the kernel fence, lease and VIP (level-triggered: the
//! runtime makes the kernel match it every cycle), one-shot [`Action`]s (proposals to the log,
//! promotion, demotion, notifications), and an [`Outcome`] naming the decision for logs and
//! status. No I/O, no clock: everything arrives in [`Inputs`].
//!
//! # Safety rules (see DESIGN.md "Safety" and ARCHITECTURE.md)
//!
//! 1. A voter endorses the committed primary of epoch `e` only while it hears that primary's
//!    agent within `endorse_window`, the primary carries epoch `e`, says it is primary, is not
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
//!
//! Not a safety rule but the data one: the leader promotes the standby with the most WAL,
//! comparing only fresh positions (at most two heartbeats old) that were read after the failure
//! and have stopped moving, waiting for them at most `position_wait` (see `choose_candidate`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    time::Duration,
};

use crate::notify::{Event, NodeRole};
use efm_common::wire::{FLAG_DB_UP, FLAG_FENCED, ROLE_IDLE, ROLE_PRIMARY, ROLE_STANDBY, ROLE_WITNESS};

pub mod runtime;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod sim;

/// Engine settings, from the properties.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub me: SocketAddr,
    pub is_witness: bool,
    /// `lease.timeout`.
    pub lease_timeout: Duration,
    /// Bound on the relative rate difference of two nodes' monotonic clocks (0.05 = 5 %).
    pub clock_drift: f64,
    /// Added to the promotion wait: covers one-way delay and scheduling.
    pub margin: Duration,
    /// A voter endorses only if it heard the primary's agent this recently.
    pub endorse_window: Duration,
    /// `minimum.standbys`: never promote if fewer standbys would remain.
    pub minimum_standbys: u32,
    /// `auto.reconfigure`.
    pub auto_reconfigure: bool,
    /// A committed primary that has not shown itself primary and unfenced this long after its
    /// epoch began (failed promotion) is treated as failed.
    pub promotion_grace: Duration,
    /// `heartbeat.interval`: every agent reads its WAL position at least this often and sends
    /// it in every PING; the failover compares positions at most
    /// [`EngineConfig::position_max_age`] old (see [`Engine::step`], "fresh positions").
    pub heartbeat_interval: Duration,
}

impl EngineConfig {
    /// How long a voter waits after its last endorsement before voting against the primary.
    #[must_use]
    pub fn promotion_wait(&self) -> Duration {
        self.lease_timeout.mul_f64(1.0 + self.clock_drift) + self.margin
    }

    /// A WAL position older than this is not compared (2 × `heartbeat.interval`). The agents
    /// apply the same bound when they advertise: a sample older than this goes out as 0
    /// ("unknown").
    #[must_use]
    pub fn position_max_age(&self) -> Duration {
        self.heartbeat_interval * 2
    }

    /// How long the leader waits, from when a promotion is first due, for every candidate's
    /// position to be final (reported after the decision began and unchanged since the report
    /// before). After that it compares what it has: fresh positions first.
    #[must_use]
    pub fn position_wait(&self) -> Duration {
        self.heartbeat_interval * 8
    }
}

/// The latest WAL position report of a node (a peer's PING, or this node's own sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PositionReport {
    /// When it arrived (this node's clock; for this node: the step that read it).
    arrival_ns: u64,
    lsn: u64,
    /// The position in the report before this one.
    prev_lsn: Option<u64>,
}

/// What a node is in the committed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeMeta {
    pub witness: bool,
    /// 0: never promote; otherwise lower is preferred.
    pub priority: u32,
    pub promotable: bool,
}

/// An operator's hand-over of the current epoch (`efm promote [-switchover]`), as committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    /// The primary handing over (the current epoch's).
    pub from: SocketAddr,
    /// The standby the operator's command chose.
    pub to: SocketAddr,
    /// `-switchover`: the old primary stops cleanly first and rejoins as a standby of `to`.
    pub demote: bool,
    /// `-quiet`: no notifications about this hand-over.
    pub quiet: bool,
    /// `-sourcenode`: whose replication settings the old primary copies when it rejoins.
    pub source: Option<SocketAddr>,
}

/// The part of the committed cluster state the engine needs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Committed {
    pub epoch: u64,
    pub primary: Option<SocketAddr>,
    /// The primary of the epoch before (the one the last promotion replaced).
    pub previous_primary: Option<SocketAddr>,
    /// A hand-over requested for this epoch and not carried out yet.
    pub handover: Option<Handover>,
    /// Voting members (database nodes and witnesses).
    pub nodes: BTreeMap<SocketAddr, NodeMeta>,
    /// Voters that voted against the current epoch's primary.
    pub votes: BTreeSet<SocketAddr>,
    pub auto_failover: bool,
}

impl Committed {
    #[must_use]
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }
}

/// Role bits a peer announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    Primary,
    Standby,
    Witness,
    Idle,
}

impl PeerRole {
    #[must_use]
    pub fn from_bits(bits: u16) -> Self {
        match bits & efm_common::wire::ROLE_MASK {
            ROLE_PRIMARY => Self::Primary,
            ROLE_STANDBY => Self::Standby,
            ROLE_WITNESS => Self::Witness,
            _ => Self::Idle,
        }
    }
}

/// One peer as the detector and its PINGs describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub addr: SocketAddr,
    /// The detector's verdict is "alive" (agent heard within `node.timeout`).
    pub alive: bool,
    /// Time since its agent's last PING.
    pub agent_age: Option<Duration>,
    pub role: PeerRole,
    pub epoch: u64,
    pub db_up: bool,
    /// Its PINGs say its node is fenced or its lease lapsed.
    pub fenced: bool,
    pub lsn: u64,
    /// Result of a check of its database from here (`remote.timeout`), when one was made.
    pub db_reachable: Option<bool>,
}

/// The local database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalDb {
    /// `None` until the first check.
    pub up: Option<bool>,
    pub in_recovery: Option<bool>,
    /// Declared failed by the local monitor (`local.timeout` + final check).
    pub failed: bool,
    pub lsn: u64,
    pub timeline: u32,
}

/// Progress of this node's own promotion or demotion work (runtime → engine).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Work {
    #[default]
    Idle,
    Promoting { epoch: u64 },
    Promoted { epoch: u64 },
    PromotionFailed { epoch: u64, reason: String },
    /// The old primary of `epoch` is stopping its database cleanly (`-switchover`).
    HandingOver { epoch: u64 },
    /// ... and has stopped it: every acknowledged write has reached the connected standbys.
    HandedOver { epoch: u64 },
    HandOverFailed { epoch: u64, reason: String },
    /// The old primary is being restarted as a standby of the primary of `epoch`.
    Rejoining { epoch: u64 },
    RejoinFailed { epoch: u64, reason: String },
}

/// Everything one step looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `CLOCK_MONOTONIC` ns.
    pub now_ns: u64,
    /// `None` until this node has joined the coordination log.
    pub committed: Option<&'a Committed>,
    pub is_leader: bool,
    pub peers: &'a [PeerView],
    pub db: LocalDb,
    pub work: &'a Work,
    /// How long this node's enforced lease has been lapsed, per its kernel (None: not lapsed
    /// or not enforced).
    pub lease_lapsed_for: Option<Duration>,
    /// The highest epoch this node's kernel has seen in any authenticated heartbeat: above the
    /// committed epoch, this node's copy of the log is behind.
    pub max_epoch_seen: u64,
}

/// How the kernel and the VIP should look (level-triggered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "independent fields of the kernel's fence state, written as flags")]
pub struct Desired {
    /// Cut client traffic off regardless of the lease.
    pub fenced: bool,
    /// Enforce the primary lease with `lease_k` endorsements.
    pub lease_enforced: bool,
    pub lease_k: u32,
    /// Keep the cluster's own nodes exempt from the explicit fence (`FENCE_MEMBERS_EXEMPT`):
    /// only the current epoch's primary handing over, under its lease, so that its standbys
    /// receive its last WAL.
    pub members_exempt: bool,
    pub epoch: u64,
    /// Role bits and flags for PINGs and PONGs.
    pub ping_flags: u16,
    /// This node should hold the VIP.
    pub vip: bool,
    /// Endorse this peer in PINGs sent to it.
    pub endorse: Option<SocketAddr>,
}

/// A proposal to the coordination log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    SetPrimary { node: SocketAddr, expected_epoch: u64 },
    Vote { voter: SocketAddr, epoch: u64 },
    Promote { candidate: SocketAddr, expected_epoch: u64, lsn: u64, reason: String },
    /// Call off a hand-over that could not be carried out (the old primary serves again).
    ClearSwitchover,
}

/// One-shot work for the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Propose(Proposal),
    /// Promote the local standby for `epoch` (fence script, `pg_promote()`, VIP, post script).
    PromoteLocal { epoch: u64, old_primary: Option<SocketAddr> },
    /// The local primary's database failed: release the VIP, write `standby.signal`, stop it if
    /// `stop.failed.primary`, run `script.db.failure`.
    PrimaryDbFailed { epoch: u64 },
    /// The local database is a primary but another node is the committed primary: keep it
    /// fenced and make sure a restart brings it back in recovery.
    DemoteLocal { epoch: u64, primary: Option<SocketAddr> },
    /// This primary's lease has been lapsed longer than the promotion wait (it is cut off from a
    /// majority; the kernel already refuses its clients): stop the database if
    /// `stop.isolated.primary`, run `script.primary.isolated`. The VIP is released through
    /// [`Desired::vip`], by the runtime once the database has stopped.
    PrimaryIsolated { epoch: u64 },
    /// Point the local standby at the committed primary (`auto.reconfigure`).
    Follow { primary: SocketAddr, epoch: u64 },
    /// The operator hands this primary's epoch over to `to`: the kernel is already fenced; with
    /// `demote`, stop the database cleanly (so the standbys have every acknowledged write) and
    /// report [`Work::HandedOver`]; the engine then votes against its own epoch.
    HandOver { epoch: u64, to: SocketAddr, demote: bool },
    /// After a `-switchover`: restart the stopped old primary as a standby of `primary`.
    Rejoin { epoch: u64, primary: SocketAddr, source: Option<SocketAddr> },
    /// `script.remote.pre.promotion` on a node not involved in the promotion to `new_primary`.
    RemotePrePromotion { new_primary: SocketAddr, old_primary: Option<SocketAddr> },
    /// `script.remote.post.promotion` once the new primary serves.
    RemotePostPromotion { new_primary: SocketAddr, old_primary: Option<SocketAddr> },
    /// An EFM notification (logged, `script.notification`, mail).
    Notify(Event),
}

/// The decision of one cycle, for logs and `cluster-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Witness,
    Standby { primary: Option<SocketAddr>, endorsing: bool },
    Primary { epoch: u64 },
    Idle,
    NotJoined,
    RegisteringPrimary,
    Candidate { epoch: u64 },
    FencedOldPrimary { epoch: u64 },
    PrimaryDatabaseFailed,
    PrimaryIsolated { epoch: u64 },
    PrimarySuspect { primary: SocketAddr, reason: &'static str },
    Voted { epoch: u64 },
    PromotionProposed { candidate: SocketAddr, epoch: u64 },
    NoCandidate { epoch: u64, reason: String },
    /// A promotion is due; waiting (bounded by [`EngineConfig::position_wait`]) for these
    /// candidates to report a fresh, settled WAL position.
    ComparingPositions { epoch: u64, waiting_for: Vec<SocketAddr> },
    ManualFailoverRequired { primary: SocketAddr },
    HandingOver { epoch: u64, to: SocketAddr },
    Rejoining { primary: SocketAddr },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Witness => write!(f, "witness"),
            Self::Standby { primary: Some(p), endorsing: true } => write!(f, "standby, endorsing primary {p}"),
            Self::Standby { primary: Some(p), endorsing: false } => write!(f, "standby of {p}, not endorsing"),
            Self::Standby { primary: None, .. } => write!(f, "standby, no committed primary"),
            Self::Primary { epoch } => write!(f, "primary for epoch {epoch}"),
            Self::Idle => write!(f, "idle (local database not available)"),
            Self::NotJoined => write!(f, "not yet part of the coordination log"),
            Self::RegisteringPrimary => write!(f, "registering the existing primary"),
            Self::Candidate { epoch } => write!(f, "promoting for epoch {epoch}"),
            Self::FencedOldPrimary { epoch } => write!(f, "fenced: database is a primary but epoch {epoch} belongs to another node"),
            Self::PrimaryDatabaseFailed => write!(f, "fenced: the primary database failed"),
            Self::PrimaryIsolated { epoch } => write!(f, "isolated primary of epoch {epoch}: no endorsements, clients cut off by the lease"),
            Self::PrimarySuspect { primary, reason } => write!(f, "primary {primary} suspect: {reason}"),
            Self::Voted { epoch } => write!(f, "voted against the primary of epoch {epoch}"),
            Self::PromotionProposed { candidate, epoch } => write!(f, "proposed promoting {candidate} (epoch {epoch} → {})", epoch + 1),
            Self::NoCandidate { epoch, reason } => write!(f, "no standby to promote for epoch {epoch}: {reason}"),
            Self::ComparingPositions { epoch, waiting_for } => {
                write!(f, "comparing WAL positions for epoch {epoch}: waiting for fresh, settled positions from")?;
                for a in waiting_for {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::ManualFailoverRequired { primary } => write!(f, "primary {primary} failed; auto.failover is off: manual failover required"),
            Self::HandingOver { epoch, to } => write!(f, "fenced: handing epoch {epoch} over to {to} (operator request)"),
            Self::Rejoining { primary } => write!(f, "fenced: old primary rejoining as a standby of {primary}"),
        }
    }
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub desired: Desired,
    pub actions: Vec<Action>,
    pub outcome: Outcome,
}

/// The engine's memory between cycles.
#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// Last time (ns) this node endorsed, per epoch.
    last_endorse: Option<(u64, u64)>,
    /// The epoch this node voted against (never endorsed again).
    voted: Option<u64>,
    /// When the vote was last proposed (re-proposed until it is committed).
    vote_proposed_ns: u64,
    /// (epoch, when) of the last promotion proposal (re-proposed until the epoch moves on).
    proposed_promote: Option<(u64, u64)>,
    proposed_set_primary: Option<(u64, u64)>,
    promote_started: Option<u64>,
    /// The epoch whose local promotion the runtime reported done.
    promote_done: Option<u64>,
    db_failure_handled: Option<u64>,
    isolation_handled: Option<u64>,
    demoted: Option<u64>,
    followed: Option<(SocketAddr, u64)>,
    manual_notified: Option<u64>,
    no_candidate_notified: Option<u64>,
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
    rejoin_started: Option<u64>,
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
            last_endorse: None,
            voted: None,
            vote_proposed_ns: 0,
            proposed_promote: None,
            proposed_set_primary: None,
            promote_started: None,
            promote_done: None,
            db_failure_handled: None,
            isolation_handled: None,
            demoted: None,
            followed: None,
            manual_notified: None,
            no_candidate_notified: None,
            epoch_seen: None,
            started_ns: None,
            voted_floor: 0,
            handover: None,
            handover_cleared: None,
            rejoin_started: None,
            quiet_from: None,
            last_epoch: None,
            post_promotion_due: None,
            positions: BTreeMap::new(),
            votes_seen: None,
            comparing_since: None,
        }
    }

    /// Records the WAL positions of this step: a peer's position is new when a new PING
    /// arrived (its arrival time, from the kernel's slot, changed); this node's is read every
    /// step.
    fn track_positions(&mut self, inp: &Inputs<'_>) {
        let mut record = |addr: SocketAddr, arrival_ns: u64, lsn: u64| {
            let e = self.positions.entry(addr).or_insert(PositionReport { arrival_ns, lsn, prev_lsn: None });
            if e.arrival_ns != arrival_ns {
                *e = PositionReport { arrival_ns, lsn, prev_lsn: Some(e.lsn) };
            }
        };
        if !self.cfg.is_witness {
            record(self.cfg.me, inp.now_ns, inp.db.lsn);
        }
        for v in inp.peers {
            if let Some(age) = v.agent_age {
                record(v.addr, inp.now_ns.saturating_sub(duration_ns(age)), v.lsn);
            }
        }
    }

    /// Epochs up to `epoch` were voted against (from the durable record of a previous life).
    pub fn set_voted_floor(&mut self, epoch: u64) {
        self.voted_floor = self.voted_floor.max(epoch);
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
        if db.up == Some(true) && !db.failed { FLAG_DB_UP } else { 0 }
    }

    /// One decision cycle.
    #[must_use]
    #[expect(clippy::too_many_lines, reason = "one ordered cascade of checks, as Patroni's run_cycle; splitting it hides the order")]
    pub fn step(&mut self, inp: &Inputs<'_>) -> Step {
        let me = self.cfg.me;
        let mut actions = Vec::new();
        let db_flag = Self::db_flags(&inp.db);
        let db_is_primary = inp.db.up == Some(true) && inp.db.in_recovery == Some(false);
        let started = *self.started_ns.get_or_insert(inp.now_ns);

        let Some(c) = inp.committed else {
            // Not part of the log yet: anything but a known standby stays fenced until the
            // cluster agrees (when in doubt, fence).
            let outcome = if self.cfg.is_witness { Outcome::Witness } else { Outcome::NotJoined };
            let role = if self.cfg.is_witness { ROLE_WITNESS } else { ROLE_IDLE };
            let known_standby = self.cfg.is_witness || inp.db.in_recovery == Some(true);
            return Step {
                desired: Desired {
                    fenced: !known_standby,
                    lease_enforced: false,
                    lease_k: 0,
                    members_exempt: false,
                    epoch: 0,
                    ping_flags: role | db_flag | if known_standby { 0 } else { FLAG_FENCED },
                    vip: false,
                    endorse: None,
                },
                actions,
                outcome,
            };
        };
        if self.epoch_seen.is_none_or(|(e, _)| e != c.epoch) {
            self.epoch_seen = Some((c.epoch, inp.now_ns));
        }
        let k = u32::try_from(c.majority().saturating_sub(1)).unwrap_or(u32::MAX);
        // An operator's promotion ignores auto.failover (as EFM's does).
        let handover = c.handover.filter(|h| Some(h.from) == c.primary);
        let auto_failover = c.auto_failover || handover.is_some();
        if let Some(h) = handover {
            // A later hand-over that is not `-quiet` ends the quiet spell of an earlier one.
            self.quiet_from = h.quiet.then_some(c.epoch);
        }
        self.remote_promotion_hooks(c, inp, &mut actions);
        self.track_positions(inp);
        if !c.votes.is_empty() && self.votes_seen.is_none_or(|(e, _)| e != c.epoch) {
            self.votes_seen = Some((c.epoch, inp.now_ns));
        }
        // A vote of ours in the log is ours even if this engine did not cast it (restart).
        if c.votes.contains(&me) {
            self.voted = Some(c.epoch);
        }

        // ---- Endorsement and votes (every voter but the primary itself). ----
        let mut endorse = None;
        let mut suspect_reason = None;
        if let Some(p) = c.primary.filter(|p| *p != me) {
            let view = inp.peers.iter().find(|v| v.addr == p);
            let epoch_age = self.epoch_seen.map_or(0, |(_, t)| inp.now_ns.saturating_sub(t));
            // A primary stopping its database cleanly for a `-switchover` is fenced on purpose
            // (its kernel refuses clients whatever its lease) and votes against its epoch once
            // stopped. It stays endorsed meanwhile: if the stop fails, the hand-over is called
            // off and it must serve again at once, under a lease that has not lapsed and with
            // no voter having voted against it (rule 1 exception; see `handing_over`).
            let stopping = handover.is_some_and(|h| h.demote);
            let healthy = view.is_some_and(|v| {
                v.agent_age.is_some_and(|a| a <= self.cfg.endorse_window)
                    && v.epoch == c.epoch
                    && v.role == PeerRole::Primary
                    && (!v.fenced || stopping)
                    && v.db_up
            });
            // A kernel that saw a higher epoch than the log means this log copy is behind.
            if healthy && !self.voted_against(c.epoch) && inp.max_epoch_seen <= c.epoch {
                endorse = Some(p);
                self.last_endorse = Some((c.epoch, inp.now_ns));
            }
            suspect_reason = match view {
                None => Some("not a known peer"),
                Some(v) if !v.alive => Some("agent not heard within node.timeout"),
                Some(v) if v.epoch == c.epoch && !v.db_up && v.db_reachable == Some(false) => {
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
            if let Some(reason) = suspect_reason {
                if !auto_failover {
                    if self.manual_notified != Some(c.epoch) {
                        self.manual_notified = Some(c.epoch);
                        actions.push(Action::Notify(Event::ManualFailoverRequired { primary: p.to_string(), reason: reason.to_owned() }));
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
        }

        // ---- Promotion proposal (the log's leader). ----
        let mut promo_outcome = None;
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
                || inp.peers.iter().any(|v| v.addr == h.from && (!v.alive || (!v.db_up && v.db_reachable == Some(false))))
        });
        if inp.is_leader && c.votes.len() >= c.majority() && promote_due && handover_ready {
            let choice = if let Some((t, lsn)) = handover.and_then(|h| self.handover_target(c, inp, h.to)) {
                Ok(Choice::Promote(t, lsn))
            } else {
                if self.comparing_since.is_none_or(|(e, _)| e != c.epoch) {
                    self.comparing_since = Some((c.epoch, inp.now_ns));
                }
                self.choose_candidate(c, inp)
            };
            match choice {
                Ok(Choice::Wait(waiting_for)) => {
                    promo_outcome = Some(Outcome::ComparingPositions { epoch: c.epoch, waiting_for });
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
                    promo_outcome = Some(Outcome::PromotionProposed { candidate, epoch: c.epoch });
                }
                Err(reason) => {
                    if self.no_candidate_notified != Some(c.epoch) {
                        self.no_candidate_notified = Some(c.epoch);
                        actions.push(Action::Notify(Event::FailoverNotOccurred { reason: reason.clone() }));
                    }
                    promo_outcome = Some(Outcome::NoCandidate { epoch: c.epoch, reason });
                }
            }
        }

        // ---- This node's own role. ----
        if self.handover.is_some_and(|(e, _)| c.epoch > e) && inp.db.up == Some(true) {
            // The old primary's database runs again (rejoined, or promoted again): the
            // hand-over is over, and a later failure of the database is not its business.
            self.handover = None;
        }
        let (mut desired, outcome) = if self.cfg.is_witness {
            (self.unfenced(c.epoch, ROLE_WITNESS, endorse), Outcome::Witness)
        } else if c.primary == Some(me) {
            self.as_committed_primary(c, inp, k, db_is_primary, &mut actions)
        } else if let Some((p, h)) = self.rejoin_due(c, inp) {
            if self.rejoin_started != Some(c.epoch) {
                self.rejoin_started = Some(c.epoch);
                actions.push(Action::Rejoin { epoch: c.epoch, primary: p, source: h.source });
            }
            if let Work::RejoinFailed { epoch, reason } = inp.work {
                if *epoch == c.epoch && self.no_candidate_notified != Some(c.epoch) {
                    self.no_candidate_notified = Some(c.epoch);
                    actions.push(Action::Notify(Event::DemotionFailed { node: self.cfg.me.to_string(), error: reason.clone() }));
                }
            }
            (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::Rejoining { primary: p })
        } else if db_is_primary || (inp.db.in_recovery == Some(false)) {
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
                (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::RegisteringPrimary)
            } else {
                if self.demoted != Some(c.epoch) {
                    self.demoted = Some(c.epoch);
                    actions.push(Action::DemoteLocal { epoch: c.epoch, primary: c.primary });
                    actions.push(Action::Notify(Event::PrimaryFencedOff { node: me.to_string() }));
                }
                (self.fenced(c.epoch, ROLE_IDLE | db_flag), Outcome::FencedOldPrimary { epoch: c.epoch })
            }
        } else if inp.db.up == Some(true) && !inp.db.failed {
            if let Some(p) = c.primary {
                if self.cfg.auto_reconfigure && self.followed != Some((p, c.epoch)) {
                    self.followed = Some((p, c.epoch));
                    actions.push(Action::Follow { primary: p, epoch: c.epoch });
                }
            }
            let out = Outcome::Standby { primary: c.primary, endorsing: endorse.is_some() };
            (self.unfenced(c.epoch, ROLE_STANDBY | db_flag, endorse), out)
        } else {
            // Database down or not known yet: it may still be a primary; fence (when in doubt).
            let mut d = self.fenced(c.epoch, ROLE_IDLE);
            d.endorse = endorse;
            (d, Outcome::Idle)
        };
        desired.endorse = endorse;

        let outcome = if let Some(o) = promo_outcome {
            o
        } else if let (Some(Action::Propose(Proposal::Vote { epoch, .. })), false) = (
            actions.iter().find(|a| matches!(a, Action::Propose(Proposal::Vote { .. }))),
            matches!(outcome, Outcome::PrimaryDatabaseFailed | Outcome::HandingOver { .. }),
        ) {
            Outcome::Voted { epoch: *epoch }
        } else if let (Some(reason), Some(p), false) = (suspect_reason, c.primary, auto_failover) {
            let _ = reason;
            Outcome::ManualFailoverRequired { primary: p }
        } else if let (Some(reason), Some(p)) = (suspect_reason, c.primary) {
            if matches!(outcome, Outcome::Standby { .. } | Outcome::Witness | Outcome::Idle) {
                Outcome::PrimarySuspect { primary: p, reason }
            } else {
                outcome
            }
        } else {
            outcome
        };
        if self.quiet_from.is_some_and(|q| c.epoch <= q + 1) {
            actions.retain(|a| !matches!(a, Action::Notify(_)));
        }
        Step { desired, actions, outcome }
    }

    /// `script.remote.pre.promotion` when a promotion this node is not part of commits, and
    /// `script.remote.post.promotion` once the new primary serves (PINGs: primary, unfenced, the
    /// new epoch). Not at the first step: a starting agent did not see the promotion happen.
    fn remote_promotion_hooks(&mut self, c: &Committed, inp: &Inputs<'_>, actions: &mut Vec<Action>) {
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
            } else if inp.peers.iter().any(|v| v.addr == p && v.epoch == e && v.role == PeerRole::Primary && !v.fenced) {
                self.post_promotion_due = None;
                actions.push(Action::RemotePostPromotion { new_primary: p, old_primary: old });
            }
        }
    }

    /// The hand-over target if it can be promoted now (alive standby with its database up).
    fn handover_target(&self, c: &Committed, inp: &Inputs<'_>, to: SocketAddr) -> Option<(SocketAddr, u64)> {
        let m = c.nodes.get(&to).copied().unwrap_or_default();
        if !m.promotable || m.priority == 0 || m.witness {
            return None;
        }
        if to == self.cfg.me {
            let ok = inp.db.up == Some(true) && inp.db.in_recovery == Some(true) && !inp.db.failed;
            return ok.then_some((to, inp.db.lsn));
        }
        inp.peers
            .iter()
            .find(|v| v.addr == to && v.alive && v.role == PeerRole::Standby && v.db_up)
            .map(|v| (to, v.lsn))
    }

    /// This node handed its epoch over with `-switchover`, a later epoch is committed and the
    /// database is still stopped: time to restart it as a standby of the new primary.
    fn rejoin_due(&self, c: &Committed, inp: &Inputs<'_>) -> Option<(SocketAddr, Handover)> {
        let (e, h) = self.handover?;
        let p = c.primary?;
        (h.demote && c.epoch > e && p != self.cfg.me && inp.db.up != Some(true)).then_some((p, h))
    }

    /// The old primary's side of an operator hand-over: fenced from this cycle on; votes against
    /// its own epoch at once, or (`-switchover`) once its database stopped cleanly. If the clean
    /// stop fails, it asks the log to call the hand-over off and serves again when it is.
    fn handing_over(&mut self, c: &Committed, inp: &Inputs<'_>, h: Handover, k: u32, actions: &mut Vec<Action>) -> (Desired, Outcome) {
        let (me, e) = (self.cfg.me, c.epoch);
        // Fenced for clients; the cluster's own nodes stay exempt so the standbys receive the
        // last WAL, but only under the lease: cut off from the voters, the node fences its
        // members too (its lease lapses), as it no longer knows it is the primary.
        let fenced = Desired { lease_enforced: k > 0, lease_k: k, members_exempt: true, ..self.fenced(e, ROLE_PRIMARY | Self::db_flags(&inp.db)) };
        if self.handover.is_none_or(|(he, _)| he != e) {
            self.handover = Some((e, h));
            actions.push(Action::HandOver { epoch: e, to: h.to, demote: h.demote });
            if !h.quiet {
                actions.push(Action::Notify(Event::PromotionStarted { candidate: h.to.to_string() }));
            }
        }
        if let Work::HandOverFailed { epoch, reason } = inp.work {
            if *epoch == e && !c.votes.contains(&me) {
                if self.handover_cleared.is_none_or(|at| retry_due(at, inp.now_ns)) {
                    self.handover_cleared = Some(inp.now_ns);
                    actions.push(Action::Propose(Proposal::ClearSwitchover));
                    actions.push(Action::Notify(Event::PromotionNotOccurred {
                        in_progress: format!("{} (switchover called off: the primary could not stop its database cleanly: {reason}; it serves again)", h.to),
                    }));
                }
                return (fenced, Outcome::HandingOver { epoch: e, to: h.to });
            }
        }
        let ready = !h.demote || matches!(inp.work, Work::HandedOver { epoch } if *epoch == e);
        if ready && !c.votes.contains(&me) && (self.voted != Some(e) || retry_due(self.vote_proposed_ns, inp.now_ns)) {
            self.voted = Some(e);
            self.vote_proposed_ns = inp.now_ns;
            actions.push(Action::Propose(Proposal::Vote { voter: me, epoch: e }));
        }
        (fenced, Outcome::HandingOver { epoch: e, to: h.to })
    }

    fn as_committed_primary(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        k: u32,
        db_is_primary: bool,
        actions: &mut Vec<Action>,
    ) -> (Desired, Outcome) {
        if let Some(h) = c.handover.filter(|h| h.from == self.cfg.me) {
            return self.handing_over(c, inp, h, k, actions);
        }
        if self.handover.is_some_and(|(e, _)| e == c.epoch) && !self.voted_against(c.epoch) {
            // The hand-over was called off before this node voted: it is still the primary.
            self.handover = None;
            self.handover_cleared = None;
        }
        let db_flag = Self::db_flags(&inp.db);
        let isolated = inp.lease_lapsed_for.is_some_and(|d| d >= self.cfg.promotion_wait());
        if !isolated && self.isolation_handled == Some(c.epoch) {
            // Endorsed again: the isolation episode is over (the VIP comes back below).
            self.isolation_handled = None;
        }
        if isolated && !inp.db.failed && inp.db.up != Some(false) {
            // Unendorsed for longer than any voter waits before voting: cut off from a majority.
            // The kernel already refuses clients (lease); give up the VIP and run EFM's isolated
            // primary flow once per episode. No vote and nothing sticky: when endorsements come
            // back, so does the primary.
            if self.isolation_handled != Some(c.epoch) {
                self.isolation_handled = Some(c.epoch);
                actions.push(Action::PrimaryIsolated { epoch: c.epoch });
                actions.push(Action::Notify(Event::IsolatedPrimary { node: self.cfg.me.to_string() }));
            }
            return (Self::serving(c.epoch, k, db_flag, false), Outcome::PrimaryIsolated { epoch: c.epoch });
        }
        if inp.db.failed || inp.db.up == Some(false) || self.voted_against(c.epoch) {
            // Fenced by its own kernel from this cycle on, so its vote is safe at once; without
            // it a cluster that has lost another voter could never replace it.
            if !c.votes.contains(&self.cfg.me) && (self.voted != Some(c.epoch) || retry_due(self.vote_proposed_ns, inp.now_ns)) {
                self.voted = Some(c.epoch);
                self.vote_proposed_ns = inp.now_ns;
                actions.push(Action::Propose(Proposal::Vote { voter: self.cfg.me, epoch: c.epoch }));
            }
            if self.db_failure_handled != Some(c.epoch) {
                self.db_failure_handled = Some(c.epoch);
                actions.push(Action::PrimaryDbFailed { epoch: c.epoch });
                actions.push(Action::Notify(Event::DatabaseFailure { role: NodeRole::Primary, node: self.cfg.me.to_string() }));
            }
            return (self.fenced(c.epoch, ROLE_PRIMARY), Outcome::PrimaryDatabaseFailed);
        }
        // Remembered: the runtime replaces `Work::Promoted` when a hand-over starts, and a
        // called-off hand-over leaves `HandOverFailed`.
        if matches!(inp.work, Work::Promoted { epoch } if *epoch == c.epoch) {
            self.promote_done = Some(c.epoch);
        }
        let promoted = self.promote_done == Some(c.epoch);
        if db_is_primary && (promoted || self.promote_started != Some(c.epoch)) {
            // Registered or promoted primary serving under the lease.
            return (Self::serving(c.epoch, k, db_flag, true), Outcome::Primary { epoch: c.epoch });
        }
        // A standby named primary by the log: promote it (once per epoch).
        if self.promote_started != Some(c.epoch) && inp.db.up == Some(true) {
            self.promote_started = Some(c.epoch);
            let old = None;
            actions.push(Action::PromoteLocal { epoch: c.epoch, old_primary: old });
        }
        // Take the VIP at once: the kernel refuses database traffic until the promotion is done
        // (clients get a RST and retry), and the old holder's lease has lapsed, so clients find
        // the new primary as soon as it can serve.
        let mut d = self.fenced(c.epoch, ROLE_STANDBY | db_flag);
        d.vip = true;
        (d, Outcome::Candidate { epoch: c.epoch })
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
        Desired { fenced: false, lease_enforced: false, lease_k: 0, members_exempt: false, epoch, ping_flags, vip: false, endorse }
    }

    /// The standby to promote: alive, up, promotable, priority > 0; most advanced WAL position,
    /// then priority (lower first), then address. Refuses when `minimum.standbys` would be
    /// violated.
    ///
    /// Fresh positions: a position is compared only if its report is at most
    /// [`EngineConfig::position_max_age`] old (a peer's PING arrived that recently and carries a
    /// non-zero LSN — agents send 0 when their own sample is older than that); an older one
    /// counts as unknown (0, below every known position). The leader waits, at most
    /// [`EngineConfig::position_wait`] from when the promotion was first due, until every
    /// candidate's position is final: reported at least `position_max_age` after this node
    /// first saw a vote against the epoch (so read after the failure) and equal to its report
    /// before (no longer moving — a walreceiver may still be writing the old primary's last
    /// WAL). Once the old primary is gone the positions stop moving, so the comparison is exact.
    fn choose_candidate(&self, c: &Committed, inp: &Inputs<'_>) -> Result<Choice, String> {
        // (address, position or 0 when unknown, priority, final)
        let mut cands: Vec<(SocketAddr, u64, u32, bool)> = Vec::new();
        let meta = |a: &SocketAddr| c.nodes.get(a).copied().unwrap_or_default();
        let max_age = self.cfg.position_max_age();
        let since = self.comparing_since.filter(|(e, _)| *e == c.epoch).map_or(inp.now_ns, |(_, t)| t);
        // A report that arrived `max_age` after the first vote was read after it (agents send
        // nothing older), hence after the failure.
        let after = self.votes_seen.filter(|(e, _)| *e == c.epoch).map_or(since, |(_, t)| t.min(since));
        let settled = |addr: &SocketAddr, lsn: u64| {
            lsn != 0
                && self.positions.get(addr).is_some_and(|r| {
                    r.lsn == lsn && r.prev_lsn == Some(lsn) && r.arrival_ns >= after.saturating_add(duration_ns(max_age))
                })
        };
        if !self.cfg.is_witness
            && Some(self.cfg.me) != c.primary
            && inp.db.up == Some(true)
            && inp.db.in_recovery == Some(true)
            && !inp.db.failed
        {
            let m = meta(&self.cfg.me);
            if m.promotable && m.priority > 0 {
                // The runtime passes 0 when its own sample is older than `position_max_age`.
                let lsn = inp.db.lsn;
                cands.push((self.cfg.me, lsn, m.priority, settled(&self.cfg.me, lsn)));
            }
        }
        let mut standbys = usize::from(cands.len() == 1);
        for v in inp.peers {
            if Some(v.addr) == c.primary || !v.alive || v.role != PeerRole::Standby || !v.db_up {
                continue;
            }
            standbys += 1;
            let m = meta(&v.addr);
            if m.promotable && m.priority > 0 && !m.witness {
                let lsn = if v.agent_age.is_some_and(|a| a <= max_age) { v.lsn } else { 0 };
                cands.push((v.addr, lsn, m.priority, settled(&v.addr, lsn)));
            }
        }
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        let Some(&(best, lsn, _, _)) = cands.first() else {
            return Err(if standbys == 0 {
                "no standby is available".into()
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

/// A proposal not reflected in the committed state is repeated after this long.
const RETRY_NS: u64 = 1_000_000_000;

fn retry_due(last_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(last_ns) >= RETRY_NS
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
