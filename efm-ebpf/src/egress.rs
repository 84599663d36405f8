//! The egress fence: a TC program (TCX egress) on the interfaces the XDP program is attached to,
//! reading the same maps. Whenever the node does not serve (`efm_common::serving`), no segment
//! from the database port on a service address leaves toward a client: a TCP segment becomes a
//! RST toward the client (reset mode) or is dropped; a UDP datagram is dropped. A RST leaves as it
//! is (the agent's session killing produces RSTs that must reach the clients). Destinations that
//! are exempt (always, or members while members are exempt) pass. A packet from a service address
//! whose ports cannot be seen (a non-first fragment, an undecodable IPv6 extension chain, a
//! truncated header) is dropped while the node does not serve: when in doubt, fence.
//!
//! The RST keeps the segment's sequence and acknowledgement numbers (so the client accepts it:
//! its sequence number is the one the client expects next), sets RST (and ACK when the segment
//! had it), clears SYN/FIN/PSH/URG/ECE/CWR, and keeps the payload (a RST's payload is never
//! delivered to an application). The TCP checksum is fixed with `bpf_l4_csum_replace`, which is
//! right for both a `CHECKSUM_PARTIAL` skb (locally generated TCP) and a full checksum.
//!
//! Headers are read from the linear data directly, and with `bpf_skb_load_bytes` when they lie
//! beyond it, so headers in non-linear skb data are seen too.

use aya_ebpf::{cty::c_void, helpers::bpf_skb_load_bytes, macros::classifier, programs::TcContext};
use efm_common::{
    maps::{Counter, PeerAddr, FENCE_RESET},
    serving::{exempt_applies, fence_reasons, EXEMPT_MEMBER},
};

use crate::{
    be16, count, exempt_kind, lease_clock, EFM_CONFIG, EFM_FENCE, EFM_LEASE, EFM_SERVICE, ETH_HLEN, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_V6_EXT, TCP_ACK, TCP_RST,
};

/// TCX: continue with the next program (or pass when there is none).
const TCX_NEXT: i32 = -1;
/// `TC_ACT_SHOT` / `TCX_DROP`.
const TC_ACT_SHOT: i32 = 2;
/// `bpf_l4_csum_replace` flags: a 2-byte field.
const CSUM_SIZE_2: u64 = 2;

#[classifier]
pub fn efm_tc_egress(ctx: TcContext) -> i32 {
    egress(&ctx)
}

/// Where the addresses and the transport header are.
struct Egress {
    src: PeerAddr,
    dst: PeerAddr,
    /// Transport protocol and header offset; `None` when the ports cannot be seen.
    l4: Option<(u8, usize)>,
}

