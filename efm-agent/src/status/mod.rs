//! Cluster status: the report behind `efm cluster-status` and `efm cluster-status-json`.
//!
//! The agent fills a [`ClusterStatus`] and sends it over its admin socket. Serialized with
//! `serde_json`, that value *is* the `cluster-status-json` output; [`render_text`] turns it
//! into the `cluster-status` report and [`exit_code`] gives the command's exit status.
//!
//! # Compatibility with EFM
//!
//! Operators parse both outputs, so labels, field names and value spellings follow the EDB
//! Failover Manager guides (3.3, section 4.2.1 "Reviewing the Cluster Status Report" and the
//! `efm cluster-status-json` entry of section 5.3; 2.0, section 4.2.1 and its "Exit Codes"),
//! with the renames made by EFM 5.0: `lsn`/`lsninfo` instead of `xlog`/`xloginfo`, "Primary"
//! instead of "Master".
//!
//! JSON, top level, in EFM's order: `nodes` (object keyed by node address), `allowednodes`,
//! `membershipcoordinator`, `failoverpriority`, `minimumstandbys`, `missingnodes`, `messages`.
//! Per node: `type`, `agent`, `db`, `vip`, `vip_active`, `lsn`, `lsninfo` (the last two are
//! absent for a witness, as in EFM's example). `db` is `"N/A"` for a witness; EFM's Java
//! encoder writes it as `"N\/A"`, which is the same JSON string.
//!
//! Additions live in objects EFM does not have, so a parser that reads EFM's keys is not
//! affected: per node `heartbeat` ([`Heartbeat`]) and `promotion` ([`Promotion`]), and a
//! top-level `efm` object ([`Extension`]: our version, the cluster epoch, the cluster name and
//! what we know about missing nodes).
//!
//! # Agent status mapping
//!
//! EFM lists in `nodes` only the agents that are current cluster members, so its `agent`
//! column reads "UP"; since 5.0 a failed or disconnected member stays part of the cluster and
//! its address is reported in `missingnodes`. We do the same:
//!
//! | what the detector says                | `nodes` entry          | `missingnodes` | `efm.missing[addr].heartbeat.verdict` |
//! |---------------------------------------|------------------------|----------------|---------------------------------------|
//! | agent answering (this node or a peer) | yes, `"agent": "UP"`   | no             | —                                     |
//! | agent gone, kernel still answers      | no                     | yes            | `"agent dead, node alive"`            |
//! | agent and kernel silent               | no                     | yes            | `"node dead"`                         |
//!
//! The text report adds a "Missing nodes:" table for them (EFM has no such table).

mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::postgres::Lsn;

pub use render::render_text;

/// The value EFM shows in an LSN column when the database could not be queried.
pub const LSN_UNKNOWN: &str = "UNKNOWN";

/// The whole `cluster-status-json` document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Member nodes (agents that are running), keyed by node address.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// Addresses allowed to join (EFM's "Allowed node host list").
    #[serde(rename = "allowednodes", default)]
    pub allowed_nodes: Vec<String>,
    /// Address of the membership coordinator.
    #[serde(rename = "membershipcoordinator", default)]
    pub membership_coordinator: String,
    /// Standby addresses in promotion order (EFM's "Standby priority host list").
    #[serde(rename = "failoverpriority", default)]
    pub failover_priority: Vec<String>,
    /// The `minimum.standbys` property.
    #[serde(rename = "minimumstandbys", default)]
    pub minimum_standbys: u32,
    /// Addresses of cluster members whose agent is not running.
    #[serde(rename = "missingnodes", default)]
    pub missing_nodes: Vec<String>,
    /// Free-text messages for the operator.
    #[serde(default)]
    pub messages: Vec<String>,
    /// Our additions.
    #[serde(default)]
    pub efm: Extension,
}

