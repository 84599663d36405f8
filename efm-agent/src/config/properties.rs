//! The table of every property efm knows, plus the legacy spellings it
//! still accepts.
//!
//! Sources: the EFM 2.0 and 3.3 guides (cluster properties file sections)
//! and the EFM 5.0 release notes (renames). Properties marked
//! `must_match` have to carry the same value on every node of a cluster.

use super::value::Kind;

/// One known property.
#[derive(Debug, Clone, Copy)]
pub struct PropDef {
    pub name: &'static str,
    /// Default as text; empty means "not set". `{cluster}` is replaced by
    /// the cluster name.
    pub default: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    /// Must be identical on every node of the cluster.
    pub must_match: bool,
}

const fn p(name: &'static str, default: &'static str, kind: Kind, description: &'static str) -> PropDef {
    PropDef { name, default, kind, description, must_match: false }
}

const fn m(name: &'static str, default: &'static str, kind: Kind, description: &'static str) -> PropDef {
    PropDef { name, default, kind, description, must_match: true }
}

pub const SSL_MODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];
pub const NOTIFICATION_LEVELS: &[&str] = &["INFO", "WARNING", "SEVERE"];
pub const SMTP_TLS_MODES: &[&str] = &["none", "starttls", "tls"];
pub const XDP_MODES: &[&str] = &["auto", "native", "generic"];
pub const FENCE_MODES: &[&str] = &["drop", "reset"];
pub const SYSLOG_PROTOCOLS: &[&str] = &["UDP", "TCP"];
pub const SYSLOG_FACILITIES: &[&str] =
    &["LOCAL0", "LOCAL1", "LOCAL2", "LOCAL3", "LOCAL4", "LOCAL5", "LOCAL6", "LOCAL7", "USER", "DAEMON"];
pub const LOG_LEVELS: &[&str] =
    &["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FINEST", "FINER", "FINE", "CONFIG", "WARNING", "SEVERE"];

