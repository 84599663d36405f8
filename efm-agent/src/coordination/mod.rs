//! Cluster coordination: the replicated [`ClusterState`] (allowed nodes, primary, **epoch**,
//! failover flags, switchover, promotion history) kept consistent by openraft, embedded in every
//! agent (witness included) and spoken over authenticated TCP on the `bind.address` port.
//!
//! - [`state`]: the state and the pure rules ([`apply`]) — at most one `Promote` per epoch.
//! - [`store`]: log, vote, committed index and snapshots in `<state_dir>/<cluster>.raft.redb`.
//! - [`wire`], [`net`]: framing, MACs, connection pool, openraft's `RaftNetwork`.
//! - [`Coordinator`]: lifecycle, bootstrap, joins, membership and the `.nodes` file.
//!
//! # Bootstrap (no Raft state on disk)
//! 1. The `.nodes` list, minus this node, is empty: initialize a single-voter cluster {me}.
//! 2. Otherwise ask every listed member to let this node `Join`. A member that has Raft state
//!    answers: already a member (its membership lists us: nothing to do, the leader replicates to
//!    us), joined (the leader admitted us), refused (not allowed: start fails), or "ask the leader".
//! 3. If every listed member is unreachable or has no Raft state either, and the list contains this
//!    node, the list declares a fresh cluster: initialize with exactly the listed members. openraft
//!    accepts `initialize` with the identical membership on every node (the first log entry is the
//!    same everywhere), so **a fresh cluster must start from `.nodes` files that name the same
//!    member set**. The list is the file plus this node (`config` adds `bind.address` when the
//!    file leaves it out, as EFM 2.0 files do: they list only the *other* members), so 3.x files
//!    listing everyone and 2.0 files each listing the others both give the identical full set.
//!
//! A node with Raft state on disk just restarts from it. Failed voters count toward the quorum until
//! removed (`DisallowNode` removes a node from the membership too): EFM 5 semantics.

pub mod net;
pub mod state;
pub mod store;
pub mod types;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Cursor},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use efm_common::wire::ClusterKeyBytes;
use openraft::{
    error::{CheckIsLeaderError, ClientWriteError, RaftError},
    ChangeMembers, Raft, ServerState, Snapshot, SnapshotPolicy,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};

pub use self::{
    net::JoinReply,
    state::{
        apply, ApplyOk, ClusterState, Command, NodeInfo, NodeKind, Promotion, Rejected, Response, Switchover,
        HISTORY_LEN,
    },
    types::{raft_id, RaftNode, TypeConfig},
};
use self::{
    net::{ForwardError, NetFactory, NetShared, Reply, Rpc},
    store::{LogStore, StateMachine},
    wire::Conn,
};

/// Raft timings (ms) and log compaction. Defaults suit a LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    /// Leader heartbeat interval; also openraft's deadline for one `AppendEntries`.
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Deadline for one `Vote` (and the cap for `AppendEntries`), connection set-up included.
    pub rpc_timeout_ms: u64,
    /// Deadline for sending a whole snapshot.
    pub snapshot_timeout_ms: u64,
    /// How long [`Coordinator::propose`] tries before giving up.
    pub propose_timeout_ms: u64,
    /// Deadline for one `Join` (the leader adds a learner, waits for catch-up, makes it a voter).
    pub join_timeout_ms: u64,
    /// Take a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            rpc_timeout_ms: 100,
            snapshot_timeout_ms: 2_000,
            propose_timeout_ms: 2_000,
            join_timeout_ms: 5_000,
            snapshot_every: 500,
        }
    }
}

/// What [`Coordinator::start`] needs.
#[derive(Clone, Debug)]
pub struct CoordConfig {
    pub cluster: String,
    /// This node's `bind.address`; Raft listens on TCP at this address.
    pub me: SocketAddr,
    pub key: ClusterKeyBytes,
    /// Holds `<cluster>.raft.redb`.
    pub state_dir: PathBuf,
    /// The members listed in the `.nodes` file.
    pub nodes_file_members: Vec<SocketAddr>,
    pub kind: NodeKind,
    pub priority: u32,
    pub promotable: bool,
    /// `auto.allow.hosts`: admit any node that knows the cluster key.
    pub auto_allow_hosts: bool,
    /// `stable.nodes.file`: never rewrite the `.nodes` file.
    pub stable_nodes_file: bool,
    pub nodes_file_path: PathBuf,
    pub timings: RaftTimings,
}

