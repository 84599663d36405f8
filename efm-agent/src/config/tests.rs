//! Table tests for the configuration loader.

use std::path::Path;
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/efm/acctg.properties";

/// The smallest valid file.
const BASE: &str = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
db.data.dir=/var/lib/edb/data\nbind.address=10.0.0.1:7800\n";

fn load_text(text: &str) -> Result<Loaded, ConfigErrors> {
    from_properties(text, Path::new(FILE), "acctg", Vec::new())
}

fn with(extra: &str) -> Result<Loaded, ConfigErrors> {
    load_text(&format!("{BASE}{extra}\n"))
}

fn ok(extra: &str) -> Loaded {
    with(extra).unwrap_or_else(|e| panic!("{extra:?} failed:\n{e}"))
}

fn err(extra: &str) -> String {
    match with(extra) {
        Ok(_) => panic!("{extra:?} unexpectedly loaded"),
        Err(e) => e.to_string(),
    }
}

fn effective(c: &Config, name: &str) -> String {
    c.effective().into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap()
}

#[test]
fn defaults_when_absent() {
    let l = ok("");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = l.config;
    assert_eq!(c.db_port, 5444);
    assert_eq!(c.jdbc_sslmode, SslMode::Disable);
    assert_eq!(c.notification_level, NotificationLevel::Info);
    assert_eq!(c.admin_port, 7809);
    assert!(!c.is_witness);
    assert_eq!(c.local_period, Duration::from_secs(10));
    assert_eq!(c.local_timeout.as_secs(), 60);
    assert_eq!(c.remote_timeout, Duration::from_secs(10));
    assert_eq!(c.node_timeout, Duration::from_millis(500));
    assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
    assert_eq!(c.lease_timeout, Duration::from_secs(1));
    assert!(c.stop_isolated_primary && c.auto_failover && c.auto_reconfigure && c.promotable);
    assert_eq!(c.ping_server_ip, None);
    assert_eq!(c.ping_server_command, "/bin/ping -q -c3 -w5");
    assert!(
        c.check_vip_before_promotion && !c.vip_takeover_allowed,
        "EFM refuses a promotion while the VIP answers elsewhere"
    );
    assert_eq!(c.virtual_ip, None);
    assert!(c.virtual_ip_single);
    assert_eq!(c.xdp_interface, None);
    assert_eq!(c.xdp_mode, XdpMode::Auto);
    assert_eq!(c.fence_mode, FenceMode::Reset);
    assert!(c.fence_exempt_hosts.is_empty());
    assert_eq!(c.health_listen_address, None, "the health endpoint is off by default");
    assert_eq!(c.health_replica_max_lag_bytes, 0);
    assert_eq!(c.cluster_key_file, Path::new("/etc/efm/acctg.key"));
    assert_eq!(c.syslog_protocol, SyslogProtocol::Udp);
    assert_eq!(c.syslog_facility, "LOCAL1");
    assert_eq!(c.sudo_user_command, "sudo -u %u");
    assert_eq!(c.effective().len(), properties::PROPERTIES.len());
    assert_eq!(effective(&c, "cluster.key.file"), "/etc/efm/acctg.key");
    assert_eq!(effective(&c, "virtual.ip"), "");
}

