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
//! 5. A vote is proposed only after it is recorded durably (the runtime writes and syncs
//!    `<cluster>.voted` on the blocking pool and proposes on completion); a restarted agent
//!    never endorses an epoch it voted against ([`Engine::set_voted_floor`]).
//! 6. Demotion runs in order: kernel fence (this step's [`Desired`]), end sessions
//!    ([`Action::EndSessions`], before any action that stops the database), stop the database,
//!    and only once that stop completed ([`Event::DbStopDone`]) release the VIP.
//!
//! Not a safety rule but the data one: the leader promotes the standby with the most WAL,
//! comparing only fresh positions (at most two heartbeats old) that were read after the failure
//! and have stopped moving, waiting for them at most `position_wait` (see `choose_candidate`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::notify::Event as Notice;
use efm_common::{
    maps::{FenceState, LeaseState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_MEMBERS_EXEMPT},
    wire::{FLAG_DB_UP, FLAG_FENCED, ROLE_IDLE, ROLE_PRIMARY, ROLE_STANDBY, ROLE_WITNESS},
};

pub mod effects;
#[cfg(test)]
mod effects_tests;
pub mod latch;
pub mod leader;
#[cfg(test)]
mod leader_tests;
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
pub mod voter;
#[cfg(test)]
mod voter_tests;

use latch::Latches;
pub use monitoring::{SuspendKind, Suspension};

/// Engine settings, from the properties.
#[derive(Clone, Debug, PartialEq)]
#[expect(clippy::struct_excessive_bools, reason = "independent properties")]
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
    /// `virtual.ip`, if any.
    pub vip: Option<IpAddr>,
    /// `stop.failed.primary`: a failed primary's database is stopped (the VIP waits for it).
    pub stop_failed_primary: bool,
    /// `stop.isolated.primary`: an isolated or stale primary's database is stopped.
    pub stop_isolated_primary: bool,
    /// `script.load.balancer.attach` or `detach` is set.
    pub load_balancer: bool,
    /// `detach.on.agent.failure`.
    pub detach_on_agent_failure: bool,
    /// `auto.resume.startup.period` (zero: never).
    pub auto_resume_startup: Duration,
    /// `auto.resume.failure.period` (zero: never).
    pub auto_resume_failure: Duration,
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

    /// Settings with every optional feature off (tests, the simulation).
    #[must_use]
    pub fn basic(me: SocketAddr, is_witness: bool, lease_timeout: Duration, heartbeat_interval: Duration) -> Self {
        Self {
            me,
            is_witness,
            lease_timeout,
            clock_drift: 0.05,
            margin: Duration::from_millis(50),
            endorse_window: heartbeat_interval * 3,
            minimum_standbys: 0,
            auto_reconfigure: true,
            promotion_grace: Duration::from_secs(30),
            heartbeat_interval,
            vip: None,
            stop_failed_primary: false,
            stop_isolated_primary: false,
            load_balancer: false,
            detach_on_agent_failure: false,
            auto_resume_startup: Duration::ZERO,
            auto_resume_failure: Duration::ZERO,
        }
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
    /// Some voter set of this epoch lacks a majority of votes (`ClusterState::missing_votes`):
    /// the voters changed during the epoch, and a primary cut off from the log may still count
    /// its endorsements with an earlier set. The state machine refuses the promotion then.
    pub votes_short: bool,
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
}

/// The local database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalDb {
    /// `None` until the first check.
    pub up: Option<bool>,
    pub in_recovery: Option<bool>,
    /// Declared failed by the local monitor (`local.timeout` + final check). The engine adds
    /// its own suspension (EFM's idle state) to this.
    pub failed: bool,
    pub lsn: u64,
    pub timeline: u32,
    /// A standby's upstream (`primary_conninfo` host), when it is an address.
    pub upstream: Option<IpAddr>,
}

/// What the kernel holds, as read at the start of the cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelState {
    /// `EFM_FENCE` as the runtime last wrote it (`None` before the first write).
    pub fence: Option<FenceState>,
    /// `EFM_LEASE`: the lease deadline (k-th newest endorsement + lease timeout; 0: none).
    pub deadline_ns: u64,
    /// The highest epoch the kernel has seen in any authenticated heartbeat: above the
    /// committed epoch, this node's copy of the log is behind.
    pub max_epoch_seen: u64,
}

impl KernelState {
    /// The kernel's lease map as `efm_common::serving` reads it.
    #[must_use]
    pub fn lease(&self) -> LeaseState {
        LeaseState { deadline_ns: self.deadline_ns, max_epoch_seen: self.max_epoch_seen, ..LeaseState::default() }
    }
}

