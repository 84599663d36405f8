//! The fence holds for sessions already open (issue 11), end to end with real `PostgreSQL` 15 and
//! real agents in network namespaces:
//!
//! (a) a client (TCP keepalives off) sends through the VIP one statement that sleeps 4 s inside
//!     the server and then inserts a row; the primary is then cut off — its agent frozen past the
//!     lease and the node partitioned from the other nodes (the client still reaches it), or only
//!     partitioned with its agent alive. The client must get an error, never a success; a standby
//!     is promoted and takes writes; no acknowledged row is missing on the new primary (writes are
//!     synchronous; the sleeping statement commits locally only, so it is the one a fenced node
//!     could acknowledge).
//! (b) a client (keepalives off) blocked in a 60 s statement on a primary whose agent is frozen
//!     and which is cut off gets an error within 1 s of the server's next segment (a NOTICE).
//! (c) after a failover with `stop.isolated.primary=false` (the old primary keeps its database
//!     running), writes from a cluster member's address to the old primary's own address fail.
//!
//! Needs root, nftables and `PostgreSQL` 15; run single-threaded.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{ack_counts, client_config, connect, long_insert_sql, missing_rows, no_overlap, Ack, Cluster, Kind, VIP},
    monotonic_ns, spawn_in_netns,
};

const PSW: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Witness];
const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];
/// The row of the 4 s sleeping insert in (a).
const SEQ: i64 = -4;

fn ns_path(c: &Cluster, i: usize) -> String {
    format!("/var/run/netns/{}", c.bed.nodes[i].ns.name)
}

fn client_ns(c: &Cluster) -> String {
    ns_path(c, c.kinds.len())
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// What a client saw for one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged by this server (`cluster_name`).
    Ack(String),
    /// An error (message).
    Error(String),
    /// No answer within the client's limit.
    Hang,
}

/// One statement's record: when it was sent, when its outcome arrived, the outcome.
#[derive(Clone, Debug)]
struct Record {
    sent_ns: u64,
    done_ns: u64,
    outcome: Outcome,
}

/// Runs, in the namespace at `ns`, one connection to `host`:5432 (keepalives off): `setup` (if
/// any), then the statement that sleeps `sleep_s` and inserts row `seq`; waits at most `limit`
/// for its answer. The returned receiver gets the send time at once, the join handle the record.
fn sleeping_insert(
    ns: String,
    host: String,
    setup: Option<&'static str>,
    seq: i64,
    sleep_s: f64,
    limit: Duration,
) -> (mpsc::Receiver<u64>, std::thread::JoinHandle<Record>) {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in_netns(ns, move || async move {
        let cfg = client_config(&host);
        let c = connect(&cfg).await.expect("the client connects through the VIP");
        if let Some(s) = setup {
            c.simple_query(s).await.expect("session setup");
        }
        let sent = monotonic_ns();
        let sql = long_insert_sql(seq, i64::try_from(sent).unwrap(), sleep_s);
        let _ = tx.send(sent);
        let r = tokio::time::timeout(limit, c.query_one(sql.as_str(), &[])).await;
        let done = monotonic_ns();
        let outcome = match r {
            Ok(Ok(row)) => Outcome::Ack(row.get(0)),
            Ok(Err(e)) => Outcome::Error(format!("{e} ({e:?})")),
            Err(_) => Outcome::Hang,
        };
        Record { sent_ns: sent, done_ns: done, outcome }
    });
    (rx, h)
}

/// The first acknowledgement after `after` from a server other than `not`: (server, time).
fn first_other(acks: &std::sync::Mutex<Vec<Ack>>, not: &str, after: u64, timeout: Duration) -> (String, u64) {
    let until = Instant::now() + timeout;
    loop {
        if let Some(a) = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.t_ns > after && a.server.as_deref().is_some_and(|s| s != not))
            .min_by_key(|a| a.t_ns)
        {
            return (a.server.clone().unwrap(), a.t_ns);
        }
        assert!(Instant::now() < until, "no server but {not} acknowledged a write within {timeout:?} of the fault");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether row `seq` exists on node `i`'s database (None: the database does not answer).
fn row_on(c: &Cluster, i: usize, seq: i64) -> Option<bool> {
    let out = c.pg[i].as_ref().unwrap().psql_output(&format!("SELECT count(*) FROM efm_probe WHERE seq = {seq}"));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim() == "1")
}