#[test]
fn valid_values_of_every_kind() {
    let c = ok("auto.failover=FALSE\nadmin.port=7810\nminimum.standbys=2\nlocal.period=3\n\
jdbc.sslmode=verify-full\nping.server.ip=10.0.0.254\nexternal.address=db1.example.com\n\
script.fence=/usr/local/bin/fence %p %f\nuser.email=a@x.org, b@y.org c@z.org\nfrom.email=efm@%h\n\
virtual.ip=10.0.0.100\nvirtual.ip.prefix=24\nvirtual.ip.interface=eth0\npriority.standbys=10.0.0.2,10.0.0.3:7800\n\
fence.exempt.hosts=10.0.0.9, 192.168.0.0/16,fd00::/8\nxdp.mode=native\nfence.mode=drop\nnotification.level=severe\n\
syslog.protocol=tcp\nefm.loglevel=WARN\nlog.dir=/var/log/efm-5")
    .config;
    assert!(!c.auto_failover);
    assert_eq!(c.admin_port, 7810);
    assert_eq!(c.minimum_standbys, 2);
    assert_eq!(c.local_period, Duration::from_secs(3));
    assert_eq!(c.jdbc_sslmode, SslMode::VerifyFull);
    assert_eq!(c.ping_server_ip, Some("10.0.0.254".parse().unwrap()));
    assert_eq!(c.external_address.as_deref(), Some("db1.example.com"));
    assert_eq!(c.script_fence.as_deref(), Some("/usr/local/bin/fence %p %f"));
    assert_eq!(c.user_email, ["a@x.org", "b@y.org", "c@z.org"]);
    assert_eq!(c.virtual_ip_prefix, Some(24));
    assert_eq!(c.priority_standbys.len(), 2);
    assert_eq!(c.fence_exempt_hosts.len(), 3);
    assert!(c.fence_exempt_hosts[1].contains("192.168.4.5".parse().unwrap()));
    assert!(!c.fence_exempt_hosts[0].contains("10.0.0.10".parse().unwrap()));
    assert_eq!(c.xdp_mode, XdpMode::Native);
    assert_eq!(c.fence_mode, FenceMode::Drop);
    assert_eq!(c.notification_level, NotificationLevel::Severe);
    assert_eq!(c.syslog_protocol, SyslogProtocol::Tcp);
    assert_eq!(c.efm_loglevel, "WARN");
    assert_eq!(c.log_dir, Path::new("/var/log/efm-5"));
}

#[test]
fn bad_values_name_file_line_property_value_and_expectation() {
    let cases = [
        ("auto.failover=yes", "auto.failover = \"yes\": expected true or false"),
        ("vip.takeover.allowed=maybe", "vip.takeover.allowed = \"maybe\": expected true or false"),
        ("admin.port=abc", "admin.port = \"abc\": expected a port number 1-65535"),
        ("admin.port=0", "expected a port number 1-65535"),
        ("admin.port=70000", "expected a port number 1-65535"),
        ("minimum.standbys=-1", "minimum.standbys = \"-1\": expected a non-negative integer"),
        ("local.period=10 minutes", "expected a duration"),
        ("local.period=-1", "expected a duration"),
        ("xdp.mode=turbo", "xdp.mode = \"turbo\": expected one of auto, native, generic"),
        ("fence.mode=kill", "expected one of drop, reset"),
        ("jdbc.sslmode=on", "expected one of disable"),
        ("ping.server.ip=not-an-ip", "ping.server.ip = \"not-an-ip\": expected an IP address"),
        ("external.address=bad host!", "expected a host name or IP address"),
        ("log.dir=var/log", "log.dir = \"var/log\": expected an absolute path"),
        ("script.fence=fence.sh", "expected a command starting with an absolute path"),
        ("user.email=a@x.org,nobody", "\"nobody\" is not one"),
        ("from.email=efm", "expected an e-mail address"),
        ("virtual.ip=10.0.0.100\nvirtual.ip.prefix=200", "expected a prefix length 0-128"),
        ("virtual.ip=10.0.0.100\nvirtual.ip.prefix=33", "0-32 for an IPv4"),
        ("virtual.ip=10.0.0.100", "virtual.ip.prefix: required when virtual.ip is set"),
        ("virtual.ip.interface=averyveryverylonginterface", "expected a network interface name"),
        ("priority.standbys=db2", "\"db2\" is not one"),
        ("fence.exempt.hosts=10.0.0.0/33", "expected IP addresses or CIDR blocks"),
        ("node.timeout=10ms", "longer than heartbeat.interval"),
        ("agent.absence.timeout=10 minutes", "agent.absence.timeout = \"10 minutes\": expected a duration"),
        ("agent.absence.timeout=forever", "agent.absence.timeout = \"forever\": expected a duration"),
        ("health.listen.address=0.0.0.0", "health.listen.address = \"0.0.0.0\": expected ip:port"),
        ("health.listen.address=[::]:0", "expected ip:port with a port number 1-65535"),
        ("health.listen.address=localhost:8008", "expected ip:port"),
        (
            "health.replica.max.lag.bytes=16MB",
            "health.replica.max.lag.bytes = \"16MB\": expected a non-negative integer",
        ),
    ];
    for (extra, expected) in cases {
        let msg = err(extra);
        assert!(msg.contains(expected), "{extra:?}: {msg:?} lacks {expected:?}");
        assert!(msg.starts_with(FILE), "{msg}");
    }
    // The line number is that of the offending line (BASE has 6 lines).
    assert_eq!(err("admin.port=abc"), format!("{FILE}:7: admin.port = \"abc\": expected a port number 1-65535"));
    let bad_bind = load_text(&BASE.replace("10.0.0.1:7800", "10.0.0.1")).unwrap_err().to_string();
    assert!(bad_bind.contains("bind.address = \"10.0.0.1\": expected ip:port"), "{bad_bind}");
}

