//! Runs the HA engine inside the agent: builds [`Inputs`] from the committed state, the detector
//! and the local database every cycle, makes the kernel and the VIP match [`Desired`], and
//! carries out [`Action`]s as async tasks so the loop never blocks (promotion, demotion,
//! following, scripts, proposals). Work progress comes back through [`Work`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use efm_common::{
    maps::{FenceState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_MEMBERS_EXEMPT, FENCE_RESET},
    serving::{exempt_applies, fence_reasons, serves, EXEMPT_MEMBER, REASON_EPOCH, REASON_LAPSED},
    wire::{FLAG_DB_UP, FLAG_FENCED, FLAG_LEASE_LAPSED, ROLE_MASK},
};

use super::{Action, Committed, Desired, Engine, Handover, Inputs, LocalDb, NodeMeta, Outcome, PeerRole, PeerView, Proposal, Work};
use crate::{
    agent::{lock, Shared},
    config::{Config, FenceMode},
    coordination::{ClusterState, Command, Coordinator, NodeInfo, NodeKind},
    datapath::{Datapath, DatapathError},
    detector::Verdict,
    localdb,
    postgres::{self, control},
    scripts::{Hook, ScriptRunner, Substitutions},
    vip,
};

/// How long `pg_promote()` may take.
const PROMOTE_WAIT: Duration = Duration::from_mins(1);

/// Per peer: was its database reachable from here at the last check, and when that was.
type RemoteChecks = Arc<Mutex<HashMap<SocketAddr, (Option<bool>, Instant)>>>;

/// The engine plus what it needs between cycles.
pub struct HaRuntime {
    engine: Engine,
    coord: Arc<Coordinator>,
    cfg: Config,
    /// Where the password key lives (`<config-dir>/efm.key`).
    config_dir: PathBuf,
    iface: String,
    work: Arc<Mutex<Work>>,
    vip_held: Arc<Mutex<bool>>,
    vip_busy: Arc<Mutex<bool>>,
    /// Since when this node holds the VIP, and when it last re-announced it.
    vip_since: Option<Instant>,
    vip_announced: Option<Instant>,
    remote: RemoteChecks,
    last_fence: Option<FenceState>,
    last_outcome: Option<Outcome>,
    /// What this node registers in the log, and when it last proposed it.
    info: NodeInfo,
    register_proposed: Option<Instant>,
    /// `<state_dir>/<cluster>.voted`: the highest epoch this node voted against, written (and
    /// synced) before the vote is proposed, so a restarted agent never endorses it again.
    voted_file: PathBuf,
    /// The peer table last written to the kernel (only members the log allows).
    last_peers: Option<Vec<SocketAddr>>,
    /// Database stops and starts the agent makes itself (switchover, rejoin, following a new
    /// primary) in progress: a database going down then is not a failure.
    planned: Arc<std::sync::atomic::AtomicUsize>,
    /// The database's availability in the previous cycle (`None` if unknown), and whether
    /// there was a previous cycle.
    last_db_up: Option<bool>,
    db_seen: bool,
    /// Whether this node is in service (for `script.load.balancer.attach`/`detach`).
    lb_attached: Option<bool>,
    /// Peers this node detached from the load balancer after their agent failed.
    lb_detached_peers: std::collections::BTreeSet<SocketAddr>,
    /// (epoch, ns): this node started enforcing its lease for `epoch` and counts it as granted
    /// until `ns` (start + `lease.timeout`). The kernel's deadline may still be one from an
    /// earlier epoch of this node's; that one must not make a new primary look lapsed.
    lease_floor: Option<(u64, u64)>,
    /// When this agent saw `efm stop-cluster` committed.
    stop_seen: Option<Instant>,
    /// Ends the open client sessions when the kernel stops serving (not on a witness).
    sessions: Option<crate::sessions::Ender>,
    session_gate: crate::sessions::Tracker,
    /// Tasks stopping the database after the node stopped serving: the VIP is released only
    /// once they are done (kernel fence → end sessions → stop the database → release the VIP).
    db_stopping: Arc<std::sync::atomic::AtomicUsize>,
    vip_kept_logged: bool,
}

/// How long stopping the database waits for the sessions to be ended first.
const SESSIONS_SETTLE: Duration = Duration::from_secs(4);

/// What `reconcile_vip` does: `Some(true)` assign, `Some(false)` release, `None` nothing. A
/// release waits while the database is being stopped, so the backends' last words (and the
/// RSTs of ended sessions) leave from the address the clients know.
fn vip_change(held: bool, want: bool, db_stopping: usize) -> Option<bool> {
    match (held, want) {
        (true, false) if db_stopping > 0 => None,
        (h, w) if h != w => Some(w),
        _ => None,
    }
}

/// How long an agent keeps running after it saw `efm stop-cluster`.
const STOP_LINGER: Duration = Duration::from_millis(1_500);

/// Counts a planned database operation while alive.
struct Planned(Arc<std::sync::atomic::AtomicUsize>);

