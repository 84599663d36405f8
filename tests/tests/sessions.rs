//! Ending client sessions (`efm_agent::sessions`) against a real `PostgreSQL` 15 in a network
//! namespace, with clients in another namespace (run as root): `SOCK_DESTROY` through
//! `NETLINK_SOCK_DIAG` for the sessions on the database port at the service addresses (own
//! address and VIP, IPv4 and IPv6), then `pg_terminate_backend`. A client blocked in
//! `pg_sleep(60)` with keepalives off gets an error within 1 s; a sleeping insert is cancelled
//! and never commits; spared clients (a member while members are exempt, an exempt host) and a
//! session at a non-service address keep working; the listening socket still accepts; with
//! members no longer exempt, the member's session ends too. And end to end with real agents:
//! a client blocked through the VIP on a primary cut off from the other nodes gets an error
//! within 1 s of the primary's kernel fence (its lease lapsing).
//!
//! `cargo test -p efm-tests --test sessions -- --test-threads=1`

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use efm_agent::{
    config::Cidr,
    postgres::DbTarget,
    sessions::{self, Ended, Spare},
};
use efm_tests::{
    cluster::{Cluster, Kind, CLUSTER, VIP},
    enter_netns, monotonic_ns,
    pg::{PgNode, PgOptions, SUPERUSER},
    Link, Netns,
};
use tokio::net::TcpSocket;
use tokio_postgres::{Client, NoTls};

const PORT: u16 = 5544;
const SERVER: &str = "198.18.1.1";
const VIP1: &str = "198.18.1.100";
/// A server address that is not a service address (e.g. a management interface).
const OTHER: &str = "198.18.1.50";
const SERVER6: &str = "fd00:efd::1";
const CLIENT: &str = "198.18.1.2";
const MEMBER: &str = "198.18.1.3";
const EXEMPT: &str = "198.18.1.4";
const CLIENT6: &str = "fd00:efd::2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service() -> Vec<IpAddr> {
    vec![ip(SERVER), ip(VIP1), ip(SERVER6)]
}

fn spare(members_spared: bool) -> Spare {
    Spare {
        exempt: vec![Cidr { addr: ip(EXEMPT), prefix: 32 }],
        local: service(),
        members: vec![ip(MEMBER)],
        members_spared,
    }
}

/// A TCP connection from `src` (in `ns`) to `dst`, as a tokio-postgres client. The socket is a
/// plain one, so TCP keepalives are off (as libpq's `keepalives=0`).
async fn connect_from(ns: &Netns, src: &str, dst: &str) -> Client {
    let (src, dst) = (SocketAddr::new(ip(src), 0), SocketAddr::new(ip(dst), PORT));
    let path = format!("/var/run/netns/{}", ns.name);
    // The socket belongs to the namespace of the thread that creates it.
    let sock = std::thread::spawn(move || {
        enter_netns(&path);
        let s = if src.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.expect("socket");
        s.bind(src).unwrap_or_else(|e| panic!("binding {src}: {e}"));
        s
    })
    .join()
    .unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(dst))
        .await
        .unwrap_or_else(|_| panic!("connecting {src} → {dst}: timeout"))
        .unwrap_or_else(|e| panic!("connecting {src} → {dst}: {e}"));
    let (client, conn) = tokio_postgres::Config::new()
        .user(SUPERUSER)
        .dbname("postgres")
        .connect_raw(stream, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL handshake {src} → {dst}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `end_sessions` in the server's namespace.
fn end_in(ns: &Netns, members_spared: bool) -> Ended {
    ns.run(move || {
        let sp = spare(members_spared);
        sessions::end_sessions(PORT, &service(), |a| sp.spares(a)).unwrap_or_else(|e| panic!("ending sessions: {e}"))
    })
}

/// `terminate_backends` from the server's namespace over TCP to its own address (as the agent
/// does: its connection comes from a local address, which is spared).
fn terminate_in(ns: &Netns, members_spared: bool) -> usize {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut t = DbTarget::new(SERVER, PORT, "postgres", SUPERUSER);
        t.passfile = Some("/nonexistent/efm-test-pgpass".into());
        let sp = spare(members_spared);
        rt.block_on(sessions::terminate_backends(&t, Duration::from_secs(5), |a| sp.spares(a)))
            .unwrap_or_else(|e| panic!("terminating backends: {e}"))
    })
}

