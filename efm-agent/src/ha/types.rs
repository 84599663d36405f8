//! The engine's vocabulary: its settings, inputs, events, desired state, actions and outcomes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::notify::Event as Notice;
use efm_common::maps::{FenceState, LeaseState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_MEMBERS_EXEMPT};

use super::{duration_ns, Suspension};

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
    /// `remote.timeout`: how long another agent's check of a database may take. A primary
    /// whose local checks fail waits this long (plus [`EngineConfig::confirm_wait`]'s slack)
    /// for another agent to reach its database before it gives its epoch up.
    pub remote_timeout: Duration,
    /// `check.vip.before.promotion` with a VIP and without `vip.takeover.allowed`: the leader
    /// probes the VIP before it proposes a promotion and refuses while another host answers.
    pub vip_guard: bool,
    /// `ping.server.ip`: a candidate that cannot reach it declines (EFM's orphaned standby).
    pub ping_server: Option<IpAddr>,
    /// `node.timeout`: an absent agent's kernel counts as heard while its last PONG is at most
    /// this old (the detector's "node alive"; a voter stalled for a moment must not drop it).
    pub node_timeout: Duration,
    /// `agent.absence.timeout`: how long voters keep endorsing a primary whose agent is
    /// absent while its kernel serves and its database answers their checks (zero: as long as
    /// that lasts, as EFM).
    pub agent_absence_timeout: Duration,
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

    /// How long a primary whose local checks fail waits for another agent to report that it
    /// reached its database: `remote.timeout`, plus one second (the voters start a check at most
    /// once a second) and four heartbeats (the request and the answer travel in PINGs).
    #[must_use]
    pub fn confirm_wait(&self) -> Duration {
        self.remote_timeout + Duration::from_secs(1) + self.heartbeat_interval * 4
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
            remote_timeout: Duration::from_secs(2),
            vip_guard: false,
            ping_server: None,
            node_timeout: Duration::from_millis(500),
            agent_absence_timeout: Duration::ZERO,
        }
    }
}

/// The latest WAL position report of a node (a peer's PING, or this node's own sample).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PositionReport {
    /// When it arrived (this node's clock; for this node: the step that read it).
    pub(super) arrival_ns: u64,
    pub(super) lsn: u64,
    /// The position in the report before this one.
    pub(super) prev_lsn: Option<u64>,
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

/// Role bits a peer announces: the agent's own role type (`node::Role::from_bits`).
pub use crate::node::Role as PeerRole;

/// One peer as the detector and its PINGs describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "independent facts from the detector and the peer's PING flags")]
pub struct PeerView {
    pub addr: SocketAddr,
    /// The detector's verdict is "alive" (agent heard within `node.timeout`).
    pub alive: bool,
    /// Time since its agent's last PING.
    pub agent_age: Option<Duration>,
    pub role: PeerRole,
    pub epoch: u64,
    pub db_up: bool,
    /// It is a primary whose local check of its database fails: it asks for remote checks
    /// (`FLAG_DB_CHECK`).
    pub db_check: bool,
    /// What its latest remote check of the committed primary's database found
    /// (`FLAG_PRIMARY_DB_REACHED` / `_UNREACHABLE`; `None`: no recent check).
    pub primary_db: Option<bool>,
    /// Its PINGs say its node is fenced or its lease lapsed.
    pub fenced: bool,
    pub lsn: u64,
    /// Time since its kernel's last PONG (answering our PINGs; `None`: never heard): its node
    /// is up whatever its agent does.
    pub node_age: Option<Duration>,
    /// What its kernel said in that PONG (from its `EFM_FENCE` and lease at that moment).
    pub kernel: KernelPong,
}

/// A peer's kernel as its last PONG describes it: the role and epoch its agent last wrote into
/// `EFM_FENCE`, and whether it served then (not fenced, not epoch-fenced, lease not lapsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPong {
    pub role: PeerRole,
    pub epoch: u64,
    /// `FLAG_FENCED` or `FLAG_LEASE_LAPSED`: its kernel refused clients at that moment.
    pub fenced: bool,
}

