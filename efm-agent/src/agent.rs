//! The agent process: one per cluster per node.
//!
//! Start-up, in order: configuration (every problem reported, refuse to start on an error), the
//! per-cluster lock and pid file, the cluster key, the datapath (XDP attached to the interface
//! owning `bind.address`, or `xdp.interface`), the heartbeat socket, the role (witness, or what
//! the local database says), the admin socket; then systemd is told `READY=1`. The optional
//! health endpoint (`health.listen.address`, see [`crate::health`]) is bound right after the
//! key, before the kernel is touched, and serves once the channels it reads exist.
//!
//! The main loop ticks every `heartbeat.interval`: it sends one PING to each peer, reads every
//! peer's slot and RTT histogram from the kernel, and feeds them to the detector. The local
//! database is checked by its own task (`local.period`, `local.timeout`, `local.timeout.final`).
//! SIGTERM/SIGINT stop the agent in order: `STOPPING=1`, tasks stopped, datapath detached, admin
//! socket and pid file removed, lock released.
//!
//! This module only assembles the process: each task gets its configuration and identity (an
//! `Arc<`[`Identity`]`>`), the channels it reads and the one writer it owns (see
//! [`crate::node`]); no other module imports it.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use efm_common::{
    maps::{ClusterKey, DatapathConfig, FenceState, FENCE_RESET, MAX_SLOTS},
    wire::ClusterKeyBytes,
};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    admin::{self, AdminError, Request, Response},
    config::{self, Config, ConfigErrors, FenceMode, XdpMode},
    coordination::{ClusterState, CoordConfig, Coordinator, NodeInfo, NodeKind, RaftTimings},
    datapath::{self, Datapath, DatapathError, ModeChoice, Peer},
    detector::{Detector, DetectorConfig, Verdict},
    ha::runtime::HaRuntime,
    health::{HealthListener, HealthServer, Metrics},
    heartbeat::{self, KeyError, LocalView, Pinger},
    lifecycle::{self, ClusterLock, LifecycleError, PidFile},
    localdb,
    node::{self, DbOwner, DbView, Facts, Identity, LocalDatabase, Owners, PeerEntry, Role, RuntimeOwner, WalSample},
    postgres::DbTarget,
};

/// Where the agent keeps its runtime files.
#[derive(Clone, Debug)]
pub struct Options {
    pub cluster: String,
    /// `<cluster>.properties` and `<cluster>.nodes` live here (`/etc/efm`).
    pub config_dir: PathBuf,
    /// Admin socket and pid file (`/run/efm`).
    pub run_dir: PathBuf,
    /// Root of the pinned BPF state; the cluster's pins go to `<bpffs_dir>/<cluster>`
    /// (`/sys/fs/bpf/efm`).
    pub bpffs_dir: PathBuf,
    /// The coordination log (`<state_dir>/<cluster>.raft.redb`; `/var/lib/efm`).
    pub state_dir: PathBuf,
}

