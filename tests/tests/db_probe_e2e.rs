//! A confirmed primary database failure end to end (issue 13): real `PostgreSQL` 15 streaming
//! replication, real agents with XDP, a client writing through the VIP.
//!
//! - The primary's own checks fail while its database serves: first because an application
//!   took every connection slot a non-superuser may use (`max_connections`; the agents monitor
//!   as the non-superuser `efm`), then because `pg_hba.conf` was changed to reject the monitoring
//!   user from the primary's own address (the agent checks its database over TCP at its bind
//!   address; the standbys come from theirs). The standbys' remote checks reach the server — in
//!   the first case it answers "too many clients", which says it runs — so nothing fails over:
//!   the primary's agent goes idle with EFM's "Primary cannot ping local database"
//!   notification, keeps the VIP and its lease, no client write is refused, and `efm resume`
//!   brings it back once the cause is removed.
//! - The primary's postmaster hangs (SIGSTOP: its backends run on, no new connection is ever
//!   answered): nobody reaches the database and it fails over after `local.timeout` +
//!   `local.timeout.final` + the other agents' checks (`remote.timeout`). A postmaster that
//!   exits is failed over at once (pidfd): `failover_e2e`'s postmaster SIGKILL tests.
//!
//! Needs root; run single-threaded.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{client_config, run_failover, Ack, Cluster, Kind},
    enter_netns, monotonic_ns, pg,
};

const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A `script.notification` that appends its arguments as one line to `<dir>/notify.log`.
struct Recorder {
    dir: pg::TempDir,
    script: PathBuf,
}

