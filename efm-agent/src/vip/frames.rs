//! The frames the VIP code sends and reads, built and parsed by hand (they are small, fixed and
//! tested here): Ethernet, ARP (gratuitous forms and the RFC 5227 probe), IPv6 Neighbor
//! Discovery (unsolicited Neighbor Advertisement, DAD-style Neighbor Solicitation).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Mac;

pub(super) const ETH_P_ARP: u16 = 0x0806;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
pub(super) const BROADCAST: Mac = [0xff; 6];
const ETH_HLEN: usize = 14;

/// An Ethernet frame: `dst`, `src`, `ethertype`, then `payload` (the kernel pads short frames).
pub(super) fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An untagged Ethernet frame's source address, ethertype and payload.
pub(super) fn parse_ethernet(f: &[u8]) -> Option<(Mac, u16, &[u8])> {
    if f.len() < ETH_HLEN {
        return None;
    }
    let src: Mac = f[6..12].try_into().ok()?;
    Some((src, u16::from_be_bytes([f[12], f[13]]), &f[ETH_HLEN..]))
}

// ---------------------------------------------------------------------------------------------
// IPv4: ARP

pub(super) const ARPOP_REQUEST: u16 = 1;
pub(super) const ARPOP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Arp {
    pub op: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tha: Mac,
    pub tpa: Ipv4Addr,
}

impl Arp {
    pub(super) fn to_bytes(self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.op.to_be_bytes());
        b[8..14].copy_from_slice(&self.sha);
        b[14..18].copy_from_slice(&self.spa.octets());
        b[18..24].copy_from_slice(&self.tha);
        b[24..28].copy_from_slice(&self.tpa.octets());
        b
    }

    pub(super) fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 28 || b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
            return None;
        }
        let mac = |at: usize| -> Option<Mac> { b[at..at + 6].try_into().ok() };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(Self { op: u16::from_be_bytes([b[6], b[7]]), sha: mac(8)?, spa: ip(14), tha: mac(18)?, tpa: ip(24) })
    }

    /// This packet broadcast from `src` as an Ethernet frame.
    pub(super) fn frame(self, src: Mac) -> Vec<u8> {
        ethernet(BROADCAST, src, ETH_P_ARP, &self.to_bytes())
    }
}

/// Gratuitous ARP, both forms: a request (RFC 5227 announcement: sender = target = VIP, target
/// MAC zero) and a reply (target MAC = sender MAC, which Linux requires to treat a reply as
/// gratuitous), broadcast.
pub(super) fn garp_pair(mac: Mac, vip: Ipv4Addr) -> [Arp; 2] {
    [
        Arp { op: ARPOP_REQUEST, sha: mac, spa: vip, tha: [0; 6], tpa: vip },
        Arp { op: ARPOP_REPLY, sha: mac, spa: vip, tha: mac, tpa: vip },
    ]
}

/// The RFC 5227 probe for `vip`: sender IP 0.0.0.0, so no neighbour cache learns from it.
pub(super) fn arp_probe(mac: Mac, vip: Ipv4Addr) -> Arp {
    Arp { op: ARPOP_REQUEST, sha: mac, spa: Ipv4Addr::UNSPECIFIED, tha: [0; 6], tpa: vip }
}

// ---------------------------------------------------------------------------------------------
// IPv6: Neighbor Discovery

pub(super) const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub(super) const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HLEN: usize = 40;
pub(super) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Unsolicited Neighbor Advertisement for `target` (override flag, target link-layer address
/// option), checksum field zero.
pub(super) fn neighbor_advert(target: Ipv6Addr, mac: Mac) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = ND_NEIGHBOR_ADVERT;
    b[4] = NA_FLAG_OVERRIDE;
    b[8..24].copy_from_slice(&target.octets());
    b[24] = ND_OPT_TARGET_LL_ADDR;
    b[25] = 1; // in units of 8 bytes
    b[26..32].copy_from_slice(&mac);
    b
}