/// One entry of `nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The agent's role.
    #[serde(rename = "type")]
    pub agent_type: AgentType,
    /// Agent status; always [`AgentState::Up`] for a member (see the module docs).
    pub agent: AgentState,
    /// Database status.
    pub db: DbState,
    /// The node's virtual IP address, `""` when none is configured.
    #[serde(default)]
    pub vip: String,
    /// Whether the virtual IP is currently assigned on this node.
    #[serde(default)]
    pub vip_active: bool,
    /// Current LSN on a primary, replayed LSN on a standby or idle node, [`LSN_UNKNOWN`] when the
    /// database could not be queried, `None` for a witness. Accepts EFM 4's `xlog` on input.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "xlog")]
    pub lsn: Option<String>,
    /// Text shown in the "Info" column (e.g. the query error); `None` for a witness.
    #[serde(rename = "lsninfo", default, skip_serializing_if = "Option::is_none", alias = "xloginfo")]
    pub lsn_info: Option<String>,
    /// Our addition: promotion data.
    #[serde(default)]
    pub promotion: Promotion,
    /// Our addition: what the kernel heartbeat says about this node.
    #[serde(default)]
    pub heartbeat: Heartbeat,
}

/// Agent role, spelled as EFM labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentType {
    /// Runs the primary database ("Master" before EFM 5, accepted on input).
    #[serde(alias = "Master")]
    Primary,
    /// Runs a streaming-replication standby.
    Standby,
    /// Dedicated witness, no database.
    Witness,
    /// Agent running but not monitoring its database (database down, or restarted without
    /// `efm resume`).
    Idle,
}

impl AgentType {
    /// The label EFM prints.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Primary => "Primary",
            Self::Standby => "Standby",
            Self::Witness => "Witness",
            Self::Idle => "Idle",
        }
    }
}

impl fmt::Display for AgentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Agent column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentState {
    /// `"UP"`.
    #[serde(rename = "UP")]
    Up,
    /// `"DOWN"`; not produced for `nodes` entries, accepted on input.
    #[serde(rename = "DOWN")]
    Down,
}

impl AgentState {
    /// The label EFM prints.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
        }
    }
}

/// DB column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DbState {
    /// `"UP"`.
    #[serde(rename = "UP")]
    Up,
    /// `"DOWN"`.
    #[serde(rename = "DOWN")]
    Down,
    /// `"UNKNOWN"`: the agent could not tell.
    #[serde(rename = "UNKNOWN")]
    Unknown,
    /// `"N/A"`: a witness has no database.
    #[serde(rename = "N/A")]
    NotApplicable,
}

impl DbState {
    /// The label EFM prints.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Unknown => "UNKNOWN",
            Self::NotApplicable => "N/A",
        }
    }
}

/// Per-node promotion data (our addition; EFM only publishes `failoverpriority`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// Last WAL location received by a standby or idle node (the "WAL Received LSN" column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<String>,
    /// 1-based position in the failover priority list, `None` when not listed.
    #[serde(default)]
    pub priority: Option<u32>,
    /// The node's `promotable` property.
    #[serde(default)]
    pub promotable: bool,
}

/// What the kernel-timed heartbeat says about a node (our addition).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Milliseconds since the last answer, `None` if never answered (or this node).
    #[serde(default)]
    pub age_ms: Option<u64>,
    /// Median round-trip time, microseconds.
    #[serde(default)]
    pub rtt_p50_us: Option<u64>,
    /// 99th percentile round-trip time, microseconds.
    #[serde(default)]
    pub rtt_p99_us: Option<u64>,
    /// The detector's conclusion.
    #[serde(default)]
    pub verdict: Verdict,
}

/// The detector's conclusion about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Verdict {
    /// Agent answers.
    #[serde(rename = "alive")]
    Alive,
    /// The agent is gone but the node's kernel still answers heartbeats.
    #[serde(rename = "agent dead, node alive")]
    AgentDeadNodeAlive,
    /// Neither agent nor kernel answers.
    #[serde(rename = "node dead")]
    NodeDead,
    /// The node producing this report.
    #[serde(rename = "self")]
    SelfNode,
    /// No data yet.
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
}

impl Verdict {
    /// The JSON spelling, also used in the text report.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::AgentDeadNodeAlive => "agent dead, node alive",
            Self::NodeDead => "node dead",
            Self::SelfNode => "self",
            Self::Unknown => "unknown",
        }
    }
}

/// Top-level `efm` object (our addition).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Extension {
    /// Version of the agent that produced the report.
    #[serde(default)]
    pub version: String,
    /// Cluster epoch (membership/promotion generation).
    #[serde(default)]
    pub epoch: u64,
    /// Cluster name (EFM's JSON does not carry it; the text report's first line does).
    #[serde(default)]
    pub cluster: String,
    /// What we know about each address of `missingnodes`.
    #[serde(default)]
    pub missing: BTreeMap<String, MissingNode>,
    /// Whether automatic failover is on (the committed cluster state, else `auto.failover`);
    /// `None` from an agent that does not report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_failover: Option<bool>,
}