impl Default for KernelPong {
    fn default() -> Self {
        Self { role: PeerRole::Idle, epoch: 0, fenced: true }
    }
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
    /// The database is down only in the sense that the local checks fail (a connection limit,
    /// `pg_hba.conf`, a slow answer): its postmaster has not been seen to exit. A committed
    /// primary then asks the other agents to check its database before anything fails over
    /// (`confirm.rs`). False for a postmaster that exited (pidfd) and failed its final check:
    /// down for certain, at once.
    pub local_check_only: bool,
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
    /// [`Action::ProbeVip`]: the MAC of the host that answered for the VIP, if any (a probe
    /// that could not be made counts as unanswered: it is logged, and the kernel's lease still
    /// keeps a stale holder from serving).
    VipProbed {
        holder: Option<String>,
    },
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
    /// Nodes (this one included) whose last check of `ping.server.ip` failed: this node's own
    /// check, and peers whose PINGs carry `FLAG_PING_SERVER_FAILED`.
    pub ping_failed: &'a BTreeSet<SocketAddr>,
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
    /// Ask the network whether another host answers for the VIP (`check.vip.before.promotion`,
    /// before a promotion is proposed); reports [`Event::VipProbed`].
    ProbeVip,
    /// The local standby's database failed: run `script.db.failure`.
    StandbyDbFailed,
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
    /// The committed primary's local checks fail; it serves on and asks the other agents to
    /// check its database (`confirm.rs`).
    PrimaryCheckingDb {
        epoch: u64,
    },
    /// The committed primary's local checks fail but `reached_by` reaches its database: no
    /// failover; its agent is idle (EFM's "Primary cannot ping local database").
    PrimaryIdle {
        epoch: u64,
        reached_by: SocketAddr,
    },
    PrimaryIsolated {
        epoch: u64,
    },
    PrimarySuspect {
        primary: SocketAddr,
        reason: &'static str,
    },
    /// The primary's agent is absent, its kernel serves the epoch and its database answers
    /// from here: endorsed on that evidence (no failover).
    PrimaryAgentAbsent {
        primary: SocketAddr,
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
    /// A promotion is due; the leader is asking whether another host answers for the VIP.
    CheckingVip {
        epoch: u64,
    },
    /// A promotion is due but refused while another host answers for the VIP (EFM's
    /// "VIP appears to still be assigned"); asked again every second.
    PromotionRefused {
        epoch: u64,
        reason: String,
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
            Self::PrimaryCheckingDb { epoch } => write!(
                f,
                "primary for epoch {epoch}: {}; the other agents are checking it",
                super::confirm::OWN_CHECKS_FAIL
            ),
            Self::PrimaryIdle { epoch, reached_by } => write!(
                f,
                "primary for epoch {epoch}, idle: {} but {reached_by} can (no failover; efm resume)",
                super::confirm::OWN_CHECKS_FAIL
            ),
            Self::PrimaryIsolated { epoch } => {
                write!(f, "isolated primary of epoch {epoch}: no endorsements, clients cut off by the lease")
            }
            Self::PrimarySuspect { primary, reason } => write!(f, "primary {primary} suspect: {reason}"),
            Self::PrimaryAgentAbsent { primary } => write!(
                f,
                "agent of primary {primary} absent; its kernel serves and its database answers: endorsing, no failover"
            ),
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
            Self::CheckingVip { epoch } => {
                write!(f, "promotion due for epoch {epoch}: checking that no other host answers for the VIP")
            }
            Self::PromotionRefused { epoch, reason } => write!(f, "promotion for epoch {epoch} refused: {reason}"),
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
            Self::PrimaryCheckingDb { .. } => "primary-checking-db",
            Self::PrimaryIdle { .. } => "primary-idle",
            Self::PrimaryIsolated { .. } => "primary-isolated",
            Self::PrimarySuspect { .. } => "primary-suspect",
            Self::PrimaryAgentAbsent { .. } => "primary-agent-absent",
            Self::Voted { .. } => "voted",
            Self::PromotionProposed { .. } => "promotion-proposed",
            Self::NoCandidate { .. } => "no-candidate",
            Self::ComparingPositions { .. } => "comparing-positions",
            Self::ManualFailoverRequired { .. } => "manual-failover-required",
            Self::CheckingVip { .. } => "checking-vip",
            Self::PromotionRefused { .. } => "promotion-refused",
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
pub(super) enum Progress {
    Running,
    Done { at_ns: u64 },
    Failed { reason: String },
}
