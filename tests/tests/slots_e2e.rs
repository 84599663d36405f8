//! Physical replication slots kept in step (`update.physical.slots.period`) with real
//! `PostgreSQL` 15, real agents and XDP in network namespaces: the standbys stream through
//! slots on the primary; their agents copy the primary's slots to their own databases and
//! advance them; after the primary fails, the remaining standby streams through its slot on
//! the new primary. Needs root; run single-threaded.

use std::time::Duration;

use efm_tests::{
    cluster::Cluster,
    monotonic_ns,
    scenarios::{wait_until, PSS},
};

/// `(slot, restart_lsn as a number, active)` of a server's physical slots.
fn slots(pg: &efm_tests::pg::PgNode) -> Vec<(String, u64, bool)> {
    pg.query(
        "SELECT slot_name, coalesce(restart_lsn - '0/0', 0)::bigint, active FROM pg_replication_slots \
         WHERE slot_type = 'physical' ORDER BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap_or(0), r[2] == "t"))
    .collect()
}

fn slot(pg: &efm_tests::pg::PgNode, name: &str) -> Option<(u64, bool)> {
    slots(pg).into_iter().find(|s| s.0 == name).map(|s| (s.1, s.2))
}

#[test]
fn standbys_keep_the_primarys_slots_and_stream_through_them_after_a_failover() {
    let c = Cluster::start(&PSS, "update.physical.slots.period=1\n");
    let pg = |i: usize| c.pg[i].as_ref().unwrap();
    // The monitoring user may create and advance slots; each standby streams through its slot.
    pg(0).psql("ALTER ROLE efm REPLICATION");
    pg(0).psql(
        "SELECT pg_create_physical_replication_slot('n2', true), pg_create_physical_replication_slot('n3', true)",
    );
    for i in [1, 2] {
        pg(i).psql(&format!("ALTER SYSTEM SET primary_slot_name = 'n{}'", i + 1));
        pg(i).psql("SELECT pg_reload_conf()");
    }
    wait_until("both standbys to stream through their slots", Duration::from_secs(30), || {
        slots(pg(0)).iter().filter(|s| s.2).count() == 2
    });
    // Each standby holds a copy of the other's slot (not of its own), and it advances.
    wait_until("n2 to hold n3's slot and n3 n2's", Duration::from_secs(20), || {
        slot(pg(1), "n3").is_some_and(|s| s.0 > 0) && slot(pg(2), "n2").is_some_and(|s| s.0 > 0)
    });
    assert!(slot(pg(1), "n2").is_none() && slot(pg(2), "n3").is_none(), "no standby copies its own slot");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some());
    std::thread::sleep(Duration::from_secs(1));
    let (p3, _) = slot(pg(0), "n3").unwrap();
    wait_until("n2's copy of n3's slot to advance with the primary's", Duration::from_secs(20), || {
        slot(pg(1), "n3").is_some_and(|s| s.0 >= p3)
    });

    // The primary fails; the remaining standby streams through its slot on the new primary.
    let t = monotonic_ns();
    pg(0).sigkill();
    let new = (1..3)
        .find(|&i| w.wait_ack_from(&format!("n{}", i + 1), t, Duration::from_secs(30)).is_some())
        .expect("a new primary takes writes");
    let other = 3 - new;
    let name = format!("n{}", other + 1);
    wait_until("the remaining standby to stream through its slot on the new primary", Duration::from_mins(1), || {
        slot(pg(new), &name).is_some_and(|s| s.1)
    });
    let receiver = pg(other).query("SELECT slot_name, status FROM pg_stat_wal_receiver");
    assert_eq!(receiver, vec![vec![name.clone(), "streaming".to_owned()]]);
    let acks = w.finish();
    eprintln!(
        "n{} promoted; {name} streams through its slot; {} writes acknowledged",
        new + 1,
        acks.iter().filter(|a| a.server.is_some()).count()
    );
}
