//! Real agents on a three-node bed: a PostgreSQL 15 primary, a streaming standby
//! (pg_basebackup) and a witness, each in its own network namespace on a bridge, each with its own
//! efm-agent attaching XDP to its interface. Needs root; run single-threaded.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use efm_tests::{bed::Bed, monotonic_ns, pg, require_root, PinDir};
use serde_json::Value;

const CLUSTER: &str = "acctg";
const HB_MS: u64 = 50;
const NODE_TIMEOUT_MS: u64 = 500;

/// A binary built next to this test (`cargo xtask test` builds the workspace first).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build it first (`cargo build -p efm-agent --bins`; `cargo xtask test` does)", p.display());
    p
}

/// Prints every node's agent log if the test panics (the logs live in the temporary directory,
/// which is removed afterwards).
struct DumpLogsOnPanic(PathBuf);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 1..=3 {
            let log = self.0.join(format!("node{i}/log/{CLUSTER}.log"));
            let text = fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- {} (last {} lines)", log.display(), tail.len());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// One node's files.
struct NodeFiles {
    config_dir: PathBuf,
    run_dir: PathBuf,
    bpffs: PinDir,
}

fn write_config(root: &Path, i: usize, ip: &str, data_dir: Option<&Path>, key: &Path) -> NodeFiles {
    let config_dir = root.join(format!("node{i}"));
    fs::create_dir_all(&config_dir).unwrap();
    let mut props = format!(
        "# efm test node {i}\n\
         db.user=postgres\n\
         db.port=5432\n\
         db.database=postgres\n\
         bind.address={ip}:7800\n\
         lock.dir={root}/node{i}/lock\n\
         log.dir={root}/node{i}/log\n\
         heartbeat.interval={HB_MS}ms\n\
         node.timeout={NODE_TIMEOUT_MS}ms\n\
         local.period=1\n\
         local.timeout=5\n\
         local.timeout.final=2\n\
         remote.timeout=3\n\
         cluster.key.file={key}\n",
        root = root.display(),
        key = key.display(),
    );
    match data_dir {
        Some(d) => props.push_str(&format!("db.service.owner=postgres\ndb.data.dir={}\n", d.display())),
        None => props.push_str("is.witness=true\n"),
    }
    fs::write(config_dir.join(format!("{CLUSTER}.properties")), props).unwrap();
    fs::write(
        config_dir.join(format!("{CLUSTER}.nodes")),
        "# all members\n198.18.0.1:7800 198.18.0.2:7800 198.18.0.3:7800\n",
    )
    .unwrap();
    NodeFiles { run_dir: config_dir.join("run"), config_dir, bpffs: PinDir::new("e2e") }
}

/// A running agent; stopped with SIGTERM (orderly) on drop, SIGKILL if it does not stop.
struct Agent {
    child: Option<Child>,
}

impl Agent {
    fn start(ns: &str, f: &NodeFiles) -> Self {
        // nsenter --net: only the network namespace. (`ip netns exec` would also give the agent
        // a private mount namespace with a fresh /sys, so its pins would die with it.)
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(bin("efm-agent"))
            .args(["--cluster", CLUSTER, "--config-dir"])
            .arg(&f.config_dir)
            .arg("--run-dir")
            .arg(&f.run_dir)
            .arg("--bpffs-dir")
            .arg(&f.bpffs.0)
            .arg("--state-dir")
            .arg(f.config_dir.join("state"))
            .env_remove("EFM_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn efm-agent");
        Self { child: Some(child) }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(i32::try_from(c.id()).unwrap(), libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn efm(f: &NodeFiles, args: &[&str]) -> Output {
    Command::new(bin("efm"))
        .args(args)
        .arg(CLUSTER)
        .arg("--config-dir")
        .arg(&f.config_dir)
        .arg("--run-dir")
        .arg(&f.run_dir)
        .output()
        .expect("run efm")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn node_status(f: &NodeFiles) -> Option<Value> {
    let out = efm(f, &["node-status-json"]);
    out.status.success().then(|| json_of(&out))
}

/// Polls `f`'s agent until `pred` holds for its node-status, or panics after `timeout`.
fn wait_for(f: &NodeFiles, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = node_status(f) {
            if pred(&v) {
                return v;
            }
            if Instant::now() > until {
                panic!("timed out waiting for {what}; last node-status: {v:#}");
            }
        } else if Instant::now() > until {
            panic!("timed out waiting for {what}: agent not answering");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peer<'a>(v: &'a Value, addr: &str) -> &'a Value {
    v["peers"].as_array().unwrap().iter().find(|p| p["address"] == addr).unwrap_or_else(|| panic!("no peer {addr} in {v:#}"))
}

fn verdict_is(addr: &'static str, verdict: &'static str) -> impl Fn(&Value) -> bool {
    move |v| peer(v, addr)["verdict"] == verdict
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn three_agents_agree_and_detect_agent_and_node_failures() {
    require_root();
    pg::require_postgres();
    let bed = Bed::new(3);
    let root = pg::TempDir::new("e2e");
    let key = root.path().join("acctg.key");
    efm_agent::heartbeat::generate_cluster_key(&key).unwrap();
    let _dump = DumpLogsOnPanic(root.path().to_owned());

    let primary = pg::PgNode::primary_with(pg::PgOptions::new(5432, "198.18.0.1").netns(&bed.nodes[0].ns.name));
    let standby =
        pg::PgNode::standby_with(&primary, pg::PgOptions::new(5432, "198.18.0.2").netns(&bed.nodes[1].ns.name));
    let files = [
        write_config(root.path(), 1, "198.18.0.1", Some(&primary.data), &key),
        write_config(root.path(), 2, "198.18.0.2", Some(&standby.data), &key),
        write_config(root.path(), 3, "198.18.0.3", None, &key),
    ];
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::start(&bed.nodes[i].ns.name, &files[i])).collect();

    // Everyone sees everyone alive, and knows its own role.
    let addrs = ["198.18.0.1:7800", "198.18.0.2:7800", "198.18.0.3:7800"];
    for (i, f) in files.iter().enumerate() {
        let v = wait_for(f, "all peers alive", Duration::from_secs(30), |v| {
            v["peers"].as_array().is_some_and(|ps| {
                ps.iter().all(|p| p["verdict"] == "alive" && p["nodeAgeMs"].is_u64())
            }) && (v["type"] == "Witness" || v["db"]["state"] == "UP")
        });
        assert_eq!(v["address"], addrs[i]);
        assert_eq!(v["type"], ["Primary", "Standby", "Witness"][i], "{v:#}");
        assert_eq!(v["xdp"], "native", "{v:#}");
    }

    // Every node's cluster-status-json agrees on roles and LSNs (retry while WAL moves).
    let mut agreed = None;
    let mut last = Vec::new();
    for _ in 0..40 {
        let reports: Vec<Value> = files.iter().map(|f| json_of(&efm(f, &["cluster-status-json"]))).collect();
        last.clone_from(&reports);
        let view = |r: &Value| {
            ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
                .iter()
                .map(|a| (r["nodes"][a]["type"].clone(), r["nodes"][a]["db"].clone(), r["nodes"][a]["lsn"].clone()))
                .collect::<Vec<_>>()
        };
        if reports.iter().all(|r| view(r) == view(&reports[0])) {
            agreed = Some(reports[0].clone());
            break;
        }
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
    let text = efm(&files[0], &["cluster-status"]);
    let text_out = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text_out}");
    assert!(text_out.starts_with("Cluster Status: acctg"), "{text_out}");
    assert!(text_out.contains("It is safe to promote"), "{text_out}");
    assert_eq!(text.status.code(), Some(0), "healthy cluster exits 0");

    // A second agent for the same cluster on the same node is refused.
    let second = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", bed.nodes[0].ns.name))
        .arg(bin("efm-agent"))
        .args(["--cluster", CLUSTER, "--config-dir"])
        .arg(&files[0].config_dir)
        .arg("--run-dir")
        .arg(&files[0].run_dir)
        .arg("--bpffs-dir")
        .arg(&files[0].bpffs.0)
        .arg("--state-dir")
        .arg(files[0].config_dir.join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second agent must not start");
    assert!(err.contains("already running") && err.contains(&agents[0].pid().to_string()), "{err}");

    // SIGKILL the standby's agent: its kernel keeps answering, so the others see "agent dead,
    // node alive" within node.timeout + 2 heartbeat intervals.
    let bound = (NODE_TIMEOUT_MS + 2 * HB_MS) * 1_000_000;
    let t_kill = monotonic_ns();
    agents[1].sigkill();
    for i in [0, 2] {
        let v = wait_for(&files[i], "agent dead on 198.18.0.2", Duration::from_secs(5), verdict_is("198.18.0.2:7800", "agent dead, node alive"));
        let since = peer(&v, "198.18.0.2:7800")["verdictSinceNs"].as_u64().unwrap();
        let took = since.saturating_sub(t_kill);
        eprintln!("node {}: agent death of 198.18.0.2 detected after {} ms", i + 1, took / 1_000_000);
        assert!(took <= bound, "detected after {took} ns, bound {bound} ns");
    }
    let st = json_of(&efm(&files[0], &["cluster-status-json"]));
    assert!(st["missingnodes"].as_array().unwrap().iter().any(|a| a == "198.18.0.2"), "{st:#}");
    assert_eq!(st["efm"]["missing"]["198.18.0.2"]["heartbeat"]["verdict"], "agent dead, node alive");
    assert_ne!(efm(&files[0], &["cluster-status"]).status.code(), Some(0), "a missing agent is not healthy");

    // The restarted agent re-opens its pinned datapath and is seen alive again.
    agents[1] = Agent::start(&bed.nodes[1].ns.name, &files[1]);
    for i in [0, 2] {
        wait_for(&files[i], "198.18.0.2 alive again", Duration::from_secs(30), verdict_is("198.18.0.2:7800", "alive"));
    }

    // Cut the witness's link at the switch: nothing of it is heard any more: "node dead".
    let t_cut = monotonic_ns();
    bed.link_down(2);
    for i in [0, 1] {
        let v = wait_for(&files[i], "witness node dead", Duration::from_secs(5), verdict_is("198.18.0.3:7800", "node dead"));
        let since = peer(&v, "198.18.0.3:7800")["verdictSinceNs"].as_u64().unwrap();
        let took = since.saturating_sub(t_cut);
        eprintln!("node {}: link cut of 198.18.0.3 detected after {} ms", i + 1, took / 1_000_000);
        assert!(took <= bound, "detected after {took} ns, bound {bound} ns");
    }
    bed.link_up(2);
    wait_for(&files[0], "witness back", Duration::from_secs(10), verdict_is("198.18.0.3:7800", "alive"));

    // Orderly stop: standby and witness detach and remove their pins; the primary leaves XDP
    // attached (its clients must lose it when its lease runs out, as if the agent had died).
    drop(agents);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f.bpffs.0.join(CLUSTER).exists(), i == 0, "node {}: pins kept only on the primary", i + 1);
        assert!(!f.run_dir.join(format!("{CLUSTER}.sock")).exists(), "admin socket removed");
    }
}
