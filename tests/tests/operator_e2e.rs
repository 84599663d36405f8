//! The operator's day-to-day flows end to end, with real `PostgreSQL` 15, real agents and XDP in
//! network namespaces: `efm promote [-switchover]`, `resume`, `set-priority`, `allow-node` /
//! `disallow-node`, `stop-cluster`, every script hook with its arguments, a hanging and a
//! failing script, and the custom monitor. Needs root; run single-threaded.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    process::Output,
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{no_overlap, Cluster},
    monotonic_ns,
    pg::PgVersion,
    scenarios::{self, first_other_or_dump, ip, ok, status_json, text, wait_until, Recorder, PSS},
};

#[track_caller]
fn refused(o: &Output, what: &str, needle: &str) -> String {
    assert_eq!(o.status.code(), Some(1), "{what} should be refused with exit code 1: {}", text(o));
    let t = text(o);
    assert!(t.contains(needle), "{what}: expected {needle:?} in {t:?}");
    t
}

#[test]
fn switchover_and_back_keep_every_acknowledged_write() {
    scenarios::switchover_and_back(PgVersion::V15);
}

#[test]
fn promote_refuses_a_lagging_standby_without_a_terminal_and_fences_the_old_primary() {
    let c = Cluster::start(&PSS, "");
    // Argument and state checks: clear messages, nothing changes.
    let o = c.efm_cmd(0, "promote", &["-sourcenode", &ip(&c, 1)]);
    assert_eq!(o.status.code(), Some(2), "-sourcenode without -switchover is a usage error: {}", text(&o));
    refused(&c.efm_cmd(0, "set-priority", &["198.18.0.77", "1"]), "set-priority of a stranger", "not a member");
    let o = c.efm_cmd(0, "set-priority", &[&ip(&c, 1), "first"]);
    assert_eq!(o.status.code(), Some(2), "a non-numeric priority is a usage error: {}", text(&o));
    refused(&c.efm_cmd(1, "disallow-node", &[&ip(&c, 0)]), "disallow the primary", "is the primary");
    let o = ok(&c.efm_cmd(1, "resume", &[]), "resume on a monitoring node");
    assert!(o.contains("nothing to resume"), "{o}");
    let o = c.efm_cmd(1, "resume", &["extra"]);
    assert_eq!(o.status.code(), Some(2), "an extra argument is a usage error: {}", text(&o));

    // Both standbys fall behind: their WAL receivers are stopped, the primary writes on.
    let receivers: Vec<i32> = [1, 2]
        .iter()
        .map(|&i| c.pg[i].as_ref().unwrap().psql("SELECT pid FROM pg_stat_wal_receiver").trim().parse().unwrap())
        .collect();
    for &p in &receivers {
        // SAFETY: kill(2) on a server process of our test database.
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    let p0 = c.pg[0].as_ref().unwrap();
    p0.psql("CREATE TABLE lag (i int); INSERT INTO lag SELECT generate_series(1, 20000)");
    // The primary advertises its WAL position as of its last local check (local.period=1s).
    std::thread::sleep(Duration::from_millis(2_500));
    let t = refused(&c.efm_cmd(1, "promote", &[]), "promote a lagging standby without a terminal", "not up to date");
    assert!(t.contains("--force"), "{t}");
    for &p in &receivers {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
    assert_eq!(c.node_status(0).unwrap()["epoch"], 1, "a refused promotion changes nothing");
    assert_eq!(c.serving_primary(), Some(0));

    // Forced: a standby becomes primary, the old primary stays up but fenced.
    let msg = ok(&c.efm_cmd(2, "promote", &["--force"]), "efm promote --force");
    assert!(msg.contains("Promotion completed") && msg.contains("stays fenced"), "{msg}");
    wait_until("one serving primary that is not n1", Duration::from_secs(20), || {
        c.serving_primary().is_some_and(|p| p != 0)
    });
    let v = c.wait_for(0, "n1 fenced", Duration::from_secs(20), |v| {
        v["kernel"]["serving"] == false && v["kernel"]["fenced"] == true
    });
    assert_eq!(v["db"]["inRecovery"], false, "the old primary database keeps running, cut off: {v:#}");
}

#[test]
fn resume_after_a_standby_database_restart() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "", |i| format!("script.resumed={r} n{} resumed", i + 1));
    let n2 = c.pg[1].as_ref().unwrap();
    n2.stop("fast");
    let v = c.wait_for(1, "monitoring suspended on n2", Duration::from_secs(20), |v| {
        v["monitoring"].as_str().is_some_and(|m| m.starts_with("suspended"))
    });
    assert_eq!(v["kernel"]["fenced"], true, "an idle node is fenced: {v:#}");
    refused(&c.efm_cmd(1, "resume", &[]), "resume with the database down", "not running");
    n2.start();
    // Back up, but EFM's agent stays idle until told (auto.resume.failure.period=0).
    std::thread::sleep(Duration::from_secs(3));
    let v = c.node_status(1).unwrap();
    assert!(v["monitoring"].as_str().unwrap().starts_with("suspended"), "{v:#}");
    let st = status_json(&c, 0);
    assert_eq!(st["nodes"][ip(&c, 1)]["type"], "Idle", "{st:#}");
    let msg = ok(&c.efm_cmd(1, "resume", &[]), "efm resume");
    assert!(msg.contains("Resumed monitoring") && msg.contains("standby of the primary"), "{msg}");
    c.wait_for(1, "n2 a monitored standby", Duration::from_secs(20), |v| {
        v["monitoring"] == "active"
            && v["kernel"]["fenced"] == false
            && v["outcome"].as_str().is_some_and(|o| o.starts_with("standby"))
    });
    rec.wait_line("root n2 resumed", Duration::from_secs(10));
}

