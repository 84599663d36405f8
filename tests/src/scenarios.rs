//! End-to-end scenarios that run on each `PostgreSQL` version ([`PgVersion`]): the test targets
//! of `PostgreSQL` 15 (`failover_e2e`, `operator_e2e`) and of 18 (`pg18_e2e`) call the same
//! bodies, so both versions are held to the same assertions. Also the helpers they share.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use crate::{
    cluster::{no_overlap, run_failover_on, Ack, Cluster, Kind},
    monotonic_ns,
    pg::{self, PgVersion},
};

/// Primary and two standbys.
pub const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];
/// Primary, standby and witness.
pub const PSW: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Witness];

/// A command's stdout and stderr, as text.
#[must_use]
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Asserts that `o` succeeded; returns its output.
#[track_caller]
#[expect(clippy::must_use_candidate, reason = "often called only for the assertion")]
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}): {}", o.status, text(o));
    text(o)
}

/// Polls `f` every 100 ms until it holds; panics after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `i`'s database streams from `ip`.
pub fn streams_from(c: &Cluster, i: usize, ip: &str, timeout: Duration) {
    let pgn = c.pg[i].as_ref().unwrap();
    let until = Instant::now() + timeout;
    loop {
        let out = pgn.psql_output("SELECT sender_host || '|' || status FROM pg_stat_wal_receiver");
        let r = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && r == format!("{ip}|streaming") {
            return;
        }
        assert!(Instant::now() < until, "node {} does not stream from {ip}: {r:?}\n{}", i + 1, pgn.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first server other than `not` that acknowledged a write after `after_ns`.
pub fn first_other(acks: &std::sync::Mutex<Vec<Ack>>, not: &str, after_ns: u64, timeout: Duration) -> String {
    let until = Instant::now() + timeout;
    loop {
        if let Some(s) =
            acks.lock().unwrap().iter().find(|a| a.t_ns > after_ns && a.server.as_deref().is_some_and(|s| s != not))
        {
            return s.server.clone().unwrap();
        }
        assert!(Instant::now() < until, "no server but {not} acknowledged a write within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`first_other`], and on failure what the client's network looks like.
pub fn first_other_or_dump(
    c: &Cluster,
    acks: &std::sync::Mutex<Vec<Ack>>,
    not: &str,
    after_ns: u64,
    timeout: Duration,
) -> String {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| first_other(acks, not, after_ns, timeout)));
    match r {
        Ok(s) => s,
        Err(e) => {
            let sh = |ns: &str, cmd: &str| {
                let o = std::process::Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
                format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
            };
            let client = c.bed.nodes[c.kinds.len()].ns.name.clone();
            eprintln!("client neigh: {}", sh(&client, "ip neigh"));
            eprintln!("client ss: {}", sh(&client, "ss -tnp"));
            for i in 0..c.kinds.len() {
                eprintln!(
                    "n{} addrs: {}",
                    i + 1,
                    sh(&c.bed.nodes[i].ns.name, "ip -br addr; ss -tn state established '( sport = :5432 )'")
                );
            }
            for (i, p) in c.pg.iter().enumerate() {
                if let Some(p) = p {
                    eprintln!("n{} log:\n{}", i + 1, p.log_tail(15));
                    if let Some(pm) = p.postmaster_pid() {
                        let o = std::process::Command::new("sh")
                            .arg("-c")
                            .arg(format!("ps -o pid,stat,wchan:24,cmd --ppid {pm} -p {pm}"))
                            .output()
                            .unwrap();
                        eprintln!("n{} processes:\n{}", i + 1, String::from_utf8_lossy(&o.stdout));
                    }
                }
            }
            let log = acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            eprintln!("last acks: {:?}", &log[log.len().saturating_sub(15)..]);
            std::panic::resume_unwind(e)
        }
    }
}

/// The longest time without an acknowledged write between `from` and `to` (ns), in ms.
#[must_use]
pub fn longest_pause_ms(acks: &[Ack], from: u64, to: u64) -> u64 {
    let mut times: Vec<u64> =
        acks.iter().filter(|a| a.server.is_some() && a.t_ns >= from && a.t_ns <= to).map(|a| a.t_ns).collect();
    times.sort_unstable();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) / 1_000_000
}

/// Every write the client saw acknowledged is in the table of node `i`.
#[expect(clippy::must_use_candidate, reason = "often called only for the assertion")]
pub fn every_acknowledged_write_is_on(c: &Cluster, acks: &[Ack], i: usize) -> usize {
    let rows = c.pg[i].as_ref().unwrap().query("SELECT seq FROM efm_probe");
    let have: HashSet<i64> = rows.iter().filter_map(|r| r.first().and_then(|v| v.parse().ok())).collect();
    let acked: Vec<i64> = acks.iter().filter(|a| a.server.is_some()).map(|a| a.seq).collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|s| !have.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are missing on node {}: {:?}",
        lost.len(),
        i + 1,
        &lost[..lost.len().min(20)]
    );
    acked.len()
}

/// Node `i`'s address.
#[must_use]
pub fn ip(c: &Cluster, i: usize) -> String {
    c.files[i].ip.clone()
}

/// `efm cluster-status-json` from node `i` (panics when it does not answer).
#[must_use]
pub fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    c.cluster_status_json(i).expect("cluster-status-json answers")
}

/// A recorder script: appends `id -un` and its arguments as one line to `<dir>/hooks.log`.
pub struct Recorder {
    dir: pg::TempDir,
    script: PathBuf,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A new recorder in a temporary directory of its own.
    #[must_use]
    pub fn new() -> Self {
        let dir = pg::TempDir::new("hooks");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("rec");
        let log = dir.path().join("hooks.log");
        fs::write(&script, format!("#!/bin/sh\necho \"$(id -un) $*\" >> {}\n", log.display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&log, "").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
        Self { dir, script }
    }

    /// The recorder's directory (writable by everyone).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The script's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.script
    }

    /// The lines recorded so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("hooks.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    #[track_caller]
    pub fn wait_line(&self, line: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while !self.lines().iter().any(|l| l == line) {
            assert!(
                Instant::now() < until,
                "no hook line {line:?} within {timeout:?}; recorded:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[track_caller]
    #[expect(clippy::must_use_candidate, reason = "often called only for the wait")]
    pub fn wait_containing(&self, needle: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < until,
                "no hook line containing {needle:?} within {timeout:?}; recorded:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One failover with the checks every scenario shares: no overlap (checked by `run_failover`),
/// exactly one serving primary afterwards, and every other database node following it with
/// its own replication settings.
pub fn failover(
    version: PgVersion,
    kinds: &[Kind],
    what: &str,
    fault: impl FnOnce(&mut Cluster),
) -> (Cluster, Vec<Ack>, u64) {
    let (c, acks, run) = run_failover_on(version, kinds, "", Duration::from_secs(30), fault);
    eprintln!(
        "{what} ({version}): failover {} ms from fault to first client write on {}; last write on n1 {} ms before it; \
         long statements acknowledged by n1 {} / by {} {}, failed {} (all counted in the overlap check)",
        run.failover_ms,
        run.new_primary,
        run.gap_ms,
        run.long_acks_old,
        run.new_primary,
        run.long_acks_new,
        run.long_failed
    );
    assert!(run.failover_ms < 10_000, "{what}: failover took {} ms", run.failover_ms);
    let p = c.serving_primary().expect("exactly one serving primary");
    assert_eq!(p, Cluster::index_of(&run.new_primary), "the serving primary is the one the client reached");
    let new_ip = c.files[p].ip.clone();
    for (i, k) in c.kinds.iter().enumerate() {
        if i == 0 || i == p || *k == Kind::Witness {
            continue;
        }
        let pgn = c.pg[i].as_ref().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // The server may be restarting (reconfiguration): a failed query means "not yet".
            let out = pgn.psql_output("SELECT sender_host || '|' || status FROM pg_stat_wal_receiver");
            let r = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && r == format!("{new_ip}|streaming") {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "node {} does not stream from the new primary: {r:?} {}\n{}",
                i + 1,
                String::from_utf8_lossy(&out.stderr),
                pgn.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // They follow with their own replication settings (the replication user and its password
    // file), and the monitoring user's password is in no database's configuration.
    let others: Vec<usize> = (1..c.kinds.len()).filter(|&i| i != p && c.kinds[i] != Kind::Witness).collect();
    c.assert_replication_settings(p, &others, Duration::from_secs(30));
    (c, acks, run.failover_ms)
}

/// The database crash: the primary's postmaster is killed (SIGKILL) with a client writing
/// through the VIP; a standby takes over (see [`failover`] for the checks).
pub fn postmaster_sigkill_fails_over(version: PgVersion) {
    let (_c, _acks, _ms) = failover(version, &PSS, "postmaster SIGKILL", |c| c.pg[0].as_ref().unwrap().sigkill());
}

/// The database crash with a synchronous standby: primary + standby + witness, the standby made
/// synchronous on the primary only (`ALTER SYSTEM` is not replicated, so the promoted standby
/// does not wait for one of its own), then the postmaster killed. Every write acknowledged
/// after synchronous commit took effect — long statements included — is on the new primary.
pub fn synchronous_standby_loses_no_acknowledged_row(version: PgVersion) {
    let mut t_sync = 0;
    let (c, acks, run) = run_failover_on(version, &PSW, "", Duration::from_secs(30), |c| {
        let p = c.pg[0].as_ref().unwrap();
        p.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'");
        p.psql("ALTER SYSTEM SET synchronous_commit = 'on'");
        p.psql("SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(500));
        t_sync = monotonic_ns();
        std::thread::sleep(Duration::from_millis(500));
        p.sigkill();
    });
    eprintln!("synchronous standby ({version}): failover {} ms", run.failover_ms);
    // Statements sent after the reload run with synchronous commit (a backend reads the new
    // configuration before its next command), long ones included.
    let acked: Vec<i64> =
        acks.iter().filter(|a| a.sent_ns > t_sync && a.server.as_deref() == Some("n1")).map(|a| a.seq).collect();
    assert!(acked.len() > 10, "the client wrote synchronously to n1 for a while: {}", acked.len());
    let long = acks.iter().filter(|a| a.sent_ns > t_sync && a.is_long() && a.server.is_some()).count();
    eprintln!("synchronous standby: {} acknowledged writes checked, {long} of them long statements", acked.len());
    let have: HashSet<i64> = c.pg[1]
        .as_ref()
        .unwrap()
        .psql("SELECT string_agg(seq::text, ',') FROM efm_probe")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|s| !have.contains(s)).collect();
    assert!(lost.is_empty(), "acknowledged rows lost in the failover: {lost:?}");
    // Every write the new primary acknowledged is there too.
    let new_i = Cluster::index_of(&run.new_primary);
    let lost_new: Vec<i64> = acks
        .iter()
        .filter(|a| a.server.as_deref() == Some(run.new_primary.as_str()) && !have.contains(&a.seq))
        .map(|a| a.seq)
        .collect();
    assert_eq!(new_i, 1, "the standby was promoted");
    assert!(lost_new.is_empty(), "writes acknowledged by the new primary missing: {lost_new:?}");
}

/// `efm promote -switchover` asked on a standby, then back to n1 with `-sourcenode`, a client
/// writing through the VIP all along: the old primary rejoins as a standby of the new one and
/// the other standby follows, with their replication settings; never two writable primaries,
/// every acknowledged write on n1 at the end, `-quiet` sends no notification.
pub fn switchover_and_back(version: PgVersion) {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_on(version, &PSS, "", |i| format!("script.notification={r} n{} notify %s\n", i + 1));
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");
    std::thread::sleep(Duration::from_millis(500));

    // Switchover, asked on a standby's agent.
    let t0 = monotonic_ns();
    let msg = ok(&c.efm_cmd(2, "promote", &["-switchover", "-quiet"]), "efm promote -switchover -quiet");
    assert!(msg.contains("Switchover completed"), "{msg}");
    let new = first_other_or_dump(&c, &w.log, "n1", t0, Duration::from_secs(30));
    let t0_done = monotonic_ns();
    let ni = Cluster::index_of(&new);
    let other = if ni == 1 { 2 } else { 1 };
    // The old primary rejoins as a standby of the new one; the other standby follows it.
    streams_from(&c, 0, &ip(&c, ni), Duration::from_mins(1));
    streams_from(&c, other, &ip(&c, ni), Duration::from_secs(30));
    // n1 never was a standby: it took the new primary's former settings (the replication
    // user and its password file); the other standby kept its own.
    c.assert_replication_settings(ni, &[0, other], Duration::from_secs(30));
    c.wait_for(0, "n1 an unfenced standby", Duration::from_secs(30), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("standby")) && v["kernel"]["fenced"] == false
    });
    // Full strength again (with the client writing, standbys are always a little behind, so
    // the exit code of cluster-status may say "not in sync"; the JSON shows the roles).
    wait_until("cluster-status to show one primary and two standbys, all up", Duration::from_secs(30), || {
        let st = status_json(&c, 0);
        let nodes = st["nodes"].as_object().cloned().unwrap_or_default();
        let types: Vec<&str> = nodes.values().filter_map(|n| n["type"].as_str()).collect();
        nodes.len() == 3
            && nodes.values().all(|n| n["agent"] == "UP" && n["db"] == "UP")
            && types.iter().filter(|t| **t == "Primary").count() == 1
            && types.iter().filter(|t| **t == "Standby").count() == 2
    });
    assert_eq!(c.serving_primary(), Some(ni));

    // And back: the operator prefers n1.
    ok(&c.efm_cmd(ni, "set-priority", &[&ip(&c, 0), "1"]), "set-priority n1 1");
    ok(&c.efm_cmd(ni, "set-priority", &[&ip(&c, other), "2"]), "set-priority other 2");
    let st = status_json(&c, 0);
    assert_eq!(st["failoverpriority"][0], ip(&c, 0), "{st:#}");
    let t1 = monotonic_ns();
    assert!(
        !rec.lines().iter().any(|l| l.contains("Switchover has completed") || l.contains("Promotion has started")),
        "-quiet: no notifications about the hand-over: {:#?}",
        rec.lines()
    );
    let msg = ok(
        &c.efm_cmd(0, "promote", &["-switchover", "-sourcenode", &ip(&c, other)]),
        "efm promote -switchover -sourcenode (back)",
    );
    assert!(msg.contains(&format!("{}:7800 is the primary", ip(&c, 0))), "{msg}");
    assert!(w.wait_ack_from("n1", t1, Duration::from_secs(30)).is_some(), "the client writes to n1 again");
    let t1_done = monotonic_ns();
    streams_from(&c, ni, &ip(&c, 0), Duration::from_mins(1));
    streams_from(&c, other, &ip(&c, 0), Duration::from_secs(30));
    // The old primary took the -sourcenode's settings.
    c.assert_replication_settings(0, &[ni, other], Duration::from_secs(30));
    rec.wait_containing("n1 notify Switchover has completed on cluster acctg", Duration::from_secs(10));
    rec.wait_containing("notify Promotion has started on cluster acctg", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let acks = w.finish();

    // Never two writable primaries, and nothing acknowledged was lost.
    let before: Vec<Ack> = acks.iter().filter(|a| a.t_ns < t1).cloned().collect();
    let after: Vec<Ack> = acks.iter().filter(|a| a.t_ns >= t1).cloned().collect();
    let (last_n1, first_new) = no_overlap(&before, "n1", &new);
    let (last_new, first_n1) = no_overlap(&after, &new, "n1");
    let n = every_acknowledged_write_is_on(&c, &acks, 0);
    let p0 = longest_pause_ms(&acks, t0.saturating_sub(1_000_000_000), t0_done);
    let p1 = longest_pause_ms(&acks, t1.saturating_sub(1_000_000_000), t1_done);
    eprintln!(
        "{version}: switchover n1 → {new}: write pause {p0} ms (last n1 write {} ms before the first on {new}); switch back: {p1} ms ({} ms); {n} acknowledged writes, none lost",
        (first_new - last_n1) / 1_000_000,
        (first_n1 - last_new) / 1_000_000
    );
    assert!(p0 < 20_000 && p1 < 20_000, "write pauses {p0} ms / {p1} ms");
}
