//! EFM files as written (issue 15), with real agents and `PostgreSQL`: a cluster whose `.nodes`
//! files are EFM 2.0's (each lists only the *other* members) elects a coordinator and serves;
//! `efm cluster-status` says when automatic failover is disabled; `efm prop-check` explains the
//! 2.0 file. Needs root and `PostgreSQL`; run single-threaded
//! (`cargo test -p efm-tests --test compat_e2e -- --test-threads=1`).

use std::{fs, time::Duration};

use efm_tests::cluster::{Cluster, Kind, CLUSTER};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn efm20_nodes_files_elect_a_leader_and_status_says_auto_failover_is_off() {
    // Started together, as the 2.0 guide allows when the addresses are known in advance.
    let c = Cluster::start_nodes_style(
        &[Kind::Primary, Kind::Standby, Kind::Witness],
        "auto.failover=false",
        |_| String::new(),
        true,
    );
    let ips: Vec<String> = (0..3).map(|i| format!("198.18.0.{}", i + 1)).collect();
    for (i, ip) in ips.iter().enumerate() {
        let nodes = fs::read_to_string(c.files[i].config_dir.join(format!("{CLUSTER}.nodes"))).unwrap();
        assert!(!nodes.contains(&format!("{ip}:7800")), "node {i}'s file lists only the others: {nodes}");
    }
    // Every agent reports the same three members and a coordinator.
    let mut coordinators = Vec::new();
    for i in 0..3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let st = loop {
            let st = c.cluster_status_json(i).expect("cluster-status-json");
            let n = st["nodes"].as_object().map_or(0, serde_json::Map::len);
            if n == 3 && st["membershipcoordinator"].as_str().is_some_and(|s| !s.is_empty()) {
                break st;
            }
            assert!(std::time::Instant::now() < deadline, "node {i}: no full membership and coordinator: {st:#}");
            std::thread::sleep(Duration::from_millis(200));
        };
        for ip in &ips {
            assert!(st["nodes"].get(ip).is_some(), "node {i} does not list {ip}: {st:#}");
        }
        assert_eq!(st["efm"]["auto_failover"], false, "{st:#}");
        coordinators.push(st["membershipcoordinator"].as_str().unwrap().to_owned());
    }
    assert!(coordinators.iter().all(|l| *l == coordinators[0]), "one coordinator: {coordinators:?}");
    // The members files were not rewritten: file + this node is already the membership.
    for i in 0..3 {
        let nodes = fs::read_to_string(c.files[i].config_dir.join(format!("{CLUSTER}.nodes"))).unwrap();
        assert!(!nodes.contains("kept in step by efm-agent"), "node {i}'s file was rewritten: {nodes}");
    }

    let out = c.efm(0, &["cluster-status"]);
    let status = text(&out.stdout);
    assert!(status.contains("Promote Status:"), "{status}\n{}", text(&out.stderr));
    let lines: Vec<&str> = status.lines().collect();
    let off =
        lines.iter().position(|l| *l == "\tAutomatic failover is disabled.").unwrap_or_else(|| panic!("{status}"));
    assert!(lines[off - 1].contains("promote"), "under the promote verdict: {status}");

    let out = c.efm(0, &["prop-check"]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("(this node, from bind.address: added, the file lists only the others)"), "{report}");
    assert!(report.contains("read as an EFM 2.0 members file"), "{report}");
}

/// An EFM-encrypted `db.password.encrypted` (the 2.0 guide's example value): the agent refuses
/// to start with the step to take, before asking for any key file.
#[test]
fn agent_start_names_the_step_for_an_efm_encrypted_password() {
    let dir = std::env::temp_dir().join(format!("efm-compat-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("acctg.properties"),
        "db.user=efm\ndb.password.encrypted=835fb18954f198e94fd3d6f4b070350b\ndb.port=5444\n\
         db.database=edb\ndb.service.owner=enterprisedb\ndb.data.dir=/var/lib/edb/data\n\
         bind.address=198.18.0.1:7800\n",
    )
    .unwrap();
    fs::write(dir.join("acctg.nodes"), "198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let out = std::process::Command::new(efm_tests::cluster::bin("efm-agent"))
        .args(["--cluster", "acctg", "--config-dir"])
        .arg(&dir)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--bpffs-dir")
        .arg(dir.join("bpf"))
        .env("EFM_LOG", "error")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("acctg.properties:2: db.password.encrypted: this value was encrypted by EDB Failover Manager"),
        "{err}"
    );
    assert!(err.contains("Run `efm encrypt acctg`") && err.contains("--from-env"), "{err}");
    assert!(!err.contains("efm.key: "), "no key file asked for: {err}");
    assert!(!err.contains("835fb189"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Properties efm reads but does not act on: the agent says so at start, naming each one and
/// why (a warning in its log), as `efm prop-check` does. The agent then stops on the missing
/// cluster key file, after logging them.
#[test]
fn agent_start_warns_about_properties_efm_does_not_act_on() {
    let dir = std::env::temp_dir().join(format!("efm-compat-unsupported-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("acctg.properties"),
        format!(
            "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
             db.data.dir=/var/lib/edb/data\nbind.address=198.18.0.1:7800\nlock.dir={d}/lock\nlog.dir={d}/log\n\
             cluster.key.file={d}/missing.key\nadmin.port=7810\nencrypt.agent.messages=true\n\
             pgpool.enable=true\nstandby.restart.delay=5\n",
            d = dir.display()
        ),
    )
    .unwrap();
    fs::write(dir.join("acctg.nodes"), "198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let out = std::process::Command::new(efm_tests::cluster::bin("efm-agent"))
        .args(["--cluster", "acctg", "--config-dir"])
        .arg(&dir)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--bpffs-dir")
        .arg(dir.join("bpf"))
        .env_remove("EFM_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent stops on the missing key file");
    let log = fs::read_to_string(dir.join("log/acctg.log")).unwrap_or_default();
    for (prop, value, why) in [
        ("admin.port", "7810", "not supported by efm, so setting it has no effect: the efm command talks to the agent over the admin socket"),
        ("encrypt.agent.messages", "true", "not supported by efm, so setting it has no effect: agent messages (UDP heartbeats and the coordination log's TCP frames) are authenticated"),
        ("pgpool.enable", "true", "not supported by efm, so setting it has no effect: efm does not manage Pgpool-II"),
        ("standby.restart.delay", "5", "not implemented yet in efm, so setting it has no effect"),
    ] {
        let want = format!("warning: {prop} = \"{value}\": {why}");
        assert!(
            log.lines().any(|l| l.contains(" WARN ") && l.contains(&want)),
            "no warning {want:?} in the agent's log:\n{log}\nstderr: {}",
            text(&out.stderr)
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}
