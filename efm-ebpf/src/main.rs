//! efm's XDP program. One instance per interface; all state lives in pinned maps (see
//! `efm_common::maps`), so an agent restart or crash changes nothing here.
//!
//! Per frame: parse Ethernet (one optional VLAN tag), IPv4/IPv6 (IPv6 extension headers skipped),
//! UDP/TCP; then
//! - heartbeat port: authenticate, replay-check (echoed nonce of this datapath generation, then a
//!   newer (incarnation, sequence)) and record the heartbeat; answer every authenticated PING
//!   that is not an in-generation replay with a PONG (XDP_TX); keep the primary lease and the
//!   highest epoch seen;
//! - database port on a service address: pass, or cut off (drop, or RST in reset mode) when the node
//!   is fenced, a higher epoch was seen, or the enforced lease lapsed; exempt sources pass;
//! - anything else: pass.
//!
//! Every verdict increments one per-CPU counter (a stale-nonce heartbeat counts as `hb_replay` and
//! `hb_stale_nonce`). Nothing is logged on this path.
//!
//! The object also holds the egress fence (`egress`, a TC program on the same interfaces, same
//! maps); both decide "does this node serve" with `efm_common::serving`.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod egress;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use efm_common::{
    jump::{JUMP_CLIENT_TCP, JUMP_CLIENT_UDP, JUMP_COUNT, JUMP_HEARTBEAT},
    maps::{
        rtt_bucket, ClusterKey, Counter, DatapathConfig, FenceState, LeaseState, PeerAddr, PeerInfo, PeerSlot,
        RttHistogram, FENCE_LEASE_ENFORCED, FENCE_RESET, MAX_EXEMPT, MAX_PEER_ADDRS, MAX_SERVICE_ADDRS, MAX_SLOTS,
        SERVICE_VIP,
    },
    serving::{exempt_applies, fence_reasons, EXEMPT_MEMBER, REASON_EPOCH, REASON_FENCED, REASON_LAPSED},
    wire::{
        mac, FLAG_ENDORSE, FLAG_FENCED, FLAG_LEASE_LAPSED, HB_KIND_PING, HB_KIND_PONG, HB_LEN, HB_MAGIC, HB_VERSION,
        OFF_CLUSTER, OFF_ECHO_NONCE, OFF_EPOCH, OFF_FLAGS, OFF_INCARNATION, OFF_KIND, OFF_LSN, OFF_MAC, OFF_MAGIC,
        OFF_NODE, OFF_SENDER_NONCE, OFF_SEND_NS, OFF_SEQ, OFF_VERSION, ROLE_MASK,
    },
};

#[map]
static EFM_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);
#[map]
static EFM_KEY: Array<ClusterKey> = Array::pinned(1, 0);
#[map]
static EFM_FENCE: Array<FenceState> = Array::pinned(1, 0);
#[map]
static EFM_LEASE: Array<LeaseState> = Array::pinned(1, 0);
#[map]
static EFM_PEERS: HashMap<PeerAddr, PeerInfo> = HashMap::pinned(MAX_PEER_ADDRS, 0);
#[map]
static EFM_SLOTS: Array<PeerSlot> = Array::pinned(MAX_SLOTS as u32, 0);
#[map]
static EFM_RTT_HIST: PerCpuArray<RttHistogram> = PerCpuArray::pinned(MAX_SLOTS as u32, 0);
#[map]
static EFM_SERVICE: HashMap<PeerAddr, u32> = HashMap::pinned(MAX_SERVICE_ADDRS, 0);
#[map]
static EFM_EXEMPT: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(MAX_EXEMPT, 0);
#[map]
static EFM_STATS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 Neighbor Solicitation.
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const UDP_HLEN: usize = 8;
const TCP_HLEN: usize = 20;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// IPv6 extension headers walked before giving up on finding the transport header.
const MAX_V6_EXT: usize = 4;
const TTL: u8 = 64;

#[xdp]
pub fn efm_xdp(ctx: XdpContext) -> u32 {
    match try_efm_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => {
            count(Counter::Aborted);
            xdp_action::XDP_ABORTED
        }
    }
}

/// Result of parsing up to the transport header. Lives in the per-CPU scratch map: values read
/// back from a map are unknown to the verifier, so the heartbeat and client subprograms are
/// verified once for all parse paths instead of once per VLAN/IP-version/extension combination.
#[repr(C)]
#[derive(Clone, Copy)]
struct Packet {
    l3off: usize,
    v6: bool,
    /// IPv4 options or IPv6 extension headers present.
    has_options: bool,
    src: PeerAddr,
    dst: PeerAddr,
    /// Transport protocol and header offset; `None` for a non-first fragment or an undecodable
    /// IPv6 extension chain.
    l4: Option<(u8, usize)>,
    /// Bytes from the transport header to the end of the IP payload.
    l4len: usize,
    /// Transport header offset (valid when `l4` is `Some`).
    l4off: usize,
    /// UDP length field (UDP only).
    udp_len: usize,
}