impl Recorder {
    fn new() -> Self {
        let dir = pg::TempDir::new("notify");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("rec");
        let log = dir.path().join("notify.log");
        fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&log, "").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
        Self { dir, script }
    }

    fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("notify.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    #[track_caller]
    fn wait_count(&self, needle: &str, n: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                Instant::now() < until,
                "fewer than {n} notifications containing {needle:?} within {timeout:?}; recorded:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An application's connection pool run wild: from the client namespace it opens connections
/// as the application's user to `host`:5432 until the server refuses with SQLSTATE 53300 (only
/// the superuser's reserved slots are left), keeps trying every 50 ms so that any slot freed
/// meanwhile is taken too, and holds them all until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: usize,
}

impl Hog {
    fn fill(c: &Cluster, host: &str) -> Self {
        let ns = format!("/var/run/netns/{}", c.bed.nodes[c.kinds.len()].ns.name);
        let (stop, host) = (Arc::new(AtomicBool::new(false)), host.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let cfg = client_config(&host);
                let mut held = Vec::new();
                let mut reported = false;
                while !s.load(Ordering::SeqCst) {
                    match tokio::time::timeout(Duration::from_secs(2), cfg.connect(tokio_postgres::NoTls)).await {
                        Ok(Ok((client, conn))) => {
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                            held.push(client);
                        }
                        Ok(Err(e)) if e.as_db_error().is_some_and(|d| d.code().code() == "53300") => {
                            if !reported {
                                reported = true;
                                let _ = tx.send(Ok(held.len()));
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        Err(_) => {
                            let _ = tx.send(Err("connecting took longer than 2 s".into()));
                            return;
                        }
                    }
                }
                drop(held);
            });
        });
        let held = rx.recv_timeout(Duration::from_secs(30)).expect("the hog filled the slots").expect("connecting");
        Self { stop, thread: Some(thread), held }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn epoch(c: &Cluster, i: usize) -> u64 {
    c.node_status(i).and_then(|v| v["epoch"].as_u64()).expect("node-status answers")
}

/// Node `i` becomes an idle primary (no failover, monitoring suspended) and serves on; its
/// standbys keep endorsing it.
fn wait_idle_primary(c: &Cluster, why: &str) -> serde_json::Value {
    let v = c.wait_for(0, &format!("n1 an idle primary ({why})"), Duration::from_secs(30), |v| {
        v["outcome"].as_str().is_some_and(|o| o.contains(", idle: its agent cannot reach its database"))
    });
    assert_eq!(v["kernel"]["serving"], true, "{why}: the idle primary keeps serving: {v:#}");
    assert!(v["monitoring"].as_str().is_some_and(|m| m.starts_with("suspended")), "{why}: {v:#}");
    for i in 1..3 {
        c.wait_for(i, "the standby endorsing n1", Duration::from_secs(5), |v| {
            v["outcome"] == "standby, endorsing primary 198.18.0.1:7800"
        });
    }
    v
}

/// n1's kernel serves (its own view of its database is "down": its checks fail) and the
/// others are standbys in recovery. (`Cluster::serving_primary` needs the database UP in the
/// node's own view.)
fn only_n1_serves(c: &Cluster) {
    let v = c.node_status(0).expect("n1 answers");
    assert_eq!(v["kernel"]["serving"], true, "{v:#}");
    for i in 1..3 {
        let v = c.node_status(i).expect("a standby answers");
        assert_eq!(v["db"]["inRecovery"], true, "n{} is a standby: {v:#}", i + 1);
    }
}

/// `efm resume` on n1 makes it a monitored primary again.
fn resume(c: &Cluster, e0: u64) {
    let o = c.efm_cmd(0, "resume", &[]);
    assert!(o.status.success(), "efm resume once the cause is gone: {}", text(&o));
    assert!(text(&o).contains("Resumed monitoring"), "{}", text(&o));
    c.wait_for(0, "n1 a monitored primary", Duration::from_secs(10), |v| {
        v["monitoring"] == "active" && v["outcome"] == format!("primary for epoch {e0}")
    });
}

/// Every write attempt between `from` and `to` was acknowledged by n1: none refused, none lost
/// in a timeout. Returns how many there were.
fn all_acknowledged_by_n1(acks: &[Ack], from: u64, to: u64) -> usize {
    let window: Vec<&Ack> = acks.iter().filter(|a| a.sent_ns >= from && a.t_ns <= to).collect();
    let bad: Vec<&&Ack> = window.iter().filter(|a| a.server.as_deref() != Some("n1")).collect();
    assert!(
        bad.is_empty(),
        "{} of {} writes were not acknowledged by n1: {:?}",
        bad.len(),
        window.len(),
        &bad[..bad.len().min(5)]
    );
    window.len()
}

#[test]
fn a_primary_whose_own_checks_fail_while_its_database_serves_is_not_failed_over() {
    let t_start = Instant::now();
    let rec = Recorder::new();
    let script = rec.script.display().to_string();
    let c = Cluster::start_with(&PSS, "", |i| format!("script.notification={script} n{} %s\n", i + 1));
    let primary = c.pg[0].as_ref().unwrap();
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");
    assert!(w.wait_long_acks_from("n1", 0, efm_tests::cluster::LONG_WRITERS, Duration::from_secs(20)));
    let e0 = epoch(&c, 0);
    eprintln!("cluster up in {} ms", t_start.elapsed().as_millis());

    // 1. The connection slots: an application holds every one a non-superuser may use.
    let t_fault = monotonic_ns();
    let hog = Hog::fill(&c, "198.18.0.1");
    eprintln!("connection limit: the application holds {} connections", hog.held);
    wait_idle_primary(&c, "connection limit");
    eprintln!(
        "connection limit: n1 idle {} ms after the slots were taken (local.timeout 5 s + final 1 s + the standbys' checks)",
        (monotonic_ns() - t_fault) / 1_000_000
    );
    rec.wait_count("n1 Primary cannot ping local database for cluster acctg", 1, Duration::from_secs(10));
    rec.wait_count("n1 Unable to connect to DB on 198.18.0.1", 1, Duration::from_secs(10));
    // Beyond remote.timeout and every promotion wait: still no failover, n1 serves.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(epoch(&c, 1), e0, "no promotion");
    only_n1_serves(&c);
    let refused = c.efm_cmd(0, "resume", &[]);
    assert_eq!(refused.status.code(), Some(1), "resume while the checks still fail is refused: {}", text(&refused));
    drop(hog);
    resume(&c, e0);
    let t_back = monotonic_ns();
    assert!(w.wait_ack_from("n1", t_back, Duration::from_secs(5)).is_some());

    // 2. pg_hba.conf rejects the monitoring user from the primary's own address.
    let hba = PathBuf::from(primary.psql("SHOW hba_file"));
    let original = fs::read_to_string(&hba).expect("reading pg_hba.conf");
    fs::write(&hba, format!("host all {} 198.18.0.1/32 reject\n{original}", pg::MONITOR_USER)).unwrap();
    primary.psql("SELECT pg_reload_conf()");
    let t_hba = monotonic_ns();
    wait_idle_primary(&c, "pg_hba.conf");
    eprintln!("pg_hba.conf: n1 idle {} ms after the reload", (monotonic_ns() - t_hba) / 1_000_000);
    rec.wait_count("n1 Primary cannot ping local database for cluster acctg", 2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(epoch(&c, 1), e0, "no promotion");
    only_n1_serves(&c);
    fs::write(&hba, original).unwrap();
    primary.psql("SELECT pg_reload_conf()");
    resume(&c, e0);
    let t_end = monotonic_ns();
    assert!(w.wait_ack_from("n1", t_end, Duration::from_secs(5)).is_some());

    let acks = w.finish();
    let n = all_acknowledged_by_n1(&acks, t_fault, t_end);
    let long = acks.iter().filter(|a| a.sent_ns >= t_fault && a.is_long()).count();
    eprintln!("{n} writes ({long} long statements) sent during both episodes, every one acknowledged by n1");
    assert!(n > 100, "the client kept writing: {n}");
    eprintln!("test took {} s", t_start.elapsed().as_secs());
}

#[test]
fn a_hung_postmaster_nobody_reaches_is_failed_over() {
    let t_start = Instant::now();
    let (c, acks, run) = run_failover(&PSS, "", Duration::from_secs(30), |c| c.pg[0].as_ref().unwrap().sigstop());
    eprintln!(
        "hung postmaster: failover {} ms from the fault to the first write on {} (local.timeout 5 s + final 1 s + remote.timeout 2 s + a second of unreachable reports); last write on n1 {} ms before it; {} writes checked",
        run.failover_ms,
        run.new_primary,
        run.gap_ms,
        acks.len()
    );
    assert!(run.failover_ms < 15_000, "failover took {} ms", run.failover_ms);
    assert!(run.failover_ms > 5_000, "not before local.timeout: {} ms", run.failover_ms);
    let v = c.wait_for(0, "n1 fenced", Duration::from_secs(10), |v| v["kernel"]["serving"] == false);
    assert!(v["outcome"].as_str().is_some_and(|o| o.starts_with("fenced")), "the old primary gave its epoch up: {v:#}");
    let _ = c.pg[0].as_ref().unwrap().sigcont();
    eprintln!("test took {} s", t_start.elapsed().as_secs());
}
