//! Every property of the template is either effective (the agent reads it, and setting it draws
//! no remark) or reported as not supported / not implemented yet when set — never silently
//! dropped. The template's keys are enumerated from `conf/efm.properties.in` as generated, so a
//! new property without handling fails here.

use std::{collections::BTreeSet, path::Path};

use super::{
    check::prop_check_with,
    properties::{find, unsupported, Support, PROPERTIES, UNSUPPORTED},
    template,
    value::{Kind, TableResolver},
    Severity,
};

/// Every `key=value` of the template, commented out (`#key=value`: the unsupported ones) or
/// not, with the template's value.
fn template_entries() -> Vec<(String, String, bool)> {
    template::properties()
        .lines()
        .filter_map(|l| {
            let (commented, rest) = match l.strip_prefix('#') {
                Some(r) => (true, r),
                None => (false, l),
            };
            let (k, v) = rest.split_once('=')?;
            find(k).map(|_| (k.to_owned(), v.to_owned(), commented))
        })
        .collect()
}

/// A valid value of `kind` for a property the template leaves empty.
fn sample(name: &str, kind: Kind) -> String {
    match name {
        "db.user" => "efm".into(),
        "db.port" => "5432".into(),
        "db.database" | "db.service.owner" => "postgres".into(),
        "bind.address" => "198.18.0.1:7800".into(),
        "virtual.ip" => "198.18.0.100".into(),
        "priority.standbys" => "198.18.0.2:7800".into(),
        "ping.server.ip" => "198.18.0.254".into(),
        "health.listen.address" => "127.0.0.1:8008".into(),
        "cluster.key.file" => "/etc/efm/acctg.key".into(),
        "db.password.encrypted" => "efm1:516b36fb8031da17cfbc010f:7d09359c".into(),
        _ => match kind {
            Kind::Bool => "false".into(),
            Kind::Port => "9999".into(),
            Kind::UInt | Kind::Duration => "1".into(),
            Kind::Enum(words) => words[0].into(),
            Kind::Ip => "198.18.0.9".into(),
            Kind::IpPort => "198.18.0.9:7800".into(),
            Kind::Host => "127.0.0.1".into(),
            Kind::AbsPath => "/var/lib/efm-test".into(),
            Kind::Command => "/bin/true".into(),
            Kind::Text => "text".into(),
            Kind::Email | Kind::EmailList => "dba@example.com".into(),
            Kind::Prefix => "24".into(),
            Kind::NodeList => "198.18.0.2:7800".into(),
            Kind::CidrList => "198.18.5.0/24".into(),
            Kind::Interface => "lo".into(),
        },
    }
}

/// A value of an unsupported property that asks for something efm does not do (not one of its
/// inert values).
fn active_value(name: &str) -> String {
    let u = unsupported(name).unwrap();
    let def = find(name).unwrap();
    let candidates: Vec<String> = match def.kind {
        Kind::Bool => vec!["true".into(), "false".into()],
        Kind::Duration => vec!["5".into()],
        _ => vec![sample(name, def.kind)],
    };
    candidates.into_iter().find(|c| !u.inert.contains(&c.as_str())).unwrap()
}