/// Every property, in the order `effective()` lists them.
pub const PROPERTIES: &[PropDef] = &[
    // Database connection and layout.
    p("db.user", "", Kind::Text, "database user the agent connects as"),
    p("db.password.encrypted", "", Kind::Text, "password of db.user, encrypted with `efm encrypt`"),
    p("db.port", "", Kind::Port, "port the local database listens on"),
    p("db.database", "", Kind::Text, "database the agent connects to"),
    p("db.service.owner", "", Kind::Text, "operating-system user owning the database cluster"),
    p("db.service.name", "", Kind::Text, "service name used to start/stop the database"),
    p("db.bin", "", Kind::AbsPath, "directory holding pg_ctl and the other server binaries"),
    p("db.data.dir", "", Kind::AbsPath, "data directory of the database (PostgreSQL 12 and later)"),
    p("db.recovery.conf.dir", "", Kind::AbsPath, "where recovery.conf/trigger files go (before PostgreSQL 12)"),
    p("db.config.dir", "", Kind::AbsPath, "directory holding postgresql.conf when not in the data directory"),
    p("jdbc.sslmode", "disable", Kind::Enum(SSL_MODES), "SSL mode for database connections"),
    p("db.reuse.connection.count", "0", Kind::UInt, "times a database connection is reused for health checks"),
    // Notifications.
    p("user.email", "", Kind::EmailList, "addresses that receive notifications"),
    p("from.email", "efm@%h", Kind::Email, "sender address of notification mails; %h becomes this host's name"),
    p("notification.level", "INFO", Kind::Enum(NOTIFICATION_LEVELS), "lowest severity that is notified"),
    p("notification.text.prefix", "", Kind::Text, "text prepended to every notification"),
    p(
        "script.notification",
        "",
        Kind::Command,
        "script run for each notification: %s subject, %b body (both appended when neither is used)",
    ),
    p(
        "script.notification.timeout",
        "30",
        Kind::Duration,
        "time script.notification may run before its process group is killed",
    ),
    p("smtp.server", "127.0.0.1", Kind::Host, "mail server that notification mails to user.email go through"),
    p("smtp.port", "25", Kind::Port, "port of smtp.server"),
    p(
        "smtp.tls",
        "none",
        Kind::Enum(SMTP_TLS_MODES),
        "encryption to smtp.server: none, starttls (required), or tls from the start",
    ),
    p(
        "smtp.timeout",
        "10",
        Kind::Duration,
        "limit for one mail, connecting included; a dead server never delays the agent",
    ),
    p("smtp.username", "", Kind::Text, "user name to log in to smtp.server with (no login when not set)"),
    p(
        "smtp.password",
        "",
        Kind::Text,
        "password for smtp.username, in clear text: keep the file readable by root and efm only",
    ),
    // Agent network identity.
    p("bind.address", "", Kind::IpPort, "ip:port the agent listens on for other agents"),
    p("external.address", "", Kind::Host, "address other nodes use to reach this one, when behind NAT"),
    p("admin.port", "7809", Kind::Port, "local port for administrative commands"),
    p("is.witness", "false", Kind::Bool, "this node has no database and only votes"),
    // Timing.
    p("local.period", "10", Kind::Duration, "interval between checks of the local database"),
    p("local.timeout", "60", Kind::Duration, "how long the local database may take to answer"),
    p("local.timeout.final", "10", Kind::Duration, "last-attempt timeout for the local database"),
    p("remote.timeout", "10", Kind::Duration, "how long to wait for a remote database or agent to answer"),
    m("node.timeout", "0.5s", Kind::Duration, "silence after which a node is considered failed"),
    m("heartbeat.interval", "50ms", Kind::Duration, "interval between heartbeats to other nodes"),
    m("lease.timeout", "1s", Kind::Duration, "lifetime of the primary's lease"),
    m(
        "agent.absence.timeout",
        "0",
        Kind::Duration,
        "how long the primary's agent may be absent (stopped, failing to start) while its node answers \
         heartbeats and the other agents reach its database, before a failover; 0 = no limit, as EFM",
    ),
    m("raft.heartbeat.interval", "50ms", Kind::Duration, "interval of the coordination log leader's heartbeats"),
    m(
        "raft.election.timeout",
        "150ms",
        Kind::Duration,
        "minimum election timeout of the coordination log (the maximum is twice this)",
    ),
    m("encrypt.agent.messages", "false", Kind::Bool, "encrypt messages between agents"),
    // Failure handling.
    p("stop.isolated.primary", "true", Kind::Bool, "stop the primary database when its agent is isolated"),
    p("stop.failed.primary", "true", Kind::Bool, "try to stop a primary database that stopped answering"),
    p("primary.shutdown.as.failure", "false", Kind::Bool, "treat a clean primary shutdown as a failure"),
    p(
        "update.physical.slots.period",
        "0",
        Kind::Duration,
        "how often a standby copies the primary's physical replication slots (all but its own) into its database and advances them, so that after a failover the other standbys stream through their slots on the new primary; db.user needs REPLICATION (0 = off)",
    ),
    p("ping.server.ip", "", Kind::Ip, "address pinged to tell isolation from a remote failure"),
    p("ping.server.command", "/bin/ping -q -c3 -w5", Kind::Command, "command used to ping ping.server.ip"),
    p("auto.allow.hosts", "false", Kind::Bool, "allow the addresses of the .nodes file automatically"),
    p("stable.nodes.file", "false", Kind::Bool, "never rewrite the .nodes file"),
    m("auto.failover", "true", Kind::Bool, "promote a standby automatically when the primary fails"),
    p("auto.reconfigure", "true", Kind::Bool, "point remaining standbys at the new primary"),
    p("promotable", "true", Kind::Bool, "this node may be promoted"),
    m("use.replay.tiebreaker", "true", Kind::Bool, "prefer the standby with the most replayed WAL"),
    p("standby.restart.delay", "0", Kind::Duration, "delay before restarting a reconfigured standby"),
    p("application.name", "", Kind::Text, "application_name used in primary_conninfo"),
    p("restore.command", "", Kind::Text, "restore_command written when reconfiguring a standby"),
    p(
        "reconfigure.num.sync",
        "false",
        Kind::Bool,
        "on the primary, lower the count of synchronous_standby_names (FIRST/ANY n) to the named standbys still streaming (at least 1) when some fail; restored as they return",
    ),
    p(
        "reconfigure.sync.primary",
        "false",
        Kind::Bool,
        "on the primary, set synchronous_standby_names empty (asynchronous) while none of the named standbys streams; restored as they return",
    ),
    m("minimum.standbys", "0", Kind::UInt, "never promote if fewer standbys would remain"),
    m("priority.standbys", "", Kind::NodeList, "standby addresses in promotion order"),
    p("recovery.check.period", "1", Kind::Duration, "interval between checks that a promoted database left recovery"),
    p("restart.connection.timeout", "60", Kind::Duration, "how long to wait for the database after a restart"),
    p(
        "auto.resume.startup.period",
        "0",
        Kind::Duration,
        "how long to try monitoring a database started after the agent",
    ),
    p(
        "auto.resume.failure.period",
        "0",
        Kind::Duration,
        "how long to try resuming monitoring after a database failure",
    ),
    p("backup.wal", "false", Kind::Bool, "copy local WAL aside before reconfiguring a standby"),
    // Virtual IP.
    m("virtual.ip", "", Kind::Ip, "address that follows the primary"),
    p("virtual.ip.interface", "", Kind::Interface, "interface the virtual address is added to"),
    m("virtual.ip.prefix", "", Kind::Prefix, "prefix length of the virtual address"),
    m("virtual.ip.single", "true", Kind::Bool, "release the virtual address before promoting"),
    m(
        "check.vip.before.promotion",
        "true",
        Kind::Bool,
        "make sure nobody answers on the virtual address before promoting",
    ),
    m(
        "vip.takeover.allowed",
        "false",
        Kind::Bool,
        "promote although another host answers on the virtual address (false: refuse while it does, as EFM)",
    ),
    // Load balancers.
    p("pgpool.enable", "false", Kind::Bool, "manage a Pgpool-II load balancer"),
    p("pcp.user", "", Kind::Text, "Pgpool PCP user"),
    p("pcp.host", "", Kind::Host, "Pgpool PCP host"),
    p("pcp.port", "9898", Kind::Port, "Pgpool PCP port"),
    p("pcp.pass.file", "", Kind::AbsPath, "Pgpool PCP password file"),
    p("pgpool.bin", "", Kind::AbsPath, "directory holding the Pgpool binaries"),
    p("script.load.balancer.attach", "", Kind::Command, "script attaching a node to the load balancer (%h, %t)"),
    p("script.load.balancer.detach", "", Kind::Command, "script detaching a node from the load balancer (%h, %t)"),
    p("detach.on.agent.failure", "false", Kind::Bool, "detach a node when only its agent failed"),
    // Scripts.
    p("script.fence", "", Kind::Command, "script run to fence the old primary (%p, %f)"),
    p("script.post.promotion", "", Kind::Command, "script run after a promotion (%p, %f)"),
    p("script.resumed", "", Kind::Command, "script run when monitoring resumes"),
    p("script.db.failure", "", Kind::Command, "script run when the local database fails"),
    p("script.primary.isolated", "", Kind::Command, "script run on a primary that is isolated"),
    p("script.remote.pre.promotion", "", Kind::Command, "script run on other nodes before a promotion (%p)"),
    p("script.remote.post.promotion", "", Kind::Command, "script run on other nodes after a promotion (%p)"),
    p("script.custom.monitor", "", Kind::Command, "custom health-check script"),
    p("custom.monitor.interval", "0", Kind::Duration, "interval between custom monitor runs"),
    p("custom.monitor.timeout", "0", Kind::Duration, "time allowed for one custom monitor run"),
    p("custom.monitor.safe.mode", "false", Kind::Bool, "only log custom monitor failures"),
    p("script.user", "", Kind::Text, "OS user the script hooks run as (empty: the agent's user)"),
    p("script.timeout", "60", Kind::Duration, "time a script hook may run before it is killed and reported"),
    // Privileges, files and logging.
    p("sudo.command", "sudo", Kind::Text, "prefix for commands needing extra privileges"),
    p("sudo.user.command", "sudo -u %u", Kind::Text, "prefix for commands run as the database owner"),
    p("lock.dir", "/var/lock/efm", Kind::AbsPath, "directory of the agent lock file"),
    p("log.dir", "/var/log/efm", Kind::AbsPath, "directory of the agent logs"),
    p("syslog.host", "localhost", Kind::Host, "syslog server"),
    p("syslog.port", "514", Kind::Port, "syslog server port"),
    p("syslog.protocol", "UDP", Kind::Enum(SYSLOG_PROTOCOLS), "syslog transport"),
    p("syslog.facility", "LOCAL1", Kind::Enum(SYSLOG_FACILITIES), "syslog facility"),
    p("file.log.enabled", "true", Kind::Bool, "write logs to log.dir"),
    p("syslog.enabled", "false", Kind::Bool, "send logs to syslog"),
    p("efm.loglevel", "INFO", Kind::Enum(LOG_LEVELS), "agent log level"),
    p("kill.parent.process", "false", Kind::Bool, "stop the parent process when the agent exits"),
    // efm's own datapath and fencing.
    p("xdp.interface", "", Kind::Interface, "interface for the XDP program (empty: the one owning bind.address)"),
    p("xdp.mode", "auto", Kind::Enum(XDP_MODES), "XDP attach mode"),
    m("fence.mode", "reset", Kind::Enum(FENCE_MODES), "how a fenced node's traffic is stopped"),
    m(
        "fence.exempt.hosts",
        "",
        Kind::CidrList,
        "more addresses never fenced (comma-separated IPs or CIDRs); the cluster's own nodes \
         (replication) always pass",
    ),
    // Health endpoint for load balancers and monitoring.
    p(
        "health.listen.address",
        "",
        Kind::IpPort,
        "ip:port of the HTTP health endpoint (/primary, /replica, /health, /metrics) for load \
         balancers and Prometheus, e.g. 0.0.0.0:8008 (empty: no listener)",
    ),
    p(
        "health.replica.max.lag.bytes",
        "0",
        Kind::UInt,
        "/replica answers 503 when this standby's WAL position is more than this many bytes \
         behind the primary's last heartbeat (0: no lag check)",
    ),
    p("cluster.key.file", "/etc/efm/{cluster}.key", Kind::AbsPath, "file holding the cluster's shared key"),
];

