//! The effects that follow from a step's decision, decided here so that the runtime only
//! executes: the kernel's peer table, the lease floor and the lapse announcement, ending
//! sessions when the kernel stops serving, the VIP (released only after a database stop),
//! load-balancer hooks, remote checks of the primary's database, registration, and
//! `efm stop-cluster`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use efm_common::{
    serving::{exempt_applies, fence_reasons, serves, EXEMPT_MEMBER, REASON_EPOCH, REASON_LAPSED},
    wire::{FLAG_LEASE_LAPSED, ROLE_MASK, ROLE_PRIMARY},
};

use super::{duration_ns, retry_due, Action, Desired, Engine, Inputs, Notice, Outcome, PeerRole};

/// How long an agent keeps running after it saw `efm stop-cluster` (the leader must have time
/// to tell every follower that the stop committed).
pub const STOP_LINGER: Duration = Duration::from_millis(1_500);
/// A remote check of the primary's database is started at most this often.
pub(super) const REMOTE_EVERY: Duration = Duration::from_secs(1);
/// ... and this soon again after one that failed.
const REMOTE_RETRY: Duration = Duration::from_millis(250);

/// The VIP as the engine knows it from its completions.
#[derive(Clone, Debug, Default)]
#[expect(clippy::struct_excessive_bools, reason = "independent facts about the VIP, each with its own meaning")]
pub(super) struct VipState {
    pub(super) held: bool,
    /// A change is under way.
    busy: bool,
    /// Actions stopping the database that have not reported [`super::Event::DbStopDone`].
    pub(super) db_stops: u32,
    /// Since when this node holds the VIP, and when it last re-announced it.
    since_ns: Option<u64>,
    announced_ns: Option<u64>,
    /// "Could not assign VIP" was sent for the current run of failed attempts.
    assign_failure_notified: bool,
    /// The VIP was on this node when the agent started, and has not changed since.
    pub(super) found_at_start: bool,
}

/// The leader's probe of the VIP before a promotion (`check.vip.before.promotion`).
#[derive(Clone, Debug, Default)]
pub(super) struct VipProbe {
    /// The epoch the probe is for.
    epoch: u64,
    /// A probe is under way.
    busy: bool,
    /// When the last probe finished, and who answered (a MAC), if anyone.
    result: Option<(u64, Option<String>)>,
}

/// A probe's answer counts this long; a refused promotion is probed again after it.
const VIP_PROBE_FRESH_NS: u64 = 1_000_000_000;

/// One peer's remote database check.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RemoteCheck {
    pub(super) reachable: Option<bool>,
    started_ns: u64,
    pub(super) done_ns: u64,
}

/// The effects' memory between steps.
#[derive(Clone, Debug, Default)]
pub(super) struct Effects {
    /// (epoch, ns): this node started enforcing its lease for `epoch` and counts it as granted
    /// until `ns` (start + `lease.timeout`). The kernel's deadline may still be one from an
    /// earlier epoch of this node's; that one must not make a new primary look lapsed.
    lease_floor: Option<(u64, u64)>,
    /// The peer table last asked of the kernel.
    last_peers: Option<Vec<SocketAddr>>,
    sessions: crate::sessions::Tracker,
    pub(super) vip: VipState,
    /// Whether this node is in service for the load balancer.
    lb_attached: Option<bool>,
    /// Peers this node detached from the load balancer after their agent failed.
    lb_detached_peers: BTreeSet<SocketAddr>,
    pub(super) remote: BTreeMap<SocketAddr, RemoteCheck>,
    /// When this agent saw `efm stop-cluster` committed, and whether it asked to exit.
    stop_seen: Option<u64>,
    exit_asked: bool,
    register_proposed: Option<u64>,
    pub(super) vip_probe: VipProbe,
    /// The suspension (its start) for which this node's standby database failure was handled.
    pub(super) standby_failure_handled: Option<u64>,
    /// The leader's watch over the standbys' databases (see [`Engine::standby_checks`]).
    standby_watch: BTreeMap<SocketAddr, StandbyWatch>,
    /// Cluster-wide notifications' episodes (see [`Engine::cluster_notices`]).
    notices: ClusterNotices,
}

