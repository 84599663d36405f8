//! The XDP program run on crafted frames with `BPF_PROG_RUN`: one test per verdict.
//! Needs root; runs single-threaded (`cargo xtask test`).

use std::net::IpAddr;

use efm_common::{
    maps::{Counter, FenceState, PeerSlot, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_RESET},
    wire::{
        Heartbeat, FLAG_ENDORSE, FLAG_FENCED, FLAG_LEASE_LAPSED, HB_KIND_PONG, HB_LEN, OFF_KIND, OFF_MAC, OFF_VERSION,
        ROLE_PRIMARY,
    },
};
use efm_tests::*;

fn run(fx: &mut Fixture, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = fx.dp.test_run(frame).expect("BPF_PROG_RUN");
    (r.action, r.frame)
}

/// Runs a frame and returns the action and which counters moved (by how much).
fn run_counted(fx: &mut Fixture, frame: &[u8]) -> (u32, Vec<u8>, Vec<(Counter, u64)>) {
    let before = fx.dp.counters().unwrap();
    let (action, out) = run(fx, frame);
    let moved = fx.dp.counters().unwrap().moved_since(&before);
    (action, out, moved)
}

fn slot(fx: &Fixture, s: u32) -> PeerSlot {
    fx.dp.slot(s).unwrap()
}

fn assert_pong(out: &[u8], sent: &Heartbeat, fence: &FenceState, nonce: u64, a: Addrs) {
    let p = parse_checked(out);
    assert_eq!(p.dst_mac, PEER_MAC, "PONG goes back to the sender's MAC");
    assert_eq!(p.src_mac, LOCAL_MAC);
    assert_eq!(p.vlan, a.vlan, "VLAN tag kept");
    assert_eq!(p.src, a.dst, "addresses swapped");
    assert_eq!(p.dst, a.src);
    assert_eq!(p.ttl, 64);
    assert_eq!(p.proto, 17);
    assert_eq!(&p.l4[0..2], &HB_PORT.to_be_bytes());
    assert_eq!(&p.l4[2..4], &HB_PORT.to_be_bytes());
    assert_eq!(usize::from(u16::from_be_bytes([p.l4[4], p.l4[5]])), 8 + HB_LEN);
    let payload: [u8; HB_LEN] = p.l4[8..].try_into().unwrap();
    let mac = u64::from_be_bytes(payload[OFF_MAC..].try_into().unwrap());
    assert_eq!(mac, reference_mac(&payload), "PONG MAC matches reference SipHash-2-4");
    let pong = Heartbeat::decode(&payload, &key()).expect("PONG decodes");
    assert_eq!(pong.kind, HB_KIND_PONG);
    assert_eq!(pong.cluster_id, CLUSTER_ID);
    assert_eq!(pong.node_id, LOCAL_NODE, "PONG carries the responder's node id");
    assert_eq!(pong.incarnation, sent.incarnation, "incarnation echoed");
    assert_eq!(pong.seq, sent.seq, "sequence echoed");
    assert_eq!(pong.send_ns, sent.send_ns, "send time echoed");
    assert_eq!(pong.epoch, fence.epoch);
    assert_eq!(pong.lsn, fence.lsn);
    assert_eq!(u32::from(pong.flags & efm_common::wire::ROLE_MASK), fence.role);
    assert_eq!(pong.sender_nonce, nonce, "PONG carries the responder's datapath nonce");
    assert_eq!(pong.echo_nonce, sent.sender_nonce, "PONG echoes the PING's sender nonce");
}

#[test]
fn heartbeat_mac_matches_reference_siphash() {
    let mut hb = ping(9, 1).encode(&key());
    for i in 0..200u64 {
        let h = Heartbeat { seq: i, send_ns: i * 7919, ..ping(i, i) };
        hb = h.encode(&key());
        let mac = u64::from_be_bytes(hb[OFF_MAC..].try_into().unwrap());
        assert_eq!(mac, reference_mac(&hb));
    }
    assert!(Heartbeat::decode(&hb, &key()).is_ok());
}

fn valid_ping_case(a: Addrs) {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let hb = ping_to(n, 7, 42);
    let t0 = monotonic_ns();
    let (action, out, moved) = run_counted(&mut fx, &hb_frame(a, &hb));
    let t1 = monotonic_ns();
    assert_eq!(action, XDP_TX, "a valid PING is answered");
    assert_eq!(moved, vec![(Counter::HbPingAccepted, 1), (Counter::HbPongSent, 1)]);
    let s = slot(&fx, 0);
    assert_eq!((s.ping_incarnation, s.ping_seq, s.pings), (7, 42, 1));
    assert!(t0 <= s.ping_arrival_ns && s.ping_arrival_ns <= t1, "arrival stamped with CLOCK_MONOTONIC");
    assert_eq!(s.ping_epoch, hb.epoch);
    assert_eq!(s.ping_lsn, hb.lsn);
    assert_eq!(s.ping_send_ns, hb.send_ns);
    assert_eq!(s.ping_flags, u32::from(hb.flags));
    assert_pong(&out, &hb, &Fixture::base_fence(), n, a);
}