/// Look a canonical property up by name.
#[must_use]
pub fn find(name: &str) -> Option<&'static PropDef> {
    PROPERTIES.iter().find(|d| d.name == name)
}

/// How a legacy value is turned into the canonical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Same value, new name.
    Rename,
    /// `jdbc.ssl=true|false` → `jdbc.sslmode=require|disable`.
    JdbcSsl,
    /// Dotted netmask → prefix length.
    Netmask,
}

/// A legacy spelling of one or more canonical properties.
#[derive(Debug, Clone)]
pub struct Legacy {
    pub targets: Vec<&'static str>,
    pub conversion: Conversion,
}

/// Explicit renames. Anything containing `master` is handled generically
/// by [`legacy`] (EFM 5 renamed master to primary).
const RENAMES: &[(&str, &str, Conversion)] = &[
    ("jdbc.ssl", "jdbc.sslmode", Conversion::JdbcSsl),
    ("virtualIp", "virtual.ip", Conversion::Rename),
    ("virtualIp.interface", "virtual.ip.interface", Conversion::Rename),
    ("virtualIp.prefix", "virtual.ip.prefix", Conversion::Rename),
    ("virtualIp.single", "virtual.ip.single", Conversion::Rename),
    ("virtualIp.netmask", "virtual.ip.prefix", Conversion::Netmask),
    ("pingServerIp", "ping.server.ip", Conversion::Rename),
    ("pingServer", "ping.server.ip", Conversion::Rename),
    ("pingServerCommand", "ping.server.command", Conversion::Rename),
];