/// What [`Engine::cluster_notices`] remembers between steps.
#[derive(Clone, Debug, Default)]
#[expect(clippy::struct_excessive_bools, reason = "one episode flag per notification")]
struct ClusterNotices {
    /// The leader saw a standby agent since it last said none is left.
    standby_seen: bool,
    /// The leader saw more promotable standbys than `minimum.standbys` since it last said so.
    above_minimum: bool,
    /// This node saw a majority of the voters (itself included) since it last said it did not.
    connected: bool,
    /// "Subset disconnected" / "isolated" was sent and "no longer isolated" is due.
    cut_off: bool,
    /// Members this node was told about that it has no heartbeat slot for.
    unknown_members: BTreeSet<SocketAddr>,
    /// (higher epoch the kernel saw, since when, said so).
    mismatch: Option<(u64, u64, bool)>,
}

/// A kernel that has seen a newer epoch than this node's log copy for this long says so.
const MISMATCH_NS: u64 = 5_000_000_000;

/// One standby's database as the leader follows it.
#[derive(Clone, Copy, Debug, Default)]
struct StandbyWatch {
    /// Its PINGs said: a standby with its database up.
    up_seen: bool,
    /// A remote check of its database is under way.
    checking: bool,
}

impl Effects {
    pub(super) fn peer_table_failed(&mut self) {
        self.last_peers = None;
    }

    pub(super) fn vip_probed(&mut self, holder: Option<String>, now: u64) {
        self.vip_probe.busy = false;
        self.vip_probe.result = Some((now, holder));
    }

    /// A remote check's result; for a standby the leader was checking, EFM's notification.
    pub(super) fn remote_checked(&mut self, node: SocketAddr, reachable: bool, now: u64, out: &mut Vec<Action>) {
        if let Some(w) = self.standby_watch.get_mut(&node).filter(|w| w.checking) {
            w.checking = false;
            w.up_seen = false;
            let node = node.to_string();
            out.push(Action::Notify(if reachable {
                Notice::StandbyCannotReachDatabase { node }
            } else {
                Notice::StandbyDatabaseFailed { node }
            }));
        }
        self.record_remote(node, reachable, now);
    }

    fn record_remote(&mut self, node: SocketAddr, reachable: bool, now: u64) {
        let r = self.remote.entry(node).or_default();
        r.reachable = Some(reachable);
        r.done_ns = now;
    }
}

/// What `vip` does: `Some(true)` assign, `Some(false)` release, `None` nothing. A release waits
/// while the database is being stopped, so the backends' last words (and the RSTs of ended
/// sessions) leave from the address the clients know.
fn vip_change(held: bool, want: bool, db_stops: u32) -> Option<bool> {
    match (held, want) {
        (true, false) if db_stops > 0 => None,
        (h, w) if h != w => Some(w),
        _ => None,
    }
}

impl Engine {
    /// `check.vip.before.promotion`, asked by the leader while a promotion of `epoch` is due:
    /// `Ok` when a fresh probe found nobody answering for the VIP (or the guard is off),
    /// `Err(None)` while a probe is under way (one is started when none is fresh), and
    /// `Err(Some(mac))` while another host answers for it. The candidate's own address cannot
    /// answer: it is a standby, and the VIP follows only the serving primary.
    pub(super) fn vip_clear(&mut self, epoch: u64, now: u64, out: &mut Vec<Action>) -> Result<(), Option<String>> {
        if !self.cfg.vip_guard {
            return Ok(());
        }
        let p = &mut self.fx.vip_probe;
        if p.epoch != epoch {
            *p = VipProbe { epoch, ..VipProbe::default() };
        }
        if p.busy {
            return Err(None);
        }
        match &p.result {
            Some((at, holder)) if now.saturating_sub(*at) < VIP_PROBE_FRESH_NS => {
                holder.clone().map_or(Ok(()), |h| Err(Some(h)))
            }
            _ => {
                p.busy = true;
                out.push(Action::ProbeVip);
                Err(None)
            }
        }
    }

    /// Until when this node counts its lease for `epoch` as granted: the kernel's deadline, but
    /// never before `lease.timeout` after it began enforcing the lease for that epoch.
    fn granted_until(&self, epoch: u64, kernel_deadline_ns: u64) -> u64 {
        let floor = self.fx.lease_floor.filter(|(e, _)| *e == epoch).map_or(0, |(_, t)| t);
        kernel_deadline_ns.max(floor)
    }

