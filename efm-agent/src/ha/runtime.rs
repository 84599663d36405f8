//! The executor of the HA engine inside the agent. Every cycle it reads the inputs (committed
//! state, detector, local database, custom monitor, kernel lease, and the [`Event`]s that
//! completed actions and operator requests sent on its channel since the last cycle), steps
//! the [`Engine`], writes the kernel's fence state to match [`Desired`], and executes the
//! step's [`Action`]s in order — one small function each, long ones as tasks (file writes on
//! the blocking pool) that report their completion as an [`Event`]. It decides nothing.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use efm_common::{
    maps::{FenceState, FENCE_RESET},
    serving::{fence_reasons, serves},
    wire::{FLAG_DB_CHECK, FLAG_DB_UP, FLAG_FENCED, FLAG_LEASE_LAPSED, FLAG_PING_SERVER_FAILED, ROLE_MASK},
};
use tokio::sync::{mpsc, oneshot};

use super::local::{
    demote_local, follow, ping_server_loop, promote_local, rejoin, upstream, watch_lock_file, write_standby_signal,
};
use super::{
    Action, Committed, Desired, Engine, EngineConfig, Event, Handover, Inputs, KernelPong, KernelState, LocalDb,
    NodeMeta, Outcome, PeerRole, PeerView, Proposal, Step,
};
use crate::{
    config::{Config, FenceMode},
    coordination::{ClusterState, Command, Coordinator, NodeInfo, NodeKind},
    datapath::{Datapath, DatapathError},
    detector::Verdict,
    localdb,
    node::{
        DbUpdate, DbView, Facts, KernelView, PeerEntry, RuntimeOwner, RuntimeRequest, Status, SuspendKind, Suspension,
    },
    postgres::{self, control},
    scripts::{Hook, ScriptRunner, Substitutions},
    vip,
};

/// How long stopping the database waits for the sessions to be ended first.
const SESSIONS_SETTLE: Duration = Duration::from_secs(4);
/// How long a standby restarted to follow a new primary may take to come back up.
const RESUME_WAIT: Duration = Duration::from_mins(1);

/// The engine's settings from the properties.
#[must_use]
pub fn engine_config(cfg: &Config, me: SocketAddr) -> EngineConfig {
    EngineConfig {
        me,
        is_witness: cfg.is_witness,
        lease_timeout: cfg.lease_timeout,
        clock_drift: 0.05,
        margin: Duration::from_millis(50),
        endorse_window: cfg.heartbeat_interval * 3,
        minimum_standbys: u32::try_from(cfg.minimum_standbys).unwrap_or(u32::MAX),
        auto_reconfigure: cfg.auto_reconfigure,
        promotion_grace: Duration::from_secs(30),
        heartbeat_interval: cfg.heartbeat_interval,
        vip: cfg.virtual_ip.filter(|_| cfg.virtual_ip_prefix.is_some()),
        stop_failed_primary: cfg.stop_failed_primary,
        stop_isolated_primary: cfg.stop_isolated_primary,
        load_balancer: cfg.script_load_balancer_attach.is_some() || cfg.script_load_balancer_detach.is_some(),
        detach_on_agent_failure: cfg.detach_on_agent_failure,
        auto_resume_startup: cfg.auto_resume_startup_period,
        auto_resume_failure: cfg.auto_resume_failure_period,
        remote_timeout: cfg.remote_timeout,
        vip_guard: cfg.check_vip_before_promotion
            && !cfg.vip_takeover_allowed
            && cfg.virtual_ip.is_some()
            && cfg.virtual_ip_prefix.is_some(),
        ping_server: cfg.ping_server_ip,
        node_timeout: cfg.node_timeout,
        agent_absence_timeout: cfg.primary_agent_absence_timeout,
    }
}

/// The local database as the engine reads it. `lsn`: the fresh position (0 when stale).
#[must_use]
pub fn local_db(db: &DbView, lsn: u64) -> LocalDb {
    LocalDb {
        up: db.up,
        in_recovery: db.info.as_ref().map(|i| i.in_recovery),
        failed: db.up == Some(false),
        local_check_only: db.up == Some(false) && !db.postmaster_exited,
        lsn,
        timeline: db.info.as_ref().and_then(|i| i.timeline).unwrap_or(0),
        upstream: db.info.as_ref().and_then(|i| i.upstream_host.as_deref()).and_then(|h| h.parse().ok()),
    }
}

/// Sends [`Event::DbStopDone`] when dropped: an action that stops the database reports it done
/// however it ends (also if its task panics), so the VIP is never held for ever.
struct StopDone(mpsc::UnboundedSender<Event>);

impl Drop for StopDone {
    fn drop(&mut self) {
        let _ = self.0.send(Event::DbStopDone);
    }
}