impl Planned {
    fn new(c: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for Planned {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HaRuntime {
    #[must_use]
    #[expect(clippy::too_many_arguments, reason = "built once at start-up from the agent's parts")]
    pub fn new(
        engine: Engine,
        coord: Arc<Coordinator>,
        cfg: Config,
        config_dir: PathBuf,
        iface: String,
        vip_held: bool,
        info: NodeInfo,
        state_dir: &std::path::Path,
    ) -> Self {
        let voted_file = state_dir.join(format!("{}.voted", cfg.cluster));
        let mut engine = engine;
        if let Some(e) = std::fs::read_to_string(&voted_file).ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            tracing::info!(epoch = e, "this node voted against epoch {e} before it restarted; it never endorses it again");
            engine.set_voted_floor(e);
        }
        Self {
            engine,
            coord,
            cfg,
            config_dir,
            iface,
            work: Arc::new(Mutex::new(Work::Idle)),
            vip_held: Arc::new(Mutex::new(vip_held)),
            vip_busy: Arc::new(Mutex::new(false)),
            vip_since: None,
            vip_announced: None,
            remote: Arc::new(Mutex::new(HashMap::new())),
            last_fence: None,
            last_outcome: None,
            info,
            register_proposed: None,
            voted_file,
            last_peers: None,
            planned: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            last_db_up: None,
            db_seen: false,
            lb_attached: None,
            lb_detached_peers: std::collections::BTreeSet::new(),
            lease_floor: None,
            stop_seen: None,
            sessions: None,
            session_gate: crate::sessions::Tracker::default(),
            db_stopping: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            vip_kept_logged: false,
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

    /// A guard that keeps the VIP while the database is being stopped, and a wait for the
    /// session ending that started with the fence: call both before stopping the database.
    fn db_stop_order(&self) -> (Planned, Option<crate::sessions::Ender>) {
        (Planned::new(&self.db_stopping), self.sessions.clone())
    }

    /// The PING endorsing the primary of `epoch` has been sent (see [`Engine::endorsement_sent`]).
    pub fn endorsement_sent(&mut self, epoch: u64, sent_ns: u64) {
        self.engine.endorsement_sent(epoch, sent_ns);
    }

    /// Until when this node counts its lease for `epoch` as granted: the kernel's deadline, but
    /// never before `lease.timeout` after it began enforcing the lease for that epoch (see
    /// `lease_floor`).
    fn granted_until(&self, epoch: u64, kernel_deadline_ns: u64) -> u64 {
        let floor = self.lease_floor.filter(|(e, _)| *e == epoch).map_or(0, |(_, t)| t);
        kernel_deadline_ns.max(floor)
    }

    /// Records `epoch` as voted against, durably, before the vote is proposed.
    fn record_vote(&self, epoch: u64) -> std::io::Result<()> {
        if let Some(dir) = self.voted_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = format!("{epoch}\n");
        crate::files::write_atomic(&self.voted_file, text.as_bytes(), crate::files::WriteOptions::private().mode(0o644))?;
        Ok(())
    }

    /// The committed state as the engine sees it; `None` while this node is not a member.
    #[must_use]
    pub fn committed_view(st: &ClusterState, me: SocketAddr, default_auto_failover: bool) -> Option<Committed> {
        if !st.allowed.contains(&me) {
            return None;
        }
        let nodes = st
            .allowed
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
        let handover = st.switchover.filter(|h| h.requested_epoch == st.epoch && Some(h.from) == st.primary).map(|h| Handover {
            from: h.from,
            to: h.to,
            demote: h.demote,
            quiet: h.quiet,
            source: h.source,
        });
        Some(Committed {
            epoch: st.epoch,
            primary: st.primary,
            previous_primary: st.previous_primary,
            handover,
            nodes,
            votes: st.votes.iter().copied().collect(),
            auto_failover: st.auto_failover_or(default_auto_failover) && !st.paused,
        })
    }

    /// One cycle: decide, then make the kernel and the VIP match and start the actions.
    /// Returns what to put into this cycle's PINGs: (flags, epoch, endorse target).
    #[expect(clippy::too_many_lines, reason = "one cycle in order: inputs, decision, kernel, VIP, actions")]
    #[expect(clippy::result_large_err, reason = "a datapath error is logged and the loop goes on")]
    pub fn cycle(
        &mut self,
        shared: &Arc<Mutex<Shared>>,
        dp: &mut Datapath,
        now_ns: u64,
    ) -> Result<(Desired, Outcome), DatapathError> {
        let st = self.coord.state().borrow().clone();
        let (me, db, peers_h, wal) = {
            let s = lock(shared);
            (s.me, s.db.clone(), s.peers.clone(), s.wal)
        };
        // A member announces itself (kind, priority, promotable) until the log shows it.
        // Once registered, the priority is the operator's (`efm set-priority`): re-registering
        // keeps the log's value.
        let registered = st.nodes.get(&me).copied();
        let info = NodeInfo { priority: registered.map_or(self.info.priority, |r| r.priority), ..self.info };
        if st.allowed.contains(&me)
            && registered != Some(info)
            && self.register_proposed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.register_proposed = Some(Instant::now());
            let (coord, cmd) = (self.coord.clone(), Command::Register { node: me, info });
            tokio::spawn(async move {
                if let Err(e) = coord.propose(cmd).await {
                    tracing::warn!(error = %e, "registering this node failed; retrying");
                }
            });
        }
        let committed = Self::committed_view(&st, me, self.cfg.auto_failover);
        let remote = self.remote.lock().map(|m| m.clone()).unwrap_or_default();
        let peers: Vec<PeerView> = peers_h
            .iter()
            .map(|p| {
                let h = p.health;
                let flags = h.map_or(0, |h| h.flags);
                PeerView {
                    addr: p.addr,
                    alive: h.is_some_and(|h| h.verdict == Verdict::Alive),
                    agent_age: h.and_then(|h| h.agent_age),
                    role: PeerRole::from_bits(flags & ROLE_MASK),
                    epoch: h.map_or(0, |h| h.epoch),
                    db_up: flags & FLAG_DB_UP != 0,
                    fenced: flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0,
                    lsn: h.map_or(0, |h| h.lsn),
                    // Only a fresh check counts (an old one may be about another epoch's
                    // primary on the same node).
                    db_reachable: remote.get(&p.addr).filter(|(_, t)| t.elapsed() < Duration::from_secs(3)).and_then(|(r, _)| *r),
                }
            })
            .collect();
        let work = self.work.lock().map(|w| w.clone()).unwrap_or_default();
        let suspended = self.track_monitoring(shared, &db, &st, &work);
        let local = LocalDb {
            up: db.up,
            in_recovery: db.info.as_ref().map(|i| i.in_recovery),
            failed: db.up == Some(false) || suspended,
            // The position read every half heartbeat (0 when older than two heartbeats), not
            // the `local.period` monitor's: the failover compares fresh positions.
            lsn: localdb::fresh_lsn(wal, now_ns, self.cfg.heartbeat_interval),
            timeline: db.info.as_ref().and_then(|i| i.timeline).unwrap_or(0),
        };
        // How long the kernel's enforced lease has been lapsed (as of the last cycle's settings).
        let lease_now = dp.lease()?;
        // The kernel's own rule (efm_common::serving), with the deadline held back to the lease
        // floor: an enforced lease with k = 0 counts as lapsed, as the kernel fails closed on it.
        let lease_lapsed_for = self.last_fence.and_then(|f| {
            let deadline = self.granted_until(f.epoch, lease_now.deadline_ns);
            let mut held = lease_now;
            held.deadline_ns = deadline;
            (fence_reasons(&f, &held, now_ns) & REASON_LAPSED != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(deadline)))
        });
        let mut step = self.engine.step(&Inputs {
            now_ns,
            committed: committed.as_ref(),
            is_leader: self.coord.is_leader(),
            peers: &peers,
            db: local,
            work: &work,
            lease_lapsed_for,
            max_epoch_seen: lease_now.max_epoch_seen,
        });
        // `efm stop-cluster`: the databases stay as they are. Nothing is started any more (an
        // agent whose peers exit first must not take that for an isolation and stop its
        // database), a serving primary no longer depends on endorsements, and the agent exits
        // a moment later, once the leader had time to tell every follower that the stop
        // committed (a leader exiting at once would strand them).
        let started_unix_ms = lock(shared).started_unix_ms;
        if st.stopped_at_unix_ms.is_some_and(|t| t >= started_unix_ms) {
            let seen = *self.stop_seen.get_or_insert_with(|| {
                tracing::warn!("efm stop-cluster: this agent exits shortly; the database is left as it is");
                Instant::now()
            });
            step.actions.clear();
            if !step.desired.fenced {
                step.desired.lease_enforced = false;
                step.desired.lease_k = 0;
            }
            if seen.elapsed() >= STOP_LINGER {
                lock(shared).stop_requested = true;
            }
        }
        // The kernel counts endorsements only from members the log allows (a node disallowed
        // while partitioned must not keep a primary's lease alive).
        if !st.allowed.is_empty() {
            let allowed: Vec<SocketAddr> = peers_h.iter().map(|p| p.addr).filter(|a| st.allowed.contains(a)).collect();
            if self.last_peers.as_ref() != Some(&allowed) {
                let table: Vec<crate::datapath::Peer> = peers_h
                    .iter()
                    .filter(|p| st.allowed.contains(&p.addr))
                    .map(|p| crate::datapath::Peer { node_id: p.node_id, slot: p.slot, addrs: vec![p.addr.ip()] })
                    .collect();
                dp.set_peers(&table)?;
                tracing::info!(peers = ?allowed, "kernel peer table follows the allowed members");
                self.last_peers = Some(allowed);
            }
        }

        // The kernel.
        let mut flags = if self.cfg.fence_mode == FenceMode::Reset { FENCE_RESET } else { 0 };
        if step.desired.fenced {
            flags |= FENCE_FENCED;
        }
        if step.desired.lease_enforced {
            flags |= FENCE_LEASE_ENFORCED;
        }
        if step.desired.members_exempt {
            flags |= FENCE_MEMBERS_EXEMPT;
        }
        let fence = FenceState {
            flags,
            role: u32::from(step.desired.ping_flags & ROLE_MASK),
            epoch: step.desired.epoch,
            lease_k: step.desired.lease_k,
            pad: 0,
            lease_timeout_ns: u64::try_from(self.cfg.lease_timeout.as_nanos()).unwrap_or(u64::MAX),
            lsn: local.lsn,
        };
        if step.desired.lease_enforced && self.lease_floor.is_none_or(|(e, _)| e != fence.epoch) {
            self.lease_floor = Some((fence.epoch, now_ns.saturating_add(fence.lease_timeout_ns)));
        }
        if self.last_fence != Some(fence) {
            dp.set_fence(&fence)?;
            if self.last_fence.is_none_or(|f| f.flags != fence.flags || f.epoch != fence.epoch) {
                tracing::info!(
                    fenced = step.desired.fenced,
                    lease = step.desired.lease_enforced,
                    k = fence.lease_k,
                    epoch = fence.epoch,
                    "kernel fence state"
                );
            }
            self.last_fence = Some(fence);
        }
        let lease = dp.lease()?;
        let lease_left = if step.desired.lease_enforced && step.desired.lease_k > 0 {
            lease.deadline_ns.saturating_sub(now_ns)
        } else {
            u64::MAX
        };
        // The kernel's own rule (efm_common::serving), once for the view and the session gate.
        let reasons = fence_reasons(&fence, &lease, now_ns);
        let kernel = crate::agent::KernelView {
            fenced: step.desired.fenced,
            lease_enforced: step.desired.lease_enforced,
            lease_left_ms: if lease_left == u64::MAX { 0 } else { lease_left / 1_000_000 },
            epoch: fence.epoch,
            max_epoch_seen: lease.max_epoch_seen,
            serving: serves(reasons),
        };
        // The kernel fence is written: end the open sessions it does not let through, before
        // any action below stops the database.
        if let Some(ender) = &self.sessions {
            // Members pass only while the explicit flag is the only reason and the agent asked
            // for it.
            let gate = crate::sessions::Gate {
                serving: serves(reasons),
                members_pass: serves(reasons) || exempt_applies(EXEMPT_MEMBER, reasons, fence.flags),
            };
            // A database known to be a standby has no writes to cut short: its read-only
            // sessions survive a moment of epoch fence while its log catches up.
            let standby = local.up == Some(true) && local.in_recovery == Some(true);
            if let Some(members_spared) = self.session_gate.observe(gate).filter(|_| !standby) {
                let why = if reasons & REASON_EPOCH != 0 {
                    "a newer epoch exists"
                } else if reasons & REASON_LAPSED != 0 {
                    "lease lapsed"
                } else {
                    "fenced"
                };
                ender.end_now(members_spared, why);
            }
        }
        {
            let mut s = lock(shared);
            s.epoch = st.epoch;
            s.outcome = Some(step.outcome.to_string());
            s.kernel = kernel;
        }
        self.load_balancer(&step.desired, &step.outcome, &peers, me);

        // DESIGN "Safety" (3): a primary whose lease was granted and has lapsed says so, so peers
        // that still hear it (but whose endorsements do not arrive) stop waiting on it. Never at
        // start-up: no lease was granted yet (deadline 0).
        let mut desired = step.desired;
        if desired.lease_enforced && lease.deadline_ns != 0 && now_ns > self.granted_until(fence.epoch, lease.deadline_ns) {
            desired.ping_flags |= efm_common::wire::FLAG_LEASE_LAPSED;
        }
        self.check_primary_db(&st, &peers);
        for a in step.actions.clone() {
            if let Action::Propose(Proposal::Vote { epoch, .. }) = a {
                if let Err(e) = self.record_vote(epoch) {
                    // Without the record a restart could endorse this epoch again: do not vote.
                    tracing::error!(epoch, error = %e, file = %self.voted_file.display(), "cannot record the vote; not proposing it");
                    continue;
                }
            }
            self.start(a, shared, &st);
        }
        // After the actions: one that stops the database holds the VIP until it is stopped.
        self.reconcile_vip(step.desired.vip);
        if self.last_outcome.as_ref() != Some(&step.outcome) {
            tracing::info!(outcome = %step.outcome, "ha");
            self.last_outcome = Some(step.outcome.clone());
        }
        Ok((desired, step.outcome))
    }

    fn reconcile_vip(&mut self, want: bool) {
        let (Some(addr), Some(prefix)) = (self.cfg.virtual_ip, self.cfg.virtual_ip_prefix) else { return };
        let held = self.vip_held.lock().is_ok_and(|h| *h);
        if held && want {
            self.reannounce_vip(addr);
            return;
        }
        if !held {
            self.vip_since = None;
        }
        let stopping = self.db_stopping.load(std::sync::atomic::Ordering::SeqCst);
        if vip_change(held, want, stopping).is_none() {
            if held && !want && !self.vip_kept_logged {
                self.vip_kept_logged = true;
                tracing::info!(vip = %addr, "keeping the VIP until the database has stopped");
            }
            return;
        }
        self.vip_kept_logged = false;
        {
            let Ok(mut busy) = self.vip_busy.lock() else { return };
            if *busy {
                return;
            }
            *busy = true;
        }
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        let (held_flag, busy_flag) = (self.vip_held.clone(), self.vip_busy.clone());
        let vip_cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || {
            let res = if want {
                vip::assign_labeled(&iface, vip_cfg.virtual_ip_label.as_deref(), addr, prefix, &vip::Announce::default()).map(|a| format!("{a:?}"))
            } else {
                vip::release(&iface, addr, prefix).map(|r| format!("{r:?}"))
            };
            match res {
                Ok(how) => {
                    tracing::info!(vip = %addr, %iface, assigned = want, %how, "VIP");
                    let vip = addr.to_string();
                    notify(&vip_cfg, if want { crate::notify::Event::AssigningVip { vip } } else { crate::notify::Event::ReleasingVip { vip } });
                    if let Ok(mut h) = held_flag.lock() {
                        *h = want;
                    }
                }
                Err(e) => tracing::error!(vip = %addr, %iface, error = %e, "VIP change failed; retrying next cycle"),
            }
            if let Ok(mut b) = busy_flag.lock() {
                *b = false;
            }
        });
    }

    /// Keeps announcing the VIP while holding it: neighbours ignore an ARP update within
    /// `locktime` (1 s) of the previous one, and a node whose agent died may still answer for the
    /// VIP; so a gratuitous ARP / unsolicited NA every second for the first 15 s, then every 10 s.
    fn reannounce_vip(&mut self, addr: std::net::IpAddr) {
        let since = *self.vip_since.get_or_insert_with(Instant::now);
        let every = if since.elapsed() < Duration::from_secs(15) { Duration::from_secs(1) } else { Duration::from_secs(10) };
        if self.vip_announced.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.vip_announced = Some(Instant::now());
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        tokio::task::spawn_blocking(move || {
            let once = vip::Announce { count: 1, interval: Duration::from_millis(1) };
            if let Err(e) = vip::announce(&iface, addr, &once) {
                tracing::debug!(vip = %addr, error = %e, "re-announcing the VIP failed");
            }
        });
    }

    /// EFM's monitoring states: a database failure (or a database that was not running when the
    /// agent started) suspends monitoring — the node stays fenced and idle — until `efm resume`,
    /// or, within `auto.resume.failure.period` / `auto.resume.startup.period`, until the database
    /// is back in a state the cluster accepts. A custom monitor failure counts as a database
    /// failure. Stops and starts the agent makes itself are not failures. Returns whether
    /// monitoring is suspended.
    fn track_monitoring(&mut self, shared: &Arc<Mutex<Shared>>, db: &localdb::DbView, st: &ClusterState, work: &Work) -> bool {
        if self.cfg.is_witness {
            return false;
        }
        let planned = self.planned.load(std::sync::atomic::Ordering::SeqCst) > 0
            || matches!(work, Work::HandingOver { .. } | Work::HandedOver { .. } | Work::Rejoining { .. });
        let prev = std::mem::replace(&mut self.last_db_up, db.up);
        let first = !std::mem::replace(&mut self.db_seen, true);
        let mut s = lock(shared);
        let custom_failed = s.custom_monitor_failed.is_some();
        if s.suspended.is_none() {
            let reason = match (prev, db.up) {
                _ if custom_failed => s.custom_monitor_failed.clone().map(|r| (format!("custom monitor: {r}"), crate::agent::SuspendKind::Failure)),
                _ if first && db.up != Some(true) => Some(("the database was not running when the agent started".to_owned(), crate::agent::SuspendKind::Startup)),
                (Some(true) | None, Some(false)) if !planned => Some((
                    format!("database failure: {}", db.error.as_deref().unwrap_or("it stopped answering")),
                    crate::agent::SuspendKind::Failure,
                )),
                _ => None,
            };
            if let Some((reason, kind)) = reason {
                tracing::warn!(%reason, "monitoring of the local database suspended: the node stays idle until `efm resume`");
                s.suspended = Some(crate::agent::Suspension { reason, kind, since: Instant::now() });
            }
        }
        let Some(sus) = s.suspended.clone() else { return false };
        let period = match sus.kind {
            crate::agent::SuspendKind::Startup => self.cfg.auto_resume_startup_period,
            crate::agent::SuspendKind::Failure => self.cfg.auto_resume_failure_period,
        };
        if !custom_failed && !period.is_zero() && sus.since.elapsed() <= period {
            if let Ok(msg) = crate::operator::resumable(&s.config, s.me, db, st, self.engine.voted_against(st.epoch)) {
                tracing::info!(%msg, "monitoring resumed automatically (auto.resume period)");
                s.suspended = None;
                let me = s.me;
                drop(s);
                let cfg = self.cfg.clone();
                tokio::spawn(async move { resumed(&cfg, me, "automatically").await });
                return false;
            }
        }
        true
    }

    /// `script.load.balancer.attach` when this node starts serving (primary, or standby with its
    /// database monitored), `detach` when it stops; with `detach.on.agent.failure`, the log's
    /// leader detaches a peer whose agent failed. `%h` is the node's address, `%t` its type
    /// (`p` primary, `s` standby).
    fn load_balancer(&mut self, desired: &Desired, outcome: &Outcome, peers: &[PeerView], me: SocketAddr) {
        if self.cfg.script_load_balancer_attach.is_none() && self.cfg.script_load_balancer_detach.is_none() {
            return;
        }
        let (in_service, kind) = match outcome {
            Outcome::Primary { .. } => (true, "p"),
            Outcome::Standby { .. } | Outcome::PrimarySuspect { .. } | Outcome::Voted { .. } => (!desired.fenced, "s"),
            Outcome::Witness | Outcome::NotJoined => return,
            _ => (false, if desired.ping_flags & ROLE_MASK == efm_common::wire::ROLE_PRIMARY { "p" } else { "s" }),
        };
        if self.lb_attached != Some(in_service) {
            // At start nothing is attached yet: only an attach is due.
            let first = self.lb_attached.is_none();
            self.lb_attached = Some(in_service);
            if !first || in_service {
                let hook = if in_service { Hook::LoadBalancerAttach } else { Hook::LoadBalancerDetach };
                let (cfg, node, t) = (self.cfg.clone(), me.ip().to_string(), kind.to_owned());
                tokio::spawn(async move {
                    run_hook(&cfg, hook, &Substitutions { host: Some(node), node_type: Some(t), ..Substitutions::default() }).await;
                });
            }
        }
        if self.cfg.detach_on_agent_failure && self.coord.is_leader() {
            for v in peers {
                if v.alive {
                    self.lb_detached_peers.remove(&v.addr);
                } else if v.agent_age.is_some() && self.lb_detached_peers.insert(v.addr) {
                    let (cfg, node) = (self.cfg.clone(), v.addr.ip().to_string());
                    let t = if v.role == PeerRole::Primary { "p" } else { "s" }.to_owned();
                    tracing::warn!(peer = %v.addr, "detach.on.agent.failure: detaching the node whose agent failed");
                    tokio::spawn(async move {
                        run_hook(&cfg, Hook::LoadBalancerDetach, &Substitutions { host: Some(node), node_type: Some(t), ..Substitutions::default() }).await;
                    });
                }
            }
        }
    }

    /// When the committed primary says its database is down, check it from here
    /// (`remote.timeout`), at most once a second.
    fn check_primary_db(&self, st: &ClusterState, peers: &[PeerView]) {
        let Some(p) = st.primary else { return };
        let Some(v) = peers.iter().find(|v| v.addr == p) else { return };
        if v.db_up || !v.alive {
            return;
        }
        let due = self.remote.lock().is_ok_and(|m| m.get(&p).is_none_or(|(_, t)| t.elapsed() >= Duration::from_secs(1)));
        if !due {
            return;
        }
        if let Ok(mut m) = self.remote.lock() {
            let prev = m.get(&p).and_then(|(r, _)| *r);
            m.insert(p, (prev, Instant::now()));
        }
        let (cfg, remote, config_dir) = (self.cfg.clone(), self.remote.clone(), self.config_dir.clone());
        tokio::spawn(async move {
            let reachable = match localdb::target(&cfg, &config_dir, &p.ip().to_string()) {
                Ok(t) => postgres::remote_check(&t, cfg.remote_timeout).await.is_ok(),
                Err(_) => false,
            };
            tracing::info!(primary = %p, reachable, "checked the primary's database from here");
            if let Ok(mut m) = remote.lock() {
                m.insert(p, (Some(reachable), Instant::now()));
            }
        });
    }

    #[expect(clippy::too_many_lines, reason = "one arm per action, each a small task")]
    fn start(&self, action: Action, shared: &Arc<Mutex<Shared>>, st: &ClusterState) {
        let me = lock(shared).me;
        let config_dir = self.config_dir.clone();
        let cfg = self.cfg.clone();
        match action {
            Action::Propose(p) => {
                let coord = self.coord.clone();
                let cmd = to_command(p, st);
                tokio::spawn(async move {
                    match coord.propose(cmd.clone()).await {
                        Ok(r) => tracing::info!(?cmd, result = ?r, "proposal committed"),
                        Err(e) => tracing::warn!(?cmd, error = %e, "proposal failed"),
                    }
                });
            }
            Action::PromoteLocal { epoch, old_primary } => {
                let work = self.work.clone();
                if let Ok(mut w) = work.lock() {
                    *w = Work::Promoting { epoch };
                }
                let old = old_primary.or(st.previous_primary).filter(|o| *o != me);
                let promotion = st.history.last().filter(|h| h.epoch == epoch && h.node == me).cloned();
                let iface = cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
                let shared = shared.clone();
                tokio::spawn(async move {
                    let res = promote_local(&cfg, &config_dir, me, old, &iface).await;
                    let next = match res {
                        Ok(took) => {
                            tracing::info!(epoch, took_ms = took.as_millis(), "promoted the local database");
                            // pg_promote() confirmed it left recovery: do not wait for the next
                            // local check (local.period) to know it.
                            let mut s = lock(&shared);
                            if let Some(info) = s.db.info.as_mut() {
                                info.in_recovery = false;
                            }
                            s.db.up = Some(true);
                            s.role = crate::agent::Role::Primary;
                            Work::Promoted { epoch }
                        }
                        Err(reason) => {
                            tracing::error!(epoch, %reason, "promotion failed; staying fenced");
                            notify(&cfg, crate::notify::Event::PromotionFailed { error: reason.clone() });
                            Work::PromotionFailed { epoch, reason }
                        }
                    };
                    let promoted = matches!(next, Work::Promoted { .. });
                    if let Ok(mut w) = work.lock() {
                        *w = next;
                    }
                    if promoted {
                        let subst = Substitutions { new_primary: Some(me.ip().to_string()), failed_primary: old.map(|o| o.ip().to_string()), ..Substitutions::default() };
                        run_hook(&cfg, Hook::PostPromotion, &subst).await;
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
                                crate::notify::Event::FailoverCompleted { old_primary: old.map(|o| o.to_string()), new_primary: me.to_string() },
                            ),
                        }
                    }
                });
            }
            Action::PrimaryDbFailed { epoch } => {
                let order = cfg.stop_failed_primary.then(|| self.db_stop_order());
                tokio::spawn(async move {
                    if let Err(e) = write_standby_signal(&cfg).await {
                        tracing::error!(error = %e, "could not mark the failed primary as a standby");
                    }
                    if let Some((_vip_kept, sessions)) = order {
                        if let Some(s) = sessions {
                            s.settled(SESSIONS_SETTLE).await;
                        }
                        if let Ok(c) = control::DbControl::from_config(&cfg) {
                            if let Err(e) = c.stop().await {
                                tracing::warn!(error = %e, "stopping the failed primary database");
                            }
                        }
                    }
                    run_hook(&cfg, Hook::DbFailure, &Substitutions { failed_primary: Some(me.ip().to_string()), ..Substitutions::default() }).await;
                    tracing::info!(epoch, "failed primary database handled");
                });
            }
            Action::DemoteLocal { epoch, primary } => {
                let order = cfg.stop_isolated_primary.then(|| self.db_stop_order());
                tokio::spawn(async move {
                    if let Some(p) = primary {
                        let res = demote_local(&cfg, &config_dir, p);
                        match res {
                            Ok(()) => tracing::info!(epoch, new_primary = %p, "old primary demoted: it restarts as a standby"),
                            Err(e) => tracing::error!(epoch, error = %e, "demoting the old primary failed; it stays fenced"),
                        }
                    }
                    if let Some((_vip_kept, sessions)) = order {
                        if let Some(s) = sessions {
                            s.settled(SESSIONS_SETTLE).await;
                        }
                        if let Ok(c) = control::DbControl::from_config(&cfg) {
                            let _ = c.stop().await;
                        }
                    }
                    run_hook(&cfg, Hook::PrimaryIsolated, &Substitutions { failed_primary: Some(me.ip().to_string()), new_primary: primary.map(|p| p.ip().to_string()), ..Substitutions::default() }).await;
                });
            }
            Action::Follow { primary, epoch } => {
                let db_upstream = lock(shared).db.info.as_ref().and_then(|i| i.upstream_host.clone());
                if db_upstream.as_deref() == Some(&primary.ip().to_string()) {
                    return;
                }
                tokio::spawn(async move {
                    match follow(&cfg, &config_dir, me, primary).await {
                        Ok(how) => tracing::info!(epoch, %primary, %how, "standby follows the new primary"),
                        Err(e) => tracing::error!(epoch, %primary, error = %e, "reconfiguring the standby failed"),
                    }
                });
            }
            Action::PrimaryIsolated { epoch } => {
                let order = cfg.stop_isolated_primary.then(|| self.db_stop_order());
                tokio::spawn(async move {
                    if let Some((vip_kept, sessions)) = order {
                        if let Some(s) = sessions {
                            s.settled(SESSIONS_SETTLE).await;
                        }
                        match control::DbControl::from_config(&cfg) {
                            Ok(c) => match c.stop().await {
                                Ok(()) => tracing::info!(epoch, "isolated primary: database stopped; the VIP goes next"),
                                Err(e) => tracing::warn!(error = %e, "stopping the isolated primary database"),
                            },
                            Err(e) => tracing::warn!(error = %e, "cannot stop the isolated primary database"),
                        }
                        drop(vip_kept);
                    }
                    run_hook(&cfg, Hook::PrimaryIsolated, &Substitutions { failed_primary: Some(me.ip().to_string()), ..Substitutions::default() }).await;
                    tracing::warn!(epoch, "isolated primary: fenced, sessions ended, database handled, VIP released after it");
                });
            }
            Action::Notify(event) => notify(&cfg, event),
            Action::HandOver { epoch, to, demote } => {
                let work = self.work.clone();
                let planned = Planned::new(&self.planned);
                let order = demote.then(|| self.db_stop_order());
                if let Ok(mut w) = work.lock() {
                    *w = if demote { Work::HandingOver { epoch } } else { Work::Idle };
                }
                tokio::spawn(async move {
                    let _planned = planned;
                    tracing::warn!(epoch, %to, demote, "operator hand-over: clients are fenced off this primary");
                    let Some((_vip_kept, sessions)) = order else { return };
                    if let Some(s) = sessions {
                        s.settled(SESSIONS_SETTLE).await;
                    }
                    let next = match control::DbControl::from_config(&cfg) {
                        Ok(c) => match c.stop().await {
                            Ok(()) => {
                                tracing::info!(epoch, "switchover: database stopped cleanly; its WAL is on the standbys");
                                Work::HandedOver { epoch }
                            }
                            Err(e) => Work::HandOverFailed { epoch, reason: e.to_string() },
                        },
                        Err(e) => Work::HandOverFailed { epoch, reason: e.to_string() },
                    };
                    if let Ok(mut w) = work.lock() {
                        *w = next;
                    }
                });
            }
            Action::Rejoin { epoch, primary, source } => {
                let work = self.work.clone();
                let planned = Planned::new(&self.planned);
                if let Ok(mut w) = work.lock() {
                    *w = Work::Rejoining { epoch };
                }
                tokio::spawn(async move {
                    let _planned = planned;
                    let res = rejoin(&cfg, &config_dir, primary, source).await;
                    let next = match res {
                        Ok(()) => {
                            tracing::info!(epoch, %primary, "switchover: the old primary restarted as a standby of the new one");
                            Work::Idle
                        }
                        Err(reason) => {
                            tracing::error!(epoch, %primary, %reason, "switchover: the old primary could not rejoin as a standby");
                            Work::RejoinFailed { epoch, reason }
                        }
                    };
                    // Give the local monitor a moment to see the database up before the
                    // planned window closes.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if let Ok(mut w) = work.lock() {
                        *w = next;
                    }
                });
            }
            Action::RemotePrePromotion { new_primary, old_primary } => {
                tokio::spawn(async move {
                    let subst = Substitutions { new_primary: Some(new_primary.ip().to_string()), failed_primary: old_primary.map(|o| o.ip().to_string()), ..Substitutions::default() };
                    run_hook(&cfg, Hook::RemotePrePromotion, &subst).await;
                });
            }
            Action::RemotePostPromotion { new_primary, old_primary } => {
                tokio::spawn(async move {
                    let subst = Substitutions { new_primary: Some(new_primary.ip().to_string()), failed_primary: old_primary.map(|o| o.ip().to_string()), ..Substitutions::default() };
                    run_hook(&cfg, Hook::RemotePostPromotion, &subst).await;
                });
            }
        }
    }
}

