//! `efm prop-check CLUSTER`: load a cluster's configuration and explain it.
//!
//! The report lists every property with the value the agent would use and
//! where that value comes from (a line of the properties file, a legacy
//! spelling converted on the way, or the built-in default), the members
//! listed in the `.nodes` file, and every error, warning and notice the
//! loader produced. Secrets are never shown.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::properties::{self, PROPERTIES};
use super::value;
use super::value::{Resolve, SystemResolver};
use super::{
    analyze, is_efm_java_encrypted, nodes_note, parse_nodes_with, parse_properties, Config, Diagnostic, Severity,
};

/// The loader's message for a missing required property.
const REQUIRED_NOT_SET: &str = "required property is not set";

/// Properties whose value must never be printed.
const SECRETS: &[&str] = &["db.password.encrypted", "smtp.password"];

/// Where an effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Not in the file: the built-in default.
    Default,
    /// Present in the file but empty, so the default applies.
    EmptyInFile { line: usize },
    /// Set on this line under its canonical name.
    File { line: usize },
    /// Set on this line under a legacy name, converted.
    Legacy { line: usize, from: String },
}

/// One property of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveProperty {
    pub name: String,
    /// The value the agent uses, with secrets replaced by `(set)`; empty
    /// when the property is not set.
    pub value: String,
    pub source: ValueSource,
}

/// The result of `efm prop-check`.
#[derive(Debug, Clone)]
pub struct PropCheckReport {
    pub cluster: String,
    pub properties_file: PathBuf,
    pub nodes_file: PathBuf,
    /// Every known property, in table order; `None` when the properties
    /// file could not be read or split into `key=value` lines.
    pub effective: Option<Vec<EffectiveProperty>>,
    /// Members listed in the `.nodes` file; `None` when it could not be
    /// read or parsed.
    pub nodes: Option<Vec<SocketAddr>>,
    /// Errors, warnings and notices, properties file first, by line.
    pub diagnostics: Vec<Diagnostic>,
    /// This node's `bind.address`, when the `.nodes` file does not list it (EFM 2.0 style) and
    /// the agent adds it to the members.
    pub self_added: Option<SocketAddr>,
    /// What the agent will do with the virtual IP, when one is configured.
    pub vip_plan: Option<String>,
}

/// One sentence on where the VIP goes: the interface, and for an alias (`eth0:0`) the base
/// interface, the address label, and where XDP attaches.
fn vip_plan(c: &Config) -> Option<String> {
    let vip = c.virtual_ip?;
    let prefix = c.virtual_ip_prefix.map_or_else(String::new, |p| format!("/{p}"));
    let iface = c.virtual_ip_interface.as_deref();
    Some(match (iface, c.virtual_ip_label.as_deref()) {
        (Some(base), Some(label)) => format!(
            "{vip}{prefix} is added to interface {base} with the address label {label} (virtual.ip.interface={label} \
             is an alias of {base}: Linux keeps alias addresses on the base interface); XDP attaches to {}",
            c.xdp_interface.as_deref().map_or_else(
                || format!("the interface holding bind.address ({base} if that is the one)"),
                ToOwned::to_owned
            ),
        ),
        (Some(i), None) => format!("{vip}{prefix} is added to interface {i}"),
        (None, _) => format!("{vip}{prefix} is added to the interface holding bind.address"),
    })
}

/// Agents a cluster needs for failover protection: a primary, a standby and a third agent (a
/// second standby or a witness), so that a majority is left when any one node fails.
pub const MIN_AGENTS: usize = 3;

