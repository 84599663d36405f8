//! `heartbeat-latency`: round-trip times between two namespaces joined by a veth pair, native
//! XDP (efm's program) on both ends, three ways side by side (interleaved, one of each per round):
//!
//! - **kernel PONG**: A's user space sends an authenticated PING stamped with `CLOCK_MONOTONIC`;
//!   B's XDP answers with a PONG (`XDP_TX`); A's XDP records the PONG's arrival
//!   (`bpf_ktime_get_ns`) and RTT in the peer slot, read here. This is the RTT the detector uses;
//!   it ends in A's kernel, without a user-space wake-up on either side.
//! - **user-space UDP echo**: A's user space → a UDP echo thread in B → A's user space.
//! - **ICMP echo**: A's raw ICMP socket → B's kernel echo reply → A's user space.
//!
//! Idle, then under `stress-ng --cpu 4 --vm 2`.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use efm_agent::datapath::{Attachment, Datapath, ModeChoice};
use efm_common::wire::Heartbeat;
use efm_tests::{
    configure_side, inet_checksum, key, monotonic_ns, Fixture, Link, PinDir, Side, HB_PORT, NS_A_V4, NS_B_V4,
};

use crate::harness::{us, Args, Dist, Report, Stress};

const ECHO_PORT: u16 = 7900;
const TIMEOUT: Duration = Duration::from_millis(200);

/// Opens the datapath on one side of the link in native mode, configured for the two-node bed.
pub fn open_side(link: &Link, side: Side, pins: &PinDir) -> Result<Datapath> {
    let (ns, iface) = match side {
        Side::A => (&link.a, link.a_if.clone()),
        Side::B => (&link.b, link.b_if.clone()),
    };
    let dir = pins.0.clone();
    let dp = ns.run(move || -> Result<Datapath> {
        let mut dp =
            Datapath::open(&dir, &[iface.as_str()], ModeChoice::Native).context("attaching efm's XDP program")?;
        configure_side(&mut dp, side);
        dp.set_fence(&Fixture::base_fence()).context("fence state")?;
        Ok(dp)
    })?;
    ensure!(dp.attachments()[0].1 == Attachment::Native, "veth must attach natively");
    Ok(dp)
}

struct Samples {
    pong: Vec<u64>,
    udp: Vec<u64>,
    icmp: Vec<u64>,
    lost: [usize; 3],
}

fn icmp_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
    ensure!(s >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
    // SAFETY: new descriptor owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(s) };
    let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    // SAFETY: setsockopt with a timeval we own.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            u32::try_from(size_of::<libc::timeval>())?,
        );
    }
    Ok(fd)
}

/// One ICMP echo round trip in ns, or None if no reply came within the timeout.
fn icmp_rtt(fd: &OwnedFd, id: u16, seq: u16) -> Option<u64> {
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(&[0x5a; 56]);
    let c = inet_checksum(&[&pkt]);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: u16::try_from(libc::AF_INET).ok()?,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(NS_B_V4.octets()) },
        sin_zero: [0; 8],
    };
    let t0 = monotonic_ns();
    // SAFETY: sendto with buffers we own.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            std::ptr::from_ref(&dst).cast(),
            u32::try_from(size_of::<libc::sockaddr_in>()).ok()?,
        )
    };
    if rc < 0 {
        return None;
    }
    let until = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 256];
    while Instant::now() < until {
        // SAFETY: recv into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let t1 = monotonic_ns();
        let Ok(n) = usize::try_from(n) else { return None };
        let ihl = usize::from(buf[0] & 0xf) * 4;
        if n >= ihl + 8
            && buf[ihl] == 0
            && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
            && buf[ihl + 6..ihl + 8] == seq.to_be_bytes()
        {
            return Some(t1 - t0);
        }
    }
    None
}

