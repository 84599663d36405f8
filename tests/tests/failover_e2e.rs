//! Automatic failover end to end: real `PostgreSQL` 15 streaming replication, real agents with XDP,
//! a client writing through the VIP. For each fault: exactly one primary afterwards, the client's
//! writes resume through the VIP, the other standby follows the new primary, and — on the shared
//! kernel clock — no write was acknowledged by the old primary after the new primary acknowledged
//! its first — counting the acknowledgements of statements that sleep inside the server (0.5–3 s)
//! before committing, on connections opened before the fault (keepalives off). The other
//! standby streams from the new primary as the replication user with its own settings; the
//! agents monitor as a user that is not a superuser, whose password is in no database's
//! configuration. Needs root; run single-threaded.

use std::time::Duration;

use efm_tests::{
    cluster::{Ack, Cluster, Kind},
    monotonic_ns,
    pg::PgVersion,
    scenarios::{self, PSS, PSW},
};

/// [`scenarios::failover`] on `PostgreSQL` 15.
fn failover(kinds: &[Kind], what: &str, fault: impl FnOnce(&mut Cluster)) -> (Cluster, Vec<Ack>, u64) {
    scenarios::failover(PgVersion::V15, kinds, what, fault)
}

#[test]
fn postmaster_sigkill_fails_over() {
    scenarios::postmaster_sigkill_fails_over(PgVersion::V15);
}

#[test]
fn postmaster_sigkill_fails_over_with_a_witness() {
    let (_c, _acks, _ms) = failover(&PSW, "postmaster SIGKILL (witness)", |c| c.pg[0].as_ref().unwrap().sigkill());
}

#[test]
fn primary_link_down_fails_over_and_the_old_primary_stays_fenced() {
    let (c, _acks, _ms) = failover(&PSS, "primary link down", |c| c.bed.link_down(0));
    // The old primary comes back: it learns the new epoch and stays cut off, its database a
    // primary no client can reach.
    c.bed.link_up(0);
    let v = c.wait_for(0, "the old primary fenced", Duration::from_secs(20), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("fenced")) && v["kernel"]["serving"] == false
    });
    assert_eq!(v["kernel"]["fenced"], true, "{v:#}");
    std::thread::sleep(Duration::from_millis(500));
    let p = c.serving_primary().expect("still exactly one serving primary");
    assert_ne!(p, 0);
    c.assert_no_monitor_password_in_config();
}

#[test]
fn primary_isolated_by_nftables_fails_over() {
    let (c, _acks, _ms) = failover(&PSS, "primary isolated (nftables)", |c| {
        let sw = c.bed.nodes[0].sw_if.clone();
        let rules = format!(
            "table bridge efm_isolate {{\n chain isolate {{\n  type filter hook forward priority 0;\n  iifname \"{sw}\" drop\n  oifname \"{sw}\" drop\n }}\n}}\n"
        );
        let out = c.bed.switch.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(
            |mut ch| {
                use std::io::Write as _;
                ch.stdin.take().unwrap().write_all(rules.as_bytes())?;
                ch.wait_with_output()
            },
        );
        assert!(out.is_ok_and(|o| o.status.success()), "nft isolation rules");
    });
    drop(c);
}

/// The primary's agent frozen (SIGSTOP) and its heartbeats cut (its database and the client's
/// path stay up). An absent agent alone is not a failure any more (issue 13, `absence_e2e`): the
/// voters endorse a primary whose kernel answers and whose database they reach. Here its kernel
/// is not heard and no endorsement reaches it, so what is tested is the kernel's own fence: the
/// lease lapses with nobody in user space to help, the clients are cut off within the lease,
/// and a standby is promoted.
#[test]
fn frozen_primary_agent_loses_its_clients_and_is_replaced() {
    let lease_ms = 1_000;
    let mut t_stop = 0;
    let (c, acks, _ms) = failover(&PSS, "primary agent SIGSTOP + heartbeats cut", |c| {
        t_stop = monotonic_ns();
        c.agents[0].signal(libc::SIGSTOP);
        c.bed.cut_heartbeats(0, &[1, 2]);
    });
    // While the agent was stopped the kernel cut its clients off once the lease ran out.
    let last_old = acks.iter().filter(|a| a.server.as_deref() == Some("n1")).map(|a| a.t_ns).max().unwrap();
    let after = last_old.saturating_sub(t_stop) / 1_000_000;
    assert!(after <= lease_ms + 500, "n1 acknowledged a write {after} ms after its agent froze (lease {lease_ms} ms)");
    // Heard again and thawed, the old primary finds the new epoch and stays fenced.
    c.bed.heal();
    c.agents[0].signal(libc::SIGCONT);
    c.wait_for(0, "the old primary fenced", Duration::from_secs(15), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("fenced"))
    });
}

/// The primary's agent crashes (SIGKILL) while its node's heartbeats are cut: its kernel keeps
/// its last state but is not heard, so it is failed over (an agent crash alone on a node that
/// answers is "agent down", `absence_e2e`).
#[test]
fn primary_agent_sigkill_with_its_heartbeats_cut_fails_over() {
    let (_c, _acks, _ms) = failover(&PSS, "primary agent SIGKILL + heartbeats cut", |c| {
        c.agents[0].sigkill();
        c.bed.cut_heartbeats(0, &[1, 2]);
    });
}

#[test]
fn standby_and_witness_failures_do_not_promote() {
    let c = Cluster::start(&PSW, "");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some());
    let epoch = |c: &Cluster| c.node_status(0).unwrap()["epoch"].as_u64().unwrap();
    let e0 = epoch(&c);
    // The witness's node goes away, then the standby's database.
    c.bed.link_down(2);
    c.wait_for(0, "witness node dead", Duration::from_secs(5), |v| {
        v["peers"].as_array().unwrap().iter().any(|p| p["address"] == "198.18.0.3:7800" && p["verdict"] == "node dead")
    });
    c.pg[1].as_ref().unwrap().sigkill();
    std::thread::sleep(Duration::from_secs(3));
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(5)).is_some(), "the primary keeps serving");
    assert_eq!(epoch(&c), e0, "no promotion");
    assert_eq!(c.serving_primary(), Some(0));
    let _ = w.finish();
}

#[test]
fn synchronous_standby_loses_no_acknowledged_row() {
    scenarios::synchronous_standby_loses_no_acknowledged_row(PgVersion::V15);
}