impl CoordConfig {
    /// What this node announces in `Join` and `Register`.
    #[must_use]
    pub fn info(&self) -> NodeInfo {
        NodeInfo { kind: self.kind, priority: self.priority, promotable: self.promotable }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("Raft store {path}: {source}")]
    Store { path: PathBuf, source: redb::Error },
    #[error("cannot listen for Raft on TCP {addr}: {source} (is another agent of this cluster running?)")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("Raft: {0}")]
    Raft(String),
    #[error(
        "proposal not committed within {after:?}: {}",
        match leader {
            Some(l) => format!("the (last known) leader {l} did not confirm it (a majority of voters must be reachable; the outcome is unknown)"),
            None => "no leader could be elected (a majority of voters must be reachable)".to_owned(),
        }
    )]
    Timeout { after: Duration, leader: Option<SocketAddr> },
    #[error("joining the cluster was refused by {by}: {why}")]
    JoinRefused { by: SocketAddr, why: String },
    #[error("the coordinator is shut down")]
    Shutdown,
}

/// A summary of Raft's state on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordMetrics {
    pub id: u64,
    pub state: ServerState,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last index known committed here (openraft 0.9 reports it as applied).
    pub commit_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub leader: Option<SocketAddr>,
    pub voters: Vec<SocketAddr>,
    pub learners: Vec<SocketAddr>,
    /// Connections and frames rejected by the transport (bad MAC, unknown sender, replay, ...).
    pub rejected_frames: u64,
}

struct Inner {
    cfg: CoordConfig,
    id: u64,
    raft: Raft<TypeConfig>,
    net: Arc<NetShared>,
    state_rx: watch::Receiver<Arc<ClusterState>>,
    rejected: AtomicU64,
    join_lock: tokio::sync::Mutex<()>,
}

