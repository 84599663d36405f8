//! Virtual IP management: add and remove the cluster's VIP with rtnetlink, announce it after
//! assigning (gratuitous ARP for IPv4, unsolicited Neighbor Advertisement for IPv6), and probe
//! whether another host still answers for it (RFC 5227 ARP probe; DAD-style Neighbor
//! Solicitation). No `ip`, `arping` or `ping` is run.
//!
//! EFM properties served: `virtual.ip` (the address), `virtual.ip.interface` (default: the
//! interface holding `bind.address`, see [`crate::agent::interface_of`]), `virtual.ip.prefix`,
//! `virtual.ip.single`, and `check.vip.before.promotion` ([`probe_in_use`] before promoting).
//!
//! # Threads, namespaces, privileges
//!
//! Every function acts in the **calling thread's** network namespace: netlink, packet and raw
//! sockets belong to the namespace of the thread that creates them, and interface names are
//! resolved there. Adding/removing addresses needs `CAP_NET_ADMIN`; announcing and probing need
//! `CAP_NET_RAW`.
//!
//! All functions block: netlink calls return in microseconds, [`assign`] sleeps between its
//! announcements (`count × interval`, 200 ms by default) and [`probe_in_use`] waits up to its
//! timeout (in `poll(2)`, no busy loop). Async callers run them with
//! `tokio::task::spawn_blocking`, which keeps the namespace of the runtime's blocking threads.

use std::{
    ffi::CString,
    fmt, io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Result of this module.
pub type Result<T, E = VipError> = std::result::Result<T, E>;

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// The operation an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Assign,
    Release,
    Query,
    Announce,
    Probe,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lookup => "looking up the interface",
            Op::Assign => "assigning the VIP",
            Op::Release => "releasing the VIP",
            Op::Query => "checking whether the VIP is assigned",
            Op::Announce => "announcing the VIP",
            Op::Probe => "probing whether the VIP is in use",
        })
    }
}

/// Errors of VIP management. Each names the operation, the interface and (where there is one)
/// the address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VipError {
    #[error("{op}{}: no network interface named {iface:?} in this network namespace ({source}); \
             check virtual.ip.interface", for_addr(*.addr))]
    Interface { op: Op, iface: String, addr: Option<IpAddr>, source: io::Error },

    #[error("{op}: invalid VIP {addr}/{prefix}: {reason}")]
    InvalidAddress { op: Op, addr: IpAddr, prefix: u8, reason: &'static str },

    #[error("{op} {addr}/{prefix} on {iface}: the kernel refused: {source}{}{}",
            kernel_detail(.kernel_msg.as_deref()), hint(source))]
    Netlink { op: Op, iface: String, addr: IpAddr, prefix: u8, source: io::Error, kernel_msg: Option<String> },

    #[error("{op} {addr} on {iface}: {what}: {source}{}", hint(source))]
    Socket { op: Op, iface: String, addr: IpAddr, what: &'static str, source: io::Error },

    #[error("{op} {addr} on {iface}: the interface is not Ethernet (no ARP/Neighbor Discovery on it)")]
    NotEthernet { op: Op, iface: String, addr: IpAddr },
}

fn for_addr(addr: Option<IpAddr>) -> String {
    addr.map_or_else(String::new, |a| format!(" {a}"))
}

fn kernel_detail(msg: Option<&str>) -> String {
    msg.map_or_else(String::new, |m| format!(" ({m})"))
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => " — needs root (CAP_NET_ADMIN to change addresses, CAP_NET_RAW to send ARP/ND)",
        Some(libc::ENETDOWN) => " — is the interface up?",
        _ => "",
    }
}

/// What [`assign`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// The address was added (and announced).
    Added,
    /// The address was already on the interface (`EEXIST`); it was announced again.
    AlreadyAssigned,
}

/// What [`release`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The address was removed.
    Removed,
    /// The address was not on the interface (`EADDRNOTAVAIL`); nothing changed.
    NotAssigned,
}

/// How an assignment is announced: `count` rounds `interval` apart. An IPv4 round is a
/// gratuitous ARP request and a gratuitous ARP reply (receivers differ in which they honour); an
/// IPv6 round is one unsolicited Neighbor Advertisement with the override flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub count: u32,
    pub interval: Duration,
}

impl Default for Announce {
    /// 3 rounds, 100 ms apart.
    fn default() -> Self {
        Self { count: 3, interval: Duration::from_millis(100) }
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    ifindex_for(name, Op::Lookup, None)
}

fn ifindex_for(name: &str, op: Op, addr: Option<IpAddr>) -> Result<u32> {
    let err = |source| VipError::Interface { op, iface: name.to_owned(), addr, source };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "interface names are 1 to 15 bytes")));
    }
    let c = CString::new(name).map_err(|_| err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in name")))?;
    // SAFETY: c is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(idx)
}

/// Adds `addr/prefix` to `iface` and announces it with [`Announce::default`].
/// See [`assign_with`].
pub fn assign(iface: &str, addr: IpAddr, prefix: u8) -> Result<Assigned> {
    assign_with(iface, addr, prefix, &Announce::default())
}

