//! Replay protection with real agents (issue 11, acceptance (d)): heartbeats captured off the wire
//! earlier — PINGs, and endorsing PINGs to the primary — are replayed from the sending peer's
//! address after that peer was cut off (its agent stopped) and after the receiver's agent was
//! restarted (orderly, SIGKILL) or its maps were recreated (orderly stop of a non-primary; a
//! reboot, modelled by removing the pins after a SIGKILL). Nothing they carry is accepted: the
//! receiver's slot for the peer and the peer's endorsement in its lease stay as they were, its
//! detector does not see the peer alive, and its kernel counts every one as a replay.
//!
//! Frames are captured with an `AF_PACKET` socket on the sender's switch port and sent again,
//! byte for byte, with an `AF_PACKET` socket on the sender's own interface. Needs root and
//! `PostgreSQL` 15; run single-threaded.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use efm_common::{
    maps::{
        Counter, DatapathConfig, LeaseState, PeerAddr, PeerInfo, PeerSlot, MAP_CONFIG, MAP_LEASE, MAP_PEERS, MAP_SLOTS,
        MAP_STATS,
    },
    wire::{ClusterKeyBytes, Heartbeat, FLAG_ENDORSE, HB_KIND_PING, HB_LEN},
};
use efm_tests::{
    cluster::{Agent, Cluster, Kind, CLUSTER},
    Netns,
};
use serde_json::Value;

const HB_PORT: u16 = 7800;
const ETH_P_ALL: u16 = 0x0003;

/// A node's pinned maps, read the way any tool on the host would (`bpftool map dump pinned ...`).
struct Pins(PathBuf);

impl Pins {
    fn map(&self, name: &str) -> Map {
        let path = self.0.join(name);
        let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening pinned map {}: {e}", path.display()));
        Map::from_map_data(data).unwrap_or_else(|e| panic!("pinned map {}: {e}", path.display()))
    }

    fn nonce(&self) -> u64 {
        let a: Array<MapData, DatapathConfig> = Array::try_from(self.map(MAP_CONFIG)).unwrap();
        a.get(&0, 0).unwrap().nonce
    }

    /// The slot index of the peer at `ip`, and the slot.
    fn slot_of(&self, ip: Ipv4Addr) -> (u32, PeerSlot) {
        let peers: HashMap<MapData, PeerAddr, PeerInfo> = HashMap::try_from(self.map(MAP_PEERS)).unwrap();
        let info =
            peers.get(&PeerAddr::v4(ip.octets()), 0).unwrap_or_else(|e| panic!("{ip} is not in the peer map: {e}"));
        let slots: Array<MapData, PeerSlot> = Array::try_from(self.map(MAP_SLOTS)).unwrap();
        (info.slot, slots.get(&info.slot, 0).unwrap())
    }

    fn lease(&self) -> LeaseState {
        let a: Array<MapData, LeaseState> = Array::try_from(self.map(MAP_LEASE)).unwrap();
        a.get(&0, 0).unwrap()
    }

    fn counter(&self, c: Counter) -> u64 {
        let a: PerCpuArray<MapData, u64> = PerCpuArray::try_from(self.map(MAP_STATS)).unwrap();
        a.get(&(c as u32), 0).unwrap().iter().sum()
    }
}

/// An `AF_PACKET` raw socket bound to interface `ifname` of the calling thread's namespace.
fn packet_socket(ifname: &str) -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain old data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = i32::try_from(index).unwrap();
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "binding AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
    fd
}

/// The heartbeat in an untagged IPv4 frame from `from` to the heartbeat port, if it is one.
fn heartbeat_of(f: &[u8], from: Ipv4Addr) -> Option<(Ipv4Addr, [u8; HB_LEN])> {
    if f.len() < 14 + 20 + 8 + HB_LEN || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 {
        return None;
    }
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    if src != from || f[36..38] != HB_PORT.to_be_bytes() || f.len() != 14 + 20 + 8 + HB_LEN {
        return None;
    }
    Some((dst, f[42..].try_into().unwrap()))
}

/// Captures, for `dur`, every heartbeat frame `from` sends into the switch port `port`.
fn capture(switch: &Netns, port: &str, from: Ipv4Addr, dur: Duration) -> Vec<Vec<u8>> {
    let port = port.to_owned();
    switch.run(move || {
        let fd = packet_socket(&port);
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
            );
        }
        let until = Instant::now() + dur;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            // SAFETY: recv into a buffer we own.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            if heartbeat_of(&buf[..n], from).is_some() {
                out.push(buf[..n].to_vec());
            }
        }
        out
    })
}

