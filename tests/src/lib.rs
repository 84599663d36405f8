//! Support for efm's privileged tests: frame builders with an independent checksum
//! implementation, RAII guards for bpffs pin directories, network namespaces and veth pairs, and
//! a loaded-datapath fixture.
//!
//! Privileged tests never skip: [`require_root`] panics with what is missing.

pub mod bed;
pub mod cluster;
pub mod scenarios;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use efm_agent::datapath::{Datapath, Peer};
use efm_common::{
    maps::{ClusterKey, DatapathConfig, FenceState},
    wire::{ClusterKeyBytes, Heartbeat, HB_KIND_PING, HB_LEN},
};

pub const CLUSTER_ID: u32 = 0x00ef_c1d0;
pub const HB_PORT: u16 = 7800;
pub const DB_PORT: u16 = 5432;
pub const KEY: [u8; 16] = *b"efm-test-key-16b";
pub const LOCAL_NODE: u32 = 1;
pub const PEER_NODE: u32 = 2;
pub const OTHER_NODE: u32 = 3;

pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xefd, 0, 0, 0, 0, 0, 1);
pub const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xefd, 0, 0, 0, 0, 0, 2);

pub const LOCAL_MAC: [u8; 6] = [0x02, 0xef, 0, 0, 0, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0xef, 0, 0, 0, 2];

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The test cluster key as `SipHash` key words.
#[must_use]
pub fn key() -> ClusterKeyBytes {
    ClusterKeyBytes::from_bytes(&KEY)
}

/// Panics unless the test can use BPF and namespaces: root, and bpffs mountable.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (BPF_PROG_LOAD, XDP attach, network namespaces); euid is {euid}. \
         Run the privileged suite as root: `sudo cargo xtask test`"
    );
}

/// `CLOCK_MONOTONIC` in ns, the clock `bpf_ktime_get_ns` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short name (interface names are limited to 15 bytes).
#[must_use]
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A bpffs directory for one test's pins, removed on drop (also on panic).
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    #[must_use]
    pub fn new(name: &str) -> Self {
        let p = Path::new(efm_agent::datapath::BPFFS).join("efm-test").join(unique(name));
        Self(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_dir(self.0.parent().unwrap_or(Path::new("/nonexistent")));
    }
}

/// The datapath loaded (not attached) with the standard test configuration.
pub struct Fixture {
    pub dp: Datapath,
    _pins: PinDir,
}

impl Fixture {
    /// Node 1 at 198.18.0.1 / `fd00:efd::1` with VIP 198.18.0.100; peers: node 2 (slot 0, v4 and
    /// v6) and node 3 (slot 1). Epoch 3, role primary, not fenced, lease not enforced.
    #[must_use]
    pub fn new() -> Self {
        require_root();
        let pins = PinDir::new("pr");
        let mut dp = Datapath::load(&pins.0).expect("loading the XDP object");
        configure(&mut dp);
        Self { dp, _pins: pins }
    }

    #[must_use]
    pub fn base_fence() -> FenceState {
        FenceState { role: 1, epoch: 3, lsn: 0x0000_0001_2345_6789, ..FenceState::default() }
    }

    pub fn set_fence(&mut self, f: FenceState) {
        self.dp.set_fence(&f).expect("writing fence state");
    }

