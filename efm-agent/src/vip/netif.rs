//! rtnetlink for the VIP and interface lookups: `RTM_GETLINK` (an interface's index, type and
//! MAC), `RTM_NEWADDR`/`RTM_DELADDR` (the VIP), `RTM_GETADDR` dumps (is an address here, which
//! interface holds an address). Requests are `netlink-packet-route` messages over a blocking
//! `netlink-sys` socket of the calling thread's network namespace; the kernel's extended-ACK text
//! is kept so it reaches the user.
//!
//! Answers are decoded with the crate's header and attribute parsers, but attribute by
//! attribute, keeping only those we use: decoding a whole `RTM_NEWLINK` fails when one attribute
//! (statistics, driver-specific info) is newer or longer than the crate knows
//! (netlink-packet-route#151), and a VIP failover must not depend on that.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    DecodeError, ErrorMessage, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    Parseable, ParseableParametrized, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeader, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkHeader, LinkLayerType, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rustix::{
    io::Errno,
    net::{recv, sockopt, RecvFlags},
};

use super::Mac;

/// A netlink failure: the errno and the kernel's extended-ACK message, if any.
#[derive(Debug)]
pub(super) struct NlError {
    pub errno: io::Error,
    pub msg: Option<String>,
}

impl From<io::Error> for NlError {
    fn from(errno: io::Error) -> Self {
        Self { errno, msg: None }
    }
}

impl From<Errno> for NlError {
    fn from(e: Errno) -> Self {
        io::Error::from(e).into()
    }
}

impl NlError {
    /// Whether the kernel (or the socket) answered errno `e`.
    pub(super) fn is(&self, e: Errno) -> bool {
        self.errno.raw_os_error() == Some(e.raw_os_error())
    }
}

/// `NLMSGERR_ATTR_MSG`: the extended ACK's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The kernel answers at once; a missing answer is reported after this long.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Dumps come in datagrams of up to 32 KiB; a smaller buffer would truncate them.
const RECV_BUF: usize = 64 * 1024;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
/// `struct ifinfomsg` and `struct ifaddrmsg`: the fixed parts before the attributes.
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
/// The `RTM_NEWLINK` attributes we read (`IFLA_ADDRESS`, `IFLA_IFNAME`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
/// The `RTM_NEWADDR` attributes we read.
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// An answer from the kernel: its message type and payload, decoded later by the parts we use.
#[derive(Debug)]
struct Answer {
    ty: u16,
    payload: Vec<u8>,
}

impl NetlinkDeserializable for Answer {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self { ty: header.message_type, payload: payload.to_vec() })
    }
}

/// An interface as `RTM_GETLINK` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    /// The Ethernet address; `None` if the interface is not Ethernet.
    pub mac: Option<Mac>,
}

/// A `NETLINK_ROUTE` socket.
struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> Result<Self, NlError> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort (old kernels lack them): the kernel's error text, and ACKs without our
        // request in them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        sockopt::set_socket_timeout(&sock, sockopt::Timeout::Recv, Some(RECV_TIMEOUT))?;
        Ok(Self { sock, seq: 0, buf: vec![0; RECV_BUF] })
    }

    fn send(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<u32, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// One datagram; returns its length.
    fn recv(&mut self) -> Result<usize, NlError> {
        loop {
            // TRUNC: the answer is the datagram's real length, so a cut one is noticed.
            match recv(&self.sock, &mut self.buf[..], RecvFlags::TRUNC) {
                Ok((_, n)) if n > self.buf.len() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message larger than the receive buffer",
                    )
                    .into())
                }
                Ok((n, _)) => return Ok(n),
                Err(Errno::INTR) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(
                        io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel (netlink) in 5 s").into()
                    )
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads answers to request `seq`, handing each message's flags and payload to `on` in
    /// order until it returns a result.
    fn answers<T>(
        &mut self,
        seq: u32,
        mut on: impl FnMut(u16, NetlinkPayload<Answer>) -> Option<Result<T, NlError>>,
    ) -> Result<T, NlError> {
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<Answer>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink answer: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(
                        io::Error::new(io::ErrorKind::InvalidData, "netlink answer: a zero-length message").into()
                    );
                }
                off += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let Some(r) = on(msg.header.flags, msg.payload) {
                    return r;
                }
            }
        }
    }

    /// Sends a request with `NLM_F_ACK` and waits for its ACK or error.
    fn request(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<(), NlError> {
        let seq = self.send(flags | NLM_F_REQUEST | NLM_F_ACK, msg)?;
        self.answers(seq, |flags, payload| match payload {
            NetlinkPayload::Error(e) => Some(nl_result(flags, &e)),
            _ => None,
        })
    }

    /// A `GET` request answered by one message (or an error).
    fn get(&mut self, msg: RouteNetlinkMessage) -> Result<Answer, NlError> {
        let seq = self.send(NLM_F_REQUEST, msg)?;
        self.answers(seq, |flags, payload| match payload {
            NetlinkPayload::InnerMessage(m) => Some(Ok(m)),
            NetlinkPayload::Error(e) => Some(nl_result(flags, &e).and_then(|()| {
                Err(io::Error::new(io::ErrorKind::InvalidData, "netlink: an ACK where an answer was due").into())
            })),
            _ => None,
        })
    }

    /// A dump request; `f` sees every answer until `NLMSG_DONE`.
    fn dump(&mut self, msg: RouteNetlinkMessage, mut f: impl FnMut(Answer)) -> Result<(), NlError> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, msg)?;
        self.answers(seq, |flags, payload| match payload {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(e) => Some(nl_result(flags, &e)),
            NetlinkPayload::InnerMessage(m) => {
                f(m);
                None
            }
            _ => None,
        })
    }
}

