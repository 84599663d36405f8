//! The files that make a server a standby: `standby.signal` and `postgresql.auto.conf` (12 or
//! later), `recovery.conf` (before 12), and `PG_VERSION`.

use std::path::Path;

use super::{quote_conf_value, unquote_conf_value, ConnInfo, ControlError, DbControl, DemoteOutcome, Upstream};
use crate::files::WriteOptions;
use crate::users::{self, UserIds};

/// The server version of a data directory from its `PG_VERSION` file, as a
/// `server_version_num` of the major version (`150000` for 15, `90600` for 9.6).
pub fn read_pg_version(data_dir: &Path) -> Result<u32, ControlError> {
    let path = data_dir.join("PG_VERSION");
    let text = std::fs::read_to_string(&path).map_err(|e| ControlError::File {
        path: path.clone(),
        op: "read",
        message: e.to_string(),
    })?;
    let t = text.trim();
    let bad = || ControlError::File { path: path.clone(), op: "parse", message: format!("unexpected content {t:?}") };
    let mut parts = t.split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    if major >= 10 {
        Ok(major * 10_000)
    } else {
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        Ok(major * 10_000 + minor * 100)
    }
}

/// Writes what makes the (stopped or running) former primary in `data_dir` come back as a
/// standby of `upstream` at its next start: `standby.signal` and `primary_conninfo` in
/// `postgresql.auto.conf` for `server_version_num` 12 or later, else `recovery.conf` (in
/// `db.recovery.conf.dir` when set) with `standby_mode`, `primary_conninfo` and
/// `recovery_target_timeline = 'latest'`. The `primary_conninfo` is the server's own (from
/// its files, see [`own_primary_conninfo`]) pointed at the upstream, else the upstream's
/// template ([`Upstream::conninfo_for`]). Files are owned by the owner, mode 0600. The server
/// is not started or signalled.
pub fn demote_to_standby(
    control: &DbControl,
    data_dir: &Path,
    server_version_num: u32,
    upstream: &Upstream,
) -> Result<DemoteOutcome, ControlError> {
    let owner = control.owner_ids()?;
    let own = own_primary_conninfo(control, data_dir, server_version_num)?;
    let ci = upstream.conninfo_for(own.as_ref());
    let conninfo = ci.conninfo();
    let mut files = Vec::new();
    if server_version_num >= 120_000 {
        let auto = data_dir.join("postgresql.auto.conf");
        let existing = read_optional(&auto)?;
        let text = set_conf_line(existing.as_deref(), "primary_conninfo", &conninfo);
        write_atomic(&auto, &text, Some(&owner))?;
        files.push(auto);
        let signal = data_dir.join("standby.signal");
        write_atomic(&signal, "", Some(&owner))?;
        files.push(signal);
    } else {
        let path = recovery_conf_path(control, data_dir);
        let existing = read_optional(&path)?;
        write_atomic(&path, &recovery_conf_text(existing.as_deref(), &conninfo), Some(&owner))?;
        files.push(path);
    }
    let source = match &own {
        Some(o) if !o.is_empty() && !upstream.replace_own => "its own",
        _ => "the template",
    };
    tracing::info!(data = %data_dir.display(), conninfo = %ci.redacted(), settings = source,
        "wrote the standby configuration of the former primary");
    Ok(DemoteOutcome { files, conninfo: ci.redacted() })
}

fn recovery_conf_path(control: &DbControl, data_dir: &Path) -> std::path::PathBuf {
    control.recovery_conf_dir.clone().unwrap_or_else(|| data_dir.to_path_buf()).join("recovery.conf")
}

/// The server's own `primary_conninfo` as its configuration files set it: 12 or later
/// `postgresql.auto.conf`, else `postgresql.conf` (included files are not followed); before 12
/// `recovery.conf`. `None` when unset or empty. A value libpq would refuse is an error naming
/// the file.
pub fn own_primary_conninfo(
    control: &DbControl,
    data_dir: &Path,
    server_version_num: u32,
) -> Result<Option<ConnInfo>, ControlError> {
    let paths = if server_version_num >= 120_000 {
        vec![data_dir.join("postgresql.auto.conf"), data_dir.join("postgresql.conf")]
    } else {
        vec![recovery_conf_path(control, data_dir)]
    };
    for path in paths {
        let Some(text) = read_optional(&path)? else { continue };
        if let Some(v) = conf_value(&text, "primary_conninfo") {
            if v.trim().is_empty() {
                return Ok(None);
            }
            return ConnInfo::parse(&v).map(Some).map_err(|e| ControlError::File {
                path,
                op: "parse primary_conninfo",
                message: e.to_string(),
            });
        }
    }
    Ok(None)
}

/// The value of the last `key` line of a configuration file's text (later lines win, as in
/// the server), unquoted ([`unquote_conf_value`]).
#[must_use]
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().filter(|l| conf_key(l).is_some_and(|k| k.eq_ignore_ascii_case(key))).find_map(|l| {
        let t = l.trim_start()[key.len()..].trim_start();
        unquote_conf_value(t.strip_prefix('=').unwrap_or(t))
    })
}

pub(super) fn read_optional(path: &Path) -> Result<Option<String>, ControlError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ControlError::File { path: path.to_path_buf(), op: "read", message: e.to_string() }),
    }
}

/// The key of a `key = value` configuration line, if it is one.
fn conf_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    let end = t.find(|c: char| c == '=' || c.is_whitespace())?;
    let key = &t[..end];
    let rest = t[end..].trim_start();
    // "key = value" or "key value" (both accepted by the server).
    (!key.is_empty() && (rest.starts_with('=') || !rest.is_empty())).then_some(key)
}

/// `existing` (a configuration file's text, or none) with every `key` line removed and one
/// `key = '<value>'` line in place of the first (appended when there was none). Other lines are
/// kept as they are.
#[must_use]
pub fn set_conf_line(existing: Option<&str>, key: &str, value: &str) -> String {
    let new_line = format!("{key} = {}", quote_conf_value(value));
    let mut out = String::new();
    let mut placed = false;
    let text = existing
        .unwrap_or("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n");
    for line in text.lines() {
        if conf_key(line).is_some_and(|k| k.eq_ignore_ascii_case(key)) {
            if !placed {
                out.push_str(&new_line);
                out.push('\n');
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(&new_line);
        out.push('\n');
    }
    out
}

/// A `recovery.conf` (before Postgres 12) following `conninfo`: `standby_mode = 'on'`,
/// `primary_conninfo`, `recovery_target_timeline = 'latest'`; other settings of `existing`
/// (`restore_command`, `trigger_file`, ...) are kept.
#[must_use]
pub fn recovery_conf_text(existing: Option<&str>, conninfo: &str) -> String {
    let base = existing.map_or_else(|| "# written by efm\n".to_owned(), str::to_owned);
    let t = set_conf_line(Some(&base), "standby_mode", "on");
    let t = set_conf_line(Some(&t), "primary_conninfo", conninfo);
    set_conf_line(Some(&t), "recovery_target_timeline", "latest")
}

/// Writes `path` atomically ([`crate::files::write_atomic`]), mode 0600, owned by `owner` when
/// given and the agent is root (otherwise by the agent: only root may give files away).
pub(super) fn write_atomic(path: &Path, contents: &str, owner: Option<&UserIds>) -> Result<(), ControlError> {
    let owner = owner.filter(|_| users::is_root()).map(|o| (o.uid, o.gid));
    crate::files::write_atomic(path, contents.as_bytes(), WriteOptions::private().owner(owner))
        .map_err(|e| ControlError::File { path: path.to_path_buf(), op: e.op, message: e.source.to_string() })
}
