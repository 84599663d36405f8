//! An absent primary agent is "agent down", not a failure (issue 13; EFM guide 2.0 §8.3): real
//! `PostgreSQL` 15 streaming replication, real agents with XDP, a client writing through the VIP
//! (short writes and statements sleeping 0.5–3 s inside the server). While the primary's kernel
//! answers the voters' PINGs and its database answers their remote checks, the voters keep
//! endorsing it: the kernel's lease never lapses, no standby is promoted, and no client write
//! fails. The agent carries on as primary when it is back. A database that stops during the
//! absence is failed over. EFM's notifications are recorded with a `script.notification`.
//! Needs root; run single-threaded.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{no_overlap, Ack, Agent, Cluster, Kind, Writer, CLUSTER, LONG_WRITERS},
    monotonic_ns, pg,
};

const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];
/// How long the primary's agent stays away.
const ABSENT: Duration = Duration::from_secs(10);

/// A `script.notification` that appends "n<i> <subject>" to a file.
struct Recorder {
    dir: pg::TempDir,
    script: PathBuf,
}

impl Recorder {
    fn new() -> Self {
        let dir = pg::TempDir::new("notes");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("rec");
        let log = dir.path().join("notes.log");
        fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&log, "").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
        Self { dir, script }
    }

    fn path(&self) -> &Path {
        &self.script
    }

    fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("notes.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Waits for a notification from node `node` ("n1") whose subject contains `subject`.
    #[track_caller]
    fn wait(&self, node: &str, subject: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        let prefix = format!("{node} ");
        while !self.lines().iter().any(|l| l.starts_with(&prefix) && l.contains(subject)) {
            assert!(
                Instant::now() < until,
                "no notification {subject:?} from {node} within {timeout:?}; recorded:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn count(&self, subject: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(subject)).count()
    }
}

/// A cluster (primary n1, standbys n2 and n3) whose notifications go to `rec`, with the client
/// writing through the VIP to n1 (long statements in flight).
fn cluster(rec: &Recorder) -> (Cluster, Writer) {
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "", |i| format!("script.notification={r} n{} %s\n", i + 1));
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");
    assert!(w.wait_long_acks_from("n1", 0, LONG_WRITERS, Duration::from_secs(20)), "the long writers write to n1");
    (c, w)
}

fn epoch(c: &Cluster, i: usize) -> u64 {
    c.node_status(i).and_then(|v| v["epoch"].as_u64()).unwrap_or_else(|| panic!("node {} answers", i + 1))
}

/// Every write was acknowledged by n1: none refused, failed or timed out, none elsewhere.
#[track_caller]
fn all_acknowledged_by_n1(acks: &[Ack], what: &str, from_ns: u64) {
    let during: Vec<&Ack> = acks.iter().filter(|a| a.sent_ns >= from_ns).collect();
    let bad: Vec<&&Ack> = during.iter().filter(|a| a.server.as_deref() != Some("n1")).collect();
    let long = during.iter().filter(|a| a.is_long()).count();
    eprintln!(
        "{what}: {} writes sent from the agent's stop on ({long} long statements), {} not acknowledged by n1",
        during.len(),
        bad.len()
    );
    assert!(during.len() > 100, "{what}: the client kept writing ({} writes)", during.len());
    assert!(long >= LONG_WRITERS, "{what}: long statements ran meanwhile ({long})");
    assert!(bad.is_empty(), "{what}: writes not acknowledged by n1: {bad:?}");
}

/// The checks while the agent is away: the standbys endorse n1 on its kernel's and database's
/// word (their outcome says so), the epoch does not move, n1 is the only serving primary.
fn while_absent(c: &Cluster, e0: u64) {
    for i in [1, 2] {
        c.wait_for(i, "the standby endorsing the absent primary", Duration::from_secs(10), |v| {
            v["outcome"].as_str().is_some_and(|o| o.starts_with("agent of primary 198.18.0.1:7800 absent"))
        });
        assert_eq!(epoch(c, i), e0, "no promotion on n{}", i + 1);
    }
}

/// The agent back: n1 carries on as the primary of the same epoch, serving; the standbys endorse
/// it on its PINGs again.
fn back(c: &Cluster, w: &Writer, e0: u64, rec: &Recorder) {
    let v = c.wait_for(0, "n1 primary again", Duration::from_secs(20), |v| {
        v["outcome"].as_str().is_some_and(|o| o == format!("primary for epoch {e0}"))
    });
    assert_eq!(v["kernel"]["serving"], true, "{v:#}");
    for i in [1, 2] {
        c.wait_for(i, "the standby endorsing n1 on its PINGs", Duration::from_secs(10), |v| {
            v["outcome"].as_str().is_some_and(|o| o == "standby, endorsing primary 198.18.0.1:7800")
        });
        assert_eq!(epoch(c, i), e0);
    }
    assert_eq!(c.serving_primary(), Some(0));
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(5)).is_some(), "n1 takes writes");
    rec.wait("n1", "Primary agent running on", Duration::from_secs(10));
}