    /// A PING from node 2 (see [`ping`]) that echoes this datapath's current nonce, as a peer
    /// that learned it from our PONGs sends it.
    #[must_use]
    pub fn ping(&self, inc: u64, seq: u64) -> Heartbeat {
        ping_to(self.dp.nonce(), inc, seq)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the standard test configuration into a datapath's maps.
pub fn configure(dp: &mut Datapath) {
    let k = key();
    dp.set_config(&DatapathConfig {
        cluster_id: CLUSTER_ID,
        node_id: LOCAL_NODE,
        hb_port: u32::from(HB_PORT),
        db_port: u32::from(DB_PORT),
        nonce: 0, // the datapath keeps its own generation nonce
    })
    .expect("config");
    dp.set_key(&ClusterKey { k0: k.k0, k1: k.k1 }).expect("key");
    dp.set_fence(&Fixture::base_fence()).expect("fence");
    dp.set_peers(&[
        Peer { node_id: PEER_NODE, slot: 0, addrs: vec![PEER_V4.into(), PEER_V6.into()] },
        Peer { node_id: OTHER_NODE, slot: 1, addrs: vec![OTHER_V4.into()] },
    ])
    .expect("peers");
    dp.set_service_addrs(&[LOCAL_V4.into(), LOCAL_V6.into()], &[VIP_V4.into()]).expect("service");
}

/// [`ping`] echoing `nonce`: a PING a receiver whose datapath nonce is `nonce` accepts.
#[must_use]
pub fn ping_to(nonce: u64, inc: u64, seq: u64) -> Heartbeat {
    Heartbeat { echo_nonce: nonce, ..ping(inc, seq) }
}

/// The sender nonce of the heartbeats [`ping`] builds (node 2's datapath nonce in the tests that
/// have no datapath for node 2).
pub const PEER_NONCE: u64 = 0x5eed_0002_0002_5eed;

/// A PING from node 2 with the given incarnation and sequence, sender nonce [`PEER_NONCE`] and
/// echo nonce 0 (the receiver's nonce not known yet): set `echo_nonce` to the receiving
/// datapath's [`Datapath::nonce`] (or use [`Fixture::ping`]) for a PING the receiver accepts.
#[must_use]
pub fn ping(inc: u64, seq: u64) -> Heartbeat {
    Heartbeat {
        kind: HB_KIND_PING,
        flags: efm_common::wire::ROLE_STANDBY,
        cluster_id: CLUSTER_ID,
        node_id: PEER_NODE,
        incarnation: inc,
        seq,
        epoch: 3,
        send_ns: 1_000_000,
        lsn: 0x0000_0001_0000_0000,
        sender_nonce: PEER_NONCE,
        echo_nonce: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Addressing of a test frame.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub vlan: Option<u16>,
}

impl Addrs {
    /// Peer → local over IPv4, untagged.
    #[must_use]
    pub fn v4() -> Self {
        Self { src: PEER_V4.into(), dst: LOCAL_V4.into(), vlan: None }
    }

    /// Peer → local over IPv6, untagged.
    #[must_use]
    pub fn v6() -> Self {
        Self { src: PEER_V6.into(), dst: LOCAL_V6.into(), vlan: None }
    }

    #[must_use]
    pub fn with_src(mut self, src: IpAddr) -> Self {
        self.src = src;
        self
    }

    #[must_use]
    pub fn with_dst(mut self, dst: IpAddr) -> Self {
        self.dst = dst;
        self
    }

    #[must_use]
    pub fn with_vlan(mut self, vid: u16) -> Self {
        self.vlan = Some(vid);
        self
    }
}

/// RFC 1071 one's-complement sum, folded and complemented. Independent of the XDP code.
#[must_use]
pub fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut carry: Option<u8> = None;
    for chunk in chunks {
        for &b in *chunk {
            match carry.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => carry = Some(b),
            }
        }
    }
    if let Some(hi) = carry {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap())
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    p
}

/// Builds an Ethernet frame around an L4 segment whose checksum field is at `csum_off`
/// (the checksum is computed here).
#[must_use]
pub fn frame(a: Addrs, proto: u8, mut l4: Vec<u8>, csum_off: usize) -> Vec<u8> {
    let pseudo = pseudo_header(a.src, a.dst, proto, l4.len());
    l4[csum_off] = 0;
    l4[csum_off + 1] = 0;
    let mut sum = inet_checksum(&[&pseudo, &l4]);
    if proto == 17 && sum == 0 {
        sum = 0xffff;
    }
    l4[csum_off..csum_off + 2].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&LOCAL_MAC);
    f.extend_from_slice(&PEER_MAC);
    if let Some(vid) = a.vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    match (a.src, a.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 61, proto, 0, 0];
            let total = u16::try_from(20 + l4.len()).unwrap();
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let ipsum = inet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&ipsum.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
            ip.extend_from_slice(&[proto, 61]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            f.extend_from_slice(&ip);
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&l4);
    f
}

/// A UDP datagram frame.
#[must_use]
pub fn udp_frame(a: Addrs, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    frame(a, 17, l4, 6)
}

/// A heartbeat frame from the peer's heartbeat port to ours.
#[must_use]
pub fn hb_frame(a: Addrs, hb: &Heartbeat) -> Vec<u8> {
    udp_frame(a, HB_PORT, HB_PORT, &hb.encode(&key()))
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment frame (20-byte header, no options).
#[must_use]
pub fn tcp_frame(a: Addrs, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&ack.to_be_bytes());
    l4.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    l4.extend_from_slice(payload);
    frame(a, 6, l4, 16)
}

/// A parsed frame as the tests see it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub proto: u8,
    pub l4: Vec<u8>,
}

