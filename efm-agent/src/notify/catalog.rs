//! The catalog of notifications: every event of EFM's notification tables (2.0 guide §7, 3.3
//! guide §7) that applies to efm, with EFM's subjects ("master" written "primary", as EFM 4
//! does) and its severities. License events do not apply; `recovery.conf` is
//! `standby.signal/recovery.conf` (from version 12 on, `standby.signal`).
//!
//! Each method is one table: [`Event::severity`], [`Event::subject`], [`Event::description`]
//! and [`Event::details`]. Addresses are given as text (`10.0.1.11` or `10.0.1.11:7800`) so
//! callers can pass whatever form they hold.

use super::Severity;
use crate::scripts::{Hook, ScriptError, ScriptOutcome};

/// What a script did, for the notifications that report it ("Exit Value:", "Results:").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptResult {
    /// The script's command line, as configured.
    pub script: String,
    /// The exit code, or what happened instead (`killed by signal 9`, `timed out ...`,
    /// `not run`).
    pub exit: String,
    /// Standard output then standard error, or why the script could not run.
    pub output: String,
}

impl ScriptResult {
    /// From a script that ran.
    #[must_use]
    pub fn from_outcome(script: &str, outcome: &ScriptOutcome) -> Self {
        let exit = outcome.exit.filter(|_| !outcome.timed_out).map_or_else(|| outcome.status_text(), |c| c.to_string());
        Self { script: script.to_owned(), exit, output: outcome.output_text() }
    }

    /// From a script that could not be started.
    #[must_use]
    pub fn from_error(script: &str, error: &ScriptError) -> Self {
        Self { script: script.to_owned(), exit: "not run".to_owned(), output: error.to_string() }
    }

    fn report(&self) -> String {
        format!("Exit Value: {}\nResults: {}", self.exit, self.output)
    }
}

/// The role a node had, where an event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Standby,
}

impl NodeRole {
    fn word(self) -> &'static str {
        match self {
            NodeRole::Primary => "Primary",
            NodeRole::Standby => "Standby",
        }
    }
}