/// Adds `addr/prefix` to `iface` (`RTM_NEWADDR`, create-exclusive; IPv6 with `IFA_F_NODAD`, so the
/// address is usable at once), then announces it (also when it was already assigned: the
/// announcement refreshes the neighbours' caches). On a non-Ethernet interface nothing is
/// announced. If the announcement fails the error is returned, but the address stays assigned.
pub fn assign_with(iface: &str, addr: IpAddr, prefix: u8, announce: &Announce) -> Result<Assigned> {
    check_addr(Op::Assign, addr, prefix)?;
    let index = ifindex_for(iface, Op::Assign, Some(addr))?;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let outcome = match netlink_addr(RTM_NEWADDR, flags, index, addr, prefix) {
        Ok(()) => {
            tracing::info!(%iface, vip = %addr, prefix, "VIP assigned");
            Assigned::Added
        }
        Err(e) if e.errno.raw_os_error() == Some(libc::EEXIST) => {
            tracing::warn!(%iface, vip = %addr, prefix, "VIP was already assigned on this node");
            Assigned::AlreadyAssigned
        }
        Err(e) => return Err(e.into_vip(Op::Assign, iface, addr, prefix)),
    };
    let sent = announce_on(iface, index, addr, announce)?;
    tracing::debug!(%iface, vip = %addr, rounds = sent, "VIP announced");
    Ok(outcome)
}

/// Removes `addr/prefix` from `iface` (`RTM_DELADDR`). The prefix must be the one it was
/// assigned with.
pub fn release(iface: &str, addr: IpAddr, prefix: u8) -> Result<Released> {
    check_addr(Op::Release, addr, prefix)?;
    let index = ifindex_for(iface, Op::Release, Some(addr))?;
    match netlink_addr(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, index, addr, prefix) {
        Ok(()) => {
            tracing::info!(%iface, vip = %addr, prefix, "VIP released");
            Ok(Released::Removed)
        }
        Err(e) if e.errno.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            tracing::warn!(%iface, vip = %addr, prefix, "VIP was not assigned on this node");
            Ok(Released::NotAssigned)
        }
        Err(e) => Err(e.into_vip(Op::Release, iface, addr, prefix)),
    }
}

/// Whether `addr` is assigned to `iface` (any prefix length), from an `RTM_GETADDR` dump.
pub fn is_assigned_here(iface: &str, addr: IpAddr) -> Result<bool> {
    let index = ifindex_for(iface, Op::Query, Some(addr))?;
    let nl = Netlink::open().map_err(|e| NlError::from(e).into_vip(Op::Query, iface, addr, 0))?;
    let seq = next_seq();
    let msg = nl_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &ifaddrmsg(addr, 0, 0, 0), &[]);
    let mut found = false;
    nl.dump(&msg, seq, |ty, payload| {
        if ty == RTM_NEWADDR && addr_entry_matches(payload, index, addr) {
            found = true;
        }
    })
    .map_err(|e| e.into_vip(Op::Query, iface, addr, 0))?;
    Ok(found)
}

/// Announces `addr` on `iface` as [`assign_with`] does after adding it; returns the number of
/// rounds sent (0 on a non-Ethernet interface). An IPv6 address must be assigned here (the
/// advertisement is sent from it).
pub fn announce(iface: &str, addr: IpAddr, announce: &Announce) -> Result<u32> {
    let index = ifindex_for(iface, Op::Announce, Some(addr))?;
    announce_on(iface, index, addr, announce)
}

/// Whether another host answers for `addr` on `iface` within `timeout`: returns the MAC of the
/// first one that does. IPv4: RFC 5227 ARP probes (sender IP 0.0.0.0, target `addr`); any ARP
/// packet whose sender IP is `addr` counts. IPv6: DAD-style Neighbor Solicitations (unspecified
/// source, to the solicited-node group); a Neighbor Advertisement for `addr` counts. Three probes
/// are sent, at 0, ⅓ and ⅔ of the timeout, so one lost frame does not hide a holder.
///
/// Our own frames and answers carrying this interface's MAC are ignored. Consequently an
/// assignment on *this* node is not reported; use [`is_assigned_here`] for that. An NA without
/// a target link-layer option (which RFC 4861 requires in answers to multicast solicitations)
/// still counts, reported as MAC 00:00:00:00:00:00.
pub fn probe_in_use(iface: &str, addr: IpAddr, timeout: Duration) -> Result<Option<Mac>> {
    let index = ifindex_for(iface, Op::Probe, Some(addr))?;
    let mac = hw_addr(iface)
        .map_err(|e| sock_err(Op::Probe, iface, addr, "reading the interface's MAC (SIOCGIFHWADDR)", e))?
        .ok_or_else(|| VipError::NotEthernet { op: Op::Probe, iface: iface.to_owned(), addr })?;
    let answer = match addr {
        IpAddr::V4(v4) => probe_v4(iface, index, mac, v4, timeout),
        IpAddr::V6(v6) => probe_v6(iface, index, mac, v6, timeout),
    }?;
    if let Some(m) = answer {
        tracing::info!(%iface, vip = %addr, holder = %fmt_mac(m), "VIP is in use by another host");
    }
    Ok(answer)
}

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn fmt_mac(m: Mac) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

fn check_addr(op: Op, addr: IpAddr, prefix: u8) -> Result<()> {
    let bad = |reason| Err(VipError::InvalidAddress { op, addr, prefix, reason });
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return bad(if addr.is_ipv4() {
            "the prefix length must be 1..=32"
        } else {
            "the prefix length must be 1..=128"
        });
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return bad("not a unicast address");
    }
    if let IpAddr::V4(v4) = addr {
        if v4.is_broadcast() {
            return bad("not a unicast address");
        }
    }
    Ok(())
}

