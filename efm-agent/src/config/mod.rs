//! Loading of EFM-compatible cluster configuration: `<cluster>.properties`
//! and `<cluster>.nodes`.
//!
//! The rules follow EDB Failover Manager: Java properties syntax (see
//! [`parse`]: `key=value`, `key: value`, `key value`, `#`/`!` comments,
//! `\` continuations, `\uXXXX` escapes), case-sensitive keys, literal
//! values. Host names in the `.nodes` file, `bind.address` and
//! `virtual.ip` are resolved once, at load ([`value::Resolve`]). A `.nodes`
//! file that does not list this node (EFM 2.0 lists only the *other*
//! members) is accepted: [`Config::nodes`] is the file plus this node's
//! `bind.address`. Legacy spellings (EFM 3.x
//! camelCase names, `master` instead of `primary`, `jdbc.ssl`,
//! `virtualIp.netmask`, `auto.resume.period`) are accepted with a
//! deprecation warning; unknown keys produce a warning with the closest
//! known name. Every error is collected, not only the first.

pub mod check;
mod parse;
pub mod properties;
pub mod template;
pub mod upgrade;
pub mod value;

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unsupported_tests;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use parse::{parse_nodes, parse_nodes_with, parse_properties, Entry};
pub use value::{Cidr, Resolve, SystemResolver};

use properties::{Conversion, PropDef, JAVA_ONLY, PROPERTIES};
use value::Value;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational (e.g. an ignored Java-only property).
    Notice,
    /// The configuration loads, but something deserves attention.
    Warning,
    /// The configuration cannot be used.
    Error,
}

/// A problem found while loading configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub property: Option<String>,
    /// The offending value, when there is one.
    pub value: Option<String>,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    fn new(severity: Severity, file: &Path, line: Option<usize>, property: Option<&str>, message: String) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            property: property.map(str::to_owned),
            value: None,
            severity,
            message,
        }
    }

    pub(crate) fn error(file: &Path, line: Option<usize>, property: Option<&str>, message: String) -> Self {
        Self::new(Severity::Error, file, line, property, message)
    }

    fn warning(file: &Path, line: Option<usize>, property: Option<&str>, message: String) -> Self {
        Self::new(Severity::Warning, file, line, property, message)
    }

    fn with_value(mut self, value: &str) -> Self {
        self.value = Some(value.to_owned());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        match self.severity {
            Severity::Error => {}
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Notice => f.write_str("note: ")?,
        }
        match (&self.property, &self.value) {
            (Some(p), Some(v)) => write!(f, "{p} = \"{v}\": ")?,
            (Some(p), None) => write!(f, "{p}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

/// All errors found while loading; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A successfully loaded configuration plus its warnings and notices.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// `jdbc.sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `notification.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotificationLevel {
    Info,
    Warning,
    Severe,
}

/// `smtp.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP.
    None,
    /// `STARTTLS` after the greeting; a server that does not offer it is an error.
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// A value that must not appear in logs or `Debug` output (`smtp.password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(hidden)")
    }
}

/// `xdp.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// `fence.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Drop the fenced node's traffic.
    Drop,
    /// Reset the fenced node's connections.
    Reset,
}

/// `syslog.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogProtocol {
    Udp,
    Tcp,
}

