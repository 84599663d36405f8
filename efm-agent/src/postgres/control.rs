//! Changing a server's role and controlling the server process: promotion, pointing a standby at
//! a new primary, turning a former primary into a standby, and `pg_ctl`/`systemctl` as
//! `db.service.owner`.
//!
//! * [`promote`]: `pg_promote(wait => true)` on a standby (Postgres 12 or later), then checks
//!   that the server has left recovery; returns the new timeline and WAL position.
//! * [`reconfigure_standby`]: `primary_conninfo` pointed at a new primary. Postgres 13 or
//!   later: `ALTER SYSTEM` and `pg_reload_conf()` (the setting is reloadable since 13). 12:
//!   `ALTER SYSTEM` and a restart. Before 12: `recovery.conf` rewritten and a restart. Then waits
//!   (bounded by [`DbControl::timeout`]) until the WAL receiver streams from the new primary, and
//!   reports whether a reload or a restart was needed.
//! * [`demote_to_standby`]: for a former primary that must not come back writable, without SQL
//!   (the server may be down): `standby.signal` plus `primary_conninfo` in
//!   `postgresql.auto.conf` (12 or later), else `recovery.conf`. Never starts the server.
//! * [`DbControl`]: `pg_ctl -D <dir> -w -m fast stop|start|restart|status` as the owner
//!   (`runuser -u <owner> --` when the agent is root, `sudo.user.command` otherwise), or
//!   `systemctl <verb> <db.service.name>` when a service name is set; all bounded by a timeout,
//!   output captured into the errors.
//!
//! Files are written atomically (temporary file in the same directory, `fsync`, `rename`,
//! directory `fsync`), owned by the owner, mode 0600. In `postgresql.auto.conf` only the
//! `primary_conninfo` lines are replaced; every other setting is kept.
//!
//! # Quoting
//!
//! A `primary_conninfo` value is a libpq keyword/value string: each value is written in single
//! quotes with `\` and `'` escaped by a backslash ([`quote_conninfo_value`]). The whole string is
//! then a SQL literal for `ALTER SYSTEM` (`'` doubled, [`quote_sql_literal`]) or a configuration
//! file value (`'` and `\` doubled, [`quote_conf_value`], as `ALTER SYSTEM` itself writes them).