/// Per-CPU scratch space: the heartbeat is too large to copy around on the 512-byte BPF stack,
/// and the parsed packet is handed to subprograms through it (see [`Packet`]).
#[repr(C)]
struct Scratch {
    hb: [u8; HB_LEN],
    pkt: Packet,
}

/// Largest header offset the program follows; masks keep offsets read back from the scratch map
/// bounded for the verifier.
const OFF_MASK: usize = 0x1ff;

#[map]
static EFM_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Tail-call targets. Splitting the work into programs keeps each one's verification small (the
/// verifier explores every path of a program, and the parse paths multiply with the heartbeat
/// paths). Pinned: the kernel empties a program array when its last user-space reference goes
/// away, which would turn every frame into XDP_ABORTED the moment the agent died. A new loader
/// overwrites the entries with its own programs.
#[map]
static EFM_JUMP: ProgramArray = ProgramArray::pinned(JUMP_COUNT, 0);

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = EFM_STATS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot, only this CPU touches it while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn verdict(c: Counter, action: u32) -> Result<u32, ()> {
    count(c);
    Ok(action)
}

#[inline(always)]
fn act(c: Counter, action: u32) -> u32 {
    count(c);
    action
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Pointer to a `T` at `off`, bounds-checked against the end of the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds; packet memory has no alignment guarantee.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Hands the parsed packet to a tail-called program through the scratch map. A tail call does
/// not return; reaching the end means the table slot was empty (a loader bug): abort.
#[inline(always)]
fn jump(ctx: &XdpContext, pkt: &Packet, index: u32) -> Result<u32, ()> {
    let scratch = EFM_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's own scratch value; the tail call runs on the same CPU.
    unsafe {
        (*scratch).pkt = *pkt;
        EFM_JUMP.tail_call(ctx, index);
    }
    Err(())
}

#[xdp]
pub fn efm_xdp_heartbeat(ctx: XdpContext) -> u32 {
    heartbeat(&ctx)
}

#[xdp]
pub fn efm_xdp_client_tcp(ctx: XdpContext) -> u32 {
    client(&ctx, true)
}

#[xdp]
pub fn efm_xdp_client_udp(ctx: XdpContext) -> u32 {
    client(&ctx, false)
}

/// The stashed packet, with offsets masked so the verifier can bound packet accesses.
#[inline(always)]
fn unstash() -> Option<(&'static mut Scratch, Packet)> {
    let scratch = EFM_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own scratch value; nothing else runs on this CPU meanwhile.
    let scratch = unsafe { &mut *scratch };
    let mut pkt = scratch.pkt;
    pkt.l3off &= OFF_MASK;
    pkt.l4off &= OFF_MASK;
    pkt.l4len &= 0xffff;
    pkt.udp_len &= 0xffff;
    Some((scratch, pkt))
}

fn try_efm_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(eth) = read::<[u8; ETH_HLEN]>(ctx, 0) else {
        return verdict(Counter::MalformedDrop, xdp_action::XDP_DROP);
    };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3off = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = read::<[u8; 4]>(ctx, ETH_HLEN) else {
            return verdict(Counter::MalformedDrop, xdp_action::XDP_DROP);
        };
        ethertype = be16([tag[2], tag[3]]);
        l3off = ETH_HLEN + 4;
    }
    let parsed = match ethertype {
        ETH_P_IP => parse_v4(ctx, l3off),
        ETH_P_IPV6 => parse_v6(ctx, l3off),
        ETH_P_ARP => return arp(ctx, l3off),
        _ => return verdict(Counter::NonIpPass, xdp_action::XDP_PASS),
    };
    let Some(mut pkt) = parsed else {
        return verdict(Counter::MalformedDrop, xdp_action::XDP_DROP);
    };
    let cfg = EFM_CONFIG.get(0).ok_or(())?;

    let Some((proto, l4off)) = pkt.l4 else {
        // No transport header to look at. Only a fenced service address cares.
        return undetermined(&pkt, cfg);
    };
    match proto {
        IPPROTO_UDP => {
            let Some(udp) = read::<[u8; UDP_HLEN]>(ctx, l4off) else {
                return verdict(Counter::MalformedDrop, xdp_action::XDP_DROP);
            };
            let dport = u32::from(be16([udp[2], udp[3]]));
            pkt.l4off = l4off;
            pkt.udp_len = usize::from(be16([udp[4], udp[5]]));
            if cfg.hb_port != 0 && dport == cfg.hb_port {
                return jump(ctx, &pkt, JUMP_HEARTBEAT);
            }
            if cfg.db_port != 0 && dport == cfg.db_port {
                return jump(ctx, &pkt, JUMP_CLIENT_UDP);
            }
            verdict(Counter::OtherPass, xdp_action::XDP_PASS)
        }
        IPPROTO_TCP => {
            let Some(tcp) = read::<[u8; TCP_HLEN]>(ctx, l4off) else {
                return verdict(Counter::MalformedDrop, xdp_action::XDP_DROP);
            };
            let dport = u32::from(be16([tcp[2], tcp[3]]));
            pkt.l4off = l4off;
            if cfg.db_port != 0 && dport == cfg.db_port {
                return jump(ctx, &pkt, JUMP_CLIENT_TCP);
            }
            verdict(Counter::OtherPass, xdp_action::XDP_PASS)
        }
        IPPROTO_ICMPV6 => neighbor_solicitation(ctx, l4off, &pkt, cfg),
        _ => verdict(Counter::OtherPass, xdp_action::XDP_PASS),
    }
}

