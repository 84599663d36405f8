//! A cluster test bed: one network namespace per node, all joined to a bridge in a "switch"
//! namespace, addressed 198.18.0.1, .2, ... /24. Faults are applied on the switch side (link down)
//! so the node's own view of its interface does not change. Everything is removed on drop.

use std::net::Ipv4Addr;

use efm_agent::datapath::{Datapath, ModeChoice};

use crate::{ip_in, unique, Netns, PinDir};

/// One node of the bed.
#[derive(Debug)]
pub struct BedNode {
    pub ns: Netns,
    /// The node's interface (inside `ns`).
    pub ifname: String,
    /// The switch-side end of its link (inside the switch namespace).
    pub sw_if: String,
    pub ip: Ipv4Addr,
}

/// The bed: switch plus nodes.
pub struct Bed {
    /// Pass-through XDP on the switch ports (see [`Bed::new`]); detached first.
    _sw_xdp: Vec<(Datapath, PinDir)>,
    pub nodes: Vec<BedNode>,
    // Dropped last: deleting the switch namespace removes the bridge and the switch-side veths.
    pub switch: Netns,
}

impl Bed {
    /// `n` nodes at 198.18.0.1 .. 198.18.0.n.
    #[must_use]
    pub fn new(n: u8) -> Self {
        let switch = Netns::new("efs");
        ip_in(&switch.name, &["link", "add", "br0", "type", "bridge"]);
        ip_in(&switch.name, &["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = Netns::new("efn");
            let ifname = unique("en");
            let sw_if = unique("sw");
            crate::ip(&[
                "link",
                "add",
                &ifname,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &sw_if,
                "netns",
                &switch.name,
            ]);
            let ip = Ipv4Addr::new(198, 18, 0, i);
            ip_in(&ns.name, &["addr", "add", &format!("{ip}/24"), "dev", &ifname]);
            ip_in(&ns.name, &["link", "set", &ifname, "up"]);
            ip_in(&switch.name, &["link", "set", &sw_if, "master", "br0"]);
            ip_in(&switch.name, &["link", "set", &sw_if, "up"]);
            nodes.push(BedNode { ns, ifname, sw_if, ip });
        }
        // A native XDP_TX on a veth (the kernel's PONGs, RSTs) is delivered only to a peer veth
        // that runs an XDP program (enabling GRO on the peer did not suffice on 6.18: the frames
        // vanished). So each switch port gets efm's program with an empty configuration
        // (heartbeat and database port 0), which passes every frame.
        let mut sw_xdp = Vec::new();
        for n in &nodes {
            let pins = PinDir::new("sw");
            let (dir, port) = (pins.0.clone(), n.sw_if.clone());
            let dp = switch.run(move || {
                Datapath::open(&dir, &[port.as_str()], ModeChoice::Native).expect("pass-through XDP on a switch port")
            });
            sw_xdp.push((dp, pins));
        }
        Self { _sw_xdp: sw_xdp, nodes, switch }
    }

    /// Cuts node `i`'s link at the switch.
    pub fn link_down(&self, i: usize) {
        ip_in(&self.switch.name, &["link", "set", &self.nodes[i].sw_if, "down"]);
    }

    pub fn link_up(&self, i: usize) {
        ip_in(&self.switch.name, &["link", "set", &self.nodes[i].sw_if, "up"]);
    }

    /// Cuts node `i` off from the nodes `others`, both directions, with an nftables bridge
    /// table in the switch namespace; every other port (the client's) still reaches it. Undone
    /// by [`Bed::heal`] or by dropping the bed.
    pub fn partition(&self, i: usize, others: &[usize]) {
        let a = &self.nodes[i].sw_if;
        let set = others.iter().map(|&o| format!("\"{}\"", self.nodes[o].sw_if)).collect::<Vec<_>>().join(", ");
        let rules = format!(
            "table bridge efm_partition {{\n chain cut {{\n  type filter hook forward priority 0;\n  \
             iifname \"{a}\" oifname {{ {set} }} drop\n  iifname {{ {set} }} oifname \"{a}\" drop\n }}\n}}\n"
        );
        self.nft(&rules);
    }

    /// Drops only the heartbeats (UDP to port 7800, PINGs and PONGs) between node `i` and
    /// `others`, both directions, in the same nftables table as [`Bed::partition`] (undone by
    /// [`Bed::heal`]): its database stays reachable from them (their remote checks, the
    /// members' connections) and from the client, but its kernel is not heard and no
    /// endorsement reaches it.
    pub fn cut_heartbeats(&self, i: usize, others: &[usize]) {
        let a = &self.nodes[i].sw_if;
        let set = others.iter().map(|&o| format!("\"{}\"", self.nodes[o].sw_if)).collect::<Vec<_>>().join(", ");
        let rules = format!(
            "table bridge efm_partition {{\n chain cut {{\n  type filter hook forward priority 0;\n  \
             iifname \"{a}\" oifname {{ {set} }} udp dport 7800 drop\n  \
             iifname {{ {set} }} oifname \"{a}\" udp dport 7800 drop\n }}\n}}\n"
        );
        self.nft(&rules);
    }

    /// Removes the partition of [`Bed::partition`] (or [`Bed::cut_heartbeats`]).
    pub fn heal(&self) {
        self.nft("delete table bridge efm_partition\n");
    }

    /// Runs an nftables script in the switch namespace; panics with its output on failure.
    pub fn nft(&self, script: &str) {
        use std::io::Write as _;
        let mut ch = self
            .switch
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running nft (is nftables installed?)");
        ch.stdin.take().expect("nft stdin").write_all(script.as_bytes()).expect("writing the nft script");
        let out = ch.wait_with_output().expect("waiting for nft");
        assert!(out.status.success(), "nft -f - failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}
