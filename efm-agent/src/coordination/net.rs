//! The Raft RPCs over [`wire`](super::wire): messages, a per-peer connection pool and openraft's
//! `RaftNetwork` implementation.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use efm_common::wire::ClusterKeyBytes;
use openraft::{
    error::{
        Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
        Unreachable,
    },
    network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
        VoteRequest, VoteResponse,
    },
    OptionalSend, Snapshot, SnapshotMeta, Vote,
};
use serde::{Deserialize, Serialize};

use super::{
    state::{Command, NodeInfo, Response},
    types::{RaftNode, TypeConfig},
    wire::{Conn, WireError},
    RaftTimings,
};

/// A request from one agent to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    /// A whole snapshot in one frame (the state is small).
    Snapshot {
        vote: Vote<u64>,
        meta: SnapshotMeta<u64, RaftNode>,
        data: Vec<u8>,
    },
    /// openraft's chunked transfer (unused by our own sender, served for completeness).
    SnapshotChunk(InstallSnapshotRequest<TypeConfig>),
    /// A proposal forwarded to the leader.
    ClientWrite(Command),
    /// A read barrier: the leader confirms its leadership with a quorum and answers the log
    /// index a linearizable read must have applied.
    ReadIndex,
    /// A node not in the membership asks to be added.
    Join {
        node: SocketAddr,
        info: NodeInfo,
    },
    /// `efm reset-members`: the leader removes these voters from the membership (they join
    /// again when their agents start or reconnect).
    RemoveVoters(Vec<SocketAddr>),
}

/// Why a forwarded proposal was not applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader; it knows this one (if any).
    NotLeader(Option<SocketAddr>),
    Failed(String),
}

/// The answer to [`Rpc::Join`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// Added as a voter; the new voter set.
    Joined {
        voters: Vec<SocketAddr>,
    },
    /// Already a voter or learner of this membership.
    AlreadyMember {
        voters: Vec<SocketAddr>,
    },
    /// The receiver has no Raft state yet (fresh cluster being formed).
    NotInitialized,
    NotLeader(Option<SocketAddr>),
    Refused(String),
    Failed(String),
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<SnapshotResponse<u64>, Fatal<u64>>),
    SnapshotChunk(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    ClientWrite(Result<Response, ForwardError>),
    Join(JoinReply),
    /// The index to have applied (0: nothing committed yet).
    ReadIndex(Result<u64, ForwardError>),
    /// The voters after the removal.
    RemoveVoters(Result<Vec<SocketAddr>, ForwardError>),
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {peer}: {source}")]
    Connect { peer: SocketAddr, source: WireError },
    #[error("RPC to {peer} failed: {source}")]
    Rpc { peer: SocketAddr, source: WireError },
    #[error("RPC to {peer}: unexpected reply {reply}")]
    Unexpected { peer: SocketAddr, reply: String },
}

/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 4;

/// What every outgoing call needs; shared by all clients of one coordinator.
pub struct NetShared {
    pub me: SocketAddr,
    pub key: ClusterKeyBytes,
    pub cluster: String,
    pub timings: RaftTimings,
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

impl NetShared {
    #[must_use]
    pub fn new(me: SocketAddr, key: ClusterKeyBytes, cluster: String, timings: RaftTimings) -> Self {
        Self { me, key, cluster, timings, idle: Mutex::new(HashMap::new()) }
    }