/// The running coordination layer of one agent.
pub struct Coordinator {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

fn raft_err(e: impl std::fmt::Display) -> CoordError {
    CoordError::Raft(e.to_string())
}

impl Coordinator {
    /// Opens the store, listens, starts Raft and bootstraps or joins as the module documentation
    /// describes. Returns once the node is part of a cluster or, when it must join one that cannot
    /// be reached yet, with the join retried in the background.
    pub async fn start(cfg: CoordConfig) -> Result<Self, CoordError> {
        let path = cfg.state_dir.join(format!("{}.raft.redb", cfg.cluster));
        let store_err = |source| CoordError::Store { path: path.clone(), source };
        let delay = store::test_commit_delay().map_err(CoordError::Raft)?;
        if !delay.is_zero() {
            tracing::warn!(env = store::DELAY_ENV, ?delay, "test hook: every Raft store commit is delayed");
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| store_err(e.into()))?;
        let db = open_db_retrying(&path, delay).await.map_err(store_err)?;
        let shared = db.clone();
        let (had_state, (sm, state_rx)) =
            db.run(move |d| Ok((d.has_state()?, StateMachine::open(shared)?))).await.map_err(store_err)?;
        let log = LogStore::new(db);

        let t = &cfg.timings;
        let rcfg = openraft::Config {
            cluster_name: cfg.cluster.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            install_snapshot_timeout: t.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: t.snapshot_every / 2,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(raft_err)?;

        let listener = TcpListener::bind(cfg.me).await.map_err(|source| CoordError::Bind { addr: cfg.me, source })?;
        let id = raft_id(&cfg.me);
        let net = Arc::new(NetShared::new(cfg.me, cfg.key, cfg.cluster.clone(), cfg.timings.clone()));
        let raft = Raft::new(id, Arc::new(rcfg), NetFactory(net.clone()), log, sm).await.map_err(raft_err)?;
        let inner = Arc::new(Inner {
            cfg,
            id,
            raft,
            net,
            state_rx,
            rejected: AtomicU64::new(0),
            join_lock: tokio::sync::Mutex::new(()),
        });
        let tasks = vec![tokio::spawn(serve(inner.clone(), listener)), tokio::spawn(watch_membership(inner.clone()))];
        tracing::info!(me = %inner.cfg.me, id, had_state, "Raft coordinator started");

        let mut this = Self { inner, tasks };
        this.tasks.push(tokio::spawn(rejoin_when_removed(this.inner.clone(), had_state)));
        if !had_state {
            match bootstrap(&this.inner).await {
                Ok(Some(t)) => this.tasks.push(t),
                Ok(None) => {}
                Err(e) => {
                    this.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(this)
    }

    /// The committed state; changes with every applied entry.
    #[must_use]
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.state_rx.clone()
    }

    /// Proposes a command through the leader (forwarded when this node is not the leader) and
    /// returns what applying it yielded. Fails with [`CoordError::Timeout`] after
    /// `propose_timeout_ms`; then the outcome is unknown (the entry may still commit): read
    /// [`Coordinator::state`]. Commands guarded by `expected_epoch` are safe to retry.
    pub async fn propose(&self, cmd: Command) -> Result<Response, CoordError> {
        propose(&self.inner, cmd).await
    }

    /// A read barrier: returns once this node's state machine (and so [`Coordinator::state`])
    /// has applied every entry the leader had committed when it was asked, e.g. an operator's
    /// `set-priority` answered by another node a moment ago. Needs a reachable leader with a
    /// quorum, like [`Coordinator::propose`], and fails the same way after `propose_timeout_ms`.
    pub async fn sync(&self) -> Result<(), CoordError> {
        sync(&self.inner).await
    }

    /// `efm reset-members`: removes `nodes` from the voters (through the leader), so that they
    /// no longer count for the quorum; they stay allowed and join again when their agents start
    /// or reconnect. Returns the voters after the change. The change needs the quorum of the
    /// current voters, like any other.
    pub async fn remove_voters(&self, nodes: &[SocketAddr]) -> Result<Vec<SocketAddr>, CoordError> {
        let after = Duration::from_millis(self.inner.cfg.timings.propose_timeout_ms);
        let deadline = Instant::now() + after;
        let mut last_leader = None;
        let mut metrics = self.inner.raft.metrics();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CoordError::Timeout { after, leader: last_leader });
            }
            let answer = match leader_addr(&self.inner) {
                Some(l) if l == self.inner.cfg.me => {
                    last_leader = Some(l);
                    tokio::time::timeout(left, local_remove_voters(&self.inner, nodes)).await.ok()
                }
                Some(l) => {
                    last_leader = Some(l);
                    match self.inner.net.call(l, &Rpc::RemoveVoters(nodes.to_vec()), left).await {
                        Ok(Reply::RemoveVoters(r)) => Some(r),
                        Ok(other) => {
                            tracing::debug!(leader = %l, "remove voters: unexpected {other:?}; retrying");
                            None
                        }
                        Err(e) => {
                            tracing::debug!(leader = %l, "remove voters: {e}; retrying");
                            None
                        }
                    }
                }
                None => {
                    let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), metrics.changed()).await;
                    continue;
                }
            };
            match answer {
                Some(Ok(v)) => return Ok(v),
                Some(Err(ForwardError::Failed(e))) => return Err(CoordError::Raft(e)),
                Some(Err(ForwardError::NotLeader(_))) | None => {}
            }
            tokio::time::sleep(left.min(Duration::from_millis(10))).await;
        }
    }

    /// The current Raft leader's address, as this node knows it.
    #[must_use]
    pub fn leader(&self) -> Option<SocketAddr> {
        leader_addr(&self.inner)
    }

    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id)
    }

    #[must_use]
    pub fn metrics(&self) -> CoordMetrics {
        let m = self.inner.raft.metrics().borrow().clone();
        let addr = |id: u64| m.membership_config.membership().get_node(&id).map(|n| n.addr);
        let voters = m.membership_config.membership().voter_ids().filter_map(addr).collect();
        let learners = m.membership_config.membership().learner_ids().filter_map(addr).collect();
        CoordMetrics {
            id: m.id,
            state: m.state,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: m.last_applied.map(|l| l.index),
            last_applied: m.last_applied.map(|l| l.index),
            leader: m.current_leader.and_then(addr),
            voters,
            learners,
            rejected_frames: self.inner.rejected.load(Ordering::Relaxed),
        }
    }

    /// This node's Raft id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Stops listening, closes every connection and stops Raft (the store is closed when this
    /// returns, so a new coordinator can open it).
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("Raft shutdown: {e}");
        }
        self.inner.net.clear();
        tracing::info!(me = %self.inner.cfg.me, "Raft coordinator stopped");
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn open_db_retrying(path: &std::path::Path, delay: Duration) -> Result<Arc<store::Disk>, redb::Error> {
    // A coordinator shut down a moment ago may still be releasing the file lock.
    let mut tries = 0;
    loop {
        let p = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || store::open_db(&p, delay))
            .await
            .map_err(|e| redb::Error::Io(io::Error::other(format!("store task: {e}"))))?;
        match opened {
            Err(redb::Error::DatabaseAlreadyOpen) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

fn leader_addr(inner: &Inner) -> Option<SocketAddr> {
    let m = inner.raft.metrics();
    let m = m.borrow();
    let l = m.current_leader?;
    m.membership_config.membership().get_node(&l).map(|n| n.addr)
}

/// The voters' addresses, as this node's membership says.
fn voters(inner: &Inner) -> Vec<SocketAddr> {
    let m = inner.raft.metrics();
    let m = m.borrow();
    let mem = m.membership_config.membership();
    mem.voter_ids().filter_map(|v| mem.get_node(&v).map(|n| n.addr)).collect()
}

fn members(inner: &Inner) -> BTreeMap<u64, SocketAddr> {
    let m = inner.raft.metrics();
    let m = m.borrow();
    m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr)).collect()
}

