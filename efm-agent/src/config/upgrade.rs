//! `efm upgrade-conf CLUSTER --source DIR`: turn an EDB Failover Manager
//! 2.x-5.x file set (`<cluster>.properties`, `<cluster>.nodes`) into efm's.
//!
//! Every property is written under its current name (`master` → `primary`,
//! `virtualIp*` → `virtual.ip*`, `pingServerIp` → `ping.server.ip`, …);
//! values whose format changed are converted (`jdbc.ssl`,
//! `virtualIp.netmask`), `auto.resume.period` is split the way EFM 5 did
//! it, properties only the Java implementation used are dropped, and
//! anything efm cannot use is commented out with the reason next to it.
//! The comment block directly above a kept property stays with it. efm's
//! own properties are appended with their defaults. The result loads
//! without deprecation warnings.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::properties::{self, Conversion, JAVA_ONLY};
use super::value::{self, Value};

/// Marks every comment line this module writes.
const MARK: &str = "# efm upgrade-conf:";

/// EFM's template value for `ping.server.ip`: a public server.
const PUBLIC_PING: &str = "8.8.8.8";

/// Permissions of the written files.
const FILE_MODE: u32 = 0o640;

/// efm's own properties, appended when the source does not set them, with
/// the comment written above each.
const NEW_PROPERTIES: &[(&str, &str)] = &[
    (
        "heartbeat.interval",
        "Interval between heartbeats sent to every other node (e.g. 50ms).",
    ),
    (
        "node.timeout",
        "Silence after which a node is declared failed. efm watches heartbeats\n\
         in the kernel datapath, so sub-second values are normal. Must be longer\n\
         than heartbeat.interval and the same on every node.",
    ),
    (
        "lease.timeout",
        "Lifetime of the primary's lease. A primary that cannot renew it stops\n\
         acting as primary. Same on every node.",
    ),
    (
        "xdp.interface",
        "Interface the XDP program is attached to. Empty: the interface that\n\
         owns bind.address.",
    ),
    (
        "xdp.mode",
        "XDP attach mode: auto, native (driver) or generic (slower, works on\n\
         every interface).",
    ),
    (
        "fence.mode",
        "How a fenced node's traffic is stopped: reset (reset its connections)\n\
         or drop (silently drop its packets). Same on every node.",
    ),
    (
        "fence.exempt.hosts",
        "Addresses that are never fenced, e.g. monitoring or backup hosts\n\
         (comma-separated IPs or CIDR blocks). Same on every node.",
    ),
    (
        "cluster.key.file",
        "File holding the key shared by the agents of this cluster.",
    ),
];

/// One thing `upgrade-conf` did to the source files. Lines are 1-based
/// lines of the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Same value under the current name.
    Renamed {
        from: String,
        to: String,
        line: usize,
    },
    /// New name(s) and a value in a new format (or a split property).
    Converted {
        from: String,
        to: String,
        detail: String,
        line: usize,
    },
    /// Removed from the output, with its comment block.
    Dropped {
        name: String,
        reason: String,
        line: usize,
    },
    /// Kept in the output as a comment, with the reason above it.
    CommentedOut {
        name: String,
        reason: String,
        line: usize,
    },
    /// Kept as written, with advice written above it.
    Kept {
        name: String,
        note: String,
        line: usize,
    },
    /// An efm property the source did not have, appended with its default.
    Added { name: String, default: String },
    /// An entry of the `.nodes` file efm cannot use, commented out.
    NodeDropped {
        entry: String,
        reason: String,
        line: usize,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Renamed { from, to, line } => {
                write!(f, "line {line}: renamed {from} -> {to}")
            }
            Change::Converted {
                from,
                to,
                detail,
                line,
            } => write!(f, "line {line}: converted {from} -> {to} ({detail})"),
            Change::Dropped { name, reason, line } => {
                write!(f, "line {line}: dropped {name} ({reason})")
            }
            Change::CommentedOut { name, reason, line } => {
                write!(f, "line {line}: commented out {name} ({reason})")
            }
            Change::Kept { name, note, line } => write!(f, "line {line}: kept {name} ({note})"),
            Change::Added { name, default } => write!(f, "added {name}={default}"),
            Change::NodeDropped {
                entry,
                reason,
                line,
            } => write!(f, "nodes line {line}: commented out {entry} ({reason})"),
        }
    }
}