/// Why a cluster of the `.nodes` members plus this node (`me`, its `bind.address`) would have too
/// few agents; `None` from [`MIN_AGENTS`] on. `efm prop-check` reports it as a warning and the
/// agent logs it at start.
#[must_use]
pub fn too_few_agents(nodes: &[SocketAddr], me: SocketAddr) -> Option<String> {
    let mut agents: Vec<SocketAddr> = nodes.to_vec();
    agents.push(me);
    agents.sort_unstable();
    agents.dedup();
    let n = agents.len();
    if n >= MIN_AGENTS {
        return None;
    }
    let counted = if n == 1 {
        "the .nodes file lists no other node, so this node would be the only agent".to_owned()
    } else {
        let others: Vec<String> = agents.iter().filter(|a| **a != me).map(ToString::to_string).collect();
        format!("the cluster would have {n} agents (this node and {})", others.join(", "))
    };
    let why = if n == 1 {
        "there is no node to fail over to, and no majority to decide a failover"
    } else {
        "with two, neither node is a majority on its own: when the primary's node fails no standby \
         can be promoted, and when the other node fails the primary's lease lapses (it needs that \
         node's endorsement) and its clients are cut off"
    };
    Some(format!(
        "{counted}: failover protection needs at least {MIN_AGENTS} agents — a primary, a standby and a \
         third agent (another standby, or a witness with is.witness=true); {why}. (Counted from the \
         .nodes file and this node: a node joining a larger running cluster may list fewer.)"
    ))
}

/// Logs [`too_few_agents`] as a warning (the agent, at start).
pub fn warn_if_too_few_agents(cfg: &Config) {
    if let Some(why) = too_few_agents(&cfg.nodes, cfg.bind_address) {
        tracing::warn!(cluster = %cfg.cluster, "{why}");
    }
}

/// Check `<dir>/<cluster>.properties` and `<dir>/<cluster>.nodes`.
#[must_use]
pub fn prop_check(dir: &Path, cluster: &str) -> PropCheckReport {
    prop_check_with(dir, cluster, &SystemResolver)
}

/// [`prop_check`] resolving host names with `resolver`.
#[must_use]
#[allow(clippy::too_many_lines)] // one pass over both files, in order
pub fn prop_check_with(dir: &Path, cluster: &str, resolver: &dyn Resolve) -> PropCheckReport {
    let properties_file = dir.join(format!("{cluster}.properties"));
    let nodes_file = dir.join(format!("{cluster}.nodes"));
    let mut report = PropCheckReport {
        cluster: cluster.to_owned(),
        properties_file,
        nodes_file,
        effective: None,
        nodes: None,
        diagnostics: Vec::new(),
        self_added: None,
        vip_plan: None,
    };
    if !dir.is_dir() {
        let message = if dir.exists() { "not a directory" } else { "configuration directory does not exist" };
        report.diagnostics.push(Diagnostic::error(dir, None, None, message.into()));
        return report;
    }

    let nodes_text = read(&report.nodes_file, &mut report.diagnostics);
    let mut node_diagnostics = Vec::new();
    if let Some(text) = nodes_text {
        match parse_nodes_with(&text, &report.nodes_file, resolver, &mut node_diagnostics) {
            Ok(nodes) => report.nodes = Some(nodes),
            Err(mut e) => node_diagnostics.append(&mut e),
        }
    }

    if let Some(text) = read(&report.properties_file, &mut report.diagnostics) {
        let file = &report.properties_file;
        let analysis = analyze(&text, file, cluster, report.nodes.clone().unwrap_or_default(), resolver);
        let (effective, errors) = match analysis.result {
            Ok(loaded) => {
                if let Some(why) = report.nodes.as_deref().and_then(|n| too_few_agents(n, loaded.config.bind_address)) {
                    node_diagnostics.push(Diagnostic::warning(&report.nodes_file, None, None, why));
                }
                if report.nodes.is_some() {
                    if let Some(note) = nodes_note(&loaded.config, &report.nodes_file) {
                        node_diagnostics.push(note);
                    }
                    report.self_added = (!loaded.config.nodes_file_lists_self).then_some(loaded.config.bind_address);
                }
                report.vip_plan = vip_plan(&loaded.config);
                (loaded.config.effective(), Vec::new())
            }
            Err(errors) => (analysis.effective, errors.0),
        };
        if !effective.is_empty() {
            report.effective = Some(describe(&text, file, &effective));
        }
        // The loader also reports an invalid required value as "not set";
        // one error per line and property is enough.
        let duplicate = |d: &Diagnostic| {
            d.message == REQUIRED_NOT_SET
                && d.line.is_some()
                && errors.iter().any(|o| o.message != REQUIRED_NOT_SET && o.line == d.line && o.property == d.property)
        };
        let errors: Vec<Diagnostic> = errors.iter().filter(|d| !duplicate(d)).cloned().collect();
        report.diagnostics.extend(errors);
        report.diagnostics.extend(analysis.warnings);
    }
    report.diagnostics.extend(node_diagnostics);

    let props = report.properties_file.clone();
    // Stable: keeps the loader's order among diagnostics of the same line.
    report.diagnostics.sort_by_key(|d| (d.file != props, d.line.unwrap_or(0)));
    for d in &mut report.diagnostics {
        if d.value.is_some() && d.property.as_deref().is_some_and(is_secret) {
            d.value = Some("(set)".into());
        }
    }
    report
}

