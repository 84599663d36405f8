//! `efm_agent::postgres` against real `PostgreSQL` servers on loopback (run as root):
//! role and WAL positions on a primary and a streaming standby, the local monitor's failure
//! timings (SIGKILL and SIGSTOP of the postmaster) and recovery, `remote.timeout`, TLS modes and
//! password files.
//!
//! `cargo test -p efm-tests --test postgres_monitor -- --test-threads=1`

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use efm_agent::postgres::{
    connect, lookup_pgpass, probe, remote_check, DbError, DbEvent, LocalMonitor, LocalTimings, Lsn, SslMode,
};
use efm_tests::pg::{self_signed_cert, PgNode, TempDir, PASSWORD_USER};
use tokio::sync::{mpsc, oneshot};

const LO: &str = "127.0.0.1";

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Starts a monitor task; returns the event receiver and a shutdown trigger.
fn spawn_monitor(node: &PgNode, t: LocalTimings, app: &str) -> (mpsc::Receiver<DbEvent>, oneshot::Sender<()>) {
    let (tx, rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let m = LocalMonitor::new(t, Instant::now());
    let mut target = node.target();
    target.application_name = app.into();
    tokio::spawn(m.run(target, tx, async move {
        let _ = stop_rx.await;
    }));
    (rx, stop_tx)
}

/// The next event matching `pred` within `within`, with when it arrived.
async fn next_matching(
    rx: &mut mpsc::Receiver<DbEvent>,
    within: Duration,
    what: &str,
    pred: impl Fn(&DbEvent) -> bool,
) -> (DbEvent, Instant) {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return (ev, Instant::now()),
            Ok(Some(_)) => {}
            Ok(None) => panic!("monitor ended while waiting for {what}"),
            Err(tokio::time::error::Elapsed { .. }) => panic!("no {what} event within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_positions_on_primary_and_streaming_standby() {
    let primary = PgNode::primary(5441, LO);
    let standby = PgNode::standby_of(&primary, 5442);

    let p = remote_check(&primary.target(), Duration::from_secs(5)).await.expect("probing the primary");
    assert!(!p.in_recovery);
    assert!(p.server_version_num >= 100_000, "version {}", p.server_version_num);
    assert!(p.current_lsn.is_some());
    assert_eq!((p.receive_lsn, p.replay_lsn), (None, None));
    assert_eq!(p.timeline, Some(1));
    assert!(!p.is_streaming);

    primary.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10000)");
    let written: Lsn = primary.current_lsn().parse().unwrap();
    standby.wait_replayed(&written.to_string(), Duration::from_secs(30));

    let s = remote_check(&standby.target(), Duration::from_secs(5)).await.expect("probing the standby");
    let primary_now: Lsn = primary.current_lsn().parse().unwrap();
    assert!(s.in_recovery);
    assert_eq!(s.current_lsn, None);
    let (recv, replay) = (s.receive_lsn.expect("receive lsn"), s.replay_lsn.expect("replay lsn"));
    assert!(replay >= written, "replay {replay} < written {written}");
    assert!(replay <= recv && recv <= primary_now, "replay {replay} receive {recv} primary {primary_now}");
    assert!(s.is_streaming, "{s:?}");
    assert_eq!(s.timeline, Some(1));
    assert_eq!(s.upstream_host.as_deref(), Some(LO));
    assert_eq!(s.wal_position(), Some(recv));

    // A user without monitoring rights still gets the role and positions.
    primary.psql("CREATE ROLE plain LOGIN");
    let written: Lsn = primary.current_lsn().parse().unwrap();
    standby.wait_replayed(&written.to_string(), Duration::from_secs(30));
    let s2 = remote_check(&standby.target_for("plain"), Duration::from_secs(5)).await.expect("probe as plain user");
    assert!(s2.in_recovery && s2.replay_lsn.is_some());
    let p2 = remote_check(&primary.target_for("plain"), Duration::from_secs(5)).await.expect("probe as plain user");
    assert!(!p2.in_recovery && p2.current_lsn.is_some() && p2.timeline == Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsn_text_matches_postgres() {
    let primary = PgNode::primary(5443, LO);
    primary.psql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)");
    let client = connect(&primary.target(), Duration::from_secs(5)).await.unwrap();
    let info = probe(&client, "primary").await.unwrap();
    let row = client.simple_query("SELECT pg_current_wal_lsn()::text").await.unwrap();
    let text = match &row[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        other => panic!("unexpected {other:?}"),
    };
    let lsn: Lsn = text.parse().unwrap();
    assert_eq!(lsn.to_string(), text);
    assert!(info.current_lsn.unwrap() <= lsn);
    // Formatting of values with letters, both halves, and extremes, as the server prints them.
    for v in [0_u64, 0x1a, 0xABCD_EF01, 0x1_0000_0000, 0x16_B374_D848, 0xFFFF_FFFF_FFFF_FFFF] {
        let pg = primary.psql(&format!("SELECT ('0/0'::pg_lsn + {v}::numeric)::text"));
        assert_eq!(Lsn(v).to_string(), pg, "value {v:#x}");
        assert_eq!(pg.parse::<Lsn>().unwrap(), Lsn(v));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_monitor_fails_after_sigkill_and_sees_restart() {
    let node = PgNode::primary(5444, LO);
    let t = LocalTimings {
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        timeout_final: Duration::from_secs(1),
        reuse_count: 0,
    };
    let (mut rx, _stop) = spawn_monitor(&node, t, "efm-monitor-test");
    let (ev, _) =
        next_matching(&mut rx, Duration::from_secs(5), "Available", |e| matches!(e, DbEvent::Available(_))).await;
    let DbEvent::Available(info) = ev else { unreachable!() };
    assert!(!info.in_recovery);
    // Let a couple of good checks go by, then kill the postmaster.
    let _ = next_matching(&mut rx, Duration::from_secs(5), "Checked", |e| matches!(e, DbEvent::Checked(_))).await;
    let killed = Instant::now();
    node.sigkill();
    let (ev, at) =
        next_matching(&mut rx, Duration::from_secs(10), "Failed", |e| matches!(e, DbEvent::Failed { .. })).await;
    let took = at - killed;
    println!("SIGKILL → Failed after {} ms ({ev:?})", ms(took));
    // Refused connections: the final check fails at once, so failure comes local.timeout after
    // the last success, which was at most one period (plus a check) before the kill.
    assert!(took >= t.timeout.saturating_sub(t.period + Duration::from_millis(150)), "too early: {took:?}");
    assert!(took <= t.timeout + Duration::from_millis(700), "too late: {took:?}");
    let DbEvent::Failed { error, silent_for, ever_available } = ev else { unreachable!() };
    assert!(ever_available);
    assert!(silent_for >= t.timeout, "{silent_for:?}");
    assert!(matches!(error, DbError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("127.0.0.1:5444"), "{error}");

    node.start();
    let restarted = Instant::now();
    let (_, at) =
        next_matching(&mut rx, Duration::from_secs(10), "Recovered", |e| matches!(e, DbEvent::Recovered(_))).await;
    println!("restart → Recovered after {} ms", ms(at - restarted));
    assert!(at - restarted <= t.period + Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_monitor_times_out_on_stopped_postmaster() {
    let node = PgNode::primary(5445, LO);
    let t = LocalTimings {
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        timeout_final: Duration::from_millis(1500),
        reuse_count: 0,
    };
    let (mut rx, _stop) = spawn_monitor(&node, t, "efm-monitor-test");
    let _ = next_matching(&mut rx, Duration::from_secs(5), "Available", |e| matches!(e, DbEvent::Available(_))).await;
    let _ = next_matching(&mut rx, Duration::from_secs(5), "Checked", |e| matches!(e, DbEvent::Checked(_))).await;
    let stopped = Instant::now();
    node.sigstop();
    let (ev, at) =
        next_matching(&mut rx, Duration::from_secs(10), "Failed", |e| matches!(e, DbEvent::Failed { .. })).await;
    let took = at - stopped;
    println!("SIGSTOP → Failed after {} ms ({ev:?})", ms(took));
    // Nothing answers: local.timeout after the last success, plus the whole final timeout.
    let full = t.timeout + t.timeout_final;
    assert!(took >= full.saturating_sub(t.period + Duration::from_millis(150)), "too early: {took:?}");
    assert!(took <= full + Duration::from_millis(700), "too late: {took:?}");
    let DbEvent::Failed { error, silent_for, .. } = ev else { unreachable!() };
    assert!(error.is_timeout(), "{error}");
    assert!(silent_for >= full, "{silent_for:?}");

    node.sigcont().unwrap();
    let (_, at) =
        next_matching(&mut rx, Duration::from_secs(10), "Recovered", |e| matches!(e, DbEvent::Recovered(_))).await;
    println!("SIGCONT → Recovered after {} ms", ms(at.saturating_duration_since(stopped + took)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connection_survives_a_stopped_postmaster() {
    // With db.reuse.connection.count the check runs on an existing backend, which keeps
    // answering while the postmaster is stopped; the fresh-connection monitor fails.
    let node = PgNode::primary(5446, LO);
    let base = LocalTimings {
        period: Duration::from_millis(100),
        timeout: Duration::from_millis(800),
        timeout_final: Duration::from_millis(400),
        reuse_count: 0,
    };
    let (mut fresh, _s1) = spawn_monitor(&node, base, "efm-fresh");
    let (mut reused, _s2) = spawn_monitor(&node, LocalTimings { reuse_count: 1_000, ..base }, "efm-reuse");
    for rx in [&mut fresh, &mut reused] {
        let _ = next_matching(rx, Duration::from_secs(5), "Available", |e| matches!(e, DbEvent::Available(_))).await;
        let _ = next_matching(rx, Duration::from_secs(5), "Checked", |e| matches!(e, DbEvent::Checked(_))).await;
    }
    node.sigstop();
    let _ = next_matching(&mut fresh, Duration::from_secs(5), "Failed", |e| matches!(e, DbEvent::Failed { .. })).await;
    // Meanwhile the reusing monitor saw only successes.
    let until = Instant::now() + Duration::from_millis(300);
    let mut ok = 0;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until.into(), reused.recv()).await {
        assert!(matches!(ev, DbEvent::Checked(_)), "reusing monitor reported {ev:?}");
        ok += 1;
    }
    while let Ok(ev) = reused.try_recv() {
        assert!(matches!(ev, DbEvent::Checked(_)), "reusing monitor reported {ev:?}");
        ok += 1;
    }
    assert!(ok >= 2, "only {ok} checks on the reused connection");
    node.sigcont().unwrap();
    let backends = node.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'efm-reuse'");
    assert_eq!(backends, "1", "the reusing monitor should hold exactly one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_check_obeys_remote_timeout() {
    let node = PgNode::primary(5447, LO);
    remote_check(&node.target(), Duration::from_secs(5)).await.expect("running server answers");
    node.sigstop();
    let timeout = Duration::from_millis(1200);
    let t0 = Instant::now();
    let r = remote_check(&node.target(), timeout).await;
    let took = t0.elapsed();
    node.sigcont().unwrap();
    println!("remote_check against stopped postmaster: {} ms: {r:?}", ms(took));
    let err = r.expect_err("a stopped server cannot answer");
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("127.0.0.1:5447"), "{err}");
    assert!(took >= timeout && took < timeout + Duration::from_millis(300), "{took:?}");
    remote_check(&node.target(), Duration::from_secs(5)).await.expect("answers again after SIGCONT");

    // Nothing listening: refused at once, naming the address.
    let mut gone = node.target();
    gone.port = 5400;
    let err = remote_check(&gone, timeout).await.unwrap_err();
    assert!(matches!(err, DbError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:5400"), "{err}");
}

async fn ssl_in_use(t: &efm_agent::postgres::DbTarget) -> Result<bool, DbError> {
    let c = connect(t, Duration::from_secs(5)).await?;
    let m = c.simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    match &m[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => Ok(r.get(0) == Some("t")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes() {
    let certs = TempDir::new("pgtls");
    let server = self_signed_cert(certs.path(), "server", "db.efm.test", "DNS:db.efm.test,IP:127.0.0.1");
    let other_ca = self_signed_cert(certs.path(), "other", "other.efm.test", "DNS:other.efm.test");
    let node = PgNode::primary_with(efm_tests::pg::PgOptions::new(5448, LO).ssl(server.clone()));

    let mut t = node.target();
    assert!(!ssl_in_use(&t).await.unwrap(), "disable must not encrypt");
    t.sslmode = SslMode::Require;
    assert!(ssl_in_use(&t).await.unwrap(), "require must encrypt");
    t.sslmode = SslMode::Prefer;
    assert!(ssl_in_use(&t).await.unwrap(), "prefer uses TLS when offered");

    // verify-full: right CA, name in the certificate (DNS name via hostaddr, and IP SAN).
    let mut full = node.target();
    full.sslmode = SslMode::VerifyFull;
    full.sslrootcert = Some(server.cert.clone());
    full.host = "db.efm.test".into();
    full.hostaddr = Some(LO.parse().unwrap());
    assert!(ssl_in_use(&full).await.expect("verify-full with right name"));
    let mut by_ip = full.clone();
    by_ip.host = LO.into();
    by_ip.hostaddr = None;
    assert!(ssl_in_use(&by_ip).await.expect("verify-full by IP SAN"));

    // verify-full with a name the certificate does not carry fails, clearly.
    let mut wrong = full.clone();
    wrong.host = "wrong.efm.test".into();
    let err = connect(&wrong, Duration::from_secs(5)).await.unwrap_err();
    println!("wrong host name: {err}");
    assert!(matches!(err, DbError::Tls { sslmode: SslMode::VerifyFull, .. }), "{err}");
    assert!(err.to_string().contains("wrong.efm.test:5448"), "{err}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // verify-ca ignores the name but checks the chain.
    let mut ca = wrong.clone();
    ca.sslmode = SslMode::VerifyCa;
    assert!(ssl_in_use(&ca).await.expect("verify-ca ignores the host name"));
    ca.sslrootcert = Some(other_ca.cert.clone());
    let err = connect(&ca, Duration::from_secs(5)).await.unwrap_err();
    println!("wrong CA: {err}");
    assert!(matches!(err, DbError::Tls { sslmode: SslMode::VerifyCa, .. }), "{err}");

    // A server without TLS: require fails with a TLS error.
    let plain = PgNode::primary(5449, LO);
    let mut req = plain.target();
    req.sslmode = SslMode::Require;
    let err = connect(&req, Duration::from_secs(5)).await.unwrap_err();
    println!("no TLS on server: {err}");
    assert!(matches!(err, DbError::Tls { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_is_used_when_no_password_is_set() {
    let node = PgNode::primary(5450, LO);
    let password = "s3:cr\\et";
    node.create_password_user(password);
    let dir = TempDir::new("pgpass");
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        "# efm test\n127.0.0.1:5999:*:*:wrong\n127.0.0.1:5450:*:efm_pw:s3\\:cr\\\\et\n*:*:*:*:fallback\n",
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(lookup_pgpass(&pgpass, LO, 5450, "postgres", PASSWORD_USER).as_deref(), Some(password));

    let mut t = node.target_for(PASSWORD_USER);
    t.passfile = Some(pgpass.clone());
    remote_check(&t, Duration::from_secs(5)).await.expect("password from the file");

    // No password anywhere: authentication error naming the server and user.
    t.passfile = Some(dir.path().join("missing"));
    let err = remote_check(&t, Duration::from_secs(5)).await.unwrap_err();
    println!("no password: {err}");
    assert!(matches!(err, DbError::Auth { .. }), "{err}");

    // Group-readable file: ignored.
    t.passfile = Some(pgpass.clone());
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = remote_check(&t, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, DbError::Auth { .. }), "{err}");

    // Wrong password: authentication error from the server.
    t.password = Some("nope".into());
    let err = remote_check(&t, Duration::from_secs(5)).await.unwrap_err();
    println!("wrong password: {err}");
    assert!(matches!(err, DbError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:5450") && err.to_string().contains(PASSWORD_USER), "{err}");
}

#[test]
fn primary_and_standby_in_network_namespaces() {
    // The harness as end-to-end tests use it: each server inside its own namespace, WAL
    // streamed over a veth pair on the test network.
    let link = efm_tests::Link::new(&["198.18.9.1/24"], &["198.18.9.2/24"]);
    let primary = PgNode::primary_with(efm_tests::pg::PgOptions::new(5451, "198.18.9.1").netns(&link.a.name));
    let standby = PgNode::standby_with(&primary, efm_tests::pg::PgOptions::new(5452, "198.18.9.2").netns(&link.b.name));
    let target = standby.target();
    let info = link.a.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(remote_check(&target, Duration::from_secs(5)))
    });
    let info = info.expect("probing the standby across the link");
    assert!(info.in_recovery && info.is_streaming, "{info:?}");
    assert_eq!(info.upstream_host.as_deref(), Some("198.18.9.1"));
    // Not reachable from the root namespace.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(remote_check(&primary.target(), Duration::from_millis(500))).is_err());
    drop(standby);
}