/// The typed cluster configuration. Field names follow the property names
/// (`.` → `_`); `Option` fields are unset when the property is empty.
// The file format is mostly switches, so many bools is the honest shape.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: String,
    /// The cluster members: the entries of `<cluster>.nodes` plus this node's `bind.address`
    /// when the file does not list it (an EFM 2.0 file lists only the other members).
    pub nodes: Vec<SocketAddr>,
    /// Whether `<cluster>.nodes` listed this node itself (3.x style) or not (2.0 style).
    pub nodes_file_lists_self: bool,
    /// `virtual.ip.interface` as written when it is an alias (`eth0:0`, the EFM 2.0 form): the
    /// VIP goes on the base interface (`virtual_ip_interface`, here `eth0`) with this address
    /// label.
    pub virtual_ip_label: Option<String>,

    pub db_user: String,
    pub db_password_encrypted: Option<String>,
    pub db_port: u16,
    pub db_database: String,
    pub db_service_owner: Option<String>,
    pub db_service_name: Option<String>,
    pub db_bin: Option<PathBuf>,
    pub db_data_dir: Option<PathBuf>,
    pub db_recovery_conf_dir: Option<PathBuf>,
    pub db_config_dir: Option<PathBuf>,
    pub jdbc_sslmode: SslMode,
    pub db_reuse_connection_count: u64,

    pub user_email: Vec<String>,
    pub from_email: Option<String>,
    pub notification_level: NotificationLevel,
    pub notification_text_prefix: Option<String>,
    pub script_notification: Option<String>,
    pub script_notification_timeout: Duration,
    pub smtp_server: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_timeout: Duration,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Hidden>,

    pub bind_address: SocketAddr,
    pub external_address: Option<String>,
    pub admin_port: u16,
    pub is_witness: bool,

    pub local_period: Duration,
    pub local_timeout: Duration,
    pub local_timeout_final: Duration,
    pub remote_timeout: Duration,
    pub node_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
    /// `agent.absence.timeout`: how long voters endorse a primary whose agent is absent
    /// on its kernel's and database's evidence (zero: no limit).
    pub primary_agent_absence_timeout: Duration,
    /// `raft.heartbeat.interval`: the coordination log leader's heartbeat.
    pub raft_heartbeat_interval: Duration,
    /// `raft.election.timeout`: minimum election timeout (maximum: twice this).
    pub raft_election_timeout: Duration,
    pub encrypt_agent_messages: bool,

    pub stop_isolated_primary: bool,
    pub stop_failed_primary: bool,
    pub primary_shutdown_as_failure: bool,
    pub update_physical_slots_period: Duration,
    pub ping_server_ip: Option<IpAddr>,
    pub ping_server_command: String,
    pub auto_allow_hosts: bool,
    pub stable_nodes_file: bool,
    pub auto_failover: bool,
    pub auto_reconfigure: bool,
    pub promotable: bool,
    pub use_replay_tiebreaker: bool,
    pub standby_restart_delay: Duration,
    pub application_name: Option<String>,
    pub restore_command: Option<String>,
    pub reconfigure_num_sync: bool,
    pub reconfigure_sync_primary: bool,
    pub minimum_standbys: u64,
    pub priority_standbys: Vec<String>,
    pub recovery_check_period: Duration,
    pub restart_connection_timeout: Duration,
    pub auto_resume_startup_period: Duration,
    pub auto_resume_failure_period: Duration,
    pub backup_wal: bool,

    pub virtual_ip: Option<IpAddr>,
    pub virtual_ip_interface: Option<String>,
    pub virtual_ip_prefix: Option<u8>,
    pub virtual_ip_single: bool,
    pub check_vip_before_promotion: bool,
    /// `vip.takeover.allowed`: a promotion goes ahead although another host answers for the VIP.
    pub vip_takeover_allowed: bool,

    pub pgpool_enable: bool,
    pub pcp_user: Option<String>,
    pub pcp_host: Option<String>,
    pub pcp_port: u16,
    pub pcp_pass_file: Option<PathBuf>,
    pub pgpool_bin: Option<PathBuf>,
    pub script_load_balancer_attach: Option<String>,
    pub script_load_balancer_detach: Option<String>,
    pub detach_on_agent_failure: bool,

    pub script_fence: Option<String>,
    pub script_post_promotion: Option<String>,
    pub script_resumed: Option<String>,
    pub script_db_failure: Option<String>,
    pub script_primary_isolated: Option<String>,
    pub script_remote_pre_promotion: Option<String>,
    pub script_remote_post_promotion: Option<String>,
    pub script_custom_monitor: Option<String>,
    /// `script.user`: the OS user script hooks run as (`None`: the agent's).
    pub script_user: Option<String>,
    /// `script.timeout`: how long a script hook may run.
    pub script_timeout: Duration,
    pub custom_monitor_interval: Duration,
    pub custom_monitor_timeout: Duration,
    pub custom_monitor_safe_mode: bool,

    pub sudo_command: String,
    pub sudo_user_command: String,
    pub lock_dir: PathBuf,
    pub log_dir: PathBuf,
    pub syslog_host: String,
    pub syslog_port: u16,
    pub syslog_protocol: SyslogProtocol,
    pub syslog_facility: String,
    pub file_log_enabled: bool,
    pub syslog_enabled: bool,
    pub efm_loglevel: String,
    pub kill_parent_process: bool,

    pub xdp_interface: Option<String>,
    pub xdp_mode: XdpMode,
    pub fence_mode: FenceMode,
    pub fence_exempt_hosts: Vec<Cidr>,
    pub cluster_key_file: PathBuf,

    /// `health.listen.address`: where the HTTP health endpoint listens (`None`: off).
    pub health_listen_address: Option<SocketAddr>,
    /// `health.replica.max.lag.bytes`: 0 = `/replica` does not check the lag.
    pub health_replica_max_lag_bytes: u64,

    effective: Vec<(String, String)>,
}

impl Config {
    /// Every known property with its effective value (empty when unset),
    /// in table order.
    #[must_use]
    pub fn effective(&self) -> Vec<(String, String)> {
        self.effective.clone()
    }
}

/// Load `<dir>/<cluster>.properties` and `<dir>/<cluster>.nodes`, resolving host names with
/// the system resolver.
pub fn load(dir: &Path, cluster: &str) -> Result<Loaded, ConfigErrors> {
    load_with(dir, cluster, &SystemResolver)
}