    /// How long this node's enforced lease has been lapsed: the kernel's own rule
    /// (`efm_common::serving`) on the fence it holds, with the deadline held back to the lease
    /// floor; an enforced lease with k = 0 counts as lapsed, as the kernel fails closed on it.
    pub(super) fn lease_lapsed_for(&self, inp: &Inputs<'_>) -> Option<Duration> {
        let f = inp.kernel.fence?;
        let mut held = inp.kernel.lease();
        held.deadline_ns = self.granted_until(f.epoch, held.deadline_ns);
        (fence_reasons(&f, &held, inp.now_ns) & REASON_LAPSED != 0)
            .then(|| Duration::from_nanos(inp.now_ns.saturating_sub(held.deadline_ns)))
    }

    /// The kernel side of the decision: the peer table (only members the log allows: a node
    /// disallowed while partitioned must not keep a primary's lease alive), the lease floor,
    /// the lapse announcement (DESIGN "Safety" (3): a primary whose granted lease has lapsed
    /// says so in its PINGs; never at start-up, when none was granted yet), and ending the
    /// sessions the new fence no longer lets through — before any action stops the database.
    pub(super) fn kernel_effects(&mut self, inp: &Inputs<'_>, desired: &mut Desired) -> Vec<Action> {
        let mut out = Vec::new();
        let now = inp.now_ns;
        if !inp.allowed.is_empty() {
            let members: Vec<SocketAddr> =
                inp.peers.iter().map(|p| p.addr).filter(|a| inp.allowed.contains(a)).collect();
            if self.fx.last_peers.as_ref() != Some(&members) {
                self.fx.last_peers = Some(members.clone());
                out.push(Action::SetPeerTable { members });
            }
        }
        if desired.lease_enforced && self.fx.lease_floor.is_none_or(|(e, _)| e != desired.epoch) {
            self.fx.lease_floor = Some((desired.epoch, now.saturating_add(duration_ns(self.cfg.lease_timeout))));
        }
        let deadline = inp.kernel.deadline_ns;
        if desired.lease_enforced && deadline != 0 && now > self.granted_until(desired.epoch, deadline) {
            desired.ping_flags |= FLAG_LEASE_LAPSED;
        }
        if !self.cfg.is_witness {
            let fence = desired.fence_state(0, self.cfg.lease_timeout, 0);
            let reasons = fence_reasons(&fence, &inp.kernel.lease(), now);
            // Members pass only while the explicit flag is the only reason and it was asked for.
            let gate = crate::sessions::Gate {
                serving: serves(reasons),
                members_pass: serves(reasons) || exempt_applies(EXEMPT_MEMBER, reasons, fence.flags),
            };
            // A database known to be a standby has no writes to cut short: its read-only
            // sessions survive a moment of epoch fence while its log catches up.
            let standby = inp.db.up == Some(true) && inp.db.in_recovery == Some(true);
            if let Some(members_spared) = self.fx.sessions.observe(gate).filter(|_| !standby) {
                let why = if reasons & REASON_EPOCH != 0 {
                    "a newer epoch exists"
                } else if reasons & REASON_LAPSED != 0 {
                    "lease lapsed"
                } else {
                    "fenced"
                };
                out.push(Action::EndSessions { members_spared, why });
            }
        }
        out
    }

    /// `efm stop-cluster`: the databases stay as they are. Nothing is started any more (an agent
    /// whose peers exit first must not take that for an isolation and stop its database), a
    /// serving primary no longer depends on endorsements, and the agent exits a moment later.
    pub(super) fn stop_cluster(&mut self, now: u64, desired: &mut Desired, actions: &mut Vec<Action>) {
        let seen = *self.fx.stop_seen.get_or_insert(now);
        actions.clear();
        if !desired.fenced {
            desired.lease_enforced = false;
            desired.lease_k = 0;
        }
        if now.saturating_sub(seen) >= duration_ns(STOP_LINGER) && !self.fx.exit_asked {
            self.fx.exit_asked = true;
            actions.push(Action::Exit);
        }
    }