/// A notification. `node` fields name another node; this node's address is given to
/// [`Event::subject`] and to the body header by the [`super::Notifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    // ---- INFO ----
    /// `script.fence` ran and succeeded.
    FencingScriptExecuted { result: ScriptResult },
    /// `script.post.promotion` ran and succeeded.
    PostPromotionScriptExecuted { result: ScriptResult },
    /// `script.db.failure` ran and succeeded.
    DbFailureScriptExecuted { result: ScriptResult },
    /// `script.primary.isolated` ran and succeeded.
    PrimaryIsolationScriptExecuted { result: ScriptResult },
    /// `script.remote.pre.promotion` ran and succeeded.
    RemotePrePromotionScriptExecuted { result: ScriptResult },
    /// `script.remote.post.promotion` ran and succeeded.
    RemotePostPromotionScriptExecuted { result: ScriptResult },
    /// `script.resumed` ran and succeeded.
    ResumedScriptExecuted { result: ScriptResult },
    /// `script.load.balancer.attach` ran and succeeded.
    LoadBalancerAttachScriptExecuted { result: ScriptResult },
    /// `script.load.balancer.detach` ran and succeeded.
    LoadBalancerDetachScriptExecuted { result: ScriptResult },
    /// This agent started as a witness.
    WitnessAgentRunning,
    /// This agent started on the primary and monitors its database.
    PrimaryAgentRunning,
    /// This agent started on a standby and monitors its database.
    StandbyAgentRunning,
    /// This agent started without a database role (idle).
    IdleAgentRunning,
    /// The VIP is being assigned to this node.
    AssigningVip { vip: String },
    /// The VIP is being released from this node.
    ReleasingVip { vip: String },
    /// This witness agent stops.
    WitnessAgentExited,
    /// This primary agent stops.
    PrimaryAgentExited,
    /// The primary's agent left the cluster in an orderly way.
    PrimaryLeft { node: String },
    /// This standby agent stops.
    StandbyAgentExited,
    /// This agent stops while it was promoting its database.
    AgentExitedDuringPromotion,
    /// This idle agent stops.
    AgentExited,
    /// The agent stops before its start-up completed.
    AgentExitedEarly { reason: String },
    /// The agent watches for its failed database to come back (`auto.resume.*`).
    AutoResumeCheckStarted { period_secs: u64 },
    /// The agent monitors its database again (`efm resume`, auto resume).
    Resumed,
    /// A switchover (`efm promote -switchover`) has completed.
    SwitchoverCompleted { old_primary: String, new_primary: String },

    // ---- WARNING ----
    /// The VIP is held by a node that is not the primary; it is released.
    VipOnNonPrimary { vip: String },
    /// No standby agent is left in the cluster.
    NoStandbyAgent,
    /// A standby's agent left while its database still runs.
    StandbyAgentFailed { node: String },
    /// A standby's database failed (also unreachable from the other nodes).
    StandbyDatabaseFailed { node: String },
    /// A standby's agent reports its database down, but others can reach it.
    StandbyCannotReachDatabase { node: String },
    /// Fewer than three member nodes remain (`efm disallow-node`; failed members still count).
    BelowThreeNodes { nodes: usize },
    /// This node sees only a minority of the cluster and will not take part in a failover.
    SubsetDisconnected { visible: Vec<String> },
    /// The promotion of a standby has started.
    PromotionStarted { candidate: String },
    /// The witness left the cluster.
    WitnessFailure { node: String },
    /// An idle agent left the cluster.
    IdleAgentFailure { node: String },
    /// This node appears isolated from the network.
    NodesIsolated { visible: Vec<String> },
    /// This node sees the cluster again.
    NoLongerIsolated,
    /// A promotion was refused: the primary database still answers.
    PromotionRefusedPrimaryRunning { primary: String },
    /// A promotion was refused: whether the primary database still runs is unknown.
    PromotionRefusedPrimaryUnverified { primary: String },
    /// A promotion was refused: the VIP is still answered by another host.
    PromotionRefusedVipAssigned { vip: String, candidate: String },
    /// A promotion was refused: `ping.server.ip` did not answer.
    PromotionRefusedOrphaned { server: String },
    /// The primary database is gone and no standby can take over.
    FailoverNotOccurred { reason: String },
    /// A failover situation with `auto.failover=false`.
    ManualFailoverRequired { primary: String, reason: String },
    /// A failover has completed.
    FailoverCompleted { old_primary: Option<String>, new_primary: String },
    /// The cluster lock file disappeared.
    LockFileRemoved { path: String },
    /// `standby.signal` (or `recovery.conf`) exists on the primary.
    RecoveryConfFound { path: String },
    /// A promotion was asked while another one is in progress.
    PromotionNotOccurred { in_progress: String },
    /// `auto.reconfigure=false`: this standby still follows the old primary.
    StandbyNotReconfigured { new_primary: String },
    /// WAL replay could not be resumed on the standby being promoted.
    ReplayResumeFailed { error: String },
    /// The standbys left are only `minimum.standbys`: no failover is possible.
    NoStandbysAvailable { minimum: u64 },
    /// `script.custom.monitor` did not finish within `custom.monitor.timeout`.
    CustomMonitorTimeout { result: ScriptResult },
    /// `script.custom.monitor` failed with `custom.monitor.safe.mode=true`.
    CustomMonitorSafeModeFailure { result: ScriptResult },

    // ---- SEVERE ----
    /// The agent cannot connect to a database.
    DbConnectFailed { node: String, reason: String },
    /// The primary's agent cannot reach its own database, other nodes can.
    PrimaryCannotPingLocalDb,
    /// A cluster member cannot be reached or resolved.
    CommunicationError { node: String, error: String },
    /// `script.fence` failed: the promotion was abandoned.
    FencingScriptError { result: ScriptResult },
    /// `script.post.promotion` failed.
    PostPromotionScriptFailed { result: ScriptResult },
    /// `script.db.failure` failed.
    DbFailureScriptError { result: ScriptResult },
    /// `script.primary.isolated` failed.
    PrimaryIsolationScriptFailed { result: ScriptResult },
    /// `script.remote.pre.promotion` failed.
    RemotePrePromotionScriptFailed { result: ScriptResult },
    /// `script.remote.post.promotion` failed.
    RemotePostPromotionScriptFailed { result: ScriptResult },
    /// `script.resumed` failed.
    ResumedScriptFailed { result: ScriptResult },
    /// `script.load.balancer.attach` failed.
    LoadBalancerAttachScriptFailed { result: ScriptResult },
    /// `script.load.balancer.detach` failed.
    LoadBalancerDetachScriptFailed { result: ScriptResult },
    /// Promoting the local standby failed.
    PromotionFailed { error: String },
    /// The old primary could not be given `standby.signal`/`recovery.conf`.
    DemotionFailed { node: String, error: String },
    /// Anything else that went wrong.
    UnexpectedError { error: String },
    /// The primary is cut off from the majority and fenced.
    PrimaryFencedOff { node: String },
    /// The primary's lease lapsed: it lost the majority, its clients are cut off, and it
    /// gives up the VIP.
    IsolatedPrimary { node: String },
    /// The VIP could not be assigned to this node.
    VipAssignFailed { vip: String, error: String },
    /// A database (primary or standby) failed.
    DatabaseFailure { role: NodeRole, node: String },
    /// The agent timed out reaching its database, then reached it again.
    AgentTimingOut,
    /// The agent could not resume monitoring after restarting its database.
    ResumeTimedOut,
    /// This agent's view of the cluster disagrees with the coordination log.
    InternalStateMismatch { detail: String },
    /// A database is in the wrong recovery state for its role.
    DatabaseWrongState { node: String, expected: String, found: String },
    /// This node cannot connect to a database it has to check (the primary's, which another
    /// agent reaches).
    DatabaseConnectionFailure { error: String },
    /// `script.custom.monitor` failed on a standby: the agent stops monitoring its database.
    StandbyCustomMonitorFailure { result: ScriptResult },
    /// `script.custom.monitor` failed on the primary: handled as a database failure.
    PrimaryCustomMonitorFailure { result: ScriptResult },

    /// Anything not in the catalog. The subject is used as given.
    Custom { severity: Severity, subject: String, detail: String },
}

