//! The replicated cluster state and the pure rules that change it.
//!
//! Every committed Raft entry carries one [`Command`]; every node applies it with [`apply`] to its
//! copy of [`ClusterState`] and gets the same [`Response`]. Nothing here does I/O or reads a clock:
//! times come in the command (`Promote::at_unix_ms`), so replicas stay identical.

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
    /// Nodes allowed to take part (`allow-node`, and every Raft member).
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
    /// replaces a primary needs a majority of the allowed nodes here.
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
}

impl ClusterState {
    /// Automatic failover as the cluster decided, or `config_default` if it never did.
    #[must_use]
    pub fn auto_failover_or(&self, config_default: bool) -> bool {
        self.auto_failover.unwrap_or(config_default)
    }

    /// Votes a `Promote` needs while there is a primary: a majority of the allowed nodes.
    #[must_use]
    pub fn votes_needed(&self) -> usize {
        self.allowed.len() / 2 + 1
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
    /// replacing a primary, only with votes from a majority ([`ClusterState::votes_needed`]).
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
    /// operator's allow/disallow decisions are forgotten (EFM loses its allowed-host list here).
    StopCluster {
        at_unix_ms: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Register { node, info } => write!(f, "Register {node} {info:?}"),
            Self::SetPrimary { node, expected_epoch } => write!(f, "SetPrimary {node} expecting epoch {expected_epoch}"),
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
}

/// What applying a command returns to its proposer.
pub type Response = Result<ApplyOk, Rejected>;

#[allow(clippy::unnecessary_wraps)] // the shape every arm returns
fn ok(state: &ClusterState, changed: bool) -> Response {
    Ok(ApplyOk {
        changed,
        epoch: state.epoch,
        primary: state.primary,
    })
}

fn check_epoch(state: &ClusterState, expected: u64) -> Result<(), Rejected> {
    if expected == state.epoch {
        Ok(())
    } else {
        Err(Rejected::StaleEpoch {
            expected,
            current: state.epoch,
        })
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
#[allow(clippy::too_many_lines)]
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Response {
    match cmd {
        Command::Register { node, info } => {
            if !state.allowed.contains(node) {
                return Err(Rejected::NotAllowed(*node));
            }
            let changed = state.nodes.insert(*node, *info) != Some(*info);
            ok(state, changed)
        }
        Command::SetPrimary {
            node,
            expected_epoch,
        } => {
            if let Some(p) = state.primary {
                return Err(Rejected::PrimaryExists(p));
            }
            check_epoch(state, *expected_epoch)?;
            match state.nodes.get(node) {
                _ if !state.allowed.contains(node) => return Err(Rejected::NotAllowed(*node)),
                None => return Err(Rejected::NotRegistered(*node)),
                Some(i) if i.kind == NodeKind::Witness => {
                    return Err(Rejected::NotPromotable(*node))
                }
                Some(_) => {}
            }
            state.primary = Some(*node);
            state.epoch += 1;
            state.votes.clear();
            ok(state, true)
        }
        Command::Promote {
            candidate,
            expected_epoch,
            lsn,
            timeline,
            at_unix_ms,
            reason,
        } => {
            check_epoch(state, *expected_epoch)?;
            if state.primary == Some(*candidate) {
                return Err(Rejected::AlreadyPrimary(*candidate));
            }
            promotable(state, *candidate)?;
            if state.primary.is_some() && state.votes.len() < state.votes_needed() {
                return Err(Rejected::NotEnoughVotes {
                    have: state.votes.len(),
                    need: state.votes_needed(),
                });
            }
            let handover = state.switchover.take().filter(|s| s.requested_epoch == state.epoch);
            state.previous_primary = state.primary;
            state.primary = Some(*candidate);
            state.epoch += 1;
            state.votes.clear();
            state.history.push(Promotion {
                epoch: state.epoch,
                node: *candidate,
                lsn: *lsn,
                timeline: *timeline,
                at_unix_ms: *at_unix_ms,
                reason: reason.clone(),
                switchover: handover.is_some_and(|h| h.demote),
                quiet: handover.is_some_and(|h| h.quiet),
            });
            if state.history.len() > HISTORY_LEN {
                let excess = state.history.len() - HISTORY_LEN;
                state.history.drain(..excess);
            }
            ok(state, true)
        }
        Command::Vote { voter, epoch } => {
            check_epoch(state, *epoch)?;
            if !state.allowed.contains(voter) {
                return Err(Rejected::NotAllowed(*voter));
            }
            let changed = state.votes.insert(*voter);
            ok(state, changed)
        }
        Command::AllowNode { node } => {
            state.disallowed.remove(node);
            let changed = state.allowed.insert(*node);
            ok(state, changed)
        }
        Command::DisallowNode { node } => {
            if state.primary == Some(*node) {
                return Err(Rejected::IsPrimary(*node));
            }
            let was_allowed = state.allowed.remove(node);
            state.disallowed.insert(*node);
            let had_info = state.nodes.remove(node).is_some();
            state.votes.remove(node);
            if state.switchover.is_some_and(|s| s.to == *node) {
                state.switchover = None;
            }
            ok(state, was_allowed || had_info)
        }
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
        Command::RequestSwitchover {
            to,
            expected_epoch,
            demote,
            quiet,
            source,
        } => {
            check_epoch(state, *expected_epoch)?;
            let Some(from) = state.primary else {
                return Err(Rejected::NoPrimary);
            };
            if let Some(s) = state.switchover {
                return Err(Rejected::SwitchoverPending(s.to));
            }
            if from == *to {
                return Err(Rejected::AlreadyPrimary(*to));
            }
            promotable(state, *to)?;
            state.switchover = Some(Switchover {
                from,
                to: *to,
                requested_epoch: state.epoch,
                demote: *demote,
                quiet: *quiet,
                source: *source,
            });
            ok(state, true)
        }
        Command::ClearSwitchover => {
            let changed = state.switchover.take().is_some();
            ok(state, changed)
        }
        Command::StopCluster { at_unix_ms } => {
            state.stopped_at_unix_ms = Some(*at_unix_ms);
            state.disallowed.clear();
            ok(state, true)
        }
    }
}

/// Applies a committed Raft membership: every member is implicitly allowed, except nodes that
/// were disallowed (a membership entry that still lists them is on the way to removing them).
pub fn apply_membership(state: &mut ClusterState, members: impl IntoIterator<Item = SocketAddr>) {
    for m in members {
        if !state.disallowed.contains(&m) {
            state.allowed.insert(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 7800))
    }

    const DB: NodeInfo = NodeInfo {
        kind: NodeKind::Database,
        priority: 1,
        promotable: true,
    };
    const WITNESS: NodeInfo = NodeInfo {
        kind: NodeKind::Witness,
        priority: 0,
        promotable: false,
    };

    /// Three database nodes and a witness, registered; primary 1 at epoch 1.
    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        apply_membership(&mut s, [a(1), a(2), a(3), a(4)]);
        for n in 1..=3 {
            apply(
                &mut s,
                &Command::Register {
                    node: a(n),
                    info: DB,
                },
            )
            .unwrap();
        }
        apply(
            &mut s,
            &Command::Register {
                node: a(4),
                info: WITNESS,
            },
        )
        .unwrap();
        apply(
            &mut s,
            &Command::SetPrimary {
                node: a(1),
                expected_epoch: 0,
            },
        )
        .unwrap();
        s
    }

    /// Votes from every voter but the primary against the current epoch.
    fn vote(s: &mut ClusterState) {
        let e = s.epoch;
        for n in 1..=4 {
            if s.primary != Some(a(n)) {
                apply(
                    s,
                    &Command::Vote {
                        voter: a(n),
                        epoch: e,
                    },
                )
                .unwrap();
            }
        }
    }

    fn promote(to: SocketAddr, expected_epoch: u64) -> Command {
        Command::Promote {
            candidate: to,
            expected_epoch,
            lsn: 0x100,
            timeline: 2,
            at_unix_ms: 5,
            reason: "test".into(),
        }
    }

    #[test]
    fn coordination_register_only_allowed() {
        let mut s = ClusterState::default();
        assert_eq!(
            apply(
                &mut s,
                &Command::Register {
                    node: a(1),
                    info: DB
                }
            ),
            Err(Rejected::NotAllowed(a(1)))
        );
        assert!(s.nodes.is_empty());
        apply(&mut s, &Command::AllowNode { node: a(1) }).unwrap();
        assert!(
            apply(
                &mut s,
                &Command::Register {
                    node: a(1),
                    info: DB
                }
            )
            .unwrap()
            .changed
        );
        assert!(
            !apply(
                &mut s,
                &Command::Register {
                    node: a(1),
                    info: DB
                }
            )
            .unwrap()
            .changed
        );
        assert_eq!(s.info(&a(1)), Some(&DB));
    }

    #[test]
    fn coordination_membership_allows() {
        let mut s = ClusterState::default();
        apply_membership(&mut s, [a(1), a(2)]);
        assert!(s.allowed.contains(&a(2)));
        apply(
            &mut s,
            &Command::Register {
                node: a(2),
                info: DB,
            },
        )
        .unwrap();
    }

    #[test]
    fn coordination_set_primary_rules() {
        let mut s = ClusterState::default();
        apply_membership(&mut s, [a(1), a(2), a(4)]);
        // Unregistered.
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPrimary {
                    node: a(1),
                    expected_epoch: 0
                }
            ),
            Err(Rejected::NotRegistered(a(1)))
        );
        apply(
            &mut s,
            &Command::Register {
                node: a(1),
                info: DB,
            },
        )
        .unwrap();
        apply(
            &mut s,
            &Command::Register {
                node: a(4),
                info: WITNESS,
            },
        )
        .unwrap();
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPrimary {
                    node: a(4),
                    expected_epoch: 0
                }
            ),
            Err(Rejected::NotPromotable(a(4)))
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPrimary {
                    node: a(1),
                    expected_epoch: 3
                }
            ),
            Err(Rejected::StaleEpoch {
                expected: 3,
                current: 0
            })
        );
        let r = apply(
            &mut s,
            &Command::SetPrimary {
                node: a(1),
                expected_epoch: 0,
            },
        )
        .unwrap();
        assert_eq!((r.epoch, r.primary), (1, Some(a(1))));
        // Only when there is none.
        apply(
            &mut s,
            &Command::Register {
                node: a(2),
                info: DB,
            },
        )
        .unwrap();
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPrimary {
                    node: a(2),
                    expected_epoch: 1
                }
            ),
            Err(Rejected::PrimaryExists(a(1)))
        );
        assert_eq!(s.epoch, 1);
        assert!(s.history.is_empty());
    }

    #[test]
    fn coordination_promote_bumps_epoch_and_records() {
        let mut s = cluster();
        vote(&mut s);
        let r = apply(&mut s, &promote(a(2), 1)).unwrap();
        assert_eq!((r.epoch, r.primary, r.changed), (2, Some(a(2)), true));
        assert_eq!(s.history.len(), 1);
        let h = &s.history[0];
        assert_eq!(
            (
                h.epoch,
                h.node,
                h.lsn,
                h.timeline,
                h.at_unix_ms,
                h.reason.as_str()
            ),
            (2, a(2), 0x100, 2, 5, "test")
        );
    }

    #[test]
    fn coordination_at_most_one_promotion_per_epoch() {
        let mut s = cluster();
        vote(&mut s);
        // Two candidates race for epoch 1: the first committed wins, the second is stale.
        apply(&mut s, &promote(a(2), 1)).unwrap();
        assert_eq!(
            apply(&mut s, &promote(a(3), 1)),
            Err(Rejected::StaleEpoch {
                expected: 1,
                current: 2
            })
        );
        // Even the same candidate again.
        assert_eq!(
            apply(&mut s, &promote(a(2), 1)),
            Err(Rejected::StaleEpoch {
                expected: 1,
                current: 2
            })
        );
        assert_eq!((s.primary, s.epoch, s.history.len()), (Some(a(2)), 2, 1));
    }

    #[test]
    fn coordination_promote_stale_and_future_epochs_rejected() {
        let mut s = cluster();
        assert_eq!(
            apply(&mut s, &promote(a(2), 0)),
            Err(Rejected::StaleEpoch {
                expected: 0,
                current: 1
            })
        );
        assert_eq!(
            apply(&mut s, &promote(a(2), 7)),
            Err(Rejected::StaleEpoch {
                expected: 7,
                current: 1
            })
        );
        assert_eq!((s.primary, s.epoch), (Some(a(1)), 1));
    }

    #[test]
    fn coordination_promote_candidate_checks() {
        let mut s = cluster();
        let before = s.clone();
        assert_eq!(
            apply(&mut s, &promote(a(1), 1)),
            Err(Rejected::AlreadyPrimary(a(1)))
        );
        assert_eq!(
            apply(&mut s, &promote(a(4), 1)),
            Err(Rejected::NotPromotable(a(4)))
        );
        assert_eq!(
            apply(&mut s, &promote(a(9), 1)),
            Err(Rejected::NotAllowed(a(9)))
        );
        apply(
            &mut s,
            &Command::SetPriority {
                node: a(2),
                priority: 0,
            },
        )
        .unwrap();
        assert_eq!(
            apply(&mut s, &promote(a(2), 1)),
            Err(Rejected::NotPromotable(a(2)))
        );
        apply(
            &mut s,
            &Command::Register {
                node: a(3),
                info: NodeInfo {
                    promotable: false,
                    ..DB
                },
            },
        )
        .unwrap();
        assert_eq!(
            apply(&mut s, &promote(a(3), 1)),
            Err(Rejected::NotPromotable(a(3)))
        );
        assert_eq!(
            (s.primary, s.epoch, &s.history),
            (before.primary, before.epoch, &before.history)
        );
        // Promotion from no primary (the old one was never recorded) is fine.
        let mut s = cluster();
        s.primary = None;
        apply(&mut s, &promote(a(2), 1)).unwrap();
    }

    #[test]
    fn coordination_history_keeps_last_50() {
        let mut s = cluster();
        for e in 1..=60u64 {
            vote(&mut s);
            let to = if e % 2 == 1 { a(2) } else { a(1) };
            apply(&mut s, &promote(to, e)).unwrap();
        }
        assert_eq!(s.epoch, 61);
        assert_eq!(s.history.len(), HISTORY_LEN);
        assert_eq!(s.history.first().unwrap().epoch, 12);
        assert_eq!(s.history.last().unwrap().epoch, 61);
    }

    #[test]
    fn coordination_promotion_needs_a_majority_of_votes() {
        let mut s = cluster();
        // 4 allowed nodes: 3 votes needed.
        assert_eq!(s.votes_needed(), 3);
        let not_enough = |have| Err(Rejected::NotEnoughVotes { have, need: 3 });
        assert_eq!(apply(&mut s, &promote(a(2), 1)), not_enough(0));
        apply(
            &mut s,
            &Command::Vote {
                voter: a(2),
                epoch: 1,
            },
        )
        .unwrap();
        let again = apply(
            &mut s,
            &Command::Vote {
                voter: a(2),
                epoch: 1,
            },
        );
        assert!(!again.unwrap().changed, "counted once");
        apply(
            &mut s,
            &Command::Vote {
                voter: a(4),
                epoch: 1,
            },
        )
        .unwrap();
        assert_eq!(apply(&mut s, &promote(a(2), 1)), not_enough(2));
        // Votes for another epoch or from strangers do not count.
        assert_eq!(
            apply(
                &mut s,
                &Command::Vote {
                    voter: a(3),
                    epoch: 0
                }
            ),
            Err(Rejected::StaleEpoch {
                expected: 0,
                current: 1
            })
        );
        let stranger = apply(
            &mut s,
            &Command::Vote {
                voter: a(9),
                epoch: 1,
            },
        );
        assert_eq!(stranger, Err(Rejected::NotAllowed(a(9))));
        apply(
            &mut s,
            &Command::Vote {
                voter: a(3),
                epoch: 1,
            },
        )
        .unwrap();
        apply(&mut s, &promote(a(2), 1)).unwrap();
        // The new epoch starts without votes.
        assert!(s.votes.is_empty());
        assert_eq!(apply(&mut s, &promote(a(3), 2)), not_enough(0));
    }

    #[test]
    fn coordination_allow_disallow() {
        let mut s = cluster();
        assert!(
            !apply(&mut s, &Command::AllowNode { node: a(2) })
                .unwrap()
                .changed
        );
        assert_eq!(
            apply(&mut s, &Command::DisallowNode { node: a(1) }),
            Err(Rejected::IsPrimary(a(1)))
        );
        assert!(
            apply(&mut s, &Command::DisallowNode { node: a(3) })
                .unwrap()
                .changed
        );
        assert!(!s.allowed.contains(&a(3)) && !s.nodes.contains_key(&a(3)));
        assert!(s.disallowed.contains(&a(3)));
        // The joint membership that removes it still lists it: it stays disallowed.
        apply_membership(&mut s, [a(1), a(2), a(3)]);
        assert!(!s.allowed.contains(&a(3)));
        assert!(
            !apply(&mut s, &Command::DisallowNode { node: a(3) })
                .unwrap()
                .changed
        );
        assert_eq!(
            apply(&mut s, &promote(a(3), 1)),
            Err(Rejected::NotAllowed(a(3)))
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::Register {
                    node: a(3),
                    info: DB
                }
            ),
            Err(Rejected::NotAllowed(a(3)))
        );
        // Allowing it again clears the removal.
        assert!(
            apply(&mut s, &Command::AllowNode { node: a(3) })
                .unwrap()
                .changed
        );
        assert!(s.disallowed.is_empty());
        apply(
            &mut s,
            &Command::Register {
                node: a(3),
                info: DB,
            },
        )
        .unwrap();
    }

    #[test]
    fn coordination_set_priority() {
        let mut s = cluster();
        assert!(
            apply(
                &mut s,
                &Command::SetPriority {
                    node: a(3),
                    priority: 9
                }
            )
            .unwrap()
            .changed
        );
        assert_eq!(s.nodes[&a(3)].priority, 9);
        assert!(
            !apply(
                &mut s,
                &Command::SetPriority {
                    node: a(3),
                    priority: 9
                }
            )
            .unwrap()
            .changed
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPriority {
                    node: a(8),
                    priority: 1
                }
            ),
            Err(Rejected::NotAllowed(a(8)))
        );
        apply(&mut s, &Command::AllowNode { node: a(8) }).unwrap();
        assert_eq!(
            apply(
                &mut s,
                &Command::SetPriority {
                    node: a(8),
                    priority: 1
                }
            ),
            Err(Rejected::NotRegistered(a(8)))
        );
    }

    #[test]
    fn coordination_flags() {
        let mut s = cluster();
        assert!(s.auto_failover_or(true));
        assert!(!s.auto_failover_or(false));
        assert!(
            apply(&mut s, &Command::SetAutoFailover(false))
                .unwrap()
                .changed
        );
        assert!(!s.auto_failover_or(true));
        assert!(
            !apply(&mut s, &Command::SetAutoFailover(false))
                .unwrap()
                .changed
        );
        assert!(apply(&mut s, &Command::SetPaused(true)).unwrap().changed);
        assert!(s.paused);
        assert!(!apply(&mut s, &Command::SetPaused(true)).unwrap().changed);
    }

    #[test]
    #[allow(clippy::too_many_lines)]
    fn coordination_switchover() {
        let mut s = ClusterState::default();
        apply_membership(&mut s, [a(1), a(2)]);
        apply(
            &mut s,
            &Command::Register {
                node: a(2),
                info: DB,
            },
        )
        .unwrap();
        assert_eq!(
            apply(
                &mut s,
                &Command::RequestSwitchover {
                    to: a(2),
                    expected_epoch: 0,
                    demote: true,
                    quiet: false,
                    source: None,
                }
            ),
            Err(Rejected::NoPrimary)
        );
        let mut s = cluster();
        assert_eq!(
            apply(
                &mut s,
                &Command::RequestSwitchover {
                    to: a(2),
                    expected_epoch: 0,
                    demote: true,
                    quiet: false,
                    source: None,
                }
            ),
            Err(Rejected::StaleEpoch {
                expected: 0,
                current: 1
            })
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::RequestSwitchover {
                    to: a(1),
                    expected_epoch: 1,
                    demote: true,
                    quiet: false,
                    source: None,
                }
            ),
            Err(Rejected::AlreadyPrimary(a(1)))
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::RequestSwitchover {
                    to: a(4),
                    expected_epoch: 1,
                    demote: true,
                    quiet: false,
                    source: None,
                }
            ),
            Err(Rejected::NotPromotable(a(4)))
        );
        apply(
            &mut s,
            &Command::RequestSwitchover {
                to: a(2),
                expected_epoch: 1,
                    demote: true,
                    quiet: false,
                    source: None,
            },
        )
        .unwrap();
        assert_eq!(
            s.switchover,
            Some(Switchover {
                from: a(1),
                to: a(2),
                requested_epoch: 1,
                demote: true,
                quiet: false,
                source: None,
            })
        );
        assert_eq!(
            apply(
                &mut s,
                &Command::RequestSwitchover {
                    to: a(3),
                    expected_epoch: 1,
                    demote: true,
                    quiet: false,
                    source: None,
                }
            ),
            Err(Rejected::SwitchoverPending(a(2)))
        );
        assert!(apply(&mut s, &Command::ClearSwitchover).unwrap().changed);
        assert!(!apply(&mut s, &Command::ClearSwitchover).unwrap().changed);
        // A promotion completes (clears) a pending switchover.
        apply(
            &mut s,
            &Command::RequestSwitchover {
                to: a(2),
                expected_epoch: 1,
                    demote: true,
                    quiet: false,
                    source: None,
            },
        )
        .unwrap();
        vote(&mut s);
        apply(&mut s, &promote(a(2), 1)).unwrap();
        assert_eq!(s.switchover, None);
        // Disallowing the target clears it too.
        apply(
            &mut s,
            &Command::RequestSwitchover {
                to: a(3),
                expected_epoch: 2,
                    demote: true,
                    quiet: false,
                    source: None,
            },
        )
        .unwrap();
        apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
        assert_eq!(s.switchover, None);
    }

    #[test]
    fn stop_cluster_is_recorded_and_forgets_disallowed_nodes() {
        let mut s = cluster();
        apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
        assert!(s.disallowed.contains(&a(3)));
        apply(&mut s, &Command::StopCluster { at_unix_ms: 1234 }).unwrap();
        assert_eq!(s.stopped_at_unix_ms, Some(1234));
        assert!(s.disallowed.is_empty());
        // The primary and the epoch are untouched: databases keep running as they are.
        assert_eq!((s.primary, s.epoch), (Some(a(1)), 1));
    }

    #[test]
    fn log_entries_from_before_the_switchover_fields_still_decode() {
        let old = r#"{"RequestSwitchover":{"to":"198.18.0.2:7800","expected_epoch":3}}"#;
        let cmd: Command = serde_json::from_str(old).unwrap();
        assert_eq!(cmd, Command::RequestSwitchover { to: a(2), expected_epoch: 3, demote: false, quiet: false, source: None });
    }

    #[test]
    fn coordination_state_roundtrips_json() {
        let mut s = cluster();
        vote(&mut s);
        apply(&mut s, &promote(a(2), 1)).unwrap();
        let j = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterState>(&j).unwrap(), s);
        let c = promote(a(3), 2);
        assert_eq!(
            serde_json::from_slice::<Command>(&serde_json::to_vec(&c).unwrap()).unwrap(),
            c
        );
    }
}
