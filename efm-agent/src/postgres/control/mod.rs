//! Changing a server's role and controlling the server process: promotion, pointing a standby at
//! a new primary, turning a former primary into a standby, and `pg_ctl`/`systemctl` as
//! `db.service.owner`.
//!
//! * [`promote`]: `pg_promote(wait => true)` on a standby (Postgres 12 or later), then checks
//!   that the server has left recovery; returns the new timeline and WAL position.
//! * [`reconfigure_standby`]: `primary_conninfo` pointed at a new primary — the standby's own
//!   (`current_setting`, else its files), with only `host` and `port` changed
//!   ([`Upstream::conninfo_for`]): user, `passfile`, `sslmode`, `application_name` and every
//!   other keyword stay. Postgres 13 or later: `ALTER SYSTEM` (or, for a user that may not —
//!   the monitoring user is no superuser —, `postgresql.auto.conf` written as the owner) and
//!   `pg_reload_conf()` (the setting is reloadable since 13). 12: the same and a restart. Before
//!   12: `recovery.conf` rewritten and a restart. Then waits (bounded by [`DbControl::timeout`])
//!   until the WAL receiver streams from the new primary as the settings' user, and reports
//!   whether a reload or a restart was needed.
//! * [`demote_to_standby`]: for a former primary that must not come back writable, without SQL
//!   (the server may be down): `standby.signal` plus `primary_conninfo` in
//!   `postgresql.auto.conf` (12 or later), else `recovery.conf`. The `primary_conninfo` is its
//!   own from its files ([`own_primary_conninfo`]: a promoted standby keeps it) retargeted,
//!   else the [`Upstream`]'s template — another standby's settings, e.g. the new primary's
//!   former ones ([`read_primary_conninfo`]) or `-sourcenode`'s — with this node's
//!   `application_name`. Never starts the server.
//!
//! The monitoring user's password never goes into `primary_conninfo`: a template carries only
//! what a standby already has (the replication user and its password source).
//! * [`DbControl`]: `pg_ctl -D <dir> -w -m fast stop|start|restart|status` as the owner
//!   (`runuser -u <owner> --` when the agent is root, `sudo.user.command` otherwise), or
//!   `systemctl <verb> <db.service.name>` when a service name is set; all bounded by a timeout,
//!   output captured into the errors.
//!
//! Files are written atomically ([`crate::files::write_atomic`]: temporary file in the same
//! directory, `fsync`, `rename`, directory `fsync`), owned by the owner, mode 0600. In `postgresql.auto.conf` only the
//! `primary_conninfo` lines are replaced; every other setting is kept.
//!
//! # Quoting
//!
//! A `primary_conninfo` value is a libpq keyword/value string, parsed with libpq's rules into
//! ordered pairs ([`ConnInfo`]); each value is written in single quotes with `\` and `'`
//! escaped by a backslash ([`quote_conninfo_value`]). The whole string is
//! then a SQL literal for `ALTER SYSTEM` (`'` doubled, [`quote_sql_literal`]) or a configuration
//! file value (`'` and `\` doubled, [`quote_conf_value`], as `ALTER SYSTEM` itself writes them).

use std::{fmt, path::PathBuf, time::Duration};

use super::{DbError, Lsn};
use crate::scripts::ScriptError;

mod conninfo;
mod files;
mod rewind;
mod role;
mod server;

pub use conninfo::{
    quote_conf_value, quote_conninfo_value, quote_sql_literal, unquote_conf_value, ConnInfo, ConnInfoError, Upstream,
};
pub use files::{
    conf_value, demote_to_standby, own_primary_conninfo, read_pg_version, recovery_conf_text, set_conf_line,
};
pub use rewind::{ensure_source_checkpointed, PassFile, RewindOutcome};
pub use role::{promote, read_primary_conninfo, reconfigure_standby, resume_replay_if_paused, set_and_reload};
pub use server::{is_running, stop, DbControl};

/// What went wrong. Every variant names the server (`host:port`) or the command and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database {addr}: {what} failed: {message}")]
    Sql { addr: String, what: &'static str, message: String },
    #[error("database {addr} is not a standby (pg_is_in_recovery() is false); cannot {what}")]
    NotStandby { addr: String, what: &'static str },
    #[error(
        "database {addr}: promotion did not complete within {}s (pg_promote returned false); \
         the server may still finish it",
        wait.as_secs_f64()
    )]
    PromoteTimedOut { addr: String, wait: Duration },
    #[error("database {addr}: still in recovery after pg_promote() reported success")]
    StillInRecovery { addr: String },
    #[error("database {addr}: {what} needs Postgres {needed} or later; the server is version {version}")]
    Unsupported { addr: String, what: &'static str, needed: u32, version: u32 },
    #[error(
        "database {addr}: not streaming from {upstream} {}s after {method} (WAL receiver: {state})",
        waited.as_secs()
    )]
    NotStreaming { addr: String, upstream: String, method: ApplyMethod, waited: Duration, state: String },
    #[error("{what}: `{command}` {status}{}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    Command { what: String, command: String, status: String, output: String },
    #[error("{what}: cannot run `{command}`: {source}")]
    Run { what: String, command: String, source: Box<ScriptError> },
    #[error("{}: cannot {op}: {message}", path.display())]
    File { path: PathBuf, op: &'static str, message: String },
    #[error("{0}")]
    Config(String),
}

/// How a new `primary_conninfo` took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ApplyMethod {
    /// `pg_reload_conf()` (Postgres 13 or later).
    Reload,
    /// Server restart (Postgres 12, `recovery.conf` before 12, or a changed
    /// `recovery_target_timeline`).
    Restart,
}

impl fmt::Display for ApplyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reload => "reload",
            Self::Restart => "restart",
        })
    }
}

/// Result of [`promote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteOutcome {
    /// `host:port` of the promoted server.
    pub addr: String,
    /// The new timeline (from the current WAL file's name).
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()` right after the promotion.
    pub lsn: Lsn,
    pub server_version_num: u32,
    pub took: Duration,
}

/// Result of [`reconfigure_standby`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconfigureOutcome {
    pub addr: String,
    pub method: ApplyMethod,
    /// The new `primary_conninfo`, password redacted.
    pub conninfo: String,
    /// `recovery.conf` written (before Postgres 12).
    pub wrote: Option<PathBuf>,
    /// `sender_host:sender_port` of the WAL receiver once streaming.
    pub streaming_from: String,
    /// The WAL receiver's `received_tli`.
    pub timeline: Option<u32>,
    pub server_version_num: u32,
    pub took: Duration,
}

/// Result of [`demote_to_standby`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoteOutcome {
    /// Files written (`standby.signal` and `postgresql.auto.conf`, or `recovery.conf`).
    pub files: Vec<PathBuf>,
    /// The new `primary_conninfo`, password redacted.
    pub conninfo: String,
}

#[cfg(test)]
mod tests;
