//! The replicated cluster state and the pure rules that change it.
//!
//! Every committed Raft entry carries one [`Command`]; every node applies it with [`apply`] to its
//! copy of [`ClusterState`] and gets the same [`Response`]. Nothing here does I/O or reads a clock:
//! times come in the command (`Promote::at_unix_ms`), so replicas stay identical.
//!
//! # Quorum: who counts
//!
//! The **voters** are the allowed nodes that have joined: members of the Raft membership (voters
//! and learners, as last applied by [`apply_membership`]) that are still allowed
//! ([`ClusterState::voters`]). A member whose agent has failed stays a voter until `efm
//! disallow-node` removes it (EFM 5: failed nodes still count for quorum). An address that `efm
//! allow-node` allowed but that never joined does **not** count: it cannot endorse a primary
//! (its agent has no copy of the log, so it has no committed view to endorse from), so counting it
//! would only raise the majority — and cut a primary's lease off — before the node ever exists.
//!
//! The rule, and why it keeps at most one primary serving:
//! - The primary of epoch `e` enforces its lease with `k = quorum() − 1` endorsements
//!   ([`ClusterState::quorum`], the majority of the voters in *its* copy of the state), counted
//!   by its kernel from the peers in its table, which should be the voters
//!   ([`ClusterState::is_voter`]); and a node endorses only while its own copy shows it a voter.
//!   (Where the table and the endorsing node follow the allowed list instead, one allowed
//!   non-member may endorse — a joining node catching up on the log before its membership entry
//!   applies; joins are serialized — and the rule below still holds with one such endorser.)
//! - A `Vote` counts only from a voter; a `Promote` that replaces a primary needs votes from a
//!   majority of **every voter set in force since the epoch began**
//!   ([`ClusterState::epoch_voter_sets`], [`ClusterState::missing_votes`]). The primary's copy may
//!   lag behind the log (it may be partitioned from the leader), so its `k` may come from any of
//!   those sets; a majority of that set, less the primary, intersects the voters' majority, and
//!   every voter in it stopped endorsing before it voted. Counting only the newest set would not
//!   do: a primary that missed two joins (3 → 5 voters) keeps a lease from one endorsement
//!   while three new-majority votes exist without it.
//! - A new epoch (`SetPrimary`, `Promote`) starts the list again from the current voters: the
//!   new primary serves only after applying the entry that made it primary.
//! - `DisallowNode` removes the node from every recorded set (the operator's decision shrinks the
//!   quorum at once, as in EFM). The kernel's peer table of a primary that has not applied the
//!   removal still counts that node's endorsements; as before, the operator must not disallow a
//!   node that is still running next to a primary cut off from the rest.
//!
//! # `efm stop-cluster`
//!
//! `StopCluster` records when the cluster was stopped (every agent running then exits) and
//! forgets the operator's allow/disallow decisions, as EFM 3.3 loses its allowed-host list: the
//! allowed list goes back to the Raft membership — the members the `.nodes` files list, kept in
//! step by the agents — and addresses allowed with `efm allow-node` that never joined must be
//! allowed again. The epoch, the primary and the history stay: the epoch is a fencing token that
//! must never go back, also across a stopped cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

/// How many promotions [`ClusterState::history`] keeps.
pub const HISTORY_LEN: usize = 50;

/// Database node or witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    Database,
    Witness,
}

/// What a node announces about itself (`Register`) and what the operator changes
/// (`SetPriority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub kind: NodeKind,
    /// Failover priority; 0 = never promote.
    pub priority: u32,
    pub promotable: bool,
}

impl NodeInfo {
    /// A database node that may be promoted (`promotable`, priority > 0).
    #[must_use]
    pub fn can_be_promoted(&self) -> bool {
        self.kind == NodeKind::Database && self.promotable && self.priority > 0
    }
}