#[test]
fn valid_ping_updates_slot_and_is_answered_with_pong() {
    valid_ping_case(Addrs::v4());
}

#[test]
fn valid_ping_over_ipv6() {
    valid_ping_case(Addrs::v6());
}

#[test]
fn valid_ping_with_vlan_tag() {
    valid_ping_case(Addrs::v4().with_vlan(42));
    valid_ping_case(Addrs::v6().with_vlan(4094));
}

fn assert_dropped(fx: &mut Fixture, frame: &[u8], counter: Counter) {
    let before = slot(fx, 0);
    let (action, _, moved) = run_counted(fx, frame);
    assert_eq!(action, XDP_DROP, "{counter:?}");
    assert_eq!(moved, vec![(counter, 1)], "counted once under {counter:?}");
    assert_eq!(slot(fx, 0), before, "{counter:?} leaves the slot alone");
}

#[test]
fn bad_heartbeats_are_dropped_and_counted_by_reason() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let a = Addrs::v4();
    // From an address that is not a peer (even with a valid MAC).
    assert_dropped(&mut fx, &hb_frame(a.with_src(STRANGER_V4.into()), &ping_to(n, 1, 1)), Counter::HbUnknownPeer);
    let good = ping_to(n, 1, 1).encode(&key());
    let mut bad = good;
    bad[0] ^= 0xff;
    assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, &bad), Counter::HbBadMagic);
    let mut bad = good;
    bad[OFF_VERSION] = 1; // version 1 (no nonces) is refused
    assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, &bad), Counter::HbBadVersion);
    let wrong_cluster = Heartbeat { cluster_id: CLUSTER_ID + 1, ..ping_to(n, 1, 1) };
    assert_dropped(&mut fx, &hb_frame(a, &wrong_cluster), Counter::HbBadCluster);
    let bad_kind = Heartbeat { kind: 9, ..ping_to(n, 1, 1) };
    assert_dropped(&mut fx, &hb_frame(a, &bad_kind), Counter::HbBadKind);
    // One flipped bit anywhere under the MAC, or in the MAC itself.
    for byte in [20usize, 40, 55, 56, 63, 64, 71, 72, 79] {
        let mut bad = good;
        bad[byte] ^= 0x01;
        assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, &bad), Counter::HbBadMac);
    }
    // Signed with another key.
    let other_key = efm_common::wire::ClusterKeyBytes { k0: 1, k1: 2 };
    let forged = ping_to(n, 1, 1).encode(&other_key);
    assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, &forged), Counter::HbBadMac);
    // Authenticated but claiming to be node 3 from node 2's address.
    let spoofed = Heartbeat { node_id: OTHER_NODE, ..ping_to(n, 1, 1) };
    assert_dropped(&mut fx, &hb_frame(a, &spoofed), Counter::HbNodeMismatch);
    // Still accepts a good one afterwards.
    let (action, _, _) = run_counted(&mut fx, &hb_frame(a, &ping_to(n, 1, 1)));
    assert_eq!(action, XDP_TX);
}

#[test]
fn replayed_or_older_sequence_is_dropped() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let a = Addrs::v4();
    assert_eq!(run(&mut fx, &hb_frame(a, &ping_to(n, 5, 10))).0, XDP_TX);
    assert_dropped(&mut fx, &hb_frame(a, &ping_to(n, 5, 10)), Counter::HbReplay);
    assert_dropped(&mut fx, &hb_frame(a, &ping_to(n, 5, 9)), Counter::HbReplay);
    assert_dropped(&mut fx, &hb_frame(a, &ping_to(n, 4, 11)), Counter::HbReplay);
    assert_eq!(slot(&fx, 0).ping_seq, 10);
    assert_eq!(run(&mut fx, &hb_frame(a, &ping_to(n, 5, 11))).0, XDP_TX);
    assert_eq!(slot(&fx, 0).ping_seq, 11);
}

#[test]
fn new_incarnation_is_accepted_with_a_lower_sequence() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let a = Addrs::v4();
    assert_eq!(run(&mut fx, &hb_frame(a, &ping_to(n, 5, 1000))).0, XDP_TX);
    let (action, _, moved) = run_counted(&mut fx, &hb_frame(a, &ping_to(n, 6, 1)));
    assert_eq!(action, XDP_TX);
    assert!(moved.contains(&(Counter::HbPingAccepted, 1)));
    let s = slot(&fx, 0);
    assert_eq!((s.ping_incarnation, s.ping_seq), (6, 1));
}

