//! Password lookup in a libpq password file (`.pgpass`).
//!
//! Format, as libpq reads it: one entry per line, `hostname:port:database:username:password`.
//! Each of the first four fields is either the literal value or a lone `*`, which matches
//! anything. A backslash makes the next character literal, so `\:` and `\\` stand for `:` and
//! `\`. Lines starting with `#` and empty lines are skipped. The first matching line wins; the
//! password runs to the end of the line or to the next unescaped `:`.
//!
//! The file is ignored, with a warning, unless it is a regular file without any group or other
//! permission bits (mode 0600 or stricter), the same rule libpq applies.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// The socket directory libpq on Debian treats as "localhost" when matching entries.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Looks up the password for a connection in the password file at `path`.
///
/// `host` is the name or address the agent connects to; a Unix socket directory equal to
/// [`DEFAULT_SOCKET_DIR`] (or an empty host) is matched as `localhost`, as libpq does.
#[must_use]
pub fn lookup_pgpass(path: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot read password file");
            }
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:04o}", mode & 0o7777),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignoring it"
        );
        return None;
    }
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read password file");
            return None;
        }
    };
    lookup_in(&text, host, port, db, user)
}

/// Looks up a password in password-file text (no permission check).
#[must_use]
pub fn lookup_in(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR { "localhost" } else { host };
    let port = port.to_string();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = match_field(line, host)
            .and_then(|r| match_field(r, &port))
            .and_then(|r| match_field(r, db))
            .and_then(|r| match_field(r, user))
        else {
            continue;
        };
        return Some(unescape_password(rest));
    }
    None
}

/// Matches the first field of `line` against `want`; returns the rest of the line after the
/// field's terminating `:`.
fn match_field<'a>(line: &'a str, want: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, n)) => field.push(n),
                None => return None,
            },
            ':' => return (field == want).then(|| &line[i + 1..]),
            _ => field.push(c),
        }
    }
    None
}

fn unescape_password(rest: &str) -> String {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            },
            _ => out.push(c),
        }
    }
    out
}

/// The password file libpq would use: `$PGPASSFILE`, else `.pgpass` in the home directory of
/// the user running the agent (`$HOME`, else the password database entry).
#[must_use]
pub fn default_pgpass_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    home_dir().map(|h| h.join(".pgpass"))
}

pub(crate) fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    crate::users::effective_home()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FILE: &str = "\
# comment line: *:*:*:*:never
db1.example:5432:acctg:efm:first
db1.example:5432:*:efm:second
*:5444:*:*:any-on-5444
h\\:x:5432:app:bob:slash-colon-host
10.0.0.1:5432:weird\\\\db:efm:back\\\\slash\\:colon:ignored-extra
*:*:*:carol:pa\\:ss\r
";

    #[test]
    fn first_match_wins_and_wildcards() {
        assert_eq!(lookup_in(FILE, "db1.example", 5432, "acctg", "efm").as_deref(), Some("first"));
        assert_eq!(lookup_in(FILE, "db1.example", 5432, "other", "efm").as_deref(), Some("second"));
        assert_eq!(lookup_in(FILE, "db2", 5444, "x", "y").as_deref(), Some("any-on-5444"));
        assert_eq!(lookup_in(FILE, "db2", 5432, "x", "y"), None);
        assert_eq!(lookup_in(FILE, "db1.example", 5433, "acctg", "efm"), None);
    }

    #[test]
    fn escapes() {
        // `h\:x` is the host name `h:x`.
        assert_eq!(lookup_in(FILE, "h:x", 5432, "app", "bob").as_deref(), Some("slash-colon-host"));
        // `weird\\\\db` is `weird\\db`; the password stops at the first unescaped colon.
        assert_eq!(lookup_in(FILE, "10.0.0.1", 5432, "weird\\db", "efm").as_deref(), Some("back\\slash:colon"));
        // CR of a CRLF line is not part of the password.
        assert_eq!(lookup_in(FILE, "any", 1, "d", "carol").as_deref(), Some("pa:ss"));
    }

    #[test]
    fn star_is_only_a_wildcard_alone_and_comments_are_skipped() {
        let text = "db*:5432:*:*:nope\n#*:*:*:*:commented\n";
        assert_eq!(lookup_in(text, "db1", 5432, "d", "u"), None);
        assert_eq!(lookup_in(text, "db*", 5432, "d", "u").as_deref(), Some("nope"));
    }

    #[test]
    fn socket_dir_and_empty_host_match_localhost() {
        let text = "localhost:5432:*:*:local\n";
        assert_eq!(lookup_in(text, DEFAULT_SOCKET_DIR, 5432, "d", "u").as_deref(), Some("local"));
        assert_eq!(lookup_in(text, "", 5432, "d", "u").as_deref(), Some("local"));
        assert_eq!(lookup_in(text, "/tmp", 5432, "d", "u"), None);
    }

    #[test]
    fn permission_rule() {
        let dir = std::env::temp_dir().join(format!("efm-pgpass-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(b"*:*:*:efm:s3cret\n").unwrap();
        drop(f);
        for (mode, expect) in
            [(0o600, Some("s3cret")), (0o400, Some("s3cret")), (0o640, None), (0o604, None), (0o660, None)]
        {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(lookup_pgpass(&path, "h", 5432, "d", "efm").as_deref(), expect, "mode {mode:o}");
        }
        assert_eq!(lookup_pgpass(&dir.join("missing"), "h", 5432, "d", "efm"), None);
        // A directory is not a password file.
        assert_eq!(lookup_pgpass(&dir, "h", 5432, "d", "efm"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