fn sock_err(op: Op, iface: &str, addr: IpAddr, what: &'static str, source: io::Error) -> VipError {
    VipError::Socket { op, iface: iface.to_owned(), addr, what, source }
}

// ---------------------------------------------------------------------------------------------
// rtnetlink

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR`: the original request's payload was left out (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`: extended-ACK attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;

static NL_SEQ: AtomicU32 = AtomicU32::new(1);

fn next_seq() -> u32 {
    NL_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A netlink failure: the errno and the kernel's extended-ACK message, if any.
#[derive(Debug)]
struct NlError {
    errno: io::Error,
    msg: Option<String>,
}

impl From<io::Error> for NlError {
    fn from(errno: io::Error) -> Self {
        Self { errno, msg: None }
    }
}

impl NlError {
    fn into_vip(self, op: Op, iface: &str, addr: IpAddr, prefix: u8) -> VipError {
        VipError::Netlink { op, iface: iface.to_owned(), addr, prefix, source: self.errno, kernel_msg: self.msg }
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "address family constants are small and positive"
)]
const fn family(f: libc::c_int) -> u8 {
    f as u8
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "address family constants are small and positive"
)]
const fn sa_family(f: libc::c_int) -> libc::sa_family_t {
    f as libc::sa_family_t
}

#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "ETH_P_* constants are 16-bit")]
const fn eth_p(p: libc::c_int) -> u16 {
    p as u16
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("socket address sizes fit socklen_t")
}

/// `struct ifaddrmsg`.
fn ifaddrmsg(addr: IpAddr, prefix: u8, flags: u8, index: u32) -> [u8; 8] {
    let (fam, scope) = match addr {
        IpAddr::V4(_) => (family(libc::AF_INET), RT_SCOPE_UNIVERSE),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => (family(libc::AF_INET6), RT_SCOPE_LINK),
        IpAddr::V6(_) => (family(libc::AF_INET6), RT_SCOPE_UNIVERSE),
    };
    let i = index.to_ne_bytes();
    [fam, prefix, flags, scope, i[0], i[1], i[2], i[3]]
}

/// One netlink message: header, fixed body, attributes.
fn nl_message(ty: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&[0; 4]); // length, set below
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(body);
    m.resize(align4(m.len()), 0);
    for (aty, data) in attrs {
        let len = u16::try_from(4 + data.len()).expect("attribute fits a netlink attribute");
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&aty.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(align4(m.len()), 0);
    }
    let len = u32::try_from(m.len()).expect("netlink message fits u32");
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `RTM_NEWADDR`/`RTM_DELADDR` request for `addr/prefix` on interface `index`.
fn addr_request(ty: u16, flags: u16, seq: u32, index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let ifa_flags = if addr.is_ipv6() && ty == RTM_NEWADDR { IFA_F_NODAD } else { 0 };
    let a = ip_bytes(addr);
    nl_message(ty, flags, seq, &ifaddrmsg(addr, prefix, ifa_flags, index), &[(IFA_LOCAL, &a), (IFA_ADDRESS, &a)])
}