impl Event {
    /// The "Executed ..." (success) or "... failed" event for a hook's run, for the hooks whose
    /// result EFM reports this way. `None` for `script.custom.monitor` (its events depend on the
    /// node's role and `custom.monitor.safe.mode`) and `script.notification` (logged only).
    #[must_use]
    pub fn for_script(hook: Hook, command_line: &str, run: &Result<ScriptOutcome, ScriptError>) -> Option<Event> {
        let (ok, result) = match run {
            Ok(o) => (o.success(), ScriptResult::from_outcome(command_line, o)),
            Err(e) => (false, ScriptResult::from_error(command_line, e)),
        };
        let event = match (hook, ok) {
            (Hook::Fence, true) => Event::FencingScriptExecuted { result },
            (Hook::Fence, false) => Event::FencingScriptError { result },
            (Hook::PostPromotion, true) => Event::PostPromotionScriptExecuted { result },
            (Hook::PostPromotion, false) => Event::PostPromotionScriptFailed { result },
            (Hook::DbFailure, true) => Event::DbFailureScriptExecuted { result },
            (Hook::DbFailure, false) => Event::DbFailureScriptError { result },
            (Hook::PrimaryIsolated, true) => Event::PrimaryIsolationScriptExecuted { result },
            (Hook::PrimaryIsolated, false) => Event::PrimaryIsolationScriptFailed { result },
            (Hook::Resumed, true) => Event::ResumedScriptExecuted { result },
            (Hook::Resumed, false) => Event::ResumedScriptFailed { result },
            (Hook::RemotePrePromotion, true) => Event::RemotePrePromotionScriptExecuted { result },
            (Hook::RemotePrePromotion, false) => Event::RemotePrePromotionScriptFailed { result },
            (Hook::RemotePostPromotion, true) => Event::RemotePostPromotionScriptExecuted { result },
            (Hook::RemotePostPromotion, false) => Event::RemotePostPromotionScriptFailed { result },
            (Hook::LoadBalancerAttach, true) => Event::LoadBalancerAttachScriptExecuted { result },
            (Hook::LoadBalancerAttach, false) => Event::LoadBalancerAttachScriptFailed { result },
            (Hook::LoadBalancerDetach, true) => Event::LoadBalancerDetachScriptExecuted { result },
            (Hook::LoadBalancerDetach, false) => Event::LoadBalancerDetachScriptFailed { result },
            (Hook::CustomMonitor | Hook::Notification, _) => return None,
        };
        Some(event)
    }
}

fn list(addrs: &[String]) -> String {
    if addrs.is_empty() {
        "(none)".to_owned()
    } else {
        addrs.join(", ")
    }
}