use std::{
    ffi::OsStr,
    fmt,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{connect, probe, DbError, DbTarget, Lsn};
use crate::scripts::{lookup_user, run_argv, RunOptions, ScriptError, ScriptOutcome, UserIds};

/// What went wrong. Every variant names the server (`host:port`) or the command and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database {addr}: {what} failed: {message}")]
    Sql {
        addr: String,
        what: &'static str,
        message: String,
    },
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
    #[error(
        "database {addr}: {what} needs Postgres {needed} or later; the server is version {version}"
    )]
    Unsupported {
        addr: String,
        what: &'static str,
        needed: u32,
        version: u32,
    },
    #[error(
        "database {addr}: not streaming from {upstream} {}s after {method} (WAL receiver: {state})",
        waited.as_secs()
    )]
    NotStreaming {
        addr: String,
        upstream: String,
        method: ApplyMethod,
        waited: Duration,
        state: String,
    },
    #[error("{what}: `{command}` {status}{}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    Command {
        what: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("{what}: cannot run `{command}`: {source}")]
    Run {
        what: String,
        command: String,
        source: Box<ScriptError>,
    },
    #[error("{}: cannot {op}: {message}", path.display())]
    File {
        path: PathBuf,
        op: &'static str,
        message: String,
    },
    #[error("{0}")]
    Config(String),
}

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
        Self {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            application_name: None,
            extra: Vec::new(),
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

    fn pairs(&self, redact: bool) -> Vec<(&str, String)> {
        let mut v = vec![
            ("user", self.user.clone()),
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
        ];
        if let Some(p) = &self.password {
            v.push((
                "password",
                if redact { "********".into() } else { p.clone() },
            ));
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
        self.pairs(redact)
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_conninfo_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
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

/// Server control as `db.service.owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbControl {
    /// `db.service.owner`: the OS user owning the data directory and running `pg_ctl`.
    pub owner: String,
    /// `db.service.name`: when set, `systemctl` controls the server instead of `pg_ctl`.
    pub service_name: Option<String>,
    /// `db.bin`: the directory containing `pg_ctl`.
    pub bin: Option<PathBuf>,
    /// `db.data.dir`.
    pub data_dir: PathBuf,
    /// `db.config.dir`: the directory with `postgresql.conf` when it is not the data directory
    /// (Debian's `/etc/postgresql/<v>/<cluster>`); given to `pg_ctl -D`.
    pub config_dir: Option<PathBuf>,
    /// `db.recovery.conf.dir`: where `recovery.conf` goes before Postgres 12 (default: the
    /// data directory).
    pub recovery_conf_dir: Option<PathBuf>,
    /// `pg_ctl -l` for start and restart. When unset, the server's startup output is captured
    /// until `pg_ctl` returns (configure `logging_collector`, syslog or the journal).
    pub log_file: Option<PathBuf>,
    /// `sudo.command` (for `systemctl` when the agent is not root).
    pub sudo_command: String,
    /// `sudo.user.command` (`%u` = owner), for `pg_ctl` when the agent is neither root nor
    /// the owner.
    pub sudo_user_command: String,
    /// Bound on each server command (also `pg_ctl -t`) and on the wait for streaming.
    pub timeout: Duration,
}

impl DbControl {
    /// `pg_ctl` control of `data_dir` as `owner`, `pg_ctl` from `PATH`, 60 s timeout.
    #[must_use]
    pub fn new(owner: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            owner: owner.into(),
            service_name: None,
            bin: None,
            data_dir: data_dir.into(),
            config_dir: None,
            recovery_conf_dir: None,
            log_file: None,
            sudo_command: "sudo".into(),
            sudo_user_command: "sudo -u %u".into(),
            timeout: Duration::from_mins(1),
        }
    }

    /// From the cluster configuration (`db.service.owner`, `db.service.name`, `db.bin`,
    /// `db.data.dir`, `db.config.dir`, `db.recovery.conf.dir`, `sudo.command`,
    /// `sudo.user.command`). The timeout is `restart.connection.timeout` when longer than
    /// 60 s, else 60 s.
    pub fn from_config(c: &crate::config::Config) -> Result<Self, ControlError> {
        let owner = c.db_service_owner.clone().ok_or_else(|| {
            ControlError::Config(
                "db.service.owner is not set (needed to control the database)".into(),
            )
        })?;
        let data_dir = c
            .db_data_dir
            .clone()
            .or_else(|| c.db_recovery_conf_dir.clone())
            .ok_or_else(|| ControlError::Config("db.data.dir is not set".into()))?;
        let mut d = Self::new(owner, data_dir);
        d.service_name.clone_from(&c.db_service_name);
        d.bin.clone_from(&c.db_bin);
        d.config_dir.clone_from(&c.db_config_dir);
        d.recovery_conf_dir.clone_from(&c.db_recovery_conf_dir);
        if !c.sudo_command.is_empty() {
            d.sudo_command.clone_from(&c.sudo_command);
        }
        if !c.sudo_user_command.is_empty() {
            d.sudo_user_command.clone_from(&c.sudo_user_command);
        }
        d.timeout = d.timeout.max(c.restart_connection_timeout);
        Ok(d)
    }

    fn pg_ctl(&self) -> String {
        self.bin.as_ref().map_or_else(
            || "pg_ctl".to_owned(),
            |b| b.join("pg_ctl").display().to_string(),
        )
    }

    fn pg_ctl_dir(&self) -> &Path {
        self.config_dir.as_deref().unwrap_or(&self.data_dir)
    }

    /// The prefix running a command as the owner: nothing when the agent is the owner,
    /// `runuser -u <owner> --` when it is root, `sudo.user.command` otherwise.
    fn owner_prefix(&self) -> Result<Vec<String>, ControlError> {
        let owner = lookup_user(&self.owner)
            .map_err(|m| ControlError::Config(format!("db.service.owner {:?}: {m}", self.owner)))?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if owner.uid == euid {
            return Ok(Vec::new());
        }
        if euid == 0 {
            return Ok(vec![
                find_tool("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]),
                "-u".into(),
                self.owner.clone(),
                "--".into(),
            ]);
        }
        let words: Vec<String> = self
            .sudo_user_command
            .split_whitespace()
            .map(|w| w.replace("%u", &self.owner))
            .collect();
        Ok(words)
    }

    fn root_prefix(&self) -> Vec<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            Vec::new()
        } else {
            self.sudo_command
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        }
    }

    fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.root_prefix();
        v.push(find_tool("systemctl", &["/usr/bin", "/bin", "/usr/sbin"]));
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    fn pg_ctl_argv(&self, verb: &str) -> Result<Vec<String>, ControlError> {
        let mut v = self.owner_prefix()?;
        v.push(self.pg_ctl());
        v.push("-D".into());
        v.push(self.pg_ctl_dir().display().to_string());
        if verb != "status" {
            v.push("-w".into());
            v.push("-t".into());
            v.push(self.timeout.as_secs().max(1).to_string());
        }
        if verb == "stop" || verb == "restart" {
            v.extend(["-m".into(), "fast".into()]);
        }
        if verb == "start" || verb == "restart" {
            if let Some(l) = &self.log_file {
                v.push("-l".into());
                v.push(l.display().to_string());
            }
        }
        v.push(verb.into());
        Ok(v)
    }

    async fn run(&self, what: &str, argv: Vec<String>) -> Result<ScriptOutcome, ControlError> {
        let command = argv.join(" ");
        let opts = RunOptions {
            timeout: self.timeout + Duration::from_secs(10),
            run_as: None,
            output_cap: 16 * 1024,
            kill_grace: Duration::from_secs(2),
            what: what.to_owned(),
        };
        tracing::info!(what, command = %command, "database control");
        run_argv(&argv, &opts)
            .await
            .map_err(|source| ControlError::Run {
                what: what.to_owned(),
                command,
                source: Box::new(source),
            })
    }

    async fn run_ok(&self, what: &str, argv: Vec<String>) -> Result<(), ControlError> {
        let command = argv.join(" ");
        let o = self.run(what, argv).await?;
        if o.success() {
            Ok(())
        } else {
            Err(command_failed(what, command, &o))
        }
    }

    /// Starts the server (`pg_ctl -w start` or `systemctl start`); nothing when it runs.
    pub async fn start(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self
                .run_ok("starting the database", self.systemctl(&["start", s]))
                .await;
        }
        if self.is_running().await? {
            return Ok(());
        }
        self.run_ok("starting the database", self.pg_ctl_argv("start")?)
            .await
    }

    /// Stops the server (`pg_ctl -w -m fast stop` or `systemctl stop`); nothing when it is
    /// not running.
    pub async fn stop(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self
                .run_ok("stopping the database", self.systemctl(&["stop", s]))
                .await;
        }
        let argv = self.pg_ctl_argv("stop")?;
        let command = argv.join(" ");
        let o = self.run("stopping the database", argv).await?;
        if o.success() || !self.is_running().await.unwrap_or(true) {
            Ok(())
        } else {
            Err(command_failed("stopping the database", command, &o))
        }
    }

    /// Restarts the server (`pg_ctl -w -m fast restart` or `systemctl restart`).
    pub async fn restart(&self) -> Result<(), ControlError> {
        if let Some(s) = &self.service_name {
            return self
                .run_ok("restarting the database", self.systemctl(&["restart", s]))
                .await;
        }
        self.run_ok("restarting the database", self.pg_ctl_argv("restart")?)
            .await
    }

    /// Whether the server runs (`pg_ctl status`: 0 running, 3 not running; or
    /// `systemctl is-active`).
    pub async fn is_running(&self) -> Result<bool, ControlError> {
        if let Some(s) = &self.service_name {
            let o = self
                .run(
                    "checking the database service",
                    self.systemctl(&["is-active", "--quiet", s]),
                )
                .await?;
            return Ok(o.success());
        }
        let argv = self.pg_ctl_argv("status")?;
        let command = argv.join(" ");
        let o = self.run("checking the database", argv).await?;
        match o.exit {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(command_failed("checking the database", command, &o)),
        }
    }

    /// The owner's ids.
    fn owner_ids(&self) -> Result<UserIds, ControlError> {
        lookup_user(&self.owner)
            .map_err(|m| ControlError::Config(format!("db.service.owner {:?}: {m}", self.owner)))
    }
}