fn netlink_addr(ty: u16, flags: u16, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NlError> {
    let nl = Netlink::open()?;
    let seq = next_seq();
    nl.request(&addr_request(ty, flags, seq, index, addr, prefix), seq)
}

/// Header fields of a received netlink message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NlHdr {
    ty: u16,
    flags: u16,
    seq: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits a datagram into messages; stops at the first malformed length.
fn nl_messages(mut buf: &[u8]) -> Vec<(NlHdr, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let hdr = NlHdr { ty: u16_at(buf, 4), flags: u16_at(buf, 6), seq: u32_at(buf, 8) };
        out.push((hdr, &buf[NLMSG_HDRLEN..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// Route attributes `(type, data)` in `buf`.
fn nl_attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16_at(buf, 0));
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((u16_at(buf, 2) & 0x3fff, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// An `NLMSG_ERROR` payload: `Ok(())` for an ACK (error 0), else the errno and the kernel's
/// extended-ACK message.
fn parse_nlmsgerr(flags: u16, payload: &[u8]) -> Result<(), NlError> {
    if payload.len() < 4 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink error message").into());
    }
    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if code == 0 {
        return Ok(());
    }
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 4 + NLMSG_HDRLEN {
        let inner = if flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { u32_at(payload, 4) as usize };
        if let Some(tlvs) = payload.get(4 + align4(inner)..) {
            msg = nl_attrs(tlvs).into_iter().find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, d)| {
                let d = d.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(d).into_owned()
            });
        }
    }
    Err(NlError { errno: io::Error::from_raw_os_error(code.saturating_neg()), msg })
}

/// Whether an `RTM_NEWADDR` payload (ifaddrmsg + attributes) is `addr` on interface `index`.
fn addr_entry_matches(payload: &[u8], index: u32, addr: IpAddr) -> bool {
    if payload.len() < 8 || u32_at(payload, 4) != index {
        return false;
    }
    let want_family = if addr.is_ipv4() { family(libc::AF_INET) } else { family(libc::AF_INET6) };
    if payload[0] != want_family {
        return false;
    }
    let want = ip_bytes(addr);
    // IPv4: IFA_LOCAL is the address (IFA_ADDRESS is the peer on point-to-point links).
    // IPv6: IFA_ADDRESS, or IFA_LOCAL when a peer is set.
    nl_attrs(&payload[8..])
        .iter()
        .any(|(t, d)| (*t == IFA_LOCAL || (*t == IFA_ADDRESS && addr.is_ipv6())) && *d == want.as_slice())
}

/// A `NETLINK_ROUTE` socket.
struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked and owned.
        let fd =
            owned(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) })?;
        // SAFETY: all-zero is a valid sockaddr_nl.
        let mut sa: libc::sockaddr_nl = unsafe { zeroed() };
        sa.nl_family = sa_family(libc::AF_NETLINK);
        bind(&fd, &sa)?;
        // Best effort (old kernels lack them): kernel error strings, and ACKs without our request.
        let _ = setsockopt(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, &1 as &libc::c_int);
        let _ = setsockopt(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, &1 as &libc::c_int);
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(Self { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_nl; pid 0 addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { zeroed() };
        to.nl_family = sa_family(libc::AF_NETLINK);
        send_to(&self.fd, msg, &to)
    }

    fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no answer from the kernel (netlink) in 5 s",
                        ))
                    }
                    _ => return Err(e),
                }
            }
            let n = usize::try_from(n).unwrap_or_default();
            if n > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink message larger than the receive buffer",
                ));
            }
            return Ok(&buf[..n]);
        }
    }

    /// Sends a request with `NLM_F_ACK` and waits for its ACK or error.
    fn request(&self, msg: &[u8], seq: u32) -> Result<(), NlError> {
        self.send(msg)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let data = self.recv(&mut buf)?;
            for (hdr, payload) in nl_messages(data) {
                if hdr.seq == seq && hdr.ty == NLMSG_ERROR {
                    return parse_nlmsgerr(hdr.flags, payload);
                }
            }
        }
    }

    /// Sends a dump request and calls `f(type, payload)` for each answer until `NLMSG_DONE`.
    fn dump(&self, msg: &[u8], seq: u32, mut f: impl FnMut(u16, &[u8])) -> Result<(), NlError> {
        self.send(msg)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let data = self.recv(&mut buf)?;
            for (hdr, payload) in nl_messages(data) {
                if hdr.seq != seq {
                    continue;
                }
                match hdr.ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        parse_nlmsgerr(hdr.flags, payload)?;
                        return Ok(());
                    }
                    ty => f(ty, payload),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points to a valid T of size_of::<T>() bytes for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, std::ptr::from_ref(val).cast(), socklen::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind<A>(fd: &OwnedFd, addr: &A) -> io::Result<()> {
    // SAFETY: addr is a complete socket address structure of size_of::<A>() bytes.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(addr).cast(), socklen::<A>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_to<A>(fd: &OwnedFd, buf: &[u8], to: &A) -> io::Result<()> {
    loop {
        // SAFETY: buf is valid for reads of its length; `to` is a complete socket address.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_ref(to).cast(),
                socklen::<A>(),
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn bind_to_device(fd: &OwnedFd, iface: &str) -> io::Result<()> {
    let name = iface.as_bytes();
    let len = libc::socklen_t::try_from(name.len()).expect("interface name length fits socklen_t");
    // SAFETY: name is valid for reads of len bytes.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BINDTODEVICE, name.as_ptr().cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface's Ethernet address, `None` if it is not an Ethernet interface.
fn hw_addr(iface: &str) -> io::Result<Option<Mac>> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned.
    let fd = owned(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: all-zero is a valid ifreq (a name and a union of plain data).
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(iface.as_bytes().iter().take(libc::IFNAMSIZ - 1)) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: SIOCGIFHWADDR reads the name from and writes a sockaddr into the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds ifru_hwaddr.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = s.to_ne_bytes()[0];
    }
    Ok(Some(mac))
}

fn sockaddr_ll(ifindex: u32, proto: u16, dst: Option<Mac>) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = sa_family(libc::AF_PACKET);
    sa.sll_protocol = proto.to_be();
    sa.sll_ifindex = libc::c_int::try_from(ifindex).expect("interface indexes fit c_int");
    if let Some(mac) = dst {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&mac);
    }
    sa
}

/// An `AF_PACKET`/`SOCK_DGRAM` socket (the kernel builds the Ethernet header). With `proto`, it
/// is bound to that protocol on `ifindex` and receives it there only; with `None` it receives
/// nothing (created with protocol 0) and is used for sending.
fn packet_socket(ifindex: u32, proto: Option<u16>) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned.
    let fd = owned(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    if let Some(p) = proto {
        bind(&fd, &sockaddr_ll(ifindex, p, None))?;
    }
    Ok(fd)
}

/// Waits until `fd` is readable or `wait` has passed; `true` if readable.
fn wait_readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let ms = libc::c_int::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(rc > 0)
}

/// One non-blocking receive attempt.
enum Rx {
    /// Nothing queued.
    Empty,
    /// A frame that is not an answer.
    Ignored,
    /// Someone answers for the address, with this MAC.
    Answer(Mac),
}

const PROBES: u32 = 3;

