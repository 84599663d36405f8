//! `efm_agent::vip` for real: a three-node bed (namespaces on a bridge). Node 1 takes the VIP,
//! node 2's neighbour cache must follow the announcement, node 3 probes for it. Needs root; runs
//! single-threaded (`cargo test -p efm-tests --test vip -- --test-threads=1`).

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use efm_agent::vip::{self, Announce, Assigned, Mac, Released, VipError};
use efm_tests::{bed::Bed, ip_in, require_root, Netns};

const VIP4: &str = "198.18.0.100";
const VIP6: &str = "fd00:efd::100";
const BOGUS_MAC: &str = "02:00:00:00:00:99";
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_out(ns: &Netns, args: &[&str]) -> String {
    output(Command::new("ip").arg("-n").arg(&ns.name).args(args))
}

/// The MAC of bed node `i`'s interface.
fn mac_of(bed: &Bed, i: usize) -> String {
    let n = &bed.nodes[i];
    let out = ip_out(&n.ns, &["link", "show", "dev", &n.ifname]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "link/ether").expect("an Ethernet interface");
    words.next().expect("a MAC after link/ether").to_owned()
}

fn mac_str(m: Mac) -> String {
    vip::fmt_mac(m)
}

/// Node `i`'s neighbour entry for `addr` (`ip neigh show`), waiting up to 1 s for it to carry
/// `want`.
fn neigh_until(bed: &Bed, i: usize, addr: &str, want: &str) -> String {
    let n = &bed.nodes[i];
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let out = ip_out(&n.ns, &["neigh", "show", addr, "dev", &n.ifname]);
        if out.contains(want) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assign(bed: &Bed, i: usize, addr: &str, prefix: u8) -> Result<Assigned, VipError> {
    let (iface, addr) = (bed.nodes[i].ifname.clone(), addr.parse::<IpAddr>().unwrap());
    bed.nodes[i].ns.run(move || vip::assign(&iface, addr, prefix))
}

fn release(bed: &Bed, i: usize, addr: &str, prefix: u8) -> Result<Released, VipError> {
    let (iface, addr) = (bed.nodes[i].ifname.clone(), addr.parse::<IpAddr>().unwrap());
    bed.nodes[i].ns.run(move || vip::release(&iface, addr, prefix))
}

fn assigned_here(bed: &Bed, i: usize, addr: &str) -> bool {
    let (iface, addr) = (bed.nodes[i].ifname.clone(), addr.parse::<IpAddr>().unwrap());
    bed.nodes[i].ns.run(move || vip::is_assigned_here(&iface, addr)).expect("querying addresses")
}

/// Probes from node `i`; also checks the probe keeps to its time bound.
fn probe(bed: &Bed, i: usize, addr: &str) -> Option<Mac> {
    let (iface, addr) = (bed.nodes[i].ifname.clone(), addr.parse::<IpAddr>().unwrap());
    let started = Instant::now();
    let r = bed.nodes[i].ns.run(move || vip::probe_in_use(&iface, addr, PROBE_TIMEOUT)).expect("probing");
    assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(200), "probe overran: {:?}", started.elapsed());
    r
}

fn bed_v6() -> Bed {
    let bed = Bed::new(3);
    for (i, n) in bed.nodes.iter().enumerate() {
        ip_in(&n.ns.name, &["addr", "add", &format!("fd00:efd::{}/64", i + 1), "dev", &n.ifname, "nodad"]);
    }
    bed
}