/// The engine plus what executing its actions needs.
pub struct HaRuntime {
    engine: Engine,
    coord: Arc<Coordinator>,
    cfg: Config,
    /// Where the password key lives (`<config-dir>/efm.key`).
    config_dir: PathBuf,
    iface: String,
    /// What this node registers in the log.
    info: NodeInfo,
    /// `<state_dir>/<cluster>.voted`: the highest epoch this node voted against, written (and
    /// synced) before the vote is proposed, so a restarted agent never endorses it again.
    voted_file: PathBuf,
    /// Completions of actions come back here.
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// What the runtime reads (the other tasks' facts) and owns (its [`Status`], the stop
    /// signal, the requests it answers); see [`crate::node`].
    facts: Facts,
    owner: RuntimeOwner,
    next_request: u64,
    replies: HashMap<u64, oneshot::Sender<Result<String, String>>>,
    /// `EFM_FENCE` as last written.
    last_fence: Option<FenceState>,
    last_outcome: Option<Outcome>,
    /// Ends the open client sessions when the kernel stops serving (not on a witness).
    sessions: Option<crate::sessions::Ender>,
    /// The last result of this node's `ping.server.ip` check (a database node with the property
    /// set; the task starts with the first cycle).
    ping_server: Option<tokio::sync::watch::Receiver<Option<bool>>>,
    /// The lock-file watch runs (started with the first cycle).
    watchers_started: bool,
}