    /// `script.load.balancer.attach` when this node starts serving (primary, or standby with its
    /// database monitored), `detach` when it stops; with `detach.on.agent.failure`, the log's
    /// leader detaches a peer whose agent failed.
    pub(super) fn load_balancer(
        &mut self,
        inp: &Inputs<'_>,
        desired: &Desired,
        outcome: &Outcome,
        out: &mut Vec<Action>,
    ) {
        if !self.cfg.load_balancer {
            return;
        }
        let me = self.cfg.me;
        let in_service = match outcome {
            Outcome::Primary { .. } | Outcome::PrimaryCheckingDb { .. } | Outcome::PrimaryIdle { .. } => {
                Some((true, true))
            }
            Outcome::Standby { .. }
            | Outcome::PrimarySuspect { .. }
            | Outcome::PrimaryAgentAbsent { .. }
            | Outcome::Voted { .. } => Some((!desired.fenced, false)),
            Outcome::Witness | Outcome::NotJoined => None,
            // The leader's promotion headline says nothing about this node's own service.
            Outcome::CheckingVip { .. } | Outcome::PromotionRefused { .. } if self.cfg.is_witness => None,
            Outcome::CheckingVip { .. } | Outcome::PromotionRefused { .. } => {
                Some((!desired.fenced, desired.ping_flags & ROLE_MASK == ROLE_PRIMARY))
            }
            _ => Some((false, desired.ping_flags & ROLE_MASK == ROLE_PRIMARY)),
        };
        if let Some((in_service, primary)) = in_service {
            if self.fx.lb_attached != Some(in_service) {
                // At start nothing is attached yet: only an attach is due.
                let first = self.fx.lb_attached.is_none();
                self.fx.lb_attached = Some(in_service);
                if !first || in_service {
                    out.push(Action::LoadBalancer { attach: in_service, node: me, primary });
                }
            }
        }
        if self.cfg.detach_on_agent_failure && inp.is_leader {
            for v in inp.peers {
                if v.alive {
                    self.fx.lb_detached_peers.remove(&v.addr);
                } else if v.agent_age.is_some() && self.fx.lb_detached_peers.insert(v.addr) {
                    out.push(Action::LoadBalancer {
                        attach: false,
                        node: v.addr,
                        primary: v.role == PeerRole::Primary,
                    });
                }
            }
        }
    }

    /// When the committed primary says its database is down, check it from here
    /// (`remote.timeout`), at most once a second.
    pub(super) fn remote_checks(&mut self, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        let Some(p) = inp.committed.and_then(|c| c.primary).filter(|p| *p != self.cfg.me) else { return };
        let Some(v) = inp.peers.iter().find(|v| v.addr == p) else { return };
        // Also while its agent is absent and its node answers: the voters endorse it on the
        // strength of these checks (voter.rs, `absence`).
        let window = self.cfg.endorse_window;
        let absent = v.agent_age.is_none_or(|a| a > window) && v.node_age.is_some_and(|a| a <= self.cfg.node_timeout);
        if !absent && (v.db_up || !v.alive) {
            return;
        }
        let r = self.fx.remote.entry(p).or_default();
        // After a check that failed, the next one follows sooner: one lost connection does not
        // decide a failover (the voters vote only when the failure outlasts the promotion wait).
        let failed = r.reachable == Some(false) && r.done_ns >= r.started_ns;
        let every = if failed { REMOTE_RETRY } else { REMOTE_EVERY };
        if r.started_ns != 0 && inp.now_ns.saturating_sub(r.started_ns) < duration_ns(every) {
            return;
        }
        r.started_ns = inp.now_ns.max(1);
        out.push(Action::CheckRemoteDb { node: p });
    }

    /// EFM's coordinator follows the standbys' databases: when a standby's PINGs stop saying
    /// its database is up while its agent is alive, the log's leader checks that database from
    /// here (`remote.timeout`) and tells the cluster whether it failed ("Standby database
    /// failed") or only its agent cannot reach it ("Standby agent cannot reach database").
    pub(super) fn standby_checks(&mut self, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        let Some(c) = inp.committed else { return };
        for v in inp.peers {
            if Some(v.addr) == c.primary || c.nodes.get(&v.addr).is_none_or(|m| m.witness) {
                continue;
            }
            let w = self.fx.standby_watch.entry(v.addr).or_default();
            if v.alive && v.db_up && v.role == PeerRole::Standby {
                *w = StandbyWatch { up_seen: true, checking: false };
            } else if v.alive && !v.db_up && w.up_seen && !w.checking && inp.is_leader {
                w.checking = true;
                out.push(Action::CheckRemoteDb { node: v.addr });
            } else if !v.alive {
                // Its agent left: "Standby agent failed" is the detector's notification.
                w.up_seen = false;
            }
        }
    }

