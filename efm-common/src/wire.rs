//! Heartbeat wire format, version 2.
//!
//! A heartbeat is the payload of one UDP datagram to the cluster's heartbeat port. It is exactly
//! [`HB_LEN`] bytes; multi-byte fields are big-endian (network order).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"EFMH"` (`0x45464D48`) |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | kind: 1 PING, 2 PONG |
//! | 6 | 2 | flags: role (bits 0-1), endorse, lease lapsed, fenced, database up |
//! | 8 | 4 | cluster id |
//! | 12 | 4 | sender node id |
//! | 16 | 8 | agent incarnation (PONG: echoed from the PING) |
//! | 24 | 8 | sequence number (PONG: echoed from the PING) |
//! | 32 | 8 | epoch (fencing token) the sender holds |
//! | 40 | 8 | sender's `CLOCK_MONOTONIC` send time in ns (PONG: echoed from the PING) |
//! | 48 | 8 | WAL LSN of the sender's database (0 when unknown) |
//! | 56 | 8 | sender nonce: the sending node's current datapath nonce |
//! | 64 | 8 | echo nonce: the receiver's datapath nonce as the sender last learned it (0: unknown) |
//! | 72 | 8 | MAC: SipHash-2-4 of bytes 0..72, keyed by the cluster key |
//!
//! A PONG is written by the receiving node's XDP program, not by its agent: it proves that node's
//! kernel is alive, and its echoed send time gives the pinger an RTT on its own clock. Its sender
//! nonce is the responder's nonce, its echo nonce the PING's sender nonce.
//!
//! The nonces are the replay protection: every datapath generation (the moment a node's pinned
//! maps are created) has a fresh random non-zero nonce, and a receiver accepts a heartbeat only
//! when its echo nonce is the receiver's current nonce (see ARCHITECTURE.md, "Replay").

/// `"EFMH"`.
pub const HB_MAGIC: u32 = 0x4546_4D48;
pub const HB_VERSION: u8 = 2;
pub const HB_KIND_PING: u8 = 1;
pub const HB_KIND_PONG: u8 = 2;
/// Length of a heartbeat payload in bytes.
pub const HB_LEN: usize = 80;
/// Bytes covered by the MAC (everything before it).
pub const HB_MAC_OFFSET: usize = 72;

pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 4;
pub const OFF_KIND: usize = 5;
pub const OFF_FLAGS: usize = 6;
pub const OFF_CLUSTER: usize = 8;
pub const OFF_NODE: usize = 12;
pub const OFF_INCARNATION: usize = 16;
pub const OFF_SEQ: usize = 24;
pub const OFF_EPOCH: usize = 32;
pub const OFF_SEND_NS: usize = 40;
pub const OFF_LSN: usize = 48;
pub const OFF_SENDER_NONCE: usize = 56;
pub const OFF_ECHO_NONCE: usize = 64;
pub const OFF_MAC: usize = HB_MAC_OFFSET;
// The MAC reads whole 8-byte words and the nonces sit right before it.
const _: () =
    assert!(HB_MAC_OFFSET.is_multiple_of(8) && HB_MAC_OFFSET + 8 == HB_LEN && OFF_ECHO_NONCE + 8 == HB_MAC_OFFSET);

/// Role of the sender, in bits 0-1 of the flags.
pub const ROLE_MASK: u16 = 0x0003;
pub const ROLE_IDLE: u16 = 0;
pub const ROLE_PRIMARY: u16 = 1;
pub const ROLE_STANDBY: u16 = 2;
pub const ROLE_WITNESS: u16 = 3;
/// PING only: the sender endorses the receiver as primary for the epoch carried.
pub const FLAG_ENDORSE: u16 = 1 << 2;
/// The sender is a primary that knows its lease has lapsed.
pub const FLAG_LEASE_LAPSED: u16 = 1 << 3;
/// The sender's node is fenced (client traffic to it is cut off).
pub const FLAG_FENCED: u16 = 1 << 4;
/// PING only: the sender's agent last found its database up. (User-space information; the
/// XDP program does not look at it.)
pub const FLAG_DB_UP: u16 = 1 << 5;
/// PING only: the sender is the committed primary and its agent cannot reach its own database
/// (its local check failed, its postmaster is not known to have exited); it asks the other
/// agents to check that database (`remote.timeout`) before anything fails over. (User space.)
pub const FLAG_DB_CHECK: u16 = 1 << 6;
/// PING only: the sender's latest remote check (at most a few seconds old) of the database of
/// the committed primary of the epoch it carries got an answer from that server. (User space.)
pub const FLAG_PRIMARY_DB_REACHED: u16 = 1 << 7;
/// PING only: ... and got none (refused, timed out). (User space.)
pub const FLAG_PRIMARY_DB_UNREACHABLE: u16 = 1 << 8;
/// PING only: the sender's last check of `ping.server.ip` failed, so it declines to be promoted
/// (EFM's orphaned standby). (User-space information; the XDP program does not look at it.)
pub const FLAG_PING_SERVER_FAILED: u16 = 1 << 9;

/// A decoded heartbeat. User space builds and checks these; the XDP program works on the raw bytes
/// with the same offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Heartbeat {
    pub kind: u8,
    pub flags: u16,
    pub cluster_id: u32,
    pub node_id: u32,
    pub incarnation: u64,
    pub seq: u64,
    pub epoch: u64,
    pub send_ns: u64,
    pub lsn: u64,
    /// The sender's datapath nonce.
    pub sender_nonce: u64,
    /// The receiver's datapath nonce as the sender knows it.
    pub echo_nonce: u64,
}

