//! A whole efm cluster for end-to-end tests: the bed (a namespace per node plus a client
//! namespace on a bridge), real `PostgreSQL` 15 (a primary and `pg_basebackup` standbys), a
//! configuration per node, real agents, and a client that writes through the VIP and records, on
//! the shared kernel clock, which server acknowledged each write.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{bed::Bed, enter_netns, monotonic_ns, pg, require_root, PinDir};

pub const CLUSTER: &str = "acctg";
pub const VIP: &str = "198.18.0.100";

/// What runs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Primary,
    Standby,
    Witness,
}

/// A binary built next to the running test (`cargo xtask test` builds the workspace first).
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Test binaries live in target/<profile>/deps, other executables (bench) in target/<profile>.
    let mut dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build it first (`cargo build -p efm-agent --bins`; `cargo xtask test` does)", p.display());
    p
}

/// One node's files.
pub struct NodeFiles {
    pub config_dir: PathBuf,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub bpffs: PinDir,
    pub ip: String,
}

/// A running agent; SIGTERM (orderly) on drop, SIGKILL if it does not stop.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    /// The command that runs `efm-agent` for node files `f` in network namespace `ns` only
    /// (`nsenter --net`: `ip netns exec` would give it a private /sys and its pins would die
    /// with it).
    #[must_use]
    pub fn command(ns: &str, f: &NodeFiles) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{ns}"))
            .arg(bin("efm-agent"))
            .args(["--cluster", CLUSTER, "--config-dir"])
            .arg(&f.config_dir)
            .arg("--run-dir")
            .arg(&f.run_dir)
            .arg("--bpffs-dir")
            .arg(&f.bpffs.0)
            .arg("--state-dir")
            .arg(&f.state_dir)
            .env_remove("EFM_LOG");
        cmd
    }

    #[must_use]
    pub fn start(ns: &str, f: &NodeFiles) -> Self {
        let child = Self::command(ns, f).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn efm-agent");
        Self { child: Some(child) }
    }

    /// A placeholder for an agent not running (yet).
    #[must_use]
    pub fn start_later() -> Self {
        Self { child: None }
    }

    /// Whether the agent process has exited (reaps it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(i32::try_from(c.id()).unwrap(), sig) };
        }
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child (continue it first in case it is stopped).
        unsafe {
            libc::kill(i32::try_from(c.id()).unwrap(), libc::SIGCONT);
            libc::kill(i32::try_from(c.id()).unwrap(), libc::SIGTERM);
        }
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

/// Prints every node's agent log if the test panics (the logs live in the temporary directory).
struct DumpLogsOnPanic(PathBuf, usize);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = std::env::temp_dir().join(format!(
            "efm-failed-{}",
            self.0.file_name().map_or_else(|| std::process::id().to_string(), |n| n.to_string_lossy().into_owned())
        ));
        let _ = fs::create_dir_all(&keep);
        eprintln!("---- whole agent logs kept in {}", keep.display());
        for i in 1..=self.1 {
            let log = self.0.join(format!("node{i}/log/{CLUSTER}.log"));
            let _ = fs::copy(&log, keep.join(format!("node{i}.log")));
            let text = fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let tail: Vec<&str> = text.lines().filter(|l| !l.contains("openraft")).rev().take(80).collect();
            eprintln!("---- {} (last {} lines)", log.display(), tail.len());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The cluster.
pub struct Cluster {
    pub kinds: Vec<Kind>,
    // Field order is drop order: agents stop first, then the databases, then the network.
    pub agents: Vec<Agent>,
    pub pg: Vec<Option<pg::PgNode>>,
    pub files: Vec<NodeFiles>,
    _dump: DumpLogsOnPanic,
    pub bed: Bed,
    pub root: pg::TempDir,
}

/// Timing settings every node gets (the product's defaults, written out).
pub const DEFAULT_PROPS: &str = "heartbeat.interval=50ms\nnode.timeout=500ms\nlease.timeout=1s\n";

/// Database monitoring settings every node gets unless `extra` sets them (shorter than the
/// product's defaults, so that the tests run quickly).
pub const TEST_DB_PROPS: &str = "local.period=1\nlocal.timeout=5\nlocal.timeout.final=1\nremote.timeout=2\n";

/// The lines of [`DEFAULT_PROPS`] and [`TEST_DB_PROPS`] whose property `extra` does not set (a
/// property set twice is a configuration error).
fn defaults_not_in(extra: &str) -> String {
    let set: Vec<&str> = extra.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k.trim()).collect();
    DEFAULT_PROPS
        .lines()
        .chain(TEST_DB_PROPS.lines())
        .filter(|l| l.split_once('=').is_none_or(|(k, _)| !set.contains(&k.trim())))
        .flat_map(|l| [l, "\n"])
        .collect()
}