/// `script.resumed` and the notification after monitoring resumed.
pub async fn resumed(cfg: &Config, me: SocketAddr, how: &str) {
    tracing::info!(%me, how, "monitoring resumed");
    notify(cfg, crate::notify::Event::Resumed);
    run_hook(cfg, Hook::Resumed, &Substitutions::default()).await;
}

/// The stopped old primary becomes a standby of `primary` (`standby.signal` and
/// `primary_conninfo`, copied from `source`'s settings when given) and is started.
async fn rejoin(cfg: &Config, config_dir: &std::path::Path, primary: SocketAddr, source: Option<SocketAddr>) -> Result<(), String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let data = cfg.db_data_dir.clone().or_else(|| cfg.db_recovery_conf_dir.clone()).ok_or("db.data.dir is not set")?;
    let version = control::read_pg_version(&data).map_err(|e| e.to_string())?;
    let mut up = upstream(cfg, config_dir, primary)?;
    if let Some(src) = source {
        up.extra = source_settings(cfg, config_dir, src).await?;
    }
    control::demote_to_standby(&control, &data, version, &up).map_err(|e| e.to_string())?;
    control.start().await.map_err(|e| format!("starting the database as a standby: {e}"))
}

/// `-sourcenode`: the replication settings of the standby `src` that the old primary takes over
/// (everything in its `primary_conninfo` but the host and port, which name the new primary).
async fn source_settings(cfg: &Config, config_dir: &std::path::Path, src: SocketAddr) -> Result<Vec<(String, String)>, String> {
    let t = localdb::target(cfg, config_dir, &src.ip().to_string())?;
    // Retried for a moment: right after the promotion the source standby's kernel may have seen
    // the new epoch before its agent adopted it, and an epoch-fenced node refuses members too
    // (ARCHITECTURE.md, "The fence and the cluster's own nodes").
    let deadline = Instant::now() + cfg.remote_timeout.max(Duration::from_secs(3));
    let conninfo = loop {
        match postgres::setting(&t, "primary_conninfo", cfg.remote_timeout).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => return Err(format!("-sourcenode {src}: reading its primary_conninfo: {e}")),
            Err(e) => {
                tracing::debug!(%src, error = %e, "reading the source node's primary_conninfo failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    Ok(postgres::parse_conninfo(&conninfo)
        .into_iter()
        // The new primary's address, our credentials and this node's own application_name
        // (synchronous_standby_names may name it) are not the source's to give.
        .filter(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port" | "password" | "user" | "application_name"))
        .collect())
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
            at_unix_ms: u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())).unwrap_or(0),
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

async fn promote_local(cfg: &Config, config_dir: &std::path::Path, me: SocketAddr, old: Option<SocketAddr>, iface: &str) -> Result<Duration, String> {
    let start = Instant::now();
    if cfg.check_vip_before_promotion {
        if let Some(addr) = cfg.virtual_ip {
            let iface = iface.to_owned();
            let found = tokio::task::spawn_blocking(move || vip::probe_in_use(&iface, addr, Duration::from_millis(300)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if let Some(mac) = found {
                // EFM refuses to promote here, because the holder might still be a working
                // primary. With efm the holder's kernel cuts database traffic to the VIP off once
                // its lease lapses (the promotion waited for that), so a stale holder — typically
                // a node whose agent died — cannot take writes: take the VIP over and announce it.
                tracing::warn!(vip = %addr, holder = %vip::fmt_mac(mac), "check.vip.before.promotion: the VIP is still answered by another node; its kernel lease has lapsed, taking it over");
            }
        }
    }
    if let Some(ip) = cfg.ping_server_ip {
        // EFM's isolation check: a node that cannot reach the configured address may be the one
        // that is cut off; it must not promote itself.
        let mut argv = cfg.ping_server_command.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        argv.push(ip.to_string());
        let Some(program) = argv.first().cloned() else { return Err("ping.server.command is empty".into()) };
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::process::Command::new(&program).args(&argv[1..]).kill_on_drop(true).output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => tracing::info!(%ip, "isolation check passed"),
            Ok(Ok(o)) => return Err(format!("isolation check failed: {} exited with {} (ping.server.ip {ip}); not promoting", argv.join(" "), o.status)),
            Ok(Err(e)) => return Err(format!("isolation check: cannot run {program}: {e}; not promoting")),
            Err(_) => return Err(format!("isolation check: {} did not finish in 15 s; not promoting", argv.join(" "))),
        }
    }
    let subst = Substitutions { new_primary: Some(me.ip().to_string()), failed_primary: old.map(|o| o.ip().to_string()), ..Substitutions::default() };
    if run_hook(cfg, Hook::Fence, &subst).await == Some(false) {
        return Err("script.fence failed: promotion aborted".into());
    }
    let target = localdb::target(cfg, config_dir, &me.ip().to_string())?;
    control::promote(&target, PROMOTE_WAIT).await.map_err(|e| e.to_string())?;
    Ok(start.elapsed())
}

fn upstream(cfg: &Config, config_dir: &std::path::Path, primary: SocketAddr) -> Result<control::Upstream, String> {
    let t = localdb::target(cfg, config_dir, &primary.ip().to_string())?;
    Ok(control::Upstream {
        host: primary.ip().to_string(),
        port: cfg.db_port,
        user: cfg.db_user.clone(),
        password: t.password,
        application_name: cfg.application_name.clone().or_else(|| Some(cfg.bind_address.ip().to_string())),
        extra: Vec::new(),
    })
}

async fn follow(cfg: &Config, config_dir: &std::path::Path, me: SocketAddr, primary: SocketAddr) -> Result<String, String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let up = upstream(cfg, config_dir, primary)?;
    let target = localdb::target(cfg, config_dir, &me.ip().to_string())?;
    let out = control::reconfigure_standby(&target, &control, &up).await.map_err(|e| e.to_string())?;
    Ok(format!("{:?}", out.method))
}

fn demote_local(cfg: &Config, config_dir: &std::path::Path, primary: SocketAddr) -> Result<(), String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let data = cfg.db_data_dir.clone().or_else(|| cfg.db_recovery_conf_dir.clone()).ok_or("db.data.dir is not set")?;
    let version = control::read_pg_version(&data).map_err(|e| e.to_string())?;
    let up = upstream(cfg, config_dir, primary)?;
    control::demote_to_standby(&control, &data, version, &up).map(|_| ()).map_err(|e| e.to_string())
}

/// `standby.signal` in the data directory of a failed primary, so a restart comes up in recovery.
async fn write_standby_signal(cfg: &Config) -> Result<(), String> {
    let data = cfg.db_data_dir.clone().ok_or("db.data.dir is not set")?;
    let path = data.join("standby.signal");
    tokio::fs::write(&path, b"").await.map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(owner) = &cfg.db_service_owner {
        let _ = tokio::process::Command::new("chown").arg(owner).arg(&path).status().await;
    }
    Ok(())
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