/// Runs `efm prop-check`'s engine on a properties file with `entries` and returns, per property
/// of the template, the diagnostics naming it.
fn prop_check_every(entries: &[(String, String)], tag: &str) -> Vec<(String, Vec<super::Diagnostic>)> {
    let dir = std::env::temp_dir().join(format!("efm-unsupported-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = entries.iter().flat_map(|(k, v)| [k.as_str(), "=", v.as_str(), "\n"]).collect();
    std::fs::write(dir.join("acctg.properties"), &text).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let report = prop_check_with(&dir, "acctg", &TableResolver::default());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.errors(), 0, "the file loads:\n{text}\n{:#?}", report.diagnostics);
    entries
        .iter()
        .map(|(k, _)| {
            let d = report.diagnostics.iter().filter(|d| d.property.as_deref() == Some(k.as_str())).cloned().collect();
            (k.clone(), d)
        })
        .collect()
}

#[test]
fn the_template_lists_every_property_and_comments_out_exactly_the_unsupported_ones() {
    let entries = template_entries();
    let keys: BTreeSet<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
    let all: BTreeSet<&str> = PROPERTIES.iter().map(|d| d.name).collect();
    assert_eq!(keys, all, "the template names every property once");
    for (k, _, commented) in &entries {
        assert_eq!(*commented, unsupported(k).is_some(), "{k}: commented out in the template iff not supported");
    }
    let text = template::properties();
    for u in UNSUPPORTED {
        let what = match u.support {
            Support::NotInEfm => "# Not supported by efm",
            Support::NotYet => "# Not implemented yet in efm",
        };
        let block = text.split("\n\n").find(|b| b.contains(&format!("\n#{}=", u.name))).unwrap();
        assert!(block.contains(what), "{}: the template says why: {block}", u.name);
    }
}

/// Every property of the template set (the template's value, or a sample where it has none):
/// an effective one draws no remark at all, an unsupported one a note or warning naming it and
/// saying it is not supported or not implemented yet.
#[test]
fn prop_check_on_every_template_property_reports_each_unsupported_one_and_nothing_else() {
    let entries: Vec<(String, String)> = template_entries()
        .into_iter()
        .map(|(k, v, _)| {
            let v = if v.is_empty() { sample(&k, find(&k).unwrap().kind) } else { v };
            (k, v)
        })
        .collect();
    let mut reported = Vec::new();
    for (k, diags) in prop_check_every(&entries, "template") {
        match unsupported(&k) {
            None => assert!(diags.is_empty(), "{k} is effective, yet prop-check says: {diags:#?}"),
            Some(u) => {
                let what = match u.support {
                    Support::NotInEfm => "not supported by efm, so setting it has no effect",
                    Support::NotYet => "not implemented yet in efm, so setting it has no effect",
                };
                assert!(
                    diags.len() == 1 && diags[0].message.starts_with(what) && diags[0].message.contains(u.reason),
                    "{k}: one remark saying {what:?}: {diags:#?}"
                );
                reported.push(k);
            }
        }
    }
    assert_eq!(reported.len(), UNSUPPORTED.len(), "{reported:?}");
}

/// An unsupported property set to a value asking for what efm does not do is a warning (not a
/// note), naming the property, its value and the reason.
#[test]
fn an_unsupported_property_asking_for_something_is_a_warning() {
    let mut entries: Vec<(String, String)> = ["db.user", "db.port", "db.database", "db.service.owner", "bind.address"]
        .iter()
        .map(|k| ((*k).to_owned(), sample(k, Kind::Text)))
        .collect();
    entries.push(("db.data.dir".into(), "/var/lib/postgresql/15/main".into()));
    for u in UNSUPPORTED {
        entries.push((u.name.to_owned(), active_value(u.name)));
    }
    for (k, diags) in prop_check_every(&entries, "active") {
        let Some(u) = unsupported(&k) else { continue };
        assert!(
            diags.len() == 1
                && diags[0].severity == Severity::Warning
                && diags[0].value.as_deref() == Some(active_value(&k).as_str())
                && diags[0].message.contains(u.reason),
            "{k}: {diags:#?}"
        );
        let shown = diags[0].to_string();
        assert!(shown.contains(&format!("warning: {k} = \"")), "{shown}");
    }
}

/// The classification matches the code: a property the agent reads outside `config/` must not
/// be listed as unsupported, and one nobody reads must be (so implementing one means taking it
/// off the list, and a new property is either used or reported).
#[test]
fn unsupported_properties_are_not_read_and_the_others_are() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut code = String::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if p != src.join("config") && name != "tests" && name != "sim" {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
                code.push_str(&std::fs::read_to_string(&p).unwrap());
                code.push('\n');
            }
        }
    }
    // The fields of Config that are derived, not one property each.
    let derived = ["virtual.ip.interface"];
    for def in PROPERTIES {
        if derived.contains(&def.name) {
            continue;
        }
        let field = def.name.replace('.', "_");
        let read = code
            .match_indices(&format!(".{field}"))
            .any(|(i, m)| !code[i + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        match (unsupported(def.name).is_some(), read) {
            (true, true) => panic!(
                "{} is listed in properties::UNSUPPORTED but the agent reads `.{field}`: take it off the list \
                 (and out of the template's not-supported notes) once it works",
                def.name
            ),
            (false, false) => panic!(
                "{} is read by no code outside config/ (`.{field}`): implement it, or add it to \
                 properties::UNSUPPORTED with the reason",
                def.name
            ),
            _ => {}
        }
    }
}
