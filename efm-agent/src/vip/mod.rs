//! Virtual IP management: add and remove the cluster's VIP with rtnetlink, announce it after
//! assigning (gratuitous ARP for IPv4, unsolicited Neighbor Advertisement for IPv6), and probe
//! whether another host still answers for it (RFC 5227 ARP probe; DAD-style Neighbor
//! Solicitation). No `ip`, `arping` or `ping` is run.
//!
//! EFM properties served: `virtual.ip` (the address), `virtual.ip.interface` (default: the
//! interface holding `bind.address`, see [`interface_of`]), `virtual.ip.prefix`,
//! `virtual.ip.single`, and `check.vip.before.promotion` ([`probe_in_use`] before promoting).
//!
//! Layout: `netif` speaks rtnetlink (`netlink-packet-route` messages over `netlink-sys`):
//! interfaces, addresses, [`interface_of`]; `frames` builds and parses the Ethernet, ARP and
//! Neighbor Discovery frames; `packet` is the `AF_PACKET` socket (rustix) the frames travel on.
//!
//! # Threads, namespaces, privileges
//!
//! Every function acts in the **calling thread's** network namespace: netlink and packet
//! sockets belong to the namespace of the thread that creates them, and interface names are
//! resolved there. Adding/removing addresses needs `CAP_NET_ADMIN`; announcing and probing need
//! `CAP_NET_RAW`.
//!
//! All functions block: netlink calls return in microseconds, [`assign`] sleeps between its
//! announcements (`count × interval`, 200 ms by default) and [`probe_in_use`] waits up to its
//! timeout (in `poll(2)`, no busy loop). Async callers run them with
//! `tokio::task::spawn_blocking`, which keeps the namespace of the runtime's blocking threads.

mod frames;
mod netif;
mod packet;

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use rustix::io::Errno;

use frames::{Arp, ETH_P_ARP, ETH_P_IPV6};
pub use netif::{interface_holding, interface_of};
use netif::{Link, NlError};
use packet::{PacketSocket, Rx};

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
        Some(c) if c == Errno::PERM.raw_os_error() => {
            " — needs root (CAP_NET_ADMIN to change addresses, CAP_NET_RAW to send ARP/ND)"
        }
        Some(c) if c == Errno::NETDOWN.raw_os_error() => " — is the interface up?",
        _ => "",
    }
}

impl NlError {
    fn into_vip(self, op: Op, iface: &str, addr: IpAddr, prefix: u8) -> VipError {
        VipError::Netlink { op, iface: iface.to_owned(), addr, prefix, source: self.errno, kernel_msg: self.msg }
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
    lookup(name, Op::Lookup, None).map(|l| l.index)
}

/// Interface `name` (`RTM_GETLINK`): its index and, on Ethernet, its MAC.
fn lookup(name: &str, op: Op, addr: Option<IpAddr>) -> Result<Link> {
    let err = |source| VipError::Interface { op, iface: name.to_owned(), addr, source };
    // IFNAMSIZ is 16 with the NUL.
    if name.is_empty() || name.len() >= 16 {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "interface names are 1 to 15 bytes")));
    }
    if name.contains('\0') {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in name")));
    }
    netif::link_by_name(name).map_err(|e| err(e.errno))
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
    assign_labeled(iface, None, addr, prefix, announce)
}

