//! Sending authenticated PINGs, and the identities they carry.
//!
//! Every `heartbeat.interval` the agent sends one PING to each peer from a UDP socket bound to
//! `bind.address` (the peers' XDP programs accept heartbeats only from addresses in their peer
//! maps). The peers' kernels record them and answer with PONGs, which our own XDP program
//! records; nothing here receives anything. Each PING carries our datapath's nonce and echoes the
//! peer's, which our kernel learned from the peer's PONGs: a peer accepts only PINGs echoing its
//! current nonce (replay protection across its restarts and reboots).

use std::{
    fmt, io,
    net::{SocketAddr, UdpSocket},
    path::Path,
};

use efm_common::wire::{ClusterKeyBytes, Heartbeat, FLAG_ENDORSE, HB_KIND_PING};
use zeroize::Zeroizing;

use crate::keyfile::{self, KeyKind};

/// FNV-1a, 32 bit: a stable id from a name, identical on every node.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The cluster id carried in heartbeats: derived from the cluster name.
#[must_use]
pub fn cluster_id(cluster: &str) -> u32 {
    fnv1a(cluster.as_bytes())
}

/// A node's id: derived from its `bind.address` (`ip:port`), so every node computes the same id
/// for every other node from the same `.nodes` file.
#[must_use]
pub fn node_id(addr: &SocketAddr) -> u32 {
    // 0 is reserved for "no node".
    fnv1a(addr.to_string().as_bytes()).max(1)
}

/// What is wrong with the cluster key file (the one key-file error of [`crate::keyfile`]).
pub use crate::keyfile::KeyFileError as KeyError;

/// Bytes of the cluster key (SipHash-2-4 takes 128 bits).
const CLUSTER_KEY_LEN: usize = 16;

/// Reads the cluster key: 32 hex digits, optionally followed by a newline, in a regular file
/// (not a symbolic link) that group and others cannot access (see [`crate::keyfile`]).
pub fn load_cluster_key(path: &Path) -> Result<ClusterKeyBytes, KeyError> {
    let contents = keyfile::read(KeyKind::Cluster, path)?;
    let text = std::str::from_utf8(&contents).map_err(|_| {
        KeyError::malformed(KeyKind::Cluster, path, "it is not text; it must hold 32 hex digits (128 bits)")
    })?;
    let bytes = keyfile::decode_hex::<CLUSTER_KEY_LEN>(text.trim()).map_err(|reason| {
        KeyError::malformed(KeyKind::Cluster, path, format!("it must hold 32 hex digits (128 bits): {reason}"))
    })?;
    Ok(ClusterKeyBytes::from_bytes(&bytes))
}

/// Creates a new random cluster key file (mode 0600, atomically). Refuses to overwrite an
/// existing file.
pub fn generate_cluster_key(path: &Path) -> Result<(), KeyError> {
    let key = keyfile::random_key::<CLUSTER_KEY_LEN>(KeyKind::Cluster)?;
    let mut text = Zeroizing::new(String::with_capacity(2 * CLUSTER_KEY_LEN + 1));
    keyfile::hex_into(&mut text, key.as_slice());
    text.push('\n');
    if keyfile::create(KeyKind::Cluster, path, text.as_bytes())? {
        Ok(())
    } else {
        Err(KeyError::Exists { kind: KeyKind::Cluster, path: path.to_owned() })
    }
}

/// What this node says about itself in each PING.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalView {
    /// Role bits and flags (`efm_common::wire::ROLE_*`, `FLAG_*`).
    pub flags: u16,
    pub epoch: u64,
    pub lsn: u64,
}

/// The PING sender.
pub struct Pinger {
    sock: UdpSocket,
    peers: Vec<SocketAddr>,
    key: ClusterKeyBytes,
    cluster_id: u32,
    node_id: u32,
    incarnation: u64,
    seq: u64,
    /// This node's datapath nonce (the sender nonce of every PING).
    nonce: u64,
}

