//! 100 000+ random and mutated frames through the XDP program with `BPF_PROG_RUN`: the verdict is
//! always one the program is allowed to give, it never aborts, and no peer slot changes unless the
//! frame carried a heartbeat with a valid MAC echoing the datapath's current nonce. Seed:
//! `EFM_FUZZ_SEED` (printed on failure).

use efm_common::{
    maps::{Counter, FenceState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_RESET},
    wire::{Heartbeat, HB_KIND_PONG, HB_LEN, OFF_ECHO_NONCE, OFF_MAC},
};
use efm_tests::*;

const DEFAULT_SEED: u64 = 0x00ef_f00d_5eed;

/// xorshift64*: small, deterministic, good enough to mutate frames.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn base_frame(rng: &mut Rng, n: u64, nonce: u64) -> Vec<u8> {
    // Mostly increasing sequence numbers, sometimes an old one (a replay).
    let seq = if rng.below(8) == 0 { rng.next() % (n + 1) } else { n };
    // Mostly the receiver's current nonce echoed, sometimes none or another generation's.
    let echo = match rng.below(8) {
        0 => 0,
        1 => rng.next(),
        _ => nonce,
    };
    let mut a = match rng.below(3) {
        0 => Addrs::v4(),
        1 => Addrs::v6(),
        _ => Addrs::v4().with_src(OTHER_V4.into()),
    };
    if rng.below(4) == 0 {
        a = a.with_vlan(u16::try_from(rng.below(4095)).unwrap());
    }
    let node = if a.src == std::net::IpAddr::from(OTHER_V4) { OTHER_NODE } else { PEER_NODE };
    match rng.below(6) {
        0 | 1 => {
            let hb = Heartbeat {
                node_id: node,
                epoch: rng.next() % 6,
                flags: u16::try_from(rng.below(32)).unwrap(),
                echo_nonce: echo,
                ..ping(1, seq)
            };
            hb_frame(a, &hb)
        }
        2 => {
            let hb = Heartbeat {
                kind: HB_KIND_PONG,
                node_id: node,
                send_ns: monotonic_ns().saturating_sub(rng.next() % 10_000_000),
                echo_nonce: echo,
                ..ping(1, seq)
            };
            hb_frame(a, &hb)
        }
        3 => {
            let flags = [TCP_SYN, TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK, TCP_PSH | TCP_ACK][rng.below(5)];
            let payload = vec![0x5a; rng.below(80)];
            let dst = if a.dst.is_ipv4() { [LOCAL_V4, VIP_V4][rng.below(2)].into() } else { a.dst };
            tcp_frame(a.with_dst(dst), 40000, DB_PORT, u32::try_from(rng.next() >> 32).unwrap(), 7, flags, &payload)
        }
        4 => udp_frame(a, 1234, [DB_PORT, HB_PORT, 53][rng.below(3)], &vec![1; rng.below(100)]),
        _ => {
            let len = 14 + rng.below(200);
            (0..len).map(|_| rng.byte()).collect()
        }
    }
}

fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..rng.below(4) {
        match rng.below(5) {
            0 | 1 => {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(f.len());
                f[i] = rng.byte();
            }
            3 => {
                let keep = 14 + rng.below(f.len().saturating_sub(13).max(1));
                f.truncate(keep.min(f.len()));
            }
            _ => {
                for _ in 0..rng.below(16) {
                    f.push(rng.byte());
                }
            }
        }
    }
}

/// Whether any place a heartbeat payload can sit in this frame holds one with a valid MAC that
/// echoes `nonce`.
fn carries_current_heartbeat(f: &[u8], nonce: u64) -> bool {
    [42usize, 46, 62, 66].iter().any(|&off| {
        f.get(off..off + HB_LEN).is_some_and(|p| {
            let p: [u8; HB_LEN] = p.try_into().unwrap();
            u64::from_be_bytes(p[OFF_MAC..].try_into().unwrap()) == reference_mac(&p)
                && u64::from_be_bytes(p[OFF_ECHO_NONCE..OFF_MAC].try_into().unwrap()) == nonce
        })
    })
}