impl Event {
    /// EFM's severity of the event.
    #[must_use]
    pub fn severity(&self) -> Severity {
        use Event as E;
        match self {
            E::FencingScriptExecuted { .. }
            | E::PostPromotionScriptExecuted { .. }
            | E::DbFailureScriptExecuted { .. }
            | E::PrimaryIsolationScriptExecuted { .. }
            | E::RemotePrePromotionScriptExecuted { .. }
            | E::RemotePostPromotionScriptExecuted { .. }
            | E::ResumedScriptExecuted { .. }
            | E::LoadBalancerAttachScriptExecuted { .. }
            | E::LoadBalancerDetachScriptExecuted { .. }
            | E::WitnessAgentRunning
            | E::PrimaryAgentRunning
            | E::StandbyAgentRunning
            | E::IdleAgentRunning
            | E::AssigningVip { .. }
            | E::ReleasingVip { .. }
            | E::WitnessAgentExited
            | E::PrimaryAgentExited
            | E::PrimaryLeft { .. }
            | E::StandbyAgentExited
            | E::AgentExitedDuringPromotion
            | E::AgentExited
            | E::AgentExitedEarly { .. }
            | E::AutoResumeCheckStarted { .. }
            | E::Resumed
            | E::SwitchoverCompleted { .. } => Severity::Info,
            E::VipOnNonPrimary { .. }
            | E::NoStandbyAgent
            | E::StandbyAgentFailed { .. }
            | E::StandbyDatabaseFailed { .. }
            | E::StandbyCannotReachDatabase { .. }
            | E::BelowThreeNodes { .. }
            | E::SubsetDisconnected { .. }
            | E::PromotionStarted { .. }
            | E::WitnessFailure { .. }
            | E::IdleAgentFailure { .. }
            | E::NodesIsolated { .. }
            | E::NoLongerIsolated
            | E::PromotionRefusedPrimaryRunning { .. }
            | E::PromotionRefusedPrimaryUnverified { .. }
            | E::PromotionRefusedVipAssigned { .. }
            | E::PromotionRefusedOrphaned { .. }
            | E::FailoverNotOccurred { .. }
            | E::ManualFailoverRequired { .. }
            | E::FailoverCompleted { .. }
            | E::LockFileRemoved { .. }
            | E::RecoveryConfFound { .. }
            | E::PromotionNotOccurred { .. }
            | E::StandbyNotReconfigured { .. }
            | E::ReplayResumeFailed { .. }
            | E::NoStandbysAvailable { .. }
            | E::CustomMonitorTimeout { .. }
            | E::CustomMonitorSafeModeFailure { .. } => Severity::Warning,
            E::DbConnectFailed { .. }
            | E::PrimaryCannotPingLocalDb
            | E::CommunicationError { .. }
            | E::FencingScriptError { .. }
            | E::PostPromotionScriptFailed { .. }
            | E::DbFailureScriptError { .. }
            | E::PrimaryIsolationScriptFailed { .. }
            | E::RemotePrePromotionScriptFailed { .. }
            | E::RemotePostPromotionScriptFailed { .. }
            | E::ResumedScriptFailed { .. }
            | E::LoadBalancerAttachScriptFailed { .. }
            | E::LoadBalancerDetachScriptFailed { .. }
            | E::PromotionFailed { .. }
            | E::DemotionFailed { .. }
            | E::UnexpectedError { .. }
            | E::PrimaryFencedOff { .. }
            | E::IsolatedPrimary { .. }
            | E::VipAssignFailed { .. }
            | E::DatabaseFailure { .. }
            | E::AgentTimingOut
            | E::ResumeTimedOut
            | E::InternalStateMismatch { .. }
            | E::DatabaseWrongState { .. }
            | E::DatabaseConnectionFailure { .. }
            | E::StandbyCustomMonitorFailure { .. }
            | E::PrimaryCustomMonitorFailure { .. } => Severity::Severe,
            E::Custom { severity, .. } => *severity,
        }
    }