/// The converted file set.
#[derive(Debug, Clone)]
pub struct UpgradeResult {
    pub properties_text: String,
    pub nodes_text: String,
    /// In source order; additions last.
    pub changes: Vec<Change>,
}

/// Why the source files could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// Read `<source_dir>/<cluster>.properties` and `<source_dir>/<cluster>.nodes`
/// and convert them.
pub fn upgrade(source_dir: &Path, cluster: &str) -> Result<UpgradeResult, UpgradeError> {
    let read = |name: String| {
        let path = source_dir.join(name);
        fs::read_to_string(&path).map_err(|source| UpgradeError::Read { path, source })
    };
    let properties = read(format!("{cluster}.properties"))?;
    let nodes = read(format!("{cluster}.nodes"))?;
    Ok(upgrade_text(cluster, &properties, &nodes))
}

/// Convert the text of a properties file and a nodes file.
#[must_use]
pub fn upgrade_text(cluster: &str, properties: &str, nodes: &str) -> UpgradeResult {
    let mut u = Upgrader {
        cluster,
        out: Vec::new(),
        pending: Vec::new(),
        claimed: HashMap::new(),
        changes: Vec::new(),
    };
    u.out.extend(
        [
            "# Cluster properties for efm, converted from an EDB Failover Manager",
            "# configuration by `efm upgrade-conf`. Lines it commented out or added",
            "# are explained in comments starting with \"# efm upgrade-conf:\".",
            "",
        ]
        .map(str::to_owned),
    );
    let lines: Vec<&str> = properties.lines().collect();
    // Java's Properties keeps the last of repeated keys; so does EFM.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (idx, raw) in lines.iter().enumerate() {
        if let Some((key, _)) = split(raw) {
            last.insert(key, idx + 1);
        }
    }
    for (idx, raw) in lines.iter().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            u.pending.push(raw.trim_end());
            continue;
        }
        match split(raw) {
            None => u.comment_out(trimmed, trimmed, "not a key=value line".into(), line),
            Some((key, value)) => match last.get(key) {
                Some(&later) if later != line => u.comment_out(
                    key,
                    trimmed,
                    format!("set again on line {later}; EFM used the last value"),
                    line,
                ),
                _ => u.property(key, value, raw.trim_end(), line),
            },
        }
    }
    u.flush(true);
    u.append_new();
    let (nodes_text, mut node_changes) = upgrade_nodes(nodes);
    u.changes.append(&mut node_changes);
    let mut properties_text = u.out.join("\n");
    properties_text.push('\n');
    UpgradeResult {
        properties_text,
        nodes_text,
        changes: u.changes,
    }
}

/// `key=value`, both trimmed; `None` without `=` or with an empty key.
fn split(raw: &str) -> Option<(&str, &str)> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
        return None;
    }
    let (key, value) = trimmed.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()).then_some((key, value.trim()))
}

struct Upgrader<'a> {
    cluster: &'a str,
    out: Vec<String>,
    /// Comment and blank lines since the last property line.
    pending: Vec<&'a str>,
    /// Canonical property → source line that set it.
    claimed: HashMap<&'static str, usize>,
    changes: Vec<Change>,
}