#[test]
fn random_and_mutated_frames_never_corrupt_state() {
    const FRAMES: usize = 100_000;
    let seed = std::env::var("EFM_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut fx = Fixture::new();
    let nonce = fx.dp.nonce();
    let fences = [
        Fixture::base_fence(),
        FenceState { flags: FENCE_FENCED | FENCE_RESET, ..Fixture::base_fence() },
        FenceState { flags: FENCE_LEASE_ENFORCED, lease_k: 1, lease_timeout_ns: 5_000_000, ..Fixture::base_fence() },
    ];
    let mut verdicts = [0usize; 4];
    let mut slot_changes = 0usize;
    for i in 0..FRAMES {
        if i % 10_000 == 0 {
            fx.set_fence(fences[(i / 10_000) % fences.len()]);
        }
        let mut f = base_frame(&mut rng, i as u64 + 1, nonce);
        if rng.below(4) != 0 {
            mutate(&mut rng, &mut f);
        }
        let before = (fx.dp.slot(0).unwrap(), fx.dp.slot(1).unwrap());
        let r = fx.dp.test_run(&f).unwrap_or_else(|e| panic!("seed {seed:#x} frame {i}: {e}: {f:02x?}"));
        assert!(
            [XDP_DROP, XDP_PASS, XDP_TX].contains(&r.action),
            "seed {seed:#x} frame {i}: verdict {} for {f:02x?}",
            r.action
        );
        verdicts[r.action as usize] += 1;
        let after = (fx.dp.slot(0).unwrap(), fx.dp.slot(1).unwrap());
        if after != before {
            slot_changes += 1;
            assert!(
                carries_current_heartbeat(&f, nonce),
                "seed {seed:#x} frame {i}: a slot changed without a valid MAC echoing the current nonce: {f:02x?}"
            );
        }
        if r.action == XDP_TX {
            // Whatever is sent back must be a well-formed frame with valid checksums.
            let _ = parse_checked(&r.frame);
        }
    }
    let counters = fx.dp.counters().unwrap();
    assert_eq!(counters.get(Counter::Aborted), 0, "the program never aborted");
    assert!(
        counters.get(Counter::HbStaleNonce) > 100,
        "stale nonces were exercised: {}",
        counters.get(Counter::HbStaleNonce)
    );
    eprintln!(
        "fuzz: {FRAMES} frames, seed {seed:#x}: drop {} pass {} tx {}, slot updates {slot_changes}",
        verdicts[1], verdicts[2], verdicts[3]
    );
    // The generator must actually exercise every verdict, or the test proves little.
    assert!(verdicts[1] > 1000 && verdicts[2] > 1000 && verdicts[3] > 1000, "{verdicts:?}");
    assert!(slot_changes > 1000, "valid heartbeats were accepted: {slot_changes}");
}

/// Random and mutated frames leaving through the egress fence: the verdict is pass (`TCX_NEXT`)
/// or drop, and a passed frame is either unchanged or differs only in the TCP flags byte and the
/// TCP checksum (the RST conversion); a converted well-formed segment keeps a valid checksum.
#[test]
fn random_and_mutated_frames_through_the_egress_fence() {
    const FRAMES: usize = 30_000;
    const TC_NEXT: u32 = u32::MAX;
    const TC_SHOT: u32 = 2;
    let seed = std::env::var("EFM_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 3);
    let mut fx = Fixture::new();
    let fences = [
        Fixture::base_fence(),
        FenceState { flags: FENCE_FENCED | FENCE_RESET, ..Fixture::base_fence() },
        FenceState { flags: FENCE_FENCED, ..Fixture::base_fence() },
        FenceState {
            flags: FENCE_LEASE_ENFORCED | FENCE_RESET,
            lease_k: 1,
            lease_timeout_ns: 5_000_000,
            ..Fixture::base_fence()
        },
    ];
    let (mut passed, mut dropped, mut converted, mut refused) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..FRAMES {
        if i % 3_000 == 0 {
            fx.set_fence(fences[(i / 3_000) % fences.len()]);
        }
        // Frames from the server (a service address, the database port) and from elsewhere.
        let src: std::net::IpAddr = [LOCAL_V4.into(), VIP_V4.into(), LOCAL_V6.into(), OTHER_V4.into()][rng.below(4)];
        let dst: std::net::IpAddr = if src.is_ipv4() { STRANGER_V4.into() } else { PEER_V6.into() };
        let mut a = Addrs { src, dst, vlan: None };
        if rng.below(4) == 0 {
            a = a.with_vlan(u16::try_from(rng.below(4095)).unwrap());
        }
        let sport = [DB_PORT, DB_PORT, DB_PORT, 22][rng.below(4)];
        let flags = [TCP_SYN | TCP_ACK, TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK, TCP_PSH | TCP_ACK, 0xff][rng.below(6)];
        let mut f = match rng.below(5) {
            0 => udp_frame(a, sport, 40000, &vec![7; rng.below(100)]),
            _ => tcp_frame(
                a,
                sport,
                40000,
                u32::try_from(rng.next() >> 32).unwrap(),
                9,
                flags,
                &vec![0x5a; rng.below(120)],
            ),
        };
        let clean = rng.below(3) == 0;
        if !clean {
            mutate(&mut rng, &mut f);
        }
        let r = match fx.dp.test_run_egress(&f, 1) {
            Ok(r) => r,
            // BPF_PROG_RUN for skb programs refuses a frame shorter than its network header (the
            // kernel pulls it before the program runs); nothing such can leave a real stack.
            Err(_) if f.len() < 14 + 4 + 40 => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("seed {seed:#x} frame {i}: {e}: {f:02x?}"),
        };
        match r.action {
            TC_SHOT => dropped += 1,
            TC_NEXT => {
                passed += 1;
                assert_eq!(r.frame.len(), f.len(), "seed {seed:#x} frame {i}: length changed");
                let diff: Vec<usize> = (0..f.len()).filter(|&j| f[j] != r.frame[j]).collect();
                if !diff.is_empty() {
                    converted += 1;
                    assert!(diff.len() <= 3, "seed {seed:#x} frame {i}: {diff:?} changed: {f:02x?}");
                    if clean {
                        let p = parse_checked(&r.frame);
                        assert_eq!(p.l4[13] & !(TCP_ACK), TCP_RST, "seed {seed:#x} frame {i}: a RST");
                    }
                }
            }
            other => panic!("seed {seed:#x} frame {i}: verdict {other} for {f:02x?}"),
        }
    }
    eprintln!(
        "egress fuzz: {FRAMES} frames, seed {seed:#x}: pass {passed} (converted {converted}) drop {dropped}, \
         {refused} too short for BPF_PROG_RUN"
    );
    assert!(refused < FRAMES / 10, "most frames ran: {refused} refused");
    assert!(passed > 1000 && dropped > 1000 && converted > 1000, "every verdict exercised");
}