/// ICMPv6: a Neighbor Solicitation for a VIP is not answered while this node does not serve
/// (IPv6's ARP, see [`arp`]); any other ICMPv6 message is judged as before, by its destination
/// ([`undetermined`]).
#[inline(always)]
fn neighbor_solicitation(ctx: &XdpContext, l4off: usize, pkt: &Packet, cfg: &DatapathConfig) -> Result<u32, ()> {
    // type(1) code(1) checksum(2) reserved(4) target(16)
    if let Some(ns) = read::<[u8; 24]>(ctx, l4off) {
        if ns[0] == ND_NEIGHBOR_SOLICIT && ns[1] == 0 {
            let mut t = [0u8; 16];
            t.copy_from_slice(&ns[8..24]);
            // SAFETY: read-only lookup; the value is copied out at once.
            if unsafe { EFM_SERVICE.get(PeerAddr::v6(t)) }.copied() == Some(SERVICE_VIP) {
                let fence = EFM_FENCE.get(0).ok_or(())?;
                let lease = EFM_LEASE.get(0).ok_or(())?;
                if fence_reason(fence, lease).is_some() {
                    return verdict(Counter::VipArpDropped, xdp_action::XDP_DROP);
                }
            }
        }
    }
    undetermined(pkt, cfg)
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3off: usize) -> Option<Packet> {
    let ip = read::<[u8; 20]>(ctx, l3off)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let total = usize::from(be16([ip[2], ip[3]]));
    if total < ihl || l3off + total > frame_len(ctx) {
        return None;
    }
    let frag_off = be16([ip[6], ip[7]]) & 0x1fff;
    let src = PeerAddr::v4([ip[12], ip[13], ip[14], ip[15]]);
    let dst = PeerAddr::v4([ip[16], ip[17], ip[18], ip[19]]);
    let l4off = l3off + ihl;
    Some(Packet {
        l3off,
        v6: false,
        has_options: ihl != 20,
        src,
        dst,
        l4: if frag_off == 0 { Some((ip[9], l4off)) } else { None },
        l4len: total - ihl,
        l4off: 0,
        udp_len: 0,
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3off: usize) -> Option<Packet> {
    let ip = read::<[u8; 40]>(ctx, l3off)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    let payload = usize::from(be16([ip[4], ip[5]]));
    if l3off + 40 + payload > frame_len(ctx) {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut ext_len = 0usize;
    let mut l4 = None;
    let mut has_options = false;
    let mut i = 0;
    while i <= MAX_V6_EXT {
        match next {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {
                l4 = Some((next, l3off + 40 + ext_len));
                break;
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let h = read::<[u8; 2]>(ctx, l3off + 40 + ext_len)?;
                next = h[0];
                ext_len += (usize::from(h[1]) + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let h = read::<[u8; 2]>(ctx, l3off + 40 + ext_len)?;
                next = h[0];
                ext_len += (usize::from(h[1]) + 2) * 4;
            }
            // Fragment header: 8 bytes; only the first fragment carries the transport header.
            44 => {
                let h = read::<[u8; 4]>(ctx, l3off + 40 + ext_len)?;
                next = h[0];
                ext_len += 8;
                if be16([h[2], h[3]]) & 0xfff8 != 0 {
                    break;
                }
            }
            _ => break,
        }
        has_options = true;
        if ext_len > payload {
            return None;
        }
        if ext_len > 256 {
            // Too long to follow: treated as "transport unknown".
            break;
        }
        i += 1;
    }
    Some(Packet {
        l3off,
        v6: true,
        has_options,
        src: PeerAddr::v6(src),
        dst: PeerAddr::v6(dst),
        l4,
        l4len: payload - ext_len,
        l4off: 0,
        udp_len: 0,
    })
}

/// An ARP frame: a request for a VIP is not answered while this node does not serve, so a node
/// whose agent is gone cannot keep pulling clients to a VIP it still has assigned.
#[inline(always)]
fn arp(ctx: &XdpContext, l3off: usize) -> Result<u32, ()> {
    // htype(2) ptype(2) hlen(1) plen(1) oper(2) sha(6) spa(4) tha(6) tpa(4)
    let Some(a) = read::<[u8; 28]>(ctx, l3off) else {
        return verdict(Counter::NonIpPass, xdp_action::XDP_PASS);
    };
    let is_request = a[6] == 0 && a[7] == 1 && a[4] == 6 && a[5] == 4;
    if is_request {
        let tpa = PeerAddr::v4([a[24], a[25], a[26], a[27]]);
        // SAFETY: read-only lookup; the value is copied out at once.
        if unsafe { EFM_SERVICE.get(tpa) }.copied() == Some(SERVICE_VIP) {
            let fence = EFM_FENCE.get(0).ok_or(())?;
            let lease = EFM_LEASE.get(0).ok_or(())?;
            if fence_reason(fence, lease).is_some() {
                return verdict(Counter::VipArpDropped, xdp_action::XDP_DROP);
            }
        }
    }
    verdict(Counter::NonIpPass, xdp_action::XDP_PASS)
}

/// The fence reasons that hold right now (`efm_common::serving`, the rule shared with the egress
/// program and the agent); 0 when the node serves.
#[inline(always)]
fn reasons_now(fence: &FenceState, lease: &LeaseState) -> u32 {
    fence_reasons(fence, lease, lease_clock(fence))
}

/// `bpf_ktime_get_ns`, read only when the lease is enforced (the only case the rule looks at the
/// time; 0 otherwise saves the helper call on every client packet).
#[inline(always)]
pub(crate) fn lease_clock(fence: &FenceState) -> u64 {
    if fence.flags & FENCE_LEASE_ENFORCED == 0 {
        return 0;
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Why client traffic to this node is cut off right now, if it is, as the counter to bump (the
/// explicit flag first, then the epoch, then the lease).
#[inline(always)]
fn fence_reason(fence: &FenceState, lease: &LeaseState) -> Option<Counter> {
    reason_counter(reasons_now(fence, lease))
}

#[inline(always)]
fn reason_counter(r: u32) -> Option<Counter> {
    if r & REASON_FENCED != 0 {
        Some(Counter::ClientFenced)
    } else if r & REASON_EPOCH != 0 {
        Some(Counter::ClientEpochFenced)
    } else if r & REASON_LAPSED != 0 {
        Some(Counter::ClientLeaseLapsed)
    } else {
        None
    }
}

/// An IP packet whose transport header we cannot see (non-first fragment, long IPv6 extension
/// chain). It passes unless it is addressed to a fenced service address: when in doubt, fence.
#[inline(always)]
fn undetermined(pkt: &Packet, cfg: &DatapathConfig) -> Result<u32, ()> {
    // SAFETY: read-only lookup; the value is not kept past this call.
    if cfg.db_port == 0 || unsafe { EFM_SERVICE.get(pkt.dst) }.is_none() {
        return verdict(Counter::OtherPass, xdp_action::XDP_PASS);
    }
    let fence = EFM_FENCE.get(0).ok_or(())?;
    let lease = EFM_LEASE.get(0).ok_or(())?;
    let r = reasons_now(fence, lease);
    match reason_counter(r) {
        Some(reason) if !exempt_applies(exempt_kind(&pkt.src), r, fence.flags) => verdict(reason, xdp_action::XDP_DROP),
        _ => verdict(Counter::OtherPass, xdp_action::XDP_PASS),
    }
}

/// The `EFM_EXEMPT` kind of an address (0: not in the trie); whether it passes a fence is
/// `efm_common::serving::exempt_applies`.
#[inline(always)]
fn exempt_kind(addr: &PeerAddr) -> u32 {
    EFM_EXEMPT.get(Key::new(128, addr.octets)).map_or(0, |k| *k)
}

/// TCP or UDP to the database port.
#[inline(always)]
fn client(ctx: &XdpContext, tcp: bool) -> u32 {
    let Some((_, pkt)) = unstash() else {
        return act(Counter::Aborted, xdp_action::XDP_ABORTED);
    };
    let pkt = &pkt;
    // SAFETY: read-only lookup; the value is not kept past this call.
    if unsafe { EFM_SERVICE.get(pkt.dst) }.is_none() {
        return act(Counter::OtherPass, xdp_action::XDP_PASS);
    }
    let (Some(fence), Some(lease)) = (EFM_FENCE.get(0), EFM_LEASE.get(0)) else {
        return act(Counter::Aborted, xdp_action::XDP_ABORTED);
    };
    let r = reasons_now(fence, lease);
    let Some(reason) = reason_counter(r) else {
        return act(Counter::ClientPass, xdp_action::XDP_PASS);
    };
    let kind = exempt_kind(&pkt.src);
    if exempt_applies(kind, r, fence.flags) {
        return act(Counter::ClientExempt, xdp_action::XDP_PASS);
    }
    count(reason);
    // A member that is not exempt is dropped, never reset: the state is often a moment long (a
    // new primary before its first endorsements, an agent's start-up), and a standby whose
    // walreceiver is reset waits `wal_retrieve_retry_interval` (5 s) before it streams again,
    // while dropped segments are simply sent again.
    if tcp && kind != EXEMPT_MEMBER && fence.flags & FENCE_RESET != 0 && !pkt.has_options && send_rst(ctx, pkt) {
        return act(Counter::ClientReset, xdp_action::XDP_TX);
    }
    xdp_action::XDP_DROP
}

/// Rewrites a TCP segment into the RST that answers it (RFC 9293 §3.10.7.1), shrinking the frame to
/// the bare headers. Returns false (caller drops) for a RST or an inconsistent header.
#[inline(always)]
fn send_rst(ctx: &XdpContext, pkt: &Packet) -> bool {
    let l4off = pkt.l4off;
    let Some(eth) = read::<[u8; 12]>(ctx, 0) else { return false };
    let Some(tcp) = read::<[u8; TCP_HLEN]>(ctx, l4off) else { return false };
    let flags = tcp[13];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if flags & TCP_RST != 0 || doff < TCP_HLEN || pkt.l4len < doff {
        return false;
    }
    let seg_len = (pkt.l4len - doff) as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    let in_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let in_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let (seq, ack, rflags) =
        if flags & TCP_ACK != 0 { (in_ack, 0, TCP_RST) } else { (0, in_seq.wrapping_add(seg_len), TCP_RST | TCP_ACK) };
    let mut out = [0u8; TCP_HLEN];
    out[0] = tcp[2];
    out[1] = tcp[3];
    out[2] = tcp[0];
    out[3] = tcp[1];
    out[4..8].copy_from_slice(&seq.to_be_bytes());
    out[8..12].copy_from_slice(&ack.to_be_bytes());
    out[12] = 5 << 4;
    out[13] = rflags;

    let new_len = l4off + TCP_HLEN;
    let cur_len = frame_len(ctx);
    if new_len < cur_len {
        // SAFETY: shrinking an XDP frame; all packet pointers are re-derived afterwards.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - cur_len as i32) } != 0 {
            return false;
        }
    }
    let Some(p_eth) = ptr_at::<[u8; 12]>(ctx, 0) else { return false };
    let mut neth = [0u8; 12];
    neth[..6].copy_from_slice(&eth[6..12]);
    neth[6..].copy_from_slice(&eth[..6]);
    // SAFETY: bounds checked by ptr_at.
    unsafe { p_eth.write_unaligned(neth) };

    let l3off = pkt.l3off;
    let csum = if pkt.v6 {
        let Some(p_ip) = ptr_at::<[u8; 40]>(ctx, l3off) else { return false };
        // SAFETY: bounds checked by ptr_at.
        let mut ip = unsafe { p_ip.read_unaligned() };
        let mut src = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&ip[24..40]);
        ip[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
        ip[6] = IPPROTO_TCP;
        ip[7] = TTL;
        ip[8..24].copy_from_slice(&dst);
        ip[24..40].copy_from_slice(&src);
        // SAFETY: bounds checked by ptr_at.
        unsafe { p_ip.write_unaligned(ip) };
        let acc = sum_bytes(sum_bytes(0, &dst), &src) + u64::from(IPPROTO_TCP) + TCP_HLEN as u64;
        fold(sum_bytes(acc, &out))
    } else {
        let Some(p_ip) = ptr_at::<[u8; 20]>(ctx, l3off) else { return false };
        // SAFETY: bounds checked by ptr_at.
        let mut ip = unsafe { p_ip.read_unaligned() };
        let mut src = [0u8; 4];
        src.copy_from_slice(&ip[12..16]);
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&ip[16..20]);
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + TCP_HLEN) as u16).to_be_bytes());
        ip[4] = 0;
        ip[5] = 0;
        ip[6] = 0x40; // DF
        ip[7] = 0;
        ip[8] = TTL;
        ip[9] = IPPROTO_TCP;
        ip[10] = 0;
        ip[11] = 0;
        ip[12..16].copy_from_slice(&dst);
        ip[16..20].copy_from_slice(&src);
        let c = fold(sum_bytes(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // SAFETY: bounds checked by ptr_at.
        unsafe { p_ip.write_unaligned(ip) };
        let acc = sum_bytes(sum_bytes(0, &dst), &src) + u64::from(IPPROTO_TCP) + TCP_HLEN as u64;
        fold(sum_bytes(acc, &out))
    };
    out[16..18].copy_from_slice(&csum.to_be_bytes());
    let Some(p_tcp) = ptr_at::<[u8; TCP_HLEN]>(ctx, l4off) else { return false };
    // SAFETY: bounds checked by ptr_at.
    unsafe { p_tcp.write_unaligned(out) };
    true
}

/// One's-complement sum of big-endian 16-bit words (N even), not yet folded.
#[inline(always)]
fn sum_bytes<const N: usize>(mut acc: u64, b: &[u8; N]) -> u64 {
    let mut i = 0;
    while i + 1 < N {
        acc += u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    acc
}

/// Folds a one's-complement sum into the 16-bit checksum field value.
#[inline(always)]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

#[inline(always)]
fn get_be64(b: &[u8; HB_LEN], off: usize) -> u64 {
    u64::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3], b[off + 4], b[off + 5], b[off + 6], b[off + 7]])
}

#[inline(always)]
fn get_be32(b: &[u8; HB_LEN], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
fn newer(inc: u64, seq: u64, last_inc: u64, last_seq: u64) -> bool {
    inc > last_inc || (inc == last_inc && seq > last_seq)
}

/// A datagram to the heartbeat port.
#[inline(always)]
fn heartbeat(ctx: &XdpContext) -> u32 {
    let (Some((scratch, pkt)), Some(cfg)) = (unstash(), EFM_CONFIG.get(0)) else {
        return act(Counter::Aborted, xdp_action::XDP_ABORTED);
    };
    let pkt = &pkt;
    let payload_off = pkt.l4off + UDP_HLEN;
    let udp_len = pkt.udp_len;
    if udp_len < UDP_HLEN || udp_len > pkt.l4len {
        return act(Counter::MalformedDrop, xdp_action::XDP_DROP);
    }
    let claimed = udp_len - UDP_HLEN;
    if claimed < HB_LEN || payload_off + HB_LEN > frame_len(ctx) {
        return act(Counter::HbTruncated, xdp_action::XDP_DROP);
    }
    if claimed > HB_LEN {
        return act(Counter::HbBadLength, xdp_action::XDP_DROP);
    }
    if pkt.has_options {
        return act(Counter::HbUnsupportedHeader, xdp_action::XDP_DROP);
    }
    // SAFETY: read-only lookup; copied out at once.
    let Some(peer) = (unsafe { EFM_PEERS.get(pkt.src) }).copied() else {
        return act(Counter::HbUnknownPeer, xdp_action::XDP_DROP);
    };
    let Some(p_pl) = ptr_at::<[u8; HB_LEN]>(ctx, payload_off) else {
        return act(Counter::HbTruncated, xdp_action::XDP_DROP);
    };
    // SAFETY: bounds checked by ptr_at.
    scratch.hb = unsafe { p_pl.read_unaligned() };
    let hb = &mut scratch.hb;
    if get_be32(hb, OFF_MAGIC) != HB_MAGIC {
        return act(Counter::HbBadMagic, xdp_action::XDP_DROP);
    }
    if hb[OFF_VERSION] != HB_VERSION {
        return act(Counter::HbBadVersion, xdp_action::XDP_DROP);
    }
    if get_be32(hb, OFF_CLUSTER) != cfg.cluster_id {
        return act(Counter::HbBadCluster, xdp_action::XDP_DROP);
    }
    let kind = hb[OFF_KIND];
    if kind != HB_KIND_PING && kind != HB_KIND_PONG {
        return act(Counter::HbBadKind, xdp_action::XDP_DROP);
    }
    let Some(key) = EFM_KEY.get(0) else {
        return act(Counter::Aborted, xdp_action::XDP_ABORTED);
    };
    if get_be64(hb, OFF_MAC) != mac(key.k0, key.k1, hb) {
        return act(Counter::HbBadMac, xdp_action::XDP_DROP);
    }
    if get_be32(hb, OFF_NODE) != peer.node_id {
        return act(Counter::HbNodeMismatch, xdp_action::XDP_DROP);
    }
    let slot_idx = peer.slot;
    let (Some(slot), Some(fence), Some(lease_ptr)) =
        (EFM_SLOTS.get_ptr_mut(slot_idx), EFM_FENCE.get(0), EFM_LEASE.get_ptr_mut(0))
    else {
        return act(Counter::Aborted, xdp_action::XDP_ABORTED);
    };
    // SAFETY: `slot` and `lease_ptr` point into array map values that live as long as the map;
    // concurrent writers (two CPUs at once) can only interleave field writes, never fault.
    let (s, lease) = unsafe { (&mut *slot, &mut *lease_ptr) };
    let inc = get_be64(hb, OFF_INCARNATION);
    let seq = get_be64(hb, OFF_SEQ);
    let epoch = get_be64(hb, OFF_EPOCH);
    let flags = u16::from_be_bytes([hb[OFF_FLAGS], hb[OFF_FLAGS + 1]]);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Replay protection across generations: only a heartbeat echoing this datapath's current
    // nonce can be fresh; anything captured before the maps were created echoes another one.
    // Nonce 0 (maps not initialised by an agent yet) accepts nothing.
    let own_nonce = cfg.nonce;
    let current = own_nonce != 0 && get_be64(hb, OFF_ECHO_NONCE) == own_nonce;

    if kind == HB_KIND_PONG {
        if !current {
            count(Counter::HbStaleNonce);
            return act(Counter::HbReplay, xdp_action::XDP_DROP);
        }
        if !newer(inc, seq, s.pong_incarnation, s.pong_seq) {
            return act(Counter::HbReplay, xdp_action::XDP_DROP);
        }
        raise_epoch(lease, fence, epoch, now);
        let rtt = now.saturating_sub(get_be64(hb, OFF_SEND_NS));
        s.pong_incarnation = inc;
        s.pong_seq = seq;
        s.pong_arrival_ns = now;
        s.pong_rtt_ns = rtt;
        s.pong_epoch = epoch;
        s.pong_lsn = get_be64(hb, OFF_LSN);
        s.pong_flags = u32::from(flags);
        s.pongs += 1;
        // The peer's current nonce, echoed by our agent's next PINGs to it.
        s.peer_nonce = get_be64(hb, OFF_SENDER_NONCE);
        if let Some(h) = EFM_RTT_HIST.get_ptr_mut(slot_idx) {
            // SAFETY: per-CPU value; the bucket index is bounds-checked by get_mut.
            let h = unsafe { &mut *h };
            if let Some(b) = h.buckets.get_mut(rtt_bucket(rtt) as usize) {
                *b += 1;
            }
        }
        return act(Counter::HbPongAccepted, xdp_action::XDP_DROP);
    }

    if current {
        if !newer(inc, seq, s.ping_incarnation, s.ping_seq) {
            return act(Counter::HbReplay, xdp_action::XDP_DROP);
        }
        raise_epoch(lease, fence, epoch, now);
        s.ping_incarnation = inc;
        s.ping_seq = seq;
        s.ping_arrival_ns = now;
        s.ping_send_ns = get_be64(hb, OFF_SEND_NS);
        s.ping_epoch = epoch;
        s.ping_lsn = get_be64(hb, OFF_LSN);
        s.ping_flags = u32::from(flags);
        s.pings += 1;
        count(Counter::HbPingAccepted);

        // The lease: an endorsement counts only for the epoch this node holds. A PING without
        // one changes nothing: the earlier endorsement keeps its full lease time, so a short
        // pause of this node's agent does not cut its clients off; the voters count their wait
        // before any promotion from their own last endorsement.
        if flags & FLAG_ENDORSE != 0 && epoch == fence.epoch {
            if let Some(e) = lease.endorse_ns.get_mut(slot_idx as usize) {
                *e = now;
                lease.deadline_ns = lease_deadline(&lease.endorse_ns, fence);
                count(Counter::LeaseEndorsed);
            }
        }
    } else {
        // Not echoing our current nonce: a replay from an earlier generation, or a sender that
        // has not learned our nonce yet. It changes nothing, but is answered: the PONG carries
        // our nonce, so a restarted peer learns it from our kernel (our agent need not run).
        count(Counter::HbStaleNonce);
        count(Counter::HbReplay);
    }

    // Answer with a PONG from this node's kernel, built in the scratch buffer: our nonce as the
    // sender nonce, the PING's sender nonce echoed.
    let their_nonce = get_be64(hb, OFF_SENDER_NONCE);
    hb[OFF_SENDER_NONCE..OFF_SENDER_NONCE + 8].copy_from_slice(&own_nonce.to_be_bytes());
    hb[OFF_ECHO_NONCE..OFF_ECHO_NONCE + 8].copy_from_slice(&their_nonce.to_be_bytes());
    hb[OFF_KIND] = HB_KIND_PONG;
    let mut pflags = (fence.role as u16) & ROLE_MASK;
    match fence_reason(fence, lease) {
        Some(Counter::ClientLeaseLapsed) => pflags |= FLAG_LEASE_LAPSED,
        Some(_) => pflags |= FLAG_FENCED,
        None => {}
    }
    hb[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&pflags.to_be_bytes());
    hb[OFF_NODE..OFF_NODE + 4].copy_from_slice(&cfg.node_id.to_be_bytes());
    hb[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&fence.epoch.to_be_bytes());
    hb[OFF_LSN..OFF_LSN + 8].copy_from_slice(&fence.lsn.to_be_bytes());
    let m = mac(key.k0, key.k1, hb);
    hb[OFF_MAC..OFF_MAC + 8].copy_from_slice(&m.to_be_bytes());
    if write_pong(ctx, pkt, hb) {
        act(Counter::HbPongSent, xdp_action::XDP_TX)
    } else {
        act(Counter::Aborted, xdp_action::XDP_ABORTED)
    }
}

/// An authenticated heartbeat with a higher epoch than this node holds fences it (see
/// `fence_reason`) until the agent adopts that epoch.
#[inline(always)]
fn raise_epoch(lease: &mut LeaseState, fence: &FenceState, epoch: u64, now: u64) {
    if epoch > lease.max_epoch_seen {
        lease.max_epoch_seen = epoch;
        if epoch > fence.epoch {
            lease.epoch_fenced_ns = now;
            count(Counter::EpochFence);
        }
    }
}

/// The k-th newest endorsement plus the lease timeout; 0 (lapsed) with fewer than k endorsements.
///
/// The k-th newest value is the largest `v` with at least `k` entries `>= v`. Computed without
/// data-dependent branches (timestamps are below 2^63, so `(a - b) >> 63` is `a < b`): a branch
/// per comparison would make the verifier explore every combination of outcomes.
#[inline(always)]
fn lease_deadline(e: &[u64; MAX_SLOTS], fence: &FenceState) -> u64 {
    let k = u64::from(fence.lease_k);
    if k == 0 || k > MAX_SLOTS as u64 {
        return 0;
    }
    let mut best = 0u64;
    let mut i = 0;
    while i < MAX_SLOTS {
        let v = e[i];
        let mut at_least = 0u64;
        let mut j = 0;
        while j < MAX_SLOTS {
            // e[j] >= v  <=>  v - e[j] - 1 < 0
            at_least += sign_bit(v.wrapping_sub(e[j]).wrapping_sub(1));
            j += 1;
        }
        // at_least >= k  <=>  k - at_least - 1 < 0
        let enough = sign_bit(k.wrapping_sub(at_least).wrapping_sub(1));
        let cand = v & enough.wrapping_neg();
        let lt = sign_bit(best.wrapping_sub(cand));
        best ^= (best ^ cand) & lt.wrapping_neg();
        i += 1;
    }
    if best == 0 {
        0
    } else {
        best.saturating_add(fence.lease_timeout_ns)
    }
}

/// The sign bit of `x` as 0 or 1. In assembly because LLVM turns the plain `x >> 63` patterns
/// back into compare-and-branch (BPF has no set-on-condition), which multiplies verifier states.
#[inline(always)]
fn sign_bit(x: u64) -> u64 {
    let mut r = x;
    // SAFETY: a register-only shift.
    unsafe { core::arch::asm!("{0} >>= 63", inout(reg) r, options(pure, nomem, nostack)) };
    r
}

/// Turns the PING frame into the PONG in place: Ethernet, IP and UDP addresses swapped, fresh
/// TTL/hop limit and checksums, the new payload.
#[inline(always)]
fn write_pong(ctx: &XdpContext, pkt: &Packet, out: &[u8; HB_LEN]) -> bool {
    let l4off = pkt.l4off;
    // Drop anything after the IP packet (Ethernet padding, trailing garbage): the PONG is exactly
    // headers plus heartbeat.
    let want = l4off + UDP_HLEN + HB_LEN;
    let cur = frame_len(ctx);
    if cur > want {
        // SAFETY: shrinking an XDP frame; all packet pointers are derived afterwards.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - cur as i32) } != 0 {
            return false;
        }
    }
    let Some(p_eth) = ptr_at::<[u8; 12]>(ctx, 0) else { return false };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { p_eth.read_unaligned() };
    let mut neth = [0u8; 12];
    neth[..6].copy_from_slice(&eth[6..12]);
    neth[6..].copy_from_slice(&eth[..6]);
    // SAFETY: bounds checked by ptr_at.
    unsafe { p_eth.write_unaligned(neth) };

    let udp_len = (UDP_HLEN + HB_LEN) as u64;
    let pseudo = if pkt.v6 {
        let Some(p_ip) = ptr_at::<[u8; 40]>(ctx, pkt.l3off) else { return false };
        // SAFETY: bounds checked by ptr_at.
        let mut ip = unsafe { p_ip.read_unaligned() };
        let mut src = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&ip[24..40]);
        ip[4..6].copy_from_slice(&((UDP_HLEN + HB_LEN) as u16).to_be_bytes());
        ip[7] = TTL;
        ip[8..24].copy_from_slice(&dst);
        ip[24..40].copy_from_slice(&src);
        // SAFETY: bounds checked by ptr_at.
        unsafe { p_ip.write_unaligned(ip) };
        sum_bytes(sum_bytes(0, &src), &dst)
    } else {
        let Some(p_ip) = ptr_at::<[u8; 20]>(ctx, pkt.l3off) else { return false };
        // SAFETY: bounds checked by ptr_at.
        let mut ip = unsafe { p_ip.read_unaligned() };
        let mut src = [0u8; 4];
        src.copy_from_slice(&ip[12..16]);
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&ip[16..20]);
        ip[2..4].copy_from_slice(&((20 + UDP_HLEN + HB_LEN) as u16).to_be_bytes());
        ip[8] = TTL;
        ip[10] = 0;
        ip[11] = 0;
        ip[12..16].copy_from_slice(&dst);
        ip[16..20].copy_from_slice(&src);
        let c = fold(sum_bytes(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        // SAFETY: bounds checked by ptr_at.
        unsafe { p_ip.write_unaligned(ip) };
        sum_bytes(sum_bytes(0, &src), &dst)
    };

    let Some(p_udp) = ptr_at::<[u8; UDP_HLEN]>(ctx, l4off) else { return false };
    // SAFETY: bounds checked by ptr_at.
    let udp = unsafe { p_udp.read_unaligned() };
    let mut nudp = [udp[2], udp[3], udp[0], udp[1], udp[4], udp[5], 0, 0];
    let acc = pseudo + u64::from(IPPROTO_UDP) + udp_len + udp_len;
    let acc = sum_bytes(sum_bytes(acc, &[nudp[0], nudp[1], nudp[2], nudp[3]]), out);
    let mut c = fold(acc);
    if c == 0 {
        c = 0xffff;
    }
    nudp[6..8].copy_from_slice(&c.to_be_bytes());
    // SAFETY: bounds checked by ptr_at.
    unsafe { p_udp.write_unaligned(nudp) };
    let Some(p_pl) = ptr_at::<[u8; HB_LEN]>(ctx, l4off + UDP_HLEN) else { return false };
    // SAFETY: bounds checked by ptr_at.
    unsafe { p_pl.write_unaligned(*out) };
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}