/// [`load`] with the given resolver.
pub fn load_with(dir: &Path, cluster: &str, resolver: &dyn Resolve) -> Result<Loaded, ConfigErrors> {
    let props_path = dir.join(format!("{cluster}.properties"));
    let nodes_path = dir.join(format!("{cluster}.nodes"));
    let mut errors = Vec::new();
    let props_text = read(&props_path, &mut errors);
    let nodes_text = read(&nodes_path, &mut errors);
    let (Some(props_text), Some(nodes_text)) = (props_text, nodes_text) else {
        return Err(ConfigErrors(errors));
    };
    let mut node_notes = Vec::new();
    let nodes = match parse_nodes_with(&nodes_text, &nodes_path, resolver, &mut node_notes) {
        Ok(n) => n,
        Err(mut e) => {
            errors.append(&mut e);
            Vec::new()
        }
    };
    match analyze(&props_text, &props_path, cluster, nodes, resolver).result {
        Ok(mut loaded) if errors.is_empty() => {
            loaded.warnings.append(&mut node_notes);
            if let Some(note) = nodes_note(&loaded.config, &nodes_path) {
                loaded.warnings.push(note);
            }
            Ok(loaded)
        }
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(mut e)) => {
            errors.append(&mut e);
            Err(ConfigErrors(errors))
        }
    }
}

fn read(path: &Path, errors: &mut Vec<Diagnostic>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(Diagnostic::error(path, None, None, format!("cannot read: {e}")));
            None
        }
    }
}

/// The note for a `.nodes` file that does not list this node (EFM 2.0 style).
pub(crate) fn nodes_note(c: &Config, nodes_file: &Path) -> Option<Diagnostic> {
    // An empty file (the first node, EFM's usual start) needs no note.
    if c.nodes_file_lists_self || c.bind_address.port() == 0 || c.nodes.len() <= 1 {
        return None;
    }
    Some(Diagnostic::new(
        Severity::Notice,
        nodes_file,
        None,
        None,
        format!(
            "does not list this node ({}, bind.address): read as an EFM 2.0 members file, which lists \
             the other members; this node is added, so the cluster members are {}. Nodes started \
             together from such files agree on the same members when every file lists all the others.",
            c.bind_address,
            c.nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        ),
    ))
}

/// Build a [`Config`] from the text of a properties file (`file` is used
/// in diagnostics only) and already-parsed nodes; host names are resolved
/// with the system resolver.
pub fn from_properties(text: &str, file: &Path, cluster: &str, nodes: Vec<SocketAddr>) -> Result<Loaded, ConfigErrors> {
    analyze(text, file, cluster, nodes, &SystemResolver).result
}

/// [`from_properties`] with the given resolver.
pub fn from_properties_with(
    text: &str,
    file: &Path,
    cluster: &str,
    nodes: Vec<SocketAddr>,
    resolver: &dyn Resolve,
) -> Result<Loaded, ConfigErrors> {
    analyze(text, file, cluster, nodes, resolver).result
}

/// Everything [`from_properties`] found, kept even when loading fails
/// (used by `efm prop-check`).
pub(crate) struct Analysis {
    pub result: Result<Loaded, ConfigErrors>,
    /// Warnings and notices, also when `result` is an error.
    pub warnings: Vec<Diagnostic>,
    /// Effective raw value of every property, in table order; empty when
    /// the file could not be split into entries.
    pub effective: Vec<(String, String)>,
}

/// [`from_properties`], keeping warnings and effective values on failure.
pub(crate) fn analyze(
    text: &str,
    file: &Path,
    cluster: &str,
    nodes: Vec<SocketAddr>,
    resolver: &dyn Resolve,
) -> Analysis {
    let (entries, syntax_notes) = match parse::parse_properties_noted(text, file) {
        Ok(parsed) => parsed,
        Err(errors) => {
            return Analysis { result: Err(ConfigErrors(errors)), warnings: Vec::new(), effective: Vec::new() }
        }
    };
    let mut b = Builder { file, errors: Vec::new(), warnings: syntax_notes, sources: HashMap::new(), resolver };
    for entry in &entries {
        b.resolve(entry);
    }
    let values = b.validate(cluster);
    b.unsupported_remarks();
    let config = b.build(&values, cluster, nodes);
    b.cross_checks(&config, &values);
    b.timing_remarks(&config, &entries);
    let result = if b.errors.is_empty() {
        Ok(Loaded { config, warnings: b.warnings.clone() })
    } else {
        Err(ConfigErrors(b.errors))
    };
    Analysis { result, warnings: b.warnings, effective: values.effective }
}

/// Where a canonical property's value came from.
struct Source {
    /// The key as written (possibly a legacy spelling).
    key: String,
    /// The value as written.
    written: String,
    /// The value after legacy conversion.
    raw: String,
    line: usize,
}

struct Builder<'a> {
    file: &'a Path,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    sources: HashMap<&'static str, Source>,
    resolver: &'a dyn Resolve,
}

/// Properties whose value may be a host name, resolved at load.
const RESOLVED: &[&str] = &["bind.address", "virtual.ip"];

/// Validated values and the effective text of each property.
struct Values {
    typed: HashMap<&'static str, Value>,
    effective: Vec<(String, String)>,
}

