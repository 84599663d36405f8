use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use super::files::write_atomic;
use super::*;

#[test]
fn conninfo_parses_libpq_quoting_and_escapes() {
    let ci = ConnInfo::parse(
        r"user=repuser passfile='/var/lib/pg/my pass' host = 198.18.0.1 port=5432 application_name='it\'s b' opt=a\ b sslmode='require' empty=''",
    )
    .unwrap();
    assert_eq!(ci.get("user"), Some("repuser"));
    assert_eq!(ci.get("passfile"), Some("/var/lib/pg/my pass"));
    assert_eq!(ci.get("host"), Some("198.18.0.1"));
    assert_eq!(ci.get("application_name"), Some("it's b"));
    assert_eq!(ci.get("opt"), Some("a b"));
    assert_eq!(ci.get("empty"), Some(""));
    assert_eq!(ci.pairs().len(), 8);
    assert!(ConnInfo::parse("").unwrap().is_empty());
    assert!(ConnInfo::parse("   ").unwrap().is_empty());
    // What libpq refuses.
    assert_eq!(ConnInfo::parse("host").unwrap_err().what, "missing \"=\" after a keyword");
    assert_eq!(ConnInfo::parse("host='x").unwrap_err().what, "unterminated quoted value");
    assert_eq!(ConnInfo::parse("host=x\\").unwrap_err().what, "trailing backslash");
    assert_eq!(ConnInfo::parse("=x").unwrap_err().what, "empty keyword");
    assert!(ConnInfo::parse("postgresql://u@h/db").is_err());
}

#[test]
fn conninfo_round_trips_through_every_quoting() {
    let nasty = r"pa'ss\wo rd =x";
    let ci: ConnInfo = [
        ("user".to_owned(), "rep user".to_owned()),
        ("password".to_owned(), nasty.to_owned()),
        ("application_name".to_owned(), "node b".to_owned()),
    ]
    .into_iter()
    .collect();
    let text = ci.conninfo();
    assert_eq!(text, r"user='rep user' password='pa\'ss\\wo rd =x' application_name='node b'");
    assert_eq!(ConnInfo::parse(&text).unwrap(), ci);
    // The probes' reading of the same string agrees.
    assert_eq!(crate::postgres::conninfo_value(&text, "password").as_deref(), Some(nasty));
    // Into a configuration file and back.
    let line = set_conf_line(None, "primary_conninfo", &text);
    assert_eq!(conf_value(&line, "primary_conninfo").as_deref(), Some(text.as_str()));
    // Redaction.
    assert!(!ci.redacted().contains("wo rd"));
    assert!(!format!("{ci:?}").contains("wo rd"));
    assert!(ci.redacted().contains("password=********"));
}

#[test]
fn retarget_changes_only_host_and_port() {
    // What pg_basebackup -R writes, in its order.
    let own = ConnInfo::parse(
        "user=repuser passfile='/tmp/p/pgpass' channel_binding=prefer host=198.18.0.1 port=5432 \
         sslmode=prefer sslcompression=0 sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer \
         krbsrvname=postgres target_session_attrs=any application_name=n2",
    )
    .unwrap();
    let mut up = Upstream::new("198.18.0.3", 5433, "efm");
    up.application_name = Some("198.18.0.9".into());
    let ci = up.conninfo_for(Some(&own));
    assert_eq!(ci.pairs().len(), own.pairs().len());
    for ((k, v), (k0, v0)) in ci.pairs().iter().zip(own.pairs()) {
        assert_eq!(k, k0, "order kept");
        match k.as_str() {
            "host" => assert_eq!(v, "198.18.0.3"),
            "port" => assert_eq!(v, "5433"),
            _ => assert_eq!(v, v0, "{k} kept"),
        }
    }
    assert_eq!(ci.get("user"), Some("repuser"), "never the monitoring user");
    assert_eq!(ci.get("application_name"), Some("n2"), "the standby keeps its own name");
    // hostaddr would override host: removed; a host list becomes the one host; port added.
    let own = ConnInfo::parse("host=a,b hostaddr=198.18.0.1 user=r").unwrap();
    let ci = up.conninfo_for(Some(&own));
    assert_eq!(ci.conninfo(), "host='198.18.0.3' user='r' port='5433'");
    // Repeated keys: libpq takes the last; set keeps one.
    let mut ci = ConnInfo::parse("host=a user=x host=b").unwrap();
    assert_eq!(ci.get("host"), Some("b"));
    ci.set("host", "c");
    assert_eq!(ci.conninfo(), "host='c' user='x'");
}