    /// EFM's subject (without `notification.text.prefix`); `node` is this node's address.
    #[must_use]
    pub fn subject(&self, cluster: &str, node: &str) -> String {
        use Event as E;
        let c = cluster;
        match self {
            E::FencingScriptExecuted { .. } => "Executed fencing script".into(),
            E::PostPromotionScriptExecuted { .. } => "Executed post-promotion script".into(),
            E::DbFailureScriptExecuted { .. } => "Executed post-database failure script".into(),
            E::PrimaryIsolationScriptExecuted { .. } => "Executed primary isolation script".into(),
            E::RemotePrePromotionScriptExecuted { .. } => "Executed remote pre-promotion script".into(),
            E::RemotePostPromotionScriptExecuted { .. } => "Executed remote post-promotion script".into(),
            E::ResumedScriptExecuted { .. } => "Executed agent resumed script".into(),
            E::LoadBalancerAttachScriptExecuted { .. } => "Executed load balancer attach script".into(),
            E::LoadBalancerDetachScriptExecuted { .. } => "Executed load balancer detach script".into(),
            E::WitnessAgentRunning => format!("Witness agent running on {node} for cluster {c}"),
            E::PrimaryAgentRunning => format!("Primary agent running on {node} for cluster {c}"),
            E::StandbyAgentRunning => format!("Standby agent running on {node} for cluster {c}"),
            E::IdleAgentRunning => format!("Idle agent running on {node} for cluster {c}"),
            E::AssigningVip { .. } => format!("Assigning VIP to node {node}"),
            E::ReleasingVip { .. } => format!("Releasing VIP from node {node}"),
            E::WitnessAgentExited => format!("Witness agent exited on {node} for cluster {c}"),
            E::PrimaryAgentExited => format!("Primary agent exited on {node} for cluster {c}"),
            E::PrimaryLeft { .. } => format!("Cluster {c} notified that primary node has left"),
            E::StandbyAgentExited => format!("Standby agent exited on {node} for cluster {c}"),
            E::AgentExitedDuringPromotion => {
                format!("Agent exited during promotion on {node} for cluster {c}")
            }
            E::AgentExited => format!("Agent exited on {node} for cluster {c}"),
            E::AgentExitedEarly { .. } => format!("Agent exited for cluster {c}"),
            E::AutoResumeCheckStarted { .. } => format!("Starting auto resume check for cluster {c}"),
            E::Resumed => format!("Agent resumed monitoring on {node} for cluster {c}"),
            E::SwitchoverCompleted { .. } => format!("Switchover has completed on cluster {c}"),
            E::VipOnNonPrimary { .. } => "Virtual IP address assigned to non-primary node".into(),
            E::NoStandbyAgent => format!("No standby agent in cluster for cluster {c}"),
            E::StandbyAgentFailed { .. } => format!("Standby agent failed for cluster {c}"),
            E::StandbyDatabaseFailed { .. } => format!("Standby database failed for cluster {c}"),
            E::StandbyCannotReachDatabase { .. } => {
                format!("Standby agent cannot reach database for cluster {c}")
            }
            E::BelowThreeNodes { .. } => format!("Cluster {c} has dropped below three nodes"),
            E::SubsetDisconnected { .. } => format!("Subset of cluster {c} disconnected from primary"),
            E::PromotionStarted { .. } => format!("Promotion has started on cluster {c}."),
            E::WitnessFailure { .. } => format!("Witness failure for cluster {c}"),
            E::IdleAgentFailure { .. } => format!("Idle agent failure for cluster {c}."),
            E::NodesIsolated { .. } => {
                format!("One or more nodes isolated from network for cluster {c}")
            }
            E::NoLongerIsolated => format!("Node no longer isolated from network for cluster {c}."),
            E::PromotionRefusedPrimaryRunning { .. } => {
                "Standby agent tried to promote, but primary DB is still running".into()
            }
            E::PromotionRefusedPrimaryUnverified { .. } => {
                "Standby agent tried to promote, but could not verify primary DB".into()
            }
            E::PromotionRefusedVipAssigned { .. } => {
                "Standby agent tried to promote, but VIP appears to still be assigned".into()
            }
            E::PromotionRefusedOrphaned { .. } => "Standby agent tried to promote, but appears to be orphaned".into(),
            E::FailoverNotOccurred { .. } => "Failover has not occurred".into(),
            E::ManualFailoverRequired { .. } => {
                format!("Potential manual failover required on cluster {c}.")
            }
            E::FailoverCompleted { .. } => format!("Failover has completed on cluster {c}"),
            E::LockFileRemoved { .. } => format!("Lock file for cluster {c} has been removed"),
            E::RecoveryConfFound { .. } => {
                format!("standby.signal/recovery.conf file for cluster {c} has been found")
            }
            E::PromotionNotOccurred { .. } => format!("Promotion has not occurred for cluster {c}"),
            E::StandbyNotReconfigured { .. } => {
                format!("Standby not reconfigured after failover in cluster {c}")
            }
            E::ReplayResumeFailed { .. } => format!("Could not resume replay for cluster {c}"),
            E::NoStandbysAvailable { .. } => {
                format!("No standbys available for promotion in cluster {c}")
            }
            E::CustomMonitorTimeout { .. } => format!("Custom monitor timeout for cluster {c}"),
            E::CustomMonitorSafeModeFailure { .. } => {
                format!("Custom monitor 'safe mode' failure for cluster {c}")
            }
            E::DbConnectFailed { node: other, .. } => format!("Unable to connect to DB on {other}"),
            E::PrimaryCannotPingLocalDb => {
                format!("Primary cannot ping local database for cluster {c}")
            }
            E::CommunicationError { .. } => format!("Communication error for cluster {c}"),
            E::FencingScriptError { .. } => "Fencing script error".into(),
            E::PostPromotionScriptFailed { .. } => "Post-promotion script failed".into(),
            E::DbFailureScriptError { .. } => "Post-database failure script error".into(),
            E::PrimaryIsolationScriptFailed { .. } => "Primary isolation script failed".into(),
            E::RemotePrePromotionScriptFailed { .. } => "Remote pre-promotion script failed".into(),
            E::RemotePostPromotionScriptFailed { .. } => "Remote post-promotion script failed".into(),
            E::ResumedScriptFailed { .. } => "Agent resumed script failed".into(),
            E::LoadBalancerAttachScriptFailed { .. } => "Load balancer attach script failed".into(),
            E::LoadBalancerDetachScriptFailed { .. } => "Load balancer detach script failed".into(),
            E::PromotionFailed { .. } => "Could not promote standby".into(),
            E::DemotionFailed { node: other, .. } => {
                format!("Error creating standby.signal/recovery.conf file on {other} for cluster {c}")
            }
            E::UnexpectedError { .. } => format!("An unexpected error has occurred for cluster {c}"),
            E::PrimaryFencedOff { .. } => format!("Primary database being fenced off for cluster {c}"),
            E::IsolatedPrimary { .. } => format!("Isolated primary database for cluster {c}"),
            E::VipAssignFailed { .. } => format!("Could not assign VIP to node {node}"),
            E::DatabaseFailure { role, .. } => {
                format!("{} database failure for cluster {c}", role.word())
            }
            E::AgentTimingOut => format!("Agent is timing out for cluster {c}"),
            E::ResumeTimedOut => format!("Resume timed out for cluster {c}"),
            E::InternalStateMismatch { .. } => format!("Internal state mismatch for cluster {c}"),
            E::DatabaseWrongState { node: other, .. } => format!("Database in wrong state on {other}"),
            E::DatabaseConnectionFailure { .. } => {
                format!("Database connection failure for cluster {c}")
            }
            E::StandbyCustomMonitorFailure { .. } => {
                format!("Standby custom monitor failure for cluster {c}")
            }
            E::PrimaryCustomMonitorFailure { .. } => {
                format!("Primary custom monitor failure for cluster {c}")
            }
            E::Custom { subject, .. } => subject.clone(),
        }
    }