#[test]
fn pong_records_rtt_and_histogram() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let a = Addrs::v4();
    let sent = monotonic_ns() - 1_000_000; // our PING left 1 ms ago
    let pong = Heartbeat { kind: HB_KIND_PONG, send_ns: sent, incarnation: 77, seq: 5, epoch: 3, ..ping_to(n, 0, 0) };
    let before_hist = fx.dp.rtt_histogram(0).unwrap();
    let (action, _, moved) = run_counted(&mut fx, &hb_frame(a, &pong));
    let now = monotonic_ns();
    assert_eq!(action, XDP_DROP, "a PONG is consumed");
    assert_eq!(moved, vec![(Counter::HbPongAccepted, 1)]);
    let s = slot(&fx, 0);
    assert_eq!((s.pong_incarnation, s.pong_seq, s.pongs), (77, 5, 1));
    assert!(s.pong_rtt_ns >= 1_000_000 && s.pong_rtt_ns <= now - sent, "rtt {}", s.pong_rtt_ns);
    assert_eq!(s.ping_seq, 0, "a PONG does not touch the PING record");
    let hist = fx.dp.rtt_histogram(0).unwrap();
    let bucket = efm_common::maps::rtt_bucket(s.pong_rtt_ns) as usize;
    assert_eq!(hist[bucket], before_hist[bucket] + 1);
    assert_eq!(hist.iter().sum::<u64>(), before_hist.iter().sum::<u64>() + 1);
    // The same PONG again is a replay.
    assert_dropped(&mut fx, &hb_frame(a, &pong), Counter::HbReplay);
}

#[test]
fn every_truncation_length_is_handled_and_counted() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    for a in [Addrs::v4(), Addrs::v6(), Addrs::v4().with_vlan(7)] {
        let full = hb_frame(a, &ping_to(n, 1, 1_000_000));
        for len in 0..full.len() {
            let cut = &full[..len];
            if len < 14 {
                // The kernel itself refuses frames shorter than an Ethernet header.
                let err = fx.dp.test_run(cut).expect_err("frame shorter than Ethernet header");
                assert!(err.to_string().contains("BPF_PROG_RUN"), "{err}");
                continue;
            }
            let (action, _, moved) = run_counted(&mut fx, cut);
            assert_eq!(action, XDP_DROP, "{a:?} cut at {len}");
            assert_eq!(moved.len(), 1, "{a:?} cut at {len}: exactly one counter moved: {moved:?}");
            assert_eq!(moved[0], (Counter::MalformedDrop, 1), "{a:?} cut at {len}");
        }
        // Consistent headers around a short or long heartbeat payload.
        for plen in 0..HB_LEN {
            let payload = &ping_to(n, 2, 1).encode(&key())[..plen];
            assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, payload), Counter::HbTruncated);
        }
        let mut long = ping_to(n, 2, 1).encode(&key()).to_vec();
        long.push(0);
        assert_dropped(&mut fx, &udp_frame(a, HB_PORT, HB_PORT, &long), Counter::HbBadLength);
        assert_eq!(slot(&fx, 0).ping_seq, 0, "nothing truncated was ever accepted");
        let (action, _, _) = run_counted(&mut fx, &full);
        assert_eq!(action, XDP_TX, "the full frame still works");
        fx.dp.reset_slot(0).unwrap();
    }
}

fn syn(a: Addrs) -> Vec<u8> {
    tcp_frame(a, 40000, DB_PORT, 1000, 0, TCP_SYN, &[])
}

fn client_v4() -> Addrs {
    Addrs { src: STRANGER_V4.into(), dst: LOCAL_V4.into(), vlan: None }
}

#[test]
fn client_traffic_passes_while_not_fenced() {
    let mut fx = Fixture::new();
    let (action, _, moved) = run_counted(&mut fx, &syn(client_v4()));
    assert_eq!(action, XDP_PASS);
    assert_eq!(moved, vec![(Counter::ClientPass, 1)]);
    let vip = client_v4().with_dst(VIP_V4.into());
    assert_eq!(run_counted(&mut fx, &syn(vip)).2, vec![(Counter::ClientPass, 1)]);
}

#[test]
fn fenced_node_drops_client_traffic_to_service_addresses() {
    let mut fx = Fixture::new();
    fx.set_fence(FenceState { flags: FENCE_FENCED, ..Fixture::base_fence() });
    for a in [client_v4(), client_v4().with_dst(VIP_V4.into()), client_v4().with_vlan(3)] {
        let (action, _, moved) = run_counted(&mut fx, &syn(a));
        assert_eq!(action, XDP_DROP, "{a:?}");
        assert_eq!(moved, vec![(Counter::ClientFenced, 1)]);
        let udp = udp_frame(a, 40000, DB_PORT, b"x");
        let (action, _, moved) = run_counted(&mut fx, &udp);
        assert_eq!((action, moved), (XDP_DROP, vec![(Counter::ClientFenced, 1)]), "UDP {a:?}");
    }
    let v6 = Addrs { src: "fd00:efd::99".parse().unwrap(), dst: LOCAL_V6.into(), vlan: None };
    assert_eq!(run_counted(&mut fx, &syn(v6)).0, XDP_DROP);
    // Other ports, other destinations and non-IP frames are untouched.
    let ssh = tcp_frame(client_v4(), 40000, 22, 1, 0, TCP_SYN, &[]);
    assert_eq!(run_counted(&mut fx, &ssh).2, vec![(Counter::OtherPass, 1)]);
    let elsewhere = client_v4().with_dst(OTHER_V4.into());
    assert_eq!(run_counted(&mut fx, &syn(elsewhere)).2, vec![(Counter::OtherPass, 1)]);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (action, _, moved) = run_counted(&mut fx, &arp);
    assert_eq!((action, moved), (XDP_PASS, vec![(Counter::NonIpPass, 1)]));
    // Lifting the fence lets clients through again.
    fx.set_fence(Fixture::base_fence());
    assert_eq!(run_counted(&mut fx, &syn(client_v4())).0, XDP_PASS);
}