impl Options {
    #[must_use]
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            config_dir: PathBuf::from("/etc/efm"),
            run_dir: PathBuf::from("/run/efm"),
            bpffs_dir: PathBuf::from(datapath::BPFFS).join("efm"),
            state_dir: PathBuf::from("/var/lib/efm"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Boxed: the datapath's errors carry aya's, which would make every start-up step's
    /// `Result` large.
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("no interface on this node has the bind.address IP {ip}; set xdp.interface or fix bind.address")]
    NoInterface { ip: IpAddr },
    #[error("heartbeat socket on {addr}: {source}")]
    Socket { addr: SocketAddr, source: std::io::Error },
    #[error("{count} peers in the .nodes file; at most {MAX_SLOTS} are supported")]
    TooManyPeers { count: usize },
    #[error("nodes {a} and {b} map to the same node id; change one node's bind.address port")]
    IdCollision { a: SocketAddr, b: SocketAddr },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error("database password: {0}")]
    Password(String),
    #[error(transparent)]
    Coordination(#[from] crate::coordination::CoordError),
    #[error(transparent)]
    Health(#[from] crate::health::HealthError),
    #[error("reconfigure.num.sync / reconfigure.sync.primary: {0}")]
    SyncRep(crate::postgres::control::ControlError),
}

impl From<DatapathError> for AgentError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

/// The name of the interface holding an address (an `RTM_GETADDR` dump; it lives in `vip`).
pub use crate::vip::interface_of;

/// Runs the agent until SIGTERM or SIGINT (or `efm stop-cluster`).
pub async fn run(opts: Options) -> Result<(), AgentError> {
    let Prepared { cfg, lock, pid, key, health } = prepare(&opts).await?;
    let me = cfg.bind_address;
    let peers = peer_table(&cfg, me)?;
    let (mut dp, iface, attachment, epoch) = open_datapath(&cfg, &opts.bpffs_dir, me)?;
    let (db_target, local) = local_database(&cfg, &opts.config_dir, me).await?;
    let role = local.role;
    arm_kernel(&mut dp, &cfg, me, key, role, epoch, &peers)?;
    let peer_addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    let pinger = Pinger::new(me, &cfg.cluster, key, peer_addrs, heartbeat::realtime_ns(), dp.nonce())
        .map_err(|source| AgentError::Socket { addr: me, source })?;
    let detector = Detector::new(
        DetectorConfig { node_timeout: cfg.node_timeout, rtt_window: Duration::from_mins(1) },
        heartbeat::monotonic_ns(),
        peers.iter().map(|p| p.node_id),
    );
    let coord = Arc::new(Coordinator::start(coord_config(&cfg, me, key, &opts)).await?);
    let vip_held = match (cfg.virtual_ip, &cfg.virtual_ip_interface) {
        (Some(v), i) => crate::vip::is_assigned_here(i.as_deref().unwrap_or(&iface), v).unwrap_or(false),
        _ => false,
    };
    let id = Arc::new(Identity {
        config: cfg.clone(),
        me,
        node_id: heartbeat::node_id(&me),
        config_dir: opts.config_dir.clone(),
        iface,
        attachment,
        started_unix_ms: node::unix_ms(),
    });
    let peer_count = peers.len();
    let (facts, owners) = node::wire(id.clone(), local, peers, epoch);
    let Owners { db: db_owner, peers: peers_tx, custom_monitor, runtime, stop } = owners;
    let ha = ha_runtime(&facts, runtime, coord.clone(), vip_held, &opts.state_dir);
    let (metrics_tx, metrics_rx) = watch::channel(None);
    let tasks = Tasks::spawn(
        &opts,
        &facts,
        &coord,
        db_target.map(|t| (t, db_owner)),
        custom_monitor,
        health.map(|h| (h, metrics_rx)),
    )?;
    let signals = Signals::new()?;
    tracing::info!(
        cluster = %cfg.cluster, node = %me, %role, interface = %id.iface, xdp = %id.attachment,
        peers = peer_count, "efm-agent started"
    );
    let notifier = crate::notify::Notifier::start(&cfg);
    crate::notify::install(notifier.clone());
    crate::ha::runtime::notify(&cfg, agent_event(role, true));
    lifecycle::notify("READY=1");
    lifecycle::notify(&format!("STATUS={role} on {me}, {peer_count} peers"));

    let mut main = MainLoop {
        id,
        dp,
        pinger,
        detector,
        ha,
        peers: peers_tx,
        wal: facts.wal.clone(),
        metrics: tasks.health.is_some().then_some(metrics_tx),
        stop,
    };
    let fenced_at_exit = main.run(role == Role::Primary, signals).await;
    let stopped = shutdown(&opts, main, tasks, &facts, coord, fenced_at_exit).await;
    // The notifications of the stop ("Primary agent exited ...") are delivered before the
    // process ends (bounded: a hung mail server does not hold the stop for long).
    let bound = cfg.script_notification_timeout.max(cfg.smtp_timeout).min(NOTIFY_FLUSH_MAX);
    if tokio::time::timeout(bound, notifier.flush()).await.is_err() {
        tracing::warn!(?bound, "notifications still undelivered at exit");
    }
    stopped?;
    drop((pid, lock));
    Ok(())
}

/// How long the orderly stop waits at most for its notifications to be delivered.
const NOTIFY_FLUSH_MAX: Duration = Duration::from_secs(10);

/// What start-up holds before it touches the kernel.
struct Prepared {
    cfg: Config,
    lock: ClusterLock,
    pid: PidFile,
    key: ClusterKeyBytes,
    health: Option<HealthListener>,
}

/// Configuration (every problem reported), the per-cluster lock and pid file, the cluster key,
/// and the health endpoint's socket (bound early so a busy port stops the agent before it
/// touches the kernel).
async fn prepare(opts: &Options) -> Result<Prepared, AgentError> {
    let loaded = config::load(&opts.config_dir, &opts.cluster).map_err(AgentError::Config)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    config::check::warn_if_too_few_agents(&loaded.config);
    let cfg = loaded.config;
    let lock = ClusterLock::acquire(&cfg.lock_dir, &cfg.cluster)?;
    let pid = PidFile::create(&opts.run_dir, &cfg.cluster)?;
    let key = heartbeat::load_cluster_key(&cfg.cluster_key_file)?;
    let health = match cfg.health_listen_address {
        Some(addr) => Some(HealthListener::bind(addr).await?),
        None => None,
    };
    Ok(Prepared { cfg, lock, pid, key, health })
}

/// The peers of the `.nodes` file, one kernel slot each (sorted, this node left out); refuses
/// too many peers and two nodes with the same node id.
fn peer_table(cfg: &Config, me: SocketAddr) -> Result<Vec<PeerEntry>, AgentError> {
    let mut peer_addrs: Vec<SocketAddr> = cfg.nodes.iter().copied().filter(|a| *a != me).collect();
    peer_addrs.sort();
    peer_addrs.dedup();
    if peer_addrs.len() > MAX_SLOTS {
        return Err(AgentError::TooManyPeers { count: peer_addrs.len() });
    }
    let mut seen = std::collections::HashMap::new();
    for a in std::iter::once(me).chain(peer_addrs.iter().copied()) {
        if let Some(b) = seen.insert(heartbeat::node_id(&a), a) {
            return Err(AgentError::IdCollision { a: b, b: a });
        }
    }
    Ok(peer_addrs
        .iter()
        .zip(0u32..)
        .map(|(a, slot)| PeerEntry { addr: *a, node_id: heartbeat::node_id(a), slot, health: None })
        .collect())
}

/// XDP on the heartbeat interface (the one holding `bind.address`, or `xdp.interface`) and, when
/// the VIP lives elsewhere, on that one too: the fence must see every path client traffic can
/// take. Returns the datapath, the interface, how XDP was attached, and the epoch the pinned
/// maps held (0 on fresh maps).
fn open_datapath(
    cfg: &Config,
    bpffs_dir: &Path,
    me: SocketAddr,
) -> Result<(Datapath, String, String, u64), AgentError> {
    let iface = match &cfg.xdp_interface {
        Some(i) => i.clone(),
        None => interface_of(me.ip()).ok_or(AgentError::NoInterface { ip: me.ip() })?,
    };
    let mode = match cfg.xdp_mode {
        XdpMode::Auto => ModeChoice::Auto,
        XdpMode::Native => ModeChoice::Native,
        XdpMode::Generic => ModeChoice::Generic,
    };
    let mut ifaces = vec![iface.as_str()];
    if let Some(v) = cfg.virtual_ip_interface.as_deref().filter(|v| *v != iface) {
        ifaces.push(v);
    }
    let dp = Datapath::open(&bpffs_dir.join(&cfg.cluster), &ifaces, mode)?;
    let attachment = dp.attachments().first().map(|(_, a)| a.to_string()).unwrap_or_default();
    let epoch = if dp.reused_maps() { dp.fence().map_or(0, |f| f.epoch) } else { 0 };
    Ok((dp, iface, attachment, epoch))
}

/// How to reach the local database (none on a witness) and what it says at start: the role
/// (standby in recovery, else primary; idle if it does not answer).
async fn local_database(
    cfg: &Config,
    config_dir: &Path,
    me: SocketAddr,
) -> Result<(Option<DbTarget>, LocalDatabase), AgentError> {
    if cfg.is_witness {
        return Ok((None, LocalDatabase { role: Role::Witness, view: DbView::default() }));
    }
    let target = localdb::target(cfg, config_dir, &me.ip().to_string()).map_err(AgentError::Password)?;
    let local = match localdb::initial_role(cfg, &target).await {
        Ok((role, info)) => LocalDatabase {
            role,
            view: DbView { up: Some(true), info: Some(info), error: None, postmaster_exited: false },
        },
        Err(e) => {
            tracing::warn!(error = %e, "local database does not answer: starting as Idle");
            LocalDatabase {
                role: Role::Idle,
                view: DbView { up: None, info: None, error: Some(e.to_string()), postmaster_exited: false },
            }
        }
    };
    Ok((Some(target), local))
}

/// The kernel's configuration, key, first fence state, peer table, service addresses and
/// exemptions.
fn arm_kernel(
    dp: &mut Datapath,
    cfg: &Config,
    me: SocketAddr,
    key: ClusterKeyBytes,
    role: Role,
    epoch: u64,
    peers: &[PeerEntry],
) -> Result<(), AgentError> {
    dp.set_config(&DatapathConfig {
        cluster_id: heartbeat::cluster_id(&cfg.cluster),
        node_id: heartbeat::node_id(&me),
        hb_port: u32::from(me.port()),
        db_port: u32::from(cfg.db_port),
        // Kept by set_config: the generation's nonce.
        nonce: 0,
    })?;
    dp.set_key(&ClusterKey { k0: key.k0, k1: key.k1 })?;
    // When in doubt, fence: a primary database is cut off until the HA engine, with the committed
    // state in hand, says it is the primary of the current epoch.
    let reset = if cfg.fence_mode == FenceMode::Reset { FENCE_RESET } else { 0 };
    let mut fence_flags = reset;
    if !matches!(role, Role::Standby | Role::Witness) {
        // A primary, or a database we could not ask (it may be one).
        fence_flags |= efm_common::maps::FENCE_FENCED;
    }
    let fence = match serving_primary_kernel(dp, role) {
        // The agent of a primary returns (restart, upgrade, a bad property fixed) to a kernel that
        // still serves its epoch under a live lease, which the voters kept endorsing while it was
        // absent: leave the kernel as it is (no client write refused), only the fence mode follows
        // the properties. This lets nothing through that was not passing already; the lease still
        // decides, and the engine's first cycle confirms or fences.
        Some(f) => {
            tracing::info!(
                epoch = f.epoch,
                k = f.lease_k,
                "the kernel still serves this primary's epoch under its lease: carrying on as primary"
            );
            FenceState { flags: (f.flags & !FENCE_RESET) | reset, ..f }
        }
        None => FenceState {
            flags: fence_flags,
            role: u32::from(role.bits()),
            epoch,
            lease_timeout_ns: u64::try_from(cfg.lease_timeout.as_nanos()).unwrap_or(u64::MAX),
            ..FenceState::default()
        },
    };
    dp.set_fence(&fence)?;
    dp.set_peers(
        &peers.iter().map(|p| Peer { node_id: p.node_id, slot: p.slot, addrs: vec![p.addr.ip()] }).collect::<Vec<_>>(),
    )?;
    let vips: Vec<IpAddr> = cfg.virtual_ip.into_iter().collect();
    dp.set_service_addrs(&[me.ip()], &vips)?;
    // `fence.exempt.hosts` pass the fence always. The cluster's own nodes pass only while this
    // node is fenced explicitly only (efm_common::serving, ARCHITECTURE.md "The fence and the
    // cluster's own nodes"): a primary fenced for a clean hand-over, or at start-up, keeps its
    // standbys streaming and collects their acknowledgements; once a newer epoch exists or its
    // lease lapsed, a member is fenced like any client.
    let always: Vec<(IpAddr, u8)> = cfg.fence_exempt_hosts.iter().map(|c| (c.addr, c.prefix)).collect();
    let members: Vec<IpAddr> = peers.iter().map(|p| p.addr.ip()).collect();
    dp.set_exempt_with_members(&always, &members)?;
    Ok(())
}

/// The pinned fence state, when this agent starts on a primary database whose kernel (pinned
/// maps of an earlier life) serves clients right now as the primary of its epoch, under an
/// enforced lease: the agent was absent and the voters kept endorsing it.
fn serving_primary_kernel(dp: &Datapath, role: Role) -> Option<FenceState> {
    use efm_common::{maps::FENCE_LEASE_ENFORCED, serving::fence_reasons, wire::ROLE_MASK};
    if role != Role::Primary || !dp.reused_maps() {
        return None;
    }
    let (fence, lease) = (dp.fence().ok()?, dp.lease().ok()?);
    let now = heartbeat::monotonic_ns();
    let primary = u16::try_from(fence.role).is_ok_and(|r| Role::from_bits(r & ROLE_MASK) == Role::Primary);
    (primary && fence.flags & FENCE_LEASE_ENFORCED != 0 && fence.lease_k > 0 && fence_reasons(&fence, &lease, now) == 0)
        .then_some(fence)
}

/// The coordination log's settings for this node.
fn coord_config(cfg: &Config, me: SocketAddr, key: ClusterKeyBytes, opts: &Options) -> CoordConfig {
    CoordConfig {
        cluster: cfg.cluster.clone(),
        me,
        key,
        state_dir: opts.state_dir.clone(),
        nodes_file_members: cfg.nodes.clone(),
        kind: if cfg.is_witness { NodeKind::Witness } else { NodeKind::Database },
        priority: priority_of(cfg, me),
        promotable: cfg.promotable && !cfg.is_witness,
        auto_allow_hosts: cfg.auto_allow_hosts,
        stable_nodes_file: cfg.stable_nodes_file,
        nodes_file_path: opts.config_dir.join(format!("{}.nodes", cfg.cluster)),
        timings: {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut t = RaftTimings::default();
            t.heartbeat_ms = ms(cfg.raft_heartbeat_interval);
            t.election_min_ms = ms(cfg.raft_election_timeout).max(t.heartbeat_ms * 2);
            t.election_max_ms = t.election_min_ms * 2;
            t.rpc_timeout_ms = t.rpc_timeout_ms.max(t.heartbeat_ms * 2);
            t
        },
    }
}

/// The HA engine and its runtime, owning the runtime's channels.
fn ha_runtime(
    facts: &Facts,
    owner: RuntimeOwner,
    coord: Arc<Coordinator>,
    vip_held: bool,
    state_dir: &Path,
) -> HaRuntime {
    let (cfg, me) = (&facts.id.config, facts.id.me);
    HaRuntime::new(
        crate::ha::Engine::new(crate::ha::runtime::engine_config(cfg, me)),
        coord,
        facts.clone(),
        owner,
        vip_held,
        NodeInfo {
            kind: if cfg.is_witness { NodeKind::Witness } else { NodeKind::Database },
            priority: if cfg.is_witness { 0 } else { priority_of(cfg, me) },
            promotable: cfg.promotable && !cfg.is_witness,
        },
        state_dir,
    )
}

/// The tasks beside the main loop.
struct Tasks {
    admin: JoinHandle<()>,
    db: Option<JoinHandle<()>>,
    custom_monitor: Option<JoinHandle<()>>,
    /// `reconfigure.num.sync` / `reconfigure.sync.primary` ([`crate::sync_rep`]).
    sync_rep: Option<JoinHandle<()>>,
    /// `update.physical.slots.period` ([`crate::slots`]).
    slots: Option<JoinHandle<()>>,
    health: Option<HealthServer>,
}

impl Tasks {
    /// The admin socket; the local database's owner (not on a witness); the custom monitor (when
    /// configured, not on a witness); the health endpoint (when configured).
    fn spawn(
        opts: &Options,
        facts: &Facts,
        coord: &Arc<Coordinator>,
        db: Option<(DbTarget, DbOwner)>,
        custom_monitor: watch::Sender<Option<String>>,
        health: Option<(HealthListener, watch::Receiver<Option<Arc<crate::health::MetricsSnapshot>>>)>,
    ) -> Result<Self, AgentError> {
        let cfg = &facts.id.config;
        let listener = admin::bind(&admin::socket_path(&opts.run_dir, &cfg.cluster))?;
        let (admin_facts, admin_coord) = (facts.clone(), coord.clone());
        let admin = tokio::spawn(admin::serve(listener, move |req| {
            let (facts, coord) = (admin_facts.clone(), admin_coord.clone());
            async move { handle(&facts, &coord, req).await }
        }));
        let sync_rep = match &db {
            Some((t, _)) if cfg.reconfigure_num_sync || cfg.reconfigure_sync_primary => {
                let control = crate::postgres::control::DbControl::from_config(cfg).map_err(AgentError::SyncRep)?;
                Some(tokio::spawn(crate::sync_rep::run(facts.clone(), t.clone(), control, opts.state_dir.clone())))
            }
            _ => None,
        };
        let slots = match &db {
            Some((t, _)) if !cfg.update_physical_slots_period.is_zero() => {
                Some(tokio::spawn(crate::slots::run(facts.clone(), t.clone())))
            }
            _ => None,
        };
        let db = db.map(|(t, owner)| tokio::spawn(localdb::run(facts.id.clone(), owner, t)));
        let custom_monitor = cfg
            .script_custom_monitor
            .as_ref()
            .filter(|_| !cfg.is_witness)
            .map(|_| tokio::spawn(crate::custom_monitor::run(facts.id.clone(), facts.db.clone(), custom_monitor)));
        let health = health.map(|(l, metrics)| l.serve(facts.clone(), metrics));
        Ok(Self { admin, db, custom_monitor, sync_rep, slots, health })
    }

    fn stop(self) {
        self.admin.abort();
        if let Some(h) = self.health {
            h.stop();
        }
        if let Some(t) = self.db {
            t.abort();
        }
        if let Some(t) = self.custom_monitor {
            t.abort();
        }
        if let Some(t) = self.sync_rep {
            t.abort();
        }
        if let Some(t) = self.slots {
            t.abort();
        }
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, AgentError> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(AgentError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(AgentError::Signal)?,
        })
    }
}