/// Sends `frames` unchanged out of `ifname` in namespace `ns`, 10 ms apart.
fn replay(ns: &Netns, ifname: &str, frames: &[Vec<u8>]) {
    let (ifname, frames) = (ifname.to_owned(), frames.to_vec());
    ns.run(move || {
        let fd = packet_socket(&ifname);
        for f in &frames {
            // SAFETY: send from a buffer we own.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(
                usize::try_from(n).ok(),
                Some(f.len()),
                "replaying a frame: {}",
                std::io::Error::last_os_error()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

fn peer_verdict(v: &Value, addr: &str) -> String {
    v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["address"] == addr))
        .map_or_else(|| format!("(no peer {addr})"), |p| p["verdict"].as_str().unwrap_or("").to_owned())
}

/// Replays `frames` (captured from node `from`) at node `to` and checks that nothing changed.
/// `stale`: the receiver's maps were recreated since the capture, so every frame echoes a nonce
/// of an earlier generation.
fn replay_changes_nothing(c: &Cluster, what: &str, to: usize, from: usize, frames: &[Vec<u8>], stale: bool) {
    let pins = Pins(c.files[to].bpffs.0.join(CLUSTER));
    let from_ip = c.bed.nodes[from].ip;
    let (slot, before) = pins.slot_of(from_ip);
    let endorsed_before = pins.lease().endorse_ns[slot as usize];
    let (replays, stales) = (pins.counter(Counter::HbReplay), pins.counter(Counter::HbStaleNonce));
    replay(&c.bed.nodes[from].ns, &c.bed.nodes[from].ifname, frames);
    std::thread::sleep(Duration::from_millis(200));
    let (_, after) = pins.slot_of(from_ip);
    assert_eq!(after, before, "{what}: the receiver's slot for {from_ip} changed after the replay");
    assert_eq!(
        pins.lease().endorse_ns[slot as usize],
        endorsed_before,
        "{what}: a replayed endorsement from {from_ip} moved the receiver's lease"
    );
    let replays = pins.counter(Counter::HbReplay) - replays;
    let stales = pins.counter(Counter::HbStaleNonce) - stales;
    let n = frames.len() as u64;
    assert!(replays >= n, "{what}: {n} frames replayed, hb_replay grew by {replays}");
    if stale {
        assert!(stales >= n, "{what}: {n} frames of an earlier generation, hb_stale_nonce grew by {stales}");
    }
    let addr = format!("{from_ip}:{HB_PORT}");
    let v = c.node_status(to).expect("node-status of the receiver");
    assert_ne!(peer_verdict(&v, &addr), "alive", "{what}: the cut-off peer looks alive: {v:#}");
    eprintln!("{what}: {n} replayed frames: slot and lease unchanged, hb_replay +{replays}, hb_stale_nonce +{stales}");
}

fn wait_primary_serving(c: &Cluster, i: usize) {
    c.wait_for(i, "the primary serving again", Duration::from_mins(1), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("primary for epoch"))
    });
}