/// Stops n1's agent in order (SIGTERM: it keeps its pinned XDP programs and maps, the kernel
/// keeps enforcing its lease) and checks the notifications of the stop.
fn stop_primary_agent(c: &mut Cluster, rec: &Recorder) {
    c.agents[0] = Agent::start_later();
    // The agent's own notification, and the standbys' (EFM's subjects).
    rec.wait("n1", "Primary agent exited on", Duration::from_secs(5));
    for n in ["n2", "n3"] {
        rec.wait(n, &format!("Cluster {CLUSTER} notified that primary node has left"), Duration::from_secs(5));
    }
}

#[test]
fn primary_agent_stopped_for_ten_seconds_no_failover_no_write_refused() {
    let rec = Recorder::new();
    let (mut c, w) = cluster(&rec);
    let e0 = epoch(&c, 0);
    std::thread::sleep(Duration::from_millis(300));
    let t_stop = monotonic_ns();
    let stopped = Instant::now();
    stop_primary_agent(&mut c, &rec);
    while_absent(&c, e0);
    std::thread::sleep(ABSENT.saturating_sub(stopped.elapsed()));
    while_absent(&c, e0);
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(2)).is_some(), "n1's kernel serves without its agent");
    let t_start = monotonic_ns();
    c.agents[0] = Agent::start(&c.bed.nodes[0].ns.name, &c.files[0]);
    back(&c, &w, e0, &rec);
    std::thread::sleep(Duration::from_secs(1));
    let acks = w.finish();
    all_acknowledged_by_n1(&acks, "agent stopped 10 s", t_stop);
    let after_start = acks.iter().filter(|a| a.sent_ns >= t_start).count();
    assert!(after_start > 10, "writes across the agent's start: {after_start}");
    assert_eq!(rec.count("Failover has completed"), 0, "no failover notified");
}

#[test]
fn primary_agent_failing_to_start_on_a_bad_property_no_failover_no_write_refused() {
    let rec = Recorder::new();
    let (mut c, w) = cluster(&rec);
    let e0 = epoch(&c, 0);
    std::thread::sleep(Duration::from_millis(300));
    let t_stop = monotonic_ns();
    let stopped = Instant::now();
    // Stopped for an upgrade; the operator edits a property and makes a typo.
    stop_primary_agent(&mut c, &rec);
    let props = c.files[0].config_dir.join(format!("{CLUSTER}.properties"));
    let good = fs::read_to_string(&props).unwrap();
    let line = good.lines().count() + 1;
    fs::write(&props, format!("{good}auto.failover=yes\n")).unwrap();
    let out = Agent::command(&c.bed.nodes[0].ns.name, &c.files[0]).output().expect("run efm-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("efm-agent with the typo: {:?}\n{err}", out.status);
    assert!(!out.status.success(), "the agent refuses to start: {err}");
    assert!(
        err.contains(&format!("{}:{line}: auto.failover = \"yes\": expected true or false", props.display())),
        "the error names the file, line, property, value and what is expected: {err}"
    );
    while_absent(&c, e0);
    // The agent stays down while the operator looks.
    std::thread::sleep(ABSENT.saturating_sub(stopped.elapsed()));
    while_absent(&c, e0);
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(2)).is_some(), "n1's kernel serves without its agent");
    // Fixed, it starts and carries on as the primary.
    fs::write(&props, &good).unwrap();
    c.agents[0] = Agent::start(&c.bed.nodes[0].ns.name, &c.files[0]);
    back(&c, &w, e0, &rec);
    std::thread::sleep(Duration::from_secs(1));
    let acks = w.finish();
    all_acknowledged_by_n1(&acks, "agent failing to start", t_stop);
    assert_eq!(rec.count("Failover has completed"), 0, "no failover notified");
}

#[test]
fn primary_database_stopped_while_its_agent_is_absent_fails_over() {
    let rec = Recorder::new();
    let (mut c, w) = cluster(&rec);
    let e0 = epoch(&c, 0);
    stop_primary_agent(&mut c, &rec);
    while_absent(&c, e0);
    std::thread::sleep(Duration::from_secs(1));
    // Its database stops (nobody on n1 sees it: its agent is away); the standbys' checks do.
    let t_fault = monotonic_ns();
    c.pg[0].as_ref().unwrap().stop("fast");
    let until = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(a) =
            w.log.lock().unwrap().iter().find(|a| a.t_ns > t_fault && a.server.as_deref().is_some_and(|s| s != "n1"))
        {
            break a.server.clone().unwrap();
        }
        assert!(Instant::now() < until, "no new primary within 30 s of the database stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let acks = w.finish();
    let (_, first_new) = no_overlap(&acks, "n1", &new);
    eprintln!(
        "database stopped during the absence: {new} took its first write {} ms after the stop",
        (first_new - t_fault) / 1_000_000
    );
    let p = c.serving_primary().expect("exactly one serving primary");
    assert_eq!(p, Cluster::index_of(&new));
    assert!(epoch(&c, p) > e0, "a promotion committed");
    rec.wait(&format!("n{}", p + 1), "Failover has completed", Duration::from_secs(10));
}