impl HaRuntime {
    #[must_use]
    /// The runtime of this node (configuration and identity from `facts.id`), owning `owner`.
    pub fn new(
        engine: Engine,
        coord: Arc<Coordinator>,
        facts: Facts,
        owner: RuntimeOwner,
        vip_held: bool,
        info: NodeInfo,
        state_dir: &std::path::Path,
    ) -> Self {
        let (cfg, config_dir, iface) = (facts.id.config.clone(), facts.id.config_dir.clone(), facts.id.iface.clone());
        let voted_file = state_dir.join(format!("{}.voted", cfg.cluster));
        let mut engine = engine;
        // A small read once at start-up, before the heartbeat loop runs.
        if let Some(e) = std::fs::read_to_string(&voted_file).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            tracing::info!(
                epoch = e,
                "this node voted against epoch {e} before it restarted; it never endorses it again"
            );
            engine.set_voted_floor(e);
        }
        engine.set_vip_held(vip_held);
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            engine,
            coord,
            cfg,
            config_dir,
            iface,
            info,
            voted_file,
            events_tx,
            events,
            facts,
            owner,
            next_request: 0,
            replies: HashMap::new(),
            last_fence: None,
            last_outcome: None,
            sessions: None,
            ping_server: None,
            watchers_started: false,
        }
        .with_sessions()
    }

    /// The session ender for this node: sessions on `db.port` at its own address and VIP;
    /// `fence.exempt.hosts` and this host's own addresses always spared, the `.nodes` members
    /// while members are exempt; backends terminated through the agent's local connection.
    fn with_sessions(mut self) -> Self {
        if self.cfg.is_witness {
            return self;
        }
        let me = self.cfg.bind_address;
        let service: Vec<std::net::IpAddr> = std::iter::once(me.ip()).chain(self.cfg.virtual_ip).collect();
        let spare = crate::sessions::Spare {
            exempt: self.cfg.fence_exempt_hosts.clone(),
            local: service.clone(),
            members: self.cfg.nodes.iter().map(SocketAddr::ip).filter(|ip| *ip != me.ip()).collect(),
            members_spared: true,
        };
        let db = match localdb::target(&self.cfg, &self.config_dir, &me.ip().to_string()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "ending sessions will not terminate backends: no connection to the local database");
                None
            }
        };
        self.sessions = Some(crate::sessions::Ender::new(self.cfg.db_port, service, spare, db));
        self
    }

    /// The PING endorsing the primary of `epoch` has been sent (see [`Engine::endorsement_sent`]).
    pub fn endorsement_sent(&mut self, epoch: u64, sent_ns: u64) {
        self.engine.endorsement_sent(epoch, sent_ns);
    }

    /// The committed state as the engine sees it; `None` while this node is not a voter (an
    /// allowed node that joined the membership: `ClusterState::voters`, the quorum's count).
    #[must_use]
    pub fn committed_view(st: &ClusterState, me: SocketAddr, default_auto_failover: bool) -> Option<Committed> {
        if !st.is_voter(&me) {
            return None;
        }
        let nodes = st
            .voters()
            .iter()
            .map(|a| {
                let info = st.nodes.get(a);
                let meta = info.map_or(NodeMeta { witness: false, priority: 1, promotable: true }, |i| NodeMeta {
                    witness: i.kind == NodeKind::Witness,
                    priority: i.priority,
                    promotable: i.promotable,
                });
                (*a, meta)
            })
            .collect();
        let handover = st
            .switchover
            .filter(|h| h.requested_epoch == st.epoch && Some(h.from) == st.primary)
            .map(|h| Handover { from: h.from, to: h.to, demote: h.demote, quiet: h.quiet, source: h.source });
        Some(Committed {
            epoch: st.epoch,
            primary: st.primary,
            previous_primary: st.previous_primary,
            handover,
            nodes,
            votes: st.votes.iter().copied().collect(),
            auto_failover: st.auto_failover_or(default_auto_failover) && !st.paused,
            votes_short: st.missing_votes().is_some(),
        })
    }

    /// What this node registers: its own kind and promotability, the log's priority once
    /// registered (`efm set-priority` is the operator's).
    fn registration(&self, st: &ClusterState, me: SocketAddr) -> (NodeInfo, bool) {
        let registered = st.nodes.get(&me).copied();
        let info = NodeInfo { priority: registered.map_or(self.info.priority, |r| r.priority), ..self.info };
        (info, registered == Some(info))
    }

    /// The completions and operator requests since the last cycle.
    fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            events.push(e);
        }
        while let Ok(RuntimeRequest::Resume { db, reply }) = self.owner.requests.try_recv() {
            self.next_request += 1;
            self.replies.insert(self.next_request, reply);
            let lsn = db.lsn().map_or(0, |l| l.0);
            events.push(super::monitoring::resume_event(self.next_request, local_db(&db, lsn)));
        }
        events
    }

    /// One cycle: read the inputs, decide, make the kernel match, execute the actions, publish
    /// the outputs. Returns what to put into this cycle's PINGs (flags, epoch, endorse target)
    /// and the outcome.
    #[expect(clippy::result_large_err, reason = "a datapath error is logged and the loop goes on")]
    pub fn cycle(&mut self, dp: &mut Datapath, now_ns: u64) -> Result<(Desired, Outcome), DatapathError> {
        // ---- Inputs, read once. Completions and requests before the facts they depend on:
        // their senders had the database view updated first (`DbReport`, answered), so the
        // reads below see it. ----
        let st = self.coord.state().borrow().clone();
        let events = self.drain();
        let (me, started_unix_ms) = (self.facts.id.me, self.facts.id.started_unix_ms);
        let db = self.facts.db.borrow().view.clone();
        let peers_h = self.facts.peers.borrow().clone();
        let wal = *self.facts.wal.borrow();
        let custom_failed = self.facts.custom_monitor.borrow().clone();
        let lease = dp.lease()?;
        let committed = Self::committed_view(&st, me, self.cfg.auto_failover);
        let peers: Vec<PeerView> = peers_h.iter().map(peer_view).collect();
        let ping_failed = self.ping_failed(me, &peers_h);
        // The kernel counts endorsements from the voters only (the quorum's members).
        let allowed: BTreeSet<SocketAddr> = st.voters();
        let local = local_db(&db, localdb::fresh_lsn(wal, now_ns, self.cfg.heartbeat_interval));
        let span = tracing::info_span!(
            "ha_cycle",
            epoch = st.epoch,
            role = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let _entered = span.enter();

        // ---- Decide. ----
        let step = self.engine.step(&Inputs {
            now_ns,
            committed: committed.as_ref(),
            allowed: &allowed,
            registered: self.registration(&st, me).1,
            is_leader: self.coord.is_leader(),
            peers: &peers,
            db: local,
            db_error: db.error.as_deref(),
            custom_monitor_failed: custom_failed.as_deref(),
            stop_cluster: st.stopped_at_unix_ms.is_some_and(|t| t >= started_unix_ms),
            kernel: KernelState {
                fence: self.last_fence,
                deadline_ns: lease.deadline_ns,
                max_epoch_seen: lease.max_epoch_seen,
            },
            events: &events,
            ping_failed: &ping_failed,
        });
        span.record("role", role_name(step.desired.ping_flags));
        span.record("outcome", step.outcome.kind());

        // ---- Execute: the kernel first, then the actions in the engine's order. ----
        let fence = self.write_fence(dp, &step.desired, step.db.lsn)?;
        let mut exit = false;
        for a in step.actions.iter().cloned() {
            exit |= matches!(a, Action::Exit);
            self.execute(a, dp, &st, me, &peers_h);
        }

        // ---- Outputs, written in one place. ----
        let lease = dp.lease()?;
        self.publish(&st, &step, &fence, &lease, now_ns, exit);
        Ok((step.desired, step.outcome))
    }

    /// The nodes whose last `ping.server.ip` check failed: this one (its own check, started
    /// here on the first cycle) and the peers whose agents say so in their PINGs.
    fn ping_failed(&mut self, me: SocketAddr, peers: &[PeerEntry]) -> BTreeSet<SocketAddr> {
        if !self.watchers_started {
            self.watchers_started = true;
            tokio::spawn(watch_lock_file(self.cfg.clone()));
        }
        if self.ping_server.is_none() && self.cfg.ping_server_ip.is_some() && !self.cfg.is_witness {
            let (tx, rx) = tokio::sync::watch::channel(None);
            tokio::spawn(ping_server_loop(self.cfg.clone(), tx));
            self.ping_server = Some(rx);
        }
        let own_failed = self.ping_server.as_ref().is_some_and(|rx| *rx.borrow() == Some(false));
        peers
            .iter()
            .filter(|p| p.health.is_some_and(|h| h.verdict == Verdict::Alive && h.flags & FLAG_PING_SERVER_FAILED != 0))
            .map(|p| p.addr)
            .chain(own_failed.then_some(me))
            .collect()
    }

    /// Writes `EFM_FENCE` when the desired state differs from what the kernel holds.
    #[expect(clippy::result_large_err, reason = "a datapath error is logged and the loop goes on")]
    fn write_fence(&mut self, dp: &mut Datapath, d: &Desired, lsn: u64) -> Result<FenceState, DatapathError> {
        let reset = if self.cfg.fence_mode == FenceMode::Reset { FENCE_RESET } else { 0 };
        let fence = d.fence_state(reset, self.cfg.lease_timeout, lsn);
        if self.last_fence != Some(fence) {
            dp.set_fence(&fence)?;
            if self.last_fence.is_none_or(|f| f.flags != fence.flags || f.epoch != fence.epoch) {
                tracing::info!(
                    fenced = d.fenced,
                    lease = d.lease_enforced,
                    k = fence.lease_k,
                    epoch = fence.epoch,
                    "kernel fence state"
                );
            }
            self.last_fence = Some(fence);
        }
        Ok(fence)
    }

    /// The cycle's results for status, reports and the main loop.
    fn publish(
        &mut self,
        st: &ClusterState,
        step: &Step,
        fence: &FenceState,
        lease: &efm_common::maps::LeaseState,
        now_ns: u64,
        exit: bool,
    ) {
        let lease_left = if step.desired.lease_enforced && step.desired.lease_k > 0 {
            lease.deadline_ns.saturating_sub(now_ns)
        } else {
            u64::MAX
        };
        let kernel = KernelView {
            fenced: step.desired.fenced,
            lease_enforced: step.desired.lease_enforced,
            lease_left_ms: if lease_left == u64::MAX { 0 } else { lease_left / 1_000_000 },
            epoch: fence.epoch,
            max_epoch_seen: lease.max_epoch_seen,
            serving: serves(fence_reasons(fence, lease, now_ns)),
        };
        if self.last_outcome.as_ref() != Some(&step.outcome) {
            tracing::info!(outcome = %step.outcome, "ha");
            self.last_outcome = Some(step.outcome.clone());
        }
        let was_suspended = self.owner.status.borrow().suspended.is_some();
        match (was_suspended, &step.suspended) {
            (false, Some(sus)) => {
                tracing::warn!(reason = %sus.reason, "monitoring of the local database suspended: the node stays idle until `efm resume`");
            }
            (true, None) => tracing::info!("monitoring of the local database resumed"),
            _ => {}
        }
        let suspended = step.suspended.as_ref().map(|sus| Suspension {
            reason: sus.reason.clone(),
            kind: match sus.kind {
                super::SuspendKind::Startup => SuspendKind::Startup,
                super::SuspendKind::Failure => SuspendKind::Failure,
            },
            since: Instant::now()
                .checked_sub(Duration::from_nanos(now_ns.saturating_sub(sus.since_ns)))
                .unwrap_or_else(Instant::now),
        });
        self.owner.status.send_replace(Status {
            epoch: st.epoch,
            outcome: Some(step.outcome.to_string()),
            kernel,
            suspended,
            committed_primary: st.primary,
            leader: self.coord.leader(),
        });
        if exit {
            self.owner.stop.send_replace(true);
        }
    }

    /// Executes one action.
    fn execute(&mut self, action: Action, dp: &mut Datapath, st: &ClusterState, me: SocketAddr, peers: &[PeerEntry]) {
        match action {
            Action::Propose(Proposal::Vote { voter, epoch }) => self.vote(voter, epoch),
            Action::Propose(p) => self.propose(to_command(p, st)),
            Action::Register => self.propose(Command::Register { node: me, info: self.registration(st, me).0 }),
            Action::PromoteLocal { epoch, old_primary } => self.promote(epoch, old_primary, st, me),
            Action::PrimaryDbFailed { epoch, stop } => self.primary_db_failed(epoch, stop, me),
            Action::DemoteLocal { epoch, primary, stop } => self.demote(epoch, primary, stop, me),
            Action::PrimaryIsolated { epoch, stop } => self.primary_isolated(epoch, stop, me),
            Action::Follow { primary, epoch } => self.follow(primary, epoch, me),
            Action::HandOver { epoch, to, demote } => self.hand_over(epoch, to, demote),
            Action::Rejoin { epoch, primary, source } => self.rejoin(epoch, primary, source),
            Action::RemotePrePromotion { new_primary, old_primary } => {
                self.hook(Hook::RemotePrePromotion, promotion_subst(new_primary, old_primary));
            }
            Action::RemotePostPromotion { new_primary, old_primary } => {
                self.hook(Hook::RemotePostPromotion, promotion_subst(new_primary, old_primary));
            }
            Action::LoadBalancer { attach, node, primary } => self.load_balancer(attach, node, primary, me),
            Action::CheckRemoteDb { node } => self.check_remote(node),
            Action::SetPeerTable { members } => {
                if let Err(e) = Self::set_peer_table(dp, &members, peers) {
                    tracing::error!(error = %e, "writing the kernel peer table failed; retrying next cycle");
                    let _ = self.events_tx.send(Event::PeerTableFailed);
                }
            }
            Action::EndSessions { members_spared, why } => {
                if let Some(ender) = &self.sessions {
                    ender.end_now(members_spared, why);
                }
            }
            Action::Vip { assign } => self.vip(assign),
            Action::ProbeVip => self.probe_vip(),
            Action::StandbyDbFailed => self.hook(Hook::DbFailure, Substitutions::default()),
            Action::AnnounceVip => self.announce_vip(),
            Action::Resumed { how } => {
                let cfg = self.cfg.clone();
                tokio::spawn(async move { resumed(&cfg, me, how).await });
            }
            Action::AnswerResume { id, result } => {
                if let Some(tx) = self.replies.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Action::Notify(event) => notify(&self.cfg, event),
            Action::Exit => tracing::warn!("efm stop-cluster: this agent exits now; the database is left as it is"),
        }
    }

    fn propose(&self, cmd: Command) {
        let coord = self.coord.clone();
        tokio::spawn(async move {
            match coord.propose(cmd.clone()).await {
                Ok(r) => tracing::info!(?cmd, result = ?r, "proposal committed"),
                Err(e) => tracing::warn!(?cmd, error = %e, "proposal failed"),
            }
        });
    }

    /// Records the vote durably on the blocking pool (never on the heartbeat loop), then
    /// proposes it. Without the record a restart could endorse this epoch again: no vote then
    /// (the engine proposes it again a second later).
    fn vote(&self, voter: SocketAddr, epoch: u64) {
        let (coord, file, cfg) = (self.coord.clone(), self.voted_file.clone(), self.cfg.clone());
        tokio::spawn(async move {
            let recorded = tokio::task::spawn_blocking({
                let file = file.clone();
                move || record_vote(&file, epoch)
            })
            .await;
            match recorded {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    notify(
                        &cfg,
                        crate::notify::Event::UnexpectedError {
                            error: format!(
                                "the vote against epoch {epoch} could not be recorded in {}: {e}; it is not proposed until it can be",
                                file.display()
                            ),
                        },
                    );
                    return tracing::error!(epoch, error = %e, file = %file.display(), "cannot record the vote; not proposing it");
                }
                Err(e) => {
                    return tracing::error!(epoch, error = %e, "recording the vote did not finish; not proposing it")
                }
            }
            let cmd = Command::Vote { voter, epoch };
            match coord.propose(cmd.clone()).await {
                Ok(r) => tracing::info!(?cmd, result = ?r, "proposal committed"),
                Err(e) => tracing::warn!(?cmd, error = %e, "proposal failed"),
            }
        });
    }

    fn promote(&self, epoch: u64, old: Option<SocketAddr>, st: &ClusterState, me: SocketAddr) {
        let (cfg, config_dir, done) = (self.cfg.clone(), self.config_dir.clone(), self.events_tx.clone());
        let promotion = st.history.last().filter(|h| h.epoch == epoch && h.node == me).cloned();
        let facts = self.facts.clone();
        tokio::spawn(async move {
            let res = promote_local(&cfg, &config_dir, me, old).await;
            let reason = match res {
                Ok(took) => {
                    tracing::info!(epoch, took_ms = took.as_millis(), "promoted the local database");
                    // pg_promote() confirmed it left recovery: the owner of the database view
                    // applies it (without waiting for the next local.period check) before the
                    // engine hears of the promotion.
                    if let Err(e) = facts.report_db(DbUpdate::Promoted).await {
                        tracing::warn!(error = %e, "the promotion reaches the local database view only at its next check");
                    }
                    let _ = done.send(Event::Promoted { epoch });
                    None
                }
                Err(reason) => {
                    tracing::error!(epoch, %reason, "promotion failed; staying fenced");
                    notify(&cfg, crate::notify::Event::PromotionFailed { error: reason.clone() });
                    let _ = done.send(Event::PromotionFailed { epoch, reason: reason.clone() });
                    Some(reason)
                }
            };
            if reason.is_some() {
                return;
            }
            run_hook(&cfg, Hook::PostPromotion, &promotion_subst(me, old)).await;
            match &promotion {
                Some(p) if p.quiet => {}
                Some(p) if p.switchover => notify(
                    &cfg,
                    crate::notify::Event::SwitchoverCompleted {
                        old_primary: old.map_or_else(String::new, |o| o.to_string()),
                        new_primary: me.to_string(),
                    },
                ),
                _ => notify(
                    &cfg,
                    crate::notify::Event::FailoverCompleted {
                        old_primary: old.map(|o| o.to_string()),
                        new_primary: me.to_string(),
                    },
                ),
            }
        });
    }

    /// A task that stops the database (after the session round the fence started, bounded),
    /// reporting [`Event::DbStopDone`] however it ends.
    fn stop_database(&self, why: &'static str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (cfg, sessions, done) = (self.cfg.clone(), self.sessions.clone(), StopDone(self.events_tx.clone()));
        async move {
            let _done = done;
            if let Some(s) = sessions {
                s.settled(SESSIONS_SETTLE).await;
            }
            match control::DbControl::from_config(&cfg) {
                Ok(c) => match c.stop().await {
                    Ok(()) => tracing::info!(why, "database stopped; the VIP may go"),
                    Err(e) => tracing::warn!(why, error = %e, "stopping the database failed"),
                },
                Err(e) => tracing::warn!(why, error = %e, "cannot stop the database"),
            }
        }
    }

    fn primary_db_failed(&self, epoch: u64, stop: bool, me: SocketAddr) {
        let cfg = self.cfg.clone();
        let stopping = stop.then(|| self.stop_database("failed primary"));
        tokio::spawn(async move {
            if let Err(e) = write_standby_signal(&cfg).await {
                tracing::error!(error = %e, "could not mark the failed primary as a standby");
            }
            if let Some(s) = stopping {
                s.await;
            }
            run_hook(
                &cfg,
                Hook::DbFailure,
                &Substitutions { failed_primary: Some(me.ip().to_string()), ..Substitutions::default() },
            )
            .await;
            tracing::info!(epoch, "failed primary database handled");
        });
    }

    fn demote(&self, epoch: u64, primary: Option<SocketAddr>, stop: bool, me: SocketAddr) {
        let (cfg, config_dir) = (self.cfg.clone(), self.config_dir.clone());
        let stopping = stop.then(|| self.stop_database("old primary of an earlier epoch"));
        tokio::spawn(async move {
            if let Some(p) = primary {
                // `standby.signal` and the configuration files: on the blocking pool.
                let res = match upstream(&cfg, &config_dir, p).await {
                    Ok(up) => {
                        let c = cfg.clone();
                        tokio::task::spawn_blocking(move || demote_local(&c, &up))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))
                    }
                    Err(e) => Err(e),
                };
                match res {
                    Ok(()) => tracing::info!(epoch, new_primary = %p, "old primary demoted: it restarts as a standby"),
                    Err(e) => tracing::error!(epoch, error = %e, "demoting the old primary failed; it stays fenced"),
                }
            }
            if let Some(s) = stopping {
                s.await;
            }
            let subst = Substitutions {
                failed_primary: Some(me.ip().to_string()),
                new_primary: primary.map(|p| p.ip().to_string()),
                ..Substitutions::default()
            };
            run_hook(&cfg, Hook::PrimaryIsolated, &subst).await;
        });
    }

    fn primary_isolated(&self, epoch: u64, stop: bool, me: SocketAddr) {
        let cfg = self.cfg.clone();
        let stopping = stop.then(|| self.stop_database("isolated primary"));
        tokio::spawn(async move {
            if let Some(s) = stopping {
                s.await;
            }
            run_hook(
                &cfg,
                Hook::PrimaryIsolated,
                &Substitutions { failed_primary: Some(me.ip().to_string()), ..Substitutions::default() },
            )
            .await;
            tracing::warn!(epoch, "isolated primary: fenced, sessions ended, database handled, VIP released after it");
        });
    }

    /// Points the standby at the new primary. A restart that does not bring the database back
    /// within [`RESUME_WAIT`] is EFM's "Resume timed out"; a reconfiguration that fails is an
    /// unexpected error (the standby keeps its old settings; `efm resume` or a restart of the
    /// agent tries again).
    fn follow(&self, primary: SocketAddr, epoch: u64, me: SocketAddr) {
        let (cfg, config_dir, mut db) = (self.cfg.clone(), self.config_dir.clone(), self.facts.db.clone());
        tokio::spawn(async move {
            match follow(&cfg, &config_dir, me, primary).await {
                Ok(how) => {
                    tracing::info!(epoch, %primary, %how, "standby follows the new primary");
                    if how == "Restart" {
                        let back = tokio::time::timeout(RESUME_WAIT, db.wait_for(|d| d.view.up == Some(true))).await;
                        if !matches!(back, Ok(Ok(_))) {
                            tracing::error!(epoch, %primary, "the restarted standby did not come back up");
                            notify(&cfg, crate::notify::Event::ResumeTimedOut);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(epoch, %primary, error = %e, "reconfiguring the standby failed");
                    notify(
                        &cfg,
                        crate::notify::Event::UnexpectedError {
                            error: format!("this standby could not be pointed at the new primary {primary}: {e}"),
                        },
                    );
                }
            }
        });
    }

    fn hand_over(&self, epoch: u64, to: SocketAddr, demote: bool) {
        tracing::warn!(epoch, %to, demote, "operator hand-over: clients are fenced off this primary");
        if !demote {
            return;
        }
        let (cfg, sessions, done, stopped) =
            (self.cfg.clone(), self.sessions.clone(), self.events_tx.clone(), StopDone(self.events_tx.clone()));
        tokio::spawn(async move {
            let _stopped = stopped;
            if let Some(s) = sessions {
                s.settled(SESSIONS_SETTLE).await;
            }
            let res = match control::DbControl::from_config(&cfg) {
                Ok(c) => c.stop().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = done.send(match res {
                Ok(()) => {
                    tracing::info!(epoch, "switchover: database stopped cleanly; its WAL is on the standbys");
                    Event::HandedOver { epoch }
                }
                Err(reason) => Event::HandOverFailed { epoch, reason },
            });
        });
    }

    fn rejoin(&self, epoch: u64, primary: SocketAddr, source: Option<SocketAddr>) {
        let (cfg, config_dir, done) = (self.cfg.clone(), self.config_dir.clone(), self.events_tx.clone());
        tokio::spawn(async move {
            let _ = done.send(match rejoin(&cfg, &config_dir, primary, source).await {
                Ok(()) => {
                    tracing::info!(epoch, %primary, "switchover: the old primary restarted as a standby of the new one");
                    Event::Rejoined { epoch }
                }
                Err(reason) => {
                    tracing::error!(epoch, %primary, %reason, "switchover: the old primary could not rejoin as a standby");
                    Event::RejoinFailed { epoch, reason }
                }
            });
        });
    }

    fn hook(&self, hook: Hook, subst: Substitutions) {
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
            run_hook(&cfg, hook, &subst).await;
        });
    }

    /// `%h` is the node's address, `%t` its type (`p` primary, `s` standby).
    fn load_balancer(&self, attach: bool, node: SocketAddr, primary: bool, me: SocketAddr) {
        if node != me {
            tracing::warn!(peer = %node, "detach.on.agent.failure: detaching the node whose agent failed");
        }
        let hook = if attach { Hook::LoadBalancerAttach } else { Hook::LoadBalancerDetach };
        let t = if primary { "p" } else { "s" };
        self.hook(
            hook,
            Substitutions {
                host: Some(node.ip().to_string()),
                node_type: Some(t.to_owned()),
                ..Substitutions::default()
            },
        );
    }

    fn check_remote(&self, node: SocketAddr) {
        let (cfg, config_dir, done) = (self.cfg.clone(), self.config_dir.clone(), self.events_tx.clone());
        tokio::spawn(async move {
            // A server that answers, even with a refused login or "too many clients", runs: the
            // check reached it (`DbError::server_answered`; see `ha::confirm`).
            let (reachable, error) = match localdb::target(&cfg, &config_dir, &node.ip().to_string()) {
                Ok(t) => match postgres::remote_check(&t, cfg.remote_timeout).await {
                    Ok(_) => (true, None),
                    Err(e) => (e.server_answered(), Some(e.to_string())),
                },
                Err(e) => (false, Some(e)),
            };
            tracing::info!(%node, reachable, error = error.as_deref().unwrap_or(""), "checked the node's database from here");
            let _ = done.send(Event::RemoteChecked { node, reachable });
        });
    }

    #[expect(clippy::result_large_err, reason = "a datapath error is logged and the loop goes on")]
    fn set_peer_table(dp: &mut Datapath, members: &[SocketAddr], peers: &[PeerEntry]) -> Result<(), DatapathError> {
        let table: Vec<crate::datapath::Peer> = peers
            .iter()
            .filter(|p| members.contains(&p.addr))
            .map(|p| crate::datapath::Peer { node_id: p.node_id, slot: p.slot, addrs: vec![p.addr.ip()] })
            .collect();
        dp.set_peers(&table)?;
        tracing::info!(peers = ?members, "kernel peer table follows the voting members");
        Ok(())
    }

    fn vip(&self, assign: bool) {
        let (Some(addr), Some(prefix)) = (self.cfg.virtual_ip, self.cfg.virtual_ip_prefix) else { return };
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        // EFM 2.0's alias form (`eth0:0`): the address goes on the base interface with that label.
        let label = self.cfg.virtual_ip_label.clone();
        let done = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let res = if assign {
                vip::assign_labeled(&iface, label.as_deref(), addr, prefix, &vip::Announce::default())
                    .map(|a| format!("{a:?}"))
            } else {
                vip::release(&iface, addr, prefix).map(|r| format!("{r:?}"))
            };
            let ok = match res {
                Ok(how) => {
                    tracing::info!(vip = %addr, %iface, assigned = assign, %how, "VIP");
                    true
                }
                Err(e) => {
                    tracing::error!(vip = %addr, %iface, error = %e, "VIP change failed; retrying next cycle");
                    false
                }
            };
            let _ = done.send(Event::VipDone { assign, ok });
        });
    }

    /// `check.vip.before.promotion`: an ARP probe (IPv4) or neighbour solicitation (IPv6) for
    /// the VIP from this node's interface, 300 ms for an answer, on the blocking pool.
    fn probe_vip(&self) {
        let done = self.events_tx.clone();
        let Some(addr) = self.cfg.virtual_ip else {
            let _ = done.send(Event::VipProbed { holder: None });
            return;
        };
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        tokio::task::spawn_blocking(move || {
            let holder = match vip::probe_in_use(&iface, addr, Duration::from_millis(300)) {
                Ok(Some(mac)) => {
                    let mac = vip::fmt_mac(mac);
                    tracing::warn!(vip = %addr, holder = %mac, "check.vip.before.promotion: another host answers for the VIP; no promotion while it does");
                    Some(mac)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(vip = %addr, %iface, error = %e, "check.vip.before.promotion: the VIP could not be probed; promoting (the old primary's lease has lapsed)");
                    None
                }
            };
            let _ = done.send(Event::VipProbed { holder });
        });
    }

    fn announce_vip(&self) {
        let Some(addr) = self.cfg.virtual_ip else { return };
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        tokio::task::spawn_blocking(move || {
            let once = vip::Announce { count: 1, interval: Duration::from_millis(1) };
            if let Err(e) = vip::announce(&iface, addr, &once) {
                tracing::debug!(vip = %addr, error = %e, "re-announcing the VIP failed");
            }
        });
    }
}