fn is_known(inner: &Inner, addr: &SocketAddr) -> bool {
    inner.cfg.auto_allow_hosts
        || inner.cfg.nodes_file_members.contains(addr)
        || inner.state_rx.borrow().allowed.contains(addr)
        || members(inner).values().any(|a| a == addr)
}

/// Writes through the local Raft (which must be the leader).
async fn local_write(inner: &Inner, cmd: Command) -> Result<Response, ForwardError> {
    match inner.raft.client_write(cmd).await {
        Ok(r) => Ok(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader(f.leader_node.map(|n| n.addr)))
        }
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    }
}

/// Leader side of [`Coordinator::remove_voters`].
async fn local_remove_voters(inner: &Inner, nodes: &[SocketAddr]) -> Result<Vec<SocketAddr>, ForwardError> {
    if leader_addr(inner) != Some(inner.cfg.me) {
        return Err(ForwardError::NotLeader(leader_addr(inner)));
    }
    let _serial = inner.join_lock.lock().await;
    let m = members(inner);
    let ids: BTreeSet<u64> = m.iter().filter(|(_, a)| nodes.contains(a)).map(|(id, _)| *id).collect();
    let voter_ids: BTreeSet<u64> = inner.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    let ids: BTreeSet<u64> = ids.intersection(&voter_ids).copied().collect();
    if ids.contains(&inner.id) {
        return Err(ForwardError::Failed(format!("{} is the Raft leader; it cannot remove itself", inner.cfg.me)));
    }
    if ids.len() >= voter_ids.len() {
        return Err(ForwardError::Failed("removing every voter would leave no cluster".into()));
    }
    if !ids.is_empty() {
        tracing::warn!(?nodes, "efm reset-members: removing failed members from the voters");
        if let Err(e) = inner.raft.change_membership(ChangeMembers::RemoveVoters(ids.clone()), false).await {
            return Err(ForwardError::Failed(format!("membership change: {e}")));
        }
        // Forget them as nodes too (they were learners after the change): a returning agent
        // joins afresh through `Join`.
        if let Err(e) = inner.raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await {
            tracing::warn!("removing the former voters' nodes: {e}");
        }
    }
    Ok(voters(inner))
}

/// The leader's read index: leadership confirmed by a quorum, then the index to have applied.
async fn local_read_index(inner: &Inner) -> Result<u64, ForwardError> {
    match inner.raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader(f.leader_node.map(|n| n.addr)))
        }
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    }
}

