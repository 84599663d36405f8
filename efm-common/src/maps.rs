//! Map names, keys and values shared by the XDP program and the agent.
//!
//! Ownership: each map has exactly one writer side, so a whole-value update from user space never
//! overwrites a field the kernel maintains.
//!
//! | map | kind | key | value | written by |
//! |---|---|---|---|---|
//! | `EFM_CONFIG` | array\[1\] | 0 | [`DatapathConfig`] | agent |
//! | `EFM_KEY` | array\[1\] | 0 | [`ClusterKey`] | agent |
//! | `EFM_FENCE` | array\[1\] | 0 | [`FenceState`] | agent |
//! | `EFM_LEASE` | array\[1\] | 0 | [`LeaseState`] | XDP |
//! | `EFM_PEERS` | hash | [`PeerAddr`] | [`PeerInfo`] | agent |
//! | `EFM_SLOTS` | array\[[`MAX_SLOTS`]\] | slot | [`PeerSlot`] | XDP |
//! | `EFM_RTT_HIST` | per-CPU array\[[`MAX_SLOTS`]\] | slot | [`RttHistogram`] | XDP |
//! | `EFM_SERVICE` | hash | [`PeerAddr`] | `u32`: [`SERVICE_NODE`] or [`SERVICE_VIP`] | agent |
//! | `EFM_EXEMPT` | LPM trie | prefix length + 16-byte mapped address (an IPv4 `/24` is `96 + 24`) | `u32`: [`crate::serving::EXEMPT_ALWAYS`] or [`crate::serving::EXEMPT_MEMBER`] | agent |
//! | `EFM_STATS` | per-CPU array\[[`Counter::COUNT`]\] | counter | `u64` | XDP |
//! | `EFM_JUMP` | program array\[[`crate::jump::JUMP_COUNT`]\] | index | program | agent (loader) |

pub const MAP_CONFIG: &str = "EFM_CONFIG";
pub const MAP_KEY: &str = "EFM_KEY";
pub const MAP_FENCE: &str = "EFM_FENCE";
pub const MAP_LEASE: &str = "EFM_LEASE";
pub const MAP_PEERS: &str = "EFM_PEERS";
pub const MAP_SLOTS: &str = "EFM_SLOTS";
pub const MAP_RTT_HIST: &str = "EFM_RTT_HIST";
pub const MAP_SERVICE: &str = "EFM_SERVICE";
pub const MAP_EXEMPT: &str = "EFM_EXEMPT";
pub const MAP_STATS: &str = "EFM_STATS";
/// Name of the XDP program in the object.
pub const PROG_NAME: &str = "efm_xdp";
/// Name of the TC (TCX egress) program in the object.
pub const EGRESS_PROG_NAME: &str = "efm_tc_egress";

/// `EFM_SERVICE` value: one of the node's own addresses.
pub const SERVICE_NODE: u32 = 1;
/// `EFM_SERVICE` value: a virtual IP. While the node does not serve (fenced, epoch-fenced, lease
/// lapsed) its kernel does not answer ARP requests for it, so clients find the serving holder.
pub const SERVICE_VIP: u32 = 2;

/// Peer slots (one per peer node; a node may have several addresses pointing at one slot).
pub const MAX_SLOTS: usize = 16;
/// Entries in the peer-address map.
pub const MAX_PEER_ADDRS: u32 = 64;
/// Entries in the service-address map (node addresses and VIPs).
pub const MAX_SERVICE_ADDRS: u32 = 32;
/// Entries in the exempt-prefix trie.
pub const MAX_EXEMPT: u32 = 64;
/// Buckets of the RTT histogram: bucket `b` counts RTTs in `[2^(b-1), 2^b)` ns (bucket 0: 0 ns).
pub const RTT_BUCKETS: usize = 40;

/// An IPv4 or IPv6 address as 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerAddr {
    pub octets: [u8; 16],
}

impl PeerAddr {
    #[must_use]
    pub const fn v4(o: [u8; 4]) -> Self {
        Self { octets: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]] }
    }

    #[must_use]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { octets }
    }
}

/// Static settings of the node, written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    pub cluster_id: u32,
    /// This node's id; stamped into PONGs.
    pub node_id: u32,
    /// UDP port of heartbeats; 0 disables heartbeat handling.
    pub hb_port: u32,
    /// TCP/UDP port of the database; 0 disables the client fence.
    pub db_port: u32,
    /// This datapath generation's nonce: random, non-zero, chosen when the pinned maps are
    /// created and kept while they live (the agent re-opening them keeps it). Stamped into PONGs
    /// as their sender nonce; a heartbeat is accepted only if its echo nonce equals it. 0 (maps
    /// not yet initialised) accepts nothing.
    pub nonce: u64,
}

/// The cluster key, `SipHash` key words (see [`crate::wire::ClusterKeyBytes`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClusterKey {
    pub k0: u64,
    pub k1: u64,
}