#[test]
fn exempt_source_passes_a_fence() {
    let mut fx = Fixture::new();
    fx.set_fence(FenceState { flags: FENCE_FENCED, ..Fixture::base_fence() });
    fx.dp.set_exempt(&[(IpAddr::from([198, 18, 7, 0]), 24)]).unwrap();
    let admin = client_v4().with_src(IpAddr::from([198, 18, 7, 9]));
    assert_eq!(run_counted(&mut fx, &syn(admin)).2, vec![(Counter::ClientExempt, 1)]);
    assert_eq!(run_counted(&mut fx, &syn(client_v4())).0, XDP_DROP, "others stay cut off");
    fx.dp.set_exempt(&[]).unwrap();
    assert_eq!(run_counted(&mut fx, &syn(admin)).0, XDP_DROP, "exemption removed");
}

fn assert_rst(out: &[u8], a: Addrs, seq: u32, ack: u32, flags: u8) {
    let p = parse_checked(out);
    assert_eq!((p.src, p.dst), (a.dst, a.src), "RST goes back to the client");
    assert_eq!(p.dst_mac, PEER_MAC);
    assert_eq!(p.proto, 6);
    assert_eq!(p.l4.len(), 20, "bare TCP header, payload removed");
    assert_eq!(&p.l4[0..2], &DB_PORT.to_be_bytes());
    assert_eq!(&p.l4[2..4], &40000u16.to_be_bytes());
    assert_eq!(u32::from_be_bytes(p.l4[4..8].try_into().unwrap()), seq, "seq");
    assert_eq!(u32::from_be_bytes(p.l4[8..12].try_into().unwrap()), ack, "ack");
    assert_eq!(p.l4[12], 5 << 4);
    assert_eq!(p.l4[13], flags, "flags");
}

#[test]
fn reset_mode_answers_with_a_valid_rst() {
    let mut fx = Fixture::new();
    fx.set_fence(FenceState { flags: FENCE_FENCED | FENCE_RESET, ..Fixture::base_fence() });
    for a in [
        client_v4(),
        client_v4().with_vlan(9),
        Addrs { src: "fd00:efd::99".parse().unwrap(), dst: LOCAL_V6.into(), vlan: None },
    ] {
        // SYN: RST|ACK acknowledging the SYN.
        let (action, out, moved) = run_counted(&mut fx, &syn(a));
        assert_eq!(action, XDP_TX, "{a:?}");
        assert_eq!(moved, vec![(Counter::ClientFenced, 1), (Counter::ClientReset, 1)]);
        assert_rst(&out, a, 0, 1001, TCP_RST | TCP_ACK);
        // Data segment with ACK: RST with seq = their ack.
        let data = tcp_frame(a, 40000, DB_PORT, 5000, 777, TCP_ACK | TCP_PSH, &[1u8; 100]);
        let (action, out, _) = run_counted(&mut fx, &data);
        assert_eq!(action, XDP_TX);
        assert_rst(&out, a, 777, 0, TCP_RST);
        // Never a RST to a RST.
        let rst = tcp_frame(a, 40000, DB_PORT, 1, 0, TCP_RST, &[]);
        let (action, _, moved) = run_counted(&mut fx, &rst);
        assert_eq!((action, moved), (XDP_DROP, vec![(Counter::ClientFenced, 1)]));
    }
    // UDP cannot be reset: dropped.
    let udp = udp_frame(client_v4(), 40000, DB_PORT, b"q");
    assert_eq!(run_counted(&mut fx, &udp).0, XDP_DROP);
}

/// An endorsing PING from node 2, echoing the receiver's nonce `n`.
fn endorse(n: u64, seq: u64, epoch: u64) -> Heartbeat {
    Heartbeat { flags: efm_common::wire::ROLE_STANDBY | FLAG_ENDORSE, epoch, ..ping_to(n, 1, seq) }
}

fn lease_fence(k: u32, timeout_ms: u64) -> FenceState {
    FenceState {
        flags: FENCE_LEASE_ENFORCED,
        lease_k: k,
        lease_timeout_ns: timeout_ms * 1_000_000,
        ..Fixture::base_fence()
    }
}

