//! The documented property template (`conf/efm.properties.in`), generated from the property
//! table so the two never disagree. A test compares the committed file with [`properties`];
//! regenerate it with `EFM_BLESS=1 cargo test -p efm-agent --lib template`.

use std::fmt::Write as _;

use super::properties::{unsupported, Support, PROPERTIES};

/// Properties every database node must set (see the loader's required-property check).
const REQUIRED: &[&str] = &["db.user", "db.port", "db.database", "db.service.owner", "bind.address", "db.data.dir"];

/// The text of `conf/efm.properties.in`.
#[must_use]
pub fn properties() -> String {
    let mut out = String::from(
        "# efm cluster properties template.\n\
         #\n\
         # Copy to /etc/efm/<cluster>.properties (mode 0640, root:efm) on every node and fill in the\n\
         # required values. Format as EFM's: key=value, one per line, '#' starts a comment, no\n\
         # quotes. An empty value means the default. Properties marked \"same on every node\" must\n\
         # carry the same value on all nodes of the cluster (`efm prop-check` shows the effective\n\
         # values). EFM 3.x/4.x files can be converted with `efm upgrade-conf`.\n\
         #\n\
         # Never point ping.server.ip at a public address you do not control.\n",
    );
    for p in PROPERTIES {
        out.push('\n');
        let mut desc = p.description.to_owned();
        if let Some(first) = desc.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let _ = writeln!(out, "# {desc}.");
        let default =
            if p.default.is_empty() { "not set".to_owned() } else { p.default.replace("{cluster}", "<cluster>") };
        let required = if REQUIRED.contains(&p.name) { " Required." } else { "" };
        let scope = if p.must_match { "same on every node" } else { "may differ between nodes" };
        let _ = writeln!(out, "# {}; default: {default}; {scope}.{required}", p.kind.describe());
        let value = if p.default.contains("{cluster}") { "" } else { p.default };
        if let Some(u) = unsupported(p.name) {
            // Read but not acted on: said here, commented out, and warned about when set.
            let what = match u.support {
                Support::NotInEfm => "Not supported by efm",
                Support::NotYet => "Not implemented yet in efm",
            };
            let note = format!("{what}: setting it has no effect (prop-check and the agent warn): {}.", u.reason);
            for line in wrap(&note, 96) {
                let _ = writeln!(out, "# {line}");
            }
            let _ = writeln!(out, "#{}={value}", p.name);
        } else {
            let _ = writeln!(out, "{}={value}", p.name);
        }
    }
    out
}

/// `text` split at spaces into lines of at most `width` characters (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The text of `conf/efm.nodes.in`.
#[must_use]
pub fn nodes() -> String {
    "# efm cluster members: <cluster>.nodes, next to <cluster>.properties.\n\
     #\n\
     # The bind.address (ip:port) of every node of the cluster, separated by spaces or new lines;\n\
     # IPv6 as [address]:port. The same list on every node. For example:\n\
     # 192.0.2.10:7800 192.0.2.11:7800 192.0.2.12:7800\n"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn conf_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("conf")
    }

    #[test]
    fn committed_templates_are_current() {
        for (name, text) in [("efm.properties.in", properties()), ("efm.nodes.in", nodes())] {
            let path = conf_dir().join(name);
            if std::env::var_os("EFM_BLESS").is_some() {
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} is out of date with the property table; regenerate it with \
                 `EFM_BLESS=1 cargo test -p efm-agent --lib template`",
                path.display()
            );
        }
    }

    #[test]
    fn template_names_only_current_properties_and_loads_once_filled() {
        let filled = properties()
            .lines()
            .map(|l| match l.split_once('=') {
                Some(("db.user", _)) => "db.user=efm".to_owned(),
                Some(("db.port", _)) => "db.port=5432".to_owned(),
                Some(("db.database", _)) => "db.database=postgres".to_owned(),
                Some(("db.service.owner", _)) => "db.service.owner=postgres".to_owned(),
                Some(("db.data.dir", _)) => "db.data.dir=/var/lib/postgresql/15/main".to_owned(),
                Some(("bind.address", _)) => "bind.address=192.0.2.10:7800".to_owned(),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let loaded =
            super::super::from_properties(&filled, std::path::Path::new("efm.properties"), "acctg", Vec::new())
                .unwrap_or_else(|e| panic!("the filled template does not load:\n{e}"));
        assert!(loaded.warnings.is_empty(), "template warnings: {:?}", loaded.warnings);
        assert!(!properties().contains("8.8.8.8"), "no public ping address in the template");
    }
}