async fn sync(inner: &Inner) -> Result<(), CoordError> {
    let after = Duration::from_millis(inner.cfg.timings.propose_timeout_ms);
    let deadline = Instant::now() + after;
    let mut last_leader = None;
    let mut metrics = inner.raft.metrics();
    let index = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CoordError::Timeout { after, leader: last_leader });
        }
        let answer = match leader_addr(inner) {
            Some(l) if l == inner.cfg.me => {
                last_leader = Some(l);
                tokio::time::timeout(left, local_read_index(inner)).await.ok()
            }
            Some(l) => {
                last_leader = Some(l);
                match inner.net.call(l, &Rpc::ReadIndex, left).await {
                    Ok(Reply::ReadIndex(r)) => Some(r),
                    Ok(other) => {
                        tracing::debug!(leader = %l, "read index: unexpected {other:?}; retrying");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(leader = %l, "read index: {e}; retrying");
                        None
                    }
                }
            }
            None => {
                let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), metrics.changed()).await;
                continue;
            }
        };
        match answer {
            Some(Ok(i)) => break i,
            Some(Err(ForwardError::Failed(e))) if e.contains("fatal") || e.contains("Fatal") => {
                return Err(CoordError::Raft(e));
            }
            Some(Err(e)) => tracing::debug!("read index: {e:?}; retrying"),
            None => {}
        }
        tokio::time::sleep(left.min(Duration::from_millis(10))).await;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match inner.raft.wait(Some(left)).applied_index_at_least(Some(index), "read barrier").await {
        Ok(_) => Ok(()),
        Err(openraft::metrics::WaitError::ShuttingDown) => Err(CoordError::Shutdown),
        Err(openraft::metrics::WaitError::Timeout(..)) => Err(CoordError::Timeout { after, leader: last_leader }),
    }
}

async fn propose(inner: &Inner, cmd: Command) -> Result<Response, CoordError> {
    let after = Duration::from_millis(inner.cfg.timings.propose_timeout_ms);
    let deadline = Instant::now() + after;
    let mut last_leader = None;
    let mut metrics = inner.raft.metrics();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CoordError::Timeout { after, leader: last_leader });
        }
        match leader_addr(inner) {
            Some(l) if l == inner.cfg.me => {
                last_leader = Some(l);
                match tokio::time::timeout(left, local_write(inner, cmd.clone())).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(ForwardError::Failed(e))) if e.contains("fatal") || e.contains("Fatal") => {
                        return Err(CoordError::Raft(e));
                    }
                    Ok(Err(e)) => tracing::debug!("local proposal: {e:?}; retrying"),
                    Err(_) => return Err(CoordError::Timeout { after, leader: last_leader }),
                }
            }
            Some(l) => {
                last_leader = Some(l);
                match inner.net.call(l, &Rpc::ClientWrite(cmd.clone()), left).await {
                    Ok(Reply::ClientWrite(Ok(r))) => return Ok(r),
                    Ok(other) => {
                        tracing::debug!(leader = %l, "forwarded proposal: {other:?}; retrying");
                    }
                    Err(e) => tracing::debug!(leader = %l, "forwarding proposal: {e}; retrying"),
                }
            }
            None => {
                let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), metrics.changed()).await;
                continue;
            }
        }
        tokio::time::sleep(left.min(Duration::from_millis(10))).await;
    }
}

/// Bootstrap when the store is empty; returns a background join task when one is needed.
async fn bootstrap(inner: &Arc<Inner>) -> Result<Option<JoinHandle<()>>, CoordError> {
    let me = inner.cfg.me;
    let others: Vec<SocketAddr> = inner.cfg.nodes_file_members.iter().copied().filter(|a| *a != me).collect();
    if others.is_empty() {
        tracing::info!(%me, "no other members listed: initializing a single-voter cluster");
        initialize(inner, &[me]).await?;
        return Ok(None);
    }
    match try_join(inner, &others).await? {
        JoinOutcome::Member => Ok(None),
        JoinOutcome::NoCluster if inner.cfg.nodes_file_members.contains(&me) => {
            let mut all = inner.cfg.nodes_file_members.clone();
            all.sort();
            all.dedup();
            tracing::info!(%me, members = ?all, "no listed member has Raft state: initializing the cluster from the .nodes list");
            initialize(inner, &all).await?;
            Ok(None)
        }
        JoinOutcome::NoCluster | JoinOutcome::Retry => {
            tracing::info!(%me, "could not join yet; retrying in the background");
            let inner = inner.clone();
            Ok(Some(tokio::spawn(async move {
                let mut backoff = Duration::from_millis(200);
                loop {
                    tokio::time::sleep(backoff).await;
                    match try_join(&inner, &others).await {
                        Ok(JoinOutcome::Member) => return,
                        Ok(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                        Err(e) => {
                            tracing::error!("{e}");
                            return;
                        }
                    }
                }
            })))
        }
    }
}

async fn initialize(inner: &Inner, members: &[SocketAddr]) -> Result<(), CoordError> {
    let nodes: BTreeMap<u64, RaftNode> = members.iter().map(|a| (raft_id(a), RaftNode { addr: *a })).collect();
    match inner.raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Already initialized (e.g. a leader replicated to us meanwhile): fine.
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(e))) => {
            tracing::info!("initialize: {e}");
            Ok(())
        }
        Err(e) => Err(raft_err(e)),
    }
}

