//! A whole efm cluster for end-to-end tests: the bed (a namespace per node plus a client
//! namespace on a bridge), real `PostgreSQL` (15, or 18 with [`Cluster::start_on`]: a primary and `pg_basebackup` standbys), a
//! configuration per node, real agents, and a client that writes through the VIP and records, on
//! the shared kernel clock, which server acknowledged each write.
//!
//! The users are EFM's: the agents monitor as [`pg::MONITOR_USER`] (not a superuser; its
//! password given as `db.password.encrypted`, encrypted with each node's `efm.key`), the
//! standbys stream as [`pg::REPLICATION_USER`] (password in a `passfile`), the client writes as
//! [`pg::APP_USER`].

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
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p efm-agent --bins`; `cargo xtask test` does)",
        p.display()
    );
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
        Self::spawn(Self::command(ns, f))
    }

    /// Starts `cmd`, an [`Agent::command`] the caller may have added to (e.g. a test hook's
    /// environment variable).
    #[must_use]
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn efm-agent");
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
    /// The databases' server version.
    pub version: pg::PgVersion,
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
        Self::start_nodes_style(kinds, extra, per_node, false)
    }

    /// [`Cluster::start_with`]; with `others_only` each node's `.nodes` file lists only the
    /// *other* members, as EFM 2.0's do (guide section 3.2.2).
    #[must_use]
    pub fn start_nodes_style(
        kinds: &[Kind],
        extra: &str,
        per_node: impl Fn(usize) -> String,
        others_only: bool,
    ) -> Self {
        Self::start_full(pg::PgVersion::V15, kinds, extra, per_node, others_only)
    }

    /// [`Cluster::start_with`] on `PostgreSQL` `version`.
    #[must_use]
    pub fn start_on(version: pg::PgVersion, kinds: &[Kind], extra: &str, per_node: impl Fn(usize) -> String) -> Self {
        Self::start_full(version, kinds, extra, per_node, false)
    }

    fn start_full(
        version: pg::PgVersion,
        kinds: &[Kind],
        extra: &str,
        per_node: impl Fn(usize) -> String,
        others_only: bool,
    ) -> Self {
        require_root();
        let witnesses_only = kinds.iter().all(|k| *k == Kind::Witness);
        if !witnesses_only {
            pg::require_postgres_version(version);
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
                .version(version)
                .conf(&format!("cluster_name = 'n{}'", i + 1))
                // pg_rewind needs it (efm rejoin).
                .conf("wal_log_hints = on")
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
            let monitor_password =
                pgs.iter().flatten().next().map(|p| p.creds.monitor_password.clone()).unwrap_or_default();
            let enc_key = efm_agent::secret::Key::load_or_create(&dir.join("efm.key")).expect("creating efm.key");
            let enc = efm_agent::secret::encrypt(&enc_key, CLUSTER, &monitor_password)
                .expect("encrypting the monitoring password");
            let mut props = format!(
                "db.user={user}\ndb.password.encrypted={enc}\ndb.port=5432\ndb.database=postgres\nbind.address={ip}:7800\n\
                 lock.dir={d}/lock\nlog.dir={d}/log\ncluster.key.file={key}\n\
                 virtual.ip={VIP}\nvirtual.ip.prefix=24\n{defaults}{extra}\n",
                d = dir.display(),
                key = key.display(),
                user = pg::MONITOR_USER,
                defaults = defaults_not_in(extra),
            );
            match pgs[i].as_ref() {
                Some(p) => {
                    let _ = writeln!(
                        props,
                        "db.service.owner=postgres\ndb.data.dir={}\ndb.bin={}",
                        p.data.display(),
                        p.bin.display()
                    );
                }
                None => props.push_str("is.witness=true\n"),
            }
            if *k == Kind::Witness {
                props.push_str("promotable=false\n");
            }
            props.push_str(&per_node(i));
            props.push('\n');
            fs::write(dir.join(format!("{CLUSTER}.properties")), props).unwrap();
            let listed: Vec<&str> =
                members.iter().enumerate().filter(|(j, _)| !others_only || *j != i).map(|(_, m)| m.as_str()).collect();
            fs::write(dir.join(format!("{CLUSTER}.nodes")), listed.join(" ") + "\n").unwrap();
            files.push(NodeFiles {
                run_dir: dir.join("run"),
                state_dir: dir.join("state"),
                config_dir: dir,
                bpffs: PinDir::new("cl"),
                ip,
            });
        }
        let agents = (0..n).map(|i| Agent::start(&bed.nodes[i].ns.name, &files[i])).collect();
        let c = Self { kinds: kinds.to_vec(), version, agents, pg: pgs, files, _dump: dump, bed, root };
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
        self.pg[0].as_ref().unwrap().psql(&format!(
            "CREATE TABLE IF NOT EXISTS efm_probe (seq bigint PRIMARY KEY, t bigint); GRANT ALL ON efm_probe TO {}",
            pg::APP_USER
        ));
        Writer::start(ns)
    }
}

/// One write attempt: when it was sent and when its answer (or error) arrived, on the shared
/// monotonic clock, and which server acknowledged it (None: failed).
#[derive(Clone, Debug)]
pub struct Ack {
    /// When the answer (acknowledgement or error) arrived at the client.
    pub t_ns: u64,
    /// When the statement was sent.
    pub sent_ns: u64,
    pub seq: i64,
    pub server: Option<String>,
    /// How long the statement slept inside the server before inserting (0: a short write).
    pub sleep_ms: u32,
    /// Why it failed (None when acknowledged).
    pub error: Option<String>,
}

impl Ack {
    /// A write whose statement slept inside the server before committing.
    #[must_use]
    pub fn is_long(&self) -> bool {
        self.sleep_ms > 0
    }
}

/// How many writers whose statements sleep inside the server (0.5–3 s) run beside the short one.
pub const LONG_WRITERS: usize = 3;

/// A client writing through the VIP like an application: one connection writing a row every
/// few ms, and [`LONG_WRITERS`] connections whose statements sleep 0.5–3 s inside the server
/// before inserting (`WITH s AS (SELECT pg_sleep(x)) INSERT ... FROM s RETURNING ...`), so a
/// fault always finds statements in flight. TCP keepalives are off on every connection (a
/// blocked client sends nothing); after an error a writer reconnects, as an application would.
/// Every attempt is recorded with the server that acknowledged it.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub log: Arc<Mutex<Vec<Ack>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(netns_path: String) -> Self {
        Self::start_to(netns_path, VIP.to_owned(), LONG_WRITERS)
    }

    /// A writer in the namespace at `netns_path` writing to `host`:5432 with `long_writers` long
    /// writers beside the short one.
    #[must_use]
    pub fn start_to(netns_path: String, host: String, long_writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&netns_path);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let seq = Arc::new(std::sync::atomic::AtomicI64::new(0));
                let mut tasks = Vec::new();
                for k in 0..long_writers {
                    let seed = monotonic_ns() ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(k as u64 + 1));
                    tasks.push(tokio::spawn(write_loop(host.clone(), s.clone(), l.clone(), seq.clone(), Some(seed))));
                }
                tasks.push(tokio::spawn(write_loop(host, s, l, seq, None)));
                let _ = ready_tx.send(());
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        let _ = ready_rx.recv();
        Self { stop, log, thread: Some(thread) }
    }

    /// Stops the client and returns its record. Statements in flight are awaited (each is
    /// bounded by its own timeout), so an acknowledgement that arrives late is still counted.
    #[must_use]
    pub fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = self.log.lock().unwrap().clone();
        v.sort_by_key(|a| a.t_ns);
        v
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

    /// Waits until each long writer has had a statement acknowledged by `server` after
    /// `after_ns` (so long statements are in flight from then on).
    #[must_use]
    pub fn wait_long_acks_from(&self, server: &str, after_ns: u64, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let k = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.is_long() && a.t_ns > after_ns && a.server.as_deref() == Some(server))
                .count();
            if k >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
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

/// A client configuration for `host`:5432 as the application's user [`pg::APP_USER`], TCP
/// keepalives off.
#[must_use]
pub fn client_config(host: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(5432)
        .user(pg::APP_USER)
        .dbname("postgres")
        .keepalives(false)
        .connect_timeout(Duration::from_millis(300));
    cfg
}

/// Connects (bounded by 400 ms) and drives the connection on a task.
pub async fn connect(cfg: &tokio_postgres::Config) -> Option<tokio_postgres::Client> {
    match tokio::time::timeout(Duration::from_millis(400), cfg.connect(tokio_postgres::NoTls)).await {
        Ok(Ok((c, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(c)
        }
        _ => None,
    }
}

/// The statement of a long write: sleeps `sleep_s` inside the server, then inserts.
#[must_use]
pub fn long_insert_sql(seq: i64, t: i64, sleep_s: f64) -> String {
    format!(
        "WITH s AS (SELECT pg_sleep({sleep_s:.3})) INSERT INTO efm_probe (seq, t) SELECT {seq}, {t} FROM s \
         RETURNING current_setting('cluster_name')"
    )
}

/// One writer: short writes (`seed` None) every few ms with a 500 ms timeout, or long ones
/// (sleeping 0.5–3 s, chosen by a xorshift generator from `seed`) with the sleep + 4 s as
/// timeout. After `stop` a long writer still waits for the answer to the statement it sent.
async fn write_loop(
    host: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Ack>>>,
    seqs: Arc<std::sync::atomic::AtomicI64>,
    seed: Option<u64>,
) {
    let cfg = client_config(&host);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut rng = seed.unwrap_or(1) | 1;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            client = connect(&cfg).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let seq = seqs.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = monotonic_ns();
        let t = i64::try_from(sent).unwrap_or(i64::MAX);
        let (res, sleep_ms) = if seed.is_some() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let sleep_ms = 500 + u32::try_from(rng % 2_501).unwrap_or(0);
            let sql = long_insert_sql(seq, t, f64::from(sleep_ms) / 1000.0);
            let limit = Duration::from_millis(u64::from(sleep_ms) + 4_000);
            (tokio::time::timeout(limit, c.query_one(sql.as_str(), &[])).await, sleep_ms)
        } else {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                c.query_one(
                    "INSERT INTO efm_probe (seq, t) VALUES ($1, $2) RETURNING current_setting('cluster_name')",
                    &[&seq, &t],
                ),
            )
            .await;
            (r, 0)
        };
        let now = monotonic_ns();
        match res {
            Ok(Ok(row)) => {
                let server: String = row.get(0);
                log.lock().unwrap().push(Ack {
                    t_ns: now,
                    sent_ns: sent,
                    seq,
                    server: Some(server),
                    sleep_ms,
                    error: None,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(e)) => {
                log.lock().unwrap().push(Ack {
                    t_ns: now,
                    sent_ns: sent,
                    seq,
                    server: None,
                    sleep_ms,
                    error: Some(e.to_string()),
                });
                client = None;
            }
            Err(_) => {
                log.lock().unwrap().push(Ack {
                    t_ns: now,
                    sent_ns: sent,
                    seq,
                    server: None,
                    sleep_ms,
                    error: Some("client timeout".into()),
                });
                client = None;
            }
        }
    }
}

/// The overlap check: the last write the old primary acknowledged — short or long: a long
/// statement's acknowledgement counts when it arrives — came before the first one the new
/// primary acknowledged. Returns (last old ack, first new ack) in ns.
#[must_use]
pub fn no_overlap(acks: &[Ack], old: &str, new: &str) -> (u64, u64) {
    let first_new = acks
        .iter()
        .filter(|a| a.server.as_deref() == Some(new))
        .map(|a| a.t_ns)
        .min()
        .expect("the new primary acknowledged writes");
    let late: Vec<&Ack> = acks.iter().filter(|a| a.server.as_deref() == Some(old) && a.t_ns >= first_new).collect();
    let last_old = acks.iter().filter(|a| a.server.as_deref() == Some(old)).map(|a| a.t_ns).max().unwrap_or(0);
    assert!(
        late.is_empty(),
        "two writable primaries: {old} acknowledged {} write(s) after {new} acknowledged its first, the last {} ms after; \
         {} of them long statements (sent {:?} ms before {new}'s first): {late:?}",
        late.len(),
        (last_old - first_new) / 1_000_000,
        late.iter().filter(|a| a.is_long()).count(),
        late.iter().map(|a| (first_new.saturating_sub(a.sent_ns)) / 1_000_000).collect::<Vec<_>>(),
    );
    (last_old, first_new)
}

/// How many writes `server` acknowledged: (short, long).
#[must_use]
pub fn ack_counts(acks: &[Ack], server: &str) -> (usize, usize) {
    let of = |long: bool| acks.iter().filter(|a| a.server.as_deref() == Some(server) && a.is_long() == long).count();
    (of(false), of(true))
}

/// The acknowledged writes whose rows are missing on the database `pg` (by `seq`).
#[must_use]
pub fn missing_rows(pg: &pg::PgNode, acks: &[Ack]) -> Vec<i64> {
    let have: std::collections::HashSet<i64> =
        pg.query("SELECT seq FROM efm_probe").iter().filter_map(|r| r.first().and_then(|v| v.parse().ok())).collect();
    acks.iter().filter(|a| a.server.is_some() && !have.contains(&a.seq)).map(|a| a.seq).collect()
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
    /// Long statements (sleeping inside the server) acknowledged by the old and the new primary;
    /// all of them were counted in the overlap check.
    pub long_acks_old: usize,
    pub long_acks_new: usize,
    /// Long statements that failed (error or client timeout).
    pub long_failed: usize,
}

/// Starts a cluster of `kinds` with a client writing through the VIP, applies `fault`, and
/// waits for a new primary to accept writes. Panics if two primaries acknowledged writes at
/// overlapping times, or if no new primary appears within `timeout`.
pub fn run_failover(
    kinds: &[Kind],
    extra: &str,
    timeout: Duration,
    fault: impl FnOnce(&mut Cluster),
) -> (Cluster, Vec<Ack>, FailoverRun) {
    run_failover_on(pg::PgVersion::V15, kinds, extra, timeout, fault)
}

/// [`run_failover`] on `PostgreSQL` `version`.
pub fn run_failover_on(
    version: pg::PgVersion,
    kinds: &[Kind],
    extra: &str,
    timeout: Duration,
    fault: impl FnOnce(&mut Cluster),
) -> (Cluster, Vec<Ack>, FailoverRun) {
    let mut c = Cluster::start_on(version, kinds, extra, |_| String::new());
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");
    // Every long writer has its connection open and a statement done: from now on long
    // statements are in flight.
    assert!(
        w.wait_long_acks_from("n1", 0, LONG_WRITERS, Duration::from_secs(20)),
        "the long writers write through the VIP to n1"
    );
    std::thread::sleep(Duration::from_millis(300));
    let t_fault = monotonic_ns();
    fault(&mut c);
    let until = Instant::now() + timeout;
    let new = loop {
        if let Some(a) =
            w.log.lock().unwrap().iter().find(|a| a.t_ns > t_fault && a.server.as_deref().is_some_and(|s| s != "n1"))
        {
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
        gap_ms: i64::try_from(first_new / 1_000_000).unwrap_or(i64::MAX)
            - i64::try_from(last_old / 1_000_000).unwrap_or(0),
        long_acks_old: ack_counts(&acks, "n1").1,
        long_acks_new: ack_counts(&acks, &new).1,
        long_failed: acks.iter().filter(|a| a.is_long() && a.server.is_none()).count(),
        new_primary: new,
    };
    (c, acks, run)
}

impl Cluster {
    /// Replication as EFM's guide sets it up, checked on the serving primary `primary`: each
    /// database in `standbys` streams from it as [`pg::REPLICATION_USER`] (its WAL receiver
    /// names that user and the password file, `pg_stat_replication` on the primary shows the
    /// user), and no data directory's configuration contains the monitoring user's password.
    /// Waits up to `timeout` for the streams.
    pub fn assert_replication_settings(&self, primary: usize, standbys: &[usize], timeout: Duration) {
        let p = self.pg[primary].as_ref().expect("the primary has a database");
        let until = Instant::now() + timeout;
        for &i in standbys {
            let s = self.pg[i].as_ref().expect("a standby has a database");
            let name = format!("n{}", i + 1);
            loop {
                // cluster_name is the WAL receiver's application_name unless primary_conninfo
                // sets one: match by the receiver's address instead.
                let last = p.psql(&format!(
                    "SELECT usename, state FROM pg_stat_replication WHERE client_addr = '{}'",
                    self.bed.nodes[i].ip
                ));
                if last == format!("{}|streaming", pg::REPLICATION_USER) {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "{name} does not stream from n{} as {}: pg_stat_replication says {last:?}",
                    primary + 1,
                    pg::REPLICATION_USER
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let ci = s.psql("SHOW primary_conninfo");
            let ci = efm_agent::postgres::control::ConnInfo::parse(&ci).expect("primary_conninfo parses");
            assert_eq!(ci.get("host"), Some(self.files[primary].ip.as_str()), "{name}: {ci:?}");
            assert_eq!(ci.get("user"), Some(pg::REPLICATION_USER), "{name}: {ci:?}");
            assert_eq!(ci.get("passfile").map(PathBuf::from), Some(s.creds.passfile.clone()), "{name}: {ci:?}");
            assert_eq!(ci.get("password"), None, "{name}: {ci:?}");
        }
        self.assert_no_monitor_password_in_config();
    }

    /// No data directory's configuration files contain the monitoring user's password (the
    /// distinctive part of it, so that any quoting of it is found too).
    pub fn assert_no_monitor_password_in_config(&self) {
        for (i, p) in self.pg.iter().enumerate() {
            let Some(p) = p else { continue };
            let pw = &p.creds.monitor_password;
            let tail = &pw[pw.len().saturating_sub(16)..];
            let hits = p.config_files_containing(tail);
            assert!(hits.is_empty(), "n{}: the monitoring password is written in {hits:?}", i + 1);
        }
    }
}