impl Builder<'_> {
    fn resolve(&mut self, e: &Entry) {
        let file = self.file;
        if let Some(def) = properties::find(&e.key) {
            self.insert(def.name, e, e.value.clone());
        } else if let Some(legacy) = properties::legacy(&e.key) {
            let new_names = legacy.targets.join(" and ");
            self.warnings.push(Diagnostic::warning(
                file,
                Some(e.line),
                Some(&e.key),
                format!("deprecated property name; use {new_names} instead"),
            ));
            let converted = if e.value.is_empty() { Ok(String::new()) } else { convert(legacy.conversion, &e.value) };
            match converted {
                Ok(raw) => {
                    for target in legacy.targets {
                        self.insert(target, e, raw.clone());
                    }
                }
                Err(expected) => {
                    self.errors
                        .push(Diagnostic::error(file, Some(e.line), Some(&e.key), expected).with_value(&e.value));
                }
            }
        } else if e.key == "jgroups.timeout" || e.key == "jgroups.max.tries" {
            // Mapped by `timing_remarks` once every entry is known.
        } else if JAVA_ONLY.contains(&e.key.as_str()) {
            self.warnings.push(Diagnostic::new(
                Severity::Notice,
                file,
                Some(e.line),
                Some(&e.key),
                "only meaningful to the Java implementation of EFM; ignored".into(),
            ));
        } else {
            let hint = properties::suggest(&e.key).map_or_else(String::new, |s| format!("; did you mean {s}?"));
            self.warnings.push(Diagnostic::warning(
                file,
                Some(e.line),
                Some(&e.key),
                format!("unknown property, ignored{hint}"),
            ));
        }
    }

    fn insert(&mut self, name: &'static str, e: &Entry, raw: String) {
        if let Some(first) = self.sources.get(name) {
            self.errors.push(Diagnostic::error(
                self.file,
                Some(e.line),
                Some(&e.key),
                format!(
                    "{name} is set twice: as {} on line {} and as {} on line {}",
                    first.key, first.line, e.key, e.line
                ),
            ));
            return;
        }
        self.sources.insert(name, Source { key: e.key.clone(), written: e.value.clone(), raw, line: e.line });
    }

    fn validate(&mut self, cluster: &str) -> Values {
        let mut typed = HashMap::new();
        let mut effective = Vec::new();
        for def in PROPERTIES {
            let raw = match self.sources.get(def.name) {
                Some(src) if !src.raw.is_empty() => src.raw.clone(),
                _ => def.default.replace("{cluster}", cluster),
            };
            let raw = if RESOLVED.contains(&def.name) {
                let Ok(resolved) = self.resolve_name(def, &raw) else {
                    effective.push((def.name.to_owned(), raw));
                    continue;
                };
                resolved
            } else {
                raw
            };
            if !raw.is_empty() {
                match value::validate(def.kind, &raw) {
                    Ok(v) => {
                        typed.insert(def.name, v);
                    }
                    Err(expected) => self.push_invalid(def, &raw, expected),
                }
            }
            effective.push((def.name.to_owned(), raw));
        }
        Values { typed, effective }
    }

    /// For `bind.address` (`name:port`) and `virtual.ip` (`name`): the value with a host name
    /// replaced by its address; a note when it had several, an error when it has none.
    fn resolve_name(&mut self, def: &PropDef, raw: &str) -> Result<String, ()> {
        let resolved = if def.name == "virtual.ip" {
            if !value::looks_like_host_name(raw) {
                return Ok(raw.to_owned());
            }
            value::resolve_host(raw, self.resolver).map(|r| (r.chosen.to_string(), r.note()))
        } else {
            match value::resolve_host_port(raw, self.resolver) {
                None => return Ok(raw.to_owned()),
                Some(r) => r.map(|r| (r.chosen.to_string(), r.note())),
            }
        };
        match resolved {
            Ok((addr, note)) => {
                if let Some(note) = note {
                    let src = self.sources.get(def.name);
                    let d = Diagnostic::new(
                        Severity::Notice,
                        self.file,
                        src.map(|s| s.line),
                        Some(src.map_or(def.name, |s| s.key.as_str())),
                        note,
                    )
                    .with_value(raw);
                    self.warnings.push(d);
                }
                Ok(addr)
            }
            Err(e) => {
                self.push_invalid(def, raw, e);
                Err(())
            }
        }
    }

    /// A warning for each property of [`properties::UNSUPPORTED`] the file sets (a note when the
    /// value asks for what efm does anyway): efm reads it but does not act on it. An empty value
    /// sets nothing; an invalid one already has its error.
    fn unsupported_remarks(&mut self) {
        for u in properties::UNSUPPORTED {
            let Some(src) = self.sources.get(u.name) else { continue };
            let Some(def) = properties::find(u.name) else { continue };
            if src.raw.trim().is_empty() {
                continue;
            }
            let Ok(set) = value::validate(def.kind, src.raw.trim()) else { continue };
            let inert = u.inert.iter().any(|v| value::validate(def.kind, v).is_ok_and(|v| v == set));
            let what = match u.support {
                properties::Support::NotInEfm => "not supported by efm",
                properties::Support::NotYet => "not implemented yet in efm",
            };
            let (severity, message) = if inert {
                (
                    Severity::Notice,
                    format!("{what}, so setting it has no effect ({}); this value is what efm does anyway", u.reason),
                )
            } else {
                (Severity::Warning, format!("{what}, so setting it has no effect: {}", u.reason))
            };
            let d =
                Diagnostic::new(severity, self.file, Some(src.line), Some(&src.key), message).with_value(&src.written);
            self.warnings.push(d);
        }
    }

    fn push_invalid(&mut self, def: &PropDef, raw: &str, expected: String) {
        let d = match self.sources.get(def.name) {
            Some(src) => {
                Diagnostic::error(self.file, Some(src.line), Some(&src.key), expected).with_value(&src.written)
            }
            None => Diagnostic::error(self.file, None, Some(def.name), expected).with_value(raw),
        };
        self.errors.push(d);
    }

    fn error_for(&mut self, name: &str, message: String) {
        let d = match self.sources.get(name) {
            Some(src) => Diagnostic::error(self.file, Some(src.line), Some(&src.key), message).with_value(&src.written),
            None => Diagnostic::error(self.file, None, Some(name), message),
        };
        self.errors.push(d);
    }

    #[allow(clippy::too_many_lines)] // one line per field
    fn build(&mut self, v: &Values, cluster: &str, nodes: Vec<SocketAddr>) -> Config {
        let is_witness = v.bool("is.witness");
        // Required properties. The EFM guides require the database
        // connection settings on every node, and the data/recovery
        // directory and service owner everywhere but on a dedicated witness
        // (which has no database). bind.address identifies the agent.
        // db.password.encrypted is not required: efm may authenticate by
        // other means (e.g. .pgpass or peer). user.email is optional because
        // script.notification can replace mail.
        let mut required = vec!["db.user", "db.port", "db.database", "bind.address"];
        if !is_witness {
            required.push("db.service.owner");
        }
        for name in required {
            // A property that is written but invalid already has its own error.
            let already =
                self.sources.get(name).is_some_and(|src| self.errors.iter().any(|d| d.line == Some(src.line)));
            if !v.typed.contains_key(name) && !already {
                self.error_for(name, "required property is not set".into());
            }
        }
        if !is_witness && !v.typed.contains_key("db.data.dir") && !v.typed.contains_key("db.recovery.conf.dir") {
            self.errors.push(Diagnostic::error(
                self.file,
                None,
                Some("db.data.dir"),
                "required property is not set (db.data.dir, or db.recovery.conf.dir before PostgreSQL 12)".into(),
            ));
        }

        let bind_address = match v.typed.get("bind.address") {
            Some(Value::SocketAddr(a)) => *a,
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let nodes_file_lists_self = nodes.contains(&bind_address);
        let mut nodes = nodes;
        if !nodes_file_lists_self && bind_address.port() != 0 {
            nodes.push(bind_address);
        }
        let (virtual_ip_interface, virtual_ip_label) = match v.text("virtual.ip.interface") {
            Some(written) => match split_alias(&written) {
                Some(base) => (Some(base.to_owned()), Some(written)),
                None => (Some(written), None),
            },
            None => (None, None),
        };
        Config {
            cluster: cluster.to_owned(),
            nodes,
            nodes_file_lists_self,
            virtual_ip_label,
            db_user: v.text("db.user").unwrap_or_default(),
            db_password_encrypted: v.text("db.password.encrypted"),
            db_port: v.port("db.port"),
            db_database: v.text("db.database").unwrap_or_default(),
            db_service_owner: v.text("db.service.owner"),
            db_service_name: v.text("db.service.name"),
            db_bin: v.path("db.bin"),
            db_data_dir: v.path("db.data.dir"),
            db_recovery_conf_dir: v.path("db.recovery.conf.dir"),
            db_config_dir: v.path("db.config.dir"),
            jdbc_sslmode: match v.word("jdbc.sslmode") {
                "allow" => SslMode::Allow,
                "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                "verify-ca" => SslMode::VerifyCa,
                "verify-full" => SslMode::VerifyFull,
                _ => SslMode::Disable,
            },
            db_reuse_connection_count: v.uint("db.reuse.connection.count"),
            user_email: v.list("user.email"),
            from_email: v.text("from.email"),
            notification_level: match v.word("notification.level") {
                "WARNING" => NotificationLevel::Warning,
                "SEVERE" => NotificationLevel::Severe,
                _ => NotificationLevel::Info,
            },
            notification_text_prefix: v.text("notification.text.prefix"),
            script_notification: v.text("script.notification"),
            script_notification_timeout: v.dur("script.notification.timeout"),
            smtp_server: v.text("smtp.server").unwrap_or_default(),
            smtp_port: v.port("smtp.port"),
            smtp_tls: match v.word("smtp.tls") {
                "starttls" => SmtpTls::StartTls,
                "tls" => SmtpTls::Tls,
                _ => SmtpTls::None,
            },
            smtp_timeout: v.dur("smtp.timeout"),
            smtp_username: v.text("smtp.username"),
            smtp_password: v.text("smtp.password").map(Hidden),
            bind_address,
            external_address: v.text("external.address"),
            admin_port: v.port("admin.port"),
            is_witness,
            local_period: v.dur("local.period"),
            local_timeout: v.dur("local.timeout"),
            local_timeout_final: v.dur("local.timeout.final"),
            remote_timeout: v.dur("remote.timeout"),
            node_timeout: v.dur("node.timeout"),
            heartbeat_interval: v.dur("heartbeat.interval"),
            lease_timeout: v.dur("lease.timeout"),
            primary_agent_absence_timeout: v.dur("agent.absence.timeout"),
            raft_heartbeat_interval: v.dur("raft.heartbeat.interval"),
            raft_election_timeout: v.dur("raft.election.timeout"),
            encrypt_agent_messages: v.bool("encrypt.agent.messages"),
            stop_isolated_primary: v.bool("stop.isolated.primary"),
            stop_failed_primary: v.bool("stop.failed.primary"),
            primary_shutdown_as_failure: v.bool("primary.shutdown.as.failure"),
            update_physical_slots_period: v.dur("update.physical.slots.period"),
            ping_server_ip: match v.typed.get("ping.server.ip") {
                Some(Value::Ip(ip)) => Some(*ip),
                _ => None,
            },
            ping_server_command: v.text("ping.server.command").unwrap_or_default(),
            auto_allow_hosts: v.bool("auto.allow.hosts"),
            stable_nodes_file: v.bool("stable.nodes.file"),
            auto_failover: v.bool("auto.failover"),
            auto_reconfigure: v.bool("auto.reconfigure"),
            promotable: v.bool("promotable"),
            use_replay_tiebreaker: v.bool("use.replay.tiebreaker"),
            standby_restart_delay: v.dur("standby.restart.delay"),
            application_name: v.text("application.name"),
            restore_command: v.text("restore.command"),
            reconfigure_num_sync: v.bool("reconfigure.num.sync"),
            reconfigure_sync_primary: v.bool("reconfigure.sync.primary"),
            minimum_standbys: v.uint("minimum.standbys"),
            priority_standbys: v.list("priority.standbys"),
            recovery_check_period: v.dur("recovery.check.period"),
            restart_connection_timeout: v.dur("restart.connection.timeout"),
            auto_resume_startup_period: v.dur("auto.resume.startup.period"),
            auto_resume_failure_period: v.dur("auto.resume.failure.period"),
            backup_wal: v.bool("backup.wal"),
            virtual_ip: match v.typed.get("virtual.ip") {
                Some(Value::Ip(ip)) => Some(*ip),
                _ => None,
            },
            virtual_ip_interface,
            virtual_ip_prefix: match v.typed.get("virtual.ip.prefix") {
                Some(Value::Prefix(p)) => Some(*p),
                _ => None,
            },
            virtual_ip_single: v.bool("virtual.ip.single"),
            check_vip_before_promotion: v.bool("check.vip.before.promotion"),
            vip_takeover_allowed: v.bool("vip.takeover.allowed"),
            pgpool_enable: v.bool("pgpool.enable"),
            pcp_user: v.text("pcp.user"),
            pcp_host: v.text("pcp.host"),
            pcp_port: v.port("pcp.port"),
            pcp_pass_file: v.path("pcp.pass.file"),
            pgpool_bin: v.path("pgpool.bin"),
            script_load_balancer_attach: v.text("script.load.balancer.attach"),
            script_load_balancer_detach: v.text("script.load.balancer.detach"),
            detach_on_agent_failure: v.bool("detach.on.agent.failure"),
            script_fence: v.text("script.fence"),
            script_post_promotion: v.text("script.post.promotion"),
            script_resumed: v.text("script.resumed"),
            script_db_failure: v.text("script.db.failure"),
            script_primary_isolated: v.text("script.primary.isolated"),
            script_remote_pre_promotion: v.text("script.remote.pre.promotion"),
            script_remote_post_promotion: v.text("script.remote.post.promotion"),
            script_custom_monitor: v.text("script.custom.monitor"),
            script_user: v.text("script.user"),
            script_timeout: v.dur("script.timeout"),
            custom_monitor_interval: v.dur("custom.monitor.interval"),
            custom_monitor_timeout: v.dur("custom.monitor.timeout"),
            custom_monitor_safe_mode: v.bool("custom.monitor.safe.mode"),
            sudo_command: v.text("sudo.command").unwrap_or_default(),
            sudo_user_command: v.text("sudo.user.command").unwrap_or_default(),
            lock_dir: v.path("lock.dir").unwrap_or_default(),
            log_dir: v.path("log.dir").unwrap_or_default(),
            syslog_host: v.text("syslog.host").unwrap_or_default(),
            syslog_port: v.port("syslog.port"),
            syslog_protocol: if v.word("syslog.protocol") == "TCP" { SyslogProtocol::Tcp } else { SyslogProtocol::Udp },
            syslog_facility: v.word("syslog.facility").to_owned(),
            file_log_enabled: v.bool("file.log.enabled"),
            syslog_enabled: v.bool("syslog.enabled"),
            efm_loglevel: v.word("efm.loglevel").to_owned(),
            kill_parent_process: v.bool("kill.parent.process"),
            xdp_interface: v.text("xdp.interface"),
            xdp_mode: match v.word("xdp.mode") {
                "native" => XdpMode::Native,
                "generic" => XdpMode::Generic,
                _ => XdpMode::Auto,
            },
            fence_mode: if v.word("fence.mode") == "drop" { FenceMode::Drop } else { FenceMode::Reset },
            fence_exempt_hosts: match v.typed.get("fence.exempt.hosts") {
                Some(Value::Cidrs(c)) => c.clone(),
                _ => Vec::new(),
            },
            cluster_key_file: v.path("cluster.key.file").unwrap_or_default(),
            health_listen_address: match v.typed.get("health.listen.address") {
                Some(Value::SocketAddr(a)) => Some(*a),
                _ => None,
            },
            health_replica_max_lag_bytes: v.uint("health.replica.max.lag.bytes"),
            // The clear-text SMTP password is kept out of the listing (and so out of `Debug`).
            effective: v
                .effective
                .iter()
                .map(|(k, val)| {
                    if k == "smtp.password" && !val.is_empty() {
                        (k.clone(), "(hidden)".to_owned())
                    } else {
                        (k.clone(), val.clone())
                    }
                })
                .collect(),
        }
    }

    /// Notes about EFM's failure-detection timing: a second-scale `node.timeout` (EFM counted
    /// it in seconds; efm detects in the kernel, sub-second) and EFM 2.0's `jgroups.timeout` /
    /// `jgroups.max.tries`, which efm does not read, with the efm properties that replace them.
    fn timing_remarks(&mut self, c: &Config, entries: &[Entry]) {
        let file = self.file;
        if let Some(src) = self.sources.get("node.timeout") {
            if c.node_timeout >= Duration::from_secs(1) {
                self.warnings.push(
                    Diagnostic::new(
                        Severity::Notice,
                        file,
                        Some(src.line),
                        Some(&src.key),
                        format!(
                            "efm reads this as {} (a bare number is seconds, as in EFM). efm watches heartbeats \
                             in the kernel and detects a silent node in well under a second: consider \
                             node.timeout=0.5s with heartbeat.interval=50ms (the defaults; same on every node)",
                            value::format_duration(c.node_timeout)
                        ),
                    )
                    .with_value(&src.written),
                );
            }
        }
        let get = |k: &str| entries.iter().find(|e| e.key == k);
        let (timeout, tries) = (get("jgroups.timeout"), get("jgroups.max.tries"));
        let timeout_ms = timeout.and_then(|e| e.value.parse::<u64>().ok()).filter(|ms| *ms > 0);
        let tries_n = tries.and_then(|e| e.value.parse::<u64>().ok()).filter(|n| *n > 0);
        let current = format!(
            "efm uses node.timeout={} and heartbeat.interval={}",
            value::format_duration(c.node_timeout),
            value::format_duration(c.heartbeat_interval)
        );
        if let Some(e) = timeout {
            let equivalent = timeout_ms.map_or_else(
                || "set node.timeout to the same time".to_owned(),
                |ms| {
                    format!(
                        "the same detection time is node.timeout={}",
                        value::format_duration(Duration::from_millis(ms))
                    )
                },
            );
            self.warnings.push(
                Diagnostic::new(
                    Severity::Notice,
                    file,
                    Some(e.line),
                    Some(&e.key),
                    format!(
                        "EFM 2.0's JGroups suspicion timeout (milliseconds without a heartbeat); efm does not read \
                         it: node.timeout replaces it ({equivalent}; {current})"
                    ),
                )
                .with_value(&e.value),
            );
        }
        if let Some(e) = tries {
            let equivalent = match (timeout_ms, tries_n) {
                (Some(ms), Some(n)) => format!(
                    "EFM sent {n} are-you-alive messages within jgroups.timeout, one every {}: the same \
                     cadence is heartbeat.interval={}",
                    value::format_duration(Duration::from_millis(ms / n)),
                    value::format_duration(Duration::from_millis(ms / n))
                ),
                _ => "heartbeat.interval (the time between heartbeats) replaces the number of tries".to_owned(),
            };
            self.warnings.push(
                Diagnostic::new(
                    Severity::Notice,
                    file,
                    Some(e.line),
                    Some(&e.key),
                    format!("EFM 2.0's JGroups retry count; efm does not read it: {equivalent} ({current})"),
                )
                .with_value(&e.value),
            );
        }
    }

    /// Checks that involve more than one property.
    fn cross_checks(&mut self, c: &Config, v: &Values) {
        if let Some(enc) = &c.db_password_encrypted {
            if is_efm_java_encrypted(enc) {
                // Not the value itself: it is still an (EFM-)encrypted password.
                let src = self.sources.get("db.password.encrypted");
                let d = Diagnostic::error(
                    self.file,
                    src.map(|s| s.line),
                    Some(src.map_or("db.password.encrypted", |s| s.key.as_str())),
                    efm_java_password_step(&c.cluster),
                );
                self.errors.push(d);
            }
        }
        if let Some(ip) = c.ping_server_ip {
            if ip == IpAddr::from([8, 8, 8, 8]) {
                let src = self.sources.get("ping.server.ip");
                let mut d = Diagnostic::warning(
                    self.file,
                    src.map(|s| s.line),
                    Some(src.map_or("ping.server.ip", |s| s.key.as_str())),
                    "this is EFM's example public address; the node will send pings to a public server \
                     (use an address inside your network)"
                        .into(),
                );
                d.value = Some(ip.to_string());
                self.warnings.push(d);
            }
        }
        if let Some(vip) = c.virtual_ip {
            match c.virtual_ip_prefix {
                None => self.error_for("virtual.ip.prefix", "required when virtual.ip is set".into()),
                Some(p) if vip.is_ipv4() && p > 32 => {
                    self.error_for("virtual.ip.prefix", "expected a prefix length 0-32 for an IPv4 virtual.ip".into());
                }
                Some(_) => {}
            }
        }
        for name in ["smtp.timeout", "script.notification.timeout"] {
            if matches!(v.typed.get(name), Some(Value::Duration(d)) if d.is_zero()) {
                self.error_for(name, "expected a duration longer than 0".into());
            }
        }
        if c.smtp_password.is_some() && c.smtp_username.is_none() {
            self.error_for(
                "smtp.password",
                "smtp.username must be set too (the password is only used to log in as that user)".into(),
            );
        }
        if v.typed.contains_key("node.timeout")
            && v.typed.contains_key("heartbeat.interval")
            && c.node_timeout <= c.heartbeat_interval
        {
            self.error_for("node.timeout", "expected a duration longer than heartbeat.interval".into());
        }
    }
}