#[test]
fn lease_lapses_without_endorsements_and_is_renewed_by_them() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(lease_fence(1, 60_000));
    let (action, _, moved) = run_counted(&mut fx, &syn(client_v4()));
    assert_eq!((action, moved), (XDP_DROP, vec![(Counter::ClientLeaseLapsed, 1)]), "no endorsement yet");
    // An endorsement for another epoch does not count.
    let (_, _, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 1, 2)));
    assert!(!moved.iter().any(|(c, _)| *c == Counter::LeaseEndorsed));
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_DROP);
    // One endorsement for our epoch renews the lease (k = 1).
    let t0 = monotonic_ns();
    let (_, pong, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 2, 3)));
    assert!(moved.contains(&(Counter::LeaseEndorsed, 1)), "{moved:?}");
    let lease = fx.dp.lease().unwrap();
    assert!(lease.deadline_ns >= t0 + 60_000_000_000 && lease.deadline_ns <= monotonic_ns() + 60_000_000_000);
    assert_eq!(run_counted(&mut fx, &syn(client_v4())).2, vec![(Counter::ClientPass, 1)]);
    let p = parse_checked(&pong);
    let pong = Heartbeat::decode(&p.l4[8..], &key()).unwrap();
    assert_eq!(pong.flags & (FLAG_FENCED | FLAG_LEASE_LAPSED), 0, "PONG says the lease holds");
    // A PING without endorsement changes nothing: the lease runs its full time.
    let before = fx.dp.lease().unwrap();
    let (_, _, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &ping_to(n, 1, 3)));
    assert!(!moved.iter().any(|(c, _)| *c == Counter::LeaseEndorsed), "{moved:?}");
    assert_eq!(fx.dp.lease().unwrap().deadline_ns, before.deadline_ns);
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_PASS);
}

#[test]
fn pong_reports_a_lapsed_lease() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(lease_fence(1, 60_000));
    let (_, pong, _) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &ping_to(n, 1, 1)));
    let p = parse_checked(&pong);
    let pong = Heartbeat::decode(&p.l4[8..], &key()).unwrap();
    assert_ne!(pong.flags & FLAG_LEASE_LAPSED, 0, "PONG says the lease lapsed");
    assert_eq!(pong.flags & FLAG_FENCED, 0, "lapsed, not fenced");
}

#[test]
fn lease_expires_after_its_timeout() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(lease_fence(1, 50));
    run(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 1, 3)));
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_PASS, "fresh lease");
    std::thread::sleep(std::time::Duration::from_millis(120));
    let (action, _, moved) = run_counted(&mut fx, &syn(client_v4()));
    assert_eq!((action, moved), (XDP_DROP, vec![(Counter::ClientLeaseLapsed, 1)]));
    run(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 2, 3)));
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_PASS, "renewed");
}

#[test]
fn lease_needs_k_distinct_endorsers() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(lease_fence(2, 60_000));
    run(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 1, 3)));
    run(&mut fx, &hb_frame(Addrs::v6(), &endorse(n, 2, 3))); // same node over IPv6: still one voter
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_DROP, "one endorser is not a majority of 2");
    let other = Heartbeat { node_id: OTHER_NODE, ..endorse(n, 1, 3) };
    run(&mut fx, &hb_frame(Addrs::v4().with_src(OTHER_V4.into()), &other));
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_PASS, "two endorsers");
    let lease = fx.dp.lease().unwrap();
    let older = lease.endorse_ns[0].min(lease.endorse_ns[1]);
    assert_eq!(lease.deadline_ns, older + 60_000_000_000, "deadline from the 2nd newest endorsement");
}

#[test]
fn higher_epoch_fences_the_node_at_once() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let newer = Heartbeat { epoch: 5, ..ping_to(n, 1, 1) };
    let (action, out, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &newer));
    assert_eq!(action, XDP_TX);
    assert!(moved.contains(&(Counter::EpochFence, 1)), "{moved:?}");
    let p = parse_checked(&out);
    let pong = Heartbeat::decode(&p.l4[8..], &key()).unwrap();
    assert_ne!(pong.flags & FLAG_FENCED, 0, "PONG reports the node fenced");
    assert_eq!(pong.flags & efm_common::wire::ROLE_MASK, ROLE_PRIMARY);
    let (action, _, moved) = run_counted(&mut fx, &syn(client_v4()));
    assert_eq!((action, moved), (XDP_DROP, vec![(Counter::ClientEpochFenced, 1)]));
    assert_eq!(fx.dp.lease().unwrap().max_epoch_seen, 5);
    // A higher epoch in a PONG fences too.
    let pong5 = Heartbeat { kind: HB_KIND_PONG, epoch: 6, send_ns: monotonic_ns(), ..ping_to(n, 1, 1) };
    let (_, _, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &pong5));
    assert!(moved.contains(&(Counter::EpochFence, 1)), "{moved:?}");
    // Only adopting the epoch (an agent decision) lifts it.
    fx.set_fence(FenceState { epoch: 6, ..Fixture::base_fence() });
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_PASS);
}

#[test]
fn unrelated_traffic_passes_untouched() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(FenceState { flags: FENCE_FENCED | FENCE_RESET, ..Fixture::base_fence() });
    for f in [
        udp_frame(Addrs::v4(), 53, 53, b"dns"),
        tcp_frame(Addrs::v6(), 1, 443, 1, 0, TCP_SYN, &[]),
        tcp_frame(client_v4(), 1, 5433, 1, 0, TCP_SYN, &[]),
    ] {
        let (action, out, moved) = run_counted(&mut fx, &f);
        assert_eq!((action, moved), (XDP_PASS, vec![(Counter::OtherPass, 1)]));
        assert_eq!(out, f, "frame unchanged");
    }
    let pong_kind = {
        let mut b = ping_to(n, 1, 1).encode(&key());
        b[OFF_KIND] = HB_KIND_PONG;
        b
    };
    // A PONG with a MAC computed for a PING is a bad MAC, not a PONG.
    assert_dropped(&mut fx, &udp_frame(Addrs::v4(), HB_PORT, HB_PORT, &pong_kind), Counter::HbBadMac);
}

