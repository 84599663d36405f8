//! `primary_conninfo`: its parts and the three quotings it goes through.

use std::fmt;

/// The primary a standby should stream from: the parts of `primary_conninfo`.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Written into `primary_conninfo` when set (else libpq's password file applies).
    pub password: Option<String>,
    /// `application_name` (EFM's `application.name`; the standby's name in
    /// `pg_stat_replication` and `synchronous_standby_names`).
    pub application_name: Option<String>,
    /// More keywords, e.g. `("sslmode", "require")` or `("passfile", "/var/lib/pgsql/.pgpass")`.
    pub extra: Vec<(String, String)>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.conninfo_redacted())
    }
}

impl Upstream {
    /// `host`, `port`, `user`; no password, no application name.
    #[must_use]
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        Self { host: host.into(), port, user: user.into(), password: None, application_name: None, extra: Vec::new() }
    }

    /// `host:port` (IPv6 addresses bracketed).
    #[must_use]
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn pairs(&self, redact: bool) -> Vec<(&str, String)> {
        let mut v = vec![("user", self.user.clone()), ("host", self.host.clone()), ("port", self.port.to_string())];
        if let Some(p) = &self.password {
            v.push(("password", if redact { "********".into() } else { p.clone() }));
        }
        if let Some(a) = &self.application_name {
            v.push(("application_name", a.clone()));
        }
        for (k, val) in &self.extra {
            v.push((k.as_str(), val.clone()));
        }
        v
    }

    fn render(&self, redact: bool) -> String {
        self.pairs(redact).iter().map(|(k, v)| format!("{k}={}", quote_conninfo_value(v))).collect::<Vec<_>>().join(" ")
    }

    /// The `primary_conninfo` string (values quoted).
    #[must_use]
    pub fn conninfo(&self) -> String {
        self.render(false)
    }

    /// [`Upstream::conninfo`] with the password replaced by `********`, for logs.
    #[must_use]
    pub fn conninfo_redacted(&self) -> String {
        self.render(true)
    }
}

/// A libpq connection-string value in single quotes, `\` and `'` escaped with `\`.
#[must_use]
pub fn quote_conninfo_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\\' || c == '\'' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A SQL string literal (`standard_conforming_strings`): single quotes, `'` doubled.
#[must_use]
pub fn quote_sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// A configuration-file string value (`postgresql.auto.conf`, `recovery.conf`): single quotes,
/// `'` and `\` doubled, as `ALTER SYSTEM` writes it.
#[must_use]
pub fn quote_conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}