impl Upgrader<'_> {
    /// Emit the pending comment lines. The comments directly above a
    /// property (after the last blank line) describe it, so they are
    /// dropped with it when `keep_tail` is false.
    fn flush(&mut self, keep_tail: bool) {
        let tail_start = self
            .pending
            .iter()
            .rposition(|l| l.trim().is_empty())
            .map_or(0, |i| i + 1);
        let end = if keep_tail {
            self.pending.len()
        } else {
            tail_start
        };
        self.out
            .extend(self.pending[..end].iter().map(|l| (*l).to_owned()));
        self.pending.clear();
    }

    fn note(&mut self, text: &str) {
        for (i, l) in text.lines().enumerate() {
            if i == 0 {
                self.out.push(format!("{MARK} {l}"));
            } else {
                self.out.push(format!("# {l}"));
            }
        }
    }

    fn comment_out(&mut self, name: &str, text: &str, reason: String, line: usize) {
        self.flush(true);
        self.note(&reason);
        self.out.push(format!("#{text}"));
        self.changes.push(Change::CommentedOut {
            name: name.to_owned(),
            reason,
            line,
        });
    }

    fn already_set(&self, targets: &[&'static str]) -> Option<String> {
        targets.iter().find_map(|t| {
            self.claimed
                .get(t)
                .map(|l| format!("{t} is already set on line {l}"))
        })
    }

    fn public_ping(&mut self, key: &str, line: usize) {
        self.flush(true);
        self.note(&format!(
            "{PUBLIC_PING} is EFM's template example. With it,\n\
             every node pings a public server outside your network to decide\n\
             whether it is isolated. If you want that check, set ping.server.ip\n\
             to an address inside your network, such as the default gateway."
        ));
        self.out.push(format!("#ping.server.ip={PUBLIC_PING}"));
        self.changes.push(Change::CommentedOut {
            name: key.to_owned(),
            reason: format!("{PUBLIC_PING} is EFM's public example address"),
            line,
        });
    }

    fn property(&mut self, key: &str, value: &str, raw: &str, line: usize) {
        if let Some(def) = properties::find(key) {
            if let Some(reason) = self.already_set(&[def.name]) {
                self.comment_out(key, raw.trim(), reason, line);
            } else if def.name == "ping.server.ip" && value == PUBLIC_PING {
                self.public_ping(key, line);
            } else {
                self.flush(true);
                if def.name == "node.timeout" {
                    self.advise_node_timeout(value, line);
                }
                self.out.push(raw.to_owned());
                self.claimed.insert(def.name, line);
            }
        } else if let Some(legacy) = properties::legacy(key) {
            self.legacy(key, value, &legacy.targets, legacy.conversion, line);
        } else if JAVA_ONLY.contains(&key) {
            self.flush(false);
            self.changes.push(Change::Dropped {
                name: key.to_owned(),
                reason: "only used by the Java implementation of EFM".into(),
                line,
            });
        } else {
            let hint = properties::suggest(key)
                .map_or_else(String::new, |s| format!("; did you mean {s}?"));
            self.comment_out(
                key,
                raw.trim(),
                format!("efm has no property {key}{hint}"),
                line,
            );
        }
    }

    fn legacy(
        &mut self,
        key: &str,
        value: &str,
        targets: &[&'static str],
        conversion: Conversion,
        line: usize,
    ) {
        let raw = format!("{key}={value}");
        if let Some(reason) = self.already_set(targets) {
            return self.comment_out(key, &raw, reason, line);
        }
        let converted = match (conversion, value.is_empty()) {
            (_, true) | (Conversion::Rename, _) => Ok(value.to_owned()),
            (Conversion::JdbcSsl, false) => match value::validate(value::Kind::Bool, value) {
                Ok(Value::Bool(true)) => Ok("require".to_owned()),
                Ok(_) => Ok("disable".to_owned()),
                Err(e) => Err(e),
            },
            (Conversion::Netmask, false) => value::netmask_to_prefix(value).map(|p| p.to_string()),
        };
        let converted = match converted {
            Ok(v) => v,
            Err(expected) => {
                let reason = format!("cannot convert to {}: {expected}", targets.join(" and "));
                return self.comment_out(key, &raw, reason, line);
            }
        };
        if targets == ["ping.server.ip"] && converted == PUBLIC_PING {
            return self.public_ping(key, line);
        }
        self.flush(true);
        let to = targets.join(" and ");
        if targets.len() > 1 {
            let detail = format!("split by EFM 5; each keeps the value {value:?}");
            self.note(&format!(
                "EFM 5 split {key} into\n{to}; both keep the old value."
            ));
            self.changes.push(Change::Converted {
                from: key.to_owned(),
                to,
                detail,
                line,
            });
        } else if converted == value {
            self.changes.push(Change::Renamed {
                from: key.to_owned(),
                to,
                line,
            });
        } else {
            self.note(&format!("converted from {raw}"));
            self.changes.push(Change::Converted {
                from: key.to_owned(),
                to: targets[0].to_owned(),
                detail: format!("{value} -> {converted}"),
                line,
            });
        }
        for target in targets {
            self.out.push(format!("{target}={converted}"));
            self.claimed.insert(target, line);
        }
    }

    /// EFM counted node.timeout in seconds (50 by default); keep the
    /// operator's value but say what efm would suggest.
    fn advise_node_timeout(&mut self, value: &str, line: usize) {
        if !value::parse_duration(value).is_ok_and(|d| d >= Duration::from_secs(1)) {
            return;
        }
        self.note(
            "EFM counted node.timeout in seconds.\n\
             efm detects a silent node in the kernel from its heartbeats, so a\n\
             sub-second value such as 0.5s (with heartbeat.interval=50ms) is\n\
             usual. The value below is kept as it was; lower it once every node\n\
             runs efm.",
        );
        self.changes.push(Change::Kept {
            name: "node.timeout".into(),
            note: format!("{value} kept; efm suggests a sub-second value such as 0.5s"),
            line,
        });
    }

    fn append_new(&mut self) {
        let mut first = true;
        for (name, comment) in NEW_PROPERTIES {
            let Some(def) = properties::find(name) else {
                continue;
            };
            if self.claimed.contains_key(def.name) {
                continue;
            }
            if first {
                self.out.extend([
                    String::new(),
                    format!("{MARK} properties specific to efm, with their defaults."),
                ]);
                first = false;
            }
            let default = def.default.replace("{cluster}", self.cluster);
            self.out.push(String::new());
            self.out
                .extend(comment.lines().map(|l| format!("# {}", l.trim())));
            self.out.push(format!("{name}={default}"));
            self.changes.push(Change::Added {
                name: (*name).to_owned(),
                default,
            });
        }
    }
}

/// Keep every usable `.nodes` line as written; comment out lines with
/// entries efm cannot use (efm needs literal `ip:port`).
fn upgrade_nodes(text: &str) -> (String, Vec<Change>) {
    let mut out = String::from("# Cluster members for efm, converted by `efm upgrade-conf`.\n");
    let mut changes = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let (content, comment) = raw
            .split_once('#')
            .map_or((raw, None), |(c, rest)| (c, Some(rest)));
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for token in content.split_whitespace() {
            match value::parse_socket_addr(token) {
                Ok(_) => good.push(token),
                Err(expected) => bad.push((token, expected)),
            }
        }
        if bad.is_empty() {
            out.push_str(raw.trim_end());
            out.push('\n');
            continue;
        }
        for (token, expected) in bad {
            let _ = writeln!(out, "{MARK} {token}: {expected}");
            changes.push(Change::NodeDropped {
                entry: token.to_owned(),
                reason: expected,
                line: idx + 1,
            });
        }
        let _ = writeln!(out, "#{}", raw.trim_end());
        if !good.is_empty() {
            out.push_str(&good.join(" "));
            if let Some(c) = comment {
                let _ = write!(out, " #{c}");
            }
            out.push('\n');
        }
    }
    (out, changes)
}