/// The main loop's parts: it owns the datapath, the detector, the HA runtime, the peers' health
/// and the `/metrics` snapshot, and receives the stop signal.
struct MainLoop {
    id: Arc<Identity>,
    dp: Datapath,
    pinger: Pinger,
    detector: Detector,
    ha: HaRuntime,
    peers: watch::Sender<Vec<PeerEntry>>,
    wal: watch::Receiver<Option<WalSample>>,
    /// Only while the health endpoint runs.
    metrics: Option<Metrics>,
    /// Set by the HA runtime once `efm stop-cluster` reached this agent.
    stop: watch::Receiver<bool>,
}

impl MainLoop {
    /// Ticks every `heartbeat.interval` until a signal or the stop; returns whether the node is
    /// fenced (`fenced` until the first cycle says).
    async fn run(&mut self, mut fenced: bool, mut signals: Signals) -> bool {
        let mut tick = tokio::time::interval(self.id.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match self.tick() {
                        Ok(keep) => fenced = keep,
                        Err(e) => tracing::error!(error = %e, "reading the datapath failed"),
                    }
                    if let Some(m) = &self.metrics {
                        let peers = self.peers.borrow().clone();
                        if let Err(e) = crate::health::after_tick(m, &self.dp, &peers) {
                            tracing::warn!(error = %e, "reading the datapath for /metrics failed");
                        }
                    }
                    if *self.stop.borrow() {
                        return fenced;
                    }
                }
                _ = signals.term.recv() => return fenced,
                _ = signals.int.recv() => return fenced,
            }
        }
    }

    /// One cycle: kernel slots → detector → HA engine → kernel fence state and PINGs. Returns
    /// whether the node is fenced.
    #[expect(clippy::result_large_err, reason = "an error here is logged and the loop goes on")]
    fn tick(&mut self) -> Result<bool, DatapathError> {
        let slots = self.peers.borrow().iter().map(|p| (p.node_id, p.slot, p.addr)).collect::<Vec<_>>();
        let now = heartbeat::monotonic_ns();
        let mut healths = Vec::with_capacity(slots.len());
        let mut echoes = Vec::with_capacity(slots.len());
        for (node_id, slot, addr) in slots {
            let s = self.dp.slot(slot)?;
            echoes.push((addr, s.peer_nonce));
            let h = self.dp.rtt_histogram(slot)?;
            if let Some(c) = self.detector.observe(now, node_id, &s, &h) {
                match c.to {
                    Verdict::Alive => tracing::info!(peer = %addr, from = %c.from, "peer agent alive"),
                    Verdict::Unknown => {}
                    to => {
                        tracing::warn!(peer = %addr, from = %c.from, verdict = %to, "peer verdict changed");
                        // EFM's "agent failure" notifications are about an agent leaving: sent
                        // once, when a peer that was heard stops being heard (not at start-up,
                        // while peers go from unknown to not yet heard, nor again when an agent
                        // already gone also loses its node).
                        if c.from == Verdict::Alive {
                            let role = Role::from_bits(self.detector.peer(node_id).map_or(0, |h| h.role));
                            notify_peer_failure(&self.id.config, addr, to, role);
                        }
                    }
                }
            }
            healths.push(self.detector.peer(node_id));
        }
        self.peers.send_modify(|peers| {
            for (p, h) in peers.iter_mut().zip(healths) {
                p.health = h;
            }
        });
        // Read every half heartbeat, not every `local.period`; 0 ("unknown") when stale.
        let lsn = localdb::fresh_lsn(*self.wal.borrow(), now, self.id.config.heartbeat_interval);
        let (desired, _) = self.ha.cycle(&mut self.dp, now)?;
        let view = LocalView { flags: desired.ping_flags, epoch: desired.epoch, lsn };
        let echo = |peer: SocketAddr| echoes.iter().find(|(a, _)| *a == peer).map_or(0, |(_, n)| *n);
        for (peer, e) in self.pinger.send_round(view, now, desired.endorse, echo) {
            tracing::debug!(%peer, error = %e, "PING not sent");
        }
        if desired.endorse.is_some() {
            // The promotion wait counts from when the endorsement actually left.
            self.ha.endorsement_sent(desired.epoch, heartbeat::monotonic_ns());
        }
        Ok(desired.fenced)
    }
}

