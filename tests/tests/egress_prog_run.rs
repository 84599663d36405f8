//! The egress fence (TC program) run on crafted frames with `BPF_PROG_RUN`, and the member rule
//! of the shared serving function on both directions (XDP ingress and TC egress), in every fence
//! state. Needs root; runs single-threaded (`cargo xtask test`).

use std::net::IpAddr;

use efm_common::{
    maps::{Counter, FenceState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_MEMBERS_EXEMPT, FENCE_RESET},
    wire::Heartbeat,
};
use efm_tests::*;

/// `TCX_NEXT` (−1) as `BPF_PROG_RUN` reports it: the segment goes on.
const TC_NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
const TC_SHOT: u32 = 2;
const CLIENT_PORT: u16 = 40000;

/// Runs a frame through the egress program; returns the verdict, the frame as it leaves and the
/// counters that moved.
fn egress(fx: &mut Fixture, frame: &[u8]) -> (u32, Vec<u8>, Vec<(Counter, u64)>) {
    let before = fx.dp.counters().unwrap();
    let r = fx.dp.test_run_egress(frame, 1).expect("BPF_PROG_RUN of the egress program");
    let moved = fx.dp.counters().unwrap().moved_since(&before);
    (r.action, r.frame, moved)
}

/// Runs a frame through the XDP program; returns the verdict and the counters that moved.
fn ingress(fx: &mut Fixture, frame: &[u8]) -> (u32, Vec<(Counter, u64)>) {
    let before = fx.dp.counters().unwrap();
    let r = fx.dp.test_run(frame).expect("BPF_PROG_RUN of the XDP program");
    let moved = fx.dp.counters().unwrap().moved_since(&before);
    (r.action, moved)
}

/// The server (a service address, port `DB_PORT`) toward a client.
fn server_to(client: IpAddr) -> Addrs {
    let src: IpAddr = if client.is_ipv4() { LOCAL_V4.into() } else { LOCAL_V6.into() };
    Addrs { src, dst: client, vlan: None }
}

fn stranger() -> IpAddr {
    STRANGER_V4.into()
}