/// An `NLMSG_ERROR`: `Ok(())` for an ACK (code 0), else the errno and the kernel's extended-ACK
/// message. `e.header` is what follows the code: the request's header (or all of the request without
/// `NLM_F_CAPPED`), then, with `NLM_F_ACK_TLVS`, the extended-ACK attributes.
fn nl_result(flags: u16, e: &ErrorMessage) -> Result<(), NlError> {
    let Some(code) = e.code else { return Ok(()) };
    let rest = e.header.as_slice();
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 && rest.len() >= 16 {
        let inner = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize
        };
        if let Some(tlvs) = rest.get(inner.next_multiple_of(4)..) {
            msg =
                NlasIterator::new(tlvs).map_while(Result::ok).find(|nla| nla.kind() == NLMSGERR_ATTR_MSG).map(|nla| {
                    let text = nla.value().split(|b| *b == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(text).into_owned()
                });
        }
    }
    Err(NlError { errno: io::Error::from_raw_os_error(code.get().saturating_neg()), msg })
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// An `RTM_NEWLINK` payload: the header, and the name and MAC attributes (others are skipped
/// undecoded).
fn decode_link(payload: &[u8]) -> Result<Link, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut name = String::new();
    let mut mac = None;
    for nla in NlasIterator::new(payload.get(IFINFOMSG_LEN..).unwrap_or_default()) {
        let nla = nla?;
        if !matches!(nla.kind(), IFLA_ADDRESS | IFLA_IFNAME) {
            continue;
        }
        match LinkAttribute::parse_with_param(&nla, header.interface_family)? {
            LinkAttribute::IfName(n) => name = n,
            LinkAttribute::Address(a) => mac = Mac::try_from(a.as_slice()).ok(),
            _ => {}
        }
    }
    let ether = header.link_layer_type == LinkLayerType::Ether;
    Ok(Link { index: header.index, name, mac: mac.filter(|_| ether) })
}

fn invalid(what: &str, e: impl std::fmt::Display) -> NlError {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}: {e}")).into()
}

/// Interface `name` of this network namespace (`ENODEV` if there is none).
pub(super) fn link_by_name(name: &str) -> Result<Link, NlError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    link(m)
}

/// Interface number `index` of this network namespace (`ENODEV` if there is none).
pub(super) fn link_by_index(index: u32) -> Result<Link, NlError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    link(m)
}

fn link(m: LinkMessage) -> Result<Link, NlError> {
    let a = Rtnl::open()?.get(RouteNetlinkMessage::GetLink(m))?;
    if a.ty != RTM_NEWLINK {
        return Err(invalid("answer to RTM_GETLINK", format!("message type {}", a.ty)));
    }
    decode_link(&a.payload).map_err(|e| invalid("RTM_NEWLINK", e))
}

/// `RTM_NEWADDR` (create-exclusive; IPv6 with `IFA_F_NODAD`, so the address is usable at once) or
/// `RTM_DELADDR` for `addr/prefix` on interface `index`.
#[cfg(test)]
pub(super) fn address_request(add: bool, index: u32, addr: IpAddr, prefix: u8) -> (u16, RouteNetlinkMessage) {
    labeled_address_request(add, index, addr, prefix, None)
}