/// The whole life of a VIP on one address family.
fn lifecycle(bed: &Bed, addr: &str, prefix: u8) {
    let mac1 = mac_of(bed, 0);
    let (n2, n2_if) = (&bed.nodes[1].ns.name, bed.nodes[1].ifname.clone());
    // Node 2 believes the VIP is somewhere else; only the announcement can correct that (with
    // default sysctls an unsolicited ARP/NA updates an existing entry but creates none).
    ip_in(n2, &["neigh", "replace", addr, "lladdr", BOGUS_MAC, "dev", &n2_if, "nud", "stale"]);
    assert!(ip_out(&bed.nodes[1].ns, &["neigh", "show", addr, "dev", &n2_if]).contains(BOGUS_MAC));

    assert!(!assigned_here(bed, 0, addr));
    assert_eq!(probe(bed, 2, addr), None, "nobody holds {addr} yet");

    assert_eq!(assign(bed, 0, addr, prefix).expect("assigning"), Assigned::Added);
    assert!(assigned_here(bed, 0, addr));
    assert!(!assigned_here(bed, 1, addr));
    let shown = ip_out(&bed.nodes[0].ns, &["addr", "show", "dev", &bed.nodes[0].ifname]);
    assert!(shown.contains(&format!("{addr}/{prefix}")), "ip addr does not show {addr}/{prefix}:\n{shown}");
    let vip_line = shown.lines().find(|l| l.contains(&format!("{addr}/"))).unwrap_or_default();
    assert!(!vip_line.contains("tentative"), "the VIP must be usable at once:\n{shown}");

    let neigh = neigh_until(bed, 1, addr, &mac1);
    assert!(neigh.contains(&mac1), "node 2's neighbour entry for {addr} was not updated to node 1's {mac1}: {neigh}");

    assert_eq!(probe(bed, 2, addr).map(mac_str), Some(mac1.clone()), "node 3 must find node 1 holding {addr}");
    // Node 1 does not see itself as a holder.
    assert_eq!(probe(bed, 0, addr), None);

    assert_eq!(assign(bed, 0, addr, prefix).expect("assigning again"), Assigned::AlreadyAssigned);
    assert!(assigned_here(bed, 0, addr));

    assert_eq!(release(bed, 0, addr, prefix).expect("releasing"), Released::Removed);
    assert!(!assigned_here(bed, 0, addr));
    assert!(!ip_out(&bed.nodes[0].ns, &["addr", "show", "dev", &bed.nodes[0].ifname]).contains(&format!("{addr}/")));
    assert_eq!(probe(bed, 2, addr), None, "{addr} was released");
    assert_eq!(release(bed, 0, addr, prefix).expect("releasing again"), Released::NotAssigned);

    // Another node takes over: node 3 now finds node 2.
    assert_eq!(assign(bed, 1, addr, prefix).expect("assigning on node 2"), Assigned::Added);
    assert_eq!(probe(bed, 2, addr).map(mac_str), Some(mac_of(bed, 1)));
    assert_eq!(release(bed, 1, addr, prefix).expect("releasing on node 2"), Released::Removed);
}

#[test]
fn ipv4_vip_assign_announce_probe_release() {
    require_root();
    let bed = Bed::new(3);
    lifecycle(&bed, VIP4, 24);
}

#[test]
fn ipv6_vip_assign_announce_probe_release() {
    require_root();
    let bed = bed_v6();
    lifecycle(&bed, VIP6, 64);
}

#[test]
fn announce_count_and_interval_are_honoured() {
    require_root();
    let bed = Bed::new(2);
    let iface = bed.nodes[0].ifname.clone();
    let took = bed.nodes[0].ns.run(move || {
        let a = Announce { count: 4, interval: Duration::from_millis(50) };
        let t = Instant::now();
        let r = vip::assign_with(&iface, VIP4.parse().unwrap(), 32, &a).expect("assigning");
        assert_eq!(r, Assigned::Added);
        let took = t.elapsed();
        assert_eq!(vip::announce(&iface, VIP4.parse().unwrap(), &a).expect("re-announcing"), 4);
        vip::release(&iface, VIP4.parse().unwrap(), 32).expect("releasing");
        took
    });
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(1), "3 pauses of 50 ms, took {took:?}");
}