#[test]
fn health_endpoint_properties_parse() {
    let c = ok("health.listen.address=198.18.0.1:8008\nhealth.replica.max.lag.bytes=1048576").config;
    assert_eq!(c.health_listen_address, Some("198.18.0.1:8008".parse().unwrap()));
    assert_eq!(c.health_replica_max_lag_bytes, 1_048_576);
    let c = ok("health.listen.address=[::]:8008").config;
    assert_eq!(c.health_listen_address, Some("[::]:8008".parse().unwrap()));
}

#[test]
fn all_errors_are_collected() {
    let e = with("admin.port=abc\nauto.failover=maybe").unwrap_err();
    assert_eq!(e.0.len(), 2);
    assert!(e.0.iter().all(|d| d.severity == Severity::Error));
}

#[test]
fn agent_absence_timeout_defaults_to_no_limit() {
    assert_eq!(ok("").config.primary_agent_absence_timeout, Duration::ZERO, "as EFM: no limit");
    assert_eq!(ok("agent.absence.timeout=300").config.primary_agent_absence_timeout, Duration::from_mins(5));
    assert_eq!(ok("agent.absence.timeout=90s").config.primary_agent_absence_timeout, Duration::from_secs(90));
}

#[test]
fn durations() {
    for (raw, want) in [
        ("500ms", Duration::from_millis(500)),
        ("0.5", Duration::from_millis(500)),
        ("0.5s", Duration::from_millis(500)),
        ("2", Duration::from_secs(2)),
        ("1.25s", Duration::from_millis(1250)),
        ("0.1ms", Duration::from_micros(100)),
    ] {
        assert_eq!(value::parse_duration(raw), Ok(want), "{raw}");
        let c = ok(&format!("lease.timeout={raw}")).config;
        assert_eq!(c.lease_timeout, want);
    }
    for bad in ["", "s", "ms", ".5", "1.", "1m", "abc", "1.0000000001"] {
        assert!(value::parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(value::format_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(value::format_duration(Duration::from_secs(2)), "2s");
}

#[test]
fn netmask_conversion() {
    assert_eq!(value::netmask_to_prefix("255.255.255.0"), Ok(24));
    assert_eq!(value::netmask_to_prefix("255.255.240.0"), Ok(20));
    assert_eq!(value::netmask_to_prefix("0.0.0.0"), Ok(0));
    assert_eq!(value::netmask_to_prefix("255.255.255.255"), Ok(32));
    assert!(value::netmask_to_prefix("255.0.255.0").unwrap_err().contains("contiguous"));
    let l = ok("virtualIp=10.0.0.100\nvirtualIp.netmask=255.255.252.0");
    assert_eq!(l.config.virtual_ip_prefix, Some(22));
    let msg = err("virtualIp=10.0.0.100\nvirtualIp.netmask=255.0.255.0");
    assert!(msg.contains("virtualIp.netmask = \"255.0.255.0\": expected a contiguous netmask"), "{msg}");
}

#[test]
fn legacy_names_land_in_new_fields_with_deprecation_warning() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("stop.isolated.master=false", "stop.isolated.primary", |c| !c.stop_isolated_primary),
        ("stop.failed.master=false", "stop.failed.primary", |c| !c.stop_failed_primary),
        ("master.shutdown.as.failure=true", "primary.shutdown.as.failure", |c| c.primary_shutdown_as_failure),
        ("reconfigure.sync.master=true", "reconfigure.sync.primary", |c| c.reconfigure_sync_primary),
        ("script.master.isolated=/bin/iso", "script.primary.isolated", |c| {
            c.script_primary_isolated.as_deref() == Some("/bin/iso")
        }),
        ("auto.resume.period=30", "auto.resume.startup.period and auto.resume.failure.period", |c| {
            c.auto_resume_startup_period == Duration::from_secs(30)
                && c.auto_resume_failure_period == Duration::from_secs(30)
        }),
        ("jdbc.ssl=true", "jdbc.sslmode", |c| c.jdbc_sslmode == SslMode::Require),
        ("jdbc.ssl=FALSE", "jdbc.sslmode", |c| c.jdbc_sslmode == SslMode::Disable),
        ("virtualIp=10.0.0.100\nvirtual.ip.prefix=24", "virtual.ip", |c| c.virtual_ip.is_some()),
        ("virtual.ip=10.0.0.100\nvirtualIp.prefix=24", "virtual.ip.prefix", |c| c.virtual_ip_prefix == Some(24)),
        ("virtualIp.interface=eth0", "virtual.ip.interface", |c| c.virtual_ip_interface.as_deref() == Some("eth0")),
        ("virtualIp.single=false", "virtual.ip.single", |c| !c.virtual_ip_single),
        ("virtual.ip=10.0.0.100\nvirtualIp.netmask=255.255.255.0", "virtual.ip.prefix", |c| {
            c.virtual_ip_prefix == Some(24)
        }),
        ("pingServerIp=10.0.0.254", "ping.server.ip", |c| c.ping_server_ip.is_some()),
        ("pingServer=10.0.0.254", "ping.server.ip", |c| c.ping_server_ip.is_some()),
        ("pingServerCommand=/bin/ping -c1", "ping.server.command", |c| c.ping_server_command == "/bin/ping -c1"),
    ];
    for (extra, new_name, check) in cases {
        let l = ok(extra);
        assert!(check(&l.config), "{extra}: value did not land");
        let deprecations: Vec<_> = l.warnings.iter().filter(|w| w.message.contains("deprecated")).collect();
        assert_eq!(deprecations.len(), 1, "{extra}: {:?}", l.warnings);
        let text = deprecations[0].to_string();
        assert!(text.contains(&format!("use {new_name} instead")), "{text}");
        assert!(text.contains(": warning: "), "{text}");
    }
    let msg = err("jdbc.ssl=yes");
    assert!(msg.contains("jdbc.ssl = \"yes\": expected true or false"), "{msg}");
}

#[test]
fn legacy_and_new_name_together_is_an_error() {
    let msg = err("stop.isolated.master=true\nstop.isolated.primary=false");
    assert!(
        msg.contains("set twice: as stop.isolated.master on line 7 and as stop.isolated.primary on line 8"),
        "{msg}"
    );
}

#[test]
fn java_only_properties_are_ignored_with_notice() {
    let l = ok("jvm.options=-Xmx32m\njgroups.loglevel=INFO\nefm.license=abc");
    assert_eq!(l.warnings.len(), 3);
    assert!(l.warnings.iter().all(|w| w.severity == Severity::Notice && w.message.contains("ignored")));
}

#[test]
fn duplicate_key_names_both_lines() {
    let msg = err("db.port=5445");
    assert_eq!(
        msg,
        format!("{FILE}:7: db.port: set twice, on lines 2 and 7 (EFM would use the last; efm asks you to keep one)")
    );
}

#[test]
fn empty_key_is_an_error() {
    assert!(err("=x").contains("missing property name"), "{}", err("=x"));
    assert!(err(": x").contains("missing property name"));
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let c = ok("# comment\n\n   # indented comment\nsudo.command=/usr/bin/doas  \t\nscript.fence= /bin/f \"quoted\" ")
        .config;
    assert_eq!(c.sudo_command, "/usr/bin/doas");
    assert_eq!(c.script_fence.as_deref(), Some("/bin/f \"quoted\""));
    // Keys are case-sensitive.
    let l = ok("Auto.Failover=false");
    assert!(l.config.auto_failover);
    assert!(l.warnings[0].message.contains("did you mean auto.failover?"));
}

#[test]
fn unknown_key_suggests_closest_name() {
    let l = ok("auto.failovr=true\nremote.timout=5\ncompletely.unrelated.thing=1");
    assert_eq!(l.warnings.len(), 3);
    assert!(l.warnings[0].to_string().contains("auto.failovr: unknown property, ignored; did you mean auto.failover?"));
    assert!(l.warnings[1].message.contains("did you mean remote.timeout?"));
    assert!(!l.warnings[2].message.contains("did you mean"));
    let l = ok("virtualip=10.0.0.1");
    assert!(l.warnings[0].message.contains("did you mean virtual.ip?"), "{:?}", l.warnings);
}

#[test]
fn missing_required_properties() {
    let e = load_text("").unwrap_err();
    let text = e.to_string();
    for name in ["db.user", "db.port", "db.database", "bind.address", "db.service.owner", "db.data.dir"] {
        assert!(text.contains(&format!("{FILE}: {name}: required property is not set")), "{name}: {text}");
    }
    // A witness needs no database layout.
    let witness = "db.user=efm\ndb.port=5444\ndb.database=edb\nbind.address=10.0.0.3:7800\nis.witness=true\n";
    assert!(load_text(witness).unwrap().config.is_witness);
    // db.recovery.conf.dir satisfies the data-directory requirement (EFM 3.x).
    let old = BASE.replace("db.data.dir", "db.recovery.conf.dir");
    assert!(load_text(&old).is_ok());
    // An empty value counts as unset.
    let msg = load_text(&BASE.replace("db.user=efm", "db.user=")).unwrap_err().to_string();
    assert!(msg.contains("db.user = \"\": required property is not set"), "{msg}");
}

#[test]
fn public_ping_address_warns() {
    for extra in ["ping.server.ip=8.8.8.8", "pingServerIp=8.8.8.8"] {
        let l = ok(extra);
        let w = l.warnings.iter().find(|w| w.message.contains("public")).expect("warning");
        assert_eq!(w.severity, Severity::Warning);
        assert_eq!(w.line, Some(7));
    }
}

#[test]
fn nodes_file() {
    let f = Path::new("/etc/efm/acctg.nodes");
    let nodes = parse_nodes("# nodes\n10.0.0.1:7800 10.0.0.2:7800\n[fd00::3]:7800 # v6\n\n10.0.0.1:7800\n", f).unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[2], "[fd00::3]:7800".parse().unwrap());
    // A table resolver: db3 is not in it, and no name server is asked.
    let e = parse_nodes_with(
        "10.0.0.1:7800\n10.0.0.2\nfd00::3:7800 db3:7800 10.0.0.4:0\n",
        f,
        &value::TableResolver::default(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.len(), 4);
    assert_eq!(
        e[0].to_string(),
        "/etc/efm/acctg.nodes:2: bad node entry \"10.0.0.2\": expected ip:port (IPv6 as [addr]:port)"
    );
    assert!(e[1].message.contains("[addr]:port"));
    assert_eq!(e[2].line, Some(3));
    assert!(e[2].message.contains("host name \"db3\" does not resolve"), "{}", e[2]);
    assert!(e[3].message.contains("1-65535"));
    assert!(parse_nodes("", f).unwrap().is_empty());
}

#[test]
fn load_reads_both_files() {
    let dir = std::env::temp_dir().join(format!("efm-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = load(&dir, "nothere").unwrap_err();
    assert_eq!(missing.0.len(), 2);
    std::fs::write(dir.join("acctg.properties"), BASE).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "10.0.0.1:7800 10.0.0.2:7800\n").unwrap();
    let l = load(&dir, "acctg").unwrap();
    assert_eq!(l.config.nodes.len(), 2);
    assert_eq!(l.config.cluster, "acctg");
    std::fs::write(dir.join("acctg.nodes"), "bogus\n").unwrap();
    let e = load(&dir, "acctg").unwrap_err();
    assert!(e.to_string().contains("acctg.nodes:1: bad node entry"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A realistic EFM 3.3 properties file using the names documented in the
/// 3.3 guide: it loads, with only deprecation warnings and notices.
#[test]
fn efm_33_style_file_loads() {
    let text = "\
# EFM 3.3 cluster properties
db.user=enterprisedb
db.password.encrypted=efm1:516b36fb8031da17cfbc010f:7d09359c
db.port=5444
db.database=edb
db.service.owner=enterprisedb
db.service.name=
db.bin=/usr/edb/as11/bin
db.recovery.conf.dir=/var/lib/edb/as11/data
jdbc.sslmode=disable
user.email=dba@example.com
notification.level=INFO
script.notification=
bind.address=10.0.0.1:7800
admin.port=7809
is.witness=false
local.period=10
local.timeout=60
local.timeout.final=10
remote.timeout=10
node.timeout=50
stop.isolated.master=true
pingServerIp=10.0.0.254
pingServerCommand=/bin/ping -q -c3 -w5
auto.allow.hosts=false
stable.nodes.file=false
db.reuse.connection.count=0
auto.failover=true
auto.reconfigure=true
promotable=true
minimum.standbys=0
recovery.check.period=2
auto.resume.period=0
virtualIp=10.0.0.100
virtualIp.interface=eth0
virtualIp.prefix=24
virtualIp.single=true
check.vip.before.promotion=true
script.load.balancer.attach=
script.load.balancer.detach=
script.fence=
script.post.promotion=
script.resumed=
script.db.failure=
script.master.isolated=
script.remote.pre.promotion=
script.remote.post.promotion=
script.custom.monitor=
custom.monitor.interval=
custom.monitor.timeout=
custom.monitor.safe.mode=
sudo.command=sudo
sudo.user.command=sudo -u %u
lock.dir=
log.dir=
syslog.host=localhost
syslog.port=514
syslog.protocol=UDP
syslog.facility=LOCAL1
file.log.enabled=true
syslog.enabled=false
jgroups.loglevel=INFO
efm.loglevel=INFO
jvm.options=-Xmx32m
";
    let l = load_text(text).unwrap_or_else(|e| panic!("{e}"));
    for w in &l.warnings {
        assert!(
            w.severity == Severity::Notice
                || w.message.contains("deprecated")
                || w.message.starts_with("not supported by efm, so setting it has no effect"),
            "unexpected warning: {w}"
        );
    }
    // 9 deprecated names, admin.port (efm has the admin socket instead) and
    // recovery.check.period (pg_promote waits).
    assert_eq!(l.warnings.iter().filter(|w| w.severity == Severity::Warning).count(), 11);
    let c = l.config;
    assert_eq!(c.node_timeout, Duration::from_secs(50));
    assert_eq!(c.virtual_ip_prefix, Some(24));
    assert_eq!(c.virtual_ip_interface.as_deref(), Some("eth0"));
    assert_eq!(c.recovery_check_period, Duration::from_secs(2));
    assert_eq!(c.lock_dir, Path::new("/var/lock/efm"));
    assert_eq!(c.script_primary_isolated, None);
}

/// The EFM 2.0 guide's names (jdbc.ssl, virtualIp.netmask, pingServerIp).
#[test]
fn efm_20_style_file_loads() {
    let text = "db.user=efm\ndb.password.encrypted=efm1:7c801b32a05c0c5cb2ad4ffb:da5e8f9a\ndb.port=5444\n\
db.database=acctg_db\ndb.service.owner=enterprisedb\ndb.recovery.conf.dir=/opt/PostgresPlus/9.4AS/data\n\
db.bin=/opt/PostgresPlus/9.4AS/bin\njdbc.ssl=false\nuser.email=user_name@address.com\n\
bind.address=192.168.2.54:5444\nadmin.port=\nis.witness=false\nlocal.period=10\nlocal.timeout=60\n\
local.timeout.final=10\nremote.timeout=10\njgroups.max.tries=8\njgroups.timeout=5000\n\
virtualIp=192.168.2.200\nvirtualIp.interface=eth0:0\nvirtualIp.netmask=255.255.255.0\n\
pingServerIp=10.0.0.254\npingServerCommand=/bin/ping -q -c3 -w5\nauto.failover=true\nauto.reconfigure=true\n\
db.reuse.connection.count=0\nscript.fence=\nscript.post.promotion=\nscript.db.failure=\n\
jgroups.loglevel=INFO\nefm.loglevel=INFO\nefm.license=\n";
    let l = load_text(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.warnings.iter().all(|w| w.severity == Severity::Notice || w.message.contains("deprecated")));
    assert_eq!(l.config.virtual_ip_prefix, Some(24));
    assert_eq!(l.config.jdbc_sslmode, SslMode::Disable);
    // The 2.0 alias form: the VIP goes on eth0 with the label eth0:0.
    assert_eq!(l.config.virtual_ip_interface.as_deref(), Some("eth0"));
    assert_eq!(l.config.virtual_ip_label.as_deref(), Some("eth0:0"));
}

#[test]
fn invalid_required_value_is_one_error_not_two() {
    let text = BASE.replace("db.port=5444", "db.port=abc");
    let e = load_text(&text).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.to_string().contains("db.port = \"abc\": expected a port number"), "{e}");
}