/// `eth0:0` (an alias, the EFM 2.0 form of `virtualIp.interface`) → `eth0`; `None` for a plain
/// interface name.
#[must_use]
pub fn split_alias(interface: &str) -> Option<&str> {
    interface.split_once(':').map(|(base, _)| base).filter(|b| !b.is_empty())
}

/// Whether a `db.password.encrypted` value was written by EDB Failover Manager's Java `efm
/// encrypt` (a bare hex string such as `835fb18954f198e94fd3d6f4b070350b`) rather than by efm
/// (`efm1:...`).
#[must_use]
pub fn is_efm_java_encrypted(value: &str) -> bool {
    let v = value.trim();
    v.len() >= 16 && v.bytes().all(|c| c.is_ascii_hexdigit())
}

/// What to do about an EFM-encrypted password: the one message prop-check, upgrade-conf and
/// the agent give.
#[must_use]
pub fn efm_java_password_step(cluster: &str) -> String {
    format!(
        "this value was encrypted by EDB Failover Manager (Java), and efm cannot decrypt it (a \
         different cipher and key). Run `efm encrypt {cluster}` on this host and put the value it \
         prints in db.password.encrypted (scripted, as with EFM 3.3+: `EFMPASS=<password> efm \
         encrypt {cluster} --from-env` prints the bare value); copy the key file it creates (efm.key, beside the properties file) \
         to the other nodes with the properties file. Or leave db.password.encrypted empty and give the \
         password in ~/.pgpass"
    )
}