/// Scenario (a). `freeze`: the primary's agent is also stopped (SIGSTOP) at the fault.
fn sleeping_insert_on_a_cut_off_primary(freeze: bool) {
    let what = if freeze { "agent frozen + partitioned" } else { "partitioned, agent alive" };
    let c = Cluster::start(&PSW, "");
    // Synchronous commit on the primary (ALTER SYSTEM is not replicated): an acknowledged
    // write is on the standby, so "no acknowledged row is missing on the new primary" is exact.
    let p = c.pg[0].as_ref().unwrap();
    p.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'");
    p.psql("SELECT pg_reload_conf()");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(30)).is_some(), "the client writes through the VIP to n1");
    assert!(
        w.wait_long_acks_from("n1", 0, efm_tests::cluster::LONG_WRITERS, Duration::from_secs(20)),
        "long writers on n1"
    );

    // The statement under test commits locally only (the case: nothing but the fence
    // stands between its commit and the client).
    let (sent_rx, stmt) = sleeping_insert(
        client_ns(&c),
        VIP.to_owned(),
        Some("SET synchronous_commit = local"),
        SEQ,
        4.0,
        Duration::from_secs(40),
    );
    let sent = sent_rx.recv_timeout(Duration::from_secs(20)).expect("the sleeping statement was sent");
    std::thread::sleep(Duration::from_millis(300));
    let t_fault = monotonic_ns();
    if freeze {
        c.agents[0].signal(libc::SIGSTOP);
    }
    // Cut off from the standby and the witness; the client still reaches it.
    c.bed.partition(0, &[1, 2]);

    let (new, t_new) = first_other(&w.log, "n1", t_fault, Duration::from_secs(30));
    let rec = stmt.join().expect("the statement's client thread");
    let acks = w.finish();
    let new_i = Cluster::index_of(&new);
    let on_new = row_on(&c, new_i, SEQ);
    let on_old = row_on(&c, 0, SEQ);
    eprintln!(
        "(a) {what}: statement sent {} ms before the fault; fault → new primary {new}'s first write {} ms; \
         fault → client outcome {} ms: {:?}; its row on {new}: {on_new:?}, on n1: {on_old:?}",
        ms(t_fault - sent),
        ms(t_new - t_fault),
        ms(rec.done_ns.saturating_sub(t_fault)),
        rec.outcome
    );
    match &rec.outcome {
        Outcome::Ack(server) => panic!(
            "{what}: the client got a SUCCESS from {server} {} ms after the fault, {} ms after {new}'s first write; \
             the row is on {new}: {on_new:?}",
            ms(rec.done_ns.saturating_sub(t_fault)),
            i64::try_from(ms(rec.done_ns)).unwrap() - i64::try_from(ms(t_new)).unwrap(),
        ),
        Outcome::Hang => panic!(
            "{what}: the client got neither an error nor a success within 40 s of sending (it hangs; keepalives off)"
        ),
        Outcome::Error(_) => {}
    }
    assert!(rec.sent_ns < t_fault);
    // The new primary took writes, and no acknowledgement (short or long) left n1 after its first.
    let (short_new, long_new) = ack_counts(&acks, &new);
    assert!(short_new > 0, "{new} took writes");
    let (last_old, first_new) = no_overlap(&acks, "n1", &new);
    let missing = missing_rows(c.pg[new_i].as_ref().unwrap(), &acks);
    let (short_old, long_old) = ack_counts(&acks, "n1");
    eprintln!(
        "(a) {what}: client writer: n1 acknowledged {short_old} short + {long_old} long, the last {} ms before {new}'s first; \
         {new} {short_new} short + {long_new} long; {} acknowledged rows missing on {new}",
        ms(first_new - last_old),
        missing.len()
    );
    assert!(missing.is_empty(), "{what}: acknowledged rows missing on the new primary {new}: {missing:?}");
}

#[test]
fn a_sleeping_insert_on_a_frozen_and_partitioned_primary_gets_an_error() {
    sleeping_insert_on_a_cut_off_primary(true);
}

#[test]
fn a_sleeping_insert_on_a_partitioned_primary_gets_an_error() {
    sleeping_insert_on_a_cut_off_primary(false);
}