/// A reply segment from the database: ACK|PSH with a result in it.
fn reply(a: Addrs) -> Vec<u8> {
    tcp_frame(
        a,
        DB_PORT,
        CLIENT_PORT,
        0x1234_5678,
        0x9abc_def0,
        TCP_ACK | TCP_PSH,
        b"C\0\0\0\x0dINSERT 0 1\0Z\0\0\0\x05I",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Serving,
    /// The explicit flag only (members fenced: the agent did not ask for their exemption).
    Fenced,
    /// The explicit flag with `FENCE_MEMBERS_EXEMPT`: a primary handing over (members exempt).
    HandOver,
    /// A hand-over whose enforced lease lapsed (members fenced).
    HandOverLapsed,
    /// A higher epoch was seen.
    Epoch,
    /// Enforced lease with no endorsement: lapsed.
    Lapsed,
    /// Enforced lease with k = 0: fails closed.
    LapsedK0,
    /// Explicit flag and a higher epoch.
    FencedAndEpoch,
}

const ALL_STATES: [State; 8] = [
    State::Serving,
    State::Fenced,
    State::HandOver,
    State::HandOverLapsed,
    State::Epoch,
    State::Lapsed,
    State::LapsedK0,
    State::FencedAndEpoch,
];

/// Puts the fixture into `state`, with or without reset mode. The epoch states need the XDP
/// program to have seen a heartbeat with a higher epoch; that is done once per fixture (the
/// kernel's `max_epoch_seen` only rises), and the other states hold epoch 5 so it does not count.
fn enter(fx: &mut Fixture, state: State, reset: bool) {
    let lease = fx.dp.lease().unwrap();
    if lease.max_epoch_seen < 5 {
        let newer = Heartbeat { epoch: 5, ..fx.ping(1, 1) };
        let r = fx.dp.test_run(&hb_frame(Addrs::v4(), &newer)).unwrap();
        assert_eq!(r.action, XDP_TX, "the PING raising the epoch is accepted");
        assert_eq!(fx.dp.lease().unwrap().max_epoch_seen, 5);
    }
    let rst = if reset { FENCE_RESET } else { 0 };
    let base = FenceState { epoch: 5, flags: rst, ..Fixture::base_fence() };
    let f = match state {
        State::Serving => base,
        State::Fenced => FenceState { flags: rst | FENCE_FENCED, ..base },
        State::HandOver => FenceState { flags: rst | FENCE_FENCED | FENCE_MEMBERS_EXEMPT, ..base },
        State::HandOverLapsed => FenceState {
            flags: rst | FENCE_FENCED | FENCE_MEMBERS_EXEMPT | FENCE_LEASE_ENFORCED,
            lease_k: 1,
            lease_timeout_ns: 1_000_000,
            ..base
        },
        State::Epoch => FenceState { epoch: 3, ..base },
        State::Lapsed => {
            FenceState { flags: rst | FENCE_LEASE_ENFORCED, lease_k: 1, lease_timeout_ns: 1_000_000, ..base }
        }
        State::LapsedK0 => FenceState { flags: rst | FENCE_LEASE_ENFORCED, lease_k: 0, ..base },
        State::FencedAndEpoch => FenceState { flags: rst | FENCE_FENCED, epoch: 3, ..base },
    };
    fx.set_fence(f);
}

/// Asserts `out` is `input` turned into a RST|ACK: same addresses, ports, seq, ack and payload,
/// and valid checksums (checked by the tests' own implementation).
fn assert_converted(input: &[u8], out: &[u8]) {
    assert_eq!(input.len(), out.len(), "the frame keeps its length");
    let (i, o) = (parse_checked(input), parse_checked(out));
    assert_eq!((o.src, o.dst, o.vlan), (i.src, i.dst, i.vlan), "addresses untouched");
    assert_eq!(o.l4[0..12], i.l4[0..12], "ports, seq and ack untouched");
    assert_eq!(o.l4[12], i.l4[12], "data offset untouched");
    assert_eq!(o.l4[13], TCP_RST | (i.l4[13] & TCP_ACK), "RST (+ ACK when it had one), nothing else");
    assert_eq!(o.l4[20..], i.l4[20..], "payload kept (a RST's payload is never delivered)");
}

#[test]
fn serving_node_lets_its_replies_leave_unchanged() {
    let mut fx = Fixture::new();
    enter(&mut fx, State::Serving, true);
    for a in [server_to(stranger()), server_to(stranger()).with_vlan(7), server_to("fd00:efd::99".parse().unwrap())] {
        let f = reply(a);
        let (action, out, moved) = egress(&mut fx, &f);
        assert_eq!((action, moved), (TC_NEXT, vec![(Counter::EgressPass, 1)]), "{a:?}");
        assert_eq!(out, f, "unchanged");
    }
}

#[test]
fn replies_become_rsts_in_every_non_serving_state() {
    let mut fx = Fixture::new();
    let vip = Addrs { src: VIP_V4.into(), dst: stranger(), vlan: None };
    let v6 = server_to("fd00:efd::99".parse().unwrap());
    for state in [State::Fenced, State::Epoch, State::Lapsed, State::LapsedK0, State::FencedAndEpoch] {
        enter(&mut fx, state, true);
        for a in [server_to(stranger()), server_to(stranger()).with_vlan(4094), vip, v6, v6.with_vlan(3)] {
            let f = reply(a);
            let (action, out, moved) = egress(&mut fx, &f);
            assert_eq!((action, &moved), (TC_NEXT, &vec![(Counter::EgressReset, 1)]), "{state:?} {a:?}");
            assert_converted(&f, &out);
            // A FIN and a pure ACK too; a SYN-ACK (the server accepting) becomes RST|ACK.
            for flags in [TCP_ACK | TCP_FIN, TCP_ACK, TCP_SYN | TCP_ACK] {
                let f = tcp_frame(a, DB_PORT, CLIENT_PORT, 77, 1001, flags, &[]);
                let (action, out, _) = egress(&mut fx, &f);
                assert_eq!(action, TC_NEXT);
                assert_converted(&f, &out);
            }
        }
    }
}

#[test]
fn rsts_always_leave() {
    let mut fx = Fixture::new();
    for state in ALL_STATES {
        for reset in [true, false] {
            enter(&mut fx, state, reset);
            let f = tcp_frame(server_to(stranger()), DB_PORT, CLIENT_PORT, 5, 0, TCP_RST, &[]);
            let (action, out, moved) = egress(&mut fx, &f);
            assert_eq!((action, moved), (TC_NEXT, vec![(Counter::EgressPass, 1)]), "{state:?} reset={reset}");
            assert_eq!(out, f);
            let f = tcp_frame(server_to(stranger()), DB_PORT, CLIENT_PORT, 5, 9, TCP_RST | TCP_ACK, &[]);
            assert_eq!(egress(&mut fx, &f).0, TC_NEXT);
        }
    }
}

#[test]
fn drop_mode_drops_replies_and_udp_is_always_dropped() {
    let mut fx = Fixture::new();
    for state in ALL_STATES.into_iter().filter(|s| *s != State::Serving) {
        enter(&mut fx, state, false);
        for a in [server_to(stranger()), server_to("fd00:efd::99".parse().unwrap())] {
            let (action, _, moved) = egress(&mut fx, &reply(a));
            assert_eq!((action, moved), (TC_SHOT, vec![(Counter::EgressDrop, 1)]), "{state:?} {a:?}");
        }
        for reset in [false, true] {
            enter(&mut fx, state, reset);
            let udp = udp_frame(server_to(stranger()), DB_PORT, CLIENT_PORT, b"result");
            let (action, _, moved) = egress(&mut fx, &udp);
            assert_eq!((action, moved), (TC_SHOT, vec![(Counter::EgressDrop, 1)]), "UDP {state:?} reset={reset}");
        }
    }
    enter(&mut fx, State::Serving, false);
    let udp = udp_frame(server_to(stranger()), DB_PORT, CLIENT_PORT, b"result");
    assert_eq!(egress(&mut fx, &udp).0, TC_NEXT);
}

#[test]
fn other_sources_and_ports_are_never_touched() {
    let mut fx = Fixture::new();
    enter(&mut fx, State::Fenced, true);
    let frames = [
        // Not a service address.
        tcp_frame(
            Addrs { src: OTHER_V4.into(), dst: stranger(), vlan: None },
            DB_PORT,
            CLIENT_PORT,
            1,
            2,
            TCP_ACK,
            b"x",
        ),
        // A service address, another port (ssh), and the database port as destination (the
        // node as a client of another database).
        tcp_frame(server_to(stranger()), 22, CLIENT_PORT, 1, 2, TCP_ACK, b"x"),
        tcp_frame(server_to(stranger()), CLIENT_PORT, DB_PORT, 1, 2, TCP_ACK | TCP_PSH, b"x"),
        udp_frame(server_to(stranger()), 53, CLIENT_PORT, b"x"),
        // Heartbeats.
        hb_frame(Addrs { src: LOCAL_V4.into(), dst: PEER_V4.into(), vlan: None }, &ping(1, 1)),
    ];
    for f in frames {
        let (action, out, moved) = egress(&mut fx, &f);
        assert_eq!((action, moved), (TC_NEXT, vec![]));
        assert_eq!(out, f);
    }
    // Non-IP (ARP) passes.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&LOCAL_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(egress(&mut fx, &arp).0, TC_NEXT);
}

/// Inserts 4 bytes of IPv4 options (NOPs) into an untagged IPv4 frame built by `tcp_frame`.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..14 + 20].to_vec();
    out.extend_from_slice(&[1, 1, 1, 1]);
    out.extend_from_slice(&f[14 + 20..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24] = 0;
    out[25] = 0;
    let c = inet_checksum(&[&out[14..14 + 24]]);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}

#[test]
fn ipv4_options_and_fragments() {
    let mut fx = Fixture::new();
    enter(&mut fx, State::Epoch, true);
    let plain = reply(server_to(stranger()));
    let f = with_ip_options(&plain);
    let (action, out, moved) = egress(&mut fx, &f);
    assert_eq!((action, moved), (TC_NEXT, vec![(Counter::EgressReset, 1)]));
    // The TCP segment (after the 24-byte IP header) must be the same RST as without options.
    let (_, out_plain, _) = egress(&mut fx, &plain);
    assert_eq!(out[14 + 24..], out_plain[14 + 20..], "same TCP segment, valid checksum");
    assert_converted(&plain, &out_plain);

    // A non-first fragment from a service address: ports unseen, dropped while not serving.
    let mut frag = plain.clone();
    frag[20] = 0x00;
    frag[21] = 0x10; // offset 16 * 8 bytes
    frag[24] = 0;
    frag[25] = 0;
    let c = inet_checksum(&[&frag[14..34]]);
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    let (action, _, moved) = egress(&mut fx, &frag);
    assert_eq!((action, moved), (TC_SHOT, vec![(Counter::EgressDrop, 1)]), "when in doubt, fence");
    enter(&mut fx, State::Serving, true);
    assert_eq!(egress(&mut fx, &frag).0, TC_NEXT, "serving: fragments pass");
    // A truncated TCP header from a service address: dropped while not serving.
    enter(&mut fx, State::Fenced, true);
    // Ethernet, IPv4 and one byte of the TCP header.
    let mut cut = plain[..=14 + 20].to_vec();
    cut[16..18].copy_from_slice(&21u16.to_be_bytes());
    assert_eq!(egress(&mut fx, &cut).0, TC_SHOT);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut fx = Fixture::new();
    enter(&mut fx, State::Lapsed, true);
    let a = server_to("fd00:efd::99".parse().unwrap());
    let plain = reply(a);
    // Insert a destination-options header (8 bytes: next = TCP, len 0, PadN).
    let mut f = plain[..14 + 40].to_vec();
    f[14 + 6] = 60;
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&plain[14 + 40..]);
    let (action, out, moved) = egress(&mut fx, &f);
    assert_eq!((action, moved), (TC_NEXT, vec![(Counter::EgressReset, 1)]));
    let (_, out_plain, _) = egress(&mut fx, &plain);
    assert_eq!(out[14 + 48..], out_plain[14 + 40..], "same RST segment behind the extension header");
    assert_converted(&plain, &out_plain);
    // An unknown extension (no next header, 59): ports unseen, dropped.
    let mut nn = plain[..14 + 40].to_vec();
    nn[14 + 6] = 59;
    nn.extend_from_slice(&plain[14 + 40..]);
    assert_eq!(egress(&mut fx, &nn).0, TC_SHOT);
}

