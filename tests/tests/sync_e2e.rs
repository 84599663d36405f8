//! Synchronous replication kept writable (`reconfigure.num.sync`, `reconfigure.sync.primary`)
//! with real `PostgreSQL` 15, real agents and XDP in network namespaces: the primary runs
//! `synchronous_standby_names = 'FIRST 2 (n2, n3)'` with a client writing through the VIP;
//! standby databases are killed and restarted, and the agent lowers the count, falls back to
//! asynchronous and restores the operator's setting; then a synchronous standby is killed and
//! then the primary, and the failover loses no acknowledged write. Needs root; run
//! single-threaded.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::Cluster,
    monotonic_ns,
    scenarios::{wait_until, PSS},
};

const ORIGINAL: &str = "FIRST 2 (n2, n3)";

fn setting(c: &Cluster, i: usize) -> String {
    c.pg[i].as_ref().unwrap().psql("SHOW synchronous_standby_names")
}

#[track_caller]
fn wait_setting(c: &Cluster, i: usize, want: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        let have = setting(c, i);
        if have == want {
            return;
        }
        assert!(Instant::now() < until, "synchronous_standby_names on n{} is {have:?}, want {want:?}", i + 1);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn synchronous_standbys_failing_keep_the_primary_writable_and_lose_no_acknowledged_write() {
    let c = Cluster::start(
        &PSS,
        "reconfigure.num.sync=true\nreconfigure.sync.primary=true\nauto.resume.failure.period=120\n",
    );
    let (p, s2, s3) = (c.pg[0].as_ref().unwrap(), c.pg[1].as_ref().unwrap(), c.pg[2].as_ref().unwrap());
    p.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{ORIGINAL}'"));
    p.psql("SELECT pg_reload_conf()");
    wait_until("n2 and n3 to be synchronous", Duration::from_secs(30), || {
        p.query("SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1")
            == vec![vec!["n2".to_owned(), "sync".to_owned()], vec!["n3".to_owned(), "sync".to_owned()]]
    });
    let state_file = c.files[0].state_dir.join("acctg.sync-standby-names");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP");

    // One synchronous standby fails: the count goes down to the one left.
    s3.sigkill();
    let t = monotonic_ns();
    wait_setting(&c, 0, "FIRST 1 (n2, n3)", Duration::from_secs(15));
    assert!(state_file.exists(), "the operator's setting is kept while lowered");
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(15)).is_some(), "writes go on with one synchronous standby");

    // Both fail: asynchronous (reconfigure.sync.primary).
    s2.sigkill();
    let t = monotonic_ns();
    wait_setting(&c, 0, "", Duration::from_secs(15));
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(15)).is_some(), "writes go on with no synchronous standby");

    // They come back: the operator's setting again, and the saved copy is gone.
    s2.start();
    s3.start();
    wait_setting(&c, 0, ORIGINAL, Duration::from_mins(1));
    wait_until("the saved setting to be removed", Duration::from_secs(5), || !state_file.exists());
    let t = monotonic_ns();
    assert!(
        w.wait_ack_from("n1", t, Duration::from_secs(15)).is_some(),
        "writes go on, synchronous again; replication: {:?}; activity: {:?}",
        p.query("SELECT application_name, state, sync_state, flush_lsn FROM pg_stat_replication"),
        p.query("SELECT pid, state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity WHERE backend_type = 'client backend'")
    );
    // Both standbys monitored again (auto.resume.failure.period: they came back within its
    // window), so either can be promoted.
    for i in [1, 2] {
        c.wait_for(i, "the standby monitored again", Duration::from_secs(30), |v| {
            v["outcome"].as_str().is_some_and(|o| o.starts_with("standby")) && v["db"]["state"] == "UP"
        });
    }

    // A synchronous standby fails, then the primary: n2, the synchronous one left, is promoted
    // and holds every write the client saw acknowledged.
    s3.sigkill();
    wait_setting(&c, 0, "FIRST 1 (n2, n3)", Duration::from_secs(15));
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(15)).is_some());
    p.sigkill();
    assert!(w.wait_ack_from("n2", t, Duration::from_secs(30)).is_some(), "n2 takes the writes after the failover");
    std::thread::sleep(Duration::from_millis(500));
    let acks = w.finish();
    let rows = s2.query("SELECT seq FROM efm_probe");
    let have: HashSet<i64> = rows.iter().filter_map(|r| r.first().and_then(|v| v.parse().ok())).collect();
    let acked: Vec<i64> = acks.iter().filter(|a| a.server.is_some()).map(|a| a.seq).collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|s| !have.contains(s)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes missing on n2: {:?}", lost.len(), &lost[..lost.len().min(20)]);
    eprintln!("{} acknowledged writes, none lost", acked.len());
}
