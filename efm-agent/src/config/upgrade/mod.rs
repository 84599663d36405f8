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
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parse::{logical_lines, Logical, Separator};
use super::properties::{self, Conversion, JAVA_ONLY};
use super::value::{self, Value};
use crate::files::{self, Existing, WriteOptions};

/// Marks every comment line this module writes.
const MARK: &str = "# efm upgrade-conf:";

/// EFM's template value for `ping.server.ip`: a public server.
const PUBLIC_PING: &str = "8.8.8.8";

/// Permissions of the written files.
const FILE_MODE: u32 = 0o640;

/// efm's own properties, appended when the source does not set them, with
/// the comment written above each.
const NEW_PROPERTIES: &[(&str, &str)] = &[
    ("heartbeat.interval", "Interval between heartbeats sent to every other node (e.g. 50ms)."),
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
    ("cluster.key.file", "File holding the key shared by the agents of this cluster."),
];

/// Why a property efm reads but does not act on ([`properties::UNSUPPORTED`]) is commented out,
/// when `value` sets it (an empty value sets nothing and stays).
fn unsupported_reason(name: &str, value: &str) -> Option<String> {
    let u = properties::unsupported(name)?;
    if value.trim().is_empty() {
        return None;
    }
    let what = match u.support {
        properties::Support::NotInEfm => "not supported by efm",
        properties::Support::NotYet => "not implemented yet in efm",
    };
    Some(format!("{name} is {what}, so it would have no effect:\n{}", u.reason))
}

/// One thing `upgrade-conf` did to the source files. Lines are 1-based
/// lines of the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Same value under the current name.
    Renamed { from: String, to: String, line: usize },
    /// New name(s) and a value in a new format (or a split property).
    Converted { from: String, to: String, detail: String, line: usize },
    /// Removed from the output, with its comment block.
    Dropped { name: String, reason: String, line: usize },
    /// Kept in the output as a comment, with the reason above it.
    CommentedOut { name: String, reason: String, line: usize },
    /// Kept as written, with advice written above it.
    Kept { name: String, note: String, line: usize },
    /// An efm property the source did not have, appended with its default.
    Added { name: String, default: String },
    /// An entry of the `.nodes` file efm cannot use, commented out.
    NodeDropped { entry: String, reason: String, line: usize },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Renamed { from, to, line } => {
                write!(f, "line {line}: renamed {from} -> {to}")
            }
            Change::Converted { from, to, detail, line } => {
                write!(f, "line {line}: converted {from} -> {to} ({detail})")
            }
            Change::Dropped { name, reason, line } => {
                write!(f, "line {line}: dropped {name} ({reason})")
            }
            Change::CommentedOut { name, reason, line } => {
                write!(f, "line {line}: commented out {name} ({reason})")
            }
            Change::Kept { name, note, line } => write!(f, "line {line}: kept {name} ({note})"),
            Change::Added { name, default } => write!(f, "added {name}={default}"),
            Change::NodeDropped { entry, reason, line } => {
                write!(f, "nodes line {line}: commented out {entry} ({reason})")
            }
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
        jgroups: (None, None),
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
    let items = logical_lines(properties);
    // Java's Properties keeps the last of repeated keys; so does EFM.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for item in &items {
        if let Logical::Property { first, key, .. } = item {
            last.insert(key.as_str(), *first);
        }
    }
    u.jgroups = jgroups_values(&items);
    for item in &items {
        match item {
            Logical::Blank(l) | Logical::Comment(l) => u.pending.push(lines[l - 1].trim_end()),
            Logical::Property { first, last: end, key, value, separator, problems } => {
                let line = *first;
                let written = lines[first - 1..*end].iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n");
                if let Some((_, problem)) = problems.iter().find(|(s, _)| *s == super::Severity::Error) {
                    u.comment_out(key, &written, problem.clone(), line);
                    continue;
                }
                if key.is_empty() {
                    u.comment_out(&written, &written, "no property name before the separator".into(), line);
                    continue;
                }
                match last.get(key.as_str()) {
                    Some(&later) if later != line => u.comment_out(
                        key,
                        &written,
                        format!("set again on line {later}; EFM used the last value"),
                        line,
                    ),
                    _ => {
                        // Plain `key=value` lines are kept as written; other Java syntax
                        // (`key: value`, `key value`, continuations, escapes) is written out
                        // as key=value.
                        let plain = first == end
                            && *separator == Separator::Equals
                            && problems.is_empty()
                            && !written.contains('\\');
                        let out = if plain {
                            lines[first - 1].trim_end().to_owned()
                        } else {
                            format!("{}={}", escape_key(key), escape_value(value))
                        };
                        if !plain && properties::find(key).is_some() {
                            u.changes.push(Change::Converted {
                                from: key.clone(),
                                to: key.clone(),
                                detail: "Java properties syntax written as key=value".into(),
                                line,
                            });
                        }
                        u.property(key, value, &out, line);
                    }
                }
            }
        }
    }
    u.flush(true);
    u.append_new();
    let (nodes_text, mut node_changes) = upgrade_nodes(nodes);
    u.changes.append(&mut node_changes);
    let mut properties_text = u.out.join("\n");
    properties_text.push('\n');
    UpgradeResult { properties_text, nodes_text, changes: u.changes }
}