    /// EFM's notifications about the cluster as this node sees it:
    /// - the log's leader (EFM's coordinator): "No standby agent" when the last agent of a
    ///   database node other than the primary is gone; "No standbys available for promotion"
    ///   when the promotable standbys drop to `minimum.standbys` (> 0);
    /// - every voter: "Subset of cluster disconnected from primary" when it sees fewer than a
    ///   majority of the voters (itself included) after it had seen one — "nodes isolated" when
    ///   it sees no other member at all or its `ping.server.ip` check fails too — and "no longer
    ///   isolated" when the majority is back; "Communication error" for a member of the log it
    ///   has no heartbeat slot for (not in the `.nodes` file it started with); "Internal state
    ///   mismatch" when its kernel has seen a newer epoch than its log copy holds for 5 s.
    ///
    /// Not during `efm stop-cluster` (the agents leave one by one).
    pub(super) fn cluster_notices(&mut self, inp: &Inputs<'_>, db_standby: bool, out: &mut Vec<Action>) {
        let Some(c) = inp.committed else { return };
        if inp.stop_cluster {
            return;
        }
        let me = self.cfg.me;
        let visible: Vec<SocketAddr> =
            inp.peers.iter().filter(|v| v.alive && c.nodes.contains_key(&v.addr)).map(|v| v.addr).collect();
        let n = &mut self.fx.notices;
        if inp.is_leader {
            let other_db_agents = visible
                .iter()
                .filter(|a| Some(**a) != c.primary && c.nodes.get(*a).is_some_and(|m| !m.witness))
                .count()
                + usize::from(!self.cfg.is_witness && c.primary != Some(me));
            if other_db_agents > 0 {
                n.standby_seen = true;
            } else if std::mem::take(&mut n.standby_seen) {
                out.push(Action::Notify(Notice::NoStandbyAgent));
            }
            let promotable =
                |a: &SocketAddr| c.nodes.get(a).is_some_and(|m| !m.witness && m.promotable && m.priority > 0);
            let standbys = inp
                .peers
                .iter()
                .filter(|v| v.alive && v.role == PeerRole::Standby && v.db_up && promotable(&v.addr))
                .count()
                + usize::from(db_standby && promotable(&me) && c.primary != Some(me));
            let minimum = self.cfg.minimum_standbys as usize;
            if minimum > 0 {
                if standbys > minimum {
                    n.above_minimum = true;
                } else if std::mem::take(&mut n.above_minimum) {
                    out.push(Action::Notify(Notice::NoStandbysAvailable { minimum: minimum as u64 }));
                }
            }
        }
        if c.nodes.contains_key(&me) {
            let names: Vec<String> = visible.iter().map(ToString::to_string).collect();
            if 1 + visible.len() >= c.majority() {
                n.connected = true;
                if std::mem::take(&mut n.cut_off) {
                    out.push(Action::Notify(Notice::NoLongerIsolated));
                }
            } else if std::mem::take(&mut n.connected) {
                n.cut_off = true;
                out.push(Action::Notify(if visible.is_empty() || inp.ping_failed.contains(&me) {
                    Notice::NodesIsolated { visible: names }
                } else {
                    Notice::SubsetDisconnected { visible: names }
                }));
            }
            // The voters as the runtime reads them from the log (`ClusterState::voters`).
            for m in inp.allowed.iter().filter(|a| **a != me) {
                if !inp.peers.iter().any(|v| v.addr == *m) && n.unknown_members.insert(*m) {
                    out.push(Action::Notify(Notice::CommunicationError {
                        node: m.to_string(),
                        error: "it is a member of the cluster, but not in the .nodes file this agent started \
                                with, so no heartbeats are exchanged with it; restart this agent"
                            .into(),
                    }));
                }
            }
        }
        let seen = inp.kernel.max_epoch_seen;
        if seen > c.epoch {
            let m = n.mismatch.get_or_insert((seen, inp.now_ns, false));
            if m.0 != seen {
                *m = (seen, inp.now_ns, false);
            }
            if !m.2 && inp.now_ns.saturating_sub(m.1) >= MISMATCH_NS {
                m.2 = true;
                out.push(Action::Notify(Notice::InternalStateMismatch {
                    detail: format!(
                        "the heartbeats carry epoch {seen}, but this node's copy of the log is at epoch {}: it \
                         does not endorse anyone until its log catches up",
                        c.epoch
                    ),
                }));
            }
        } else {
            n.mismatch = None;
        }
    }