/// An ARP request for `target` from the peer.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&PEER_V4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

#[test]
fn arp_for_the_vip_is_not_answered_while_the_node_does_not_serve() {
    let mut fx = Fixture::new();
    let vip = arp_request(VIP_V4.octets());
    let own = arp_request(LOCAL_V4.octets());
    assert_eq!(run_counted(&mut fx, &vip).2, vec![(Counter::NonIpPass, 1)], "serving: the VIP is answered");
    fx.set_fence(lease_fence(1, 60_000)); // enforced lease, no endorsement yet: not serving
    let (action, _, moved) = run_counted(&mut fx, &vip);
    assert_eq!((action, moved), (XDP_DROP, vec![(Counter::VipArpDropped, 1)]));
    assert_eq!(run_counted(&mut fx, &own).0, XDP_PASS, "the node's own address is always answered");
    fx.set_fence(FenceState { flags: FENCE_FENCED, ..Fixture::base_fence() });
    assert_eq!(run_counted(&mut fx, &vip).0, XDP_DROP, "fenced: not answered");
    fx.set_fence(Fixture::base_fence());
    assert_eq!(run_counted(&mut fx, &vip).0, XDP_PASS, "serving again");
}

/// An IPv6 Neighbor Solicitation for `target` from the peer (to the solicited-node address).
fn neighbor_solicitation(target: std::net::Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let mut f = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x86, 0xdd]);
    // version 6, payload 32 bytes, next header ICMPv6, hop limit 255
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    f.extend_from_slice(&PEER_V6.octets());
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15]]);
    // type 135, code 0, checksum (not checked by XDP), reserved, target, source link-layer option
    f.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&t);
    f.extend_from_slice(&[1, 1]);
    f.extend_from_slice(&PEER_MAC);
    f
}

#[test]
fn neighbor_solicitation_for_an_ipv6_vip_is_not_answered_while_the_node_does_not_serve() {
    let mut fx = Fixture::new();
    let vip6 = std::net::Ipv6Addr::new(0xfd00, 0xefd, 0, 0, 0, 0, 0, 0x100);
    fx.dp.set_service_addrs(&[LOCAL_V4.into(), LOCAL_V6.into()], &[VIP_V4.into(), vip6.into()]).unwrap();
    let vip = neighbor_solicitation(vip6);
    let own = neighbor_solicitation(LOCAL_V6);
    assert_eq!(run_counted(&mut fx, &vip).2, vec![(Counter::OtherPass, 1)], "serving: the VIP is answered");
    fx.set_fence(lease_fence(1, 60_000)); // enforced lease, no endorsement yet: not serving
    let (action, _, moved) = run_counted(&mut fx, &vip);
    assert_eq!((action, moved), (XDP_DROP, vec![(Counter::VipArpDropped, 1)]));
    assert_eq!(run_counted(&mut fx, &own).0, XDP_PASS, "the node's own address is always answered");
    fx.set_fence(FenceState { flags: FENCE_FENCED, ..Fixture::base_fence() });
    assert_eq!(run_counted(&mut fx, &vip).0, XDP_DROP, "fenced: not answered");
    fx.set_fence(Fixture::base_fence());
    assert_eq!(run_counted(&mut fx, &vip).0, XDP_PASS, "serving again");
}

// ---------------------------------------------------------------------------------------------
// Replay protection across datapath generations (the echoed nonce).

/// The counters a heartbeat echoing a stale nonce moves: a replay, and more precisely a stale
/// nonce (plus `extra`, e.g. the PONG answering it).
fn stale(extra: &[(Counter, u64)]) -> Vec<(Counter, u64)> {
    let mut v: Vec<(Counter, u64)> =
        [(Counter::HbReplay, 1), (Counter::HbStaleNonce, 1)].into_iter().chain(extra.iter().copied()).collect();
    v.sort_by_key(|(c, _)| *c as u32);
    v
}

#[test]
fn ping_echoing_a_stale_nonce_changes_nothing_counts_as_replay_and_is_answered() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    assert_ne!(n, 0, "a datapath's nonce is never 0");
    let a = Addrs::v4();
    assert_eq!(run(&mut fx, &hb_frame(a, &ping_to(n, 5, 10))).0, XDP_TX);
    let before = (slot(&fx, 0), fx.dp.lease().unwrap());
    // A newer sequence and a higher epoch, but echoing no nonce, another one, or one bit off.
    for echo in [0, n ^ 1, n.rotate_left(17), u64::MAX] {
        let hb = Heartbeat { epoch: 9, ..ping_to(echo, 5, 11) };
        let (action, out, moved) = run_counted(&mut fx, &hb_frame(a, &hb));
        assert_eq!(action, XDP_TX, "echo {echo:#x}: answered, so the sender can learn our nonce");
        assert_eq!(moved, stale(&[(Counter::HbPongSent, 1)]), "echo {echo:#x}");
        assert_eq!((slot(&fx, 0), fx.dp.lease().unwrap()), before, "echo {echo:#x}: slot and lease unchanged");
        // The PONG teaches the current nonce and echoes the sender's.
        assert_pong(&out, &hb, &Fixture::base_fence(), n, a);
    }
    assert_eq!(fx.dp.lease().unwrap().max_epoch_seen, 3, "a stale heartbeat (epoch 9) raises no epoch");
    // The same PING echoing the current nonce is accepted.
    let (action, _, moved) = run_counted(&mut fx, &hb_frame(a, &ping_to(n, 5, 11)));
    assert_eq!(action, XDP_TX);
    assert_eq!(moved, vec![(Counter::HbPingAccepted, 1), (Counter::HbPongSent, 1)]);
    assert_eq!(slot(&fx, 0).ping_seq, 11);
}