/// `ff02::1:ffXX:XXXX` for `addr`.
pub(super) fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet multicast address of an IPv6 multicast group (`33:33` + low 32 bits).
pub(super) fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The `ICMPv6` checksum of `msg` (its checksum field zero) between `src` and `dst`. Over a
/// message with a correct checksum in place it is 0.
pub(super) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An IPv6 packet carrying `msg` (`ICMPv6`, checksum field zero) from `src` to `dst` with hop
/// limit 255, checksum filled in.
fn icmpv6_packet(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; IPV6_HLEN];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(msg.len()).unwrap_or(u16::MAX).to_be_bytes());
    p[6] = IPPROTO_ICMPV6;
    p[7] = 255;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    let at = p.len();
    p.extend_from_slice(msg);
    let csum = icmpv6_checksum(src, dst, msg);
    p[at + 2..at + 4].copy_from_slice(&csum.to_be_bytes());
    p
}

/// The unsolicited Neighbor Advertisement for `vip` as an Ethernet frame from `mac`: source the
/// VIP, to all nodes (`ff02::1`).
pub(super) fn neighbor_advert_frame(vip: Ipv6Addr, mac: Mac) -> Vec<u8> {
    let packet = icmpv6_packet(vip, ALL_NODES, &neighbor_advert(vip, mac));
    ethernet(multicast_mac(ALL_NODES), mac, ETH_P_IPV6, &packet)
}

/// A DAD-style Neighbor Solicitation for `target` as a full IPv6 packet: source `::` (so no
/// source link-layer option), destination the solicited-node group, hop limit 255.
pub(super) fn dad_solicit_packet(target: Ipv6Addr) -> Vec<u8> {
    let mut ns = [0u8; 24];
    ns[0] = ND_NEIGHBOR_SOLICIT;
    ns[8..24].copy_from_slice(&target.octets());
    icmpv6_packet(Ipv6Addr::UNSPECIFIED, solicited_node(target), &ns)
}

/// The DAD-style Neighbor Solicitation for `target` as an Ethernet frame from `mac`.
pub(super) fn dad_solicit_frame(target: Ipv6Addr, mac: Mac) -> Vec<u8> {
    ethernet(multicast_mac(solicited_node(target)), mac, ETH_P_IPV6, &dad_solicit_packet(target))
}

/// A Neighbor Advertisement (`ICMPv6` message, no IPv6 header): its target and target link-layer
/// address option, if present.
pub(super) fn parse_na(b: &[u8]) -> Option<(Ipv6Addr, Option<Mac>)> {
    if b.len() < 24 || b[0] != ND_NEIGHBOR_ADVERT || b[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).ok()?);
    let mut opts = &b[24..];
    let mut tlla = None;
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None; // RFC 4861 7.1.2: options must have a non-zero length
        }
        if opts[0] == ND_OPT_TARGET_LL_ADDR && len == 8 {
            tlla = Some(opts[2..8].try_into().ok()?);
        }
        opts = &opts[len..];
    }
    Some((target, tlla))
}

