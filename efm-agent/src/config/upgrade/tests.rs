use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::config::{load, Loaded};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("efm-upgrade-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write the result and load it back; it must load with no warnings
/// or notices at all.
fn reload(r: &UpgradeResult, tag: &str) -> Loaded {
    let dir = temp_dir(tag);
    r.write_to(&dir, "acctg", false).unwrap();
    let loaded = load(&dir, "acctg").unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", r.properties_text));
    // The one remark left is prop-check's about a second-scale node.timeout, which
    // upgrade-conf keeps as written (with its own advice above it).
    let remarks: Vec<_> = loaded
        .warnings
        .iter()
        .filter(|w| !(w.severity == crate::config::Severity::Notice && w.property.as_deref() == Some("node.timeout")))
        .collect();
    assert!(remarks.is_empty(), "{:?}\n--- output ---\n{}", remarks, r.properties_text);
    fs::remove_dir_all(&dir).unwrap();
    loaded
}

fn has(r: &UpgradeResult, want: &Change) {
    assert!(r.changes.contains(want), "missing {want:?} in\n{}", r.render_changes());
}

const EFM33: &str = "\
# Copyright EnterpriseDB Corporation. All rights reserved.

# The value for the password property should be the output from
# 'efm encrypt'.
db.user=enterprisedb
db.password.encrypted=516b36fb8031da17cfbc010f7d09359c
db.port=5444
db.database=edb
db.service.owner=enterprisedb
db.service.name=
db.bin=/usr/edb/as11/bin
db.recovery.conf.dir=/var/lib/edb/as11/data
jdbc.ssl=false
user.email=dba@example.com
bind.address=10.0.0.1:7800
admin.port=7809
is.witness=false
local.period=10
local.timeout=60
local.timeout.final=10
remote.timeout=10
# The total amount of time in seconds to wait before determining that a
# node has failed or been disconnected from this node.
node.timeout=50

# Stop the database on an isolated master.
stop.isolated.master=true
# A reliable server to ping when deciding whether this node is isolated.
pingServerIp=8.8.8.8
pingServerCommand=/bin/ping -q -c3 -w5
auto.allow.hosts=false
auto.failover=true
auto.reconfigure=true
promotable=true
minimum.standbys=0
auto.resume.period=0

# The virtual IP address, and its netmask.
virtualIp=10.0.0.100
virtualIp.interface=eth0
virtualIp.netmask=255.255.255.0
virtualIp.single=true
script.fence=
script.master.isolated=
lock.dir=
log.dir=
# Logging levels for JGroups and EFM.
jgroups.loglevel=INFO
efm.loglevel=INFO
# Extra options for the Java virtual machine.
jvm.options=-Xmx32m
";

fn efm33() -> UpgradeResult {
    upgrade_text("acctg", EFM33, "10.0.0.1:7800 10.0.0.2:7800\n")
}

#[test]
fn efm_33_file_changes() {
    let r = efm33();
    for want in [
        Change::Converted {
            from: "jdbc.ssl".into(),
            to: "jdbc.sslmode".into(),
            detail: "false -> disable".into(),
            line: 13,
        },
        Change::Renamed { from: "stop.isolated.master".into(), to: "stop.isolated.primary".into(), line: 27 },
        Change::Renamed { from: "pingServerCommand".into(), to: "ping.server.command".into(), line: 30 },
        Change::Renamed { from: "virtualIp".into(), to: "virtual.ip".into(), line: 39 },
        Change::Renamed { from: "virtualIp.interface".into(), to: "virtual.ip.interface".into(), line: 40 },
        Change::Converted {
            from: "virtualIp.netmask".into(),
            to: "virtual.ip.prefix".into(),
            detail: "255.255.255.0 -> 24".into(),
            line: 41,
        },
        // Read but not acted on by efm: commented out with the reason (it would only warn).
        Change::CommentedOut {
            name: "virtualIp.single".into(),
            reason: super::unsupported_reason("virtual.ip.single", "true").unwrap(),
            line: 42,
        },
        Change::Renamed { from: "script.master.isolated".into(), to: "script.primary.isolated".into(), line: 44 },
        Change::Dropped {
            name: "jgroups.loglevel".into(),
            reason: "only used by the Java implementation of EFM".into(),
            line: 48,
        },
        Change::Dropped {
            name: "jvm.options".into(),
            reason: "only used by the Java implementation of EFM".into(),
            line: 51,
        },
    ] {
        has(&r, &want);
    }
    assert!(r.changes.iter().any(|c| matches!(c,
        Change::CommentedOut { name, line: 29, .. } if name == "pingServerIp")));
    assert!(r.changes.iter().any(|c| matches!(c,
        Change::Converted { from, to, line: 36, .. }
            if from == "auto.resume.period"
                && to == "auto.resume.startup.period and auto.resume.failure.period")));
    assert!(r.changes.iter().any(|c| matches!(c,
        Change::Kept { name, line: 24, .. } if name == "node.timeout")));
    // node.timeout is absent from the additions: the source sets it.
    let added: Vec<_> = r
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Added { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        [
            "heartbeat.interval",
            "lease.timeout",
            "xdp.interface",
            "xdp.mode",
            "fence.mode",
            "fence.exempt.hosts",
            "cluster.key.file"
        ]
    );
    // The EFM-encrypted db.password.encrypted is commented out with the step to take.
    assert!(r.changes.iter().any(|c| matches!(c,
        Change::CommentedOut { name, reason, line: 6 }
            if name == "db.password.encrypted" && reason.contains("run `efm encrypt acctg`") || reason.contains("Run `efm encrypt acctg`"))),
        "{}", r.render_changes());
    // admin.port commented out as not supported by efm.
    assert!(r.changes.iter().any(|c| matches!(c, Change::CommentedOut { name, .. } if name == "admin.port")));
    assert_eq!(r.changes.len(), 12 + 3 + added.len(), "{}", r.render_changes());
}

#[test]
fn efm_33_file_values_and_comments() {
    let r = efm33();
    let out = &r.properties_text;
    // Values and comments.
    assert!(out.contains("\nvirtual.ip=10.0.0.100\n"), "{out}");
    assert!(out.contains("\nvirtual.ip.prefix=24\n"), "{out}");
    assert!(out.contains("\njdbc.sslmode=disable\n"), "{out}");
    assert!(out.contains("\nauto.resume.startup.period=0\nauto.resume.failure.period=0\n"));
    assert!(out.contains("\nnode.timeout=50\n"), "{out}");
    assert!(out.contains("sub-second value such as 0.5s"), "{out}");
    assert!(out.contains("\n#ping.server.ip=8.8.8.8\n"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("ping.server.ip=")), "{out}");
    assert!(out.contains("\ncluster.key.file=/etc/efm/acctg.key\n"), "{out}");
    assert!(out.contains("# The virtual IP address, and its netmask.\nvirtual.ip=10.0.0.100\n"));
    assert!(out.contains("# Stop the database on an isolated master.\nstop.isolated.primary=true\n"));
    assert!(out.contains("# 'efm encrypt'.\ndb.user=enterprisedb\n"));
    assert!(out.contains("# Copyright EnterpriseDB"), "{out}");
    // Comments of dropped properties go with them.
    assert!(!out.contains("JGroups"), "{out}");
    assert!(!out.contains("Java virtual machine"), "{out}");
    assert!(!out.contains("jvm.options"), "{out}");
    assert!(!out.contains("jgroups"), "{out}");
    for old in ["virtualIp", "master", "pingServer", "jdbc.ssl=", "auto.resume.period="] {
        assert!(!out.lines().any(|l| !l.starts_with('#') && l.contains(old)), "{old} left in\n{out}");
    }
}

#[test]
fn efm_33_file_loads_and_reports() {
    let r = efm33();
    let loaded = reload(&r, "efm33");
    let c = loaded.config;
    assert_eq!(c.node_timeout, Duration::from_secs(50));
    assert_eq!(c.virtual_ip_prefix, Some(24));
    assert_eq!(c.ping_server_ip, None);
    assert!(c.stop_isolated_primary);
    assert_eq!(c.nodes.len(), 2);

    let report = r.render_changes();
    assert!(report.contains("line 27: renamed stop.isolated.master -> stop.isolated.primary\n"), "{report}");
    assert!(report.contains("line 51: dropped jvm.options ("), "{report}");
    assert!(report.contains("line 29: commented out pingServerIp ("), "{report}");
    assert!(report.contains("added xdp.mode=auto\n"), "{report}");
    assert!(report.contains("line 16: commented out admin.port (admin.port is not supported by efm"), "{report}");
    assert!(report.ends_with("5 renamed, 3 converted, 2 dropped, 4 commented out, 7 added\n"), "{report}");
}

const EFM5: &str = "\
db.user=enterprisedb
db.password.encrypted=516b36fb8031da17cfbc010f7d09359c
db.port=5444
db.database=edb
db.service.owner=enterprisedb
db.bin=/usr/edb/as15/bin
db.data.dir=/var/lib/edb/as15/data
jdbc.sslmode=require
user.email=
bind.address=10.0.0.1:7800
node.timeout=50
stop.isolated.primary=true
stop.failed.primary=true
primary.shutdown.as.failure=false
# Choose an address inside your network.
ping.server.ip=8.8.8.8
ping.server.command=/bin/ping -q -c3 -w5
auto.resume.startup.period=0
auto.resume.failure.period=0
virtual.ip=10.0.0.100
virtual.ip.interface=eth0
virtual.ip.prefix=24
virtual.ip.single=true
check.vip.before.promotion=true
reconfigure.sync.primary=false
script.primary.isolated=
backup.wal=false
enable.stop.cluster=true
jgroups.loglevel=INFO
efm.loglevel=INFO
";

#[test]
fn efm_5_file() {
    let r = upgrade_text("acctg", EFM5, "10.0.0.1:7800\n");
    let out = &r.properties_text;
    assert!(
        !r.changes.iter().any(|c| matches!(c, Change::Renamed { .. } | Change::Converted { .. })),
        "{}",
        r.render_changes()
    );
    has(
        &r,
        &Change::Dropped {
            name: "jgroups.loglevel".into(),
            reason: "only used by the Java implementation of EFM".into(),
            line: 29,
        },
    );
    has(
        &r,
        &Change::CommentedOut {
            name: "enable.stop.cluster".into(),
            reason: "efm has no property enable.stop.cluster".into(),
            line: 28,
        },
    );
    assert!(r.changes.iter().any(|c| matches!(c,
        Change::CommentedOut { name, line: 16, .. } if name == "ping.server.ip")));
    assert!(out.contains("# Choose an address inside your network.\n"), "{out}");
    assert!(out.contains("\n#ping.server.ip=8.8.8.8\n"), "{out}");
    assert!(out.contains("\n#enable.stop.cluster=true\n"), "{out}");
    let c = reload(&r, "efm5").config;
    assert_eq!(c.ping_server_ip, None);
    assert_eq!(c.node_timeout, Duration::from_secs(50));
}

#[test]
fn efm_2_file_adds_node_timeout() {
    let text = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
                db.recovery.conf.dir=/opt/data\nbind.address=10.0.0.1:7800\njdbc.ssl=true\n\
                jgroups.max.tries=8\npingServerIp=10.0.0.254\n";
    let r = upgrade_text("acctg", text, "");
    has(&r, &Change::Added { name: "node.timeout".into(), default: "0.5s".into() });
    has(&r, &Change::Renamed { from: "pingServerIp".into(), to: "ping.server.ip".into(), line: 9 });
    assert!(r.properties_text.contains("\nping.server.ip=10.0.0.254\n"));
    assert!(!r.changes.iter().any(|c| matches!(c, Change::Kept { .. })));
    let c = reload(&r, "efm2").config;
    assert_eq!(c.jdbc_sslmode, crate::config::SslMode::Require);
    assert_eq!(c.node_timeout, Duration::from_millis(500));
}

#[test]
fn conflicts_repeats_and_bad_values_are_commented_out() {
    let text = "db.user=efm\ndb.port=5433\ndb.port=5444\ndb.database=edb\n\
                db.service.owner=enterprisedb\ndb.data.dir=/var/lib/pg\nbind.address=10.0.0.1:7800\n\
                virtual.ip=10.0.0.100\nvirtualIp.prefix=24\nvirtualIp.netmask=255.255.255.0\n\
                jdbc.ssl=yes\nauto.failvoer=true\nthis line has no equals sign\n";
    let r = upgrade_text("acctg", text, "10.0.0.1:7800 db2:7800 # members\n");
    let commented: Vec<(usize, &str)> = r
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::CommentedOut { line, reason, .. } => Some((*line, reason.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        commented,
        [
            (2, "set again on line 3; EFM used the last value"),
            (10, "virtual.ip.prefix is already set on line 9"),
            (11, "cannot convert to jdbc.sslmode: expected true or false"),
            (12, "efm has no property auto.failvoer; did you mean auto.failover?"),
            // Java properties syntax: "this" is the key, the rest its value.
            (13, "efm has no property this"),
        ]
    );
    assert!(r.properties_text.contains("\n#db.port=5433\ndb.port=5444\n"));
    // Host names are kept (efm resolves them at start); a bad port is not.
    assert!(!r.changes.iter().any(|c| matches!(c, Change::NodeDropped { entry, .. } if entry == "db2:7800")));
    let r = upgrade_text("acctg", text, "10.0.0.1:7800 db2:0 # members\n");
    has(
        &r,
        &Change::NodeDropped {
            entry: "db2:0".into(),
            reason: "expected ip:port (IPv6 as [addr]:port)".into(),
            line: 1,
        },
    );
    assert!(r.nodes_text.ends_with("#10.0.0.1:7800 db2:0 # members\n10.0.0.1:7800 # members\n"));
    let c = reload(&r, "conflicts").config;
    assert_eq!(c.db_port, 5444);
    assert_eq!(c.virtual_ip_prefix, Some(24));
    assert_eq!(c.nodes.len(), 1);
}

#[test]
fn write_to_refuses_to_overwrite() {
    let src = temp_dir("src");
    fs::write(src.join("acctg.properties"), EFM33).unwrap();
    fs::write(src.join("acctg.nodes"), "10.0.0.1:7800\n").unwrap();
    let r = upgrade(&src, "acctg").unwrap();
    let dir = temp_dir("dst");
    let written = r.write_to(&dir, "acctg", false).unwrap();
    assert_eq!(written.len(), 2);
    for p in &written {
        let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", p.display());
    }
    assert_eq!(fs::read_to_string(dir.join("acctg.properties")).unwrap(), r.properties_text);

    // Only the nodes file exists: still nothing is written.
    fs::remove_file(dir.join("acctg.properties")).unwrap();
    fs::write(dir.join("acctg.nodes"), "keep me\n").unwrap();
    let e = r.write_to(&dir, "acctg", false).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("acctg.nodes already exists"), "{e}");
    assert!(!dir.join("acctg.properties").exists());
    assert_eq!(fs::read_to_string(dir.join("acctg.nodes")).unwrap(), "keep me\n");

    r.write_to(&dir, "acctg", true).unwrap();
    assert_eq!(fs::read_to_string(dir.join("acctg.nodes")).unwrap(), r.nodes_text);
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

    let missing = upgrade(&dir, "sales").unwrap_err();
    assert!(missing.to_string().contains("sales.properties"), "{missing}");
    fs::remove_dir_all(&src).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}