/// A fixture with the always-exempt admin prefix 198.18.7.0/24 and node 2 (v4 and v6) as members.
fn exempt_fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.dp
        .set_exempt_with_members(&[(IpAddr::from([198, 18, 7, 0]), 24)], &[PEER_V4.into(), PEER_V6.into()])
        .expect("exempt prefixes and members");
    fx
}

#[test]
fn member_rule_in_every_state_both_directions() {
    let mut fx = exempt_fixture();
    let admin: IpAddr = IpAddr::from([198, 18, 7, 9]);
    let member: IpAddr = PEER_V4.into();
    let member6: IpAddr = PEER_V6.into();
    for state in ALL_STATES {
        enter(&mut fx, state, true);
        let serving = state == State::Serving;
        let members_exempt = state == State::HandOver;
        for (who, exempt, is_member) in [
            (admin, true, false),
            (member, members_exempt, true),
            (member6, members_exempt, true),
            (stranger(), false, false),
        ] {
            // Egress: a reply toward `who`. A member that is not exempt is dropped, never reset
            // (a reset walreceiver would wait 5 s before streaming again).
            let f = reply(server_to(who));
            let (action, out, moved) = egress(&mut fx, &f);
            let want = if serving {
                (TC_NEXT, vec![(Counter::EgressPass, 1)])
            } else if exempt {
                (TC_NEXT, vec![(Counter::EgressExempt, 1)])
            } else if is_member {
                (TC_SHOT, vec![(Counter::EgressDrop, 1)])
            } else {
                (TC_NEXT, vec![(Counter::EgressReset, 1)])
            };
            assert_eq!((action, moved), want, "egress {state:?} to {who}");
            if serving || exempt {
                assert_eq!(out, f, "{state:?} {who}: unchanged");
            } else if !is_member {
                assert_converted(&f, &out);
            }
            // Ingress: a SYN from `who` to the database port.
            let dst: IpAddr = if who.is_ipv4() { LOCAL_V4.into() } else { LOCAL_V6.into() };
            let syn = tcp_frame(Addrs { src: who, dst, vlan: None }, CLIENT_PORT, DB_PORT, 1000, 0, TCP_SYN, &[]);
            let (action, moved) = ingress(&mut fx, &syn);
            if serving {
                assert_eq!((action, moved), (XDP_PASS, vec![(Counter::ClientPass, 1)]), "ingress {state:?} from {who}");
            } else if exempt {
                assert_eq!(
                    (action, moved),
                    (XDP_PASS, vec![(Counter::ClientExempt, 1)]),
                    "ingress {state:?} from {who}"
                );
            } else if is_member {
                assert_eq!(action, XDP_DROP, "ingress {state:?} from member {who}: dropped, not reset");
                assert!(!moved.contains(&(Counter::ClientReset, 1)), "ingress {state:?} from {who}: {moved:?}");
            } else {
                assert_eq!(action, XDP_TX, "ingress {state:?} from {who}: answered with a RST");
                assert!(moved.contains(&(Counter::ClientReset, 1)), "ingress {state:?} from {who}: {moved:?}");
            }
        }
    }
}