fn convert(conversion: Conversion, raw: &str) -> Result<String, String> {
    match conversion {
        Conversion::Rename => Ok(raw.to_owned()),
        Conversion::JdbcSsl => match value::validate(value::Kind::Bool, raw) {
            Ok(Value::Bool(true)) => Ok("require".into()),
            Ok(_) => Ok("disable".into()),
            Err(e) => Err(e),
        },
        Conversion::Netmask => value::netmask_to_prefix(raw).map(|p| p.to_string()),
    }
}

impl Values {
    fn bool(&self, name: &str) -> bool {
        matches!(self.typed.get(name), Some(Value::Bool(true)))
    }

    fn dur(&self, name: &str) -> Duration {
        match self.typed.get(name) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }

    fn port(&self, name: &str) -> u16 {
        match self.typed.get(name) {
            Some(Value::Port(p)) => *p,
            _ => 0,
        }
    }

    fn uint(&self, name: &str) -> u64 {
        match self.typed.get(name) {
            Some(Value::UInt(n)) => *n,
            _ => 0,
        }
    }

    fn word(&self, name: &str) -> &'static str {
        match self.typed.get(name) {
            Some(Value::Enum(w)) => w,
            _ => "",
        }
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.typed.get(name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        match self.typed.get(name) {
            Some(Value::Path(p)) => Some(p.clone()),
            _ => None,
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        match self.typed.get(name) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }
}
