//! Guarded promotion and the notifications around it, end to end with real `PostgreSQL` 15, real
//! agents and XDP in network namespaces: a VIP still answered by a foreign host blocks the
//! promotion (EFM's "VIP appears to still be assigned") until that host is gone, unless
//! `vip.takeover.allowed=true`; a standby whose database fails sends EFM's notifications and
//! runs `script.db.failure`. Needs root; run single-threaded.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{Cluster, Kind, VIP},
    ip, ip_in, pg, unique, Netns,
};

const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];

/// A recorder script: appends its arguments as one line to `<dir>/hooks.log`.
struct Recorder {
    dir: pg::TempDir,
    script: PathBuf,
}

impl Recorder {
    fn new() -> Self {
        let dir = pg::TempDir::new("guard");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("rec");
        let log = dir.path().join("hooks.log");
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
        fs::read_to_string(self.dir.path().join("hooks.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    #[track_caller]
    fn wait_containing(&self, needle: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < until,
                "no line containing {needle:?} within {timeout:?}; recorded:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A host that is not part of the cluster, on the test bridge, holding the VIP (its own
/// namespace, a veth into the switch's bridge). Removed on drop (the namespace takes its veth
/// with it).
struct ForeignHost {
    ns: Option<Netns>,
}

impl ForeignHost {
    fn new(c: &Cluster) -> Self {
        let ns = Netns::new("efv");
        let (inner, outer) = (unique("fv"), unique("fs"));
        ip(&[
            "link",
            "add",
            &inner,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
            "netns",
            &c.bed.switch.name,
        ]);
        ip_in(&ns.name, &["addr", "add", &format!("{VIP}/24"), "dev", &inner]);
        ip_in(&ns.name, &["link", "set", &inner, "up"]);
        ip_in(&c.bed.switch.name, &["link", "set", &outer, "master", "br0"]);
        ip_in(&c.bed.switch.name, &["link", "set", &outer, "up"]);
        Self { ns: Some(ns) }
    }

    /// The host leaves the network (its namespace and veth are deleted).
    fn remove(&mut self) {
        self.ns.take();
    }
}

/// Whether any database of the cluster has left recovery besides node 0's.
fn promoted(c: &Cluster) -> Vec<usize> {
    (1..c.kinds.len())
        .filter(|&i| {
            c.pg[i].as_ref().is_some_and(|p| p.psql_output("SELECT pg_is_in_recovery()").stdout.starts_with(b"f"))
        })
        .collect()
}

#[test]
fn a_vip_answered_by_a_foreign_host_blocks_the_promotion_until_it_is_gone() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "", |i| format!("script.notification={r} n{} notify %s\n", i + 1));
    let mut foreign = ForeignHost::new(&c);
    let crash = Instant::now();
    c.pg[0].as_ref().unwrap().sigkill();
    let line = rec.wait_containing(
        "notify Standby agent tried to promote, but VIP appears to still be assigned",
        Duration::from_secs(30),
    );
    eprintln!("refused {} ms after the crash: {line}", crash.elapsed().as_millis());
    // The refusal stands while the foreign host answers: no database leaves recovery, nothing
    // serves, and the old primary stays fenced.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(promoted(&c), Vec::<usize>::new(), "a standby was promoted behind a VIP another host answers");
        assert_eq!(c.serving_primary(), None, "nothing may serve");
        std::thread::sleep(Duration::from_millis(250));
    }
    let v = c.node_status(0).expect("the old primary's agent answers");
    assert_eq!(v["kernel"]["fenced"], true, "the old primary stays fenced: {v:#}");
    let refusals = rec.lines().iter().filter(|l| l.contains("VIP appears to still be assigned")).count();
    assert_eq!(refusals, 1, "one notification per refused epoch:\n{}", rec.lines().join("\n"));
    // The foreign host goes away: the promotion proceeds.
    let gone = Instant::now();
    foreign.remove();
    let until = Instant::now() + Duration::from_secs(30);
    let p = loop {
        if let Some(p) = c.serving_primary().filter(|p| *p != 0) {
            break p;
        }
        assert!(Instant::now() < until, "no promotion within 30 s after the foreign host left");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("n{} serves {} ms after the foreign host left", p + 1, gone.elapsed().as_millis());
    rec.wait_containing("notify Failover has completed on cluster acctg", Duration::from_secs(20));
}

#[test]
fn vip_takeover_allowed_promotes_although_a_foreign_host_answers() {
    let c = Cluster::start(&PSS, "vip.takeover.allowed=true\n");
    let _foreign = ForeignHost::new(&c);
    c.pg[0].as_ref().unwrap().sigkill();
    // (Right after the crash the old primary may still count as serving: wait for a standby.)
    let until = Instant::now() + Duration::from_secs(30);
    let p = loop {
        if let Some(p) = c.serving_primary().filter(|p| *p != 0) {
            break p;
        }
        assert!(Instant::now() < until, "no promotion within 30 s with vip.takeover.allowed=true");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(promoted(&c).contains(&p), "n{} left recovery", p + 1);
}

#[test]
fn a_standby_database_failure_notifies_and_runs_script_db_failure() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "", |i| {
        format!("script.notification={r} n{n} notify %s\nscript.db.failure={r} n{n} dbfailure\n", n = i + 1)
    });
    // The standby that is not the coordination log's leader (the leader checks the failed
    // standby's database from its node and tells the cluster what it found).
    let leader = c.node_status(0).and_then(|v| v["leader"].as_str().map(str::to_owned)).unwrap_or_default();
    let failing = if leader.starts_with(&format!("{}:", c.files[1].ip)) { 2 } else { 1 };
    let n = failing + 1;
    c.pg[failing].as_ref().unwrap().sigkill();
    rec.wait_containing(&format!("n{n} notify Standby database failure for cluster acctg"), Duration::from_secs(30));
    rec.wait_containing(&format!("n{n} dbfailure"), Duration::from_secs(10));
    rec.wait_containing(&format!("n{n} notify Executed post-database failure script"), Duration::from_secs(10));
    let line = rec.wait_containing("notify Standby database failed for cluster acctg", Duration::from_secs(30));
    assert!(!line.starts_with(&format!("n{n} ")), "sent by the log's leader, not the failed standby: {line}");
    // EFM's lock-file notice: the cluster lock of the third node removed behind its agent's back.
    let other = 3 - failing;
    let lock = c.files[other].config_dir.join("lock").join("acctg.lock");
    fs::remove_file(&lock).unwrap_or_else(|e| panic!("removing {}: {e}", lock.display()));
    rec.wait_containing(
        &format!("n{} notify Lock file for cluster acctg has been removed", other + 1),
        Duration::from_secs(15),
    );
    // Nothing fails over for a standby.
    assert_eq!(c.serving_primary(), Some(0), "the primary keeps serving");
    eprintln!("notifications and scripts:\n{}", rec.lines().join("\n"));
    assert!(
        !rec.lines().iter().any(|l| l.contains("Standby agent cannot reach database")),
        "the database is down, not merely unreachable for its agent:\n{}",
        rec.lines().join("\n")
    );
}

#[test]
fn a_standby_that_cannot_reach_the_ping_server_declines_and_another_is_promoted() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    // The ping server is a test host: the client's namespace on the bridge (198.18.0.4).
    let c = Cluster::start_with(&PSS, "ping.server.ip=198.18.0.4\nping.server.command=/bin/ping -q -c1 -w1\n", |i| {
        format!("script.notification={r} n{} notify %s\n", i + 1)
    });
    let (n2, client) = (c.bed.nodes[1].sw_if.clone(), c.bed.nodes[3].sw_if.clone());
    c.bed.nft(&format!(
        "table bridge efm_orphan {{\n chain cut {{\n  type filter hook forward priority 0;\n  \
         iifname \"{n2}\" oifname \"{client}\" drop\n  iifname \"{client}\" oifname \"{n2}\" drop\n }}\n}}\n"
    ));
    // n2 checks every 3 s (a check takes up to 1 s): its PINGs say it declines.
    std::thread::sleep(Duration::from_secs(6));
    c.pg[0].as_ref().unwrap().sigkill();
    let until = Instant::now() + Duration::from_secs(30);
    let p = loop {
        if let Some(p) = c.serving_primary().filter(|p| *p != 0) {
            break p;
        }
        assert!(Instant::now() < until, "no promotion within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(p, 2, "n3 is promoted: n2 cannot reach the ping server");
    rec.wait_containing(
        "n2 notify Standby agent tried to promote, but appears to be orphaned",
        Duration::from_secs(10),
    );
    assert_eq!(c.pg[1].as_ref().unwrap().psql("SELECT pg_is_in_recovery()").trim(), "t", "n2 stays a standby");
    assert!(!rec.lines().iter().any(|l| l.contains("Could not promote standby")), "{}", rec.lines().join("\n"));
}