    /// What happened and what it means, in a sentence or a few; `node` is this node's
    /// address. Script output is in [`Event::details`].
    #[must_use]
    #[expect(clippy::too_many_lines, reason = "one arm per event: the catalog is a table")]
    pub fn description(&self, cluster: &str, node: &str) -> String {
        use Event as E;
        let c = cluster;
        let ran = |what: &str, r: &ScriptResult| format!("The {what} script {} succeeded.", r.script);
        let failed = |what: &str, r: &ScriptResult| format!("The {what} script {} did not succeed.", r.script);
        match self {
            E::FencingScriptExecuted { result } => ran("fencing", result),
            E::PostPromotionScriptExecuted { result } => ran("post-promotion", result),
            E::DbFailureScriptExecuted { result } => ran("post-database failure", result),
            E::PrimaryIsolationScriptExecuted { result } => ran("primary isolation", result),
            E::RemotePrePromotionScriptExecuted { result } => ran("remote pre-promotion", result),
            E::RemotePostPromotionScriptExecuted { result } => ran("remote post-promotion", result),
            E::ResumedScriptExecuted { result } => ran("agent resumed", result),
            E::LoadBalancerAttachScriptExecuted { result } => ran("load balancer attach", result),
            E::LoadBalancerDetachScriptExecuted { result } => ran("load balancer detach", result),
            E::WitnessAgentRunning => "The witness agent has started; it votes but has no database.".into(),
            E::PrimaryAgentRunning => "The agent has started on the primary and monitors its database.".into(),
            E::StandbyAgentRunning => "The agent has started on a standby and monitors its database.".into(),
            E::IdleAgentRunning => "The agent has started but does not monitor a database yet (idle).".into(),
            E::AssigningVip { vip } => format!("The virtual IP address {vip} is being assigned to node {node}."),
            E::ReleasingVip { vip } => format!("The virtual IP address {vip} is being released from node {node}."),
            E::WitnessAgentExited => "The witness agent has stopped.".into(),
            E::PrimaryAgentExited | E::StandbyAgentExited | E::AgentExitedDuringPromotion => {
                "The agent has stopped: the database of this node is no longer monitored.".into()
            }
            E::PrimaryLeft { node: other } => format!(
                "The agent of primary {other} has left the cluster. While its node answers heartbeats and \
                 the other agents reach its database, no failover happens; a failed database or an \
                 unreachable node still fails over. Start the agent again."
            ),
            E::AgentExited => "The agent has stopped (it was idle).".into(),
            E::AgentExitedEarly { reason } => format!(
                "The agent stopped on an error, in most cases before its start-up completed; this \
                 node is not monitored. Error: {reason}"
            ),
            E::AutoResumeCheckStarted { period_secs } => format!(
                "The local database has failed. The agent checks every {period_secs} s whether it is back \
                 and then resumes monitoring it. Stop the agent if the database will not be started again."
            ),
            E::Resumed => "The agent monitors the local database again.".into(),
            E::SwitchoverCompleted { old_primary, new_primary } => format!(
                "The switchover has completed: {new_primary} is the primary, {old_primary} follows it as a standby."
            ),
            E::VipOnNonPrimary { vip } => format!(
                "The virtual IP address {vip} is held by a node that is not the primary; it is being released. \
                 Check that the primary holds it."
            ),
            E::NoStandbyAgent => format!("No standby agent is left in cluster {c}: a failover is not possible."),
            E::StandbyAgentFailed { node: other } => {
                format!("The agent of standby {other} has left the cluster, but its database still runs.")
            }
            E::StandbyDatabaseFailed { node: other } => {
                format!("The database of standby {other} has failed; no other node can reach it either.")
            }
            E::StandbyCannotReachDatabase { node: other } => {
                format!("The agent of standby {other} reports its database down, but the other nodes can reach it.")
            }
            E::BelowThreeNodes { nodes } => format!(
                "Cluster {c} is down to {nodes} member node(s) (a member whose agent has failed still \
                 counts, as for the quorum). Failover protection needs at least three (a primary, a \
                 standby and another standby or a witness): with fewer, one failure leaves no majority \
                 to decide a failover. Add a standby or a witness."
            ),
            E::SubsetDisconnected { visible } => format!(
                "This node sees only a minority of cluster {c} and will not take part in a failover. \
                 Visible nodes: {}.",
                list(visible)
            ),
            E::PromotionStarted { candidate } => {
                format!("Standby {candidate} is being promoted in cluster {c}.")
            }
            E::WitnessFailure { node: other } => format!("The witness {other} has left the cluster."),
            E::IdleAgentFailure { node: other } => format!("The idle agent on {other} has left the cluster."),
            E::NodesIsolated { visible } => format!(
                "This node appears to be cut off from the network. Other members it still sees: {}.",
                list(visible)
            ),
            E::NoLongerIsolated => "This node reaches the rest of the cluster again.".into(),
            E::PromotionRefusedPrimaryRunning { primary } => format!(
                "This standby did not promote itself: the primary database on {primary} still answers \
                 (usually its agent has stopped). Failover has NOT occurred."
            ),
            E::PromotionRefusedPrimaryUnverified { primary } => format!(
                "This standby did not promote itself: it could not find out whether the primary database \
                 on {primary} still runs. Failover has NOT occurred."
            ),
            E::PromotionRefusedVipAssigned { vip, candidate } => format!(
                "Standby {candidate} was not promoted: another host still answers for the virtual IP \
                 address {vip} (check.vip.before.promotion). Promoting now could put two servers behind \
                 one address. Failover has NOT occurred; it is retried every second and happens once \
                 nobody answers for the address (or set vip.takeover.allowed=true to take it over)."
            ),
            E::PromotionRefusedOrphaned { server } => format!(
                "This standby did not promote itself: {server} (ping.server.ip) did not answer, so this \
                 node may be the one cut off. Failover has NOT occurred."
            ),
            E::FailoverNotOccurred { reason } => format!(
                "The primary database of cluster {c} is no longer available, but no standby can take over: {reason}"
            ),
            E::ManualFailoverRequired { primary, reason } => format!(
                "The primary {primary} of cluster {c} has failed ({reason}), and auto.failover is off: \
                 promote a standby by hand (efm promote)."
            ),
            E::FailoverCompleted { old_primary, new_primary } => match old_primary {
                Some(old) => {
                    format!("Failover has completed on cluster {c}: {new_primary} replaces the failed primary {old}.")
                }
                None => format!("Failover has completed on cluster {c}: {new_primary} is the primary."),
            },
            E::LockFileRemoved { path } => format!(
                "The lock file {path} of cluster {c} on node {node} has been removed. It keeps a second \
                 agent of the cluster from starting on this node: restore it."
            ),
            E::RecoveryConfFound { path } => {
                format!("{path} exists on primary node {node}. A restart would bring this database back as a standby.")
            }
            E::PromotionNotOccurred { in_progress } => {
                format!("A promotion was requested, but {in_progress} is already being promoted.")
            }
            E::StandbyNotReconfigured { new_primary } => format!(
                "auto.reconfigure is false on this node: it has not been pointed at the new primary \
                 {new_primary}."
            ),
            E::ReplayResumeFailed { error } => format!(
                "WAL replay could not be resumed on the standby being promoted; it may need a hand. Error: {error}"
            ),
            E::NoStandbysAvailable { minimum } => format!(
                "The standbys of cluster {c} have dropped to minimum.standbys ({minimum}): no failover is \
                 possible until another standby joins or becomes promotable."
            ),
            E::CustomMonitorTimeout { result } => {
                format!("The custom monitor script {} did not finish within custom.monitor.timeout.", result.script)
            }
            E::CustomMonitorSafeModeFailure { result } => format!(
                "The custom monitor script {} failed; custom.monitor.safe.mode is on, so this is only reported.",
                result.script
            ),
            E::DbConnectFailed { node: other, reason } => {
                format!("The agent cannot connect to the database on {other}: {reason}")
            }
            E::PrimaryCannotPingLocalDb => format!(
                "The primary's agent cannot reach its database on {node}, but other nodes can. The VIP \
                 stays; the agent stops monitoring until `efm resume`."
            ),
            E::CommunicationError { node: other, error } => {
                format!("Cluster member {other} cannot be reached or resolved: {error}. Check the .nodes files.")
            }
            E::FencingScriptError { result } => {
                format!("{}\nFailover has NOT occurred.", failed("fencing", result))
            }
            E::PostPromotionScriptFailed { result } => failed("post-promotion", result),
            E::DbFailureScriptError { result } => failed("post-database failure", result),
            E::PrimaryIsolationScriptFailed { result } => failed("primary isolation", result),
            E::RemotePrePromotionScriptFailed { result } => failed("remote pre-promotion", result),
            E::RemotePostPromotionScriptFailed { result } => failed("remote post-promotion", result),
            E::ResumedScriptFailed { result } => failed("agent resumed", result),
            E::LoadBalancerAttachScriptFailed { result } => failed("load balancer attach", result),
            E::LoadBalancerDetachScriptFailed { result } => failed("load balancer detach", result),
            E::PromotionFailed { error } => format!("The standby on {node} could not be promoted: {error}"),
            E::DemotionFailed { node: other, error } => format!(
                "standby.signal/recovery.conf could not be written on the old primary {other}. The promotion \
                 went on; make sure the old primary cannot start as a primary again. Error: {error}"
            ),
            E::UnexpectedError { error } => {
                format!("An unexpected error occurred on this node (see the agent log): {error}")
            }
            E::PrimaryFencedOff { node: other } => format!(
                "The primary {other} is cut off from the majority of the cluster and is fenced, so that a \
                 standby can be promoted without two primaries."
            ),
            E::IsolatedPrimary { node: other } => format!(
                "The primary {other} has lost its lease (no majority endorses it). Its kernel refuses its \
                 clients; it releases the VIP."
            ),
            E::VipAssignFailed { vip, error } => {
                format!("The virtual IP address {vip} could not be assigned to node {node}: {error}")
            }
            E::DatabaseFailure { role, node: other } => {
                format!("The {} database on {other} has failed.", role.word().to_ascii_lowercase())
            }
            E::AgentTimingOut => "The agent timed out reaching its database, then reached it again and \
                monitors it. Check the node before it fails."
                .into(),
            E::ResumeTimedOut => "The agent could not resume monitoring after reconfiguring and restarting \
                its database (see the agent log)."
                .into(),
            E::InternalStateMismatch { detail } => {
                format!("This agent's view of cluster {c} disagrees with the cluster's: {detail}")
            }
            E::DatabaseWrongState { node: other, expected, found } => {
                format!("The database on {other} should be {expected} but is {found}.")
            }
            E::DatabaseConnectionFailure { error } => format!(
                "This node cannot connect to a database it has to check: {error}. Until this is fixed, a failover \
                 may not work as expected."
            ),
            E::StandbyCustomMonitorFailure { result } => format!(
                "The custom monitor script {} failed on this standby: the agent stops monitoring its database.",
                result.script
            ),
            E::PrimaryCustomMonitorFailure { result } => format!(
                "The custom monitor script {} failed on the primary: this counts as a database failure.",
                result.script
            ),
            E::Custom { detail, .. } => detail.clone(),
        }
    }