/// A cluster member whose agent is not running.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MissingNode {
    /// Its role when last seen, if ever seen.
    #[serde(rename = "type", default)]
    pub last_type: Option<AgentType>,
    /// Heartbeat data; the verdict tells "agent dead, node alive" from "node dead".
    #[serde(default)]
    pub heartbeat: Heartbeat,
}

impl ClusterStatus {
    /// Records a member whose agent is not running: its address goes into `missingnodes`
    /// (once) and the details into `efm.missing`.
    pub fn add_missing(&mut self, address: &str, node: MissingNode) {
        if !self.missing_nodes.iter().any(|a| a == address) {
            self.missing_nodes.push(address.to_owned());
        }
        self.efm.missing.insert(address.to_owned(), node);
    }

    /// The `cluster-status-json` text.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ClusterStatus always serializes")
    }
}

/// A reason for a non-zero `cluster-status` exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Members whose agent is not running ("all agents are running" fails).
    MissingAgents(Vec<String>),
    /// An idle agent (the guide counts it with "database down or unknown").
    IdleAgent(String),
    /// A primary or standby database that is not UP.
    DatabaseNotUp {
        /// Node address.
        address: String,
        /// What the agent reports.
        db: DbState,
    },
    /// No primary agent.
    NoPrimary,
    /// More than one primary agent (our addition: sync cannot be judged).
    MultiplePrimaries(Vec<String>),
    /// No standby agent.
    NoStandby,
    /// A primary or standby whose LSN could not be obtained.
    LsnUnavailable(String),
    /// A standby that has not replayed up to the primary's LSN.
    NotInSync {
        /// Standby address.
        address: String,
        /// Its replayed LSN.
        replayed: String,
        /// The primary's LSN.
        primary: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAgents(addrs) => {
                write!(f, "Agent not running on member node(s): {}.", addrs.join(" "))
            }
            Self::IdleAgent(addr) => write!(f, "Agent on {addr} is idle."),
            Self::DatabaseNotUp { address, db } => {
                write!(f, "Database on {address} is {}.", db.label())
            }
            Self::NoPrimary => f.write_str("No primary database was found."),
            Self::MultiplePrimaries(addrs) => {
                write!(f, "More than one primary database was found: {}.", addrs.join(" "))
            }
            Self::NoStandby => f.write_str("No standby databases were found."),
            Self::LsnUnavailable(addr) => {
                write!(f, "Could not get the LSN of the database on {addr}.")
            }
            Self::NotInSync { address, replayed, primary } => {
                write!(f, "Standby {address} has replayed up to {replayed}, primary is at {primary}.")
            }
        }
    }
}

/// Everything that makes `cluster-status` exit non-zero, in report order.
#[must_use]
pub fn problems(status: &ClusterStatus) -> Vec<Problem> {
    let mut out = Vec::new();
    if !status.missing_nodes.is_empty() {
        out.push(Problem::MissingAgents(status.missing_nodes.clone()));
    }
    for (addr, node) in sorted_nodes(status) {
        match node.agent_type {
            AgentType::Idle => out.push(Problem::IdleAgent(addr.to_owned())),
            AgentType::Primary | AgentType::Standby if node.db != DbState::Up => {
                out.push(Problem::DatabaseNotUp { address: addr.to_owned(), db: node.db });
            }
            _ => {}
        }
    }
    out.extend(promotion_problems(status));
    out
}