#[test]
fn errors_name_the_interface_and_address() {
    require_root();
    let ns = Netns::new("efv");
    let msgs = ns.run(|| {
        let mut msgs = Vec::new();
        let e = vip::ifindex("efm-nope0").unwrap_err();
        assert!(matches!(e, VipError::Interface { .. }), "{e:?}");
        msgs.push(e.to_string());
        for addr in [VIP4, VIP6] {
            let a: IpAddr = addr.parse().unwrap();
            msgs.push(vip::assign("efm-nope0", a, 24).unwrap_err().to_string());
            msgs.push(vip::release("efm-nope0", a, 24).unwrap_err().to_string());
            msgs.push(vip::is_assigned_here("efm-nope0", a).unwrap_err().to_string());
            msgs.push(vip::probe_in_use("efm-nope0", a, PROBE_TIMEOUT).unwrap_err().to_string());
        }
        // The kernel's refusal is reported with context: IPv4 with a /33 is caught before it.
        let e = vip::assign("lo", VIP4.parse().unwrap(), 33).unwrap_err();
        assert!(matches!(e, VipError::InvalidAddress { .. }), "{e:?}");
        // Probing on a non-Ethernet interface is refused clearly.
        let e = vip::probe_in_use("lo", VIP4.parse().unwrap(), PROBE_TIMEOUT).unwrap_err();
        assert!(matches!(e, VipError::NotEthernet { .. }), "{e:?}");
        msgs.push(e.to_string());
        msgs
    });
    for m in &msgs[..9] {
        assert!(m.contains("\"efm-nope0\""), "error does not name the interface: {m}");
    }
    for m in &msgs[1..9] {
        assert!(m.contains(VIP4) || m.contains(VIP6), "error does not name the address: {m}");
    }
    assert!(msgs[9].contains("lo") && msgs[9].contains(VIP4), "{}", msgs[9]);
    eprintln!("{}", msgs.join("\n"));
}

#[test]
fn netlink_errors_carry_the_kernels_reason() {
    require_root();
    let ns = Netns::new("efv");
    let e = ns.run(|| {
        // An IPv6 address on an interface with IPv6 disabled: refused by the kernel.
        std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "1").expect("disabling IPv6 on lo");
        vip::assign("lo", VIP6.parse().unwrap(), 64).unwrap_err()
    });
    let s = e.to_string();
    assert!(matches!(e, VipError::Netlink { .. }), "{e:?}");
    assert!(s.contains("lo") && s.contains(&format!("{VIP6}/64")), "{s}");
    eprintln!("{s}");
}

/// `interface_of` (an `RTM_GETADDR` dump) finds addresses assigned to a veth in a namespace:
/// the bed's own IPv4 address, an IPv6 one, and a VIP right after `assign` (and not after
/// `release`); an address nobody holds has no interface.
#[test]
fn interface_of_finds_addresses_on_a_veth() {
    require_root();
    let bed = bed_v6();
    let n = &bed.nodes[0];
    let (iface, own4) = (n.ifname.clone(), IpAddr::V4(n.ip));
    let found = n.ns.run(move || {
        let mut found = Vec::new();
        for a in [own4, "fd00:efd::1".parse().unwrap()] {
            found.push((a, vip::interface_of(a)));
        }
        let v4: IpAddr = VIP4.parse().unwrap();
        found.push((v4, vip::interface_of(v4)));
        vip::assign(&iface, v4, 24).expect("assigning");
        found.push((v4, vip::interface_of(v4)));
        vip::release(&iface, v4, 24).expect("releasing");
        found.push((v4, vip::interface_of(v4)));
        // The loopback of the namespace, and an address of node 2 (another namespace).
        found.push(("127.0.0.1".parse().unwrap(), vip::interface_of("127.0.0.1".parse().unwrap())));
        found.push(("198.18.0.2".parse().unwrap(), vip::interface_of("198.18.0.2".parse().unwrap())));
        found
    });
    let want = |name: &str| Some(name.to_owned());
    assert_eq!(found[0], (own4, want(&n.ifname)), "the bed's address");
    assert_eq!(found[1].1, want(&n.ifname), "an IPv6 address");
    assert_eq!(found[2].1, None, "the VIP before it is assigned");
    assert_eq!(found[3].1, want(&n.ifname), "the VIP once assigned");
    assert_eq!(found[4].1, None, "the VIP after it is released");
    assert_eq!(found[5].1, want("lo"));
    assert_eq!(found[6].1, None, "node 2's address is in another namespace");
    // The agent's own entry point answers the same.
    let own = n.ns.run(move || efm_agent::agent::interface_of(own4));
    assert_eq!(own, want(&n.ifname));
}