/// A peer as the detector and its PINGs describe it.
fn peer_view(p: &PeerEntry) -> PeerView {
    let h = p.health;
    let flags = h.map_or(0, |h| h.flags);
    PeerView {
        addr: p.addr,
        alive: h.is_some_and(|h| h.verdict == Verdict::Alive),
        agent_age: h.and_then(|h| h.agent_age),
        role: PeerRole::from_bits(flags & ROLE_MASK),
        epoch: h.map_or(0, |h| h.epoch),
        db_up: flags & FLAG_DB_UP != 0,
        db_check: flags & FLAG_DB_CHECK != 0,
        primary_db: super::confirm::primary_db_flag(flags),
        fenced: flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0,
        lsn: h.map_or(0, |h| h.lsn),
        node_age: h.and_then(|h| h.node_age),
        kernel: h.filter(|h| h.node_age.is_some()).map_or_else(KernelPong::default, |h| KernelPong {
            role: PeerRole::from_bits(h.pong_flags & ROLE_MASK),
            epoch: h.pong_epoch,
            fenced: h.pong_flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0,
        }),
    }
}

fn role_name(flags: u16) -> &'static str {
    match PeerRole::from_bits(flags) {
        PeerRole::Primary => "primary",
        PeerRole::Standby => "standby",
        PeerRole::Witness => "witness",
        PeerRole::Idle => "idle",
    }
}