#[test]
fn set_priority_changes_the_promotion_choice() {
    let mut c = Cluster::start(&PSS, "");
    let msg = ok(&c.efm_cmd(2, "set-priority", &[&ip(&c, 1), "0"]), "set-priority n2 0");
    assert!(msg.contains("never promoted"), "{msg}");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let last = status_json(&c, 0);
        if last["nodes"][ip(&c, 1)]["promotion"]["priority"] == 0
            && last["failoverpriority"] == serde_json::json!([ip(&c, 2)])
        {
            break;
        }
        assert!(Instant::now() < until, "cluster-status does not show the priority: {last:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node's own agent restarting does not undo the operator's choice.
    c.restart_agent(1);
    c.wait_healthy(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status_json(&c, 0)["nodes"][ip(&c, 1)]["promotion"]["priority"], 0);
    c.pg[0].as_ref().unwrap().sigkill();
    wait_until("a new serving primary", Duration::from_secs(30), || c.serving_primary().is_some_and(|p| p != 0));
    assert_eq!(c.serving_primary(), Some(2), "n2 has priority 0 and must not be promoted");
}

#[test]
fn disallow_node_keeps_a_node_out_after_its_agent_restarts() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let mut c = Cluster::start_with(&PSS, "", |i| format!("script.notification={r} n{} notify %s\n", i + 1));
    let msg = ok(&c.efm_cmd(0, "disallow-node", &[&ip(&c, 2)]), "disallow-node n3");
    assert!(msg.contains("Removed"), "{msg}");
    // Two members left: EFM's warning, from the agent that removed it.
    rec.wait_containing("n1 notify Cluster acctg has dropped below three nodes", Duration::from_secs(10));
    wait_until("n3 out of the allowed list", Duration::from_secs(10), || {
        !status_json(&c, 0)["allowednodes"].as_array().unwrap().iter().any(|a| *a == ip(&c, 2))
    });
    c.restart_agent(2);
    std::thread::sleep(Duration::from_secs(6));
    let v = c.node_status(2).expect("the restarted agent answers");
    assert_eq!(v["outcome"], "not yet part of the coordination log", "{v:#}");
    assert!(!status_json(&c, 1)["allowednodes"].as_array().unwrap().iter().any(|a| *a == ip(&c, 2)));
    assert_eq!(c.serving_primary(), Some(0), "the primary keeps serving with the two allowed nodes");
    // Allowed again, it rejoins.
    ok(&c.efm_cmd(1, "allow-node", &[&ip(&c, 2)]), "allow-node n3");
    c.wait_for(2, "n3 a member again", Duration::from_secs(30), |v| {
        v["outcome"].as_str().is_some_and(|o| o.starts_with("standby"))
    });
    assert!(status_json(&c, 0)["allowednodes"].as_array().unwrap().iter().any(|a| *a == ip(&c, 2)));
}