/// Stops the server (see [`DbControl::stop`]).
pub async fn stop(control: &DbControl) -> Result<(), ControlError> {
    control.stop().await
}

/// Whether the server runs (see [`DbControl::is_running`]).
pub async fn is_running(control: &DbControl) -> Result<bool, ControlError> {
    control.is_running().await
}

fn find_tool(name: &str, dirs: &[&str]) -> String {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .map_or_else(|| name.to_owned(), |p| p.display().to_string())
}

fn command_failed(what: &str, command: String, o: &ScriptOutcome) -> ControlError {
    let mut output = o.stdout.trim().to_owned();
    let err = o.stderr.trim();
    if !err.is_empty() {
        if !output.is_empty() {
            output.push_str(" | ");
        }
        output.push_str(err);
    }
    ControlError::Command {
        what: what.to_owned(),
        command,
        status: if o.timed_out {
            format!("did not finish within {}s", o.duration.as_secs())
        } else {
            format!("failed ({})", o.status_text())
        },
        output: output.replace('\n', " | "),
    }
}

fn sql_err(addr: &str, what: &'static str, e: &tokio_postgres::Error) -> ControlError {
    let message = e.as_db_error().map_or_else(
        || e.to_string(),
        |d| format!("{} ({})", d.message(), d.code().code()),
    );
    ControlError::Sql {
        addr: addr.to_owned(),
        what,
        message,
    }
}