/// [`address_request`] with an IPv4 address label (`IFA_LABEL`, e.g. `eth0:0` for EFM 2.0's
/// alias form of `virtualIp.interface`); IPv6 addresses have no labels, so it is left out.
pub(super) fn labeled_address_request(
    add: bool,
    index: u32,
    addr: IpAddr,
    prefix: u8,
    label: Option<&str>,
) -> (u16, RouteNetlinkMessage) {
    let mut m = AddressMessage::default();
    m.header.family = family_of(addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.header.scope = match addr {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => AddressScope::Link,
        _ => AddressScope::Universe,
    };
    if add && addr.is_ipv6() {
        m.header.flags = AddressHeaderFlags::Nodad;
    }
    m.attributes = vec![AddressAttribute::Local(addr), AddressAttribute::Address(addr)];
    if let (true, Some(label)) = (add && addr.is_ipv4(), label) {
        m.attributes.push(AddressAttribute::Label(label.to_owned()));
    }
    if add {
        (NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewAddress(m))
    } else {
        (0, RouteNetlinkMessage::DelAddress(m))
    }
}

/// Adds (`add`) or removes `addr/prefix` on interface `index`; the kernel's refusal as an
/// [`NlError`] (`EEXIST`: already there; `EADDRNOTAVAIL`: not there).
pub(super) fn change_address(
    add: bool,
    index: u32,
    addr: IpAddr,
    prefix: u8,
    label: Option<&str>,
) -> Result<(), NlError> {
    let (flags, msg) = labeled_address_request(add, index, addr, prefix, label);
    Rtnl::open()?.request(flags, msg)
}

/// An `RTM_NEWADDR` payload: the interface index and the address the entry gives this host:
/// `IFA_LOCAL` (for IPv4 `IFA_ADDRESS` is the peer on point-to-point links); for IPv6
/// `IFA_ADDRESS` when there is no `IFA_LOCAL`. Other attributes are skipped undecoded.
fn decode_address(payload: &[u8]) -> Result<Option<(u32, IpAddr)>, DecodeError> {
    let header = AddressHeader::parse(payload)?;
    let (mut local, mut address) = (None, None);
    for nla in NlasIterator::new(payload.get(IFADDRMSG_LEN..).unwrap_or_default()) {
        let nla = nla?;
        if !matches!(nla.kind(), IFA_ADDRESS | IFA_LOCAL) {
            continue;
        }
        match AddressAttribute::parse(&nla)? {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    let own = match header.family {
        AddressFamily::Inet => local,
        AddressFamily::Inet6 => local.or(address),
        _ => None,
    };
    Ok(own.map(|ip| (header.index, ip)))
}

/// Every address of this network namespace (of `addr`'s family, or all with `None`) as
/// (interface index, address), from an `RTM_GETADDR` dump.
pub(super) fn addresses(family: Option<IpAddr>) -> Result<Vec<(u32, IpAddr)>, NlError> {
    let mut req = AddressMessage::default();
    req.header.family = family.map_or(AddressFamily::Unspec, family_of);
    let mut out = Vec::new();
    let mut bad = None;
    Rtnl::open()?.dump(RouteNetlinkMessage::GetAddress(req), |a| {
        if a.ty == RTM_NEWADDR {
            match decode_address(&a.payload) {
                Ok(entry) => out.extend(entry),
                Err(e) => bad = Some(e),
            }
        }
    })?;
    match bad {
        Some(e) => Err(invalid("RTM_NEWADDR", e)),
        None => Ok(out),
    }
}

/// Whether `addr` is on interface `index` (any prefix length).
pub(super) fn has_address(index: u32, addr: IpAddr) -> Result<bool, NlError> {
    Ok(addresses(Some(addr))?.contains(&(index, addr)))
}

/// The name of the interface holding `ip` in this network namespace, from an `RTM_GETADDR` dump
/// (`Ok(None)`: no interface holds it).
pub fn interface_holding(ip: IpAddr) -> io::Result<Option<String>> {
    let found = addresses(Some(ip)).map_err(|e| e.errno)?.into_iter().find(|(_, a)| *a == ip);
    match found {
        Some((index, _)) => Ok(Some(link_by_index(index).map_err(|e| e.errno)?.name)),
        None => Ok(None),
    }
}

/// The name of the interface holding `ip` in the calling thread's network namespace; `None` if
/// none does (or the kernel could not be asked, which is logged).
#[must_use]
pub fn interface_of(ip: IpAddr) -> Option<String> {
    interface_holding(ip).unwrap_or_else(|e| {
        tracing::warn!(%ip, error = %e, "looking up the interface holding an address (RTM_GETADDR)");
        None
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, NLMSG_ERROR};

    use super::*;

    fn bytes(flags: u16, msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = 7;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn label_is_sent_for_ipv4_only_and_only_when_adding() {
        let with = |add: bool, a: &str| match labeled_address_request(add, 3, a.parse().unwrap(), 24, Some("eth0:0")).1
        {
            RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => m.attributes,
            other => panic!("{other:?}"),
        };
        assert!(with(true, "198.18.0.100").contains(&AddressAttribute::Label("eth0:0".into())));
        assert!(!with(false, "198.18.0.100").iter().any(|a| matches!(a, AddressAttribute::Label(_))));
        assert!(!with(true, "fd00:efd::100").iter().any(|a| matches!(a, AddressAttribute::Label(_))));
        let (_, plain) = address_request(true, 3, "198.18.0.100".parse().unwrap(), 24);
        assert_eq!(
            bytes(0, plain.clone()),
            bytes(0, labeled_address_request(true, 3, "198.18.0.100".parse().unwrap(), 24, None).1)
        );
    }

    #[test]
    fn newaddr_request_layout() {
        let (flags, msg) = address_request(true, 3, "198.18.0.100".parse().unwrap(), 24);
        let m = bytes(flags | NLM_F_REQUEST | NLM_F_ACK, msg);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 20, "RTM_NEWADDR");
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x605, "REQUEST|ACK|EXCL|CREATE");
        assert_eq!(&m[16..20], &[2, 24, 0, 0], "AF_INET, /24, no flags, universe");
        assert_eq!(u32_at(&m, 20), 3);
        // IFA_LOCAL then IFA_ADDRESS, both the VIP.
        assert_eq!(&m[24..32], &[8, 0, 2, 0, 198, 18, 0, 100]);
        assert_eq!(&m[32..40], &[8, 0, 1, 0, 198, 18, 0, 100]);
    }

    #[test]
    fn ipv6_request_has_nodad_only_when_adding() {
        let a: IpAddr = "fd00:efd::100".parse().unwrap();
        let (flags, msg) = address_request(true, 2, a, 64);
        let add = bytes(flags, msg);
        assert_eq!(add[16], 10, "AF_INET6");
        assert_eq!(add[18], 0x02, "IFA_F_NODAD");
        assert_eq!(add.len(), 16 + 8 + 20 + 20);
        let (flags, msg) = address_request(false, 2, a, 64);
        assert_eq!(flags, 0);
        let del = bytes(flags, msg);
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), 21, "RTM_DELADDR");
        assert_eq!(del[18], 0);
        let (_, ll) = address_request(true, 2, "fe80::1".parse().unwrap(), 64);
        assert_eq!(bytes(0, ll)[19], 253, "link-local scope");
    }

    /// An `NLMSG_ERROR` datagram as the kernel sends it with `NETLINK_CAP_ACK` and
    /// `NETLINK_EXT_ACK`.
    fn error_datagram(code: i32, flags: u16, ext_msg: Option<&[u8]>) -> Vec<u8> {
        let mut body = code.to_ne_bytes().to_vec();
        let mut inner = vec![0u8; 16]; // the capped original header
        inner[..4].copy_from_slice(&16u32.to_ne_bytes());
        body.extend_from_slice(&inner);
        if let Some(m) = ext_msg {
            let len = u16::try_from(4 + m.len()).unwrap();
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            body.extend_from_slice(m);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&9u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn parse_error(d: &[u8]) -> Result<(), NlError> {
        let msg = NetlinkMessage::<Answer>::deserialize(d).expect("a netlink message");
        let NetlinkPayload::Error(e) = msg.payload else { panic!("not an error: {msg:?}") };
        nl_result(msg.header.flags, &e)
    }

    #[test]
    fn ack_and_errors_parse() {
        assert!(parse_error(&error_datagram(0, NLM_F_CAPPED, None)).is_ok());

        let d = error_datagram(-Errno::EXIST.raw_os_error(), NLM_F_CAPPED | NLM_F_ACK_TLVS, Some(b"Address exists\0"));
        let err = parse_error(&d).unwrap_err();
        assert!(err.is(Errno::EXIST));
        assert_eq!(err.msg.as_deref(), Some("Address exists"));

        let err = parse_error(&error_datagram(-Errno::ADDRNOTAVAIL.raw_os_error(), 0, None)).unwrap_err();
        assert!(err.is(Errno::ADDRNOTAVAIL));
        assert!(err.msg.is_none());
        // Garbage after the header is no message, not a failure to report the errno.
        let mut garbage = ErrorMessage::default();
        garbage.code = std::num::NonZeroI32::new(-1);
        garbage.header = vec![0xff; 20];
        let err = nl_result(NLM_F_CAPPED | NLM_F_ACK_TLVS, &garbage).unwrap_err();
        assert!(err.is(Errno::PERM) && err.msg.is_none());
    }

    fn emitted(m: &impl Emitable) -> Vec<u8> {
        let mut out = vec![0; m.buffer_len()];
        m.emit(&mut out);
        out
    }

    #[test]
    fn dump_entries_give_the_local_address() {
        let v4: IpAddr = "198.18.0.100".parse().unwrap();
        let peer: IpAddr = "198.18.0.1".parse().unwrap();
        let entry = |family, attrs: Vec<AddressAttribute>| {
            let mut m = AddressMessage::default();
            m.header.family = family;
            m.header.index = 4;
            m.attributes = attrs;
            decode_address(&emitted(&m)).expect("decodes")
        };
        let label = AddressAttribute::Label("veth0:vip".into());
        let a = entry(AddressFamily::Inet, vec![AddressAttribute::Address(peer), AddressAttribute::Local(v4), label]);
        assert_eq!(a, Some((4, v4)), "v4: IFA_LOCAL, IFA_ADDRESS is the peer");
        assert_eq!(entry(AddressFamily::Inet, vec![AddressAttribute::Address(peer)]), None);
        let v6: IpAddr = "fd00:efd::100".parse().unwrap();
        assert_eq!(entry(AddressFamily::Inet6, vec![AddressAttribute::Address(v6)]), Some((4, v6)));
        let p6: IpAddr = "fd00:efd::1".parse().unwrap();
        let with_peer = entry(AddressFamily::Inet6, vec![AddressAttribute::Address(p6), AddressAttribute::Local(v6)]);
        assert_eq!(with_peer, Some((4, v6)), "v6 with a peer: IFA_LOCAL");
        assert!(decode_address(&[2, 24, 0]).is_err(), "truncated header");
    }

    #[test]
    fn link_answers_decode_name_and_mac_despite_attributes_the_crate_cannot_parse() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.link_layer_type = LinkLayerType::Ether;
        m.attributes =
            vec![LinkAttribute::IfName("veth-efm0".into()), LinkAttribute::Address(vec![0x02, 0xef, 0, 0, 0, 1])];
        let mut payload = emitted(&m);
        // IFLA_MTU (4) as a 64-bit value: the crate's whole-message parse refuses it, as it
        // refuses attributes a kernel sends in a form it does not know.
        payload.extend_from_slice(&[12, 0, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(LinkMessage::parse(payload.as_slice()).is_err());
        let link = decode_link(&payload).expect("decodes");
        assert_eq!(link, Link { index: 7, name: "veth-efm0".into(), mac: Some([0x02, 0xef, 0, 0, 0, 1]) });
        m.header.link_layer_type = LinkLayerType::Loopback;
        assert_eq!(decode_link(&emitted(&m)).expect("decodes").mac, None, "not Ethernet: no MAC");
    }

    #[test]
    fn loopback_is_found_by_name_index_and_address() {
        // Every network namespace has `lo` with 127.0.0.1 (the test's own namespace here).
        let lo = link_by_name("lo").expect("lo");
        assert!(lo.index >= 1);
        assert_eq!(lo.mac, None, "loopback is not Ethernet");
        assert_eq!(link_by_index(lo.index).expect("lo by index").name, "lo");
        assert!(link_by_name("efm-no-such0").unwrap_err().is(Errno::NODEV));
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(has_address(lo.index, localhost).expect("dump"));
        assert_eq!(interface_of(localhost).as_deref(), Some("lo"));
        assert_eq!(interface_of("198.18.255.254".parse().unwrap()), None);
    }
}