impl UpgradeResult {
    /// One line per change, then a summary: what `efm upgrade-conf` prints.
    #[must_use]
    pub fn render_changes(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let _ = writeln!(out, "{c}");
        }
        let count = |f: fn(&Change) -> bool| self.changes.iter().filter(|c| f(c)).count();
        let _ = writeln!(
            out,
            "{} renamed, {} converted, {} dropped, {} commented out, {} added",
            count(|c| matches!(c, Change::Renamed { .. })),
            count(|c| matches!(c, Change::Converted { .. })),
            count(|c| matches!(c, Change::Dropped { .. })),
            count(|c| matches!(c, Change::CommentedOut { .. } | Change::NodeDropped { .. })),
            count(|c| matches!(c, Change::Added { .. })),
        );
        out
    }

    /// Write `<dir>/<cluster>.properties` and `<dir>/<cluster>.nodes`
    /// (mode 0640), each atomically through a temporary file. Existing
    /// files are replaced only when `overwrite` is set; otherwise nothing
    /// is written if either exists. Returns the written paths.
    pub fn write_to(&self, dir: &Path, cluster: &str, overwrite: bool) -> io::Result<Vec<PathBuf>> {
        let files = [
            (
                dir.join(format!("{cluster}.properties")),
                &self.properties_text,
            ),
            (dir.join(format!("{cluster}.nodes")), &self.nodes_text),
        ];
        if !overwrite {
            if let Some((path, _)) = files.iter().find(|(p, _)| p.symlink_metadata().is_ok()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists; refusing to overwrite it",
                        path.display()
                    ),
                ));
            }
        }
        let mut written = Vec::new();
        for (path, text) in &files {
            if let Err(e) = write_atomic(path, text, overwrite) {
                if !overwrite {
                    // Leave no half-written set behind.
                    for p in &written {
                        let _ = fs::remove_file(p);
                    }
                }
                return Err(e);
            }
            written.push(path.clone());
        }
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(written)
    }
}