/// Sends `PROBES` probes spread over `timeout` and polls `rx` for answers until the deadline.
fn probe_loop(
    fd: &OwnedFd,
    timeout: Duration,
    mut send: impl FnMut() -> io::Result<()>,
    mut recv: impl FnMut() -> io::Result<Rx>,
) -> io::Result<Option<Mac>> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut probes_sent = 0;
    loop {
        let now = Instant::now();
        let next_send = start + timeout * probes_sent / PROBES;
        if probes_sent < PROBES && now >= next_send {
            send()?;
            probes_sent += 1;
            continue;
        }
        if now >= deadline {
            return Ok(None);
        }
        let until = if probes_sent < PROBES { next_send.min(deadline) } else { deadline };
        if wait_readable(fd, until.saturating_duration_since(now))? {
            loop {
                match recv()? {
                    Rx::Empty => break,
                    Rx::Ignored => {}
                    Rx::Answer(mac) => return Ok(Some(mac)),
                }
            }
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

fn announce_on(iface: &str, index: u32, addr: IpAddr, a: &Announce) -> Result<u32> {
    let mac = match hw_addr(iface) {
        Ok(Some(mac)) => mac,
        Ok(None) => {
            tracing::debug!(%iface, vip = %addr, "not an Ethernet interface: VIP not announced");
            return Ok(0);
        }
        Err(e) => return Err(sock_err(Op::Announce, iface, addr, "reading the interface's MAC (SIOCGIFHWADDR)", e)),
    };
    match addr {
        IpAddr::V4(v4) => announce_v4(index, mac, v4, a),
        IpAddr::V6(v6) => announce_v6(iface, index, mac, v6, a),
    }
    .map_err(|(what, e)| sock_err(Op::Announce, iface, addr, what, e))?;
    Ok(a.count)
}

fn pause_between(i: u32, a: &Announce) {
    if i + 1 < a.count {
        std::thread::sleep(a.interval);
    }
}

type StepResult<T> = std::result::Result<T, (&'static str, io::Error)>;

fn step<T>(what: &'static str, r: io::Result<T>) -> StepResult<T> {
    r.map_err(|e| (what, e))
}

// ---------------------------------------------------------------------------------------------
// IPv4: ARP

const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const BROADCAST: Mac = [0xff; 6];
/// `sll_pkttype` of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;

/// An Ethernet/IPv4 ARP packet (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Arp {
    op: u16,
    sha: Mac,
    spa: Ipv4Addr,
    tha: Mac,
    tpa: Ipv4Addr,
}

impl Arp {
    fn to_bytes(self) -> [u8; 28] {
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

    fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 28 || b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
            return None;
        }
        let mac = |at: usize| -> Mac { b[at..at + 6].try_into().expect("6 bytes") };
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        Some(Self { op: u16::from_be_bytes([b[6], b[7]]), sha: mac(8), spa: ip(14), tha: mac(18), tpa: ip(24) })
    }
}

/// Gratuitous ARP, both forms: a request (RFC 5227 announcement: sender = target = VIP, target
/// MAC zero) and a reply (target MAC = sender MAC, which Linux requires to treat a reply as
/// gratuitous), broadcast.
fn garp_pair(mac: Mac, vip: Ipv4Addr) -> [[u8; 28]; 2] {
    [
        Arp { op: ARPOP_REQUEST, sha: mac, spa: vip, tha: [0; 6], tpa: vip }.to_bytes(),
        Arp { op: ARPOP_REPLY, sha: mac, spa: vip, tha: mac, tpa: vip }.to_bytes(),
    ]
}

fn announce_v4(index: u32, mac: Mac, vip: Ipv4Addr, a: &Announce) -> StepResult<()> {
    let proto = eth_p(libc::ETH_P_ARP);
    let fd = step("opening a packet socket", packet_socket(index, None))?;
    let to = sockaddr_ll(index, proto, Some(BROADCAST));
    for i in 0..a.count {
        for frame in garp_pair(mac, vip) {
            step("sending a gratuitous ARP", send_to(&fd, &frame, &to))?;
        }
        pause_between(i, a);
    }
    Ok(())
}

fn probe_v4(iface: &str, index: u32, mac: Mac, vip: Ipv4Addr, timeout: Duration) -> Result<Option<Mac>> {
    let err = |what, e| sock_err(Op::Probe, iface, IpAddr::V4(vip), what, e);
    let proto = eth_p(libc::ETH_P_ARP);
    let fd = packet_socket(index, Some(proto)).map_err(|e| err("opening an ARP packet socket", e))?;
    let probe = Arp { op: ARPOP_REQUEST, sha: mac, spa: Ipv4Addr::UNSPECIFIED, tha: [0; 6], tpa: vip }.to_bytes();
    let to = sockaddr_ll(index, proto, Some(BROADCAST));
    let ifindex = libc::c_int::try_from(index).expect("interface indexes fit c_int");
    let recv = || -> io::Result<Rx> {
        let mut buf = [0u8; 128];
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: buf, from and len are valid for writes of the sizes passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if would_block(&e) { Ok(Rx::Empty) } else { Err(e) };
        }
        let n = usize::try_from(n).unwrap_or_default().min(buf.len());
        if from.sll_pkttype == PACKET_OUTGOING || from.sll_ifindex != ifindex {
            return Ok(Rx::Ignored);
        }
        Ok(match Arp::parse(&buf[..n]) {
            Some(arp) if arp.spa == vip && arp.sha != mac => Rx::Answer(arp.sha),
            _ => Rx::Ignored,
        })
    };
    probe_loop(&fd, timeout, || send_to(&fd, &probe, &to), recv).map_err(|e| err("sending/receiving ARP probes", e))
}

// ---------------------------------------------------------------------------------------------
// IPv6: Neighbor Discovery