/// [`assign_with`], giving an IPv4 address the label `label` (`IFA_LABEL`): EFM 2.0's alias
/// form `virtualIp.interface=eth0:0` puts the VIP on `eth0` labelled `eth0:0`, as
/// `ip addr add ... label eth0:0` does (`None`: the kernel's default, the interface name).
pub fn assign_labeled(
    iface: &str,
    label: Option<&str>,
    addr: IpAddr,
    prefix: u8,
    announce: &Announce,
) -> Result<Assigned> {
    check_addr(Op::Assign, addr, prefix)?;
    let link = lookup(iface, Op::Assign, Some(addr))?;
    let outcome = match netif::change_address(true, link.index, addr, prefix, label) {
        Ok(()) => {
            tracing::info!(%iface, vip = %addr, prefix, "VIP assigned");
            Assigned::Added
        }
        Err(e) if e.is(Errno::EXIST) => {
            tracing::warn!(%iface, vip = %addr, prefix, "VIP was already assigned on this node");
            Assigned::AlreadyAssigned
        }
        Err(e) => return Err(e.into_vip(Op::Assign, iface, addr, prefix)),
    };
    let sent = announce_on(iface, &link, addr, announce)?;
    tracing::debug!(%iface, vip = %addr, rounds = sent, "VIP announced");
    Ok(outcome)
}

/// Removes `addr/prefix` from `iface` (`RTM_DELADDR`). The prefix must be the one it was
/// assigned with.
pub fn release(iface: &str, addr: IpAddr, prefix: u8) -> Result<Released> {
    check_addr(Op::Release, addr, prefix)?;
    let link = lookup(iface, Op::Release, Some(addr))?;
    match netif::change_address(false, link.index, addr, prefix, None) {
        Ok(()) => {
            tracing::info!(%iface, vip = %addr, prefix, "VIP released");
            Ok(Released::Removed)
        }
        Err(e) if e.is(Errno::ADDRNOTAVAIL) => {
            tracing::warn!(%iface, vip = %addr, prefix, "VIP was not assigned on this node");
            Ok(Released::NotAssigned)
        }
        Err(e) => Err(e.into_vip(Op::Release, iface, addr, prefix)),
    }
}

/// Whether `addr` is assigned to `iface` (any prefix length), from an `RTM_GETADDR` dump.
pub fn is_assigned_here(iface: &str, addr: IpAddr) -> Result<bool> {
    let link = lookup(iface, Op::Query, Some(addr))?;
    netif::has_address(link.index, addr).map_err(|e| e.into_vip(Op::Query, iface, addr, 0))
}

/// Announces `addr` on `iface` as [`assign_with`] does after adding it; returns the number of
/// rounds sent (0 on a non-Ethernet interface). An IPv6 address must be assigned here (the
/// advertisement is sent from it).
pub fn announce(iface: &str, addr: IpAddr, announce: &Announce) -> Result<u32> {
    let link = lookup(iface, Op::Announce, Some(addr))?;
    announce_on(iface, &link, addr, announce)
}

