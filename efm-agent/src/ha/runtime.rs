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
    maps::{FenceState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_RESET},
    wire::{FLAG_DB_UP, FLAG_FENCED, FLAG_LEASE_LAPSED, ROLE_MASK},
};

use super::{Action, Committed, Desired, Engine, Inputs, LocalDb, NodeMeta, Outcome, PeerRole, PeerView, Proposal, Severity, Work};
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

/// Time allowed to each script hook before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_mins(1);
/// How long `pg_promote()` may take.
const PROMOTE_WAIT: Duration = Duration::from_mins(1);

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
    remote: Arc<Mutex<HashMap<SocketAddr, (Option<bool>, Instant)>>>,
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
}

impl HaRuntime {
    #[must_use]
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
        }
    }

    /// The PING endorsing the primary of `epoch` has been sent (see [`Engine::endorsement_sent`]).
    pub fn endorsement_sent(&mut self, epoch: u64, sent_ns: u64) {
        self.engine.endorsement_sent(epoch, sent_ns);
    }

    /// Records `epoch` as voted against, durably, before the vote is proposed.
    fn record_vote(&self, epoch: u64) -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = self.voted_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.voted_file.with_extension("voted.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.voted_file)?;
        if let Some(dir) = self.voted_file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
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
        Some(Committed {
            epoch: st.epoch,
            primary: st.primary,
            nodes,
            votes: st.votes.iter().copied().collect(),
            auto_failover: st.auto_failover_or(default_auto_failover) && !st.paused,
        })
    }

    /// One cycle: decide, then make the kernel and the VIP match and start the actions.
    /// Returns what to put into this cycle's PINGs: (flags, epoch, endorse target).
    pub fn cycle(
        &mut self,
        shared: &Arc<Mutex<Shared>>,
        dp: &mut Datapath,
        now_ns: u64,
    ) -> Result<(Desired, Outcome), DatapathError> {
        let st = self.coord.state().borrow().clone();
        let (me, db, peers_h) = {
            let s = lock(shared);
            (s.me, s.db.clone(), s.peers.clone())
        };
        // A member announces itself (kind, priority, promotable) until the log shows it.
        if st.allowed.contains(&me)
            && st.nodes.get(&me) != Some(&self.info)
            && self.register_proposed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.register_proposed = Some(Instant::now());
            let (coord, cmd) = (self.coord.clone(), Command::Register { node: me, info: self.info });
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
                    db_reachable: remote.get(&p.addr).and_then(|(r, _)| *r),
                }
            })
            .collect();
        let local = LocalDb {
            up: db.up,
            in_recovery: db.info.as_ref().map(|i| i.in_recovery),
            failed: db.up == Some(false),
            lsn: db.lsn().map_or(0, |l| l.0),
            timeline: db.info.as_ref().and_then(|i| i.timeline).unwrap_or(0),
        };
        let work = self.work.lock().map(|w| w.clone()).unwrap_or_default();
        // How long the kernel's enforced lease has been lapsed (as of the last cycle's settings).
        let lease_now = dp.lease()?;
        let lease_lapsed_for = self
            .last_fence
            .filter(|f| f.flags & FENCE_LEASE_ENFORCED != 0 && f.lease_k > 0 && now_ns > lease_now.deadline_ns)
            .map(|_| Duration::from_nanos(now_ns - lease_now.deadline_ns));
        let step = self.engine.step(&Inputs {
            now_ns,
            committed: committed.as_ref(),
            is_leader: self.coord.is_leader(),
            peers: &peers,
            db: local,
            work: &work,
            lease_lapsed_for,
            max_epoch_seen: lease_now.max_epoch_seen,
        });
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
        let fence = FenceState {
            flags,
            role: u32::from(step.desired.ping_flags & ROLE_MASK),
            epoch: step.desired.epoch,
            lease_k: step.desired.lease_k,
            pad: 0,
            lease_timeout_ns: u64::try_from(self.cfg.lease_timeout.as_nanos()).unwrap_or(u64::MAX),
            lsn: local.lsn,
        };
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
        let kernel = crate::agent::KernelView {
            fenced: step.desired.fenced,
            lease_enforced: step.desired.lease_enforced,
            lease_left_ms: if lease_left == u64::MAX { 0 } else { lease_left / 1_000_000 },
            epoch: fence.epoch,
            max_epoch_seen: lease.max_epoch_seen,
            serving: !step.desired.fenced && lease.max_epoch_seen <= fence.epoch && lease_left > 0,
        };
        {
            let mut s = lock(shared);
            s.epoch = st.epoch;
            s.outcome = Some(step.outcome.to_string());
            s.kernel = kernel;
        }

        // DESIGN "Safety" (3): a primary whose lease was granted and has lapsed says so, so peers
        // that still hear it (but whose endorsements do not arrive) stop waiting on it. Never at
        // start-up: no lease was granted yet (deadline 0).
        let mut desired = step.desired;
        if desired.lease_enforced && lease.deadline_ns != 0 && now_ns > lease.deadline_ns {
            desired.ping_flags |= efm_common::wire::FLAG_LEASE_LAPSED;
        }
        self.reconcile_vip(step.desired.vip);
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
        if held == want {
            return;
        }
        {
            let Ok(mut busy) = self.vip_busy.lock() else { return };
            if *busy {
                return;
            }
            *busy = true;
        }
        let iface = self.cfg.virtual_ip_interface.clone().unwrap_or_else(|| self.iface.clone());
        let (held_flag, busy_flag) = (self.vip_held.clone(), self.vip_busy.clone());
        tokio::task::spawn_blocking(move || {
            let res = if want {
                vip::assign(&iface, addr, prefix).map(|a| format!("{a:?}"))
            } else {
                vip::release(&iface, addr, prefix).map(|r| format!("{r:?}"))
            };
            match res {
                Ok(how) => {
                    tracing::info!(vip = %addr, %iface, assigned = want, %how, "VIP");
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
        let every = if since.elapsed() < Duration::from_secs(15) { Duration::from_millis(1_000) } else { Duration::from_secs(10) };
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
                let old = old_primary.or_else(|| st.history.last().map(|h| h.node)).filter(|o| *o != me);
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
                            notify(&cfg, Severity::Severe, "Promotion failed", &reason).await;
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
                    }
                });
            }
            Action::PrimaryDbFailed { epoch } => {
                tokio::spawn(async move {
                    if let Err(e) = write_standby_signal(&cfg).await {
                        tracing::error!(error = %e, "could not mark the failed primary as a standby");
                    }
                    if cfg.stop_failed_primary {
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
                tokio::spawn(async move {
                    if let Some(p) = primary {
                        let res = demote_local(&cfg, &config_dir, p).await;
                        match res {
                            Ok(()) => tracing::info!(epoch, new_primary = %p, "old primary demoted: it restarts as a standby"),
                            Err(e) => tracing::error!(epoch, error = %e, "demoting the old primary failed; it stays fenced"),
                        }
                    }
                    if cfg.stop_isolated_primary {
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
                tokio::spawn(async move {
                    if cfg.stop_isolated_primary {
                        match control::DbControl::from_config(&cfg) {
                            Ok(c) => {
                                if let Err(e) = c.stop().await {
                                    tracing::warn!(error = %e, "stopping the isolated primary database");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot stop the isolated primary database"),
                        }
                    }
                    run_hook(&cfg, Hook::PrimaryIsolated, &Substitutions { failed_primary: Some(me.ip().to_string()), ..Substitutions::default() }).await;
                    tracing::warn!(epoch, "isolated primary: fenced, VIP released");
                });
            }
            Action::Notify { severity, subject, detail } => {
                tokio::spawn(async move { notify(&cfg, severity, &subject, &detail).await });
            }
        }
    }
}

fn to_command(p: Proposal, st: &ClusterState) -> Command {
    match p {
        Proposal::SetPrimary { node, expected_epoch } => Command::SetPrimary { node, expected_epoch },
        Proposal::Vote { voter, epoch } => Command::Vote { voter, epoch },
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

async fn run_hook(cfg: &Config, hook: Hook, subst: &Substitutions) -> Option<bool> {
    let line = hook.command_line(cfg)?;
    match ScriptRunner::new().run(hook, line, subst, SCRIPT_TIMEOUT, None).await {
        Ok(out) => {
            if out.success() {
                tracing::info!(?hook, status = %out.status_text(), "script ran");
            } else {
                tracing::warn!(?hook, report = %out.report(), "script failed");
            }
            Some(out.success())
        }
        Err(e) => {
            tracing::error!(?hook, error = %e, "script could not run");
            Some(false)
        }
    }
}

/// Logs a notification and delivers it (`script.notification`, mail); see [`crate::notify`],
/// whose `Notifier` replaces this.
pub async fn notify(cfg: &Config, severity: Severity, subject: &str, detail: &str) {
    let event = crate::notify::Event::Custom { severity, subject: subject.to_owned(), detail: detail.to_owned() };
    crate::notify::deliver_now(cfg, &event).await;
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

async fn demote_local(cfg: &Config, config_dir: &std::path::Path, primary: SocketAddr) -> Result<(), String> {
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

