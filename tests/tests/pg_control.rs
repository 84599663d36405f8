//! `efm_agent::postgres::control` against real `PostgreSQL` servers on loopback (run as root): a
//! planned switchover (clean stop of the primary, promotion of standby A, standby B pointed at
//! A by reload, the old primary demoted with `standby.signal` and started as a read-only standby
//! of A) — on `PostgreSQL` 15 and 18 —, the errors for a non-standby, and `primary_conninfo`
//! with a password that needs quoting (restart path via `recovery_target_timeline`, then reload
//! path).
//!
//! Replication settings are kept: a standby pointed at a new primary keeps every keyword of its
//! `primary_conninfo` but `host` and `port` (the replication user, its `passfile`...), whether
//! the agent's user may `ALTER SYSTEM` (superuser) or not (the monitoring user `efm`: the file
//! is written); the demoted primary, which has none, takes the new primary's former settings.
//!
//! `cargo test -p efm-tests --test pg_control -- --test-threads=1`

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    time::Duration,
};

use efm_agent::postgres::{
    conninfo_value,
    control::{
        demote_to_standby, is_running, promote, read_pg_version, read_primary_conninfo, reconfigure_standby,
        resume_replay_if_paused, stop, ApplyMethod, ConnInfo, ControlError, DbControl, Upstream,
    },
};
use efm_agent::scripts::lookup_user;
use efm_tests::pg::{PgNode, PgOptions, PgVersion, MONITOR_USER, PASSWORD_USER, REPLICATION_USER, SUPERUSER};

/// The running `primary_conninfo` of `node`, parsed.
fn conninfo_of(node: &PgNode) -> ConnInfo {
    ConnInfo::parse(&node.psql("SHOW primary_conninfo")).expect("primary_conninfo parses")
}

const LO: &str = "127.0.0.1";