/// Completions of the engine's actions and operator requests: the runtime delivers them on a
/// channel it drains at the start of each cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// [`Action::PromoteLocal`]: `pg_promote()` confirmed the database left recovery.
    Promoted {
        epoch: u64,
    },
    PromotionFailed {
        epoch: u64,
        reason: String,
    },
    /// [`Action::HandOver`] with `demote`: the database stopped cleanly (every acknowledged
    /// write reached the connected standbys) ...
    HandedOver {
        epoch: u64,
    },
    /// ... or could not be stopped.
    HandOverFailed {
        epoch: u64,
        reason: String,
    },
    /// [`Action::Rejoin`]: the old primary runs as a standby again, or could not.
    Rejoined {
        epoch: u64,
    },
    RejoinFailed {
        epoch: u64,
        reason: String,
    },
    /// An action that stops the database (`stop: true`, or a `-switchover`'s clean stop) is
    /// done with it, successfully or not: the VIP may go.
    DbStopDone,
    /// [`Action::CheckRemoteDb`]: whether the peer's database answered from here.
    RemoteChecked {
        node: SocketAddr,
        reachable: bool,
    },
    /// [`Action::Vip`] finished (`ok`: the address is now as wanted).
    VipDone {
        assign: bool,
        ok: bool,
    },
    /// `efm resume`: the operator's fresh reading of the local database.
    ResumeRequested {
        id: u64,
        db: LocalDb,
    },
    /// [`Action::SetPeerTable`] could not be written: ask again.
    PeerTableFailed,
}

/// Everything one step looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `CLOCK_MONOTONIC` ns.
    pub now_ns: u64,
    /// `None` until this node has joined the coordination log.
    pub committed: Option<&'a Committed>,
    /// The voting members (`ClusterState::voters`: allowed and joined; empty: not read yet): the
    /// kernel's peer table follows them, so only they can keep a primary's lease alive.
    pub allowed: &'a BTreeSet<SocketAddr>,
    /// The log shows this node's registration (kind, priority, promotable) as it would send it.
    pub registered: bool,
    pub is_leader: bool,
    pub peers: &'a [PeerView],
    pub db: LocalDb,
    /// The local monitor's last error, for the suspension's reason.
    pub db_error: Option<&'a str>,
    /// `script.custom.monitor` fails (not in safe mode), with what it said.
    pub custom_monitor_failed: Option<&'a str>,
    /// `efm stop-cluster` was committed during this agent's life.
    pub stop_cluster: bool,
    pub kernel: KernelState,
    /// Completions and operator requests since the last step, in arrival order.
    pub events: &'a [Event],
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
    /// Role bits and flags for PINGs and PONGs (with `FLAG_LEASE_LAPSED` once a granted lease
    /// has lapsed).
    pub ping_flags: u16,
    /// This node should hold the VIP.
    pub vip: bool,
    /// Endorse this peer in PINGs sent to it.
    pub endorse: Option<SocketAddr>,
}

impl Desired {
    /// The `FENCE_*` flags (without `FENCE_RESET`, a property of the runtime).
    #[must_use]
    pub fn fence_flags(&self) -> u32 {
        let mut flags = 0;
        if self.fenced {
            flags |= FENCE_FENCED;
        }
        if self.lease_enforced {
            flags |= FENCE_LEASE_ENFORCED;
        }
        if self.members_exempt {
            flags |= FENCE_MEMBERS_EXEMPT;
        }
        flags
    }

    /// `EFM_FENCE` for this state.
    #[must_use]
    pub fn fence_state(&self, extra_flags: u32, lease_timeout: Duration, lsn: u64) -> FenceState {
        FenceState {
            flags: self.fence_flags() | extra_flags,
            role: u32::from(self.ping_flags & efm_common::wire::ROLE_MASK),
            epoch: self.epoch,
            lease_k: self.lease_k,
            pad: 0,
            lease_timeout_ns: duration_ns(lease_timeout),
            lsn,
        }
    }
}

/// A proposal to the coordination log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    SetPrimary {
        node: SocketAddr,
        expected_epoch: u64,
    },
    Vote {
        voter: SocketAddr,
        epoch: u64,
    },
    Promote {
        candidate: SocketAddr,
        expected_epoch: u64,
        lsn: u64,
        reason: String,
    },
    /// Call off a hand-over that could not be carried out (the old primary serves again).
    ClearSwitchover,
}

