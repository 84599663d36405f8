//! Fresh WAL positions end to end: real `PostgreSQL` 15, real agents, EFM's default
//! `local.period=10`. A standby held 1 MB behind (its walreceiver cut off) must never be promoted
//! over the standby that is current, and no write the old primary acknowledged may be missing on
//! the new one. Needs root; run single-threaded.
//!
//! The lagging standby is n2: it has the lower address, so it wins every tie — a failover that
//! does not compare fresh positions tends to promote it.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{no_overlap, Cluster, Kind},
    monotonic_ns,
};

const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];
const MB: i64 = 1 << 20;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_standby_1mb_behind_is_never_promoted_over_a_current_one_at_local_period_10() {
    lagging_standby_scenario(false);
}

/// The position that counts is what a promotion ends up with: WAL received (and flushed), which
/// promotion replays first. A current standby whose replay is paused — its replay position as
/// far behind as the cut-off standby — is still the one to promote.
#[test]
fn a_current_standby_with_its_replay_paused_is_still_promoted_over_one_1mb_behind() {
    lagging_standby_scenario(true);
}

fn lagging_standby_scenario(pause_replay_on_current: bool) {
    // EFM's default local.period: the monitor reads the databases only every 10 s.
    let c = Cluster::start(&PSS, "local.period=10\nlocal.timeout=30\n");
    let (p, lag, cur) = (c.pg[0].as_ref().unwrap(), c.pg[1].as_ref().unwrap(), c.pg[2].as_ref().unwrap());
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some(), "the client writes through the VIP to n1");

    // Every write n1 acknowledges from now on is on a synchronous standby.
    p.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'");
    p.psql("ALTER SYSTEM SET synchronous_commit = 'on'");
    p.psql("SELECT pg_reload_conf()");
    // n2's walreceiver is cut off (no primary_conninfo): n2 stays where it is.
    lag.psql("ALTER SYSTEM SET primary_conninfo = ''");
    lag.psql("SELECT pg_reload_conf()");
    wait_until("n2's walreceiver to stop", Duration::from_secs(20), || {
        lag.psql("SELECT count(*) FROM pg_stat_wal_receiver") == "0"
            && p.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'n2'") == "0"
    });
    if pause_replay_on_current {
        cur.psql("SELECT pg_wal_replay_pause()");
        wait_until("n3's replay to pause", Duration::from_secs(10), || {
            cur.psql("SELECT pg_get_wal_replay_pause_state()") == "paused"
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let t_sync = monotonic_ns();

    // More than 1 MB of acknowledged WAL while n2 is cut off.
    p.psql("CREATE TABLE efm_fill (i int PRIMARY KEY, pad text)");
    p.psql("INSERT INTO efm_fill SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 2000) g");
    let pos =
        |n: &efm_tests::pg::PgNode| n.psql("SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())");
    let (lag_lsn, cur_lsn) = (pos(lag), pos(cur));
    let primary_lsn = p.psql("SELECT pg_current_wal_lsn()");
    let behind = |lsn: &str| {
        p.psql(&format!("SELECT ('{primary_lsn}'::pg_lsn - '{lsn}'::pg_lsn)::bigint")).parse::<i64>().unwrap()
    };
    let (lag_bytes, cur_bytes) = (behind(&lag_lsn), behind(&cur_lsn));
    assert!(lag_bytes >= MB, "n2 is only {lag_bytes} bytes behind (primary {primary_lsn}, n2 {lag_lsn})");
    assert!(lag.psql("SELECT pg_is_in_recovery()") == "t" && cur.psql("SELECT pg_is_in_recovery()") == "t");
    let cur_replay_bytes = behind(&cur.psql("SELECT pg_last_wal_replay_lsn()"));
    if pause_replay_on_current {
        assert!(cur_replay_bytes >= MB, "n3's replay is paused {cur_replay_bytes} bytes behind");
    }

    // The primary dies at once: the positions the `local.period` monitor read are seconds old.
    let t_fault = monotonic_ns();
    p.sigkill();
    let until = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(a) =
            w.log.lock().unwrap().iter().find(|a| a.t_ns > t_fault && a.server.as_deref().is_some_and(|s| s != "n1"))
        {
            break a.server.clone().unwrap();
        }
        assert!(Instant::now() < until, "no new primary accepted writes within 30 s of the fault");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let acks = w.finish();
    let (_, first_new) = no_overlap(&acks, "n1", &new);
    eprintln!(
        "fresh positions: n2 {lag_bytes} bytes behind, n3 {cur_bytes} bytes behind (replay \
         {cur_replay_bytes}); promoted {new}; \
         failover {} ms from the SIGKILL to the first write on {new}",
        (first_new - t_fault) / 1_000_000
    );

    // The current standby was promoted; the lagging one never was.
    assert_eq!(new, "n3", "the standby 1 MB behind (n2) was promoted over the current one (n3)");
    assert!(acks.iter().all(|a| a.server.as_deref() != Some("n2")), "n2 acknowledged writes");
    assert_eq!(lag.psql("SELECT pg_is_in_recovery()"), "t", "n2 left recovery");
    assert_eq!(c.serving_primary(), Some(2), "exactly one serving primary: n3");

    // No acknowledged write is missing on the new primary.
    let acked: Vec<i64> =
        acks.iter().filter(|a| a.t_ns > t_sync && a.server.as_deref() == Some("n1")).map(|a| a.seq).collect();
    assert!(acked.len() > 10, "the client wrote synchronously to n1 for a while: {}", acked.len());
    let have: HashSet<i64> = cur
        .psql("SELECT string_agg(seq::text, ',') FROM efm_probe")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|s| !have.contains(s)).collect();
    assert!(lost.is_empty(), "acknowledged client writes lost in the failover: {lost:?}");
    assert_eq!(cur.psql("SELECT count(*) FROM efm_fill"), "2000", "the acknowledged 1 MB is on the new primary");
}
