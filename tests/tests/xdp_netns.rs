//! The XDP program attached for real: two network namespaces joined by a veth pair, native XDP on
//! both ends. Needs root; runs single-threaded (`cargo xtask test`).

use std::{
    io::{BufRead as _, BufReader, ErrorKind},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use efm_agent::datapath::{Attachment, Datapath, ModeChoice};
use efm_common::{
    maps::{Counter, FenceState, FENCE_FENCED, FENCE_RESET},
    wire::{Heartbeat, HB_KIND_PING, ROLE_STANDBY},
};
use efm_tests::*;

fn open_side(link: &Link, side: Side, pins: &Path) -> Datapath {
    let (ns, iface) = match side {
        Side::A => (&link.a, link.a_if.clone()),
        Side::B => (&link.b, link.b_if.clone()),
    };
    let pins = pins.to_owned();
    ns.run(move || {
        let mut dp = Datapath::open(&pins, &[iface.as_str()], ModeChoice::Auto)
            .unwrap_or_else(|e| panic!("opening the datapath: {e}"));
        configure_side(&mut dp, side);
        dp.set_fence(&Fixture::base_fence()).expect("fence");
        dp
    })
}

fn bed() -> Link {
    require_root();
    Link::new(&[&format!("{NS_A_V4}/24")], &[&format!("{NS_B_V4}/24")])
}

#[test]
fn pings_are_timed_by_the_kernel_and_answered_with_pongs() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let dp_b = open_side(&link, Side::B, &pins_b.0);
    let dp_a = open_side(&link, Side::A, &pins_a.0);
    assert_eq!(dp_b.attachments()[0].1, Attachment::Native, "veth supports native XDP");

    // A sends as its agent would: its own nonce, and B's echoed. The first PING echoes nothing
    // (B's nonce not learned yet): B records nothing but answers, and A's kernel learns B's nonce
    // from that PONG.
    let (a_nonce, b_nonce) = (dp_a.nonce(), dp_b.nonce());
    link.a.run(move || {
        let sock = UdpSocket::bind((NS_A_V4, HB_PORT)).expect("bind heartbeat socket");
        let hb = Heartbeat { send_ns: monotonic_ns(), lsn: 0, sender_nonce: a_nonce, ..ping(1, 1) };
        sock.send_to(&hb.encode(&key()), (NS_B_V4, HB_PORT)).expect("send PING");
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(dp_b.slot(0).unwrap().pings, 0, "a PING not echoing B's nonce is not recorded");
    assert_eq!(dp_b.counters().unwrap().get(Counter::HbStaleNonce), 1);
    let a0 = dp_a.slot(0).unwrap();
    assert_eq!(a0.peer_nonce, b_nonce, "A's kernel learned B's nonce from B's PONG");
    assert_eq!((a0.pong_seq, a0.pongs), (1, 1));

    let sent = link.a.run(move || {
        let sock = UdpSocket::bind((NS_A_V4, HB_PORT)).expect("bind heartbeat socket");
        let to = SocketAddr::from((NS_B_V4, HB_PORT));
        for seq in 2..=101u64 {
            let hb = Heartbeat {
                send_ns: monotonic_ns(),
                lsn: 0,
                sender_nonce: a_nonce,
                echo_nonce: a0.peer_nonce,
                ..ping(1, seq)
            };
            sock.send_to(&hb.encode(&key()), to).expect("send PING");
            std::thread::sleep(Duration::from_millis(2));
        }
        101u64
    });
    std::thread::sleep(Duration::from_millis(20));

    let b = dp_b.slot(0).unwrap();
    assert_eq!(b.ping_seq, sent, "B's kernel recorded every PING");
    assert!(b.pings >= 95, "pings {}", b.pings);
    let age = monotonic_ns() - b.ping_arrival_ns;
    assert!(age < 1_000_000_000, "last arrival is fresh: {age} ns");
    assert!(dp_b.counters().unwrap().get(Counter::HbPongSent) >= 95);

    let a = dp_a.slot(0).unwrap();
    assert_eq!(a.pong_seq, sent, "A's kernel received the PONG for the last PING");
    assert!(a.pongs >= 96, "pongs {}", a.pongs);
    assert!(a.pong_rtt_ns > 0 && a.pong_rtt_ns < 20_000_000, "plausible RTT: {} ns", a.pong_rtt_ns);
    let hist = dp_a.rtt_histogram(0).unwrap();
    assert_eq!(hist.iter().sum::<u64>(), a.pongs, "every PONG is in the RTT histogram");
    eprintln!("kernel PONG RTT of the last PING: {} µs", a.pong_rtt_ns / 1000);
}

/// Listeners on B: the database port and an unrelated port, accepting in the background.
fn listeners(link: &Link) {
    let (db, other) = link.b.run(|| {
        (
            TcpListener::bind((NS_B_V4, DB_PORT)).expect("bind db port"),
            TcpListener::bind((NS_B_V4, 8080)).expect("bind 8080"),
        )
    });
    for l in [db, other] {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s)
            }
        });
    }
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((NS_B_V4, port)), timeout)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn fence_cuts_off_database_connections_within_a_millisecond() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let mut dp_b = open_side(&link, Side::B, &pins_b.0);
    // A needs XDP too: a native XDP_TX on a veth is delivered only to a peer with NAPI enabled.
    let _dp_a = open_side(&link, Side::A, &pins_a.0);
    listeners(&link);

    let base = Fixture::base_fence();
    let reset = FenceState { flags: FENCE_FENCED | FENCE_RESET, ..base };
    let drop = FenceState { flags: FENCE_FENCED, ..base };
    let (refused_ns, dropped_ns, dp_b) = link.a.run(move || {
        let long = Duration::from_secs(2);
        let mut refused = Vec::new();
        for _ in 0..20 {
            connect(DB_PORT, long).expect("unfenced: database port reachable");
            let t0 = monotonic_ns();
            dp_b.set_fence(&reset).unwrap();
            let err = connect(DB_PORT, long).expect_err("fenced (reset): connect must fail");
            let t1 = monotonic_ns();
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "reset mode refuses: {err}");
            refused.push(t1 - t0);
            connect(8080, long).expect("other ports keep working while fenced");
            dp_b.set_fence(&base).unwrap();
        }
        let mut dropped = Vec::new();
        for _ in 0..10 {
            connect(DB_PORT, long).expect("unfenced: database port reachable");
            let before = dp_b.counters().unwrap().get(Counter::ClientFenced);
            let t0 = monotonic_ns();
            dp_b.set_fence(&drop).unwrap();
            let t1 = monotonic_ns(); // the SYN below leaves now
            let err = connect(DB_PORT, Duration::from_millis(200)).expect_err("fenced (drop): connect must fail");
            assert!(
                matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
                "drop mode: the SYN vanishes: {err}"
            );
            assert!(dp_b.counters().unwrap().get(Counter::ClientFenced) > before, "the SYN was dropped by XDP");
            dropped.push(t1 - t0);
            connect(8080, long).expect("other ports keep working while fenced");
            dp_b.set_fence(&base).unwrap();
        }
        (refused, dropped, dp_b)
    });
    let (mut refused_ns, mut dropped_ns) = (refused_ns, dropped_ns);
    let (r_med, r_max) = (median(&mut refused_ns), *refused_ns.last().unwrap());
    let (d_med, d_max) = (median(&mut dropped_ns), *dropped_ns.last().unwrap());
    eprintln!("map write -> connect refused: median {r_med} ns, max {r_max} ns (20 trials)");
    eprintln!("map write -> first SYN that was dropped: median {d_med} ns, max {d_max} ns (10 trials)");
    assert!(r_med < 1_000_000, "reset mode: median {r_med} ns from map write to refused connect");
    assert!(d_med < 1_000_000, "drop mode: median {d_med} ns from map write to a dropped SYN");
    assert!(dp_b.counters().unwrap().get(Counter::ClientReset) >= 20);
}