/// The first row of the first result of a simple query, as text.
async fn row(
    client: &Client,
    addr: &str,
    what: &'static str,
    sql: &str,
    limit: Duration,
) -> Result<Option<Vec<Option<String>>>, ControlError> {
    let msgs = match tokio::time::timeout(limit, client.simple_query(sql)).await {
        Ok(r) => r.map_err(|e| sql_err(addr, what, &e))?,
        Err(_) => {
            return Err(DbError::Timeout {
                addr: addr.to_owned(),
                stage: what,
                timeout: limit,
            }
            .into())
        }
    };
    Ok(msgs.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => {
            Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
        }
        _ => None,
    }))
}

/// Promotes the standby `target` with `pg_promote(wait => true, wait_seconds => wait)` and
/// checks it has left recovery. Needs Postgres 12 or later and a user allowed to run
/// `pg_promote` (superuser or granted).
pub async fn promote(target: &DbTarget, wait: Duration) -> Result<PromoteOutcome, ControlError> {
    let start = Instant::now();
    let addr = target.addr();
    let limit = wait + Duration::from_secs(10);
    let client = connect(target, limit).await?;
    let before = probe(&client, &addr).await?;
    if !before.in_recovery {
        return Err(ControlError::NotStandby {
            addr,
            what: "promote it",
        });
    }
    if before.server_version_num < 120_000 {
        return Err(ControlError::Unsupported {
            addr,
            what: "pg_promote()",
            needed: 12,
            version: before.server_version_num,
        });
    }
    let secs = wait.as_secs().clamp(1, i32::MAX as u64);
    tracing::info!(db = %addr, wait_seconds = secs, "promoting the standby");
    let r = row(
        &client,
        &addr,
        "pg_promote()",
        &format!("SELECT pg_promote(wait => true, wait_seconds => {secs})"),
        limit,
    )
    .await?;
    let promoted = r
        .as_ref()
        .and_then(|r| r.first().cloned().flatten())
        .is_some_and(|v| v == "t");
    let after = probe(&client, &addr).await?;
    if !promoted {
        return Err(if after.in_recovery {
            ControlError::PromoteTimedOut { addr, wait }
        } else {
            ControlError::Sql {
                addr,
                what: "pg_promote()",
                message: "returned false".into(),
            }
        });
    }
    if after.in_recovery {
        return Err(ControlError::StillInRecovery { addr });
    }
    let lsn = after.current_lsn.unwrap_or_default();
    tracing::info!(db = %addr, timeline = ?after.timeline, %lsn, "standby promoted");
    Ok(PromoteOutcome {
        addr,
        timeline: after.timeline,
        lsn,
        server_version_num: after.server_version_num,
        took: start.elapsed(),
    })
}