fn read(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            diagnostics.push(Diagnostic::error(path, None, None, format!("cannot read: {e}")));
            None
        }
    }
}

fn is_secret(name: &str) -> bool {
    SECRETS.contains(&name) || properties::legacy(name).is_some_and(|l| l.targets.iter().any(|t| SECRETS.contains(t)))
}

/// Attach a source to every effective value. `effective` is only non-empty
/// when the file split into entries, so parsing again succeeds.
fn describe(text: &str, file: &Path, effective: &[(String, String)]) -> Vec<EffectiveProperty> {
    // canonical name -> (line, legacy key, value as written); first wins,
    // as in the loader.
    let mut sources: HashMap<&str, (usize, Option<String>, bool)> = HashMap::new();
    for entry in parse_properties(text, file).unwrap_or_default() {
        let empty = entry.value.is_empty();
        if let Some(def) = properties::find(&entry.key) {
            sources.entry(def.name).or_insert((entry.line, None, empty));
        } else if let Some(legacy) = properties::legacy(&entry.key) {
            for target in legacy.targets {
                sources.entry(target).or_insert((entry.line, Some(entry.key.clone()), empty));
            }
        }
    }
    effective
        .iter()
        .map(|(name, raw)| {
            let source = match sources.get(name.as_str()) {
                None => ValueSource::Default,
                Some((line, _, true)) => ValueSource::EmptyInFile { line: *line },
                Some((line, None, false)) => ValueSource::File { line: *line },
                Some((line, Some(from), false)) => ValueSource::Legacy { line: *line, from: from.clone() },
            };
            let value = if is_secret(name) && is_efm_java_encrypted(raw) {
                "(EFM-encrypted: efm cannot use it, see below)".to_owned()
            } else if is_secret(name) && !raw.is_empty() {
                "(set)".to_owned()
            } else {
                raw.clone()
            };
            EffectiveProperty { name: name.clone(), value, source }
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Longest value that still widens the value column.
const VALUE_COLUMN_MAX: usize = 32;

impl PropCheckReport {
    /// Number of errors.
    #[must_use]
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    /// Number of warnings.
    #[must_use]
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == severity).count()
    }

    /// 0 when the configuration has no errors, 1 otherwise.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        i32::from(self.errors() > 0)
    }

    /// The human-readable report.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let props = file_name(&self.properties_file);
        let _ = writeln!(
            out,
            "Cluster {}: {}, {}",
            self.cluster,
            self.properties_file.display(),
            self.nodes_file.display()
        );
        match &self.effective {
            Some(effective) => {
                out.push_str("Effective configuration:\n");
                let name_width = effective.iter().map(|p| p.name.len()).max().unwrap_or(0);
                let value_width = effective
                    .iter()
                    .map(|p| display_value(&p.value).len())
                    .filter(|w| *w <= VALUE_COLUMN_MAX)
                    .max()
                    .unwrap_or(0);
                for p in effective {
                    let source = match &p.source {
                        ValueSource::Default => "default".to_owned(),
                        ValueSource::EmptyInFile { line } => {
                            format!("default; empty in {props}:{line}")
                        }
                        ValueSource::File { line } => format!("{props}:{line}"),
                        ValueSource::Legacy { line, from } => {
                            format!("{props}:{line}, from legacy {from}")
                        }
                    };
                    let _ = writeln!(
                        out,
                        "  {:<name_width$} = {:<value_width$} ({source})",
                        p.name,
                        display_value(&p.value),
                    );
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "Effective configuration: not available ({props} could not be read or parsed; see below)"
                );
            }
        }
        match &self.nodes {
            Some(nodes) if nodes.is_empty() => {
                let _ = writeln!(
                    out,
                    "Nodes ({}): none listed (this agent can only start a new cluster)",
                    file_name(&self.nodes_file)
                );
            }
            Some(nodes) => {
                let _ = writeln!(out, "Nodes ({}):", file_name(&self.nodes_file));
                for n in nodes {
                    let _ = writeln!(out, "  {n}");
                }
                if let Some(me) = self.self_added {
                    let _ =
                        writeln!(out, "  {me}  (this node, from bind.address: added, the file lists only the others)");
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "Nodes: not available ({} could not be read or parsed; see below)",
                    file_name(&self.nodes_file)
                );
            }
        }
        if let Some(plan) = &self.vip_plan {
            let _ = writeln!(out, "Virtual IP: {plan}");
        }
        if self.diagnostics.is_empty() {
            out.push_str("No problems found.\n");
            return out;
        }
        out.push_str("Problems:\n");
        for d in &self.diagnostics {
            let _ = writeln!(out, "  {}", render_diagnostic(d));
        }
        let (errors, warnings) = (self.errors(), self.warnings());
        let notes = self.count(Severity::Notice);
        let _ = write!(
            out,
            "{} ({}, {})",
            plural(errors + warnings, "problem"),
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        if notes > 0 {
            let _ = write!(out, ", {}", plural(notes, "note"));
        }
        out.push('\n');
        out
    }
}