    fn take_idle(&self, peer: SocketAddr) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&peer).and_then(Vec::pop)
    }

    fn put_idle(&self, peer: SocketAddr, c: Conn) {
        let mut g = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let v = g.entry(peer).or_default();
        if v.len() < IDLE_PER_PEER {
            v.push(c);
        }
    }

    /// Drops every pooled connection (shutdown).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// One RPC, reusing a pooled connection when there is one. A pooled connection that turns
    /// out dead (the peer restarted) is replaced by a fresh one once.
    pub async fn call(&self, peer: SocketAddr, rpc: &Rpc, timeout: Duration) -> Result<Reply, CallError> {
        let payload =
            serde_json::to_vec(rpc).map_err(|e| CallError::Rpc { peer, source: WireError::Payload(e.to_string()) })?;
        let start = tokio::time::Instant::now();
        let mut pooled = self.take_idle(peer);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => Conn::connect(self.me, peer, self.key, &self.cluster, timeout)
                    .await
                    .map_err(|source| CallError::Connect { peer, source })?,
            };
            let left = timeout.saturating_sub(start.elapsed());
            match conn.call(&payload, left).await {
                Ok(bytes) => {
                    let reply: Reply = serde_json::from_slice(&bytes)
                        .map_err(|e| CallError::Rpc { peer, source: WireError::Payload(e.to_string()) })?;
                    self.put_idle(peer, conn);
                    return Ok(reply);
                }
                Err(WireError::Io(_)) if reused => {
                    tracing::debug!(%peer, "pooled Raft connection was closed; reconnecting");
                }
                Err(source) => return Err(CallError::Rpc { peer, source }),
            }
        }
    }
}

/// Creates a [`PeerClient`] per target.
#[derive(Clone)]
pub struct NetFactory(pub Arc<NetShared>);

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> PeerClient {
        PeerClient { shared: self.0.clone(), target, addr: node.addr }
    }
}

/// openraft's view of one peer.
pub struct PeerClient {
    shared: Arc<NetShared>,
    target: u64,
    addr: SocketAddr,
}

type RErr<E = openraft::error::Infallible> = RPCError<u64, RaftNode, RaftError<u64, E>>;

fn map_call_err<E: std::error::Error>(e: &CallError) -> RPCError<u64, RaftNode, E> {
    match e {
        CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(e)),
        _ => RPCError::Network(NetworkError::new(e)),
    }
}

impl PeerClient {
    fn timeout(&self, option: &RPCOption) -> Duration {
        Duration::from_millis(self.shared.timings.rpc_timeout_ms).min(option.hard_ttl())
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RErr> {
        let t = self.timeout(&option);
        match self.shared.call(self.addr, &Rpc::Append(rpc), t).await {
            Ok(Reply::Append(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(map_call_err(&CallError::Unexpected { peer: self.addr, reply: format!("{other:?}") })),
            Err(e) => Err(map_call_err(&e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RErr<InstallSnapshotError>> {
        let t = Duration::from_millis(self.shared.timings.snapshot_timeout_ms);
        match self.shared.call(self.addr, &Rpc::SnapshotChunk(rpc), t).await {
            Ok(Reply::SnapshotChunk(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(map_call_err(&CallError::Unexpected { peer: self.addr, reply: format!("{other:?}") })),
            Err(e) => Err(map_call_err(&e)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RErr> {
        let t = self.timeout(&option);
        match self.shared.call(self.addr, &Rpc::Vote(rpc), t).await {
            Ok(Reply::Vote(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(map_call_err(&CallError::Unexpected { peer: self.addr, reply: format!("{other:?}") })),
            Err(e) => Err(map_call_err(&e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let t = Duration::from_millis(self.shared.timings.snapshot_timeout_ms);
        let rpc = Rpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        let shared = self.shared.clone();
        let addr = self.addr;
        let r = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = shared.call(addr, &rpc, t) => r,
        };
        match r {
            Ok(Reply::Snapshot(r)) => r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e))),
            Ok(other) => Err(StreamingError::Network(NetworkError::new(&CallError::Unexpected {
                peer: addr,
                reply: format!("{other:?}"),
            }))),
            Err(e @ CallError::Connect { .. }) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }

    fn backoff(&self) -> Backoff {
        let d = Duration::from_millis(self.shared.timings.heartbeat_ms.max(10) * 2);
        Backoff::new(std::iter::repeat(d))
    }
}