impl fmt::Debug for Pinger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinger")
            .field("local", &self.sock.local_addr().ok())
            .field("peers", &self.peers)
            .field("incarnation", &self.incarnation)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Pinger {
    /// Binds the heartbeat socket. `incarnation` should grow across restarts of this agent (the
    /// peers drop anything not newer than what they last accepted in their current generation);
    /// the wall clock in ns is used. `nonce` is this node's datapath nonce
    /// ([`crate::datapath::Datapath::nonce`]).
    pub fn new(
        bind: SocketAddr,
        cluster: &str,
        key: ClusterKeyBytes,
        peers: Vec<SocketAddr>,
        incarnation: u64,
        nonce: u64,
    ) -> io::Result<Self> {
        let sock = UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            peers,
            key,
            cluster_id: cluster_id(cluster),
            node_id: node_id(&bind),
            incarnation,
            seq: 0,
            nonce,
        })
    }

    /// Sends one PING to every peer, stamped with `CLOCK_MONOTONIC` now; the PING to `endorse`
    /// (the committed primary this node vouches for) carries the endorse flag, no other does.
    /// Each PING echoes `echo(peer)`: the peer's datapath nonce as our kernel last learned it
    /// from the peer's PONGs (`PeerSlot::peer_nonce`; 0 when not yet known — the peer then
    /// ignores the PING but answers it, and so teaches us its nonce).
    /// A peer that cannot be reached (no route, no ARP answer yet) is skipped; that is what the
    /// detector is for.
    pub fn send_round(
        &mut self,
        view: LocalView,
        now_ns: u64,
        endorse: Option<SocketAddr>,
        echo: impl Fn(SocketAddr) -> u64,
    ) -> Vec<(SocketAddr, io::Error)> {
        let mut errors = Vec::new();
        for peer in &self.peers {
            self.seq += 1;
            let flags = if Some(*peer) == endorse { view.flags | FLAG_ENDORSE } else { view.flags & !FLAG_ENDORSE };
            let hb = Heartbeat {
                kind: HB_KIND_PING,
                flags,
                cluster_id: self.cluster_id,
                node_id: self.node_id,
                incarnation: self.incarnation,
                seq: self.seq,
                epoch: view.epoch,
                send_ns: now_ns,
                lsn: view.lsn,
                sender_nonce: self.nonce,
                echo_nonce: echo(*peer),
            };
            if let Err(e) = self.sock.send_to(&hb.encode(&self.key), peer) {
                if e.kind() != io::ErrorKind::WouldBlock {
                    errors.push((*peer, e));
                }
            }
        }
        errors
    }

    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Wall-clock ns, used as the agent incarnation.
#[must_use]
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a: SocketAddr = "198.18.0.1:7800".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:7800".parse().unwrap();
        assert_eq!(node_id(&a), node_id(&a));
        assert_ne!(node_id(&a), node_id(&b));
        assert_ne!(cluster_id("acctg"), cluster_id("sales"));
        // FNV-1a reference value.
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        use std::{fs, os::unix::fs::PermissionsExt as _};
        let dir = std::env::temp_dir().join(format!("efm-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("acctg.key");
        generate_cluster_key(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.len() == 33 && text.ends_with('\n'), "{text:?}");
        let k1 = load_cluster_key(&p).unwrap();
        let e = generate_cluster_key(&p).unwrap_err();
        assert!(matches!(e, KeyError::Exists { .. }), "never overwrites: {e:?}");
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(load_cluster_key(&p).unwrap(), k1);
        // A second key differs (random).
        let p2 = dir.join("other.key");
        generate_cluster_key(&p2).unwrap();
        assert_ne!(load_cluster_key(&p2).unwrap(), k1);

        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_cluster_key(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");

        // Written by hand, with surrounding whitespace: accepted; the bytes are the hex's.
        let hand = dir.join("hand.key");
        fs::write(&hand, " 000102030405060708090a0b0c0d0e0F\r\n").unwrap();
        fs::set_permissions(&hand, fs::Permissions::from_mode(0o600)).unwrap();
        let want: [u8; 16] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        assert_eq!(load_cluster_key(&hand).unwrap(), ClusterKeyBytes::from_bytes(&want));

        let bad = dir.join("bad.key");
        fs::write(&bad, "not hex\n").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_cluster_key(&bad).unwrap_err().to_string();
        assert!(e.contains("32 hex digits") && e.contains(&bad.display().to_string()), "{e}");
        fs::write(&bad, "0123456789abcdef0123456789abcdeg\n").unwrap();
        let e = load_cluster_key(&bad).unwrap_err().to_string();
        assert!(e.contains("not hex"), "{e}");

        let link = dir.join("link.key");
        std::os::unix::fs::symlink(&p2, &link).unwrap();
        let e = load_cluster_key(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let e = load_cluster_key(&dir.join("missing.key")).unwrap_err().to_string();
        assert!(e.contains("efm generate-key"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