/// The subset of [`problems`] that the "Promote Status" verdict reports.
fn promotion_problems(status: &ClusterStatus) -> Vec<Problem> {
    let mut out = Vec::new();
    let primaries: Vec<(&str, &NodeStatus)> =
        sorted_nodes(status).into_iter().filter(|(_, n)| n.agent_type == AgentType::Primary).collect();
    let standbys = promote_order_standbys(status);
    match primaries.as_slice() {
        [] => out.push(Problem::NoPrimary),
        [_] => {}
        many => out.push(Problem::MultiplePrimaries(many.iter().map(|(a, _)| (*a).to_owned()).collect())),
    }
    if standbys.is_empty() {
        out.push(Problem::NoStandby);
    }
    let primary_lsn = match primaries.as_slice() {
        [(addr, node)] => match node.lsn.as_deref() {
            Some(lsn) if parse_lsn(lsn).is_some() => Some(lsn),
            _ => {
                out.push(Problem::LsnUnavailable((*addr).to_owned()));
                None
            }
        },
        _ => None,
    };
    for (addr, node) in standbys {
        let replayed = node.lsn.as_deref().unwrap_or(LSN_UNKNOWN);
        if parse_lsn(replayed).is_none() {
            out.push(Problem::LsnUnavailable(addr.to_owned()));
        } else if let Some(primary) = primary_lsn {
            if !lsn_in_sync(primary, replayed) {
                out.push(Problem::NotInSync {
                    address: addr.to_owned(),
                    replayed: replayed.to_owned(),
                    primary: primary.to_owned(),
                });
            }
        }
    }
    out
}

/// Exit status of `efm cluster-status` / `cluster-status-json`.
///
/// EFM 2.0's guide (section 4.2.1, "Exit Codes") says 0 means every agent is running and the
/// primary and standby databases are running and in sync, and lists what makes it non-zero.
/// EFM uses 1 for all of them; so do we:
///
/// | condition                                                                 | code |
/// |---------------------------------------------------------------------------|------|
/// | all agents running, primary and standby databases UP and in sync          | 0    |
/// | a member's agent is not running (`missingnodes` not empty)                | 1    |
/// | a primary/standby database is DOWN or UNKNOWN, or an agent is Idle        | 1    |
/// | an LSN could not be obtained (includes "cannot decrypt the password")     | 1    |
/// | no Primary agent (also: more than one, our addition)                      | 1    |
/// | no Standby agent                                                          | 1    |
/// | a standby has not replayed up to the primary's LSN                        | 1    |
///
/// A witness's `N/A` database never counts. See [`problems`] for the reasons.
#[must_use]
pub fn exit_code(status: &ClusterStatus) -> i32 {
    i32::from(!problems(status).is_empty())
}

/// Whether a standby that has replayed up to `standby_replay` is in sync with a primary at
/// `primary`, both in the `X/Y` text form of `pg_lsn`. "In sync" means it has replayed at
/// least as far: the two are queried one after the other, so a standby may report a later
/// location than a busy primary did a moment before. Unparsable input is never in sync.
#[must_use]
pub fn lsn_in_sync(primary: &str, standby_replay: &str) -> bool {
    match (parse_lsn(primary), parse_lsn(standby_replay)) {
        (Some(p), Some(s)) => s >= p,
        _ => false,
    }
}

/// The `pg_lsn` text of a status field ([`Lsn`]'s form; surrounding whitespace ignored).
fn parse_lsn(text: &str) -> Option<Lsn> {
    text.trim().parse().ok()
}

/// Sort key putting addresses in numeric order (IPv4 before IPv6, names last).
fn address_key(addr: &str) -> (Option<IpAddr>, &str) {
    let ip = addr.parse::<IpAddr>().ok();
    (ip, addr)
}

fn compare_addresses(a: &str, b: &str) -> std::cmp::Ordering {
    let (ka, kb) = (address_key(a), address_key(b));
    match (ka.0, kb.0) {
        (Some(x), Some(y)) => x.cmp(&y).then(a.cmp(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Member nodes in address order.
fn sorted_nodes(status: &ClusterStatus) -> Vec<(&str, &NodeStatus)> {
    let mut v: Vec<(&str, &NodeStatus)> = status.nodes.iter().map(|(a, n)| (a.as_str(), n)).collect();
    v.sort_by(|x, y| compare_addresses(x.0, y.0));
    v
}

/// Standby members in promotion order: the failover priority list first, then the rest by
/// address.
fn promote_order_standbys(status: &ClusterStatus) -> Vec<(&str, &NodeStatus)> {
    let standbys: Vec<(&str, &NodeStatus)> =
        sorted_nodes(status).into_iter().filter(|(_, n)| n.agent_type == AgentType::Standby).collect();
    let rank = |addr: &str| status.failover_priority.iter().position(|p| p == addr).unwrap_or(usize::MAX);
    let mut ordered = standbys;
    // Stable sort keeps address order among unlisted standbys.
    ordered.sort_by_key(|(addr, _)| rank(addr));
    ordered
}