/// Parses a frame built like ours, asserting that the IPv4 header checksum and the L4 checksum are
/// valid and the lengths consistent.
#[must_use]
pub fn parse_checked(f: &[u8]) -> Parsed {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    let mut vlan = None;
    if ethertype == 0x8100 {
        vlan = Some(u16::from_be_bytes([f[14], f[15]]));
        ethertype = u16::from_be_bytes([f[16], f[17]]);
        off = 16;
    }
    off += 2;
    let (src, dst, ttl, proto, l4) = match ethertype {
        0x0800 => {
            let ip = &f[off..off + 20];
            assert_eq!(ip[0], 0x45, "IPv4 header without options");
            assert_eq!(inet_checksum(&[ip]), 0, "IPv4 header checksum is invalid");
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(off + total, f.len(), "IPv4 total length matches the frame");
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), ip[8], ip[9], f[off + 20..].to_vec())
        }
        0x86dd => {
            let ip = &f[off..off + 40];
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(off + 40 + plen, f.len(), "IPv6 payload length matches the frame");
            let s = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
            let d = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
            (IpAddr::V6(s), IpAddr::V6(d), ip[7], ip[6], f[off + 40..].to_vec())
        }
        other => panic!("unexpected ethertype {other:#06x}"),
    };
    let pseudo = pseudo_header(src, dst, proto, l4.len());
    assert_eq!(inet_checksum(&[&pseudo, &l4]), 0, "L4 checksum (proto {proto}) is invalid");
    Parsed {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        vlan,
        src,
        dst,
        ttl,
        proto,
        l4,
    }
}

/// The heartbeat MAC computed by an independent SipHash-2-4 implementation (the `siphasher` crate).
#[must_use]
pub fn reference_mac(hb: &[u8; HB_LEN]) -> u64 {
    use std::hash::Hasher as _;
    let k = key();
    let mut h = siphasher::sip::SipHasher24::new_with_keys(k.k0, k.k1);
    h.write(&hb[..efm_common::wire::HB_MAC_OFFSET]);
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Namespaces

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip` with arguments; panics with its output on failure.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// `ip -n NS` with arguments.
pub fn ip_in(ns: &str, args: &[&str]) {
    run(Command::new("ip").arg("-n").arg(ns).args(args));
}

/// A network namespace created for a test, deleted on drop (also on panic).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        require_root();
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        ip_in(&name, &["link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it creates and interface
    /// names it resolves belong to the namespace).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A command run inside the namespace (`ip netns exec`).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_netns(path: &str) {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs `fut` on a thread of its own, moved into the namespace at `path`, on a current-thread
/// tokio runtime: a client living in a test host's namespace.
pub fn spawn_in_netns<F, T>(path: String, fut: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<T>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        enter_netns(&path);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(fut())
    })
}

/// Two namespaces joined by a veth pair, both ends up, addressed as given.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl Link {
    /// `a` gets `a_addrs`, `b` gets `b_addrs` (CIDR strings).
    #[must_use]
    pub fn new(a_addrs: &[&str], b_addrs: &[&str]) -> Self {
        let a = Netns::new("efa");
        let b = Netns::new("efb");
        let a_if = unique("va");
        let b_if = unique("vb");
        ip(&["link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns", &b.name]);
        for (ns, ifname, addrs) in [(&a, &a_if, a_addrs), (&b, &b_if, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", *addr, "dev", ifname.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip_in(&ns.name, &args);
            }
            ip_in(&ns.name, &["link", "set", ifname, "up"]);
        }
        Self { a, b, a_if, b_if }
    }
}

// ---------------------------------------------------------------------------------------------
// Two-node namespace bed

/// Addresses of the two-node veth bed: side A (node 2) and side B (node 1).
pub const NS_A_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const NS_B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// Which end of the two-node bed a datapath serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            _ => None,
        }
    }

    #[must_use]
    pub fn node_id(self) -> u32 {
        match self {
            Self::A => PEER_NODE,
            Self::B => LOCAL_NODE,
        }
    }

    #[must_use]
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Self::A => NS_A_V4,
            Self::B => NS_B_V4,
        }
    }

    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// Configures a datapath for one side of the two-node bed: the other side is the only peer
/// (slot 0), this side's address is the service address.
pub fn configure_side(dp: &mut Datapath, side: Side) {
    let k = key();
    dp.set_config(&DatapathConfig {
        cluster_id: CLUSTER_ID,
        node_id: side.node_id(),
        hb_port: u32::from(HB_PORT),
        db_port: u32::from(DB_PORT),
        nonce: 0, // the datapath keeps its own generation nonce
    })
    .expect("config");
    dp.set_key(&ClusterKey { k0: k.k0, k1: k.k1 }).expect("key");
    dp.set_peers(&[Peer { node_id: side.other().node_id(), slot: 0, addrs: vec![side.other().addr().into()] }])
        .expect("peers");
    dp.set_service_addrs(&[side.addr().into()], &[]).expect("service");
}
pub mod pg;