/// Scenario (b), agent frozen: a client (keepalives off) blocked in a 60 s statement on a primary
/// whose agent is frozen and which is cut off from the other nodes. The client sends nothing, so
/// the ingress fence never sees it; the kernel's egress fence must turn the server's next segment
/// — here a NOTICE the statement raises after `NOTICE_AFTER` — into a RST, so the client gets an
/// error within 1 s of it instead of waiting out the statement (or TCP timeouts).
#[test]
fn a_client_blocked_on_a_frozen_primary_gets_an_error_at_the_servers_next_segment() {
    const NOTICE_AFTER: f64 = 4.0;
    let c = Cluster::start(&PSW, "");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(30)).is_some(), "the client writes through the VIP to n1");
    let (tx, rx) = mpsc::channel();
    let ns = client_ns(&c);
    let blocked = spawn_in_netns(ns, move || async move {
        let c = connect(&client_config(VIP)).await.expect("the client connects through the VIP");
        let sql = format!(
            "DO $$ BEGIN PERFORM pg_sleep({NOTICE_AFTER}); RAISE NOTICE 'still working'; PERFORM pg_sleep(60); END $$"
        );
        let sent = monotonic_ns();
        let _ = tx.send(sent);
        let r = tokio::time::timeout(Duration::from_secs(70), c.batch_execute(&sql)).await;
        let outcome = match r {
            Ok(Ok(())) => Outcome::Ack(String::new()),
            Ok(Err(e)) => Outcome::Error(format!("{e} ({e:?})")),
            Err(_) => Outcome::Hang,
        };
        Record { sent_ns: sent, done_ns: monotonic_ns(), outcome }
    });
    let sent = rx.recv_timeout(Duration::from_secs(20)).expect("the blocking statement was sent");
    std::thread::sleep(Duration::from_millis(300));
    let t_fault = monotonic_ns();
    c.agents[0].signal(libc::SIGSTOP);
    c.bed.partition(0, &[1, 2]);
    let rec = blocked.join().expect("the blocked client's thread");
    let notice_ns = sent + u64::try_from(Duration::from_secs_f64(NOTICE_AFTER).as_nanos()).unwrap();
    eprintln!(
        "(b) agent frozen: statement sent {} ms before the fault; the server's NOTICE due {} ms after the fault; \
         the client's outcome {} ms after the fault ({} ms after the NOTICE was due): {:?}",
        ms(t_fault - sent),
        ms(notice_ns - t_fault),
        ms(rec.done_ns.saturating_sub(t_fault)),
        i64::try_from(ms(rec.done_ns)).unwrap() - i64::try_from(ms(notice_ns)).unwrap(),
        rec.outcome
    );
    let _ = w.finish();
    assert!(matches!(rec.outcome, Outcome::Error(_)), "the blocked client must get an error, got {:?}", rec.outcome);
    // Not before the server's segment (nothing else could reach the client: the agent is
    // frozen and the client sends nothing), and within 1 s of it.
    assert!(
        rec.done_ns + 200_000_000 >= notice_ns,
        "the error came {} ms before the server's segment",
        ms(notice_ns - rec.done_ns)
    );
    assert!(
        rec.done_ns <= notice_ns + 1_000_000_000,
        "the error came {} ms after the server's segment",
        ms(rec.done_ns - notice_ns)
    );
}

