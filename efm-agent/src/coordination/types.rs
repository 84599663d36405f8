//! openraft type configuration.

use std::{
    io::Cursor,
    net::{Ipv4Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::state::{Command, Response};

/// A Raft member: its `bind.address` (TCP for Raft, UDP for heartbeats, same port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    pub addr: SocketAddr,
}

impl Default for RaftNode {
    fn default() -> Self {
        Self { addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) }
    }
}

openraft::declare_raft_types!(
    /// efm's Raft types: log entries carry a [`Command`], applying one yields a [`Response`].
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = RaftNode,
);

/// The Raft node id of a `bind.address`: the heartbeat node id (FNV-1a of `ip:port`), widened.
#[must_use]
pub fn raft_id(addr: &SocketAddr) -> u64 {
    u64::from(crate::heartbeat::node_id(addr))
}