#[test]
fn endorsing_ping_echoing_a_stale_nonce_does_not_extend_the_lease() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    fx.set_fence(lease_fence(1, 60_000));
    // No lease yet: a stale endorsement does not grant one.
    let (action, _, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &endorse(n ^ 0xff, 1, 3)));
    assert_eq!((action, moved), (XDP_TX, stale(&[(Counter::HbPongSent, 1)])));
    assert_eq!(fx.dp.lease().unwrap().deadline_ns, 0);
    assert_eq!(run(&mut fx, &syn(client_v4())).0, XDP_DROP, "still no lease");
    // A current endorsement grants one; a later stale one (newer sequence) does not move it.
    run(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 2, 3)));
    let granted = fx.dp.lease().unwrap();
    assert_ne!(granted.deadline_ns, 0);
    std::thread::sleep(std::time::Duration::from_millis(5));
    for echo in [0, n ^ 0xff] {
        let (_, _, moved) = run_counted(&mut fx, &hb_frame(Addrs::v4(), &endorse(echo, 3, 3)));
        assert!(!moved.contains(&(Counter::LeaseEndorsed, 1)), "{moved:?}");
        assert_eq!(fx.dp.lease().unwrap(), granted, "lease deadline and endorsement times unchanged");
    }
    // A current one does extend it.
    run(&mut fx, &hb_frame(Addrs::v4(), &endorse(n, 3, 3)));
    assert!(fx.dp.lease().unwrap().deadline_ns > granted.deadline_ns);
}

#[test]
fn pong_echoing_a_wrong_nonce_is_rejected() {
    let mut fx = Fixture::new();
    let n = fx.dp.nonce();
    let a = Addrs::v4();
    let pong = |echo: u64, seq: u64| Heartbeat {
        kind: HB_KIND_PONG,
        epoch: 7,
        send_ns: monotonic_ns(),
        ..ping_to(echo, 1, seq)
    };
    for echo in [0, n ^ 1, n.wrapping_add(1)] {
        let before = (slot(&fx, 0), fx.dp.lease().unwrap(), fx.dp.rtt_histogram(0).unwrap());
        let (action, _, moved) = run_counted(&mut fx, &hb_frame(a, &pong(echo, 5)));
        assert_eq!((action, moved), (XDP_DROP, stale(&[])), "echo {echo:#x}");
        assert_eq!(
            (slot(&fx, 0), fx.dp.lease().unwrap(), fx.dp.rtt_histogram(0).unwrap()),
            before,
            "echo {echo:#x}: nothing recorded"
        );
    }
    assert_eq!(slot(&fx, 0).peer_nonce, 0, "no peer nonce learned from a rejected PONG");
    // Echoing our nonce: accepted, and the peer's nonce is learned from its sender nonce.
    let (action, _, moved) = run_counted(&mut fx, &hb_frame(a, &pong(n, 5)));
    assert_eq!(action, XDP_DROP);
    assert!(moved.contains(&(Counter::HbPongAccepted, 1)), "{moved:?}");
    let s = slot(&fx, 0);
    assert_eq!((s.pong_seq, s.peer_nonce), (5, PEER_NONCE));
}