/// One-shot work for the runtime (the executor): one small function each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A proposal to the log. A `Vote` is first recorded durably (see rule 5).
    Propose(Proposal),
    /// Register this node (kind, priority, promotable) in the log.
    Register,
    /// Promote the local standby for `epoch` (fence script, `pg_promote()`, post script);
    /// reports [`Event::Promoted`] or [`Event::PromotionFailed`].
    PromoteLocal { epoch: u64, old_primary: Option<SocketAddr> },
    /// The local primary's database failed: write `standby.signal`, stop it if `stop`
    /// (reporting [`Event::DbStopDone`]), run `script.db.failure`.
    PrimaryDbFailed { epoch: u64, stop: bool },
    /// The local database is a primary but another node is the committed primary: keep it
    /// fenced and make sure a restart brings it back in recovery; stop it if `stop`.
    DemoteLocal { epoch: u64, primary: Option<SocketAddr>, stop: bool },
    /// This primary's lease has been lapsed longer than the promotion wait (it is cut off from a
    /// majority; the kernel already refuses its clients): stop the database if `stop`, run
    /// `script.primary.isolated`. The VIP goes after the stop ([`Event::DbStopDone`]).
    PrimaryIsolated { epoch: u64, stop: bool },
    /// Point the local standby at the committed primary (`auto.reconfigure`).
    Follow { primary: SocketAddr, epoch: u64 },
    /// The operator hands this primary's epoch over to `to`: the kernel is already fenced; with
    /// `demote`, stop the database cleanly (so the standbys have every acknowledged write) and
    /// report [`Event::HandedOver`]; the engine then votes against its own epoch.
    HandOver { epoch: u64, to: SocketAddr, demote: bool },
    /// After a `-switchover`: restart the stopped old primary as a standby of `primary`.
    Rejoin { epoch: u64, primary: SocketAddr, source: Option<SocketAddr> },
    /// `script.remote.pre.promotion` on a node not involved in the promotion to `new_primary`.
    RemotePrePromotion { new_primary: SocketAddr, old_primary: Option<SocketAddr> },
    /// `script.remote.post.promotion` once the new primary serves.
    RemotePostPromotion { new_primary: SocketAddr, old_primary: Option<SocketAddr> },
    /// `script.load.balancer.attach` / `detach` for `node` (`%h`), `%t` = `p` or `s`.
    LoadBalancer { attach: bool, node: SocketAddr, primary: bool },
    /// Check `node`'s database from here (`remote.timeout`); reports [`Event::RemoteChecked`].
    CheckRemoteDb { node: SocketAddr },
    /// The kernel counts heartbeats (and endorsements) only from these members.
    SetPeerTable { members: Vec<SocketAddr> },
    /// The kernel stopped serving: end the open client sessions (members spared or not).
    EndSessions { members_spared: bool, why: &'static str },
    /// Assign (or release) the VIP; reports [`Event::VipDone`].
    Vip { assign: bool },
    /// Announce the held VIP again (gratuitous ARP / unsolicited NA).
    AnnounceVip,
    /// Monitoring resumed: the notification and `script.resumed`.
    Resumed { how: &'static str },
    /// The answer to [`Event::ResumeRequested`].
    AnswerResume { id: u64, result: Result<String, String> },
    /// An EFM notification (logged, `script.notification`, mail).
    Notify(Notice),
    /// `efm stop-cluster`: leave the process now (the leader had time to tell every follower).
    Exit,
}

/// The decision of one cycle, for logs and `cluster-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Witness,
    Standby {
        primary: Option<SocketAddr>,
        endorsing: bool,
    },
    Primary {
        epoch: u64,
    },
    Idle,
    NotJoined,
    RegisteringPrimary,
    Candidate {
        epoch: u64,
    },
    FencedOldPrimary {
        epoch: u64,
    },
    PrimaryDatabaseFailed,
    PrimaryIsolated {
        epoch: u64,
    },
    PrimarySuspect {
        primary: SocketAddr,
        reason: &'static str,
    },
    Voted {
        epoch: u64,
    },
    PromotionProposed {
        candidate: SocketAddr,
        epoch: u64,
    },
    NoCandidate {
        epoch: u64,
        reason: String,
    },
    /// A promotion is due; waiting (bounded by [`EngineConfig::position_wait`]) for these
    /// candidates to report a fresh, settled WAL position.
    ComparingPositions {
        epoch: u64,
        waiting_for: Vec<SocketAddr>,
    },
    ManualFailoverRequired {
        primary: SocketAddr,
    },
    HandingOver {
        epoch: u64,
        to: SocketAddr,
    },
    Rejoining {
        primary: SocketAddr,
    },
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
            Self::FencedOldPrimary { epoch } => {
                write!(f, "fenced: database is a primary but epoch {epoch} belongs to another node")
            }
            Self::PrimaryDatabaseFailed => write!(f, "fenced: the primary database failed"),
            Self::PrimaryIsolated { epoch } => {
                write!(f, "isolated primary of epoch {epoch}: no endorsements, clients cut off by the lease")
            }
            Self::PrimarySuspect { primary, reason } => write!(f, "primary {primary} suspect: {reason}"),
            Self::Voted { epoch } => write!(f, "voted against the primary of epoch {epoch}"),
            Self::PromotionProposed { candidate, epoch } => {
                write!(f, "proposed promoting {candidate} (epoch {epoch} → {})", epoch + 1)
            }
            Self::NoCandidate { epoch, reason } => write!(f, "no standby to promote for epoch {epoch}: {reason}"),
            Self::ComparingPositions { epoch, waiting_for } => {
                write!(f, "comparing WAL positions for epoch {epoch}: waiting for fresh, settled positions from")?;
                for a in waiting_for {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::ManualFailoverRequired { primary } => {
                write!(f, "primary {primary} failed; auto.failover is off: manual failover required")
            }
            Self::HandingOver { epoch, to } => {
                write!(f, "fenced: handing epoch {epoch} over to {to} (operator request)")
            }
            Self::Rejoining { primary } => write!(f, "fenced: old primary rejoining as a standby of {primary}"),
        }
    }
}

