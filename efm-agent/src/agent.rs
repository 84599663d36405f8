//! The agent process: one per cluster per node.
//!
//! Start-up, in order: configuration (every problem reported, refuse to start on an error), the
//! per-cluster lock and pid file, the cluster key, the datapath (XDP attached to the interface
//! owning `bind.address`, or `xdp.interface`), the heartbeat socket, the role (witness, or what
//! the local database says), the admin socket; then systemd is told `READY=1`. The optional
//! health endpoint (`health.listen.address`, see [`crate::health`]) is bound right after the
//! key, before the kernel is touched, and serves once the shared state exists.
//!
//! The main loop ticks every `heartbeat.interval`: it sends one PING to each peer, reads every
//! peer's slot and RTT histogram from the kernel, and feeds them to the detector. The local
//! database is checked by its own task (`local.period`, `local.timeout`, `local.timeout.final`).
//! SIGTERM/SIGINT stop the agent in order: `STOPPING=1`, tasks stopped, datapath detached, admin
//! socket and pid file removed, lock released.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use efm_common::{
    maps::{ClusterKey, DatapathConfig, FenceState, FENCE_RESET, MAX_SLOTS},
    wire::{ROLE_IDLE, ROLE_PRIMARY, ROLE_STANDBY, ROLE_WITNESS},
};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    admin::{self, AdminError, Request, Response},
    config::{self, Config, ConfigErrors, FenceMode, XdpMode},
    datapath::{self, Datapath, DatapathError, ModeChoice, Peer},
    detector::{Detector, DetectorConfig, PeerHealth, Verdict},
    heartbeat::{self, KeyError, LocalView, Pinger},
    lifecycle::{self, ClusterLock, LifecycleError, PidFile},
    localdb::{self, DbView},
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
    #[error(transparent)]
    Datapath(#[from] DatapathError),
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
}

/// A node's role as EFM names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Role {
    Primary,
    Standby,
    Witness,
    Idle,
}

impl Role {
    #[must_use]
    pub fn bits(self) -> u16 {
        match self {
            Self::Primary => ROLE_PRIMARY,
            Self::Standby => ROLE_STANDBY,
            Self::Witness => ROLE_WITNESS,
            Self::Idle => ROLE_IDLE,
        }
    }

    #[must_use]
    pub fn from_bits(bits: u16) -> Self {
        match bits & efm_common::wire::ROLE_MASK {
            ROLE_PRIMARY => Self::Primary,
            ROLE_STANDBY => Self::Standby,
            ROLE_WITNESS => Self::Witness,
            _ => Self::Idle,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One peer as the agent tracks it.
#[derive(Clone, Debug)]
pub struct PeerEntry {
    pub addr: SocketAddr,
    pub node_id: u32,
    pub slot: u32,
    pub health: Option<PeerHealth>,
}

/// State shared between the main loop, the database task and the admin socket.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub me: SocketAddr,
    pub node_id: u32,
    pub role: Role,
    pub db: DbView,
    pub peers: Vec<PeerEntry>,
    /// How XDP was attached.
    pub attachment: String,
    pub epoch: u64,
    /// Where the configuration (and the password key) live.
    pub config_dir: PathBuf,
    /// The HA engine's last decision.
    pub outcome: Option<String>,
    /// The coordination log's leader (EFM's membership coordinator).
    pub leader: Option<SocketAddr>,
    /// What the kernel enforces right now (read every cycle).
    pub kernel: KernelView,
    /// Monitoring of the local database is suspended (EFM's idle agent) until `efm resume`.
    pub suspended: Option<Suspension>,
    /// The last `script.custom.monitor` failure, while it lasts.
    pub custom_monitor_failed: Option<String>,
    /// `efm stop-cluster` reached this agent: the main loop exits.
    pub stop_requested: bool,
    /// When this agent started (Unix ms): a stop-cluster entry older than that is history.
    pub started_unix_ms: u64,
    /// The committed primary (coordination log) as of the last cycle; kept by
    /// [`crate::health::after_tick`] while the health endpoint runs.
    pub committed_primary: Option<SocketAddr>,
    /// The kernel counters and histograms `/metrics` shows, taken by the main loop at most once
    /// a second while the health endpoint runs (see [`crate::health`]).
    pub metrics: Option<Arc<crate::health::MetricsSnapshot>>,
    /// The local database's WAL position, read every half `heartbeat.interval` by
    /// [`localdb::track_wal`] (not by the `local.period` monitor); see [`localdb::fresh_lsn`].
    pub wal: Option<localdb::WalSample>,
}

impl Shared {
    /// The role as EFM reports it: an agent whose monitoring is suspended is idle, whatever its
    /// database is.
    #[must_use]
    pub fn effective_role(&self) -> Role {
        if self.suspended.is_some() {
            Role::Idle
        } else {
            self.role
        }
    }
}

/// Why a node's database is not monitored.
#[derive(Clone, Debug)]
pub struct Suspension {
    pub reason: String,
    pub kind: SuspendKind,
    pub since: std::time::Instant,
}

/// Which `auto.resume.*.period` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendKind {
    /// The database was not running when the agent started (`auto.resume.startup.period`).
    Startup,
    /// The database failed (`auto.resume.failure.period`).
    Failure,
}

/// Now as Unix milliseconds.
#[must_use]
pub fn unix_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())).unwrap_or(0)
}