/// A switchover requested by the operator and not yet carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// The epoch the switchover was requested in; the promotion that completes it must expect it.
    pub requested_epoch: u64,
    /// `efm promote -switchover`: the old primary stops cleanly before the new one promotes and
    /// then rejoins as its standby. Without it (`efm promote`), the old primary stays fenced.
    #[serde(default)]
    pub demote: bool,
    /// `-quiet`: no notifications for this hand-over.
    #[serde(default)]
    pub quiet: bool,
    /// `-sourcenode`: the standby whose replication settings the old primary copies.
    #[serde(default)]
    pub source: Option<SocketAddr>,
}

/// One committed promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The epoch the new primary holds (after the bump).
    pub epoch: u64,
    pub node: SocketAddr,
    pub lsn: u64,
    pub timeline: u32,
    pub at_unix_ms: u64,
    pub reason: String,
    /// An operator's `-switchover` hand-over (not a failover).
    #[serde(default)]
    pub switchover: bool,
    /// `-quiet`: no notifications about it.
    #[serde(default)]
    pub quiet: bool,
}

/// The state every agent agrees on. Small; snapshots carry it whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Nodes allowed to take part (`allow-node`, and every Raft member). Only those that joined
    /// count for the quorum ([`ClusterState::voters`]).
    pub allowed: BTreeSet<SocketAddr>,
    /// Nodes removed by `DisallowNode` (until allowed again): the Raft leader removes them from
    /// the membership, and membership entries do not re-allow them.
    pub disallowed: BTreeSet<SocketAddr>,
    /// What each allowed node announced (`Register`) or the operator set.
    pub nodes: BTreeMap<SocketAddr, NodeInfo>,
    /// The node currently entitled to be primary.
    pub primary: Option<SocketAddr>,
    /// The fencing token: bumped by every promotion. The primary's heartbeats carry it.
    pub epoch: u64,
    /// Voters that reported, for the current epoch, that they stopped endorsing its primary for
    /// longer than the promotion wait (`Vote`). Emptied when the epoch changes. A `Promote` that
    /// replaces a primary needs a majority of every voter set of the epoch here
    /// ([`ClusterState::missing_votes`]).
    pub votes: BTreeSet<SocketAddr>,
    /// Cluster-wide `auto.failover`; `None` until someone sets it: each agent then uses its
    /// configured value (see [`ClusterState::auto_failover_or`]).
    pub auto_failover: Option<bool>,
    /// Failover monitoring paused by the operator.
    pub paused: bool,
    pub switchover: Option<Switchover>,
    /// The last [`HISTORY_LEN`] promotions, oldest first.
    pub history: Vec<Promotion>,
    /// `efm stop-cluster`: when (Unix ms, the proposer's clock) the operator stopped the
    /// cluster. Every agent running at that time exits when it applies the entry.
    #[serde(default)]
    pub stopped_at_unix_ms: Option<u64>,
    /// The primary the last promotion replaced (`%f` of the remote promotion scripts).
    #[serde(default)]
    pub previous_primary: Option<SocketAddr>,
    /// Every node of the Raft membership last applied (voters and learners); `None` in a state
    /// written before efm tracked it (then every allowed node counts as a voter, as it did).
    #[serde(default)]
    pub members: Option<BTreeSet<SocketAddr>>,
    /// Every voter set in force since the current epoch began, oldest first (see the module
    /// documentation, "Quorum"). Empty in a state written before efm tracked it: then only the
    /// current voters count.
    #[serde(default)]
    pub epoch_voter_sets: Vec<BTreeSet<SocketAddr>>,
}

impl ClusterState {
    /// Automatic failover as the cluster decided, or `config_default` if it never did.
    #[must_use]
    pub fn auto_failover_or(&self, config_default: bool) -> bool {
        self.auto_failover.unwrap_or(config_default)
    }