/// A client in the namespace at `ns` (a cluster member's) writing to `host`:5432 directly: it
/// opens a connection at once (before the fault), then on `go` makes `tries` writes, each on the
/// open connection or, after an error, a new one.
fn member_writes(
    ns: String,
    host: String,
    seq0: i64,
    tries: usize,
) -> (mpsc::Sender<()>, mpsc::Receiver<bool>, std::thread::JoinHandle<Vec<Outcome>>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = spawn_in_netns(ns, move || async move {
        let cfg = client_config(&host);
        let mut client = connect(&cfg).await;
        let _ = ready_tx.send(client.is_some());
        // Wait for the go without blocking the connection's task.
        while go_rx.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = Vec::new();
        for k in 0..tries {
            if client.is_none() {
                client = connect(&cfg).await;
            }
            let Some(c) = client.as_ref() else {
                out.push(Outcome::Error("connect failed".into()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let seq = seq0 + i64::try_from(k).unwrap();
            let t = i64::try_from(monotonic_ns()).unwrap();
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                c.query_one(
                    "INSERT INTO efm_probe (seq, t) VALUES ($1, $2) RETURNING current_setting('cluster_name')",
                    &[&seq, &t],
                ),
            )
            .await;
            match r {
                Ok(Ok(row)) => out.push(Outcome::Ack(row.get(0))),
                Ok(Err(e)) => {
                    out.push(Outcome::Error(e.to_string()));
                    client = None;
                }
                Err(_) => {
                    out.push(Outcome::Hang);
                    client = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    });
    (go_tx, ready_rx, h)
}

/// Scenario (c): after a failover with `stop.isolated.primary=false`, a member's writes to the
/// old primary fail. `freeze`: the fault is the primary's agent frozen with its heartbeats cut
/// (an absent agent alone is not a failure since issue 13; its database stays reachable by the
/// members throughout), so the old primary is lease-lapsed, and epoch-fenced once its
/// heartbeats pass again after the failover; otherwise its link goes
/// down with the agent alive and comes back after the failover (the agent learns the new epoch
/// and keeps its database running, fenced).
fn members_cannot_write_to_the_old_primary(freeze: bool) {
    const TRIES: usize = 20;
    let what = if freeze { "agent frozen, heartbeats cut" } else { "link down and up again" };
    let c = Cluster::start(&PSS, "stop.isolated.primary=false\n");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(30)).is_some(), "the client writes through the VIP to n1");
    let old_ip = c.files[0].ip.clone();
    // Members' connections to the old primary's own address, opened before the fault.
    let mut members = Vec::new();
    for m in [1usize, 2] {
        let (go, ready, h) =
            member_writes(ns_path(&c, m), old_ip.clone(), 1_000_000_000 * i64::try_from(m).unwrap(), TRIES);
        assert!(
            ready.recv_timeout(Duration::from_secs(10)).unwrap_or(false),
            "n{} connects to n1 before the fault",
            m + 1
        );
        members.push((m, go, h));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t_fault = monotonic_ns();
    if freeze {
        c.agents[0].signal(libc::SIGSTOP);
        c.bed.cut_heartbeats(0, &[1, 2]);
    } else {
        c.bed.link_down(0);
    }
    let (new, t_new) = first_other(&w.log, "n1", t_fault, Duration::from_secs(30));
    eprintln!("(c) {what}: fault → {new}'s first write {} ms", ms(t_new - t_fault));
    if freeze {
        // The voters' PINGs with the new epoch reach its kernel again (the agent stays frozen).
        c.bed.heal();
    } else {
        c.bed.link_up(0);
        let v = c.wait_for(0, "the old primary fenced", Duration::from_secs(20), |v| {
            v["outcome"].as_str().is_some_and(|o| o.starts_with("fenced")) && v["kernel"]["serving"] == false
        });
        eprintln!("(c) {what}: n1 after the heal: outcome {}, kernel {}", v["outcome"], v["kernel"]);
    }
    // The old primary's database runs, as a primary (stop.isolated.primary=false).
    let rec = c.pg[0].as_ref().unwrap().psql("SELECT pg_is_in_recovery()");
    assert_eq!(rec, "f", "n1's database still runs as a primary");
    let t_tries = monotonic_ns();
    let mut failures = Vec::new();
    for (m, go, h) in members {
        go.send(()).unwrap();
        let out = h.join().expect("member client thread");
        let ok: Vec<&Outcome> = out.iter().filter(|o| matches!(o, Outcome::Ack(_))).collect();
        eprintln!(
            "(c) {what}: n{} → n1 ({old_ip}:5432): {} tries, {} succeeded; first outcomes: {:?}",
            m + 1,
            out.len(),
            ok.len(),
            &out[..out.len().min(3)]
        );
        assert_eq!(out.len(), TRIES);
        if !ok.is_empty() {
            failures.push(format!("n{}: {} of {TRIES} writes to the old primary succeeded", m + 1, ok.len()));
        }
    }
    eprintln!("(c) {what}: tries started {} ms after the fault", ms(t_tries - t_fault));
    let acks = w.finish();
    assert!(failures.is_empty(), "{what}: a member wrote to the fenced old primary: {failures:?}");
    let _ = no_overlap(&acks, "n1", &new);
}

#[test]
fn members_cannot_write_to_an_isolated_old_primary_after_it_rejoins() {
    members_cannot_write_to_the_old_primary(false);
}

#[test]
fn members_cannot_write_to_an_old_primary_whose_agent_is_frozen() {
    members_cannot_write_to_the_old_primary(true);
}