#[test]
fn heartbeats_captured_earlier_change_nothing_after_restarts_and_new_maps() {
    let mut c = Cluster::start(&[Kind::Primary, Kind::Standby, Kind::Witness], "");
    let (p, s, w) = (0, 1, 2);
    let key: ClusterKeyBytes =
        efm_agent::heartbeat::load_cluster_key(&c.root.path().join(format!("{CLUSTER}.key"))).expect("cluster key");
    let ips: Vec<Ipv4Addr> = c.bed.nodes.iter().map(|n| n.ip).collect();
    let ip = |i: usize| ips[i];

    // Capture the witness's heartbeats for 2 s: endorsing PINGs to the primary, PINGs to the
    // standby (every one authenticates: real frames of a real agent).
    let frames = capture(&c.bed.switch, &c.bed.nodes[w].sw_if, ip(w), Duration::from_secs(2));
    let decoded = |f: &Vec<u8>| {
        Heartbeat::decode(&heartbeat_of(f, ip(w)).unwrap().1, &key).expect("a captured heartbeat authenticates")
    };
    let to = |i: usize| -> Vec<Vec<u8>> {
        // The witness's agent's PINGs (its kernel's PONGs leave the same port).
        frames
            .iter()
            .filter(|f| heartbeat_of(f, ip(w)).is_some_and(|(d, _)| d == ip(i)) && decoded(f).kind == HB_KIND_PING)
            .cloned()
            .collect()
    };
    let (to_p, to_s) = (to(p), to(s));
    assert!(
        to_p.len() >= 20 && to_s.len() >= 20,
        "captured {} PINGs to the primary, {} to the standby",
        to_p.len(),
        to_s.len()
    );
    let endorsing = to_p.iter().filter(|f| decoded(f).flags & FLAG_ENDORSE != 0).count();
    assert!(endorsing >= 20, "the witness endorses the primary: {endorsing} of {} captured PINGs endorse", to_p.len());
    let pins_p = Pins(c.files[p].bpffs.0.join(CLUSTER));
    let pins_s = Pins(c.files[s].bpffs.0.join(CLUSTER));
    let primary_nonce = pins_p.nonce();
    assert!(to_p.iter().all(|f| decoded(f).echo_nonce == primary_nonce), "the witness echoes the primary's nonce");

    // Cut the witness off: its agent stops (orderly: its XDP goes too, so nothing of it is heard).
    c.agents[w] = Agent::start_later();
    std::thread::sleep(Duration::from_millis(300));

    // 1. The primary's agent restarted in order (a primary keeps its pins: same generation).
    c.restart_agent(p);
    wait_primary_serving(&c, p);
    assert_eq!(pins_p.nonce(), primary_nonce, "an orderly restart of a primary keeps its maps and nonce");
    replay_changes_nothing(&c, "primary, agent restarted in order", p, w, &to_p, false);

    // 2. The primary's agent SIGKILLed and started again (pins kept).
    c.agents[p].sigkill();
    c.agents[p] = Agent::start(&c.bed.nodes[p].ns.name, &c.files[p]);
    wait_primary_serving(&c, p);
    assert_eq!(pins_p.nonce(), primary_nonce, "a crash keeps the maps and the nonce");
    replay_changes_nothing(&c, "primary, agent SIGKILLed and restarted", p, w, &to_p, false);

    // 3. The primary's maps recreated (a reboot empties bpffs: SIGKILL, pins removed, start).
    c.agents[p].sigkill();
    std::fs::remove_dir_all(c.files[p].bpffs.0.join(CLUSTER)).expect("removing the primary's pins");
    c.agents[p] = Agent::start(&c.bed.nodes[p].ns.name, &c.files[p]);
    wait_primary_serving(&c, p);
    let primary_nonce_new = pins_p.nonce();
    assert!(
        primary_nonce_new != 0 && primary_nonce_new != primary_nonce,
        "new maps, new nonce: {primary_nonce:#x} then {primary_nonce_new:#x}"
    );
    replay_changes_nothing(&c, "primary, maps recreated", p, w, &to_p, true);
    assert_eq!(pins_p.slot_of(ip(w)).1.pings, 0, "nothing of the witness accepted in the new generation");
    assert_eq!(
        pins_p.lease().endorse_ns[pins_p.slot_of(ip(w)).0 as usize],
        0,
        "no endorsement of the witness in the new lease"
    );

    // 4. The standby's agent restarted in order: a non-primary removes its pins, so its maps are
    //    recreated (the case where 60 replayed PINGs used to make a cut-off peer look alive).
    let standby_nonce = pins_s.nonce();
    c.restart_agent(s);
    c.wait_for(s, "the standby's agent back", Duration::from_mins(1), |v| {
        peer_verdict(v, &format!("{}:{HB_PORT}", ip(p))) == "alive"
    });
    let standby_nonce_new = pins_s.nonce();
    assert!(
        standby_nonce_new != 0 && standby_nonce_new != standby_nonce,
        "orderly stop of a standby: new maps, new nonce"
    );
    replay_changes_nothing(&c, "standby, agent restarted in order (maps recreated)", s, w, &to_s, true);

    // 5. The standby's agent SIGKILLed and started again (pins kept, captured frames still stale).
    c.agents[s].sigkill();
    c.agents[s] = Agent::start(&c.bed.nodes[s].ns.name, &c.files[s]);
    c.wait_for(s, "the standby's agent back", Duration::from_mins(1), |v| {
        peer_verdict(v, &format!("{}:{HB_PORT}", ip(p))) == "alive"
    });
    assert_eq!(pins_s.nonce(), standby_nonce_new, "a crash keeps the standby's maps and nonce");
    replay_changes_nothing(&c, "standby, agent SIGKILLed and restarted", s, w, &to_s, true);
}