/// State of the WAL receiver: `(pid, status, sender_host, sender_port, received_tli, conninfo)`.
type Receiver = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn wal_receiver(client: &Client, addr: &str) -> Result<Option<Receiver>, ControlError> {
    let r = row(
        client,
        addr,
        "reading pg_stat_wal_receiver",
        "SELECT pid, status, sender_host, sender_port, received_tli, conninfo FROM pg_stat_wal_receiver",
        Duration::from_secs(10),
    )
    .await?;
    Ok(r.map(|mut r| {
        r.resize(6, None);
        let mut it = r.into_iter();
        let mut n = || it.next().flatten();
        (n(), n(), n(), n(), n(), n())
    }))
}

/// Waits until the standby's WAL receiver streams from `up` (host, port and user), with a pid
/// other than `old_pid` when given.
async fn wait_streaming(
    target: &DbTarget,
    up: &Upstream,
    old_pid: Option<&str>,
    method: ApplyMethod,
    timeout: Duration,
) -> Result<(String, Option<u32>), ControlError> {
    let addr = target.addr();
    let start = Instant::now();
    let mut state = "none".to_owned();
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(target, Duration::from_secs(5)).await.ok();
        }
        if let Some(c) = &client {
            match wal_receiver(c, &addr).await {
                Ok(Some((pid, status, host, port, tli, conninfo))) => {
                    let user = conninfo
                        .as_deref()
                        .and_then(|ci| super::conninfo_value(ci, "user"));
                    state = format!(
                        "pid {} status {} sender {}:{} user {}",
                        pid.as_deref().unwrap_or("?"),
                        status.as_deref().unwrap_or("?"),
                        host.as_deref().unwrap_or("?"),
                        port.as_deref().unwrap_or("?"),
                        user.as_deref().unwrap_or("?"),
                    );
                    if status.as_deref() == Some("streaming")
                        && host.as_deref() == Some(up.host.as_str())
                        && port.as_deref() == Some(up.port.to_string().as_str())
                        && user.as_deref().is_none_or(|u| u == up.user)
                        && (old_pid.is_none() || pid.as_deref() != old_pid)
                    {
                        return Ok((up.addr(), tli.and_then(|t| t.parse().ok())));
                    }
                }
                Ok(None) => "no WAL receiver".clone_into(&mut state),
                Err(e) => {
                    state = e.to_string();
                    client = None;
                }
            }
        } else {
            "cannot connect".clone_into(&mut state);
        }
        if start.elapsed() >= timeout {
            return Err(ControlError::NotStreaming {
                addr,
                upstream: up.addr(),
                method,
                waited: start.elapsed(),
                state,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Postgres 12 or later: `ALTER SYSTEM SET primary_conninfo` (and `recovery_target_timeline =
/// 'latest'` when it is not), then a reload (13 or later, timeline already `latest`) or a
/// restart. Returns the method and whether `primary_conninfo` changed.
async fn apply_with_alter_system(
    client: Client,
    addr: &str,
    control: &DbControl,
    upstream: &Upstream,
    version: u32,
) -> Result<(ApplyMethod, bool), ControlError> {
    let q = Duration::from_secs(10);
    let conninfo = upstream.conninfo();
    let current = row(
        &client,
        addr,
        "reading the settings",
        "SELECT current_setting('primary_conninfo'), current_setting('recovery_target_timeline')",
        q,
    )
    .await?
    .unwrap_or_default();
    let changed = current.first().cloned().flatten().as_deref() != Some(conninfo.as_str());
    let timeline_latest = current.get(1).cloned().flatten().as_deref() == Some("latest");
    let sql = format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        quote_sql_literal(&conninfo)
    );
    row(&client, addr, "ALTER SYSTEM SET primary_conninfo", &sql, q).await?;
    if !timeline_latest {
        row(
            &client,
            addr,
            "ALTER SYSTEM SET recovery_target_timeline",
            "ALTER SYSTEM SET recovery_target_timeline = 'latest'",
            q,
        )
        .await?;
    }
    if version >= 130_000 && timeline_latest {
        row(
            &client,
            addr,
            "pg_reload_conf()",
            "SELECT pg_reload_conf()",
            q,
        )
        .await?;
        tracing::info!(db = %addr, conninfo = %upstream.conninfo_redacted(), changed,
            "primary_conninfo set; configuration reloaded");
        Ok((ApplyMethod::Reload, changed))
    } else {
        drop(client);
        tracing::info!(db = %addr, conninfo = %upstream.conninfo_redacted(),
            "primary_conninfo set; restarting the standby");
        control.restart().await?;
        Ok((ApplyMethod::Restart, changed))
    }
}

/// Before Postgres 12: `recovery.conf` rewritten, then a restart. Returns the file written.
async fn apply_with_recovery_conf(
    control: &DbControl,
    upstream: &Upstream,
    addr: &str,
) -> Result<PathBuf, ControlError> {
    let dir = control
        .recovery_conf_dir
        .clone()
        .unwrap_or_else(|| control.data_dir.clone());
    let path = dir.join("recovery.conf");
    let existing = read_optional(&path)?;
    let text = recovery_conf_text(existing.as_deref(), &upstream.conninfo());
    write_atomic(&path, &text, Some(&control.owner_ids()?))?;
    tracing::info!(db = %addr, conninfo = %upstream.conninfo_redacted(),
        "recovery.conf written; restarting the standby");
    control.restart().await?;
    Ok(path)
}

/// Points the standby `target` at `upstream` (see the module documentation), restarting it
/// through `control` when the server version requires it, and waits until it streams from
/// there (bounded by `control.timeout`). `target`'s user needs superuser rights (`ALTER
/// SYSTEM`, `pg_reload_conf()`, reading `pg_stat_wal_receiver`).
pub async fn reconfigure_standby(
    target: &DbTarget,
    control: &DbControl,
    upstream: &Upstream,
) -> Result<ReconfigureOutcome, ControlError> {
    let start = Instant::now();
    let addr = target.addr();
    let q = Duration::from_secs(10);
    let client = connect(target, control.timeout.min(q)).await?;
    let info = probe(&client, &addr).await?;
    if !info.in_recovery {
        return Err(ControlError::NotStandby {
            addr,
            what: "point it at a new primary",
        });
    }
    let version = info.server_version_num;
    let old = wal_receiver(&client, &addr).await?;
    let (method, changed, wrote) = if version >= 120_000 {
        let (m, changed) =
            apply_with_alter_system(client, &addr, control, upstream, version).await?;
        (m, changed, None)
    } else {
        drop(client);
        let path = apply_with_recovery_conf(control, upstream, &addr).await?;
        (ApplyMethod::Restart, true, Some(path))
    };
    // After a restart the receiver is new anyway; after a reload it must be a new one unless
    // nothing changed.
    let old_pid = match method {
        ApplyMethod::Reload if changed => old
            .as_ref()
            .filter(|o| {
                o.5.as_deref()
                    .and_then(|ci| super::conninfo_value(ci, "host"))
                    .is_some_and(|h| h == upstream.host)
            })
            .and_then(|o| o.0.clone()),
        ApplyMethod::Reload | ApplyMethod::Restart => None,
    };
    let waited = control
        .timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    let (streaming_from, timeline) =
        wait_streaming(target, upstream, old_pid.as_deref(), method, waited).await?;
    tracing::info!(db = %addr, %method, from = %streaming_from, ?timeline, "standby streams from the new primary");
    Ok(ReconfigureOutcome {
        addr,
        method,
        conninfo: upstream.conninfo_redacted(),
        wrote,
        streaming_from,
        timeline,
        server_version_num: version,
        took: start.elapsed(),
    })
}

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
    let bad = || ControlError::File {
        path: path.clone(),
        op: "parse",
        message: format!("unexpected content {t:?}"),
    };
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
/// `recovery_target_timeline = 'latest'`. Files are owned by the owner, mode 0600. The server
/// is not started or signalled.
pub fn demote_to_standby(
    control: &DbControl,
    data_dir: &Path,
    server_version_num: u32,
    upstream: &Upstream,
) -> Result<DemoteOutcome, ControlError> {
    let owner = control.owner_ids()?;
    let conninfo = upstream.conninfo();
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
        let dir = control
            .recovery_conf_dir
            .clone()
            .unwrap_or_else(|| data_dir.to_path_buf());
        let path = dir.join("recovery.conf");
        let existing = read_optional(&path)?;
        write_atomic(
            &path,
            &recovery_conf_text(existing.as_deref(), &conninfo),
            Some(&owner),
        )?;
        files.push(path);
    }
    tracing::info!(data = %data_dir.display(), conninfo = %upstream.conninfo_redacted(),
        "wrote the standby configuration of the former primary");
    Ok(DemoteOutcome {
        files,
        conninfo: upstream.conninfo_redacted(),
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, ControlError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ControlError::File {
            path: path.to_path_buf(),
            op: "read",
            message: e.to_string(),
        }),
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
    let text = existing.unwrap_or(
        "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n",
    );
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

/// Writes `path` atomically: a temporary file in the same directory (mode 0600, owned by
/// `owner` when given and the agent is root), `fsync`, `rename`, directory `fsync`.
pub fn write_atomic(
    path: &Path,
    contents: &str,
    owner: Option<&UserIds>,
) -> Result<(), ControlError> {
    let ferr = |op: &'static str, e: &std::io::Error| ControlError::File {
        path: path.to_path_buf(),
        op,
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().unwrap_or_else(|| OsStr::new("file"));
    let tmp = dir.join(format!(
        ".{}.efm-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ferr("create a temporary file", &e))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ferr("set the mode", &e))?;
        if let Some(o) = owner {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))
                    .map_err(|e| ferr("change the owner", &e))?;
            }
        }
        f.write_all(contents.as_bytes())
            .map_err(|e| ferr("write", &e))?;
        f.sync_all().map_err(|e| ferr("sync", &e))?;
        std::fs::rename(&tmp, path).map_err(|e| ferr("rename into place", &e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quoting_round_trips() {
        let mut up = Upstream::new("198.18.0.2", 5432, "rep user");
        up.password = Some(r"pa'ss\wo rd".into());
        up.application_name = Some("node b".into());
        let ci = up.conninfo();
        assert_eq!(
            ci,
            r"user='rep user' host='198.18.0.2' port='5432' password='pa\'ss\\wo rd' application_name='node b'"
        );
        assert_eq!(
            super::super::conninfo_value(&ci, "password").as_deref(),
            Some(r"pa'ss\wo rd")
        );
        assert_eq!(
            super::super::conninfo_value(&ci, "user").as_deref(),
            Some("rep user")
        );
        assert!(!up.conninfo_redacted().contains("wo rd"));
        assert!(!format!("{up:?}").contains("wo rd"));
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
        let t = set_conf_line(
            Some("#primary_conninfo = 'a'\nprimary_conninfo_x = 1\n"),
            "primary_conninfo",
            "b",
        );
        assert_eq!(
            t,
            "#primary_conninfo = 'a'\nprimary_conninfo_x = 1\nprimary_conninfo = 'b'\n"
        );
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
        assert_eq!(
            std::fs::read_to_string(d.join("f.conf")).unwrap(),
            "a = 1\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pg_ctl_command_lines() {
        let mut c = DbControl::new("root", "/var/lib/pg/data");
        c.bin = Some("/usr/lib/postgresql/15/bin".into());
        c.log_file = Some("/var/log/pg.log".into());
        c.timeout = Duration::from_secs(30);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
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
        let e = ControlError::NotStandby {
            addr: "127.0.0.1:5432".into(),
            what: "promote it",
        };
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
        assert_eq!(
            e.to_string(),
            "stopping the database: `pg_ctl stop` failed (exit code 1): no server"
        );
    }
}