/// The agent fenced this node explicitly.
pub const FENCE_FENCED: u32 = 1 << 0;
/// The primary lease is enforced: clients are cut off once `now > lease deadline`.
pub const FENCE_LEASE_ENFORCED: u32 = 1 << 1;
/// Answer fenced TCP segments with a RST instead of dropping them.
pub const FENCE_RESET: u32 = 1 << 2;
/// Members stay exempt from an explicit fence: set only by the primary of the current epoch
/// fenced for an operator's hand-over, so its standbys receive its last WAL
/// (`efm_common::serving::exempt_applies`).
pub const FENCE_MEMBERS_EXEMPT: u32 = 1 << 3;

/// What the agent tells the kernel about fencing and the lease. Written whole by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FenceState {
    /// `FENCE_*` bits.
    pub flags: u32,
    /// Role bits as in the heartbeat flags; stamped into PONGs.
    pub role: u32,
    /// The epoch this node holds. Any authenticated heartbeat with a higher epoch fences the node.
    pub epoch: u64,
    /// Endorsements needed besides this node (majority of voters minus one). 0: lease always valid.
    pub lease_k: u32,
    pub pad: u32,
    /// Lease length counted from the arrival of an endorsement, in ns.
    pub lease_timeout_ns: u64,
    /// The local database's WAL LSN, stamped into PONGs.
    pub lsn: u64,
}

/// Lease and epoch state maintained by the XDP program. User space only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// Arrival time (`CLOCK_MONOTONIC` ns) of the newest endorsement per slot; 0 = none.
    pub endorse_ns: [u64; MAX_SLOTS],
    /// k-th newest endorsement + lease timeout, recomputed on every endorsing PING.
    pub deadline_ns: u64,
    /// Highest epoch carried by any authenticated heartbeat.
    pub max_epoch_seen: u64,
    /// When `max_epoch_seen` last rose above this node's epoch (0 = never).
    pub epoch_fenced_ns: u64,
}

impl Default for LeaseState {
    fn default() -> Self {
        Self { endorse_ns: [0; MAX_SLOTS], deadline_ns: 0, max_epoch_seen: 0, epoch_fenced_ns: 0 }
    }
}

/// Which addresses belong to which peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerInfo {
    pub node_id: u32,
    /// Index into `EFM_SLOTS`, `< MAX_SLOTS`.
    pub slot: u32,
}

/// What the kernel last accepted from one peer. Written in place by the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerSlot {
    // Last accepted PING from the peer's agent.
    pub ping_incarnation: u64,
    pub ping_seq: u64,
    /// Arrival time, this node's `CLOCK_MONOTONIC` ns.
    pub ping_arrival_ns: u64,
    /// The peer's send time, on the peer's clock.
    pub ping_send_ns: u64,
    pub ping_epoch: u64,
    pub ping_lsn: u64,
    pub ping_flags: u32,
    pub pad0: u32,
    pub pings: u64,
    // Last accepted PONG from the peer's kernel (answering our agent's PING).
    pub pong_incarnation: u64,
    pub pong_seq: u64,
    pub pong_arrival_ns: u64,
    pub pong_rtt_ns: u64,
    pub pong_epoch: u64,
    pub pong_lsn: u64,
    pub pong_flags: u32,
    pub pad1: u32,
    pub pongs: u64,
    /// The peer's datapath nonce, from the sender nonce of the last accepted PONG (0: not yet
    /// learned). Our agent echoes it in its PINGs to that peer.
    pub peer_nonce: u64,
}

/// Per-peer log2 histogram of PONG round-trip times.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttHistogram {
    pub buckets: [u64; RTT_BUCKETS],
}

impl Default for RttHistogram {
    fn default() -> Self {
        Self { buckets: [0; RTT_BUCKETS] }
    }
}

/// Histogram bucket of a round-trip time: `0` for 0 ns, else `floor(log2(ns)) + 1`, capped.
#[inline(always)]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "v <= 1 and RTT_BUCKETS < 64 here")]
pub fn rtt_bucket(ns: u64) -> u32 {
    // Branch-light bit length, without a count-leading-zeros instruction (BPF has none).
    let mut v = ns;
    let mut n = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        n += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        n += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        n += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        n += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        n += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        n += 1;
    }
    n += v as u32; // bit length
    if n as usize >= RTT_BUCKETS {
        (RTT_BUCKETS - 1) as u32
    } else {
        n
    }
}

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident = $label:literal,)*) => {
        /// Index of a per-CPU verdict counter in `EFM_STATS`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[$m])* $name,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];
            #[expect(clippy::cast_possible_truncation, reason = "a few dozen counters")]
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable `snake_case` name, used in metrics and status output.
            #[must_use]
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }
        }
    };
}

