//! EFM file compatibility (issue 15): Java properties syntax, EFM 2.0 `.nodes` files, host
//! names, alias interfaces, EFM-encrypted passwords, timing remarks. The files are shaped like
//! the EFM guides' examples (2.0 guide section 3.2.1/3.2.2, the 3.3 template).
//!
//! No test asks a name server: host names go through [`TableResolver`] (or a resolver that
//! fails the test if it is asked at all); only `localhost`, which `/etc/hosts` answers, goes
//! through the system resolver.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::prop_check_with;
use super::upgrade::{upgrade_text, Change};
use super::value::{Resolve, TableResolver};
use super::*;

const FILE: &str = "/etc/efm/acctg.properties";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Names the tests resolve; anything else "does not resolve".
fn table() -> TableResolver {
    TableResolver(vec![
        ("db1.example".into(), vec![ip("198.18.0.1")]),
        ("db2.example".into(), vec![ip("198.18.0.2")]),
        ("db3.example".into(), vec![ip("198.18.0.3")]),
        ("vip.example".into(), vec![ip("198.18.0.100")]),
        ("multi.example".into(), vec![ip("198.18.0.1"), ip("fd00:efd::1")]),
    ])
}

/// A resolver that must not be asked (syntax errors are found before resolving).
struct NeverAsked;
impl Resolve for NeverAsked {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        panic!("resolver asked about {host:?}")
    }
}