enum JoinOutcome {
    /// We are (now) in the membership.
    Member,
    /// Nobody answered with Raft state.
    NoCluster,
    /// A cluster exists but did not admit us yet.
    Retry,
}

async fn try_join(inner: &Inner, others: &[SocketAddr]) -> Result<JoinOutcome, CoordError> {
    let rpc = Rpc::Join { node: inner.cfg.me, info: inner.cfg.info() };
    let t = Duration::from_millis(inner.cfg.timings.join_timeout_ms);
    let probe_t = Duration::from_millis(inner.cfg.timings.election_max_ms.max(200));
    let mut queue: Vec<(SocketAddr, Duration)> = others.iter().map(|a| (*a, probe_t)).collect();
    let mut outcome = JoinOutcome::NoCluster;
    let mut asked = BTreeSet::new();
    while let Some((peer, timeout)) = queue.pop() {
        if !asked.insert(peer) && timeout == probe_t {
            continue;
        }
        match inner.net.call(peer, &rpc, timeout.max(t)).await {
            Ok(Reply::Join(JoinReply::Joined { voters } | JoinReply::AlreadyMember { voters })) => {
                tracing::info!(%peer, ?voters, "member of the cluster");
                return Ok(JoinOutcome::Member);
            }
            Ok(Reply::Join(JoinReply::NotInitialized)) => {}
            Ok(Reply::Join(JoinReply::NotLeader(l))) => {
                outcome = JoinOutcome::Retry;
                if let Some(l) = l {
                    if asked.len() < others.len() + 4 {
                        queue.push((l, t));
                    }
                }
            }
            Ok(Reply::Join(JoinReply::Refused(why))) => return Err(CoordError::JoinRefused { by: peer, why }),
            Ok(other) => {
                tracing::warn!(%peer, "join: {other:?}");
                outcome = JoinOutcome::Retry;
            }
            Err(e) => tracing::info!(%peer, "join: {e}"),
        }
    }
    Ok(outcome)
}

/// A node that was removed from the cluster asks to join again every few seconds until it is
/// a member: after `efm disallow-node` (then stopped and restarted) the leader refuses while it
/// stays disallowed and admits it once `efm allow-node` allowed it; after `efm reset-members`
/// (it stayed allowed) it is admitted as soon as it reaches the leader. A node removed while it
/// was cut off never hears of its removal: it only notices that no leader talks to it, so a
/// node without a leader for [`LEADERLESS_REJOIN`] asks too (the leader answers
/// `AlreadyMember` when it still is one).
///
/// A node that starts without Raft state joins through [`bootstrap`]; this task takes over once
/// it was a member.
async fn rejoin_when_removed(inner: Arc<Inner>, had_state: bool) {
    let me = inner.cfg.me;
    let mut was_member = had_state;
    let mut refused_logged = false;
    let mut leaderless_since: Option<Instant> = None;
    let mut last_leaderless_ask: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let state = inner.state_rx.borrow().clone();
        was_member |= state.allowed.contains(&me) && voters(&inner).contains(&me);
        if !was_member {
            continue;
        }
        let now = Instant::now();
        let has_leader = leader_addr(&inner).is_some();
        leaderless_since = if has_leader { None } else { leaderless_since.or(Some(now)) };
        let removed = !state.allowed.contains(&me) || (!state.voters().is_empty() && !voters(&inner).contains(&me));
        let leaderless = leaderless_since.is_some_and(|t| now.duration_since(t) >= LEADERLESS_REJOIN)
            && last_leaderless_ask.is_none_or(|t| now.duration_since(t) >= LEADERLESS_REJOIN);
        if !removed && !leaderless {
            refused_logged = false;
            continue;
        }
        if leaderless {
            last_leaderless_ask = Some(now);
        }
        let mut others: Vec<SocketAddr> =
            inner.cfg.nodes_file_members.iter().chain(state.allowed.iter()).copied().filter(|a| *a != me).collect();
        others.sort();
        others.dedup();
        match try_join(&inner, &others).await {
            Ok(JoinOutcome::Member) if removed => tracing::info!("joined the cluster again"),
            Ok(_) => {}
            Err(e) => {
                if !refused_logged {
                    tracing::warn!("not a member of the cluster: {e}; asking again every few seconds");
                    refused_logged = true;
                }
            }
        }
    }
}