fn promotion_subst(new_primary: SocketAddr, old_primary: Option<SocketAddr>) -> Substitutions {
    Substitutions {
        new_primary: Some(new_primary.ip().to_string()),
        failed_primary: old_primary.map(|o| o.ip().to_string()),
        ..Substitutions::default()
    }
}

/// Records `epoch` as voted against, durably (`files::write_atomic`: file and directory
/// synced). Blocking: runs on the blocking pool.
fn record_vote(voted_file: &std::path::Path, epoch: u64) -> std::io::Result<()> {
    if let Some(dir) = voted_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!("{epoch}\n");
    crate::files::write_atomic(voted_file, text.as_bytes(), crate::files::WriteOptions::private().mode(0o644))?;
    Ok(())
}

/// `script.resumed` and the notification after monitoring resumed.
pub async fn resumed(cfg: &Config, me: SocketAddr, how: &str) {
    tracing::info!(%me, how, "monitoring resumed");
    notify(cfg, crate::notify::Event::Resumed);
    run_hook(cfg, Hook::Resumed, &Substitutions::default()).await;
}

fn to_command(p: Proposal, st: &ClusterState) -> Command {
    match p {
        Proposal::SetPrimary { node, expected_epoch } => Command::SetPrimary { node, expected_epoch },
        Proposal::Vote { voter, epoch } => Command::Vote { voter, epoch },
        Proposal::ClearSwitchover => Command::ClearSwitchover,
        Proposal::Promote { candidate, expected_epoch, lsn, reason } => Command::Promote {
            candidate,
            expected_epoch,
            lsn,
            timeline: st.history.last().map_or(1, |h| h.timeline + 1),
            at_unix_ms: u64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            )
            .unwrap_or(0),
            reason,
        },
    }
}

/// Runs `hook` if configured (as `script.user`, killed after `script.timeout`) and sends EFM's
/// notification about it: "Executed ..." (INFO) or "... failed" (SEVERE) with the exit value and
/// the output. Returns whether it succeeded (`None`: not configured). Never blocks the HA loop:
/// callers run it in a task.
pub async fn run_hook(cfg: &Config, hook: Hook, subst: &Substitutions) -> Option<bool> {
    let line = hook.command_line(cfg)?;
    let res = ScriptRunner::new().run(hook, line, subst, cfg.script_timeout, cfg.script_user.as_deref()).await;
    let ok = res.as_ref().is_ok_and(crate::scripts::ScriptOutcome::success);
    if !ok {
        tracing::warn!(?hook, "script failed");
    }
    if let Some(event) = crate::notify::Event::for_script(hook, line, &res) {
        notify(cfg, event);
    }
    Some(ok)
}

/// Sends a notification (see [`crate::notify`]): logged at once, delivered to
/// `script.notification` and by mail in the background.
pub fn notify(cfg: &Config, event: crate::notify::Event) {
    crate::notify::emit(cfg, event);
}