fn load_with_resolver(text: &str, nodes: Vec<SocketAddr>, r: &dyn Resolve) -> Result<Loaded, ConfigErrors> {
    from_properties_with(text, Path::new(FILE), "acctg", nodes, r)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("efm-compat-{tag}-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The 2.0 guide's section 3.2.1 file, written with every Java properties form EFM accepts.
const JAVA_SYNTAX: &str = "\
# The full license to run failover manager.
efm.license=
! a comment in the other Java style
auto.failover=true
db.user: efm
db.password.encrypted efm1:0011223344556677889900aa:bbcc
db.port    =    5444
db.database=acctg\\
            _db
db.service.owner=enterprise\\u0064b
db.recovery.conf.dir=/opt/PostgresPlus/9.4AS/data
bind.address=198.18.0.1:7800
# a comment ending in a backslash does not continue \\
script.fence=/usr/local/bin/fence.sh --tag a\\=b
user.email=dba@example.com   \t
";

#[test]
fn java_properties_syntax_reads_as_java_does() {
    let l = load_with_resolver(JAVA_SYNTAX, vec![], &NeverAsked).unwrap_or_else(|e| panic!("{e}"));
    let c = &l.config;
    assert!(c.auto_failover);
    assert_eq!(c.db_user, "efm", "key: value");
    assert_eq!(c.db_password_encrypted.as_deref(), Some("efm1:0011223344556677889900aa:bbcc"), "key value");
    assert_eq!(c.db_port, 5444, "blanks around =");
    assert_eq!(c.db_database, "acctg_db", "continuation, leading blanks of the next line dropped");
    assert_eq!(c.db_service_owner.as_deref(), Some("enterprisedb"), "\\u0064 is d");
    assert_eq!(c.script_fence.as_deref(), Some("/usr/local/bin/fence.sh --tag a=b"), "\\= in a value");
    assert_eq!(c.user_email, ["dba@example.com"], "trailing blanks removed");
    // The continued line does not shift later line numbers: the file has one entry per line
    // from bind.address on.
    let entries = parse_properties(JAVA_SYNTAX, Path::new(FILE)).unwrap();
    let line = |k: &str| entries.iter().find(|e| e.key == k).unwrap().line;
    assert_eq!(line("db.database"), 8);
    assert_eq!(line("db.service.owner"), 10);
    assert_eq!(line("bind.address"), 12);
    assert_eq!(line("script.fence"), 14, "the comment ending in \\ did not swallow it");
}

#[test]
fn escaped_separators_in_keys_and_odd_backslashes() {
    let text = "my\\=key\\:x\\ y=1\nz.path=C:\\\\temp\\\\\nend=1\n";
    let e = parse_properties(text, Path::new(FILE)).unwrap();
    assert_eq!(e[0].key, "my=key:x y");
    assert_eq!(e[0].value, "1");
    // An even number of trailing backslashes is an escaped backslash, not a continuation.
    assert_eq!(e[1].value, "C:\\temp\\");
    assert_eq!(e[2].key, "end");
    // An odd number continues.
    let e = parse_properties("a=x\\\\\\\n  y\n", Path::new(FILE)).unwrap();
    assert_eq!(e[0].value, "x\\y");
    // A backslash at the end of the file ends the value.
    let e = parse_properties("a=x\\", Path::new(FILE)).unwrap();
    assert_eq!(e[0].value, "x");
}

#[test]
fn what_efm_rejects_or_doubts_is_said_with_file_and_line() {
    let base = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
                db.data.dir=/var/lib/edb/data\nbind.address=198.18.0.1:7800\n";
    // A malformed \u escape is an error naming the line and the key.
    let e = load_with_resolver(&format!("{base}script.fence=/bin/f \\u12G4\n"), vec![], &NeverAsked).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        e.to_string(),
        "/etc/efm/acctg.properties:7: script.fence: malformed \\uXXXX escape \"\\u12\": expected four hexadecimal digits"
    );
    // A bare key loads as empty, with a warning.
    let l = load_with_resolver(&format!("{base}auto.failover\n"), vec![], &NeverAsked).unwrap();
    assert!(l.config.auto_failover, "empty means the default");
    let w = l.warnings.iter().find(|w| w.property.as_deref() == Some("auto.failover")).unwrap();
    assert_eq!((w.severity, w.line), (Severity::Warning, Some(7)));
    assert!(w.message.contains("no '=' and no value"), "{w}");
    // A backslash Java drops is noted.
    let l = load_with_resolver(&format!("{base}notification.text.prefix=[\\q]\n"), vec![], &NeverAsked).unwrap();
    assert_eq!(l.config.notification_text_prefix.as_deref(), Some("[q]"));
    let n = l.warnings.iter().find(|w| w.property.as_deref() == Some("notification.text.prefix")).unwrap();
    assert_eq!((n.severity, n.line), (Severity::Notice, Some(7)));
    assert!(n.message.contains("\"\\q\" reads as \"q\""), "{n}");
    // A repeated key is an error (Java would keep the last silently).
    let e = load_with_resolver(&format!("{base}db.port: 5445\n"), vec![], &NeverAsked).unwrap_err();
    assert!(e.to_string().contains(":7: db.port: set twice, on lines 2 and 7"), "{e}");
}

/// EFM 2.0 members files (guide section 3.2.2) list the *other* members.
#[test]
fn efm20_nodes_files_list_the_others_and_this_node_is_added() {
    let props = |me: &str| {
        format!(
            "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
             db.data.dir=/var/lib/edb/data\nbind.address={me}\n"
        )
    };
    let all = ["198.18.0.1:7800", "198.18.0.2:7800", "198.18.0.3:7800"];
    let mut member_sets = Vec::new();
    for me in all {
        // "10.0.1.8:7800 10.0.1.9:7800" in the guide: the two others, one line.
        let others: String = all.iter().filter(|a| **a != me).copied().collect::<Vec<_>>().join(" ");
        let nodes = parse_nodes(&format!("{others}\n"), Path::new("/etc/efm/acctg.nodes")).unwrap();
        assert_eq!(nodes.len(), 2);
        let c = load_with_resolver(&props(me), nodes, &NeverAsked).unwrap().config;
        assert!(!c.nodes_file_lists_self);
        assert!(c.nodes.contains(&sa(me)), "this node is a member");
        let mut set = c.nodes.clone();
        set.sort();
        member_sets.push(set);
    }
    // Every node ends up with the same full member set: the coordination bootstrap
    // initializes the cluster from it (identical everywhere), so a leader is elected.
    assert_eq!(member_sets[0], all.map(sa).to_vec());
    assert!(member_sets.iter().all(|s| *s == member_sets[0]));
    // A 3.x file that lists this node too is unchanged.
    let c = load_with_resolver(&props(all[0]), all.map(sa).to_vec(), &NeverAsked).unwrap().config;
    assert!(c.nodes_file_lists_self);
    assert_eq!(c.nodes.len(), 3);

    // prop-check explains it.
    let dir = temp_dir("nodes20");
    std::fs::write(dir.join("acctg.properties"), props(all[0])).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let r = prop_check_with(&dir, "acctg", &NeverAsked);
    let out = r.render();
    assert_eq!((r.exit_code(), r.errors(), r.warnings()), (0, 0, 0), "{out}");
    assert!(
        out.contains("  198.18.0.1:7800  (this node, from bind.address: added, the file lists only the others)"),
        "{out}"
    );
    assert!(out.contains("note: acctg.nodes: does not list this node (198.18.0.1:7800, bind.address): read as an EFM 2.0 members file"), "{out}");
    assert!(out.contains("the cluster members are 198.18.0.2:7800 198.18.0.3:7800 198.18.0.1:7800"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_names_are_resolved_at_load() {
    let text = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
                db.data.dir=/var/lib/edb/data\nbind.address=db1.example:7800\nvirtualIp=vip.example\n\
                virtualIp.prefix=24\n";
    let nodes = parse_nodes_with(
        "db2.example:7800 db3.example:7800\n",
        Path::new("/etc/efm/acctg.nodes"),
        &table(),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(nodes, [sa("198.18.0.2:7800"), sa("198.18.0.3:7800")]);
    let l = load_with_resolver(text, nodes, &table()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.config.bind_address, sa("198.18.0.1:7800"));
    assert_eq!(l.config.virtual_ip, Some(ip("198.18.0.100")));
    assert_eq!(l.config.nodes.len(), 3);
    assert!(
        l.warnings.iter().all(|w| w.severity == Severity::Notice || w.message.contains("deprecated")),
        "{:?}",
        l.warnings
    );

    // Not resolving: the file, line, property and name.
    let bad = text.replace("vip.example", "vip9.example");
    let e = load_with_resolver(&bad, vec![], &table()).unwrap_err().to_string();
    assert!(
        e.contains("/etc/efm/acctg.properties:7: virtualIp = \"vip9.example\": host name \"vip9.example\" does not resolve (Name or service not known)"),
        "{e}"
    );
    let e = parse_nodes_with(
        "db2.example:7800\n\n db9.example:7800\n",
        Path::new("/etc/efm/acctg.nodes"),
        &table(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(3));
    assert!(
        e[0].to_string().starts_with(
            "/etc/efm/acctg.nodes:3: bad node entry \"db9.example:7800\": host name \"db9.example\" does not resolve"
        ),
        "{}",
        e[0]
    );

    // Several addresses: a note saying which one is used and why.
    let multi = text.replace("bind.address=db1.example:7800", "bind.address=multi.example:7800");
    let l = load_with_resolver(&multi, vec![], &table()).unwrap();
    assert_eq!(l.config.bind_address, sa("198.18.0.1:7800"));
    let n = l.warnings.iter().find(|w| w.property.as_deref() == Some("bind.address")).unwrap();
    assert_eq!((n.severity, n.line), (Severity::Notice, Some(6)));
    assert!(
        n.message.contains("resolves to 2 addresses (198.18.0.1, fd00:efd::1); efm uses 198.18.0.1:7800, the first"),
        "{n}"
    );
    let mut multi_notes = Vec::new();
    parse_nodes_with("multi.example:7800\n", Path::new("/etc/efm/acctg.nodes"), &table(), &mut multi_notes).unwrap();
    assert_eq!(multi_notes.len(), 1);
    assert!(
        multi_notes[0]
            .to_string()
            .contains("acctg.nodes:1: note: \"multi.example:7800\": host name multi.example resolves to 2 addresses"),
        "{}",
        multi_notes[0]
    );

    // A malformed name is refused without asking the resolver.
    let e = load_with_resolver(
        &text
            .replace("bind.address=db1.example:7800", "bind.address=db_1!:7800")
            .replace("vip.example", "198.18.0.100"),
        vec![],
        &NeverAsked,
    )
    .unwrap_err();
    assert!(e.to_string().contains("bind.address = \"db_1!:7800\": expected ip:port"), "{e}");
    assert!(parse_nodes_with("db_1!:7800\n", Path::new("n"), &NeverAsked, &mut Vec::new()).is_err());
}

/// `localhost` through the system resolver (answered by /etc/hosts, no name server).
#[test]
fn localhost_resolves_through_the_system_resolver() {
    let nodes = parse_nodes("localhost:7800\n", Path::new("/etc/efm/acctg.nodes")).unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].ip().is_loopback(), "{nodes:?}");
    assert_eq!(nodes[0].port(), 7800);
}

#[test]
fn alias_interface_is_base_plus_label() {
    assert_eq!(split_alias("eth0:0"), Some("eth0"));
    assert_eq!(split_alias("eth0"), None);
    assert_eq!(split_alias(":0"), None);
    // The 2.0 guide's VIP example (section 3.3).
    let text = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
                db.data.dir=/var/lib/edb/data\nbind.address=198.18.0.1:7800\nvirtualIp=198.18.0.239\n\
                virtualIp.interface=eth0:0\nvirtualIp.netmask=255.255.255.0\n";
    let c = load_with_resolver(text, vec![], &NeverAsked).unwrap().config;
    assert_eq!(c.virtual_ip_interface.as_deref(), Some("eth0"));
    assert_eq!(c.virtual_ip_label.as_deref(), Some("eth0:0"));
    assert_eq!(effective_of(&c, "virtual.ip.interface"), "eth0:0", "the listing shows what was written");
    let dir = temp_dir("alias");
    std::fs::write(dir.join("acctg.properties"), text).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let out = prop_check_with(&dir, "acctg", &NeverAsked).render();
    assert!(
        out.contains("Virtual IP: 198.18.0.239/24 is added to interface eth0 with the address label eth0:0"),
        "{out}"
    );
    assert!(out.contains("XDP attaches to the interface holding bind.address"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn effective_of(c: &Config, name: &str) -> String {
    c.effective().into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap()
}

/// The 2.0 guide's encrypt example value.
const EFM_ENCRYPTED: &str = "835fb18954f198e94fd3d6f4b070350b";

#[test]
fn efm_encrypted_password_is_flagged_with_the_step() {
    let text = format!(
        "db.user=efm\ndb.password.encrypted={EFM_ENCRYPTED}\ndb.port=5444\ndb.database=edb\n\
         db.service.owner=enterprisedb\ndb.data.dir=/var/lib/edb/data\nbind.address=198.18.0.1:7800\n"
    );
    // The agent's start error.
    let e = load_with_resolver(&text, vec![], &NeverAsked).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "/etc/efm/acctg.properties:2: db.password.encrypted: this value was encrypted by EDB Failover Manager"
        ),
        "{e}"
    );
    assert!(e.contains("Run `efm encrypt acctg`") && e.contains("--from-env"), "{e}");
    assert!(!e.contains(EFM_ENCRYPTED), "the value is not repeated: {e}");
    // prop-check: an error with the step, not "(set)".
    let dir = temp_dir("efmpw");
    std::fs::write(dir.join("acctg.properties"), &text).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800 198.18.0.2:7800 198.18.0.3:7800\n").unwrap();
    let r = prop_check_with(&dir, "acctg", &NeverAsked);
    let out = r.render();
    assert_eq!(r.exit_code(), 1, "{out}");
    assert!(out.contains("db.password.encrypted        = (EFM-encrypted: efm cannot use it, see below)"), "{out}");
    assert!(
        out.contains(
            "error: acctg.properties:2: db.password.encrypted: this value was encrypted by EDB Failover Manager"
        ),
        "{out}"
    );
    assert!(!out.contains(EFM_ENCRYPTED), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
    // upgrade-conf: commented out with the same step.
    let u = upgrade_text("acctg", &text, "");
    assert!(
        u.changes.iter().any(|c| matches!(c, Change::CommentedOut { name, reason, line: 2 }
        if name == "db.password.encrypted" && reason.contains("Run `efm encrypt acctg`"))),
        "{}",
        u.render_changes()
    );
    assert!(
        u.properties_text.contains(&format!("\n#db.password.encrypted={EFM_ENCRYPTED}\n")),
        "{}",
        u.properties_text
    );
    // efm's own format passes.
    assert!(!is_efm_java_encrypted("efm1:00112233445566778899aabb:cafe"));
    assert!(is_efm_java_encrypted(EFM_ENCRYPTED));
}

/// The 3.3 template's `node.timeout=50` and the 2.0 guide's `JGroups` timing.
#[test]
#[allow(clippy::many_single_char_names)]
fn timing_remarks_for_node_timeout_and_jgroups() {
    let base = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=enterprisedb\n\
                db.data.dir=/var/lib/edb/data\nbind.address=198.18.0.1:7800\n";
    let l = load_with_resolver(&format!("{base}node.timeout=50\n"), vec![], &NeverAsked).unwrap();
    assert_eq!(l.config.node_timeout, Duration::from_secs(50));
    let n = l.warnings.iter().find(|w| w.property.as_deref() == Some("node.timeout")).unwrap();
    assert_eq!((n.severity, n.line), (Severity::Notice, Some(7)));
    assert!(n.message.contains("efm reads this as 50s") && n.message.contains("node.timeout=0.5s"), "{n}");
    assert!(load_with_resolver(&format!("{base}node.timeout=0.5s\n"), vec![], &NeverAsked)
        .unwrap()
        .warnings
        .is_empty());

    let l =
        load_with_resolver(&format!("{base}jgroups.max.tries=8\njgroups.timeout=5000\n"), vec![], &NeverAsked).unwrap();
    let t = l.warnings.iter().find(|w| w.property.as_deref() == Some("jgroups.timeout")).unwrap();
    assert_eq!(t.line, Some(8));
    assert!(
        t.message.contains(
            "node.timeout replaces it (the same detection time is node.timeout=5s; efm uses node.timeout=500ms"
        ),
        "{t}"
    );
    let m = l.warnings.iter().find(|w| w.property.as_deref() == Some("jgroups.max.tries")).unwrap();
    assert!(m.message.contains("one every 625ms: the same cadence is heartbeat.interval=625ms"), "{m}");
    assert!(
        !l.warnings.iter().any(|w| w.message.contains("only meaningful to the Java")),
        "not dismissed as Java-only"
    );
    // upgrade-conf writes the mapping next to the commented-out lines.
    let u = upgrade_text("acctg", &format!("{base}jgroups.max.tries=8\njgroups.timeout=5000\n"), "");
    let out = &u.properties_text;
    assert!(
        out.contains("the same detection time is node.timeout=5s") && out.contains("\n#jgroups.timeout=5000\n"),
        "{out}"
    );
    assert!(out.contains("heartbeat.interval=625ms") && out.contains("\n#jgroups.max.tries=8\n"), "{out}");
}

#[test]
fn upgrade_conf_writes_java_syntax_as_key_value() {
    let u = upgrade_text("acctg", JAVA_SYNTAX, "");
    let out = &u.properties_text;
    assert!(out.contains("\ndb.user=efm\n"), "{out}");
    assert!(out.contains("\ndb.database=acctg_db\n"), "{out}");
    assert!(out.contains("\ndb.service.owner=enterprisedb\n"), "{out}");
    assert!(out.contains("\nscript.fence=/usr/local/bin/fence.sh --tag a=b\n"), "{out}");
    assert!(out.contains("\n! a comment in the other Java style\n"), "comments kept: {out}");
    assert!(
        u.changes.iter().any(|c| matches!(c, Change::Converted { from, detail, line: 5, .. }
        if from == "db.user" && detail.contains("Java properties syntax"))),
        "{}",
        u.render_changes()
    );
    // And the result loads to the same values.
    let dir = temp_dir("upjava");
    u.write_to(&dir, "acctg", false).unwrap();
    std::fs::write(dir.join("acctg.nodes"), "198.18.0.1:7800\n").unwrap();
    let c = load(&dir, "acctg").unwrap_or_else(|e| panic!("{e}")).config;
    assert_eq!(c.db_database, "acctg_db");
    assert_eq!(c.script_fence.as_deref(), Some("/usr/local/bin/fence.sh --tag a=b"));
    std::fs::remove_dir_all(&dir).unwrap();
}