/// Why a known property has no effect in efm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// efm does not do what the property configures, by design; the reason says what it does
    /// instead.
    NotInEfm,
    /// EFM behaviour efm has not implemented yet.
    NotYet,
}

/// A property efm reads (it parses and validates it) but does not act on. Setting it is
/// reported — a warning naming the property and the reason, or a note when the value set asks
/// for what efm does anyway — by `efm prop-check` and by the agent at start, and the template
/// says so next to it (commented out). The config test `unsupported_properties_are_not_read`
/// fails when one of these is read by the agent, or a property nobody reads is missing here.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported {
    pub name: &'static str,
    pub support: Support,
    /// Values under which efm already behaves as the property asks (compared as validated
    /// values: `FALSE` = `false`, `0s` = `0`).
    pub inert: &'static [&'static str],
    /// What efm does instead, one sentence without a final period.
    pub reason: &'static str,
}

const fn not_in_efm(name: &'static str, inert: &'static [&'static str], reason: &'static str) -> Unsupported {
    Unsupported { name, support: Support::NotInEfm, inert, reason }
}

const fn not_yet(name: &'static str, inert: &'static [&'static str], reason: &'static str) -> Unsupported {
    Unsupported { name, support: Support::NotYet, inert, reason }
}

/// Every property efm reads but does not act on, with the reason.
pub const UNSUPPORTED: &[Unsupported] = &[
    not_in_efm(
        "admin.port",
        &[],
        "the efm command talks to the agent over the admin socket <run-dir>/<cluster>.sock (root and \
         the efm group), not over a TCP port",
    ),
    not_in_efm(
        "encrypt.agent.messages",
        &["false"],
        "agent messages (UDP heartbeats and the coordination log's TCP frames) are authenticated and \
         replay-checked with the cluster key (SipHash-2-4 MAC keyed by cluster.key.file) but never \
         encrypted; they carry roles, epochs, WAL positions and membership, no passwords; use a \
         private network or an encrypted tunnel (WireGuard, IPsec) if they must not be read",
    ),
    not_in_efm(
        "kill.parent.process",
        &["false"],
        "efm-agent never signals its parent process; run it under systemd (efm-agent@<cluster>.service), \
         which sees the agent exit",
    ),
    not_in_efm(
        "restore.command",
        &[],
        "efm never writes restore_command: a standby that follows a new primary keeps its own \
         configuration and only primary_conninfo's host and port change; set restore_command in the \
         standby's postgresql.conf",
    ),
    not_in_efm(
        "recovery.check.period",
        &[],
        "efm promotes with pg_promote(wait => true), which returns once the database has left \
         recovery, so there is nothing to poll",
    ),
    not_in_efm(
        "pgpool.enable",
        &["false"],
        "efm does not manage Pgpool-II; attach and detach nodes with script.load.balancer.attach and \
         script.load.balancer.detach, or point load balancers at the health endpoint \
         (health.listen.address)",
    ),
    not_in_efm("pcp.user", &[], "used only with pgpool.enable, which efm does not support"),
    not_in_efm("pcp.host", &[], "used only with pgpool.enable, which efm does not support"),
    not_in_efm("pcp.port", &[], "used only with pgpool.enable, which efm does not support"),
    not_in_efm("pcp.pass.file", &[], "used only with pgpool.enable, which efm does not support"),
    not_in_efm("pgpool.bin", &[], "used only with pgpool.enable, which efm does not support"),
    not_in_efm(
        "backup.wal",
        &["false"],
        "efm never removes a standby's WAL when it follows a new primary (only primary_conninfo's host and port \
         change, with a reload), so there is nothing to copy aside",
    ),
    not_yet(
        "standby.restart.delay",
        &["0"],
        "a standby that follows a new primary applies its new primary_conninfo at once (a reload, or \
         a restart where its PostgreSQL version needs one), without this delay",
    ),
    not_yet(
        "primary.shutdown.as.failure",
        &[],
        "efm reads it and does nothing with it: how the cluster treats a primary whose agent stopped \
         does not depend on it",
    ),
    not_yet(
        "use.replay.tiebreaker",
        &[],
        "efm always promotes the standby with the furthest WAL position (the later of received and \
         replayed) and uses the priority only between standbys at the same position",
    ),
    not_yet(
        "virtual.ip.single",
        &["true"],
        "there is one virtual IP (virtual.ip, virtual.ip.prefix: the same on every node) that follows \
         the primary; per-node addresses are not supported",
    ),
];

/// The entry of [`UNSUPPORTED`] for `name`, if efm does not act on it.
#[must_use]
pub fn unsupported(name: &str) -> Option<&'static Unsupported> {
    UNSUPPORTED.iter().find(|u| u.name == name)
}

/// Properties of the Java implementation that efm accepts and ignores.
pub const JAVA_ONLY: &[&str] =
    &["jvm.options", "jgroups.loglevel", "jgroups.max.tries", "jgroups.timeout", "efm.license"];

/// If `key` is a legacy spelling, what it stands for.
#[must_use]
pub fn legacy(key: &str) -> Option<Legacy> {
    if key == "auto.resume.period" {
        // EFM 5 split this into two properties; the old value applied to both.
        return Some(Legacy {
            targets: vec!["auto.resume.startup.period", "auto.resume.failure.period"],
            conversion: Conversion::Rename,
        });
    }
    if let Some((_, new, conversion)) = RENAMES.iter().find(|(old, _, _)| *old == key) {
        return Some(Legacy { targets: vec![new], conversion: *conversion });
    }
    if key.contains("master") {
        if let Some(def) = find(&key.replace("master", "primary")) {
            return Some(Legacy { targets: vec![def.name], conversion: Conversion::Rename });
        }
    }
    None
}

/// The known name closest to `key`, if it is close enough to be a likely typo.
#[must_use]
pub fn suggest(key: &str) -> Option<&'static str> {
    let candidates = PROPERTIES
        .iter()
        .map(|d| (d.name, d.name))
        .chain(RENAMES.iter().map(|(old, new, _)| (*old, *new)))
        .chain(std::iter::once(("auto.resume.period", "auto.resume.startup.period")));
    let lower = key.to_ascii_lowercase();
    let (dist, name) = candidates
        .map(|(spelling, canonical)| (edit_distance(&lower, &spelling.to_ascii_lowercase()), canonical))
        .min_by_key(|(d, _)| *d)?;
    let limit = (key.chars().count() / 3).max(2);
    (dist <= limit).then_some(name)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn table_has_no_duplicates_and_defaults_validate() {
        for (i, d) in PROPERTIES.iter().enumerate() {
            assert!(PROPERTIES[..i].iter().all(|o| o.name != d.name), "duplicate {}", d.name);
            if !d.default.is_empty() {
                let v = d.default.replace("{cluster}", "c");
                assert!(super::super::value::validate(d.kind, &v).is_ok(), "bad default for {}", d.name);
            }
        }
    }

    #[test]
    fn unsupported_entries_are_known_and_their_inert_values_valid() {
        for (i, u) in UNSUPPORTED.iter().enumerate() {
            assert!(UNSUPPORTED[..i].iter().all(|o| o.name != u.name), "duplicate {}", u.name);
            let def = find(u.name).unwrap_or_else(|| panic!("{} is not a property", u.name));
            for v in u.inert {
                assert!(super::super::value::validate(def.kind, v).is_ok(), "bad inert value {v} for {}", u.name);
            }
        }
    }

    #[test]
    fn legacy_targets_exist() {
        for (_, new, _) in RENAMES {
            assert!(find(new).is_some(), "{new}");
        }
        for old in [
            "stop.isolated.master",
            "stop.failed.master",
            "script.master.isolated",
            "master.shutdown.as.failure",
            "reconfigure.sync.master",
        ] {
            assert!(legacy(old).is_some(), "{old}");
        }
    }
}