const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ICMP6_FILTER: libc::c_int = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Unsolicited Neighbor Advertisement for `target` (override flag, target link-layer address
/// option). The checksum is left zero: the kernel computes it on `IPPROTO_ICMPV6` raw sockets.
fn neighbor_advert(target: Ipv6Addr, mac: Mac) -> [u8; 32] {
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
fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet multicast address of an IPv6 multicast group (`33:33` + low 32 bits).
fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The `ICMPv6` checksum of `msg` (its checksum field zero) between `src` and `dst`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(msg.len()).expect("ICMPv6 message length fits u32").to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// A DAD-style Neighbor Solicitation for `target` as a full IPv6 packet: source `::` (so no
/// source link-layer option), destination the solicited-node group, hop limit 255. Built by hand
/// because the kernel would put one of our addresses in the source of a raw-socket packet.
fn dad_solicit_packet(target: Ipv6Addr) -> [u8; 64] {
    let dst = solicited_node(target);
    let mut ns = [0u8; 24];
    ns[0] = ND_NEIGHBOR_SOLICIT;
    ns[8..24].copy_from_slice(&target.octets());
    let csum = icmpv6_checksum(Ipv6Addr::UNSPECIFIED, dst, &ns);
    ns[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut p = [0u8; 64];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&24u16.to_be_bytes());
    p[6] = 58; // ICMPv6
    p[7] = 255;
    // source ::: bytes 8..24 stay zero
    p[24..40].copy_from_slice(&dst.octets());
    p[40..].copy_from_slice(&ns);
    p
}

/// A Neighbor Advertisement (`ICMPv6` message, no IPv6 header): its target and target link-layer
/// address option, if present.
fn parse_na(b: &[u8]) -> Option<(Ipv6Addr, Option<Mac>)> {
    if b.len() < 24 || b[0] != ND_NEIGHBOR_ADVERT || b[1] != 0 {
        return None;
    }
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&b[8..24]).expect("16 bytes"));
    let mut opts = &b[24..];
    let mut tlla = None;
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None; // RFC 4861 7.1.2: options must have a non-zero length
        }
        if opts[0] == ND_OPT_TARGET_LL_ADDR && len == 8 {
            tlla = Some(opts[2..8].try_into().expect("6 bytes"));
        }
        opts = &opts[len..];
    }
    Some((target, tlla))
}

fn sockaddr_in6(addr: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = sa_family(libc::AF_INET6);
    sa.sin6_addr.s6_addr = addr.octets();
    sa.sin6_scope_id = scope;
    sa
}

fn icmpv6_socket(iface: &str) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned.
    let fd = owned(unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMPV6) })?;
    bind_to_device(&fd, iface)?;
    Ok(fd)
}

fn announce_v6(iface: &str, index: u32, mac: Mac, vip: Ipv6Addr, a: &Announce) -> StepResult<()> {
    let fd = step("opening a raw ICMPv6 socket", icmpv6_socket(iface))?;
    let scope = if vip.is_unicast_link_local() { index } else { 0 };
    step("binding to the VIP (is it assigned here?)", bind(&fd, &sockaddr_in6(vip, scope)))?;
    let hops: libc::c_int = 255;
    let ifidx = libc::c_int::try_from(index).expect("interface indexes fit c_int");
    step("setting IPV6_MULTICAST_IF", setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &ifidx))?;
    step("setting IPV6_MULTICAST_HOPS", setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops))?;
    // Our own stack would see an NA for its own address.
    step(
        "setting IPV6_MULTICAST_LOOP",
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &0 as &libc::c_int),
    )?;
    let na = neighbor_advert(vip, mac);
    let to = sockaddr_in6(ALL_NODES, index);
    for i in 0..a.count {
        step("sending an unsolicited Neighbor Advertisement", send_to(&fd, &na, &to))?;
        pause_between(i, a);
    }
    Ok(())
}

/// Hop limit and arrival interface from a `recvmsg` control buffer.
fn parse_cmsgs(control: &[u8]) -> (Option<i32>, Option<u32>) {
    let word = size_of::<usize>();
    let hdr = size_of::<libc::cmsghdr>().next_multiple_of(word);
    let (mut hops, mut ifindex) = (None, None);
    let mut rest = control;
    while rest.len() >= hdr {
        let len = usize::from_ne_bytes(rest[..word].try_into().expect("word"));
        let level = i32::from_ne_bytes(rest[word..word + 4].try_into().expect("4 bytes"));
        let ty = i32::from_ne_bytes(rest[word + 4..word + 8].try_into().expect("4 bytes"));
        if len < hdr || len > rest.len() {
            break;
        }
        let data = &rest[hdr..len];
        if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_HOPLIMIT && data.len() >= 4 {
            hops = Some(i32::from_ne_bytes(data[..4].try_into().expect("4 bytes")));
        }
        if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO && data.len() >= 20 {
            ifindex = Some(u32::from_ne_bytes(data[16..20].try_into().expect("4 bytes")));
        }
        rest = &rest[len.next_multiple_of(word).min(rest.len())..];
    }
    (hops, ifindex)
}