#[test]
fn stop_cluster_stops_every_agent_and_leaves_the_databases_serving() {
    let mut c = Cluster::start(&PSS, "");
    let w = c.writer();
    assert!(w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_some());
    // An address allowed by the operator whose agent never starts: it must not count for the
    // quorum (the primary keeps its lease with its two standbys) and stop-cluster forgets it.
    let stranger = "198.18.0.9";
    ok(&c.efm_cmd(0, "allow-node", &[stranger]), "allow-node 198.18.0.9");
    wait_until("198.18.0.9 in the allowed list", Duration::from_secs(10), || {
        status_json(&c, 1)["allowednodes"].as_array().unwrap().iter().any(|a| *a == stranger)
    });
    // Longer than the lease: the primary still serves (four allowed, three joined).
    std::thread::sleep(Duration::from_secs(2));
    let t = monotonic_ns();
    assert!(
        w.wait_ack_from("n1", t, Duration::from_secs(10)).is_some(),
        "the primary serves with an allowed node that never joined"
    );
    assert_eq!(c.serving_primary(), Some(0));
    let msg = ok(&c.efm_cmd(1, "stop-cluster", &[]), "efm stop-cluster");
    assert!(msg.contains("stopping"), "{msg}");
    wait_until("every agent to exit", Duration::from_secs(20), || {
        c.agents.iter_mut().all(efm_tests::cluster::Agent::exited)
    });
    // Longer than the lease: the primary keeps taking writes without its agents.
    std::thread::sleep(Duration::from_secs(3));
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(10)).is_some(), "the primary serves without agents");
    for i in 0..3 {
        assert_eq!(c.pg[i].as_ref().unwrap().psql("SELECT 1").trim(), "1", "database {} still runs", i + 1);
    }
    drop(w);
    // Started again, the cluster comes back (the stop entry in the log is history for them).
    for i in 0..3 {
        c.restart_agent(i);
    }
    c.wait_healthy(Duration::from_mins(1));
    // EFM 3.3: the allowed list was lost with the stop; the members (the .nodes list) remain.
    let allowed: Vec<String> =
        status_json(&c, 2)["allowednodes"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let mut want: Vec<String> = (0..3).map(|i| ip(&c, i)).collect();
    want.sort();
    assert_eq!(allowed, want, "after stop-cluster only the members are allowed");
    // The restarted cluster works: n1 serves through the VIP, and a failover promotes a standby.
    wait_until("n1 serving again", Duration::from_secs(30), || c.serving_primary() == Some(0));
    let w = c.writer();
    let t = monotonic_ns();
    assert!(w.wait_ack_from("n1", t, Duration::from_secs(20)).is_some(), "the restarted primary takes writes");
    let killed = monotonic_ns();
    c.pg[0].as_ref().unwrap().sigkill();
    wait_until("a new serving primary after the restart", Duration::from_secs(30), || {
        c.serving_primary().is_some_and(|p| p != 0)
    });
    let p = c.serving_primary().unwrap();
    let server = first_other_or_dump(&c, &w.log, "n1", killed, Duration::from_secs(30));
    assert_eq!(server, format!("n{}", p + 1), "the client writes to the new primary");
    let acks = w.finish();
    let (last_old, first_new) = no_overlap(&acks, "n1", &server);
    assert!(last_old < first_new);
}