    /// Script output of the events that report a script, for the end of the body.
    #[must_use]
    pub fn details(&self) -> Option<String> {
        use Event as E;
        match self {
            E::FencingScriptExecuted { result }
            | E::PostPromotionScriptExecuted { result }
            | E::DbFailureScriptExecuted { result }
            | E::PrimaryIsolationScriptExecuted { result }
            | E::RemotePrePromotionScriptExecuted { result }
            | E::RemotePostPromotionScriptExecuted { result }
            | E::ResumedScriptExecuted { result }
            | E::LoadBalancerAttachScriptExecuted { result }
            | E::LoadBalancerDetachScriptExecuted { result }
            | E::CustomMonitorTimeout { result }
            | E::CustomMonitorSafeModeFailure { result }
            | E::FencingScriptError { result }
            | E::PostPromotionScriptFailed { result }
            | E::DbFailureScriptError { result }
            | E::PrimaryIsolationScriptFailed { result }
            | E::RemotePrePromotionScriptFailed { result }
            | E::RemotePostPromotionScriptFailed { result }
            | E::ResumedScriptFailed { result }
            | E::LoadBalancerAttachScriptFailed { result }
            | E::LoadBalancerDetachScriptFailed { result }
            | E::StandbyCustomMonitorFailure { result }
            | E::PrimaryCustomMonitorFailure { result } => Some(result.report()),
            _ => None,
        }
    }
}