/// How long a node hears no leader before it asks whether it was removed meanwhile.
const LEADERLESS_REJOIN: Duration = Duration::from_secs(5);

/// Leader side of `Join`.
async fn handle_join(inner: &Inner, node: SocketAddr, info: NodeInfo) -> JoinReply {
    match inner.raft.is_initialized().await {
        Ok(true) => {}
        Ok(false) => return JoinReply::NotInitialized,
        Err(e) => return JoinReply::Failed(e.to_string()),
    }
    let id = raft_id(&node);
    if members(inner).contains_key(&id) && voters(inner).contains(&node) {
        return JoinReply::AlreadyMember { voters: voters(inner) };
    }
    if leader_addr(inner) != Some(inner.cfg.me) {
        return JoinReply::NotLeader(leader_addr(inner));
    }
    let (allowed, disallowed) = {
        let st = inner.state_rx.borrow();
        (st.allowed.contains(&node), st.disallowed.contains(&node))
    };
    if disallowed {
        return JoinReply::Refused(format!(
            "{node} was disallowed; run `efm allow-node {} {}` on a member to let it join again",
            inner.cfg.cluster,
            node.ip()
        ));
    }
    if !allowed {
        if !inner.cfg.auto_allow_hosts {
            tracing::warn!(%node, "refusing to add a node that is not allowed (auto.allow.hosts=false)");
            return JoinReply::Refused(format!(
                "{node} is not an allowed node; run `efm allow-node {} {}` on a member first",
                inner.cfg.cluster,
                node.ip()
            ));
        }
        if let Err(e) = local_write(inner, Command::AllowNode { node }).await {
            return JoinReply::Failed(format!("{e:?}"));
        }
    }
    let _serial = inner.join_lock.lock().await;
    tracing::info!(%node, "adding node as learner");
    let t = Duration::from_millis(inner.cfg.timings.join_timeout_ms);
    match tokio::time::timeout(t, inner.raft.add_learner(id, RaftNode { addr: node }, true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return JoinReply::Failed(e.to_string()),
        Err(_) => return JoinReply::Failed(format!("{node} did not catch up within {t:?}")),
    }
    tracing::info!(%node, "learner caught up; making it a voter");
    match tokio::time::timeout(t, inner.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return JoinReply::Failed(e.to_string()),
        Err(_) => return JoinReply::Failed(format!("membership change not committed within {t:?}")),
    }
    if let Err(e) = local_write(inner, Command::Register { node, info }).await {
        tracing::warn!(%node, "registering joined node: {e:?}");
    }
    JoinReply::Joined { voters: voters(inner) }
}

async fn handle(inner: &Inner, rpc: Rpc) -> Reply {
    match rpc {
        Rpc::Append(r) => Reply::Append(inner.raft.append_entries(r).await),
        Rpc::Vote(r) => Reply::Vote(inner.raft.vote(r).await),
        Rpc::Snapshot { vote, meta, data } => Reply::Snapshot(
            inner.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }).await,
        ),
        Rpc::SnapshotChunk(r) => Reply::SnapshotChunk(inner.raft.install_snapshot(r).await),
        Rpc::ClientWrite(cmd) => Reply::ClientWrite(local_write(inner, cmd).await),
        Rpc::ReadIndex => Reply::ReadIndex(local_read_index(inner).await),
        Rpc::RemoveVoters(nodes) => Reply::RemoveVoters(local_remove_voters(inner, &nodes).await),
        Rpc::Join { node, info } => Reply::Join(handle_join(inner, node, info).await),
    }
}