/// The kernel's fence and lease as of the last cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelView {
    pub fenced: bool,
    pub lease_enforced: bool,
    /// The lease is enforced and has time left (ms), or 0.
    pub lease_left_ms: u64,
    pub epoch: u64,
    pub max_epoch_seen: u64,
    /// Client traffic to the database port passes (`efm_common::serving::fence_reasons` is 0, the
    /// rule the kernel applies): not fenced, not epoch-fenced, lease valid.
    pub serving: bool,
}


/// Locks the shared state, recovering it if a task panicked while holding the lock (the state is
/// plain data; a half-finished update is preferable to a dead agent).
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The name of the interface holding an address (an `RTM_GETADDR` dump; it lives in `vip`).
pub use crate::vip::interface_of;

/// Runs the agent until SIGTERM or SIGINT.
#[expect(clippy::too_many_lines, reason = "start-up is one ordered sequence; splitting it hides the order")]
pub async fn run(opts: Options) -> Result<(), AgentError> {
    let loaded = config::load(&opts.config_dir, &opts.cluster).map_err(AgentError::Config)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    config::check::warn_if_too_few_agents(&loaded.config);
    let cfg = loaded.config;
    let _lock = ClusterLock::acquire(&cfg.lock_dir, &cfg.cluster)?;
    let _pid = PidFile::create(&opts.run_dir, &cfg.cluster)?;
    let key = heartbeat::load_cluster_key(&cfg.cluster_key_file)?;
    let health_listener = match cfg.health_listen_address {
        Some(addr) => Some(crate::health::HealthListener::bind(addr).await?),
        None => None,
    };

    let me = cfg.bind_address;
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
    let peers: Vec<PeerEntry> = peer_addrs
        .iter()
        .zip(0u32..)
        .map(|(a, slot)| PeerEntry { addr: *a, node_id: heartbeat::node_id(a), slot, health: None })
        .collect();

    let iface = match &cfg.xdp_interface {
        Some(i) => i.clone(),
        None => interface_of(me.ip()).ok_or(AgentError::NoInterface { ip: me.ip() })?,
    };
    let mode = match cfg.xdp_mode {
        XdpMode::Auto => ModeChoice::Auto,
        XdpMode::Native => ModeChoice::Native,
        XdpMode::Generic => ModeChoice::Generic,
    };
    // XDP on the heartbeat interface and, when the VIP lives elsewhere, on that one too: the
    // fence must see every path client traffic can take.
    let mut ifaces = vec![iface.as_str()];
    if let Some(v) = cfg.virtual_ip_interface.as_deref().filter(|v| *v != iface) {
        ifaces.push(v);
    }
    let mut dp = Datapath::open(&opts.bpffs_dir.join(&cfg.cluster), &ifaces, mode)?;
    let attachment = dp.attachments().first().map(|(_, a)| a.to_string()).unwrap_or_default();
    let epoch = if dp.reused_maps() { dp.fence().map_or(0, |f| f.epoch) } else { 0 };

    let db_target = if cfg.is_witness {
        None
    } else {
        Some(localdb::target(&cfg, &opts.config_dir, &me.ip().to_string()).map_err(AgentError::Password)?)
    };
    let (role, first_db) = match &db_target {
        None => (Role::Witness, DbView::default()),
        Some(t) => match localdb::initial_role(&cfg, t).await {
            Ok((r, info)) => (r, DbView { up: Some(true), info: Some(info), error: None }),
            Err(e) => {
                tracing::warn!(error = %e, "local database does not answer: starting as Idle");
                (Role::Idle, DbView { up: None, info: None, error: Some(e.to_string()) })
            }
        },
    };

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
    let mut fence_flags = if cfg.fence_mode == FenceMode::Reset { FENCE_RESET } else { 0 };
    if !matches!(role, Role::Standby | Role::Witness) {
        // A primary, or a database we could not ask (it may be one).
        fence_flags |= efm_common::maps::FENCE_FENCED;
    }
    let fence = FenceState {
        flags: fence_flags,
        role: u32::from(role.bits()),
        epoch,
        lease_timeout_ns: u64::try_from(cfg.lease_timeout.as_nanos()).unwrap_or(u64::MAX),
        ..FenceState::default()
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
    let members: Vec<IpAddr> = peer_addrs.iter().map(SocketAddr::ip).collect();
    dp.set_exempt_with_members(&always, &members)?;

    let mut pinger = Pinger::new(me, &cfg.cluster, key, peer_addrs.clone(), heartbeat::realtime_ns(), dp.nonce())
        .map_err(|source| AgentError::Socket { addr: me, source })?;
    let mut detector = Detector::new(
        DetectorConfig { node_timeout: cfg.node_timeout, rtt_window: Duration::from_mins(1) },
        heartbeat::monotonic_ns(),
        peers.iter().map(|p| p.node_id),
    );

    let coord = crate::coordination::Coordinator::start(crate::coordination::CoordConfig {
        cluster: cfg.cluster.clone(),
        me,
        key,
        state_dir: opts.state_dir.clone(),
        nodes_file_members: cfg.nodes.clone(),
        kind: if cfg.is_witness { crate::coordination::NodeKind::Witness } else { crate::coordination::NodeKind::Database },
        priority: priority_of(&cfg, me),
        promotable: cfg.promotable && !cfg.is_witness,
        auto_allow_hosts: cfg.auto_allow_hosts,
        stable_nodes_file: cfg.stable_nodes_file,
        nodes_file_path: opts.config_dir.join(format!("{}.nodes", cfg.cluster)),
        timings: {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut t = crate::coordination::RaftTimings::default();
            t.heartbeat_ms = ms(cfg.raft_heartbeat_interval);
            t.election_min_ms = ms(cfg.raft_election_timeout).max(t.heartbeat_ms * 2);
            t.election_max_ms = t.election_min_ms * 2;
            t.rpc_timeout_ms = t.rpc_timeout_ms.max(t.heartbeat_ms * 2);
            t
        },
    })
    .await?;
    let coord = Arc::new(coord);
    let vip_held = match (cfg.virtual_ip, &cfg.virtual_ip_interface) {
        (Some(v), i) => crate::vip::is_assigned_here(i.as_deref().unwrap_or(&iface), v).unwrap_or(false),
        _ => false,
    };
    let mut ha = crate::ha::runtime::HaRuntime::new(
        crate::ha::Engine::new(crate::ha::runtime::engine_config(&cfg, me)),
        coord.clone(),
        cfg.clone(),
        opts.config_dir.clone(),
        iface.clone(),
        vip_held,
        crate::coordination::NodeInfo {
            kind: if cfg.is_witness { crate::coordination::NodeKind::Witness } else { crate::coordination::NodeKind::Database },
            priority: if cfg.is_witness { 0 } else { priority_of(&cfg, me) },
            promotable: cfg.promotable && !cfg.is_witness,
        },
        &opts.state_dir,
    );

    let interval = cfg.heartbeat_interval;
    let shared = Arc::new(Mutex::new(Shared {
        config: cfg.clone(),
        me,
        node_id: heartbeat::node_id(&me),
        role,
        db: first_db,
        peers,
        attachment: attachment.clone(),
        epoch,
        config_dir: opts.config_dir.clone(),
        outcome: None,
        leader: None,
        kernel: KernelView::default(),
        suspended: None,
        custom_monitor_failed: None,
        stop_requested: false,
        started_unix_ms: unix_ms(),
        committed_primary: None,
        metrics: None,
        wal: None,
    }));

    let listener = admin::bind(&admin::socket_path(&opts.run_dir, &cfg.cluster))?;
    let admin_shared = shared.clone();
    let admin_coord = coord.clone();
    let admin_task = tokio::spawn(admin::serve(listener, move |req| {
        let (shared, coord) = (admin_shared.clone(), admin_coord.clone());
        async move { handle(&shared, &coord, req).await }
    }));
    let db_task = db_target.map(|t| tokio::spawn(localdb::run(shared.clone(), t)));
    let custom_monitor = cfg
        .script_custom_monitor
        .as_ref()
        .filter(|_| !cfg.is_witness)
        .map(|_| tokio::spawn(crate::custom_monitor::run(shared.clone())));
    let health = health_listener.map(|l| l.serve(shared.clone()));

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    tracing::info!(
        cluster = %cfg.cluster, node = %me, %role, interface = %iface, xdp = %attachment,
        peers = peer_addrs.len(), "efm-agent started"
    );
    crate::notify::install(crate::notify::Notifier::start(&cfg));
    crate::ha::runtime::notify(&cfg, agent_event(role, true));
    lifecycle::notify("READY=1");
    lifecycle::notify(&format!("STATUS={role} on {me}, {} peers", peer_addrs.len()));

    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fenced_at_exit = role == Role::Primary;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match one_tick(&shared, &mut dp, &mut pinger, &mut detector, &mut ha) {
                    Ok(keep) => fenced_at_exit = keep,
                    Err(e) => tracing::error!(error = %e, "reading the datapath failed"),
                }
                if health.is_some() {
                    let primary = coord.state().borrow().primary;
                    if let Err(e) = crate::health::after_tick(&shared, &dp, primary) {
                        tracing::warn!(error = %e, "reading the datapath for /metrics failed");
                    }
                }
                let mut s = lock(&shared);
                s.leader = coord.leader();
                if s.stop_requested {
                    break;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    tracing::info!("efm-agent stopping");
    lifecycle::notify("STOPPING=1");
    {
        let role = lock(&shared).effective_role();
        crate::ha::runtime::notify(&cfg, agent_event(role, false));
    }
    admin_task.abort();
    if let Some(h) = health {
        h.stop();
    }
    if let Some(t) = db_task {
        t.abort();
    }
    if let Some(t) = custom_monitor {
        t.abort();
    }
    let stop_cluster = lock(&shared).stop_requested;
    let _ = std::fs::remove_file(admin::socket_path(&opts.run_dir, &cfg.cluster));
    drop(ha);
    if let Ok(c) = Arc::try_unwrap(coord) {
        c.shutdown().await;
    }
    let db_primary = lock(&shared).db.info.as_ref().is_some_and(|i| !i.in_recovery);
    if stop_cluster && !fenced_at_exit {
        // `efm stop-cluster`: no agent is left to endorse a lease, and the databases must keep
        // serving as they are; a fenced node stays fenced.
        tracing::warn!("efm stop-cluster: detaching XDP; the cluster has no failover protection until the agents start again");
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
fn notify_peer_failure(shared: &Arc<Mutex<Shared>>, addr: SocketAddr, verdict: Verdict, role: Role) {
    use crate::notify::Event;
    let cfg = lock(shared).config.clone();
    tracing::warn!(peer = %addr, %verdict, %role, "peer failure");
    let node = addr.to_string();
    let event = match role {
        Role::Primary => Event::PrimaryLeft { node },
        Role::Standby => Event::StandbyAgentFailed { node },
        Role::Witness => Event::WitnessFailure { node },
        Role::Idle => Event::IdleAgentFailure { node },
    };
    crate::ha::runtime::notify(&cfg, event);
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

/// One cycle: kernel slots → detector → HA engine → kernel fence state and PINGs. Returns whether
/// the node is fenced.
#[expect(clippy::result_large_err, reason = "an error here is logged and the loop goes on")]
fn one_tick(
    shared: &Arc<Mutex<Shared>>,
    dp: &mut Datapath,
    pinger: &mut Pinger,
    detector: &mut Detector,
    ha: &mut crate::ha::runtime::HaRuntime,
) -> Result<bool, DatapathError> {
    let slots = lock(shared).peers.iter().map(|p| (p.node_id, p.slot, p.addr)).collect::<Vec<_>>();
    let now = heartbeat::monotonic_ns();
    let mut healths = Vec::with_capacity(slots.len());
    let mut echoes = Vec::with_capacity(slots.len());
    for (node_id, slot, addr) in slots {
        let s = dp.slot(slot)?;
        echoes.push((addr, s.peer_nonce));
        let h = dp.rtt_histogram(slot)?;
        if let Some(c) = detector.observe(now, node_id, &s, &h) {
            match c.to {
                Verdict::Alive => tracing::info!(peer = %addr, from = %c.from, "peer agent alive"),
                Verdict::Unknown => {}
                to => {
                    tracing::warn!(peer = %addr, from = %c.from, verdict = %to, "peer verdict changed");
                    notify_peer_failure(shared, addr, to, Role::from_bits(detector.peer(node_id).map_or(0, |h| h.role)));
                }
            }
        }
        healths.push(detector.peer(node_id));
    }
    let lsn = {
        let mut s = lock(shared);
        for (p, h) in s.peers.iter_mut().zip(healths) {
            p.health = h;
        }
        // Read every half heartbeat, not every `local.period`; 0 ("unknown") when stale.
        localdb::fresh_lsn(s.wal, now, s.config.heartbeat_interval)
    };
    let (desired, _) = ha.cycle(shared, dp, now)?;
    let view = LocalView { flags: desired.ping_flags, epoch: desired.epoch, lsn };
    let echo = |peer: SocketAddr| echoes.iter().find(|(a, _)| *a == peer).map_or(0, |(_, n)| *n);
    for (peer, e) in pinger.send_round(view, now, desired.endorse, echo) {
        tracing::debug!(%peer, error = %e, "PING not sent");
    }
    if desired.endorse.is_some() {
        // The promotion wait counts from when the endorsement actually left.
        ha.endorsement_sent(desired.epoch, heartbeat::monotonic_ns());
    }
    Ok(desired.fenced)
}

/// The committed cluster state, copied out of the watch (its guard must not live across an
/// await).
fn cluster_state(coord: &crate::coordination::Coordinator) -> Arc<crate::coordination::ClusterState> {
    coord.state().borrow().clone()
}

/// Answers one admin request.
pub async fn handle(shared: &Arc<Mutex<Shared>>, coord: &Arc<crate::coordination::Coordinator>, req: Request) -> Response {
    // Unknown commands and malformed fields were answered by `admin::parse_request` already.
    match &req.command {
        crate::admin::AdminCommand::NodeStatus => Response::ok(crate::report::node_status(shared)),
        crate::admin::AdminCommand::ClusterStatus => match crate::report::cluster_status(shared, &cluster_state(coord)).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        },
        _ => crate::operator::handle(shared, coord, &req).await,
    }
}