/// The orderly stop: `STOPPING=1`, tasks stopped, admin socket removed, coordination shut down,
/// then the datapath detached — unless the kernel must keep enforcing (a fenced node, a primary
/// database) — or, after `efm stop-cluster`, detached from a node that serves.
async fn shutdown(
    opts: &Options,
    main: MainLoop,
    tasks: Tasks,
    facts: &Facts,
    coord: Arc<Coordinator>,
    fenced_at_exit: bool,
) -> Result<(), AgentError> {
    let cfg = &facts.id.config;
    tracing::info!("efm-agent stopping");
    lifecycle::notify("STOPPING=1");
    // EFM's "Agent exited during promotion": this node was promoting its database.
    let promoting = facts.status.borrow().outcome.as_deref().is_some_and(|o| o.starts_with("promoting for epoch"));
    let exited = if promoting {
        crate::notify::Event::AgentExitedDuringPromotion
    } else {
        agent_event(facts.effective_role(), false)
    };
    crate::ha::runtime::notify(cfg, exited);
    tasks.stop();
    let stop_cluster = *main.stop.borrow();
    let _ = std::fs::remove_file(admin::socket_path(&opts.run_dir, &cfg.cluster));
    let MainLoop { dp, ha, .. } = main;
    drop(ha);
    if let Ok(c) = Arc::try_unwrap(coord) {
        c.shutdown().await;
    }
    let db_primary = facts.db.borrow().view.info.as_ref().is_some_and(|i| !i.in_recovery);
    if stop_cluster && !fenced_at_exit {
        // `efm stop-cluster`: no agent is left to endorse a lease, and the databases must keep
        // serving as they are; a fenced node stays fenced.
        tracing::warn!(
            "efm stop-cluster: detaching XDP; the cluster has no failover protection until the agents start again"
        );
        dp.detach()?;
    } else if fenced_at_exit || db_primary {
        // The kernel keeps enforcing: a fenced node stays fenced, and a primary's clients lose
        // it when its lease runs out, as they would if the agent had died.
        tracing::warn!(pins = %opts.bpffs_dir.join(&cfg.cluster).display(), "leaving XDP attached: the local database is a primary or fenced");
        drop(dp);
    } else {
        dp.detach()?;
    }
    Ok(())
}