async fn select_one(c: &Client, who: &str) {
    let r = tokio::time::timeout(Duration::from_secs(3), c.query_one("SELECT 1", &[]))
        .await
        .unwrap_or_else(|_| panic!("{who}: SELECT 1 timed out"))
        .unwrap_or_else(|e| panic!("{who}: SELECT 1 failed: {e}"));
    assert_eq!(r.get::<_, i32>(0), 1);
}

fn wait_active(pg: &PgNode, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let got: usize = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(%' AND pid <> pg_backend_pid()")
            .parse()
            .unwrap();
        if got == n {
            return;
        }
        assert!(Instant::now() < until, "{got} sleeping statements active, expected {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_clients_get_an_error_spared_ones_keep_working_and_nothing_commits() {
    efm_tests::pg::require_postgres();
    let link = Link::new(
        &["198.18.1.1/24", "198.18.1.100/24", "198.18.1.50/24", "fd00:efd::1/64"],
        &["198.18.1.2/24", "198.18.1.3/24", "198.18.1.4/24", "fd00:efd::2/64"],
    );
    let (srv, cli) = (&link.a, &link.b);
    let pg = PgNode::primary_with(PgOptions::new(PORT, &format!("{SERVER},{VIP1},{OTHER},{SERVER6}")).netns(&srv.name));
    pg.psql("CREATE TABLE t(id int)");

    let blocked = connect_from(cli, CLIENT, SERVER).await;
    let writer = connect_from(cli, CLIENT, VIP1).await;
    let blocked6 = connect_from(cli, CLIENT6, SERVER6).await;
    let member = connect_from(cli, MEMBER, SERVER).await;
    let exempt = connect_from(cli, EXEMPT, SERVER).await;
    let other = connect_from(cli, CLIENT, OTHER).await;

    // The sessions at service addresses, the one at OTHER is out of scope.
    let mut found: Vec<IpAddr> = srv
        .run(|| sessions::list(PORT, &service()).expect("listing sessions"))
        .iter()
        .map(|s| {
            assert_eq!(s.local.port(), PORT);
            assert!(service().contains(&s.local.ip()), "{s:?}");
            s.remote.ip()
        })
        .collect();
    found.sort();
    let mut want = vec![ip(CLIENT), ip(CLIENT), ip(MEMBER), ip(EXEMPT), ip(CLIENT6)];
    want.sort();
    assert_eq!(found, want, "sessions on port {PORT} at the service addresses");

    let sleeping = tokio::spawn(async move {
        let r = blocked.simple_query("SELECT pg_sleep(60)").await;
        (Instant::now(), r.map(|_| ()))
    });
    let sleeping6 = tokio::spawn(async move {
        let r = blocked6.simple_query("SELECT pg_sleep(60)").await;
        (Instant::now(), r.map(|_| ()))
    });
    let inserting = tokio::spawn(async move {
        let r = writer.simple_query("WITH s AS (SELECT pg_sleep(3)) INSERT INTO t SELECT 1 FROM s RETURNING 1").await;
        (Instant::now(), r.map(|_| ()))
    });
    let insert_started = Instant::now();
    wait_active(&pg, 3);

    // The fence engages: members still exempt (explicit fence).
    let fence = Instant::now();
    let ended = end_in(srv, true);
    let terminated = terminate_in(srv, true);
    let took = fence.elapsed();
    assert_eq!(
        ended,
        Ended { destroyed: 3, spared: 2, gone: 0 },
        "the two sleepers and the insert; member and exempt host spared"
    );
    assert_eq!(terminated, 4, "the three statements' backends and the OTHER session's (a non-spared client address)");
    for (what, task) in [
        ("pg_sleep(60) over IPv4", sleeping),
        ("pg_sleep(60) over IPv6", sleeping6),
        ("sleeping insert via the VIP", inserting),
    ] {
        let (at, res) = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap_or_else(|_| panic!("{what}: still blocked 2 s after the sessions were ended"))
            .unwrap();
        let err = res.expect_err(what);
        let after = at.saturating_duration_since(fence);
        println!("{what}: error {} ms after the fence: {err}", after.as_millis());
        assert!(after < Duration::from_secs(1), "{what}: error only after {} ms", after.as_millis());
    }
    println!("ending sessions and terminating backends took {} ms", took.as_millis());

    // Spared sessions keep working; the listener still accepts.
    select_one(&member, "member").await;
    select_one(&exempt, "exempt host").await;
    select_one(&connect_from(cli, CLIENT, SERVER).await, "new connection").await;
    select_one(&connect_from(cli, CLIENT, VIP1).await, "new connection to the VIP").await;
    select_one(&connect_from(cli, CLIENT6, SERVER6).await, "new IPv6 connection").await;
    // OTHER's socket was not destroyed (not a service address), but its backend was
    // terminated: the database side is by client address.
    assert!(other.simple_query("SELECT 1").await.is_err(), "the backend of the OTHER session was terminated");

    // The insert was cancelled, not committed later.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(insert_started.elapsed())).await;
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "0", "the terminated insert committed");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(%' AND pid <> pg_backend_pid()"),
        "0"
    );

    // Members stop being exempt (a newer epoch, a lapsed lease): the member's session ends, the
    // exempt host's does not.
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let mut left: Vec<IpAddr> = srv
            .run(|| sessions::list(PORT, &service()).expect("listing sessions"))
            .iter()
            .map(|s| s.remote.ip())
            .collect();
        left.sort();
        if left == [ip(MEMBER), ip(EXEMPT)] {
            break;
        }
        assert!(Instant::now() < until, "sessions left at the service addresses: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = end_in(srv, false);
    assert_eq!(ended, Ended { destroyed: 1, spared: 1, gone: 0 });
    terminate_in(srv, false);
    assert!(member.simple_query("SELECT 1").await.is_err(), "the member's session was ended");
    select_one(&exempt, "exempt host").await;
}

/// The primary's kernel lease deadline (`CLOCK_MONOTONIC` ns) from its pinned `EFM_LEASE` map.
fn pinned_lease_deadline(c: &Cluster, i: usize) -> u64 {
    let path = c.files[i].bpffs.0.join(CLUSTER).join(efm_common::maps::MAP_LEASE);
    let data = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let arr: aya::maps::Array<_, efm_common::maps::LeaseState> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("EFM_LEASE is an array");
    arr.get(&0, 0).expect("reading EFM_LEASE").deadline_ns
}

/// End to end, real agents: a client (keepalives off) blocked in `pg_sleep(60)` through the VIP
/// on a primary that is then cut off from the other nodes (not from the client). Its kernel
/// lease lapses (no endorsements); its agent sees that and ends the sessions: the client gets an
/// error within 1 s of the lapse.
#[test]
fn a_client_blocked_on_a_partitioned_primary_gets_an_error_within_a_second_of_the_fence() {
    let c = Cluster::start(&[Kind::Primary, Kind::Standby, Kind::Standby], "");
    let n = c.kinds.len();
    let client_ns = format!("/var/run/netns/{}", c.bed.nodes[n].ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(VIP)
                .port(5432)
                .user(SUPERUSER)
                .dbname("postgres")
                .keepalives(false)
                .connect_timeout(Duration::from_secs(5));
            let (client, conn) = cfg.connect(NoTls).await.expect("connecting through the VIP");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let started = monotonic_ns();
            let res = client.simple_query("SELECT pg_sleep(60)").await;
            let _ = tx.send((
                started,
                monotonic_ns(),
                res.map(|_| ()).map_err(|e| {
                    e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{}: {}", d.severity(), d.message()))
                }),
            ));
        });
    });
    let p = c.pg[0].as_ref().unwrap();
    wait_active(p, 1);

    // Cut n1 off from the other nodes at the switch; the client's port stays connected.
    let sw: Vec<String> = c.bed.nodes.iter().map(|b| b.sw_if.clone()).collect();
    let others = sw[1..n].iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let rules = format!(
        "table bridge efm_cut {{\n chain cut {{\n  type filter hook forward priority 0;\n  \
         iifname \"{p0}\" oifname {{ {others} }} drop\n  iifname {{ {others} }} oifname \"{p0}\" drop\n }}\n}}\n",
        p0 = sw[0]
    );
    let out =
        c.bed.switch.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(|mut ch| {
            use std::io::Write as _;
            ch.stdin.take().unwrap().write_all(rules.as_bytes())?;
            ch.wait_with_output()
        });
    assert!(out.as_ref().is_ok_and(|o| o.status.success()), "nft partition rules: {out:?}");
    let t_cut = monotonic_ns();

    let (started, t_err, res) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the blocked client got no answer within 15 s of the partition");
    let _ = client.join();
    let err = res.expect_err("pg_sleep(60) cannot have finished");
    let deadline = pinned_lease_deadline(&c, 0);
    let ms = |a: u64, b: u64| (i128::from(a) - i128::from(b)) / 1_000_000;
    // The agent's log line (its file is written by a background thread: give it a moment).
    let log_path = c.files[0].config_dir.join(format!("log/{CLUSTER}.log"));
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("client sessions ended") || std::time::Instant::now() > until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ended: Vec<&str> = log.lines().filter(|l| l.contains("client sessions ended")).collect();
    println!(
        "partition at +{} ms (from the query's start); n1's lease lapsed {} ms after the partition; \
         the client's error came {} ms after the lapse: {err}\nagent: {ended:?}",
        ms(t_cut, started),
        ms(deadline, t_cut),
        ms(t_err, deadline)
    );
    assert!(deadline > t_cut, "the lease lapsed after the partition");
    assert!(t_err >= deadline, "the client's session ended only once the node stopped serving");
    assert!(t_err - deadline < 1_000_000_000, "error {} ms after the kernel fence", ms(t_err, deadline));
    assert!(!ended.is_empty(), "n1's agent logged the ending of the sessions in {}", log_path.display());

    // The isolated primary flow (stop.isolated.primary=true, the default) goes on in order:
    // sessions ended → database stopped → VIP released.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().any(|l| l.contains("VIP") && l.contains("assigned=false")) {
            break log;
        }
        assert!(std::time::Instant::now() < until, "n1 did not release the VIP within 20 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |needle: &dyn Fn(&str) -> bool, what: &str| -> String {
        let line = log.lines().find(|l| needle(l)).unwrap_or_else(|| panic!("n1 never logged {what}:\n{log}"));
        line.split_whitespace().next().unwrap_or_default().to_owned()
    };
    let t_sessions = at(&|l| l.contains("client sessions ended"), "the sessions ended");
    let t_stopped = at(&|l| l.contains("database stopped") && l.contains("isolated primary"), "the database stopped");
    let t_vip = at(&|l| l.contains("VIP") && l.contains("assigned=false"), "the VIP released");
    println!("n1: sessions ended {t_sessions}, database stopped {t_stopped}, VIP released {t_vip}");
    // RFC 3339 UTC timestamps of one format: they order as strings.
    assert!(
        t_sessions < t_stopped && t_stopped <= t_vip,
        "order: sessions {t_sessions}, database {t_stopped}, VIP {t_vip}"
    );
}