/// EFM 2.0's alias form `virtualIp.interface=<if>:0`: the configuration yields the base
/// interface and the label; the VIP lands on the base interface with that label (what
/// `ip addr show` prints as the address's name), and releasing it needs no label.
#[test]
fn alias_interface_vip_carries_the_address_label() {
    require_root();
    let bed = Bed::new(1);
    let n = &bed.nodes[0];
    let alias = format!("{}:0", n.ifname);
    let base = efm_agent::config::split_alias(&alias).expect("an alias").to_owned();
    assert_eq!(base, n.ifname);
    let (iface, label) = (base.clone(), alias.clone());
    let v4: IpAddr = VIP4.parse().unwrap();
    let assigned = n.ns.run(move || {
        vip::assign_labeled(&iface, Some(&label), v4, 24, &Announce { count: 1, interval: Duration::from_millis(1) })
    });
    assert_eq!(assigned.expect("assigning with a label"), Assigned::Added);
    let shown = ip_out(&n.ns, &["-4", "-o", "addr", "show", "dev", &base]);
    let line = shown
        .lines()
        .find(|l| l.contains(&format!("{VIP4}/24")))
        .unwrap_or_else(|| panic!("VIP not on {base}:\n{shown}"));
    assert!(line.contains(&format!(" {alias}\\")), "label missing: {line}");
    let iface = base.clone();
    assert_eq!(n.ns.run(move || vip::release(&iface, v4, 24)).expect("releasing"), Released::Removed);
    let shown = ip_out(&n.ns, &["-4", "-o", "addr", "show", "dev", &base]);
    assert!(!shown.contains(VIP4), "{shown}");
}

/// Drops `CAP_NET_ADMIN` and `CAP_NET_RAW` from the calling thread (capabilities are
/// per-thread; `capset(2)` with pid 0 changes only the caller).
fn drop_net_caps() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const NET_ADMIN_RAW: u32 = (1 << 12) | (1 << 13);
    let mut h = Header { version: VERSION_3, pid: 0 };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as capget(2) says.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut h, d.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    d[0].effective &= !NET_ADMIN_RAW;
    d[0].permitted &= !NET_ADMIN_RAW;
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut h, d.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Without `CAP_NET_ADMIN`/`CAP_NET_RAW` the kernel refuses (EPERM) and the error says so and
/// what is needed.
#[test]
fn permission_errors_say_what_is_needed() {
    require_root();
    let bed = Bed::new(1);
    let iface = bed.nodes[0].ifname.clone();
    let msgs = bed.nodes[0].ns.run(move || {
        drop_net_caps();
        let v4: IpAddr = VIP4.parse().unwrap();
        vec![
            vip::assign(&iface, v4, 24).unwrap_err(),
            vip::release(&iface, v4, 24).unwrap_err(),
            vip::probe_in_use(&iface, v4, PROBE_TIMEOUT).unwrap_err(),
            vip::probe_in_use(&iface, VIP6.parse().unwrap(), PROBE_TIMEOUT).unwrap_err(),
        ]
    });
    for e in &msgs {
        let s = e.to_string();
        eprintln!("{s}");
        assert!(s.contains("Operation not permitted") && s.contains("needs root"), "{s}");
        assert!(s.contains(&bed.nodes[0].ifname), "{s}");
    }
    assert!(matches!(msgs[0], VipError::Netlink { .. }), "{:?}", msgs[0]);
    assert!(matches!(msgs[2], VipError::Socket { .. }), "{:?}", msgs[2]);
}