/// Why a byte string is not a valid heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Magic(u32),
    Version(u8),
    Kind(u8),
    Mac,
}

impl Heartbeat {
    /// Serializes and signs the heartbeat.
    #[must_use]
    pub fn encode(&self, key: &ClusterKeyBytes) -> [u8; HB_LEN] {
        let mut b = [0u8; HB_LEN];
        b[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&HB_MAGIC.to_be_bytes());
        b[OFF_VERSION] = HB_VERSION;
        b[OFF_KIND] = self.kind;
        b[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.to_be_bytes());
        b[OFF_CLUSTER..OFF_CLUSTER + 4].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[OFF_NODE..OFF_NODE + 4].copy_from_slice(&self.node_id.to_be_bytes());
        b[OFF_INCARNATION..OFF_INCARNATION + 8].copy_from_slice(&self.incarnation.to_be_bytes());
        b[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.seq.to_be_bytes());
        b[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&self.epoch.to_be_bytes());
        b[OFF_SEND_NS..OFF_SEND_NS + 8].copy_from_slice(&self.send_ns.to_be_bytes());
        b[OFF_LSN..OFF_LSN + 8].copy_from_slice(&self.lsn.to_be_bytes());
        b[OFF_SENDER_NONCE..OFF_SENDER_NONCE + 8].copy_from_slice(&self.sender_nonce.to_be_bytes());
        b[OFF_ECHO_NONCE..OFF_ECHO_NONCE + 8].copy_from_slice(&self.echo_nonce.to_be_bytes());
        let mac = mac(key.k0, key.k1, &b);
        b[OFF_MAC..OFF_MAC + 8].copy_from_slice(&mac.to_be_bytes());
        b
    }

    /// Parses and authenticates a heartbeat payload (the cluster id is the caller's to check).
    pub fn decode(bytes: &[u8], key: &ClusterKeyBytes) -> Result<Self, DecodeError> {
        let b: &[u8; HB_LEN] = bytes.try_into().map_err(|_| DecodeError::Length(bytes.len()))?;
        let magic = be32(b, OFF_MAGIC);
        if magic != HB_MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        if b[OFF_VERSION] != HB_VERSION {
            return Err(DecodeError::Version(b[OFF_VERSION]));
        }
        let kind = b[OFF_KIND];
        if kind != HB_KIND_PING && kind != HB_KIND_PONG {
            return Err(DecodeError::Kind(kind));
        }
        if be64(b, OFF_MAC) != mac(key.k0, key.k1, b) {
            return Err(DecodeError::Mac);
        }
        Ok(Self {
            kind,
            flags: u16::from_be_bytes([b[OFF_FLAGS], b[OFF_FLAGS + 1]]),
            cluster_id: be32(b, OFF_CLUSTER),
            node_id: be32(b, OFF_NODE),
            incarnation: be64(b, OFF_INCARNATION),
            seq: be64(b, OFF_SEQ),
            epoch: be64(b, OFF_EPOCH),
            send_ns: be64(b, OFF_SEND_NS),
            lsn: be64(b, OFF_LSN),
            sender_nonce: be64(b, OFF_SENDER_NONCE),
            echo_nonce: be64(b, OFF_ECHO_NONCE),
        })
    }
}

/// The 128-bit cluster key as two `SipHash` key words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClusterKeyBytes {
    pub k0: u64,
    pub k1: u64,
}

impl ClusterKeyBytes {
    /// Key words from 16 bytes, little-endian as `SipHash`'s reference implementation reads them.
    #[must_use]
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&b[..8]);
        k1.copy_from_slice(&b[8..]);
        Self { k0: u64::from_le_bytes(k0), k1: u64::from_le_bytes(k1) }
    }
}

fn be32(b: &[u8; HB_LEN], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn be64(b: &[u8; HB_LEN], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(w)
}

/// The heartbeat MAC: SipHash-2-4 over the first [`HB_MAC_OFFSET`] bytes of `hb`.
///
/// Written without slices or loops with data-dependent bounds so that the eBPF verifier accepts it
/// unchanged; the tests check it against an independent `SipHash` implementation.
#[inline(always)]
#[must_use]
pub fn mac(k0: u64, k1: u64, hb: &[u8; HB_LEN]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let mut i = 0;
    while i < HB_MAC_OFFSET / 8 {
        let o = i * 8;
        let m =
            u64::from_le_bytes([hb[o], hb[o + 1], hb[o + 2], hb[o + 3], hb[o + 4], hb[o + 5], hb[o + 6], hb[o + 7]]);
        v3 ^= m;
        sipround(&mut v0, &mut v1, &mut v2, &mut v3);
        sipround(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
        i += 1;
    }
    // Final block: no tail bytes (72 is a multiple of 8), only the length in the top byte.
    let b = (HB_MAC_OFFSET as u64) << 56;
    v3 ^= b;
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= b;
    v2 ^= 0xff;
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    sipround(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^ v1 ^ v2 ^ v3
}

#[inline(always)]
fn sipround(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
    *v0 = v0.wrapping_add(*v1);
    *v1 = v1.rotate_left(13);
    *v1 ^= *v0;
    *v0 = v0.rotate_left(32);
    *v2 = v2.wrapping_add(*v3);
    *v3 = v3.rotate_left(16);
    *v3 ^= *v2;
    *v0 = v0.wrapping_add(*v3);
    *v3 = v3.rotate_left(21);
    *v3 ^= *v0;
    *v2 = v2.wrapping_add(*v1);
    *v1 = v1.rotate_left(17);
    *v1 ^= *v2;
    *v2 = v2.rotate_left(32);
}