#[inline(always)]
fn egress(ctx: &TcContext) -> i32 {
    let Some(eth) = read::<ETH_HLEN>(ctx, 0) else { return TCX_NEXT };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3off = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = read::<4>(ctx, ETH_HLEN) else { return TCX_NEXT };
        ethertype = be16([tag[2], tag[3]]);
        l3off = ETH_HLEN + 4;
    }
    let parsed = match ethertype {
        ETH_P_IP => parse_v4(ctx, l3off),
        ETH_P_IPV6 => parse_v6(ctx, l3off),
        _ => return TCX_NEXT,
    };
    // An IP header too short to hold the addresses cannot be attributed to a source: not ours.
    let Some(pkt) = parsed else { return TCX_NEXT };
    let Some(cfg) = EFM_CONFIG.get(0) else { return TCX_NEXT };
    if cfg.db_port == 0 {
        return TCX_NEXT;
    }
    let mut tcp_off = None;
    if let Some((proto, l4off)) = pkt.l4 {
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return TCX_NEXT;
        }
        // A truncated transport header is undetermined: decided below.
        if let Some(sport) = read::<2>(ctx, l4off) {
            if u32::from(be16(sport)) != cfg.db_port {
                return TCX_NEXT;
            }
            if proto == IPPROTO_TCP {
                tcp_off = Some(l4off);
            }
        }
    }
    // SAFETY: read-only lookup; the value is not kept.
    if unsafe { EFM_SERVICE.get(pkt.src) }.is_none() {
        return TCX_NEXT;
    }
    let (Some(fence), Some(lease)) = (EFM_FENCE.get(0), EFM_LEASE.get(0)) else {
        // Cannot happen (array maps); fail closed for the database's own traffic.
        count(Counter::EgressDrop);
        return TC_ACT_SHOT;
    };
    let r = fence_reasons(fence, lease, lease_clock(fence));
    if r == 0 {
        count(Counter::EgressPass);
        return TCX_NEXT;
    }
    let kind = exempt_kind(&pkt.dst);
    if exempt_applies(kind, r, fence.flags) {
        count(Counter::EgressExempt);
        return TCX_NEXT;
    }
    let Some(l4off) = tcp_off else {
        // UDP from the database port, or ports unseen: drop.
        count(Counter::EgressDrop);
        return TC_ACT_SHOT;
    };
    let Some(word) = read::<2>(ctx, l4off + 12) else {
        count(Counter::EgressDrop);
        return TC_ACT_SHOT;
    };
    let flags = word[1];
    if flags & TCP_RST != 0 {
        count(Counter::EgressPass);
        return TCX_NEXT;
    }
    // Drop mode, and members that are not exempt (dropped, never reset: see `client` in
    // main.rs — a reset walreceiver waits 5 s before it streams again).
    if fence.flags & FENCE_RESET == 0 || kind == EXEMPT_MEMBER {
        count(Counter::EgressDrop);
        return TC_ACT_SHOT;
    }
    let new_flags = TCP_RST | (flags & TCP_ACK);
    let new_word = [word[0], new_flags];
    // The checksum helper takes the 16-bit word as it lies in the packet.
    let from = u64::from(u16::from_ne_bytes(word));
    let to = u64::from(u16::from_ne_bytes(new_word));
    if ctx.store(l4off + 13, &new_flags, 0).is_err() || ctx.l4_csum_replace(l4off + 16, from, to, CSUM_SIZE_2).is_err()
    {
        // The segment may be half rewritten: it must not leave.
        count(Counter::EgressDrop);
        return TC_ACT_SHOT;
    }
    count(Counter::EgressReset);
    TCX_NEXT
}

/// `N` bytes at `off`: straight from the linear packet data when they lie there (the usual
/// case), else through `bpf_skb_load_bytes` (headers in non-linear data). The buffer is zeroed
/// first: an uninitialised one lets LLVM merge an undefined register into the result, which the
/// verifier refuses.
#[inline(always)]
fn read<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    if start + off + N <= ctx.data_end() {
        // SAFETY: bounds checked against data_end just above; a byte array has no alignment.
        return Some(unsafe { ((start + off) as *const [u8; N]).read_unaligned() });
    }
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most N bytes into `buf` and checks the offset itself.
    let rc = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off as u32, buf.as_mut_ptr().cast::<c_void>(), N as u32)
    };
    (rc == 0).then_some(buf)
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, l3off: usize) -> Option<Egress> {
    let ip = read::<20>(ctx, l3off)?;
    let src = PeerAddr::v4([ip[12], ip[13], ip[14], ip[15]]);
    let dst = PeerAddr::v4([ip[16], ip[17], ip[18], ip[19]]);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let frag_off = be16([ip[6], ip[7]]) & 0x1fff;
    let ok = ip[0] >> 4 == 4 && ihl >= 20 && frag_off == 0;
    Some(Egress { src, dst, l4: if ok { Some((ip[9], l3off + ihl)) } else { None } })
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, l3off: usize) -> Option<Egress> {
    let ip = read::<40>(ctx, l3off)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let mut pkt = Egress { src: PeerAddr::v6(src), dst: PeerAddr::v6(dst), l4: None };
    if ip[0] >> 4 != 6 {
        return Some(pkt);
    }
    let mut next = ip[6];
    let mut off = l3off + 40;
    let mut i = 0;
    while i <= MAX_V6_EXT {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => {
                pkt.l4 = Some((next, off));
                break;
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some(h) = read::<2>(ctx, off) else { break };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some(h) = read::<2>(ctx, off) else { break };
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            // Fragment header: only the first fragment carries the transport header.
            44 => {
                let Some(h) = read::<4>(ctx, off) else { break };
                if be16([h[2], h[3]]) & 0xfff8 != 0 {
                    break;
                }
                next = h[0];
                off += 8;
            }
            // Anything else (no next header, ESP, unknown): ports unseen.
            _ => break,
        }
        i += 1;
    }
    Some(pkt)
}