fn write_atomic(path: &Path, text: &str, overwrite: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.upgrade-conf.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have removed bits; set the exact mode.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if overwrite {
            fs::rename(&tmp, path)
        } else {
            // A link fails if the target appeared meanwhile: never clobbers.
            fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{} already exists; refusing to overwrite it",
                            path.display()
                        ),
                    )
                } else {
                    e
                }
            })
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
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
        let loaded = load(&dir, "acctg")
            .unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", r.properties_text));
        assert!(
            loaded.warnings.is_empty(),
            "{:?}\n--- output ---\n{}",
            loaded.warnings,
            r.properties_text
        );
        fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    fn has(r: &UpgradeResult, want: &Change) {
        assert!(
            r.changes.contains(want),
            "missing {want:?} in\n{}",
            r.render_changes()
        );
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

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one assertion per converted property"
    )]
    fn efm_33_file() {
        let r = upgrade_text("acctg", EFM33, "10.0.0.1:7800 10.0.0.2:7800\n");
        let out = &r.properties_text;
        for want in [
            Change::Converted {
                from: "jdbc.ssl".into(),
                to: "jdbc.sslmode".into(),
                detail: "false -> disable".into(),
                line: 13,
            },
            Change::Renamed {
                from: "stop.isolated.master".into(),
                to: "stop.isolated.primary".into(),
                line: 27,
            },
            Change::Renamed {
                from: "pingServerCommand".into(),
                to: "ping.server.command".into(),
                line: 30,
            },
            Change::Renamed {
                from: "virtualIp".into(),
                to: "virtual.ip".into(),
                line: 39,
            },
            Change::Renamed {
                from: "virtualIp.interface".into(),
                to: "virtual.ip.interface".into(),
                line: 40,
            },
            Change::Converted {
                from: "virtualIp.netmask".into(),
                to: "virtual.ip.prefix".into(),
                detail: "255.255.255.0 -> 24".into(),
                line: 41,
            },
            Change::Renamed {
                from: "virtualIp.single".into(),
                to: "virtual.ip.single".into(),
                line: 42,
            },
            Change::Renamed {
                from: "script.master.isolated".into(),
                to: "script.primary.isolated".into(),
                line: 44,
            },
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
        assert_eq!(
            r.changes.len(),
            10 + 3 + added.len(),
            "{}",
            r.render_changes()
        );

        // Values and comments.
        assert!(out.contains("\nvirtual.ip=10.0.0.100\n"), "{out}");
        assert!(out.contains("\nvirtual.ip.prefix=24\n"), "{out}");
        assert!(out.contains("\njdbc.sslmode=disable\n"), "{out}");
        assert!(out.contains("\nauto.resume.startup.period=0\nauto.resume.failure.period=0\n"));
        assert!(out.contains("\nnode.timeout=50\n"), "{out}");
        assert!(out.contains("sub-second value such as 0.5s"), "{out}");
        assert!(out.contains("\n#ping.server.ip=8.8.8.8\n"), "{out}");
        assert!(
            !out.lines().any(|l| l.starts_with("ping.server.ip=")),
            "{out}"
        );
        assert!(
            out.contains("\ncluster.key.file=/etc/efm/acctg.key\n"),
            "{out}"
        );
        assert!(out.contains("# The virtual IP address, and its netmask.\nvirtual.ip=10.0.0.100\n"));
        assert!(out
            .contains("# Stop the database on an isolated master.\nstop.isolated.primary=true\n"));
        assert!(out.contains("# 'efm encrypt'.\ndb.user=enterprisedb\n"));
        assert!(out.contains("# Copyright EnterpriseDB"), "{out}");
        // Comments of dropped properties go with them.
        assert!(!out.contains("JGroups"), "{out}");
        assert!(!out.contains("Java virtual machine"), "{out}");
        assert!(!out.contains("jvm.options"), "{out}");
        assert!(!out.contains("jgroups"), "{out}");
        for old in [
            "virtualIp",
            "master",
            "pingServer",
            "jdbc.ssl=",
            "auto.resume.period=",
        ] {
            assert!(
                !out.lines().any(|l| !l.starts_with('#') && l.contains(old)),
                "{old} left in\n{out}"
            );
        }

        let loaded = reload(&r, "efm33");
        let c = loaded.config;
        assert_eq!(c.node_timeout, Duration::from_secs(50));
        assert_eq!(c.virtual_ip_prefix, Some(24));
        assert_eq!(c.ping_server_ip, None);
        assert!(c.stop_isolated_primary);
        assert_eq!(c.nodes.len(), 2);

        let report = r.render_changes();
        assert!(
            report.contains("line 27: renamed stop.isolated.master -> stop.isolated.primary\n"),
            "{report}"
        );
        assert!(
            report.contains("line 51: dropped jvm.options ("),
            "{report}"
        );
        assert!(
            report.contains("line 29: commented out pingServerIp ("),
            "{report}"
        );
        assert!(report.contains("added xdp.mode=auto\n"), "{report}");
        assert!(
            report.ends_with("6 renamed, 3 converted, 2 dropped, 1 commented out, 7 added\n"),
            "{report}"
        );
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
            !r.changes
                .iter()
                .any(|c| matches!(c, Change::Renamed { .. } | Change::Converted { .. })),
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
        assert!(
            out.contains("# Choose an address inside your network.\n"),
            "{out}"
        );
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
        has(
            &r,
            &Change::Added {
                name: "node.timeout".into(),
                default: "0.5s".into(),
            },
        );
        has(
            &r,
            &Change::Renamed {
                from: "pingServerIp".into(),
                to: "ping.server.ip".into(),
                line: 9,
            },
        );
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
                (
                    12,
                    "efm has no property auto.failvoer; did you mean auto.failover?"
                ),
                (13, "not a key=value line"),
            ]
        );
        assert!(r
            .properties_text
            .contains("\n#db.port=5433\ndb.port=5444\n"));
        has(
            &r,
            &Change::NodeDropped {
                entry: "db2:7800".into(),
                reason: "expected ip:port (IPv6 as [addr]:port)".into(),
                line: 1,
            },
        );
        assert!(r
            .nodes_text
            .ends_with("#10.0.0.1:7800 db2:7800 # members\n10.0.0.1:7800 # members\n"));
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
        assert_eq!(
            fs::read_to_string(dir.join("acctg.properties")).unwrap(),
            r.properties_text
        );

        // Only the nodes file exists: still nothing is written.
        fs::remove_file(dir.join("acctg.properties")).unwrap();
        fs::write(dir.join("acctg.nodes"), "keep me\n").unwrap();
        let e = r.write_to(&dir, "acctg", false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("acctg.nodes already exists"), "{e}");
        assert!(!dir.join("acctg.properties").exists());
        assert_eq!(
            fs::read_to_string(dir.join("acctg.nodes")).unwrap(),
            "keep me\n"
        );

        r.write_to(&dir, "acctg", true).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("acctg.nodes")).unwrap(),
            r.nodes_text
        );
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);

        let missing = upgrade(&dir, "sales").unwrap_err();
        assert!(
            missing.to_string().contains("sales.properties"),
            "{missing}"
        );
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