#[test]
fn a_member_inside_an_always_exempt_prefix_stays_always_exempt() {
    let mut fx = Fixture::new();
    // The member 198.18.0.2 lies in the always-exempt 198.18.0.0/24: it must not get a /32 entry
    // of its own, which the trie's longest match would prefer.
    fx.dp.set_exempt_with_members(&[(IpAddr::from([198, 18, 0, 0]), 24)], &[PEER_V4.into(), PEER_V6.into()]).unwrap();
    enter(&mut fx, State::Epoch, true);
    let (action, _, moved) = egress(&mut fx, &reply(server_to(PEER_V4.into())));
    assert_eq!((action, moved), (TC_NEXT, vec![(Counter::EgressExempt, 1)]), "covered member: always exempt");
    let (action, _, moved) = egress(&mut fx, &reply(server_to(PEER_V6.into())));
    assert_eq!(
        (action, moved),
        (TC_SHOT, vec![(Counter::EgressDrop, 1)]),
        "uncovered member: fenced (dropped) after the epoch moved"
    );
    // Replacing the set removes what is no longer listed.
    fx.dp.set_exempt(&[]).unwrap();
    let (_, _, moved) = egress(&mut fx, &reply(server_to(PEER_V4.into())));
    assert_eq!(moved, vec![(Counter::EgressReset, 1)]);
}