fn display_value(value: &str) -> &str {
    if value.is_empty() {
        "(not set)"
    } else {
        value
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `error: acctg.properties:7: db.port = "abc": expected a port number 1-65535`
fn render_diagnostic(d: &Diagnostic) -> String {
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Notice => "note",
    };
    let mut s = format!("{severity}: {}", file_name(&d.file));
    if let Some(line) = d.line {
        let _ = write!(s, ":{line}");
    }
    s.push_str(": ");
    match (&d.property, &d.value) {
        (Some(p), Some(v)) => {
            let _ = write!(s, "{p} = \"{v}\": ");
        }
        (Some(p), None) => {
            let _ = write!(s, "{p}: ");
        }
        _ => {}
    }
    s.push_str(&d.message);
    s
}

/// Properties that must be identical on every node and differ between
/// `a` and `b`, one line each. Values are compared after validation, so
/// `TRUE` equals `true` and `50` equals `50s`.
#[must_use]
pub fn compare(a: &Config, b: &Config) -> Vec<String> {
    let (ea, eb) = (a.effective(), b.effective());
    let value_of = |e: &[(String, String)], name: &str| {
        e.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    PROPERTIES
        .iter()
        .filter(|def| def.must_match)
        .filter_map(|def| {
            let (va, vb) = (value_of(&ea, def.name), value_of(&eb, def.name));
            let same = match (va.is_empty(), vb.is_empty()) {
                (true, true) => true,
                (false, false) => match (value::validate(def.kind, &va), value::validate(def.kind, &vb)) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => va == vb,
                },
                _ => false,
            };
            (!same).then(|| {
                format!(
                    "{} differs: {} on {} but {} on {}",
                    def.name,
                    quoted(&va),
                    a.bind_address,
                    quoted(&vb),
                    b.bind_address
                )
            })
        })
        .collect()
}

fn quoted(v: &str) -> String {
    if v.is_empty() {
        "not set".into()
    } else {
        format!("\"{v}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_properties;

    const GOOD: &str = "\
# acctg cluster
db.user=efm
db.password.encrypted=efm1:516b36fb8031da17cfbc010f:7d09359c
db.port=5444
db.database=edb
db.service.owner=enterprisedb
db.data.dir=/var/lib/edb/data
bind.address=198.18.0.1:7800
virtualIp=198.18.0.100
virtual.ip.prefix=24
lock.dir=
";

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "efm-propcheck-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn find<'a>(r: &'a PropCheckReport, name: &str) -> &'a EffectiveProperty {
        r.effective.as_ref().unwrap().iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn good_set() {
        let dir = temp_dir("good");
        std::fs::write(dir.join("acctg.properties"), GOOD).unwrap();
        std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
        let r = prop_check(&dir, "acctg");
        assert_eq!(r.exit_code(), 0, "{}", r.render());
        assert_eq!(r.nodes.as_ref().unwrap().len(), 3);
        assert_eq!(r.effective.as_ref().unwrap().len(), PROPERTIES.len(), "every property is listed");
        assert_eq!(find(&r, "db.port").source, ValueSource::File { line: 4 });
        assert_eq!(find(&r, "auto.failover").source, ValueSource::Default);
        assert_eq!(find(&r, "lock.dir").value, "/var/lock/efm");
        assert_eq!(find(&r, "virtual.ip").source, ValueSource::Legacy { line: 9, from: "virtualIp".into() });
        assert_eq!(find(&r, "db.password.encrypted").value, "(set)");

        let text = r.render();
        assert!(!text.contains("516b36fb"), "{text}");
        assert!(text.starts_with("Cluster acctg: "), "{text}");
        assert!(text.contains("acctg.properties, "), "{text}");
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .to_owned()
        };
        assert!(line("db.password.encrypted").contains("= (set)"), "{text}");
        assert!(line("db.port").contains("= 5444"), "{text}");
        assert!(line("db.port").ends_with("(acctg.properties:4)"), "{text}");
        assert!(line("auto.failover").ends_with("(default)"), "{text}");
        assert!(line("virtual.ip").ends_with("(acctg.properties:9, from legacy virtualIp)"), "{text}");
        assert!(line("lock.dir").ends_with("(default; empty in acctg.properties:11)"), "{text}");
        assert!(text.contains("  198.18.0.2:7800\n"), "{text}");
        // The legacy name is worth a warning, not an error.
        assert_eq!(r.warnings(), 1, "{text}");
        assert!(text.contains("warning: acctg.properties:9: virtualIp: deprecated property name"), "{text}");
        assert!(text.ends_with("1 problem (0 errors, 1 warning)\n"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clean_set_says_no_problems() {
        let dir = temp_dir("clean");
        let text = GOOD.replace("virtualIp=", "virtual.ip=");
        std::fs::write(dir.join("acctg.properties"), text).unwrap();
        std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800 198.18.0.4:7800\n").unwrap();
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!(r.exit_code(), 0);
        assert!(out.ends_with("No problems found.\n"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fewer_than_three_agents_is_a_warning_with_the_reason() {
        let dir = temp_dir("few");
        let text = GOOD.replace("virtualIp=", "virtual.ip=");
        std::fs::write(dir.join("acctg.properties"), text).unwrap();
        // This node (198.18.0.1:7800) and one other; listing itself does not count twice.
        std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800\n").unwrap();
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!((r.exit_code(), r.errors(), r.warnings()), (0, 0, 1), "{out}");
        assert!(
            out.contains("warning: acctg.nodes: the cluster would have 2 agents (this node and 198.18.0.2:7800): failover protection needs at least 3 agents"),
            "{out}"
        );
        assert!(out.contains("or a witness with is.witness=true"), "{out}");
        assert!(out.contains("the primary's lease lapses"), "{out}");
        // Alone.
        std::fs::write(dir.join("acctg.nodes"), "").unwrap();
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!(r.warnings(), 1, "{out}");
        assert!(out.contains("none listed"), "{out}");
        assert!(out.contains("this node would be the only agent"), "{out}");
        assert!(out.contains("no node to fail over to"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
        // The function the agent logs with, directly.
        let me: SocketAddr = "198.18.0.1:7800".parse().unwrap();
        let two: SocketAddr = "198.18.0.2:7800".parse().unwrap();
        let three: SocketAddr = "198.18.0.3:7800".parse().unwrap();
        assert!(too_few_agents(&[me, two, three], me).is_none());
        assert!(too_few_agents(&[two, three], me).is_none(), "this node counts too");
        assert!(too_few_agents(&[two, two], me).is_some(), "a node listed twice is one agent");
    }

    #[test]
    fn error_and_warning() {
        let dir = temp_dir("bad");
        let text = GOOD.replace("db.port=5444", "db.port=abc") + "auto.failvoer=false\n";
        std::fs::write(dir.join("acctg.properties"), text).unwrap();
        std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800\n").unwrap();
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!(r.exit_code(), 1, "{out}");
        assert_eq!(r.errors(), 1, "{out}");
        assert_eq!(r.warnings(), 2, "{out}");
        // The configuration is still shown, with the offending value.
        assert_eq!(find(&r, "db.port").value, "abc");
        assert!(
            out.contains("  error: acctg.properties:4: db.port = \"abc\": expected a port number 1-65535\n"),
            "{out}"
        );
        assert!(
            out.contains("  warning: acctg.properties:12: auto.failvoer: unknown property, ignored; did you mean auto.failover?\n"),
            "{out}"
        );
        // Ordered by line.
        let pos = |s: &str| out.find(s).unwrap();
        assert!(pos("acctg.properties:4:") < pos("acctg.properties:9:"));
        assert!(pos("acctg.properties:9:") < pos("acctg.properties:12:"));
        assert!(out.ends_with("3 problems (1 error, 2 warnings)\n"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unparsable_file_and_bad_nodes() {
        let dir = temp_dir("syntax");
        std::fs::write(dir.join("acctg.properties"), "db.user=\\u00zz\n").unwrap();
        std::fs::write(dir.join("acctg.nodes"), "db1:7800\n").unwrap();
        // No name server is asked: db1 is not in the test's table.
        let r = prop_check_with(&dir, "acctg", &crate::config::value::TableResolver::default());
        let out = r.render();
        assert_eq!(r.exit_code(), 1);
        assert!(r.effective.is_none() && r.nodes.is_none());
        assert!(out.contains("Effective configuration: not available"), "{out}");
        assert!(out.contains("error: acctg.properties:1: db.user: malformed \\uXXXX escape"), "{out}");
        assert!(
            out.contains("error: acctg.nodes:1: bad node entry \"db1:7800\": host name \"db1\" does not resolve"),
            "{out}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_and_files() {
        let dir = std::env::temp_dir().join(format!("efm-propcheck-none-{}", std::process::id()));
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.errors(), 1);
        assert!(out.contains("configuration directory does not exist"), "{out}");
        assert!(out.contains("Effective configuration: not available"), "{out}");

        let dir = temp_dir("empty");
        let r = prop_check(&dir, "acctg");
        let out = r.render();
        assert_eq!(r.errors(), 2, "{out}");
        assert!(out.contains("error: acctg.properties: cannot read: "), "{out}");
        assert!(out.contains("error: acctg.nodes: cannot read: "), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn config(extra: &str, bind: &str) -> Config {
        let text = format!(
            "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
             db.data.dir=/var/lib/edb/data\nbind.address={bind}\n{extra}\n"
        );
        from_properties(&text, Path::new("/etc/efm/acctg.properties"), "acctg", Vec::new())
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    #[test]
    fn compare_must_match_properties() {
        let a = config("node.timeout=50\nauto.failover=TRUE\nadmin.port=7809", "10.0.0.1:7800");
        let b =
            config("node.timeout=50s\nadmin.port=7810\nvirtual.ip=10.0.0.100\nvirtual.ip.prefix=24", "10.0.0.2:7800");
        // admin.port may differ; 50 and 50s, TRUE and the default true are equal.
        let diff = compare(&a, &b);
        assert_eq!(
            diff,
            [
                "virtual.ip differs: not set on 10.0.0.1:7800 but \"10.0.0.100\" on 10.0.0.2:7800",
                "virtual.ip.prefix differs: not set on 10.0.0.1:7800 but \"24\" on 10.0.0.2:7800",
            ]
        );
        assert!(compare(&a, &a).is_empty());
        let c = config("fence.mode=drop\nnode.timeout=0.5s", "10.0.0.3:7800");
        let diff = compare(&a, &c);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("node.timeout differs: \"50\""));
        assert!(diff[1].starts_with("fence.mode differs: \"reset\""));
    }
}