    /// A member announces itself (kind, priority, promotable) until the log shows it.
    pub(super) fn register(&mut self, inp: &Inputs<'_>, out: &mut Vec<Action>) {
        if inp.committed.is_none() || inp.registered || inp.stop_cluster {
            return;
        }
        if self.fx.register_proposed.is_none_or(|t| retry_due(t, inp.now_ns)) {
            self.fx.register_proposed = Some(inp.now_ns);
            out.push(Action::Register);
        }
    }

    /// Counts the database stops the step's actions start: the VIP waits for them.
    pub(super) fn count_db_stops(&mut self, actions: &[Action]) {
        for a in actions {
            if matches!(
                a,
                Action::PrimaryDbFailed { stop: true, .. }
                    | Action::DemoteLocal { stop: true, .. }
                    | Action::PrimaryIsolated { stop: true, .. }
                    | Action::HandOver { demote: true, .. }
            ) {
                self.fx.vip.db_stops += 1;
            }
        }
    }

    /// Makes the VIP follow [`Desired::vip`]: assign at once, release only once no database
    /// stop is under way; while held, announce it every second for the first 15 s, then every
    /// 10 s (neighbours ignore an ARP update within `locktime` of the previous one, and a node
    /// whose agent died may still answer for the VIP).
    /// `non_primary`: the log names another node (or none) as primary; releasing a VIP this
    /// node held at start is then EFM's "VIP on a non-primary node".
    pub(super) fn vip(&mut self, now: u64, want: bool, non_primary: bool, out: &mut Vec<Action>) {
        if self.cfg.vip.is_none() {
            return;
        }
        let v = &mut self.fx.vip;
        if v.held && want {
            let since = *v.since_ns.get_or_insert(now);
            let every = if now.saturating_sub(since) < 15_000_000_000 { 1_000_000_000 } else { 10_000_000_000 };
            if v.announced_ns.is_none_or(|t| now.saturating_sub(t) >= every) {
                v.announced_ns = Some(now);
                out.push(Action::AnnounceVip);
            }
            return;
        }
        if !v.held {
            v.since_ns = None;
        }
        if v.busy {
            return;
        }
        if let Some(assign) = vip_change(v.held, want, v.db_stops) {
            v.busy = true;
            if !assign && v.found_at_start && non_primary {
                // EFM: a VIP found on a node that is not the primary is released, and said so.
                v.found_at_start = false;
                if let Some(addr) = self.cfg.vip {
                    out.push(Action::Notify(Notice::VipOnNonPrimary { vip: addr.to_string() }));
                }
            }
            out.push(Action::Vip { assign });
        }
    }

    pub(super) fn vip_done(&mut self, assign: bool, ok: bool, out: &mut Vec<Action>) {
        self.fx.vip.busy = false;
        self.fx.vip.found_at_start = false;
        if assign && !ok && !self.fx.vip.assign_failure_notified {
            // Retried every cycle: one notification per run of failures.
            self.fx.vip.assign_failure_notified = true;
            if let Some(addr) = self.cfg.vip {
                out.push(Action::Notify(Notice::VipAssignFailed {
                    vip: addr.to_string(),
                    error: "the address could not be added (the agent log has the interface's error); retrying".into(),
                }));
            }
        }
        if assign && ok {
            self.fx.vip.assign_failure_notified = false;
        }
        if ok {
            self.fx.vip.held = assign;
            if let Some(addr) = self.cfg.vip {
                let vip = addr.to_string();
                out.push(Action::Notify(if assign {
                    Notice::AssigningVip { vip }
                } else {
                    Notice::ReleasingVip { vip }
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::vip_change;

    #[test]
    fn the_vip_is_released_only_after_the_database_stopped() {
        assert_eq!(vip_change(true, false, 1), None, "a database stop in progress keeps the VIP");
        assert_eq!(vip_change(true, false, 2), None);
        assert_eq!(vip_change(true, false, 0), Some(false), "stopped (or no stop asked): released");
        assert_eq!(vip_change(false, true, 1), Some(true), "taking the VIP never waits");
        assert_eq!(vip_change(false, true, 0), Some(true));
        assert_eq!(vip_change(true, true, 0), None);
        assert_eq!(vip_change(false, false, 1), None);
    }
}