/// The EFM 2.0 `JGroups` timing (`jgroups.timeout` ms, `jgroups.max.tries`), when set.
fn jgroups_values(items: &[Logical]) -> (Option<u64>, Option<u64>) {
    let get = |name: &str| {
        items.iter().find_map(|i| match i {
            Logical::Property { key, value, .. } if key == name => value.parse::<u64>().ok().filter(|n| *n > 0),
            _ => None,
        })
    };
    (get("jgroups.timeout"), get("jgroups.max.tries"))
}

/// A key as a properties file writes it.
fn escape_key(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if matches!(c, '=' | ':' | ' ' | '#' | '!' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A value as a properties file writes it (backslashes doubled, line breaks escaped, a leading
/// blank escaped).
fn escape_value(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' if i == 0 => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

struct Upgrader<'a> {
    cluster: &'a str,
    out: Vec<String>,
    /// Comment and blank lines since the last property line.
    pending: Vec<&'a str>,
    /// Canonical property → source line that set it.
    claimed: HashMap<&'static str, usize>,
    changes: Vec<Change>,
    /// `jgroups.timeout` (ms) and `jgroups.max.tries` of the source, for the mapping note.
    jgroups: (Option<u64>, Option<u64>),
}

impl Upgrader<'_> {
    /// Emit the pending comment lines. The comments directly above a
    /// property (after the last blank line) describe it, so they are
    /// dropped with it when `keep_tail` is false.
    fn flush(&mut self, keep_tail: bool) {
        let tail_start = self.pending.iter().rposition(|l| l.trim().is_empty()).map_or(0, |i| i + 1);
        let end = if keep_tail { self.pending.len() } else { tail_start };
        self.out.extend(self.pending[..end].iter().map(|l| (*l).to_owned()));
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
        for l in text.lines() {
            self.out.push(format!("#{l}"));
        }
        self.changes.push(Change::CommentedOut { name: name.to_owned(), reason, line });
    }

    fn already_set(&self, targets: &[&'static str]) -> Option<String> {
        targets.iter().find_map(|t| self.claimed.get(t).map(|l| format!("{t} is already set on line {l}")))
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
            } else if def.name == "db.password.encrypted" && super::is_efm_java_encrypted(value) {
                let reason = format!("db.password.encrypted: {}", super::efm_java_password_step(self.cluster));
                self.comment_out(key, raw.trim(), reason, line);
            } else if let Some(reason) = unsupported_reason(def.name, value) {
                self.comment_out(key, raw.trim(), reason, line);
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
        } else if key == "jgroups.timeout" || key == "jgroups.max.tries" {
            let reason = self.jgroups_mapping(key);
            self.comment_out(key, raw.trim(), reason, line);
        } else if JAVA_ONLY.contains(&key) {
            self.flush(false);
            self.changes.push(Change::Dropped {
                name: key.to_owned(),
                reason: "only used by the Java implementation of EFM".into(),
                line,
            });
        } else {
            let hint = properties::suggest(key).map_or_else(String::new, |s| format!("; did you mean {s}?"));
            self.comment_out(key, raw.trim(), format!("efm has no property {key}{hint}"), line);
        }
    }

    fn legacy(&mut self, key: &str, value: &str, targets: &[&'static str], conversion: Conversion, line: usize) {
        let raw = format!("{key}={value}");
        if let Some(reason) = self.already_set(targets) {
            return self.comment_out(key, &raw, reason, line);
        }
        if let [target] = targets {
            if let Some(reason) = unsupported_reason(target, value) {
                return self.comment_out(key, &raw, reason, line);
            }
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
            self.note(&format!("EFM 5 split {key} into\n{to}; both keep the old value."));
            self.changes.push(Change::Converted { from: key.to_owned(), to, detail, line });
        } else if converted == value {
            self.changes.push(Change::Renamed { from: key.to_owned(), to, line });
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

    /// What replaces EFM 2.0's `JGroups` timing in efm, with the equivalent value.
    fn jgroups_mapping(&self, key: &str) -> String {
        let fmt_ms = |ms: u64| value::format_duration(Duration::from_millis(ms));
        match (key, self.jgroups) {
            ("jgroups.timeout", (Some(ms), _)) => format!(
                "EFM 2.0's JGroups suspicion timeout; efm does not read it. node.timeout replaces it: the same \
                 detection time is node.timeout={} (efm's default, 500ms, detects in the kernel much sooner)",
                fmt_ms(ms)
            ),
            ("jgroups.max.tries", (Some(ms), Some(n))) => format!(
                "EFM 2.0's JGroups retry count; efm does not read it. heartbeat.interval replaces it: {n} tries \
                 within {} is one every {}, i.e. heartbeat.interval={} (efm's default is 50ms)",
                fmt_ms(ms),
                fmt_ms(ms / n),
                fmt_ms(ms / n)
            ),
            ("jgroups.timeout", _) => {
                "EFM 2.0's JGroups suspicion timeout; efm does not read it: set node.timeout instead".into()
            }
            _ => "EFM 2.0's JGroups retry count; efm does not read it: set heartbeat.interval instead".into(),
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
                self.out.extend([String::new(), format!("{MARK} properties specific to efm, with their defaults.")]);
                first = false;
            }
            let default = def.default.replace("{cluster}", self.cluster);
            self.out.push(String::new());
            self.out.extend(comment.lines().map(|l| format!("# {}", l.trim())));
            self.out.push(format!("{name}={default}"));
            self.changes.push(Change::Added { name: (*name).to_owned(), default });
        }
    }
}

/// Keep every usable `.nodes` line as written; comment out lines with
/// entries efm cannot use (efm needs literal `ip:port`).
fn upgrade_nodes(text: &str) -> (String, Vec<Change>) {
    let mut out = String::from("# Cluster members for efm, converted by `efm upgrade-conf`.\n");
    let mut changes = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let (content, comment) = raw.split_once('#').map_or((raw, None), |(c, rest)| (c, Some(rest)));
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for token in content.split_whitespace() {
            let host_name = token
                .rsplit_once(':')
                .is_some_and(|(h, p)| value::looks_like_host_name(h) && p.parse::<u16>().is_ok_and(|p| p != 0));
            match value::parse_socket_addr(token) {
                Ok(_) => good.push(token),
                // efm resolves host names at start, as EFM did.
                Err(_) if host_name => good.push(token),
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
            changes.push(Change::NodeDropped { entry: token.to_owned(), reason: expected, line: idx + 1 });
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
            (dir.join(format!("{cluster}.properties")), &self.properties_text),
            (dir.join(format!("{cluster}.nodes")), &self.nodes_text),
        ];
        if !overwrite {
            if let Some((path, _)) = files.iter().find(|(p, _)| p.symlink_metadata().is_ok()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists; refusing to overwrite it", path.display()),
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

/// [`crate::files::write_atomic`] with [`FILE_MODE`]; without `overwrite` an existing file is
/// never replaced (the error says it exists).
fn write_atomic(path: &Path, text: &str, overwrite: bool) -> io::Result<()> {
    let existing = if overwrite { Existing::Replace } else { Existing::Keep };
    files::write_atomic(path, text.as_bytes(), WriteOptions::private().mode(FILE_MODE).existing(existing)).map_err(
        |e| {
            if e.already_exists() {
                io::Error::new(e.source.kind(), format!("{} already exists; refusing to overwrite it", path.display()))
            } else {
                io::Error::new(e.source.kind(), e.to_string())
            }
        },
    )
}

#[cfg(test)]
mod tests;