impl Outcome {
    /// A short name for logs and the cycle's span.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Witness => "witness",
            Self::Standby { .. } => "standby",
            Self::Primary { .. } => "primary",
            Self::Idle => "idle",
            Self::NotJoined => "not-joined",
            Self::RegisteringPrimary => "registering-primary",
            Self::Candidate { .. } => "candidate",
            Self::FencedOldPrimary { .. } => "fenced-old-primary",
            Self::PrimaryDatabaseFailed => "primary-database-failed",
            Self::PrimaryIsolated { .. } => "primary-isolated",
            Self::PrimarySuspect { .. } => "primary-suspect",
            Self::Voted { .. } => "voted",
            Self::PromotionProposed { .. } => "promotion-proposed",
            Self::NoCandidate { .. } => "no-candidate",
            Self::ComparingPositions { .. } => "comparing-positions",
            Self::ManualFailoverRequired { .. } => "manual-failover-required",
            Self::HandingOver { .. } => "handing-over",
            Self::Rejoining { .. } => "rejoining",
        }
    }
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub desired: Desired,
    pub actions: Vec<Action>,
    pub outcome: Outcome,
    /// EFM's idle state: monitoring of the local database is suspended.
    pub suspended: Option<Suspension>,
    /// The local database as the engine sees it (a promotion or `efm resume` it saw complete
    /// counts before the local monitor's next check).
    pub db: LocalDb,
}

/// Progress of one of this node's own long actions, as its completions report it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    Running,
    Done { at_ns: u64 },
    Failed { reason: String },
}

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
        self.register(inp, &mut ordered);
        self.count_db_stops(&actions);
        ordered.append(&mut actions);
        self.vip(now, desired.vip, &mut ordered);
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
        // This node's own role (primary.rs, standby.rs).
        let (mut desired, outcome) = self.own_role(c, inp, db, lapsed, actions);
        desired.endorse = vote.endorse;
        let outcome = match outcome {
            Outcome::Standby { primary, .. } => Outcome::Standby { primary, endorsing: vote.endorse.is_some() },
            o => o,
        };

        let outcome = Self::headline(c, promo_outcome, outcome, &vote, handover.is_some(), actions);
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
    /// | 3 | committed primary, lease lapsed ≥ promotion wait, db up      | `PrimaryIsolated`  | lease enforced, no VIP  |
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
                self.promotion = Some((*epoch, Progress::Failed { reason: reason.clone() }))
            }
            Event::HandedOver { epoch } => self.stop_work = Some((*epoch, Progress::Done { at_ns: now })),
            Event::HandOverFailed { epoch, reason } => {
                self.stop_work = Some((*epoch, Progress::Failed { reason: reason.clone() }))
            }
            Event::Rejoined { epoch } => self.rejoin_work = Some((*epoch, Progress::Done { at_ns: now })),
            Event::RejoinFailed { epoch, reason } => {
                self.rejoin_work = Some((*epoch, Progress::Failed { reason: reason.clone() }))
            }
            Event::DbStopDone => self.fx.vip.db_stops = self.fx.vip.db_stops.saturating_sub(1),
            Event::RemoteChecked { node, reachable } => self.fx.remote_checked(*node, *reachable, now),
            Event::VipDone { assign, ok } => self.vip_done(*assign, *ok, out),
            Event::ResumeRequested { id, db } => self.resume_requested(*id, db, inp, out),
            Event::PeerTableFailed => self.fx.peer_table_failed(),
        }
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