    /// The voters: allowed nodes that joined (are in the Raft membership), failed ones included.
    #[must_use]
    pub fn voters(&self) -> BTreeSet<SocketAddr> {
        match &self.members {
            Some(m) => self.allowed.intersection(m).copied().collect(),
            None => self.allowed.clone(),
        }
    }

    /// Whether `node` is a voter ([`ClusterState::voters`]).
    #[must_use]
    pub fn is_voter(&self, node: &SocketAddr) -> bool {
        self.allowed.contains(node) && self.members.as_ref().is_none_or(|m| m.contains(node))
    }

    /// A majority of the current voters. The primary's lease needs this many nodes, itself
    /// included (`k = quorum() − 1` endorsements).
    #[must_use]
    pub fn quorum(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    /// Votes a `Promote` needs from the current voters (a majority of them); see also
    /// [`ClusterState::missing_votes`], which checks every voter set of the epoch.
    #[must_use]
    pub fn votes_needed(&self) -> usize {
        self.quorum()
    }

    /// The voter sets a `Promote` over a primary must each have a majority of votes from.
    fn voter_sets(&self) -> Vec<BTreeSet<SocketAddr>> {
        let mut sets = self.epoch_voter_sets.clone();
        let now = self.voters();
        if sets.last() != Some(&now) {
            sets.push(now);
        }
        sets
    }

    /// `None` when the votes against the current epoch are a majority of every voter set in force
    /// since the epoch began (a `Promote` over the primary may apply); otherwise `(have, need)`
    /// for the first set they fall short of.
    #[must_use]
    pub fn missing_votes(&self) -> Option<(usize, usize)> {
        self.voter_sets().iter().find_map(|set| {
            let have = set.iter().filter(|v| self.votes.contains(v)).count();
            let need = set.len() / 2 + 1;
            (have < need).then_some((have, need))
        })
    }

    /// Whether a `Promote` replacing the primary would get enough votes now.
    #[must_use]
    pub fn promotion_votes_met(&self) -> bool {
        self.missing_votes().is_none()
    }

    /// Records the current voter set if it changed (called after every change).
    fn note_voters(&mut self) {
        let now = self.voters();
        if self.epoch_voter_sets.last() != Some(&now) {
            self.epoch_voter_sets.push(now);
        }
    }

    /// Registered info of an allowed node.
    #[must_use]
    pub fn info(&self, node: &SocketAddr) -> Option<&NodeInfo> {
        if self.allowed.contains(node) {
            self.nodes.get(node)
        } else {
            None
        }
    }
}

/// A Raft log entry's payload: one change to [`ClusterState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node announces itself; only allowed nodes.
    Register {
        node: SocketAddr,
        info: NodeInfo,
    },
    /// Records an existing primary when the cluster has none yet: sets it and bumps the epoch to
    /// `expected_epoch + 1`, only if there is no primary and the epoch is `expected_epoch`.
    SetPrimary {
        node: SocketAddr,
        expected_epoch: u64,
    },
    /// A voter reports that it stopped endorsing the primary of `epoch` longer than the promotion
    /// wait ago (its lease has lapsed as far as this voter counts).
    Vote {
        voter: SocketAddr,
        epoch: u64,
    },
    /// Makes `candidate` primary in epoch `expected_epoch + 1`. At most one per epoch; when
    /// replacing a primary, only with votes from a majority of every voter set of the epoch
    /// ([`ClusterState::missing_votes`]).
    Promote {
        candidate: SocketAddr,
        expected_epoch: u64,
        lsn: u64,
        timeline: u32,
        at_unix_ms: u64,
        reason: String,
    },
    AllowNode {
        node: SocketAddr,
    },
    /// Removes a node from the allowed list (the coordinator also removes it from the Raft
    /// membership).
    DisallowNode {
        node: SocketAddr,
    },
    SetPriority {
        node: SocketAddr,
        priority: u32,
    },
    SetAutoFailover(bool),
    SetPaused(bool),
    /// Operator switchover from the current primary to `to`, valid while the epoch is
    /// `expected_epoch`.
    RequestSwitchover {
        to: SocketAddr,
        expected_epoch: u64,
        #[serde(default)]
        demote: bool,
        #[serde(default)]
        quiet: bool,
        #[serde(default)]
        source: Option<SocketAddr>,
    },
    ClearSwitchover,
    /// `efm stop-cluster`: every running agent exits; databases are left as they are. The
    /// operator's allow/disallow decisions are forgotten (EFM loses its allowed-host list here):
    /// the allowed list goes back to the Raft membership.
    StopCluster {
        at_unix_ms: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Register { node, info } => write!(f, "Register {node} {info:?}"),
            Self::SetPrimary { node, expected_epoch } => {
                write!(f, "SetPrimary {node} expecting epoch {expected_epoch}")
            }
            Self::Promote { candidate, expected_epoch, lsn, timeline, reason, .. } => write!(
                f,
                "Promote {candidate} expecting epoch {expected_epoch} (LSN {lsn:X}, timeline {timeline}, {reason})"
            ),
            Self::Vote { voter, epoch } => write!(f, "Vote by {voter} against epoch {epoch}"),
            Self::AllowNode { node } => write!(f, "AllowNode {node}"),
            Self::DisallowNode { node } => write!(f, "DisallowNode {node}"),
            Self::SetPriority { node, priority } => write!(f, "SetPriority {node} {priority}"),
            Self::SetAutoFailover(b) => write!(f, "SetAutoFailover {b}"),
            Self::SetPaused(b) => write!(f, "SetPaused {b}"),
            Self::RequestSwitchover { to, expected_epoch, demote, .. } => write!(
                f,
                "RequestSwitchover to {to} expecting epoch {expected_epoch}{}",
                if *demote { " (old primary rejoins as standby)" } else { "" }
            ),
            Self::ClearSwitchover => write!(f, "ClearSwitchover"),
            Self::StopCluster { at_unix_ms } => write!(f, "StopCluster at {at_unix_ms}"),
        }
    }
}