fn control_for(node: &PgNode) -> DbControl {
    let mut c = DbControl::new("postgres", &node.data);
    c.bin = Some(node.bin.clone());
    c.log_file = Some(node.log.clone());
    c.timeout = Duration::from_mins(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_promote_reconfigure_demote() {
    planned_switchover(PgVersion::V15, 5571).await;
}

/// The same on `PostgreSQL` 18 (`cargo xtask setup` installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_promote_reconfigure_demote_on_pg18() {
    planned_switchover(PgVersion::V18, 5581).await;
}

/// The planned switchover on `version`, its servers on `port` (primary), `port + 1` (A) and
/// `port + 2` (B).
async fn planned_switchover(version: PgVersion, port: u16) {
    let (pa, pb) = (port + 1, port + 2);
    let p = PgNode::primary_with(PgOptions::new(port, LO).version(version));
    let a = PgNode::standby_of(&p, pa);
    let b = PgNode::standby_of(&p, pb);
    // An unrelated setting in postgresql.auto.conf, which the demotion must keep.
    p.psql("ALTER SYSTEM SET work_mem = '7MB'");
    p.psql("CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before')");
    let lsn = p.current_lsn();
    a.wait_replayed(&lsn, Duration::from_secs(30));
    b.wait_replayed(&lsn, Duration::from_secs(30));

    // Planned switchover: the old primary shuts down cleanly first, so that it can follow.
    let pc = control_for(&p);
    assert!(is_running(&pc).await.unwrap());
    stop(&pc).await.unwrap();
    assert!(!is_running(&pc).await.unwrap());
    stop(&pc).await.expect("stopping a stopped server is not an error");

    // Promote A.
    let out = promote(&a.target(), Duration::from_secs(30)).await.expect("promoting A");
    assert_eq!(out.addr, format!("127.0.0.1:{pa}"));
    assert_eq!(out.timeline, Some(2), "{out:?}");
    assert!(out.lsn.0 > 0);
    assert_eq!(a.psql("SELECT pg_is_in_recovery()"), "f");
    a.psql("INSERT INTO t VALUES (2, 'on A')");

    // Promoting it again: a clear error naming the host.
    let err = promote(&a.target(), Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, ControlError::NotStandby { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("database 127.0.0.1:{pa} is not a standby (pg_is_in_recovery() is false); cannot promote it")
    );
    let err = reconfigure_standby(&a.target(), &control_for(&a), &Upstream::new(LO, pb, SUPERUSER)).await.unwrap_err();
    assert!(matches!(err, ControlError::NotStandby { .. }), "{err}");

    // B follows A: reload (PostgreSQL 13 and later), streaming from A on the new timeline. The agent's user is
    // the monitoring user, not a superuser: no ALTER SYSTEM, postgresql.auto.conf is written.
    let before = conninfo_of(&b);
    assert_eq!(before.get("user"), Some(REPLICATION_USER), "{before:?}");
    let mut up = Upstream::new(LO, pa, MONITOR_USER);
    up.application_name = Some("not_used_b_has_settings".into());
    let rec = reconfigure_standby(&b.monitor_target(), &control_for(&b), &up).await.expect("reconfiguring B");
    let after = conninfo_of(&b);
    assert_eq!(after.pairs().len(), before.pairs().len(), "{before:?} -> {after:?}");
    for ((k, v), (k0, v0)) in after.pairs().iter().zip(before.pairs()) {
        assert_eq!(k, k0);
        match k.as_str() {
            "host" => assert_eq!(v, LO),
            "port" => assert_eq!(*v, pa.to_string()),
            _ => assert_eq!(v, v0, "{k} kept"),
        }
    }
    assert!(!std::fs::read_to_string(b.data.join("postgresql.auto.conf")).unwrap().contains(&b.creds.monitor_password));
    assert_eq!(rec.method, ApplyMethod::Reload, "{rec:?}");
    assert_eq!(rec.streaming_from, format!("127.0.0.1:{pa}"));
    assert!(rec.timeline.is_some_and(|t| t >= 1), "{rec:?}");
    assert!(rec.wrote.is_none());
    // The receiver reports the new timeline once it has switched to it (it may still show the
    // old one for a moment after connecting).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while b.psql("SELECT received_tli FROM pg_stat_wal_receiver") != "2" && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        b.psql("SELECT sender_port, received_tli, status FROM pg_stat_wal_receiver"),
        format!("{pa}|2|streaming")
    );
    assert_eq!(
        a.psql("SELECT usename, application_name FROM pg_stat_replication"),
        format!("{REPLICATION_USER}|walreceiver")
    );
    a.psql("INSERT INTO t VALUES (3, 'after reconfigure')");
    b.wait_replayed(&a.current_lsn(), Duration::from_secs(30));
    assert_eq!(b.psql("SELECT string_agg(v, ',' ORDER BY id) FROM t"), "before,on A,after reconfigure");

    demote_and_follow(&p, &a, &pc).await;
}

/// The stopped old primary `p` demoted with `standby.signal` + `primary_conninfo`, started:
/// it comes up read-only and follows the new primary `a`.
async fn demote_and_follow(p: &PgNode, a: &PgNode, pc: &DbControl) {
    // Demote the old primary (stopped): files only, the server is not started.
    let version = read_pg_version(&p.data).unwrap();
    assert_eq!(version, p.opts.version.major() * 10_000);
    // The old primary never was a standby: it takes the settings A had as a standby (a
    // promotion leaves them set), with its own application_name.
    let mut up_p = Upstream::new(LO, a.opts.port, MONITOR_USER);
    up_p.application_name = Some("old_primary".into());
    up_p.template = read_primary_conninfo(&a.monitor_target(), Duration::from_secs(10))
        .await
        .expect("reading A's former primary_conninfo as the monitoring user")
        .expect("a promoted standby keeps its primary_conninfo");
    assert_eq!(up_p.template.get("user"), Some(REPLICATION_USER));
    let d = demote_to_standby(pc, &p.data, version, &up_p).expect("demoting the old primary");
    assert_eq!(d.files, [p.data.join("postgresql.auto.conf"), p.data.join("standby.signal")]);
    let pg = lookup_user("postgres").unwrap();
    for f in &d.files {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", f.display());
        assert_eq!((m.uid(), m.gid()), (pg.uid, pg.gid), "{}", f.display());
    }
    let auto = std::fs::read_to_string(p.data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("work_mem = '7MB'"), "{auto}");
    assert_eq!(auto.matches("primary_conninfo").count(), 1, "{auto}");
    assert!(!is_running(pc).await.unwrap(), "demote_to_standby must not start the server");
    // Leftover temporary files: none.
    let leftovers: Vec<_> = std::fs::read_dir(&p.data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("efm-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Started, it comes up in recovery, read-only, following A.
    pc.start().await.expect("starting the old primary");
    assert!(is_running(pc).await.unwrap());
    assert_eq!(p.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(p.psql("SHOW work_mem"), "7MB");
    p.wait_streaming(Duration::from_secs(30));
    assert_eq!(p.psql("SELECT sender_port, received_tli FROM pg_stat_wal_receiver"), format!("{}|2", a.opts.port));
    a.psql("INSERT INTO t VALUES (4, 'followed')");
    p.wait_replayed(&a.current_lsn(), Duration::from_secs(30));
    assert_eq!(p.psql("SELECT v FROM t WHERE id = 4"), "followed");
    let w = p.psql_output("INSERT INTO t VALUES (5, 'must fail')");
    assert!(!w.status.success());
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(err.contains("cannot execute INSERT in a read-only transaction"), "{err}");
    let names = a.psql(
        "SELECT string_agg(usename || ':' || application_name, ',' ORDER BY application_name) FROM pg_stat_replication",
    );
    assert_eq!(names, format!("{REPLICATION_USER}:old_primary,{REPLICATION_USER}:walreceiver"));
    let ci = conninfo_of(p);
    assert_eq!(ci.get("passfile").map(std::path::PathBuf::from), Some(p.creds.passfile.clone()), "{ci:?}");
    assert_eq!(ci.get("password"), None, "{ci:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_password_in_primary_conninfo() {
    let p = PgNode::primary(5574, LO);
    let s = PgNode::standby_of(&p, 5575);
    let password = r"it's a \secret' pass";
    p.create_password_user(password);
    p.psql(&format!("ALTER ROLE {PASSWORD_USER} REPLICATION"));
    // Replication connections of that role must authenticate with the password.
    let hba = p.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host replication {PASSWORD_USER} 127.0.0.0/8 scram-sha-256\n{old}")).unwrap();
    p.psql("SELECT pg_reload_conf()");

    // recovery_target_timeline other than 'latest' forces the restart path.
    s.append_conf(&["recovery_target_timeline = 'current'".into()]);
    s.stop("fast");
    s.start();
    s.wait_streaming(Duration::from_secs(30));

    // The standby's own settings carry a password that needs quoting; the agent (superuser
    // here: ALTER SYSTEM) keeps it while it rewrites the setting.
    let own = format!(
        "user={PASSWORD_USER} password={} host={LO} port=5574 application_name='with password'",
        efm_agent::postgres::control::quote_conninfo_value(password)
    );
    s.psql(&format!("ALTER SYSTEM SET primary_conninfo = {}", efm_agent::postgres::control::quote_sql_literal(&own)));
    s.psql("SELECT pg_reload_conf()");
    let sc = control_for(&s);
    let up = Upstream::new(LO, 5574, MONITOR_USER);
    let r = reconfigure_standby(&s.target(), &sc, &up).await.expect("reconfiguring with a password");
    assert_eq!(r.method, ApplyMethod::Restart, "{r:?}");
    assert!(!r.conninfo.contains("secret"), "{}", r.conninfo);
    assert_eq!(s.psql("SHOW recovery_target_timeline"), "latest");
    let ci = s.psql("SHOW primary_conninfo");
    assert_eq!(conninfo_value(&ci, "password").as_deref(), Some(password));
    assert_eq!(conninfo_value(&ci, "user").as_deref(), Some(PASSWORD_USER));
    assert_eq!(
        p.psql("SELECT usename, application_name FROM pg_stat_replication"),
        format!("{PASSWORD_USER}|with password")
    );

    // Reload path; its own password is wrong: the standby never streams, a clear error after
    // the bound, without the password.
    let bad = own.replace(&efm_agent::postgres::control::quote_conninfo_value(password), "'wrong\\'one'");
    s.psql(&format!("ALTER SYSTEM SET primary_conninfo = {}", efm_agent::postgres::control::quote_sql_literal(&bad)));
    s.psql("SELECT pg_reload_conf()");
    let mut quick = sc.clone();
    quick.timeout = Duration::from_secs(6);
    let e = reconfigure_standby(&s.target(), &quick, &up).await.unwrap_err();
    assert!(matches!(e, ControlError::NotStreaming { method: ApplyMethod::Reload, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("127.0.0.1:5575") && msg.contains("127.0.0.1:5574"), "{msg}");
    assert!(!msg.contains("wrong"), "{msg}");

    // The right password back (by the administrator), by reload.
    s.psql(&format!("ALTER SYSTEM SET primary_conninfo = {}", efm_agent::postgres::control::quote_sql_literal(&own)));
    s.psql("SELECT pg_reload_conf()");
    let r = reconfigure_standby(&s.target(), &sc, &up).await.expect("reconfiguring back");
    assert_eq!(r.method, ApplyMethod::Reload);
    assert_eq!(p.psql("SELECT usename FROM pg_stat_replication"), PASSWORD_USER);
}

/// A standby whose replay was paused (`pg_wal_replay_pause()`) is resumed before a promotion,
/// as the monitoring user (not a superuser: `EXECUTE` on the replay functions); a standby
/// replaying normally is left as it is. A primary cannot be asked (EFM's "Could not resume
/// replay" is then sent by the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_is_resumed_before_promoting() {
    let p = PgNode::primary(5581, LO);
    let a = PgNode::standby_of(&p, 5582);
    assert!(!resume_replay_if_paused(&a.monitor_target(), Duration::from_secs(10)).await.expect("asking A"));
    a.psql("SELECT pg_wal_replay_pause()");
    let paused = || a.psql("SELECT pg_is_wal_replay_paused()").trim() == "t";
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !paused() {
        assert!(std::time::Instant::now() < until, "replay did not pause");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(resume_replay_if_paused(&a.monitor_target(), Duration::from_secs(10)).await.expect("resuming A"));
    assert!(!paused(), "replay runs again");
    let err = resume_replay_if_paused(&p.monitor_target(), Duration::from_secs(10)).await.unwrap_err();
    assert!(err.to_string().contains("pg_is_wal_replay_paused()"), "{err}");
}