#[test]
fn template_is_used_without_own_settings_and_with_sourcenode() {
    let template =
        ConnInfo::parse("user=repuser passfile=/p sslmode=require host=198.18.0.2 port=5432 application_name=n2")
            .unwrap();
    let mut up = Upstream::new("198.18.0.2", 5432, "efm");
    up.template = template;
    up.application_name = Some("n1".into());
    for own in [None, Some(ConnInfo::default())] {
        let ci = up.conninfo_for(own.as_ref());
        assert_eq!(
            ci.conninfo(),
            "user='repuser' passfile='/p' sslmode='require' host='198.18.0.2' port='5432' application_name='n1'"
        );
    }
    // The server's own settings win over the template...
    let own = ConnInfo::parse("user=other host=x port=1").unwrap();
    assert_eq!(up.conninfo_for(Some(&own)).get("user"), Some("other"));
    // ...unless the operator named a source node.
    up.replace_own = true;
    assert_eq!(up.conninfo_for(Some(&own)).get("user"), Some("repuser"));
    // Without an application name of its own the template's (another node's) is dropped.
    up.application_name = None;
    assert_eq!(up.conninfo_for(None).get("application_name"), None);
    // The minimal template: the user only, never a password.
    let ci = Upstream::new("h", 1, "efm").conninfo_for(None);
    assert_eq!(ci.conninfo(), "user='efm' host='h' port='1'");
}

#[test]
fn conf_values_unquote_as_the_server_does() {
    assert_eq!(unquote_conf_value(r"'a''b\\c\n\101x' # comment").as_deref(), Some("a'b\\c\nAx"));
    assert_eq!(unquote_conf_value("bare # comment").as_deref(), Some("bare"));
    assert_eq!(unquote_conf_value("'open"), None);
    let text = "primary_conninfo = 'host=a'\n#primary_conninfo = 'host=c'\nprimary_conninfo='host=''b'''\nprimary_conninfo_x = 'z'\n";
    assert_eq!(conf_value(text, "primary_conninfo").as_deref(), Some("host='b'"));
    assert_eq!(conf_value(text, "PRIMARY_CONNINFO").as_deref(), Some("host='b'"));
    assert_eq!(conf_value("work_mem = 1\n", "primary_conninfo"), None);
}