/// What one node's kernel accepts from frames captured off the wire while an earlier generation
/// of its maps lived.
#[test]
fn frames_captured_before_the_maps_were_recreated_are_rejected() {
    require_root();
    let pins = PinDir::new("gen");
    let mut dp = efm_agent::datapath::Datapath::load(&pins.0).expect("load");
    configure(&mut dp);
    dp.set_fence(&lease_fence(1, 60_000)).unwrap();
    let n1 = dp.nonce();
    let a = Addrs::v4();
    // Generation 1: a peer's PINGs, endorsements and PONGs echoing n1, all accepted; and some
    // captured in flight that never arrived (newer sequence numbers).
    let delivered: Vec<Vec<u8>> = (1..=5).map(|s| hb_frame(a, &endorse(n1, s, 3))).collect();
    for f in &delivered {
        assert_eq!(dp.test_run(f).unwrap().action, XDP_TX);
    }
    let pong1 = hb_frame(a, &Heartbeat { kind: HB_KIND_PONG, send_ns: monotonic_ns(), ..ping_to(n1, 1, 1) });
    assert_eq!(dp.test_run(&pong1).unwrap().action, XDP_DROP);
    assert_eq!(dp.slot(0).unwrap().pongs, 1);
    let undelivered: Vec<Vec<u8>> = (6..=10).map(|s| hb_frame(a, &endorse(n1, s, 3))).collect();
    let undelivered_pong = hb_frame(a, &Heartbeat { kind: HB_KIND_PONG, send_ns: monotonic_ns(), ..ping_to(n1, 1, 2) });
    assert_ne!(dp.lease().unwrap().deadline_ns, 0, "generation 1 granted a lease");

    // The agent re-opens the pinned maps (restart, crash): same generation, same nonce; what was
    // delivered is an old sequence.
    drop(dp);
    let mut dp = efm_agent::datapath::Datapath::load(&pins.0).expect("re-open");
    assert!(dp.reused_maps());
    assert_eq!(dp.nonce(), n1, "re-opening the pinned maps keeps the nonce");
    configure(&mut dp);
    assert_eq!(dp.config().unwrap().nonce, n1, "set_config keeps the generation's nonce");
    let c0 = dp.counters().unwrap();
    let s0 = dp.slot(0).unwrap();
    for f in &delivered {
        assert_eq!(dp.test_run(f).unwrap().action, XDP_DROP, "a delivered frame is a replay");
    }
    assert_eq!(dp.slot(0).unwrap(), s0);
    assert_eq!(dp.counters().unwrap().get(Counter::HbReplay) - c0.get(Counter::HbReplay), 5);

    // Orderly stop removes the maps; the next start creates them anew with a fresh nonce.
    dp.detach().expect("detach");
    let mut dp = efm_agent::datapath::Datapath::load(&pins.0).expect("recreate");
    assert!(!dp.reused_maps());
    let n2 = dp.nonce();
    assert!(n2 != 0 && n2 != n1, "a new generation has a new nonce: {n1:#x} then {n2:#x}");
    configure(&mut dp);
    dp.set_fence(&lease_fence(1, 60_000)).unwrap();
    let empty = dp.slot(0).unwrap();
    assert_eq!(empty, PeerSlot::default());
    for f in delivered.iter().chain(&undelivered) {
        let before = dp.counters().unwrap();
        let r = dp.test_run(f).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!(r.action, XDP_TX, "answered (the PONG carries the new nonce)");
        let p = parse_checked(&r.frame);
        let pong = Heartbeat::decode(&p.l4[8..], &key()).unwrap();
        assert_eq!((pong.sender_nonce, pong.echo_nonce), (n2, PEER_NONCE));
        assert_eq!(after.get(Counter::HbReplay) - before.get(Counter::HbReplay), 1);
        assert_eq!(after.get(Counter::HbStaleNonce) - before.get(Counter::HbStaleNonce), 1);
        assert_eq!(after.get(Counter::HbPingAccepted), before.get(Counter::HbPingAccepted));
        assert_eq!(after.get(Counter::LeaseEndorsed), before.get(Counter::LeaseEndorsed));
    }
    for f in [&pong1, &undelivered_pong] {
        assert_eq!(dp.test_run(f).unwrap().action, XDP_DROP);
    }
    assert_eq!(dp.slot(0).unwrap(), empty, "no captured heartbeat reached the new slots");
    let lease = dp.lease().unwrap();
    assert_eq!((lease.deadline_ns, lease.endorse_ns[0]), (0, 0), "no captured endorsement grants a lease");
    let (action, _) = {
        let r = dp.test_run(&syn(client_v4())).unwrap();
        (r.action, r.frame)
    };
    assert_eq!(action, XDP_DROP, "clients stay cut off: the enforced lease was never granted");
    // The peer, having learned n2 from those PONGs, is accepted again.
    assert_eq!(dp.test_run(&hb_frame(a, &endorse(n2, 1, 3))).unwrap().action, XDP_TX);
    assert_ne!(dp.lease().unwrap().deadline_ns, 0);
    dp.detach().expect("detach");
}

/// The nonce is kept only if every map it protects is re-opened: a slot map (or lease map)
/// created anew next to an old configuration map starts a new generation.
#[test]
fn a_partly_recreated_datapath_gets_a_fresh_nonce() {
    require_root();
    let pins = PinDir::new("part");
    let dp = efm_agent::datapath::Datapath::load(&pins.0).expect("load");
    let n1 = dp.nonce();
    drop(dp);
    let dp = efm_agent::datapath::Datapath::load(&pins.0).expect("re-open");
    assert_eq!(dp.nonce(), n1, "all maps re-opened: nonce kept");
    drop(dp);
    for map in [efm_common::maps::MAP_SLOTS, efm_common::maps::MAP_LEASE, efm_common::maps::MAP_CONFIG] {
        let before = efm_agent::datapath::Datapath::load(&pins.0).expect("re-open").nonce();
        std::fs::remove_file(pins.0.join(map)).expect("removing one pin");
        let dp = efm_agent::datapath::Datapath::load(&pins.0).expect("re-open with one map missing");
        assert!(dp.nonce() != 0 && dp.nonce() != before, "{map} recreated: fresh nonce");
        assert_eq!(dp.config().unwrap().nonce, dp.nonce(), "{map} recreated: the kernel sees the fresh nonce");
    }
}