#[test]
fn every_failover_hook_fires_with_its_arguments_as_the_script_user() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "script.user=postgres\n", |i| {
        let n = format!("n{}", i + 1);
        format!(
            "script.fence={r} {n} fence %p %f\nscript.post.promotion={r} {n} post %p %f\n\
             script.remote.pre.promotion={r} {n} remote-pre %p %f\nscript.remote.post.promotion={r} {n} remote-post %p %f\n\
             script.db.failure={r} {n} db-failure\nscript.load.balancer.attach={r} {n} attach %h %t\n\
             script.load.balancer.detach={r} {n} detach %h %t\nscript.notification={r} {n} notify %s\n"
        )
    });
    let (ip1, ip2, ip3) = (ip(&c, 0), ip(&c, 1), ip(&c, 2));
    rec.wait_line(&format!("postgres n1 attach {ip1} p"), Duration::from_secs(10));
    rec.wait_line(&format!("postgres n2 attach {ip2} s"), Duration::from_secs(10));
    rec.wait_line(&format!("postgres n3 attach {ip3} s"), Duration::from_secs(10));
    c.pg[0].as_ref().unwrap().sigkill();
    wait_until("a new serving primary", Duration::from_secs(30), || c.serving_primary().is_some_and(|p| p != 0));
    let p = c.serving_primary().unwrap();
    let other = if p == 1 { 2 } else { 1 };
    let (np, no) = (format!("n{}", p + 1), format!("n{}", other + 1));
    let pip = ip(&c, p);
    let t = Duration::from_secs(15);
    rec.wait_line(&format!("postgres {np} fence {pip} {ip1}"), t);
    rec.wait_line(&format!("postgres {np} post {pip} {ip1}"), t);
    rec.wait_line(&format!("postgres {no} remote-pre {pip} {ip1}"), t);
    rec.wait_line(&format!("postgres {no} remote-post {pip} {ip1}"), t);
    rec.wait_line("postgres n1 db-failure", t);
    rec.wait_line(&format!("postgres n1 detach {ip1} p"), t);
    rec.wait_line(&format!("postgres {np} attach {pip} p"), t);
    rec.wait_containing(&format!("postgres {np} notify Executed fencing script"), t);
    rec.wait_containing("notify Primary database failure for cluster acctg", t);
    // Neither node involved in the promotion ran the remote hooks.
    assert!(
        !rec.lines().iter().any(|l| l.contains(&format!("{np} remote-")) || l.contains("n1 remote-")),
        "{:#?}",
        rec.lines()
    );
}

#[test]
fn a_hanging_post_promotion_script_is_killed_and_the_failover_stands() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "script.post.promotion=/bin/sleep 617\nscript.timeout=2\n", |i| {
        format!("script.notification={r} n{} notify %s\n", i + 1)
    });
    c.pg[0].as_ref().unwrap().sigkill();
    wait_until("a new serving primary", Duration::from_secs(30), || c.serving_primary().is_some_and(|p| p != 0));
    let line = rec.wait_containing("notify Post-promotion script failed", Duration::from_secs(20));
    eprintln!("{line}");
    // Its process group got SIGTERM when the timeout struck (the notification follows at once);
    // give the processes a moment to be gone.
    let mut left = String::new();
    wait_until("the hanging script to be gone", Duration::from_secs(5), || {
        let o = std::process::Command::new("pgrep").args(["-f", "sleep 617"]).output().unwrap();
        left = String::from_utf8_lossy(&o.stdout).into_owned();
        left.is_empty()
    });
    assert!(c.serving_primary().is_some_and(|p| p != 0), "the promotion stands");
}

#[test]
fn a_failing_fence_script_aborts_the_failover() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "script.fence=/bin/false\n", |i| {
        format!("script.notification={r} n{} notify %s\n", i + 1)
    });
    c.pg[0].as_ref().unwrap().sigkill();
    rec.wait_containing("notify Fencing script error", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.serving_primary(), None, "no standby was promoted: the fence script failed");
    for i in [1, 2] {
        assert_eq!(
            c.pg[i].as_ref().unwrap().psql("SELECT pg_is_in_recovery()").trim(),
            "t",
            "n{} is still a standby",
            i + 1
        );
    }
}

