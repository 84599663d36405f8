//! `efm rejoin`: a former primary replaced by a failover is rewound with `pg_rewind` from the
//! new primary and comes back as its standby, with real `PostgreSQL` 15, real agents and XDP in
//! network namespaces. Needs root; run single-threaded.

use std::time::{Duration, Instant};

use efm_tests::{
    cluster::Cluster,
    monotonic_ns,
    scenarios::{streams_from, text, PSS},
};

#[test]
fn a_failed_over_primary_is_rewound_and_rejoins_as_a_standby() {
    let c = Cluster::start(&PSS, "");
    let pg = |i: usize| c.pg[i].as_ref().unwrap();
    // pg_rewind reads the new primary's files as the monitoring user.
    pg(0).psql(
        "GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO efm; \
         GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO efm; \
         GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO efm; \
         GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO efm; \
         GRANT pg_checkpoint TO efm",
    );
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let before = w.finish();
    let lsn = pg(0).current_lsn();
    pg(1).wait_replayed(&lsn, Duration::from_secs(20));
    pg(2).wait_replayed(&lsn, Duration::from_secs(20));

    // The primary's database crashes; a standby is promoted; the old primary stays fenced.
    pg(0).sigkill();
    let t = monotonic_ns();
    let until = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(i) = c.serving_primary().filter(|i| *i != 0) {
            break i;
        }
        assert!(Instant::now() < until, "no new primary within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let new_ip = c.files[new].ip.clone();
    eprintln!("n{} promoted {} ms after the crash", new + 1, (monotonic_ns() - t) / 1_000_000);
    // The old primary's writes are on the new one (nothing acknowledged was lost), and its
    // agent refuses nothing yet: its database is down, its kernel fenced.
    c.wait_for(0, "n1 fenced", Duration::from_secs(30), |v| v["kernel"]["fenced"] == true);

    // A commit after the fork that exists only on n1 (written in single-user mode, so never
    // acknowledged to anyone — efm cannot tell, so it treats it as possibly acknowledged).
    let data = pg(0).data.clone();
    let signal = data.join("standby.signal");
    assert!(signal.exists(), "the fenced old primary was demoted (standby.signal)");
    let until = Instant::now() + Duration::from_secs(30);
    while let Some(pid) = pg(0).postmaster_pid() {
        // SAFETY: kill with signal 0 only checks for the process.
        if unsafe { libc::kill(pid, 0) } != 0 {
            break;
        }
        assert!(Instant::now() < until, "n1's killed postmaster {pid} is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::rename(&signal, data.join("signal.aside")).unwrap();
    let mut single = pg(0)
        .as_postgres("postgres")
        .args(["--single", "-D"])
        .arg(&data)
        .arg("postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = single.stdin.take().unwrap();
        writeln!(stdin, "CREATE TABLE only_on_n1 (x int)").unwrap();
        writeln!(stdin, "INSERT INTO only_on_n1 VALUES (1)").unwrap();
    }
    let out = single.wait_with_output().unwrap();
    assert!(out.status.success(), "single-user write on n1: {}", text(&out));
    std::fs::rename(data.join("signal.aside"), &signal).unwrap();

    let o = c.efm(0, &["rejoin"]);
    assert_eq!(o.status.code(), Some(1), "efm rejoin must refuse to discard commits: {}", text(&o));
    let refusal = text(&o);
    assert!(refusal.contains("commit(s) that may have been acknowledged") && refusal.contains("--force"), "{refusal}");
    assert!(signal.exists(), "a refused rejoin leaves the standby signal in place");

    let o = c.efm(0, &["rejoin", "--force"]);
    let msg = text(&o);
    assert!(o.status.success(), "efm rejoin --force failed: {msg}");
    assert!(msg.contains("rewound from") && msg.contains("commit(s) discarded (--force)"), "{msg}");
    assert!(msg.contains("rejoined cluster acctg as a standby of") && msg.contains(&new_ip), "{msg}");
    streams_from(&c, 0, &new_ip, Duration::from_secs(30));
    c.wait_for(0, "n1 a monitored, unfenced standby", Duration::from_secs(30), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("standby"))
            && v["kernel"]["fenced"] == false
            && v["monitoring"] == "active"
    });
    // Every write acknowledged before the crash is on n1 again (it was rewound, not rebuilt).
    let have: std::collections::HashSet<i64> = pg(0)
        .query("SELECT seq FROM efm_probe")
        .iter()
        .filter_map(|r| r.first().and_then(|v| v.parse().ok()))
        .collect();
    let lost: Vec<i64> =
        before.iter().filter(|a| a.server.is_some() && !have.contains(&a.seq)).map(|a| a.seq).collect();
    assert!(lost.is_empty(), "acknowledged writes missing on the rejoined n1: {lost:?}");

    assert!(
        pg(0).query("SELECT to_regclass('only_on_n1') IS NULL") == vec![vec!["t".to_owned()]],
        "the discarded commit is gone from the rejoined n1"
    );
    // A standby already: refused with a reason.
    let o = c.efm(0, &["rejoin"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is a standby already"), "{}", text(&o));
    eprintln!("{msg}");
}