#[test]
fn own_settings_are_read_from_the_data_directory() {
    let d = std::env::temp_dir().join(format!("efm-own-ci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let c = DbControl::new("root", &d);
    assert_eq!(own_primary_conninfo(&c, &d, 150_000).unwrap(), None);
    std::fs::write(d.join("postgresql.conf"), "primary_conninfo = 'user=a host=x'\n").unwrap();
    assert_eq!(own_primary_conninfo(&c, &d, 150_000).unwrap().unwrap().get("user"), Some("a"));
    // postgresql.auto.conf overrides postgresql.conf.
    std::fs::write(d.join("postgresql.auto.conf"), "primary_conninfo = 'user=''b'' passfile=''/p q'''\n").unwrap();
    let ci = own_primary_conninfo(&c, &d, 150_000).unwrap().unwrap();
    assert_eq!((ci.get("user"), ci.get("passfile")), (Some("b"), Some("/p q")));
    std::fs::write(d.join("postgresql.auto.conf"), "primary_conninfo = 'host=''x'\n").unwrap();
    let e = own_primary_conninfo(&c, &d, 150_000).unwrap_err().to_string();
    assert!(e.contains("postgresql.auto.conf") && e.contains("unterminated"), "{e}");
    // Before 12: recovery.conf.
    std::fs::write(d.join("recovery.conf"), "standby_mode = 'on'\nprimary_conninfo = 'user=old'\n").unwrap();
    assert_eq!(own_primary_conninfo(&c, &d, 110_000).unwrap().unwrap().get("user"), Some("old"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn literal_quoting() {
    assert_eq!(quote_sql_literal(r"a'b\c"), r"'a''b\c'");
    assert_eq!(quote_conf_value(r"a'b\c"), r"'a''b\\c'");
}

#[test]
fn auto_conf_keeps_other_settings() {
    let existing = "# Do not edit this file manually!\n\
                    # It will be overwritten by the ALTER SYSTEM command.\n\
                    work_mem = '8MB'\n\
                    primary_conninfo = 'host=old port=1'\n\
                    shared_buffers = '1GB'\n\
                    primary_conninfo='host=older'\n";
    let t = set_conf_line(Some(existing), "primary_conninfo", "host='new' port='2'");
    assert_eq!(
        t,
        "# Do not edit this file manually!\n\
         # It will be overwritten by the ALTER SYSTEM command.\n\
         work_mem = '8MB'\n\
         primary_conninfo = 'host=''new'' port=''2'''\n\
         shared_buffers = '1GB'\n"
    );
    let fresh = set_conf_line(None, "primary_conninfo", "host='x'");
    assert!(fresh.starts_with("# Do not edit"));
    assert!(fresh.ends_with("primary_conninfo = 'host=''x'''\n"));
    // Comments and similar keys are untouched.
    let t = set_conf_line(Some("#primary_conninfo = 'a'\nprimary_conninfo_x = 1\n"), "primary_conninfo", "b");
    assert_eq!(t, "#primary_conninfo = 'a'\nprimary_conninfo_x = 1\nprimary_conninfo = 'b'\n");
}

#[test]
fn recovery_conf_for_old_servers() {
    let t = recovery_conf_text(
        Some("standby_mode = off\nrestore_command = 'cp /arch/%f %p'\ntrigger_file = '/tmp/t'\nprimary_conninfo = 'host=old'\n"),
        "host='new'",
    );
    assert_eq!(
        t,
        "standby_mode = 'on'\nrestore_command = 'cp /arch/%f %p'\ntrigger_file = '/tmp/t'\n\
         primary_conninfo = 'host=''new'''\nrecovery_target_timeline = 'latest'\n"
    );
}

#[test]
fn pg_version_file() {
    let d = std::env::temp_dir().join(format!("efm-pgver-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
    assert_eq!(read_pg_version(&d).unwrap(), 150_000);
    std::fs::write(d.join("PG_VERSION"), "9.6\n").unwrap();
    assert_eq!(read_pg_version(&d).unwrap(), 90_600);
    std::fs::write(d.join("PG_VERSION"), "x\n").unwrap();
    assert!(read_pg_version(&d).is_err());
    write_atomic(&d.join("f.conf"), "a = 1\n", None).unwrap();
    let m = std::fs::metadata(d.join("f.conf")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(d.join("f.conf")).unwrap(), "a = 1\n");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn pg_ctl_command_lines() {
    let mut c = DbControl::new("root", "/var/lib/pg/data");
    c.bin = Some("/usr/lib/postgresql/15/bin".into());
    c.log_file = Some("/var/log/pg.log".into());
    c.timeout = Duration::from_secs(30);
    if crate::users::is_root() {
        assert_eq!(
            c.pg_ctl_argv("restart").unwrap().join(" "),
            "/usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/pg/data -w -t 30 -m fast -l /var/log/pg.log restart"
        );
    }
    c.service_name = Some("postgresql@15-main".into());
    assert!(c
        .systemctl(&["restart", "postgresql@15-main"])
        .join(" ")
        .ends_with("systemctl restart postgresql@15-main"));
}

#[test]
fn error_texts() {
    let e = ControlError::NotStandby { addr: "127.0.0.1:5432".into(), what: "promote it" };
    assert_eq!(
        e.to_string(),
        "database 127.0.0.1:5432 is not a standby (pg_is_in_recovery() is false); cannot promote it"
    );
    let e = ControlError::Command {
        what: "stopping the database".into(),
        command: "pg_ctl stop".into(),
        status: "failed (exit code 1)".into(),
        output: "no server".into(),
    };
    assert_eq!(e.to_string(), "stopping the database: `pg_ctl stop` failed (exit code 1): no server");
}