#[test]
fn custom_monitor_failure_idles_a_standby_and_safe_mode_only_reports() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let flags = rec.dir().to_owned();
    let check = flags.join("check");
    fs::write(&check, format!("#!/bin/sh\ntest ! -e {}/fail-$1\n", flags.display())).unwrap();
    fs::set_permissions(&check, fs::Permissions::from_mode(0o755)).unwrap();
    let c = Cluster::start_with(&PSS, "custom.monitor.interval=1\ncustom.monitor.timeout=2\n", |i| {
        let n = format!("n{}", i + 1);
        format!(
            "script.custom.monitor={} {n}\ncustom.monitor.safe.mode={}\nscript.notification={r} {n} notify %s\n",
            check.display(),
            i == 2
        )
    });
    fs::write(flags.join("fail-n2"), "").unwrap();
    fs::write(flags.join("fail-n3"), "").unwrap();
    let v = c.wait_for(1, "n2 idle after its custom monitor failed", Duration::from_secs(15), |v| {
        v["monitoring"].as_str().is_some_and(|m| m.contains("custom monitor")) && v["kernel"]["fenced"] == true
    });
    eprintln!("n2: {}", v["monitoring"]);
    rec.wait_containing("n2 notify Standby custom monitor failure for cluster acctg", Duration::from_secs(10));
    rec.wait_containing("n3 notify Custom monitor 'safe mode' failure for cluster acctg", Duration::from_secs(10));
    let v3 = c.node_status(2).unwrap();
    assert_eq!(v3["monitoring"], "active", "safe mode only reports: {v3:#}");
    assert_eq!(v3["kernel"]["fenced"], false);
    refused(&c.efm_cmd(1, "resume", &[]), "resume while the custom monitor fails", "custom monitor");
    fs::remove_file(flags.join("fail-n2")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    ok(&c.efm_cmd(1, "resume", &[]), "resume after the custom monitor recovered");
    c.wait_for(1, "n2 monitored again", Duration::from_secs(15), |v| {
        v["monitoring"] == "active" && v["kernel"]["fenced"] == false
    });
}

#[test]
fn auto_resume_failure_period_resumes_a_restarted_standby_by_itself() {
    let rec = Recorder::new();
    let r = rec.path().display().to_string();
    let c = Cluster::start_with(&PSS, "auto.resume.failure.period=60\n", |i| {
        format!("script.resumed={r} n{} resumed\n", i + 1)
    });
    let n3 = c.pg[2].as_ref().unwrap();
    n3.stop("fast");
    c.wait_for(2, "monitoring suspended on n3", Duration::from_secs(20), |v| {
        v["monitoring"].as_str().is_some_and(|m| m.starts_with("suspended"))
    });
    n3.start();
    c.wait_for(2, "n3 resumed without efm resume", Duration::from_secs(30), |v| {
        v["monitoring"] == "active" && v["kernel"]["fenced"] == false
    });
    rec.wait_line("root n3 resumed", Duration::from_secs(10));
}

/// `efm reset-members` (EFM 5): a member whose agent died keeps counting for the quorum until
/// the operator resets the members; then it no longer counts (nor shows as missing), stays
/// allowed, and joins again by itself when its agent starts.
#[test]
fn reset_members_forgets_a_failed_member_until_its_agent_returns() {
    let mut c = Cluster::start(&PSS, "");
    c.wait_healthy(Duration::from_secs(30));
    let n3 = ip(&c, 2);
    let o = c.efm_cmd(0, "reset-members", &[]);
    assert!(ok(&o, "reset-members with every member heard").contains("nothing to reset"), "{}", text(&o));

    c.agents[2].sigkill();
    wait_until("n3 to be reported missing", Duration::from_secs(30), || {
        status_json(&c, 0)["missingnodes"].as_array().is_some_and(|m| m.iter().any(|a| *a == n3.as_str()))
    });
    let msg = ok(&c.efm_cmd(1, "reset-members", &[]), "reset-members on a standby");
    assert!(msg.contains(&format!("Removed {n3}:7800")) && msg.contains("(quorum 2)"), "{msg}");
    // n1 applies the membership change a moment later.
    wait_until("n1 to stop reporting n3 as missing", Duration::from_secs(10), || {
        status_json(&c, 0)["missingnodes"] == serde_json::json!([])
    });
    let st = status_json(&c, 0);
    assert_eq!(st["nodes"].as_object().map(serde_json::Map::len), Some(2), "{st:#}");
    assert!(
        st["allowednodes"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|x| x.starts_with(&n3)))),
        "n3 stays allowed: {st:#}"
    );
    // The primary keeps serving on the two remaining members.
    assert_eq!(c.serving_primary(), Some(0));

    // Its agent starts again: it is not a member any more and joins by itself.
    c.restart_agent(2);
    wait_until("n3 to be a member again, heard by n1", Duration::from_mins(1), || {
        let st = status_json(&c, 0);
        st["missingnodes"] == serde_json::json!([])
            && st["nodes"].as_object().is_some_and(|n| n.len() == 3 && n.values().all(|v| v["agent"] == "UP"))
    });
    c.wait_healthy(Duration::from_secs(30));
    assert_eq!(c.serving_primary(), Some(0));
}