/// EFM's notifications for a peer that stopped being heard (its role as last announced).
fn notify_peer_failure(cfg: &Config, addr: SocketAddr, verdict: Verdict, role: Role) {
    use crate::notify::Event;
    tracing::warn!(peer = %addr, %verdict, %role, "peer failure");
    let node = addr.to_string();
    let event = match role {
        Role::Primary => Event::PrimaryLeft { node },
        Role::Standby => Event::StandbyAgentFailed { node },
        Role::Witness => Event::WitnessFailure { node },
        Role::Idle => Event::IdleAgentFailure { node },
    };
    crate::ha::runtime::notify(cfg, event);
}

/// EFM's "agent running" / "agent exited" notifications for this node.
fn agent_event(role: Role, running: bool) -> crate::notify::Event {
    use crate::notify::Event;
    match (role, running) {
        (Role::Primary, true) => Event::PrimaryAgentRunning,
        (Role::Standby, true) => Event::StandbyAgentRunning,
        (Role::Witness, true) => Event::WitnessAgentRunning,
        (Role::Idle, true) => Event::IdleAgentRunning,
        (Role::Primary, false) => Event::PrimaryAgentExited,
        (Role::Standby, false) => Event::StandbyAgentExited,
        (Role::Witness, false) => Event::WitnessAgentExited,
        (Role::Idle, false) => Event::AgentExited,
    }
}

/// EFM's failover priority of a node: its 1-based position in `priority.standbys`, else 1.
fn priority_of(cfg: &Config, me: SocketAddr) -> u32 {
    cfg.priority_standbys
        .iter()
        .position(|p| *p == me.ip().to_string() || *p == me.to_string())
        .map_or(1, |i| u32::try_from(i + 1).unwrap_or(u32::MAX))
}

/// The committed cluster state, copied out of the watch (its guard must not live across an
/// await).
fn cluster_state(coord: &Coordinator) -> Arc<ClusterState> {
    coord.state().borrow().clone()
}

/// Answers one admin request.
pub async fn handle(facts: &Facts, coord: &Arc<Coordinator>, req: Request) -> Response {
    // Unknown commands and malformed fields were answered by `admin::parse_request` already.
    match &req.command {
        crate::admin::AdminCommand::NodeStatus => Response::ok(crate::report::node_status(facts)),
        crate::admin::AdminCommand::ClusterStatus => {
            match crate::report::cluster_status(facts, &cluster_state(coord)).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e),
            }
        }
        _ => crate::operator::handle(facts, coord, &req).await,
    }
}
