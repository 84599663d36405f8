//! `primary_conninfo`: a libpq keyword/value string kept as its ordered pairs, and the three
//! quotings it goes through.
//!
//! A standby keeps its own replication settings when it follows a new primary: only `host`
//! and `port` change ([`ConnInfo::retarget`]); user, `passfile`, `sslmode`,
//! `application_name` and every other keyword stay as they were, in their order.

use std::fmt;

/// A libpq keyword/value connection string as its ordered `(keyword, value)` pairs (values
/// unquoted). Its `Debug` hides any password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pairs: Vec<(String, String)>,
}

/// A connection string libpq would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed connection string at byte {at}: {what}")]
pub struct ConnInfoError {
    /// Byte offset in the string.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl ConnInfo {
    /// Parses a keyword/value string with libpq's rules (`conninfo_parse`): pairs separated by
    /// whitespace, `=` with optional whitespace around it, values either bare (ending at
    /// whitespace, `\` escaping the next character) or single-quoted (`\` escaping the next
    /// character, `\'` and `\\` included). An empty string has no pairs. URIs
    /// (`postgresql://...`) are not keyword/value strings and are refused.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        if s.trim_start().starts_with("postgres://") || s.trim_start().starts_with("postgresql://") {
            return Err(ConnInfoError { at: 0, what: "a URI, not a keyword/value string" });
        }
        let mut pairs = Vec::new();
        let mut it = s.char_indices().peekable();
        let err = |at: usize, what| ConnInfoError { at, what };
        loop {
            while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            let Some(&(start, _)) = it.peek() else { break };
            let mut key = String::new();
            while let Some((_, c)) = it.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            match it.next() {
                Some((_, '=')) => {}
                Some((at, _)) => return Err(err(at, "missing \"=\" after a keyword")),
                None => return Err(err(s.len(), "missing \"=\" after a keyword")),
            }
            if key.is_empty() {
                return Err(err(start, "empty keyword"));
            }
            while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            let mut value = String::new();
            if it.next_if(|(_, c)| *c == '\'').is_some() {
                loop {
                    match it.next() {
                        Some((_, '\\')) => match it.next() {
                            Some((_, c)) => value.push(c),
                            None => return Err(err(s.len(), "unterminated quoted value")),
                        },
                        Some((_, '\'')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err(err(s.len(), "unterminated quoted value")),
                    }
                }
            } else {
                while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                    if c == '\\' {
                        match it.next() {
                            Some((_, c)) => value.push(c),
                            None => return Err(err(s.len(), "trailing backslash")),
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    /// The pairs, in order.
    #[must_use]
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The value of `key` (the last one when repeated, as libpq takes it).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets `key`: the first occurrence gets the value in place, later ones are removed;
    /// appended when absent.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.pairs.iter().position(|(k, _)| k == key) {
            Some(i) => {
                self.pairs[i].1 = value;
                let mut n = 0;
                self.pairs.retain(|(k, _)| {
                    n += usize::from(k == key);
                    k != key || n == 1
                });
            }
            None => self.pairs.push((key.to_owned(), value)),
        }
    }

    /// Removes every occurrence of `key`.
    pub fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    /// Points the string at `host:port` and changes nothing else: `host` and `port` set (in
    /// place when present, a list of hosts becoming the one), `hostaddr` removed (it would
    /// override `host` for the connection).
    pub fn retarget(&mut self, host: &str, port: u16) {
        self.remove("hostaddr");
        self.set("host", host);
        self.set("port", port.to_string());
    }

    fn render(&self, redact: bool) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| {
                if redact && k == "password" {
                    format!("{k}=********")
                } else {
                    format!("{k}={}", quote_conninfo_value(v))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The string, every value single-quoted ([`quote_conninfo_value`]).
    #[must_use]
    pub fn conninfo(&self) -> String {
        self.render(false)
    }

    /// [`ConnInfo::conninfo`] with any password replaced by `********`, for logs.
    #[must_use]
    pub fn redacted(&self) -> String {
        self.render(true)
    }
}

impl FromIterator<(String, String)> for ConnInfo {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self { pairs: iter.into_iter().collect() }
    }
}

/// Where a standby should stream from, and where its other replication settings come from.
///
/// The server's own `primary_conninfo` wins: only its `host` and `port` change. `template`
/// (another standby's settings, or a minimal one) is used when the server has none — a former
/// primary that never was a standby — or, with `replace_own`, instead of its own
/// (`-sourcenode`). A template's `application_name` names the node it came from, so it is
/// replaced by `application_name` (or removed when that is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub template: ConnInfo,
    pub replace_own: bool,
    /// This node's `application_name` (EFM's `application.name`; the standby's name in
    /// `pg_stat_replication` and `synchronous_standby_names`), used with the template.
    pub application_name: Option<String>,
}

impl Upstream {
    /// `host:port`; template `user=<user>` (no password: libpq's password file applies).
    #[must_use]
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            template: std::iter::once(("user".to_owned(), user.into())).collect(),
            replace_own: false,
            application_name: None,
        }
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

    /// The `primary_conninfo` a server whose current one is `own` (empty or none: it has none)
    /// gets to stream from this upstream.
    #[must_use]
    pub fn conninfo_for(&self, own: Option<&ConnInfo>) -> ConnInfo {
        let mut ci = match own {
            Some(o) if !o.is_empty() && !self.replace_own => o.clone(),
            _ => {
                let mut t = self.template.clone();
                match &self.application_name {
                    Some(a) => t.set("application_name", a.clone()),
                    None => t.remove("application_name"),
                }
                t
            }
        };
        ci.retarget(&self.host, self.port);
        ci
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

/// The value of a configuration-file line's right-hand side, unquoted as the server's
/// configuration parser does: a single-quoted string (`''` is a quote; `\b \f \n \r \t`, octal
/// `\ooo` and `\x` for any other `x` are escapes), else the bare token up to whitespace or `#`.
/// `None` when a quoted value is not terminated.
#[must_use]
pub fn unquote_conf_value(raw: &str) -> Option<String> {
    let raw = raw.trim_start();
    let Some(body) = raw.strip_prefix('\'') else {
        let end = raw.find(|c: char| c.is_whitespace() || c == '#').unwrap_or(raw.len());
        return Some(raw[..end].to_owned());
    };
    let mut out = String::new();
    let mut it = body.chars().peekable();
    loop {
        match it.next()? {
            '\'' => {
                if it.next_if_eq(&'\'').is_some() {
                    out.push('\'');
                } else {
                    return Some(out);
                }
            }
            '\\' => match it.next()? {
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                d @ '0'..='7' => {
                    let mut n = d.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match it.next_if(|c| c.is_digit(8)) {
                            Some(c) => n = n * 8 + c.to_digit(8).unwrap_or(0),
                            None => break,
                        }
                    }
                    out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}