/// Runs `samples` rounds in namespace A; returns the datapath (moved in and out of the thread).
fn measure(link: &Link, dp_a: Datapath, b_nonce: u64, seq0: u64, samples: usize) -> Result<(Datapath, Samples)> {
    link.a.run(move || -> Result<(Datapath, Samples)> {
        let a_nonce = dp_a.nonce();
        let hb = UdpSocket::bind((NS_A_V4, HB_PORT)).context("binding the heartbeat port")?;
        let udp = UdpSocket::bind((NS_A_V4, 0)).context("binding a UDP socket")?;
        udp.connect(SocketAddr::from((NS_B_V4, ECHO_PORT)))?;
        udp.set_read_timeout(Some(TIMEOUT))?;
        let icmp = icmp_socket()?;
        let id = u16::try_from(std::process::id() & 0xffff)?;
        let mut s = Samples {
            pong: Vec::with_capacity(samples),
            udp: Vec::with_capacity(samples),
            icmp: Vec::with_capacity(samples),
            lost: [0; 3],
        };
        let mut buf = [0u8; 64];
        for i in 0..samples {
            let seq = seq0 + u64::try_from(i)?;
            // Kernel PONG.
            // As A's agent sends it: A's nonce, and B's as learned from B's PONGs.
            let ping = Heartbeat {
                send_ns: monotonic_ns(),
                lsn: 0,
                sender_nonce: a_nonce,
                echo_nonce: b_nonce,
                ..efm_tests::ping(1, seq)
            };
            hb.send_to(&ping.encode(&key()), (NS_B_V4, HB_PORT)).context("sending a PING")?;
            let until = Instant::now() + TIMEOUT;
            loop {
                let slot = dp_a.slot(0)?;
                if slot.pong_seq >= seq {
                    s.pong.push(slot.pong_rtt_ns);
                    break;
                }
                if Instant::now() > until {
                    s.lost[0] += 1;
                    break;
                }
                std::hint::spin_loop();
            }
            // User-space UDP echo.
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            let t0 = monotonic_ns();
            udp.send(&buf)?;
            loop {
                match udp.recv(&mut buf) {
                    Ok(n) if n >= 8 && buf[..8] == seq.to_be_bytes() => {
                        s.udp.push(monotonic_ns() - t0);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        s.lost[1] += 1;
                        break;
                    }
                }
            }
            // ICMP echo.
            #[expect(clippy::cast_possible_truncation, reason = "ICMP sequence numbers wrap")]
            match icmp_rtt(&icmp, id, seq as u16) {
                Some(rtt) => s.icmp.push(rtt),
                None => s.lost[2] += 1,
            }
        }
        Ok((dp_a, s))
    })
}

/// A UDP echo server in namespace B until dropped.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(link: &Link) -> Result<Self> {
        let sock = link.b.run(|| UdpSocket::bind((NS_B_V4, ECHO_PORT))).context("binding the echo port")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let samples: usize = args.get("--samples", if args.flag("--quick") { 5_000 } else { 100_000 })?;
    let stress_args = ["--cpu", "4", "--vm", "2", "--vm-bytes", "256M"];
    let link = Link::new(&[&format!("{NS_A_V4}/24")], &[&format!("{NS_B_V4}/24")]);
    let (pins_a, pins_b) = (PinDir::new("bla"), PinDir::new("blb"));
    let dp_b = open_side(&link, Side::B, &pins_b)?;
    let b_nonce = dp_b.nonce();
    let mut dp_a = open_side(&link, Side::A, &pins_a)?;
    let _echo = Echo::start(&link)?;

    let mut rep = Report::new("heartbeat-latency");
    rep.setting("samples_per_method_and_condition", samples);
    rep.setting("topology", "two network namespaces, one veth pair, efm XDP native on both ends");
    rep.setting(
        "payload",
        format!("PING/PONG {} B heartbeat; UDP echo 64 B; ICMP echo 56 B data", efm_common::wire::HB_LEN),
    );
    rep.setting("stress", stress_args.join(" "));
    rep.setting("order", "interleaved: PONG, UDP, ICMP per round, sequential (one request in flight)");

    // Warm-up: ARP, caches.
    let (dp, _) = measure(&link, dp_a, b_nonce, 1, 100)?;
    dp_a = dp;
    let mut seq0 = 1_000;
    let mut rows = Vec::new();
    let conditions: &[&str] = if args.flag("--no-stress") { &["idle"] } else { &["idle", "stress"] };
    for &cond in conditions {
        let _stress = if cond == "stress" { Some(Stress::start(&stress_args)?) } else { None };
        let (dp, mut s) = measure(&link, dp_a, b_nonce, seq0, samples)?;
        dp_a = dp;
        seq0 += u64::try_from(samples)? + 10;
        for (name, v, lost) in [
            ("kernel_pong", &mut s.pong, s.lost[0]),
            ("udp_echo", &mut s.udp, s.lost[1]),
            ("icmp_echo", &mut s.icmp, s.lost[2]),
        ] {
            let d = Dist::of(v);
            for (stat, val) in [("p50", d.p50), ("p99", d.p99), ("p999", d.p999), ("max", d.max)] {
                rep.metric(&format!("{cond}_{name}_{stat}_us"), us(val));
            }
            rep.metric(&format!("{cond}_{name}_lost"), lost);
            rows.push(vec![
                cond.to_owned(),
                name.replace('_', " "),
                d.n.to_string(),
                lost.to_string(),
                us(d.p50).to_string(),
                us(d.p99).to_string(),
                us(d.p999).to_string(),
                us(d.max).to_string(),
            ]);
        }
    }
    rep.table(&["condition", "method", "samples", "lost", "p50 µs", "p99 µs", "p99.9 µs", "max µs"], &rows);
    rep.note(
        "The kernel PONG's RTT runs from A's user-space send to the PONG's arrival in A's XDP program \
         (what the detector uses); the UDP and ICMP echoes end when A's user space receives the reply.",
    );
    rep.finish(&crate::harness::command_line())
}