/// Accepts Raft connections; aborting this task closes the listener and every connection.
async fn serve(inner: Arc<Inner>, listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((stream, src)) => {
                    conns.spawn(serve_conn(inner.clone(), stream, src));
                }
                Err(e) => {
                    tracing::warn!("Raft accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(inner: Arc<Inner>, stream: tokio::net::TcpStream, src: SocketAddr) {
    let reject = |e: &dyn std::fmt::Display| {
        inner.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%src, "Raft transport: dropping connection: {e}");
    };
    let hello_t = Duration::from_millis(inner.cfg.timings.rpc_timeout_ms.max(1_000));
    let mut conn =
        match Conn::accept(stream, inner.cfg.me, inner.cfg.key, &inner.cfg.cluster, |a| is_known(&inner, a), hello_t)
            .await
        {
            Ok(c) => c,
            Err(e) => return reject(&e),
        };
    loop {
        let bytes = match conn.recv().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => return reject(&format_args!("{} ({e})", conn.peer_addr)),
        };
        let rpc: Rpc = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return reject(&format_args!("{}: undecodable request ({e})", conn.peer_addr)),
        };
        if !conn.known && !matches!(rpc, Rpc::Join { node, .. } if node == conn.peer_addr) {
            return reject(&wire::WireError::UnknownSender(conn.peer_addr));
        }
        let reply = handle(&inner, rpc).await;
        let out = match serde_json::to_vec(&reply) {
            Ok(o) => o,
            Err(e) => return tracing::error!("encoding Raft reply: {e}"),
        };
        if let Err(e) = conn.send(&out).await {
            tracing::debug!(peer = %conn.peer_addr, "sending Raft reply: {e}");
            return;
        }
    }
}

/// Keeps the `.nodes` file in step with the membership (unless `stable.nodes.file`), and on the
/// leader removes members that were disallowed.
async fn watch_membership(inner: Arc<Inner>) {
    let mut metrics = inner.raft.metrics();
    let mut state = inner.state_rx.clone();
    let mut written: BTreeSet<SocketAddr> = inner.cfg.nodes_file_members.iter().copied().collect();
    loop {
        let m: BTreeMap<u64, SocketAddr> = members(&inner);
        let set: BTreeSet<SocketAddr> = m.values().copied().collect();
        if !set.is_empty() && set != written && !inner.cfg.stable_nodes_file {
            // fsync and rename on the blocking pool, off the runtime's threads.
            let (path, members) = (inner.cfg.nodes_file_path.clone(), set.clone());
            let written_now = tokio::task::spawn_blocking(move || write_nodes_file(&path, &members))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("writing task: {e}"))));
            match written_now {
                Ok(()) => {
                    tracing::info!(path = %inner.cfg.nodes_file_path.display(), members = ?set, "updated the .nodes file");
                    written = set;
                }
                Err(e) => {
                    tracing::warn!(path = %inner.cfg.nodes_file_path.display(), "writing the .nodes file: {e}");
                }
            }
        }
        if leader_addr(&inner) == Some(inner.cfg.me) {
            let disallowed = inner.state_rx.borrow().disallowed.clone();
            let gone: BTreeSet<u64> = m.iter().filter(|(_, a)| disallowed.contains(a)).map(|(id, _)| *id).collect();
            if !gone.is_empty() {
                tracing::info!(?gone, "removing disallowed nodes from the Raft membership");
                let _serial = inner.join_lock.lock().await;
                let voters: BTreeSet<u64> =
                    inner.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
                let (v, l): (BTreeSet<u64>, BTreeSet<u64>) = gone.into_iter().partition(|id| voters.contains(id));
                if !v.is_empty() {
                    if let Err(e) = inner.raft.change_membership(ChangeMembers::RemoveVoters(v), false).await {
                        tracing::warn!("removing voters: {e}");
                    }
                }
                if !l.is_empty() {
                    if let Err(e) = inner.raft.change_membership(ChangeMembers::RemoveNodes(l), false).await {
                        tracing::warn!("removing learners: {e}");
                    }
                }
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Atomically replaces the `.nodes` file ([`crate::files::write_atomic`], mode 0644).
fn write_nodes_file(path: &std::path::Path, members: &BTreeSet<SocketAddr>) -> io::Result<()> {
    let mut text = String::from("# Raft membership, kept in step by efm-agent (stable.nodes.file=false)\n");
    let list: Vec<String> = members
        .iter()
        .map(|a| if a.is_ipv6() { format!("[{}]:{}", a.ip(), a.port()) } else { a.to_string() })
        .collect();
    text.push_str(&list.join(" "));
    text.push('\n');
    crate::files::write_atomic(path, text.as_bytes(), crate::files::WriteOptions::private().mode(0o644))?;
    Ok(())
}
