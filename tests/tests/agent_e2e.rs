//! Real agents on a three-node bed: a `PostgreSQL` 15 primary, a streaming standby
//! (`pg_basebackup`) and a witness, each in its own network namespace on a bridge, each with its
//! own efm-agent attaching XDP to its interface. Needs root; run single-threaded.

use std::{process::Output, time::Duration};

use efm_tests::{
    cluster::{Agent, Cluster, Kind, CLUSTER},
    monotonic_ns,
};
use serde_json::Value;

const HB_MS: u64 = 50;
const NODE_TIMEOUT_MS: u64 = 500;

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn peer<'a>(v: &'a Value, addr: &str) -> &'a Value {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == addr)
        .unwrap_or_else(|| panic!("no peer {addr} in {v:#}"))
}

fn verdict_is(addr: &'static str, verdict: &'static str) -> impl Fn(&Value) -> bool {
    move |v| peer(v, addr)["verdict"] == verdict
}

#[test]
fn three_agents_agree_and_detect_agent_and_node_failures() {
    let mut c = Cluster::start(&[Kind::Primary, Kind::Standby, Kind::Witness], "");

    // Everyone sees everyone alive (and its kernel), and knows its own role.
    let addrs = ["198.18.0.1:7800", "198.18.0.2:7800", "198.18.0.3:7800"];
    for i in 0..3 {
        let v = c.wait_for(i, "all peers alive with kernel PONGs", Duration::from_secs(30), |v| {
            v["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["verdict"] == "alive" && p["nodeAgeMs"].is_u64()))
                && (v["type"] == "Witness" || v["db"]["state"] == "UP")
        });
        assert_eq!(v["address"], addrs[i]);
        assert_eq!(v["type"], ["Primary", "Standby", "Witness"][i], "{v:#}");
        assert_eq!(v["xdp"], "native", "{v:#}");
    }

    // Every node's cluster-status-json agrees on roles and LSNs (retry while WAL moves).
    let view = |r: &Value| {
        ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
            .iter()
            .map(|a| (r["nodes"][a]["type"].clone(), r["nodes"][a]["db"].clone(), r["nodes"][a]["lsn"].clone()))
            .collect::<Vec<_>>()
    };
    let mut last = Vec::new();
    let mut agreed = None;
    for _ in 0..40 {
        let reports: Vec<Value> = (0..3).map(|i| json_of(&c.efm(i, &["cluster-status-json"]))).collect();
        // Agreed, and the idle standby has replayed what the primary wrote (the test bed's
        // set-up writes WAL until just before the agents start).
        let caught_up = |r: &Value| r["nodes"]["198.18.0.2"]["lsn"] == r["nodes"]["198.18.0.1"]["lsn"];
        if reports.iter().all(|r| view(r) == view(&reports[0])) && caught_up(&reports[0]) {
            agreed = Some(reports[0].clone());
            break;
        }
        last = reports;
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = agreed.unwrap_or_else(|| panic!("the three nodes' cluster-status-json never agreed: {last:#?}"));
    assert_eq!(report["nodes"]["198.18.0.1"]["type"], "Primary");
    assert_eq!(report["nodes"]["198.18.0.2"]["type"], "Standby");
    assert_eq!(report["nodes"]["198.18.0.3"]["type"], "Witness");
    assert_eq!(report["nodes"]["198.18.0.1"]["db"], "UP");
    assert_eq!(report["nodes"]["198.18.0.2"]["db"], "UP");
    assert_eq!(report["nodes"]["198.18.0.3"]["db"], "N/A");
    let lsn = report["nodes"]["198.18.0.1"]["lsn"].as_str().unwrap();
    assert!(lsn.contains('/'), "primary LSN in PostgreSQL's format: {lsn}");
    assert_eq!(report["nodes"]["198.18.0.2"]["lsn"], lsn, "idle standby replayed up to the primary");
    assert!(report["missingnodes"].as_array().unwrap().is_empty());
    assert_eq!(report["membershipcoordinator"].as_str().map(str::is_empty), Some(false));
    let text = c.efm(0, &["cluster-status"]);
    let text_out = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text_out}");
    assert!(text_out.starts_with("Cluster Status: acctg"), "{text_out}");
    assert!(text_out.contains("It is safe to promote"), "{text_out}");
    assert_eq!(text.status.code(), Some(0), "healthy cluster exits 0");

    // A second agent for the same cluster on the same node is refused.
    let second = Agent::command(&c.bed.nodes[0].ns.name, &c.files[0]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second agent must not start");
    assert!(err.contains("already running") && err.contains(&c.agents[0].pid().to_string()), "{err}");

    // SIGKILL the standby's agent: its kernel keeps answering, so the others see "agent dead,
    // node alive" within node.timeout + 2 heartbeat intervals.
    let bound = (NODE_TIMEOUT_MS + 2 * HB_MS) * 1_000_000;
    let t_kill = monotonic_ns();
    c.agents[1].sigkill();
    for i in [0, 2] {
        let v = c.wait_for(
            i,
            "agent dead on 198.18.0.2",
            Duration::from_secs(5),
            verdict_is("198.18.0.2:7800", "agent dead, node alive"),
        );
        let took = peer(&v, "198.18.0.2:7800")["verdictSinceNs"].as_u64().unwrap().saturating_sub(t_kill);
        eprintln!("node {}: agent death of 198.18.0.2 detected after {} ms", i + 1, took / 1_000_000);
        assert!(took <= bound, "detected after {took} ns, bound {bound} ns");
    }
    let st = json_of(&c.efm(0, &["cluster-status-json"]));
    assert!(st["missingnodes"].as_array().unwrap().iter().any(|a| a == "198.18.0.2"), "{st:#}");
    assert_eq!(st["efm"]["missing"]["198.18.0.2"]["heartbeat"]["verdict"], "agent dead, node alive");
    assert_ne!(c.efm(0, &["cluster-status"]).status.code(), Some(0), "a missing agent is not healthy");

    // The restarted agent re-opens its pinned datapath and is seen alive again.
    c.agents[1] = Agent::start(&c.bed.nodes[1].ns.name, &c.files[1]);
    for i in [0, 2] {
        c.wait_for(i, "198.18.0.2 alive again", Duration::from_secs(30), verdict_is("198.18.0.2:7800", "alive"));
    }

    // Cut the witness's link at the switch: nothing of it is heard any more: "node dead".
    let t_cut = monotonic_ns();
    c.bed.link_down(2);
    for i in [0, 1] {
        let v = c.wait_for(i, "witness node dead", Duration::from_secs(5), verdict_is("198.18.0.3:7800", "node dead"));
        let took = peer(&v, "198.18.0.3:7800")["verdictSinceNs"].as_u64().unwrap().saturating_sub(t_cut);
        eprintln!("node {}: link cut of 198.18.0.3 detected after {} ms", i + 1, took / 1_000_000);
        assert!(took <= bound, "detected after {took} ns, bound {bound} ns");
    }
    c.bed.link_up(2);
    c.wait_for(0, "witness back", Duration::from_secs(10), verdict_is("198.18.0.3:7800", "alive"));

    // Orderly stop: standby and witness detach and remove their pins; the primary leaves XDP
    // attached (its clients must lose it when its lease runs out, as if the agent had died).
    c.agents.clear();
    for (i, f) in c.files.iter().enumerate() {
        assert_eq!(f.bpffs.0.join(CLUSTER).exists(), i == 0, "node {}: pins kept only on the primary", i + 1);
        assert!(!f.run_dir.join(format!("{CLUSTER}.sock")).exists(), "admin socket removed");
    }
}