/// The stand-in loader process; killed on drop.
struct Hold(Child);

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_hold(ns: &Netns, pins: &Path, iface: &str, side: &str, fence: bool) -> (Hold, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_efm-dp-hold"));
    cmd.arg(format!("/var/run/netns/{}", ns.name)).arg(pins).arg(iface).arg(side);
    if fence {
        cmd.arg("fence-reset");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn efm-dp-hold");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("READY line");
    assert!(line.starts_with("READY"), "efm-dp-hold did not start: {line:?}");
    (Hold(child), line.trim().to_owned())
}

#[test]
fn pinned_fence_survives_killing_and_restarting_the_loader() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let _dp_a = open_side(&link, Side::A, &pins_a.0);
    listeners(&link);
    let short = Duration::from_secs(2);
    let refused = |link: &Link| link.a.run(move || connect(DB_PORT, short).map(drop).map_err(|e| e.kind()));

    let (hold, ready) = spawn_hold(&link.b, &pins_b.0, &link.b_if, "b", true);
    assert_eq!(ready, "READY attachment=native reused=false");
    assert_eq!(refused(&link), Err(ErrorKind::ConnectionRefused), "fenced by the loader");

    // SIGKILL: no destructor runs. The pinned link keeps the program attached, the pinned map
    // keeps the fence.
    drop(hold);
    assert_eq!(refused(&link), Err(ErrorKind::ConnectionRefused), "fence survives the loader's death");

    // A restarted loader re-uses the pinned maps and takes over the pinned link without a gap.
    let (hold, ready) = spawn_hold(&link.b, &pins_b.0, &link.b_if, "b", false);
    assert_eq!(ready, "READY attachment=re-attached to pinned link reused=true");
    assert_eq!(refused(&link), Err(ErrorKind::ConnectionRefused), "restart does not lift the fence");

    // The pinned state is the live state: lifting the fence through the pinned map works.
    let mut dp = Datapath::load(&pins_b.0).expect("re-open pinned maps");
    assert_ne!(dp.fence().unwrap().flags & FENCE_FENCED, 0);
    dp.set_fence(&Fixture::base_fence()).unwrap();
    assert_eq!(refused(&link), Ok(()), "unfenced through the pinned map");
    drop(hold);

    // Orderly stop: detach removes every pin, and the program with them.
    dp.detach().expect("detach");
    assert!(!pins_b.0.exists(), "pin directory removed");
    let ip_link = link.b.command("ip").args(["-d", "link", "show", &link.b_if]).output().unwrap();
    let text = String::from_utf8_lossy(&ip_link.stdout);
    assert!(!text.contains("prog/xdp"), "XDP detached: {text}");
}