/// A Neighbor Advertisement in an IPv6 packet, validated as RFC 4861 7.1.2 asks of a receiver:
/// hop limit 255 (it was not forwarded), a correct checksum, code 0, at least 24 bytes, options
/// of non-zero length. Packets with extension headers are not NAs we look for.
pub(super) fn parse_na_packet(p: &[u8]) -> Option<(Ipv6Addr, Option<Mac>)> {
    if p.len() < IPV6_HLEN || p[0] >> 4 != 6 || p[6] != IPPROTO_ICMPV6 || p[7] != 255 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let msg = p.get(IPV6_HLEN..IPV6_HLEN + len)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
    if icmpv6_checksum(src, dst, msg) != 0 {
        return None;
    }
    parse_na(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0xef, 0, 0, 0, 1];

    #[test]
    fn arp_round_trip_and_garp_forms() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let [req, rep] = garp_pair(MAC, vip);
        assert_eq!(
            Arp::parse(&req.to_bytes()),
            Some(Arp { op: ARPOP_REQUEST, sha: MAC, spa: vip, tha: [0; 6], tpa: vip })
        );
        assert_eq!(Arp::parse(&rep.to_bytes()), Some(Arp { op: ARPOP_REPLY, sha: MAC, spa: vip, tha: MAC, tpa: vip }));
        assert!(Arp::parse(&[0; 27]).is_none());
        let mut bad = req.to_bytes();
        bad[2] = 0x86; // not IPv4
        assert!(Arp::parse(&bad).is_none());
        let probe = arp_probe(MAC, vip);
        assert_eq!((probe.spa, probe.tpa, probe.op), (Ipv4Addr::UNSPECIFIED, vip, ARPOP_REQUEST));
    }

    #[test]
    fn ethernet_frames() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let f = arp_probe(MAC, vip).frame(MAC);
        assert_eq!(f.len(), 14 + 28);
        assert_eq!(&f[..6], &BROADCAST);
        let (src, ty, payload) = parse_ethernet(&f).unwrap();
        assert_eq!((src, ty), (MAC, ETH_P_ARP));
        assert_eq!(Arp::parse(payload), Some(arp_probe(MAC, vip)));
        assert!(parse_ethernet(&f[..13]).is_none());
    }

    #[test]
    fn neighbor_discovery_packets() {
        let vip: Ipv6Addr = "fd00:efd::1:2:100".parse().unwrap();
        assert_eq!(solicited_node(vip), "ff02::1:ff02:100".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(solicited_node(vip)), [0x33, 0x33, 0xff, 0x02, 0x01, 0x00]);

        let na = neighbor_advert(vip, MAC);
        assert_eq!(na[4], 0x20, "override only");
        assert_eq!(parse_na(&na), Some((vip, Some(MAC))));
        assert_eq!(parse_na(&na[..24]), Some((vip, None)));
        let mut zero_len = na;
        zero_len[25] = 0;
        assert_eq!(parse_na(&zero_len), None);
        assert_eq!(parse_na(&[0; 10]), None);

        let p = dad_solicit_packet(vip);
        assert_eq!(p.len(), 64);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!((p[6], p[7]), (58, 255));
        assert_eq!(&p[8..24], &[0; 16]);
        assert_eq!(&p[24..40], &solicited_node(vip).octets());
        assert_eq!(p[40], ND_NEIGHBOR_SOLICIT);
        // A correct checksum sums (with the pseudo-header) to 0xffff, i.e. recomputes to 0.
        assert_eq!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, solicited_node(vip), &p[40..]), 0);
        let f = dad_solicit_frame(vip, MAC);
        assert_eq!(parse_ethernet(&f).map(|(s, t, _)| (s, t)), Some((MAC, ETH_P_IPV6)));
        assert_eq!(&f[..6], &multicast_mac(solicited_node(vip)));
    }

    #[test]
    fn advertisement_frame_is_a_valid_na_from_the_vip() {
        let vip: Ipv6Addr = "fd00:efd::100".parse().unwrap();
        let f = neighbor_advert_frame(vip, MAC);
        let (src, ty, p) = parse_ethernet(&f).unwrap();
        assert_eq!((src, ty), (MAC, ETH_P_IPV6));
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&p[8..24], &vip.octets(), "sent from the VIP");
        assert_eq!(&p[24..40], &ALL_NODES.octets());
        assert_eq!(parse_na_packet(p), Some((vip, Some(MAC))));
        // Ethernet padding after the IPv6 payload is ignored.
        let mut padded = p.to_vec();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse_na_packet(&padded), Some((vip, Some(MAC))));
        // Forwarded (hop limit < 255), corrupted, truncated or not an NA: refused.
        let mut forwarded = p.to_vec();
        forwarded[7] = 254;
        assert_eq!(parse_na_packet(&forwarded), None);
        let mut corrupt = p.to_vec();
        corrupt[60] ^= 1;
        assert_eq!(parse_na_packet(&corrupt), None);
        assert_eq!(parse_na_packet(&p[..60]), None);
        assert_eq!(parse_na_packet(&dad_solicit_packet(vip)), None);
    }

    #[test]
    fn checksum_known_value() {
        // Echo request fe80::1 → fe80::2, id 1, seq 1, no data; the expected value is the
        // one's-complement sum of the 16-bit words written out by hand.
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "fe80::2".parse().unwrap();
        let msg = [128u8, 0, 0, 0, 0, 1, 0, 1];
        let words: u32 = 0xfe80 + 1 + 0xfe80 + 2 + 8 + 58 + 0x8000 + 1 + 1;
        let folded = (words & 0xffff) + (words >> 16);
        assert_eq!(icmpv6_checksum(src, dst, &msg), !u16::try_from(folded).unwrap());
    }
}