/// Whether another host answers for `addr` on `iface` within `timeout`: returns the MAC of the
/// first one that does. IPv4: RFC 5227 ARP probes (sender IP 0.0.0.0, target `addr`); any ARP
/// packet whose sender IP is `addr` counts. IPv6: DAD-style Neighbor Solicitations (unspecified
/// source, to the solicited-node group); a valid Neighbor Advertisement for `addr` counts. Three
/// probes are sent, at 0, ⅓ and ⅔ of the timeout, so one lost frame does not hide a holder.
///
/// Our own frames (Ethernet source this interface's MAC) and answers carrying this interface's
/// MAC are ignored. Consequently an assignment on *this* node is not reported; use
/// [`is_assigned_here`] for that. An NA without a target link-layer option (which RFC 4861
/// requires in answers to multicast solicitations) still counts, reported as MAC
/// 00:00:00:00:00:00.
pub fn probe_in_use(iface: &str, addr: IpAddr, timeout: Duration) -> Result<Option<Mac>> {
    let link = lookup(iface, Op::Probe, Some(addr))?;
    let mac = link.mac.ok_or_else(|| VipError::NotEthernet { op: Op::Probe, iface: iface.to_owned(), addr })?;
    let answer = match addr {
        IpAddr::V4(v4) => probe_v4(iface, link.index, mac, v4, timeout),
        IpAddr::V6(v6) => probe_v6(iface, link.index, mac, v6, timeout),
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
// Announcing and probing

fn announce_on(iface: &str, link: &Link, addr: IpAddr, a: &Announce) -> Result<u32> {
    let Some(mac) = link.mac else {
        tracing::debug!(%iface, vip = %addr, "not an Ethernet interface: VIP not announced");
        return Ok(0);
    };
    let err = |what, e| sock_err(Op::Announce, iface, addr, what, e);
    let frames = match addr {
        IpAddr::V4(v4) => frames::garp_pair(mac, v4).map(|arp| arp.frame(mac)).to_vec(),
        IpAddr::V6(v6) => {
            // The advertisement is sent from the VIP, so it must be ours.
            let here = netif::has_address(link.index, addr)
                .map_err(|e| err("checking the VIP is assigned here (RTM_GETADDR)", e.errno))?;
            if !here {
                let what = "the advertisement is sent from the VIP, which is not assigned here";
                return Err(err(what, Errno::ADDRNOTAVAIL.into()));
            }
            vec![frames::neighbor_advert_frame(v6, mac)]
        }
    };
    let what =
        if addr.is_ipv4() { "sending a gratuitous ARP" } else { "sending an unsolicited Neighbor Advertisement" };
    let sock = PacketSocket::open(link.index, 0).map_err(|e| err("opening a packet socket", e))?;
    for i in 0..a.count {
        for f in &frames {
            sock.send(f).map_err(|e| err(what, e))?;
        }
        if i + 1 < a.count {
            std::thread::sleep(a.interval);
        }
    }
    Ok(a.count)
}

fn probe_v4(iface: &str, index: u32, mac: Mac, vip: Ipv4Addr, timeout: Duration) -> Result<Option<Mac>> {
    let err = |what, e| sock_err(Op::Probe, iface, IpAddr::V4(vip), what, e);
    let sock = PacketSocket::open(index, ETH_P_ARP).map_err(|e| err("opening an ARP packet socket", e))?;
    let probe = frames::arp_probe(mac, vip).frame(mac);
    packet::probe_loop(&sock, timeout, &probe, |frame| match frames::parse_ethernet(frame) {
        Some((src, ETH_P_ARP, payload)) if src != mac => match Arp::parse(payload) {
            Some(arp) if arp.spa == vip && arp.sha != mac => Rx::Answer(arp.sha),
            _ => Rx::Ignored,
        },
        _ => Rx::Ignored,
    })
    .map_err(|e| err("sending/receiving ARP probes", e))
}

fn probe_v6(iface: &str, index: u32, mac: Mac, vip: Ipv6Addr, timeout: Duration) -> Result<Option<Mac>> {
    let err = |what, e| sock_err(Op::Probe, iface, IpAddr::V6(vip), what, e);
    let sock = PacketSocket::open(index, ETH_P_IPV6).map_err(|e| err("opening an IPv6 packet socket", e))?;
    let probe = frames::dad_solicit_frame(vip, mac);
    packet::probe_loop(&sock, timeout, &probe, |frame| match frames::parse_ethernet(frame) {
        Some((src, ETH_P_IPV6, packet)) if src != mac => match frames::parse_na_packet(packet) {
            Some((target, tlla)) if target == vip && tlla != Some(mac) => Rx::Answer(tlla.unwrap_or([0; 6])),
            _ => Rx::Ignored,
        },
        _ => Rx::Ignored,
    })
    .map_err(|e| err("sending Neighbor Solicitations/receiving advertisements", e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(s.contains("No such device"), "the kernel's ENODEV reaches the message: {s}");
        assert!(ifindex("a-name-much-too-long-for-linux").is_err());
        assert!(ifindex("").is_err());
        assert!(ifindex("lo").unwrap() >= 1);
    }

    #[test]
    fn netlink_error_display_has_context() {
        let e = NlError { errno: Errno::PERM.into(), msg: Some("nope".into()) }.into_vip(
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
        let e = sock_err(Op::Announce, "eth0", "198.18.0.100".parse().unwrap(), "sending", Errno::NETDOWN.into());
        assert!(e.to_string().contains("is the interface up?"), "{e}");
    }
}