/// A command that was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOk {
    /// Whether the state changed (idempotent commands report `false` when it already held).
    pub changed: bool,
    /// Epoch and primary after applying.
    pub epoch: u64,
    pub primary: Option<SocketAddr>,
}

/// Why a committed command did not change the state. Every replica rejects identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    #[error("{0} is not an allowed node (allow it with `efm allow-node` first)")]
    NotAllowed(SocketAddr),
    #[error("{0} has not registered")]
    NotRegistered(SocketAddr),
    #[error("stale epoch: expected {expected}, the cluster is at epoch {current}")]
    StaleEpoch { expected: u64, current: u64 },
    #[error("the cluster already has primary {0}")]
    PrimaryExists(SocketAddr),
    #[error("{0} is already the primary")]
    AlreadyPrimary(SocketAddr),
    #[error("{0} cannot be promoted (witness, promotable=false or priority 0)")]
    NotPromotable(SocketAddr),
    #[error("the cluster has no primary")]
    NoPrimary,
    #[error("a switchover to {0} is already pending")]
    SwitchoverPending(SocketAddr),
    #[error("not enough votes to replace the primary: {have} of {need} needed")]
    NotEnoughVotes { have: usize, need: usize },
    #[error("{0} is the current primary; promote another node first")]
    IsPrimary(SocketAddr),
    #[error("{0} is allowed but has not joined the cluster (its agent has not started)")]
    NotJoined(SocketAddr),
}

/// What applying a command returns to its proposer.
pub type Response = Result<ApplyOk, Rejected>;

#[allow(clippy::unnecessary_wraps)] // the shape every arm returns
fn ok(state: &ClusterState, changed: bool) -> Response {
    Ok(ApplyOk { changed, epoch: state.epoch, primary: state.primary })
}