fn probe_v6(iface: &str, index: u32, mac: Mac, vip: Ipv6Addr, timeout: Duration) -> Result<Option<Mac>> {
    let err = |what, e| sock_err(Op::Probe, iface, IpAddr::V6(vip), what, e);
    // Receiver first, so no answer is missed: NAs only, with hop limit and arrival interface.
    let rx = icmpv6_socket(iface).map_err(|e| err("opening a raw ICMPv6 socket", e))?;
    let mut filter = [u32::MAX; 8]; // a set bit blocks that type
    filter[usize::from(ND_NEIGHBOR_ADVERT >> 5)] &= !(1u32 << (ND_NEIGHBOR_ADVERT & 31));
    let on: libc::c_int = 1;
    setsockopt(&rx, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)
        .and_then(|()| setsockopt(&rx, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &on))
        .and_then(|()| setsockopt(&rx, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &on))
        .map_err(|e| err("configuring the ICMPv6 socket", e))?;
    let tx = packet_socket(index, None).map_err(|e| err("opening a packet socket", e))?;
    let group = solicited_node(vip);
    let to = sockaddr_ll(index, eth_p(libc::ETH_P_IPV6), Some(multicast_mac(group)));
    let ns = dad_solicit_packet(vip);
    let recv = || -> io::Result<Rx> {
        let mut buf = [0u8; 512];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: all-zero is a valid msghdr (no name, no iov, no control yet).
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg points to a buffer and a control buffer that outlive the call.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if would_block(&e) { Ok(Rx::Empty) } else { Err(e) };
        }
        let n = usize::try_from(n).unwrap_or_default().min(buf.len());
        let clen = msg.msg_controllen.min(size_of_val(&control));
        // SAFETY: the control buffer is a plain u64 array, readable as bytes.
        let cbytes = unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), clen) };
        let (hops, arrived_on) = parse_cmsgs(cbytes);
        // Only on-link answers (RFC 4861 7.1.2) that arrived on this interface.
        if hops != Some(255) || arrived_on != Some(index) {
            return Ok(Rx::Ignored);
        }
        Ok(match parse_na(&buf[..n]) {
            Some((target, tlla)) if target == vip && tlla != Some(mac) => Rx::Answer(tlla.unwrap_or([0; 6])),
            _ => Rx::Ignored,
        })
    };
    probe_loop(&rx, timeout, || send_to(&tx, &ns, &to), recv)
        .map_err(|e| err("sending Neighbor Solicitations/receiving advertisements", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0xef, 0, 0, 0, 1];

    #[test]
    fn newaddr_request_layout() {
        let m = addr_request(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            7,
            3,
            "198.18.0.100".parse().unwrap(),
            24,
        );
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWADDR);
        assert_eq!(u16_at(&m, 6), 0x605);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(&m[16..20], &[family(libc::AF_INET), 24, 0, RT_SCOPE_UNIVERSE]);
        assert_eq!(u32_at(&m, 20), 3);
        let attrs = nl_attrs(&m[24..]);
        assert_eq!(attrs, vec![(IFA_LOCAL, &[198, 18, 0, 100][..]), (IFA_ADDRESS, &[198, 18, 0, 100][..])]);
    }

    #[test]
    fn ipv6_request_has_nodad_only_when_adding() {
        let a: IpAddr = "fd00:efd::100".parse().unwrap();
        let add = addr_request(RTM_NEWADDR, NLM_F_REQUEST, 1, 2, a, 64);
        assert_eq!(add[16], family(libc::AF_INET6));
        assert_eq!(add[18], IFA_F_NODAD);
        assert_eq!(add.len(), 16 + 8 + 20 + 20);
        let del = addr_request(RTM_DELADDR, NLM_F_REQUEST, 1, 2, a, 64);
        assert_eq!(del[18], 0);
    }

    fn error_msg(code: i32, flags: u16, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = code.to_ne_bytes().to_vec();
        body.extend_from_slice(&nl_message(RTM_NEWADDR, 0, 9, &[], &[])); // capped original header
        nl_message(NLMSG_ERROR, flags, 9, &body, tlvs)
    }

    #[test]
    fn ack_and_errors_parse() {
        let ack = error_msg(0, NLM_F_CAPPED, &[]);
        let msgs = nl_messages(&ack);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0, NlHdr { ty: NLMSG_ERROR, flags: NLM_F_CAPPED, seq: 9 });
        assert!(parse_nlmsgerr(msgs[0].0.flags, msgs[0].1).is_ok());

        let e = error_msg(-libc::EEXIST, NLM_F_CAPPED | NLM_F_ACK_TLVS, &[(NLMSGERR_ATTR_MSG, b"Address exists\0")]);
        let (hdr, payload) = nl_messages(&e)[0];
        let err = parse_nlmsgerr(hdr.flags, payload).unwrap_err();
        assert_eq!(err.errno.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(err.msg.as_deref(), Some("Address exists"));

        let e = error_msg(-libc::EADDRNOTAVAIL, 0, &[]);
        let (hdr, payload) = nl_messages(&e)[0];
        let err = parse_nlmsgerr(hdr.flags, payload).unwrap_err();
        assert_eq!(err.errno.raw_os_error(), Some(libc::EADDRNOTAVAIL));
        assert!(err.msg.is_none());
        assert!(parse_nlmsgerr(0, &[1, 2]).is_err(), "truncated");
    }

    #[test]
    fn several_messages_and_garbage() {
        let mut buf = nl_message(RTM_NEWADDR, 2, 5, &[1, 2, 3], &[]);
        buf.extend(nl_message(NLMSG_DONE, 2, 5, &[0; 4], &[]));
        buf.extend_from_slice(&[0xff; 10]);
        let msgs = nl_messages(&buf);
        assert_eq!(msgs.iter().map(|(h, _)| h.ty).collect::<Vec<_>>(), vec![RTM_NEWADDR, NLMSG_DONE]);
        assert_eq!(msgs[0].1, &[1, 2, 3, 0]);
        assert!(nl_messages(&[0u8; 8]).is_empty());
        assert!(nl_attrs(&[0xff, 0xff, 1, 0]).is_empty());
    }

    #[test]
    fn getaddr_entries_match_by_index_family_and_address() {
        let v4: IpAddr = "198.18.0.100".parse().unwrap();
        let entry = |addr: IpAddr, index: u32, ty: u16| {
            let b = ip_bytes(addr);
            nl_message(RTM_NEWADDR, 0, 1, &ifaddrmsg(addr, 24, 0, index), &[(ty, &b)])[16..].to_vec()
        };
        assert!(addr_entry_matches(&entry(v4, 4, IFA_LOCAL), 4, v4));
        assert!(!addr_entry_matches(&entry(v4, 5, IFA_LOCAL), 4, v4));
        assert!(!addr_entry_matches(&entry(v4, 4, IFA_ADDRESS), 4, v4), "v4 peer address is not ours");
        assert!(!addr_entry_matches(&entry("198.18.0.1".parse().unwrap(), 4, IFA_LOCAL), 4, v4));
        let v6: IpAddr = "fd00:efd::100".parse().unwrap();
        assert!(addr_entry_matches(&entry(v6, 4, IFA_ADDRESS), 4, v6));
        assert!(!addr_entry_matches(&entry(v6, 4, IFA_ADDRESS), 4, v4));
    }

    #[test]
    fn arp_round_trip_and_garp_forms() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let [req, rep] = garp_pair(MAC, vip);
        let req = Arp::parse(&req).unwrap();
        assert_eq!(req, Arp { op: ARPOP_REQUEST, sha: MAC, spa: vip, tha: [0; 6], tpa: vip });
        let rep = Arp::parse(&rep).unwrap();
        assert_eq!(rep, Arp { op: ARPOP_REPLY, sha: MAC, spa: vip, tha: MAC, tpa: vip });
        assert!(Arp::parse(&[0; 27]).is_none());
        let mut bad = garp_pair(MAC, vip)[0];
        bad[2] = 0x86; // not IPv4
        assert!(Arp::parse(&bad).is_none());
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
        assert_eq!(p[0] >> 4, 6);
        assert_eq!((p[6], p[7]), (58, 255));
        assert_eq!(&p[8..24], &[0; 16]);
        assert_eq!(&p[24..40], &solicited_node(vip).octets());
        assert_eq!(p[40], ND_NEIGHBOR_SOLICIT);
        // A correct checksum sums (with the pseudo-header) to 0xffff, i.e. recomputes to 0.
        assert_eq!(icmpv6_checksum(Ipv6Addr::UNSPECIFIED, solicited_node(vip), &p[40..]), 0);
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

    #[test]
    fn cmsg_parsing() {
        let word = size_of::<usize>();
        let hdr = size_of::<libc::cmsghdr>().next_multiple_of(word);
        let mut buf = Vec::new();
        let mut push = |ty: i32, data: &[u8]| {
            let len = hdr + data.len();
            let start = buf.len();
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.resize(start + hdr, 0);
            buf.extend_from_slice(data);
            buf.resize(buf.len().next_multiple_of(word), 0);
        };
        push(libc::IPV6_HOPLIMIT, &255i32.to_ne_bytes());
        let mut pktinfo = [0u8; 20];
        pktinfo[16..].copy_from_slice(&7u32.to_ne_bytes());
        push(libc::IPV6_PKTINFO, &pktinfo);
        assert_eq!(parse_cmsgs(&buf), (Some(255), Some(7)));
        assert_eq!(parse_cmsgs(&buf[..4]), (None, None));
    }

    #[test]
    fn addresses_and_prefixes_are_checked() {
        let ok = |a: &str, p| check_addr(Op::Assign, a.parse().unwrap(), p).is_ok();
        assert!(ok("198.18.0.100", 24));
        assert!(ok("198.18.0.100", 32));
        assert!(!ok("198.18.0.100", 33));
        assert!(!ok("198.18.0.100", 0));
        assert!(ok("fd00:efd::100", 128));
        assert!(!ok("fd00:efd::100", 129));
        assert!(!ok("0.0.0.0", 24));
        assert!(!ok("255.255.255.255", 24));
        assert!(!ok("ff02::1", 64));
        assert!(!ok("::1", 128));
        let e = check_addr(Op::Assign, "198.18.0.100".parse().unwrap(), 40).unwrap_err();
        assert!(e.to_string().contains("198.18.0.100/40"), "{e}");
    }

    #[test]
    fn unknown_interface_error_names_it() {
        let e = ifindex("efm-no-such0").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("\"efm-no-such0\"") && s.contains("virtual.ip.interface"), "{s}");
        assert!(ifindex("a-name-much-too-long-for-linux").is_err());
        assert!(ifindex("").is_err());
        assert!(ifindex("lo").unwrap() >= 1);
    }

    #[test]
    fn netlink_error_display_has_context() {
        let e = NlError { errno: io::Error::from_raw_os_error(libc::EPERM), msg: Some("nope".into()) }.into_vip(
            Op::Assign,
            "eth0",
            "198.18.0.100".parse().unwrap(),
            24,
        );
        let s = e.to_string();
        assert!(
            s.contains("assigning the VIP 198.18.0.100/24 on eth0") && s.contains("(nope)") && s.contains("root"),
            "{s}"
        );
    }
}