impl Cluster {
    /// Starts nodes of the given kinds (the first must be the primary, unless all are witnesses:
    /// a cluster without databases, for heartbeat and detection measurements) at 198.18.0.1..
    /// and a client namespace after them; `extra` goes into every node's properties, and a
    /// timing it sets replaces the default in [`DEFAULT_PROPS`].
    #[must_use]
    pub fn start(kinds: &[Kind], extra: &str) -> Self {
        Self::start_with(kinds, extra, |_| String::new())
    }

    /// [`Cluster::start`] with more properties for node `i` (0-based) from `per_node`.
    #[must_use]
    pub fn start_with(kinds: &[Kind], extra: &str, per_node: impl Fn(usize) -> String) -> Self {
        require_root();
        let witnesses_only = kinds.iter().all(|k| *k == Kind::Witness);
        if !witnesses_only {
            pg::require_postgres();
            assert_eq!(kinds[0], Kind::Primary);
        }
        let n = kinds.len();
        let bed = Bed::new(u8::try_from(n + 1).unwrap());
        let root = pg::TempDir::new("cluster");
        let key = root.path().join(format!("{CLUSTER}.key"));
        efm_agent::heartbeat::generate_cluster_key(&key).unwrap();
        let dump = DumpLogsOnPanic(root.path().to_owned(), n);

        let mut pgs: Vec<Option<pg::PgNode>> = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let ip = bed.nodes[i].ip.to_string();
            let opts = pg::PgOptions::new(5432, &ip)
                .netns(&bed.nodes[i].ns.name)
                .conf(&format!("cluster_name = 'n{}'", i + 1))
                // Clients come in on the VIP as well as the node's own address.
                .conf("listen_addresses = '*'");
            pgs.push(match k {
                Kind::Primary => Some(pg::PgNode::primary_with(opts)),
                Kind::Standby => Some(pg::PgNode::standby_with(pgs[0].as_ref().unwrap(), opts)),
                Kind::Witness => None,
            });
        }
        let members: Vec<String> = (0..n).map(|i| format!("{}:7800", bed.nodes[i].ip)).collect();
        let mut files = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let dir = root.path().join(format!("node{}", i + 1));
            fs::create_dir_all(&dir).unwrap();
            let ip = bed.nodes[i].ip.to_string();
            let mut props = format!(
                "db.user=postgres\ndb.port=5432\ndb.database=postgres\nbind.address={ip}:7800\n\
                 lock.dir={d}/lock\nlog.dir={d}/log\ncluster.key.file={key}\n\
                 virtual.ip={VIP}\nvirtual.ip.prefix=24\n{defaults}{extra}\n",
                d = dir.display(),
                key = key.display(),
                defaults = defaults_not_in(extra),
            );
            match pgs[i].as_ref() {
                Some(p) => {
                    let _ = writeln!(props, "db.service.owner=postgres\ndb.data.dir={}\ndb.bin={}", p.data.display(), pg::bin_dir().display());
                }
                None => props.push_str("is.witness=true\n"),
            }
            if *k == Kind::Witness {
                props.push_str("promotable=false\n");
            }
            props.push_str(&per_node(i));
            props.push('\n');
            fs::write(dir.join(format!("{CLUSTER}.properties")), props).unwrap();
            fs::write(dir.join(format!("{CLUSTER}.nodes")), members.join(" ") + "\n").unwrap();
            files.push(NodeFiles {
                run_dir: dir.join("run"),
                state_dir: dir.join("state"),
                config_dir: dir,
                bpffs: PinDir::new("cl"),
                ip,
            });
        }
        let agents = (0..n).map(|i| Agent::start(&bed.nodes[i].ns.name, &files[i])).collect();
        let c = Self { kinds: kinds.to_vec(), agents, pg: pgs, files, _dump: dump, bed, root };
        c.wait_healthy(Duration::from_mins(1));
        c
    }

    /// `efm <args> acctg` against node `i`'s agent.
    #[must_use]
    pub fn efm(&self, i: usize, args: &[&str]) -> Output {
        let f = &self.files[i];
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

    /// `efm <cmd> acctg <rest...>` against node `i`'s agent, e.g. `efm promote acctg -switchover`.
    #[must_use]
    pub fn efm_cmd(&self, i: usize, cmd: &str, rest: &[&str]) -> Output {
        let f = &self.files[i];
        Command::new(bin("efm"))
            .arg(cmd)
            .arg(CLUSTER)
            .args(rest)
            .arg("--config-dir")
            .arg(&f.config_dir)
            .arg("--run-dir")
            .arg(&f.run_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run efm")
    }

    /// `efm cluster-status-json` from node `i`.
    #[must_use]
    pub fn cluster_status_json(&self, i: usize) -> Option<Value> {
        let out = self.efm(i, &["cluster-status-json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Restarts node `i`'s agent (orderly stop, then start).
    pub fn restart_agent(&mut self, i: usize) {
        let ns = self.bed.nodes[i].ns.name.clone();
        let old = std::mem::replace(&mut self.agents[i], Agent::start_later());
        drop(old);
        self.agents[i] = Agent::start(&ns, &self.files[i]);
    }

    /// The database index whose server name (`cluster_name`, "n1".."nN") is `name`.
    #[must_use]
    pub fn index_of(name: &str) -> usize {
        name.trim_start_matches('n').parse::<usize>().expect("server name n<i>") - 1
    }

    #[must_use]
    pub fn node_status(&self, i: usize) -> Option<Value> {
        let out = self.efm(i, &["node-status-json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Polls node `i` until `pred` holds, or panics after `timeout`.
    pub fn wait_for(&self, i: usize, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let v = self.node_status(i);
            if let Some(v) = &v {
                if pred(v) {
                    return v.clone();
                }
            }
            assert!(Instant::now() < until, "timed out waiting for {what} on node {}; last: {v:#?}", i + 1);
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every agent answers, sees every peer alive, and the primary serves (HA outcome).
    pub fn wait_healthy(&self, timeout: Duration) {
        for i in 0..self.kinds.len() {
            self.wait_for(i, "a healthy cluster", timeout, |v| {
                v["peers"].as_array().is_some_and(|ps| ps.iter().all(|p| p["verdict"] == "alive"))
            });
        }
        if self.kinds[0] != Kind::Primary {
            return;
        }
        self.wait_for(0, "the primary serving", timeout, |v| {
            v["outcome"].as_str().is_some_and(|o| o.starts_with("primary for epoch"))
        });
    }

    /// Index of the only node whose kernel passes client traffic to a primary database, if
    /// exactly one does (an isolated old primary may still think it is primary; its kernel
    /// decides).
    #[must_use]
    pub fn serving_primary(&self) -> Option<usize> {
        let p: Vec<usize> = (0..self.kinds.len())
            .filter(|&i| {
                self.node_status(i).is_some_and(|v| {
                    v["kernel"]["serving"] == true && v["db"]["inRecovery"] == false && v["db"]["state"] == "UP"
                })
            })
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    /// Starts a client in the client namespace writing through the VIP.
    #[must_use]
    pub fn writer(&self) -> Writer {
        let ns = format!("/var/run/netns/{}", self.bed.nodes[self.kinds.len()].ns.name);
        self.pg[0].as_ref().unwrap().psql("CREATE TABLE IF NOT EXISTS efm_probe (seq bigint PRIMARY KEY, t bigint)");
        Writer::start(ns)
    }
}

/// One write attempt: when it finished, and which server acknowledged it (None: failed).
#[derive(Clone, Debug)]
pub struct Ack {
    pub t_ns: u64,
    pub seq: i64,
    pub server: Option<String>,
}

/// A client writing one row every few ms through the VIP, reconnecting at once on any error.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub log: Arc<Mutex<Vec<Ack>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(netns_path: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&netns_path);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(write_loop(s, l));
        });
        Self { stop, log, thread: Some(thread) }
    }

    /// Stops the client and returns its record.
    #[must_use]
    pub fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.log.lock().unwrap().clone()
    }

    /// Waits until some write has been acknowledged by `server` after `after_ns`.
    #[must_use]
    pub fn wait_ack_from(&self, server: &str, after_ns: u64, timeout: Duration) -> Option<u64> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(t) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.t_ns > after_ns && a.server.as_deref() == Some(server))
                .map(|a| a.t_ns)
            {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Ack>>>) {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(VIP).port(5432).user("postgres").dbname("postgres").connect_timeout(Duration::from_millis(300));
    let mut client: Option<tokio_postgres::Client> = None;
    let mut seq: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            if let Ok(Ok((c, conn))) = tokio::time::timeout(Duration::from_millis(400), cfg.connect(tokio_postgres::NoTls)).await {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client = Some(c);
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        seq += 1;
        let Some(c) = client.as_ref() else { continue };
        let t = i64::try_from(monotonic_ns()).unwrap_or(i64::MAX);
        let res = tokio::time::timeout(
            Duration::from_millis(500),
            c.query_one("INSERT INTO efm_probe (seq, t) VALUES ($1, $2) RETURNING current_setting('cluster_name')", &[&seq, &t]),
        )
        .await;
        let now = monotonic_ns();
        if let Ok(Ok(row)) = res {
            let server: String = row.get(0);
            log.lock().unwrap().push(Ack { t_ns: now, seq, server: Some(server) });
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            log.lock().unwrap().push(Ack { t_ns: now, seq, server: None });
            client = None;
        }
    }
}

/// The overlap check: the last write the old primary acknowledged came before the first one the
/// new primary acknowledged. Returns (last old ack, first new ack) in ns.
#[must_use]
pub fn no_overlap(acks: &[Ack], old: &str, new: &str) -> (u64, u64) {
    let first_new = acks.iter().filter(|a| a.server.as_deref() == Some(new)).map(|a| a.t_ns).min().expect("the new primary acknowledged writes");
    let last_old = acks.iter().filter(|a| a.server.as_deref() == Some(old)).map(|a| a.t_ns).max().unwrap_or(0);
    assert!(
        last_old < first_new,
        "two writable primaries: {old} acknowledged a write {} µs after {new} acknowledged its first",
        (last_old - first_new) / 1000
    );
    (last_old, first_new)
}

/// One measured failover.
#[derive(Clone, Debug)]
pub struct FailoverRun {
    /// Fault → first write acknowledged by the new primary, through the VIP.
    pub failover_ms: u64,
    /// How long before the new primary's first acknowledged write the old one acknowledged its
    /// last (positive: no overlap).
    pub gap_ms: i64,
    pub new_primary: String,
}

/// Starts a cluster of `kinds` with a client writing through the VIP, applies `fault`, and
/// waits for a new primary to accept writes. Panics if two primaries acknowledged writes at
/// overlapping times, or if no new primary appears within `timeout`.
pub fn run_failover(kinds: &[Kind], extra: &str, timeout: Duration, fault: impl FnOnce(&mut Cluster)) -> (Cluster, Vec<Ack>, FailoverRun) {
    let mut c = Cluster::start(kinds, extra);
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");
    std::thread::sleep(Duration::from_millis(300));
    let t_fault = monotonic_ns();
    fault(&mut c);
    let until = Instant::now() + timeout;
    let new = loop {
        if let Some(a) = w.log.lock().unwrap().iter().find(|a| a.t_ns > t_fault && a.server.as_deref().is_some_and(|s| s != "n1")) {
            break a.server.clone().unwrap();
        }
        assert!(Instant::now() < until, "no new primary accepted writes within {timeout:?} of the fault");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let acks = w.finish();
    let (last_old, first_new) = no_overlap(&acks, "n1", &new);
    let run = FailoverRun {
        failover_ms: (first_new - t_fault) / 1_000_000,
        gap_ms: i64::try_from(first_new / 1_000_000).unwrap_or(i64::MAX) - i64::try_from(last_old / 1_000_000).unwrap_or(0),
        new_primary: new,
    };
    (c, acks, run)
}