counters! {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    NonIpPass = "non_ip_pass",
    /// IP traffic that is neither a heartbeat nor fenced client traffic: passed.
    OtherPass = "other_pass",
    /// An IP frame whose L3/L4 headers are cut off or inconsistent: dropped.
    MalformedDrop = "malformed_drop",
    /// Heartbeat port, payload shorter than a heartbeat: dropped.
    HbTruncated = "hb_truncated",
    /// Heartbeat port, payload longer than a heartbeat: dropped.
    HbBadLength = "hb_bad_length",
    /// Heartbeat with IPv4 options or IPv6 extension headers (never sent by efm): dropped.
    HbUnsupportedHeader = "hb_unsupported_header",
    /// Heartbeat from an address not in the peer map: dropped.
    HbUnknownPeer = "hb_unknown_peer",
    HbBadMagic = "hb_bad_magic",
    HbBadVersion = "hb_bad_version",
    HbBadCluster = "hb_bad_cluster",
    HbBadKind = "hb_bad_kind",
    HbBadMac = "hb_bad_mac",
    /// Authenticated, but the node id is not the one registered for the source address.
    HbNodeMismatch = "hb_node_mismatch",
    /// A replay: (incarnation, sequence) not newer than the last accepted from that peer, or an
    /// echo nonce that is not this datapath's current nonce (then `hb_stale_nonce` counts too).
    HbReplay = "hb_replay",
    HbPingAccepted = "hb_ping_accepted",
    /// PONG answered with `XDP_TX`.
    HbPongSent = "hb_pong_sent",
    HbPongAccepted = "hb_pong_accepted",
    /// A heartbeat raised the highest epoch seen above this node's epoch.
    EpochFence = "epoch_fence",
    /// An endorsing PING for this node's epoch recomputed the lease.
    LeaseEndorsed = "lease_endorsed",
    ClientPass = "client_pass",
    /// Fenced, but the source is exempt: passed.
    ClientExempt = "client_exempt",
    /// Client packet cut off because the agent fenced the node.
    ClientFenced = "client_fenced",
    /// Client packet cut off because a higher epoch was seen.
    ClientEpochFenced = "client_epoch_fenced",
    /// Client packet cut off because the primary lease lapsed.
    ClientLeaseLapsed = "client_lease_lapsed",
    /// A cut-off TCP segment answered with a RST (reset mode).
    ClientReset = "client_reset",
    /// An ARP request for a VIP while this node does not serve: dropped (not answered).
    VipArpDropped = "vip_arp_dropped",
    /// Internal error (a map lookup that cannot fail failed): `XDP_ABORTED`.
    Aborted = "aborted",
    /// Egress: a segment from the database port on a service address left while the node
    /// serves (or it is a RST, which always leaves).
    EgressPass = "egress_pass",
    /// Egress: a TCP segment toward a client rewritten into a RST while the node does not serve.
    EgressReset = "egress_reset",
    /// Egress: a segment (drop mode, UDP, or unparsable) from a service address dropped while the
    /// node does not serve.
    EgressDrop = "egress_drop",
    /// Egress: not serving, but the destination is exempt (always, or a member while members are
    /// exempt): passed.
    EgressExempt = "egress_exempt",
    /// Authenticated heartbeat whose echo nonce is not this datapath generation's nonce (captured
    /// before the maps were created, or the sender has not learned our nonce yet): changes
    /// nothing, counted under `hb_replay` as well. A PING is still answered with a PONG.
    HbStaleNonce = "hb_stale_nonce",
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and integer arrays, and have no
    // implicit padding (explicit `pad` fields fill every hole), so every bit pattern is valid.
    unsafe impl aya::Pod for super::PeerAddr {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::ClusterKey {}
    unsafe impl aya::Pod for super::FenceState {}
    unsafe impl aya::Pod for super::LeaseState {}
    unsafe impl aya::Pod for super::PeerInfo {}
    unsafe impl aya::Pod for super::PeerSlot {}
    unsafe impl aya::Pod for super::RttHistogram {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_bucket_is_bit_length() {
        assert_eq!(rtt_bucket(0), 0);
        assert_eq!(rtt_bucket(1), 1);
        assert_eq!(rtt_bucket(2), 2);
        assert_eq!(rtt_bucket(3), 2);
        assert_eq!(rtt_bucket(1024), 11);
        assert_eq!(rtt_bucket(1023), 10);
        let last = u32::try_from(RTT_BUCKETS - 1).unwrap();
        assert_eq!(rtt_bucket(u64::MAX), last);
        for shift in 0..last {
            assert_eq!(rtt_bucket(1u64 << shift), shift + 1);
        }
    }

    #[test]
    fn pod_types_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<PeerAddr>(), 16);
        assert_eq!(size_of::<DatapathConfig>(), 24);
        assert_eq!(size_of::<FenceState>(), 40);
        assert_eq!(size_of::<LeaseState>(), 8 * (MAX_SLOTS + 3));
        assert_eq!(size_of::<PeerSlot>(), 8 * 17);
        assert_eq!(size_of::<RttHistogram>(), 8 * RTT_BUCKETS);
    }
}