#[test]
fn generic_mode_attachment_answers_pings_too() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let (iface, pb) = (link.b_if.clone(), pins_b.0.clone());
    let dp_b = link.b.run(move || {
        let mut dp = Datapath::open(&pb, &[iface.as_str()], ModeChoice::Generic).expect("generic attach");
        configure_side(&mut dp, Side::B);
        dp.set_fence(&Fixture::base_fence()).expect("fence");
        dp
    });
    assert_eq!(dp_b.attachments()[0].1, Attachment::Generic);
    let dp_a = open_side(&link, Side::A, &pins_a.0);
    let (a_nonce, b_nonce) = (dp_a.nonce(), dp_b.nonce());
    link.a.run(move || {
        let sock = UdpSocket::bind((NS_A_V4, HB_PORT)).expect("bind");
        for seq in 1..=10u64 {
            let hb = Heartbeat {
                send_ns: monotonic_ns(),
                lsn: 0,
                sender_nonce: a_nonce,
                echo_nonce: b_nonce,
                ..ping(1, seq)
            };
            sock.send_to(&hb.encode(&key()), (NS_B_V4, HB_PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(dp_b.slot(0).unwrap().ping_seq, 10);
    assert_eq!(dp_a.slot(0).unwrap().pong_seq, 10, "PONGs sent in generic mode arrive");
}

#[test]
fn pinned_map_from_an_incompatible_build_is_refused() {
    require_root();
    let pins = PinDir::new("inc");
    std::fs::create_dir_all(&pins.0).unwrap();
    let path = pins.0.join("EFM_CONFIG");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "array", "key", "4", "value", "8", "entries", "1", "name", "EFM_CONFIG"])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
    let err = Datapath::load(&pins.0).expect_err("a wrong-shaped pinned map must be refused");
    let msg = err.to_string();
    assert!(msg.contains("EFM_CONFIG") && msg.contains("value size") && msg.contains("pinned 8"), "{msg}");
}

/// Like `pings_are_timed_by_the_kernel_and_answered_with_pongs`, but across a bridge (the
/// cluster test bed's topology): the kernel's PONG leaves through the node's veth into the
/// switch namespace and must reach the pinging node.
#[test]
fn pongs_cross_a_bridge() {
    require_root();
    let bed = efm_tests::bed::Bed::new(2);
    let (pins_a, pins_b) = (PinDir::new("ba"), PinDir::new("bb"));
    let open = |i: usize, pins: &Path, me: u32, peer: u32, peer_ip: std::net::Ipv4Addr| {
        let (iface, pins) = (bed.nodes[i].ifname.clone(), pins.to_owned());
        bed.nodes[i].ns.run(move || {
            let mut dp = Datapath::open(&pins, &[iface.as_str()], ModeChoice::Auto).expect("open");
            configure(&mut dp);
            let k = key();
            dp.set_config(&efm_common::maps::DatapathConfig {
                cluster_id: CLUSTER_ID,
                node_id: me,
                hb_port: u32::from(HB_PORT),
                db_port: u32::from(DB_PORT),
                nonce: 0, // the datapath keeps its own generation nonce
            })
            .unwrap();
            dp.set_key(&efm_common::maps::ClusterKey { k0: k.k0, k1: k.k1 }).unwrap();
            dp.set_peers(&[efm_agent::datapath::Peer { node_id: peer, slot: 0, addrs: vec![peer_ip.into()] }]).unwrap();
            dp
        })
    };
    let a_ip = bed.nodes[0].ip;
    let b_ip = bed.nodes[1].ip;
    let dp_a = open(0, &pins_a.0, 2, 1, b_ip);
    let dp_b = open(1, &pins_b.0, 1, 2, a_ip);
    let (a_nonce, b_nonce) = (dp_a.nonce(), dp_b.nonce());
    bed.nodes[0].ns.run(move || {
        let sock = UdpSocket::bind((a_ip, HB_PORT)).expect("bind");
        for seq in 1..=20u64 {
            let hb = Heartbeat {
                kind: HB_KIND_PING,
                flags: ROLE_STANDBY,
                cluster_id: CLUSTER_ID,
                node_id: 2,
                incarnation: 1,
                seq,
                epoch: 3,
                send_ns: monotonic_ns(),
                lsn: 0,
                sender_nonce: a_nonce,
                echo_nonce: b_nonce,
            };
            sock.send_to(&hb.encode(&key()), (b_ip, HB_PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let sent = dp_b.counters().unwrap().get(Counter::HbPongSent);
    assert_eq!(dp_b.slot(0).unwrap().ping_seq, 20, "B's kernel got the PINGs");
    assert!(sent >= 19, "B's kernel answered: {sent}");
    assert_eq!(dp_a.slot(0).unwrap().pong_seq, 20, "A's kernel got the PONGs across the bridge");
}

// ---------------------------------------------------------------------------------------------
// The egress fence (TCX egress on the same interface)

/// A client in A connected to a server on B's database port: (client, server).
fn connected_pair(link: &Link) -> (TcpStream, TcpStream) {
    let l = link.b.run(|| TcpListener::bind((NS_B_V4, DB_PORT)).expect("bind db port"));
    let c = link.a.run(|| connect(DB_PORT, Duration::from_secs(2)).expect("connect to the db port"));
    let (s, _) = l.accept().expect("accept");
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (c, s)
}

/// The server writes a "result"; returns what the client's next read gives and how long after
/// the write it came.
fn server_writes(c: &mut TcpStream, s: &mut TcpStream) -> (std::io::Result<Vec<u8>>, u64) {
    use std::io::{Read as _, Write as _};
    let t0 = monotonic_ns();
    s.write_all(b"C\0\0\0\x0dCOMMIT\0Z\0\0\0\x05I").expect("server write");
    let mut buf = [0u8; 64];
    let r = c.read(&mut buf).map(|n| buf[..n].to_vec());
    (r, monotonic_ns() - t0)
}

/// Number of TCX egress programs on `iface` in `ns`.
fn tcx_egress_count(ns: &Netns, iface: &str) -> usize {
    let iface = iface.to_owned();
    ns.run(move || {
        aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Egress)
            .unwrap_or_else(|e| panic!("querying TCX egress of {iface}: {e}"))
            .1
            .len()
    })
}

#[test]
fn egress_fence_resets_a_connected_client_when_the_server_writes() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let mut dp_b = open_side(&link, Side::B, &pins_b.0);
    let _dp_a = open_side(&link, Side::A, &pins_a.0);
    assert!(pins_b.0.join(format!("egress_{}", link.b_if)).exists(), "egress link pinned");
    assert_eq!(tcx_egress_count(&link.b, &link.b_if), 1, "one TCX egress program on B's veth");
    let base = Fixture::base_fence();

    // Serving: the result reaches the client.
    let (mut c, mut s) = connected_pair(&link);
    let (r, _) = server_writes(&mut c, &mut s);
    assert!(r.is_ok_and(|d| d.starts_with(b"C")), "unfenced: the client gets the result");

    // Reset mode: the server's next segment becomes a RST; the client learns at once.
    let mut times = Vec::new();
    for _ in 0..10 {
        dp_b.set_fence(&base).unwrap();
        let (mut c, mut s) = connected_pair(&link);
        let before = dp_b.counters().unwrap().get(Counter::EgressReset);
        dp_b.set_fence(&FenceState { flags: FENCE_FENCED | FENCE_RESET, ..base }).unwrap();
        let (r, dt) = server_writes(&mut c, &mut s);
        let err = r.expect_err("fenced: the client must not get the result");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "the client sees ECONNRESET: {err}");
        assert!(dp_b.counters().unwrap().get(Counter::EgressReset) > before, "converted by the egress fence");
        times.push(dt);
    }
    let (med, max) = (median(&mut times), *times.last().unwrap());
    eprintln!("server write -> client ECONNRESET: median {med} ns, max {max} ns (10 trials)");
    assert!(med < 50_000_000, "the client learns at once: median {med} ns");

    // Drop mode: nothing of the result leaves.
    dp_b.set_fence(&base).unwrap();
    let (mut c, mut s) = connected_pair(&link);
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let before = dp_b.counters().unwrap().get(Counter::EgressDrop);
    dp_b.set_fence(&FenceState { flags: FENCE_FENCED, ..base }).unwrap();
    let (r, _) = server_writes(&mut c, &mut s);
    let err = r.expect_err("drop mode: the client gets nothing");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    assert!(dp_b.counters().unwrap().get(Counter::EgressDrop) > before);

    // A member is exempt while the node is fenced explicitly only and its agent asked for it (a
    // clean hand-over ships its last WAL).
    dp_b.set_fence(&base).unwrap();
    dp_b.set_exempt_with_members(&[], &[NS_A_V4.into()]).unwrap();
    let (mut c, mut s) = connected_pair(&link);
    let handover = FENCE_FENCED | FENCE_RESET | efm_common::maps::FENCE_MEMBERS_EXEMPT;
    dp_b.set_fence(&FenceState { flags: handover, ..base }).unwrap();
    let (r, _) = server_writes(&mut c, &mut s);
    assert!(r.is_ok_and(|d| d.starts_with(b"C")), "member, hand-over fence: data flows");
    // ... and not once the lease lapsed (enforced, no endorsement).
    dp_b.set_fence(&FenceState {
        flags: handover | efm_common::maps::FENCE_LEASE_ENFORCED,
        lease_k: 1,
        lease_timeout_ns: 1_000_000,
        ..base
    })
    .unwrap();
    let (r, _) = server_writes(&mut c, &mut s);
    let err = r.expect_err("lapsed: members are fenced too (dropped, not reset)");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
}

#[test]
fn egress_fence_survives_killing_and_restarting_the_loader() {
    let link = bed();
    let (pins_a, pins_b) = (PinDir::new("na"), PinDir::new("nb"));
    let _dp_a = open_side(&link, Side::A, &pins_a.0);
    let (hold, ready) = spawn_hold(&link.b, &pins_b.0, &link.b_if, "b", false);
    assert_eq!(ready, "READY attachment=native reused=false");
    assert_eq!(tcx_egress_count(&link.b, &link.b_if), 1);
    let mut maps = Datapath::load(&pins_b.0).expect("open the pinned maps");
    let base = Fixture::base_fence();
    let fenced = FenceState { flags: FENCE_FENCED | FENCE_RESET, ..base };

    // SIGKILL of the loader: the pinned TCX link keeps the egress fence attached.
    let (mut c, mut s) = connected_pair(&link);
    drop(hold);
    assert_eq!(tcx_egress_count(&link.b, &link.b_if), 1, "egress program still attached");
    maps.set_fence(&fenced).unwrap();
    let (r, _) = server_writes(&mut c, &mut s);
    assert_eq!(r.expect_err("fenced after the loader died").kind(), ErrorKind::ConnectionReset);

    // A restarted loader swaps its program onto the pinned link: still one program, still fenced.
    maps.set_fence(&base).unwrap();
    let (mut c, mut s) = connected_pair(&link);
    maps.set_fence(&fenced).unwrap();
    let (hold, ready) = spawn_hold(&link.b, &pins_b.0, &link.b_if, "b", false);
    assert_eq!(ready, "READY attachment=re-attached to pinned link reused=true");
    assert_eq!(tcx_egress_count(&link.b, &link.b_if), 1, "replaced, not added");
    let (r, _) = server_writes(&mut c, &mut s);
    assert_eq!(r.expect_err("fenced across the restart").kind(), ErrorKind::ConnectionReset);
    drop(hold);

    // Orderly stop: detach removes the egress link with the rest. The killed loader's link fd is
    // closed by the kernel after its exit (deferred fput), so the link may go a moment later.
    maps.detach().expect("detach");
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while tcx_egress_count(&link.b, &link.b_if) != 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tcx_egress_count(&link.b, &link.b_if), 0, "egress program detached");
}