fn check_epoch(state: &ClusterState, expected: u64) -> Result<(), Rejected> {
    if expected == state.epoch {
        Ok(())
    } else {
        Err(Rejected::StaleEpoch { expected, current: state.epoch })
    }
}

fn promotable(state: &ClusterState, node: SocketAddr) -> Result<(), Rejected> {
    if !state.allowed.contains(&node) {
        return Err(Rejected::NotAllowed(node));
    }
    match state.nodes.get(&node) {
        None => Err(Rejected::NotRegistered(node)),
        Some(i) if !i.can_be_promoted() => Err(Rejected::NotPromotable(node)),
        Some(_) => Ok(()),
    }
}

/// Applies one command. Pure and deterministic.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Response {
    let epoch = state.epoch;
    let r = apply_command(state, cmd);
    if state.epoch != epoch {
        // A new epoch: its primary applied this entry before it serves, so only voter sets
        // from here on can be behind its lease.
        state.epoch_voter_sets.clear();
    }
    state.note_voters();
    r
}

fn apply_command(state: &mut ClusterState, cmd: &Command) -> Response {
    match cmd {
        Command::Register { node, info } => {
            if !state.allowed.contains(node) {
                return Err(Rejected::NotAllowed(*node));
            }
            let changed = state.nodes.insert(*node, *info) != Some(*info);
            ok(state, changed)
        }
        Command::SetPrimary { node, expected_epoch } => {
            if let Some(p) = state.primary {
                return Err(Rejected::PrimaryExists(p));
            }
            check_epoch(state, *expected_epoch)?;
            match state.nodes.get(node) {
                _ if !state.allowed.contains(node) => return Err(Rejected::NotAllowed(*node)),
                None => return Err(Rejected::NotRegistered(*node)),
                Some(i) if i.kind == NodeKind::Witness => return Err(Rejected::NotPromotable(*node)),
                Some(_) => {}
            }
            state.primary = Some(*node);
            state.epoch += 1;
            state.votes.clear();
            ok(state, true)
        }
        Command::Promote { candidate, expected_epoch, lsn, timeline, at_unix_ms, reason } => {
            apply_promote(state, *candidate, *expected_epoch, (*lsn, *timeline, *at_unix_ms), reason)
        }
        Command::Vote { voter, epoch } => {
            check_epoch(state, *epoch)?;
            if !state.allowed.contains(voter) {
                return Err(Rejected::NotAllowed(*voter));
            }
            if !state.is_voter(voter) {
                return Err(Rejected::NotJoined(*voter));
            }
            let changed = state.votes.insert(*voter);
            ok(state, changed)
        }
        Command::AllowNode { node } => {
            state.disallowed.remove(node);
            let changed = state.allowed.insert(*node);
            ok(state, changed)
        }
        Command::DisallowNode { node } => apply_disallow(state, *node),
        Command::SetPriority { node, priority } => {
            if !state.allowed.contains(node) {
                return Err(Rejected::NotAllowed(*node));
            }
            let Some(info) = state.nodes.get_mut(node) else {
                return Err(Rejected::NotRegistered(*node));
            };
            let changed = info.priority != *priority;
            info.priority = *priority;
            ok(state, changed)
        }
        Command::SetAutoFailover(b) => {
            let changed = state.auto_failover != Some(*b);
            state.auto_failover = Some(*b);
            ok(state, changed)
        }
        Command::SetPaused(b) => {
            let changed = state.paused != *b;
            state.paused = *b;
            ok(state, changed)
        }
        Command::RequestSwitchover { to, expected_epoch, demote, quiet, source } => {
            apply_switchover(state, *to, *expected_epoch, (*demote, *quiet, *source))
        }
        Command::ClearSwitchover => {
            let changed = state.switchover.take().is_some();
            ok(state, changed)
        }
        Command::StopCluster { at_unix_ms } => {
            state.stopped_at_unix_ms = Some(*at_unix_ms);
            state.disallowed.clear();
            // EFM loses its allowed-host list: what stays is the membership (the `.nodes`
            // members), so an address allowed but never joined must be allowed again.
            if let Some(members) = &state.members {
                state.allowed.retain(|a| members.contains(a));
                let allowed = &state.allowed;
                state.nodes.retain(|a, _| allowed.contains(a));
            }
            ok(state, true)
        }
    }
}

/// `Promote`: at most one per epoch, and over a primary only with a majority of votes from every
/// voter set of the epoch.
fn apply_promote(
    state: &mut ClusterState,
    candidate: SocketAddr,
    expected_epoch: u64,
    at: (u64, u32, u64),
    reason: &str,
) -> Response {
    let (lsn, timeline, at_unix_ms) = at;
    check_epoch(state, expected_epoch)?;
    if state.primary == Some(candidate) {
        return Err(Rejected::AlreadyPrimary(candidate));
    }
    promotable(state, candidate)?;
    if state.primary.is_some() {
        if let Some((have, need)) = state.missing_votes() {
            return Err(Rejected::NotEnoughVotes { have, need });
        }
    }
    let handover = state.switchover.take().filter(|s| s.requested_epoch == state.epoch);
    state.previous_primary = state.primary;
    state.primary = Some(candidate);
    state.epoch += 1;
    state.votes.clear();
    state.history.push(Promotion {
        epoch: state.epoch,
        node: candidate,
        lsn,
        timeline,
        at_unix_ms,
        reason: reason.to_owned(),
        switchover: handover.is_some_and(|h| h.demote),
        quiet: handover.is_some_and(|h| h.quiet),
    });
    if state.history.len() > HISTORY_LEN {
        let excess = state.history.len() - HISTORY_LEN;
        state.history.drain(..excess);
    }
    ok(state, true)
}

/// `DisallowNode`: out of the allowed list, the registrations, the votes and every voter set.
fn apply_disallow(state: &mut ClusterState, node: SocketAddr) -> Response {
    if state.primary == Some(node) {
        return Err(Rejected::IsPrimary(node));
    }
    let was_allowed = state.allowed.remove(&node);
    state.disallowed.insert(node);
    let had_info = state.nodes.remove(&node).is_some();
    state.votes.remove(&node);
    for set in &mut state.epoch_voter_sets {
        set.remove(&node);
    }
    state.epoch_voter_sets.dedup();
    if state.switchover.is_some_and(|s| s.to == node) {
        state.switchover = None;
    }
    ok(state, was_allowed || had_info)
}

/// `RequestSwitchover`: an operator's hand-over of the current epoch to a promotable standby.
fn apply_switchover(
    state: &mut ClusterState,
    to: SocketAddr,
    expected_epoch: u64,
    how: (bool, bool, Option<SocketAddr>),
) -> Response {
    let (demote, quiet, source) = how;
    check_epoch(state, expected_epoch)?;
    let Some(from) = state.primary else {
        return Err(Rejected::NoPrimary);
    };
    if let Some(s) = state.switchover {
        return Err(Rejected::SwitchoverPending(s.to));
    }
    if from == to {
        return Err(Rejected::AlreadyPrimary(to));
    }
    promotable(state, to)?;
    state.switchover = Some(Switchover { from, to, requested_epoch: state.epoch, demote, quiet, source });
    ok(state, true)
}

/// Applies a committed Raft membership (every node of it, voters and learners): they are the
/// members ([`ClusterState::members`]), and every member is implicitly allowed, except nodes that
/// were disallowed (a membership entry that still lists them is on the way to removing them).
pub fn apply_membership(state: &mut ClusterState, members: impl IntoIterator<Item = SocketAddr>) {
    let members: BTreeSet<SocketAddr> = members.into_iter().collect();
    for m in &members {
        if !state.disallowed.contains(m) {
            state.allowed.insert(*m);
        }
    }
    state.members = Some(members);
    state.note_voters();
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
