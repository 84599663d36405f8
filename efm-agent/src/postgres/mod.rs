//! Talking to Postgres: connections (with EFM's `jdbc.sslmode`), probes of a server's role and
//! WAL positions, the local database monitor and the one-shot check of a remote database.
//!
//! * [`connect`] opens a connection described by a [`DbTarget`], with or without TLS.
//! * [`probe`] asks a connected server for its [`DbInfo`]: whether it is in recovery, its WAL
//!   positions ([`Lsn`]), timeline, version and, on a standby, the state of its WAL receiver.
//! * [`remote_check`] connects to another node's database and probes it, the whole exchange
//!   bounded by `remote.timeout`.
//! * [`monitor`] implements the periodic local check (`local.period`, `local.timeout`,
//!   `local.timeout.final`, `db.reuse.connection.count`), see its documentation.
//! * [`pgpass`] finds a password in a libpq password file when no password is configured.
//!
//! The queries need Postgres 10 or later (`pg_current_wal_lsn` and friends).

pub mod control;
pub mod lsn;
pub mod monitor;
pub mod pgpass;
pub mod sync_names;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub use lsn::{Lsn, ParseLsnError};
pub use monitor::{CheckKind, CheckRequest, DbEvent, LocalMonitor, LocalTimings, Step};
pub use pgpass::{default_pgpass_path, lookup_pgpass};

/// How a connection uses TLS, as `jdbc.sslmode` (and libpq's `sslmode`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain connections only.
    #[default]
    Disable,
    /// Plain if the server accepts it, TLS otherwise. Treated like [`SslMode::Prefer`]: TLS is
    /// tried first, without certificate verification, and plain is used if the server has no TLS.
    Allow,
    /// TLS if the server offers it (certificate not verified), plain otherwise.
    Prefer,
    /// TLS is required; the server certificate is not verified (encryption only).
    Require,
    /// TLS is required and the server certificate must chain to the root certificate
    /// (`sslrootcert`); the host name is not compared with the certificate.
    VerifyCa,
    /// As [`SslMode::VerifyCa`], and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The property spelling (`verify-ca`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
                ))
            }
        })
    }
}

impl From<crate::config::SslMode> for SslMode {
    fn from(m: crate::config::SslMode) -> Self {
        use crate::config::SslMode as C;
        match m {
            C::Disable => Self::Disable,
            C::Allow => Self::Allow,
            C::Prefer => Self::Prefer,
            C::Require => Self::Require,
            C::VerifyCa => Self::VerifyCa,
            C::VerifyFull => Self::VerifyFull,
        }
    }
}

/// Where and how to connect to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    /// Host name or address (also the name a `verify-full` certificate must carry), or a Unix
    /// socket directory (starting with `/`; TLS is never used there).
    pub host: String,
    /// Address to connect to instead of resolving `host` (libpq's `hostaddr`).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// The password; when `None`, the password file is consulted (see [`DbTarget::passfile`]).
    pub password: Option<String>,
    /// Password file to use when no password is set; `None` means libpq's default
    /// (`$PGPASSFILE`, else `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    /// PEM file with the root certificate(s) for `verify-ca`/`verify-full`. When unset, the
    /// default of libpq (`~/.postgresql/root.crt`) is used if it exists, else the system roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
}

impl DbTarget {
    /// A target with the defaults: no password (password file), `sslmode=disable`,
    /// `application_name=efm`.
    #[must_use]
    pub fn new(host: impl Into<String>, port: u16, dbname: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            hostaddr: None,
            port,
            dbname: dbname.into(),
            user: user.into(),
            password: None,
            passfile: None,
            sslmode: SslMode::Disable,
            sslrootcert: None,
            application_name: "efm".to_owned(),
        }
    }

    /// `host:port` (IPv6 addresses bracketed), as used in error messages.
    #[must_use]
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The password to send: the configured one, else the password file's entry.
    #[must_use]
    pub fn resolve_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile.clone().or_else(default_pgpass_path)?;
        let host = match self.hostaddr {
            // libpq matches the host name when one is given, the address otherwise.
            Some(a) if self.host.is_empty() => a.to_string(),
            _ => self.host.clone(),
        };
        lookup_pgpass(&path, &host, self.port, &self.dbname, &self.user)
    }

    /// The `tokio_postgres` configuration for this target (password resolved).
    #[must_use]
    pub fn pg_config(&self, connect_timeout: Option<Duration>) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).dbname(&self.dbname).user(&self.user);
        c.application_name(&self.application_name);
        if let Some(a) = self.hostaddr {
            c.hostaddr(a);
        }
        if let Some(p) = self.resolve_password() {
            c.password(p);
        }
        if let Some(t) = connect_timeout {
            c.connect_timeout(t);
        }
        c.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        c
    }
}

/// What went wrong talking to a database. Every variant names the server (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("database {addr}: connection refused (is the server running and listening there?)")]
    Refused { addr: String },
    #[error("database {addr}: no answer within {}ms while {stage}", timeout.as_millis())]
    Timeout { addr: String, stage: &'static str, timeout: Duration },
    #[error("database {addr}: authentication failed for user {user:?}: {message}")]
    Auth { addr: String, user: String, message: String },
    #[error("database {addr}: TLS ({sslmode}): {message}")]
    Tls { addr: String, sslmode: SslMode, message: String },
    #[error("database {addr}: cannot connect: {message}")]
    Connect { addr: String, message: String },
    #[error("database {addr}: query failed: {message}")]
    Query { addr: String, message: String },
    #[error("database {addr}: unexpected reply: {message}")]
    Protocol { addr: String, message: String },
}

impl DbError {
    /// The `host:port` the error is about.
    #[must_use]
    pub fn addr(&self) -> &str {
        match self {
            Self::Refused { addr }
            | Self::Timeout { addr, .. }
            | Self::Auth { addr, .. }
            | Self::Tls { addr, .. }
            | Self::Connect { addr, .. }
            | Self::Query { addr, .. }
            | Self::Protocol { addr, .. } => addr,
        }
    }

    /// True for [`DbError::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// Whether the server itself answered the connection attempt — it runs and speaks the
    /// protocol — and refused it for a reason that says nothing about the database being
    /// down: the login (SQLSTATE class 28: `pg_hba.conf`, password, authorization) or the
    /// connection limit (53300: `max_connections` or a role's `CONNECTION LIMIT` reached; its
    /// existing sessions go on). A remote check that gets such an answer has reached the
    /// database (see `ha::confirm`). Refused or timed-out connections, TLS failures, a server
    /// starting up or shutting down (57P03) and failing queries are not such answers.
    #[must_use]
    pub fn server_answered(&self) -> bool {
        match self {
            Self::Auth { .. } => true,
            Self::Connect { message, .. } => message.ends_with("(53300)"),
            _ => false,
        }
    }
}

/// The full text of an error and its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn classify_connect(t: &DbTarget, e: &tokio_postgres::Error, timeout: Option<Duration>) -> DbError {
    let addr = t.addr();
    let message = chain(e);
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code.starts_with("28") {
            return DbError::Auth { addr, user: t.user.clone(), message: db.message().to_owned() };
        }
        return DbError::Connect { addr, message: format!("{} ({code})", db.message()) };
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return DbError::Refused { addr };
            }
            if io.kind() == std::io::ErrorKind::TimedOut {
                return DbError::Timeout { addr, stage: "connecting", timeout: timeout.unwrap_or_default() };
            }
        }
        cur = c.source();
    }
    let head = e.to_string();
    if head.starts_with("error performing TLS handshake") {
        return DbError::Tls { addr, sslmode: t.sslmode, message };
    }
    if head.starts_with("timeout waiting for server") {
        return DbError::Timeout { addr, stage: "connecting", timeout: timeout.unwrap_or_default() };
    }
    if head.starts_with("authentication error") || message.contains("password missing") {
        return DbError::Auth { addr, user: t.user.clone(), message };
    }
    DbError::Connect { addr, message }
}

fn tls_connector(t: &DbTarget) -> Result<postgres_native_tls::MakeTlsConnector, DbError> {
    let tls_err = |message: String| DbError::Tls { addr: t.addr(), sslmode: t.sslmode, message };
    let mut b = native_tls::TlsConnector::builder();
    match t.sslmode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => {
            b.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = t
                .sslrootcert
                .clone()
                .or_else(|| pgpass::home_dir().map(|h| h.join(".postgresql/root.crt")).filter(|p| p.exists()));
            if let Some(root) = root {
                let pem = std::fs::read(&root)
                    .map_err(|e| tls_err(format!("cannot read sslrootcert {}: {e}", root.display())))?;
                let certs = parse_pem_certs(&pem, &root).map_err(tls_err)?;
                for c in certs {
                    b.add_root_certificate(c);
                }
                b.disable_built_in_roots(true);
            }
            if t.sslmode == SslMode::VerifyCa {
                b.danger_accept_invalid_hostnames(true);
            }
        }
    }
    let c = b.build().map_err(|e| tls_err(format!("cannot set up TLS: {e}")))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(c))
}

/// Every certificate in a PEM bundle.
fn parse_pem_certs(pem: &[u8], path: &Path) -> Result<Vec<native_tls::Certificate>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = &*text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + end + END.len()];
        out.push(
            native_tls::Certificate::from_pem(block.as_bytes())
                .map_err(|e| format!("bad certificate in sslrootcert {}: {e}", path.display()))?,
        );
        rest = &rest[start + end + END.len()..];
    }
    if out.is_empty() {
        return Err(format!("sslrootcert {} contains no PEM certificate", path.display()));
    }
    Ok(out)
}

/// Connects to `target`. The whole connection set-up (TCP, TLS, authentication) must finish
/// within `timeout`. The connection is driven by a spawned task that ends when the [`Client`]
/// is dropped.
pub async fn connect(target: &DbTarget, timeout: Duration) -> Result<Client, DbError> {
    let cfg = target.pg_config(Some(timeout));
    let attempt = async {
        if target.sslmode == SslMode::Disable {
            let (client, conn) = cfg.connect(NoTls).await.map_err(|e| classify_connect(target, &e, Some(timeout)))?;
            spawn_connection(target.addr(), conn);
            Ok(client)
        } else {
            let tls = tls_connector(target)?;
            let (client, conn) = cfg.connect(tls).await.map_err(|e| classify_connect(target, &e, Some(timeout)))?;
            spawn_connection(target.addr(), conn);
            Ok(client)
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DbError::Timeout { addr: target.addr(), stage: "connecting", timeout }),
    }
}

fn spawn_connection<S, T>(addr: String, conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(db = %addr, error = %e, "database connection ended");
        }
    });
}

/// A server's state as reported by one probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DbInfo {
    /// `pg_is_in_recovery()`: true on a standby.
    pub in_recovery: bool,
    /// `server_version_num` (150004 for 15.4).
    pub server_version_num: u32,
    /// Primary only: `pg_current_wal_lsn()`.
    pub current_lsn: Option<Lsn>,
    /// Standby only: `pg_last_wal_receive_lsn()` (WAL received by streaming; `None` if the
    /// standby never streamed).
    pub receive_lsn: Option<Lsn>,
    /// Standby only: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// The timeline: on a primary from the name of the current WAL file; on a standby the
    /// WAL receiver's timeline, else the last checkpoint's (`pg_control_checkpoint()`), if the
    /// user may read them.
    pub timeline: Option<u32>,
    /// Standby: the WAL receiver reports status `streaming`. Needs superuser or
    /// `pg_read_all_stats`; false otherwise.
    pub is_streaming: bool,
    /// Standby: the host it replicates from (WAL receiver's `sender_host`, else `host=` of
    /// `primary_conninfo` when visible to the user).
    pub upstream_host: Option<String>,
}

impl DbInfo {
    /// The furthest WAL position this server has: current on a primary, the later of receive
    /// and replay on a standby.
    #[must_use]
    pub fn wal_position(&self) -> Option<Lsn> {
        if self.in_recovery {
            self.receive_lsn.max(self.replay_lsn)
        } else {
            self.current_lsn
        }
    }
}

const PROBE_SQL: &str = "\
SELECT pg_is_in_recovery(), current_setting('server_version_num'), \
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
  pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END; \
SELECT status, received_tli, sender_host FROM pg_stat_wal_receiver; \
SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'";

const WAL_POSITION_SQL: &str = "\
SELECT pg_is_in_recovery(), \
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
  pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()";

/// The cheap part of [`probe`]: whether the server is in recovery and its WAL position as
/// [`DbInfo::wal_position`] defines it (current on a primary; on a standby the later of the
/// WAL received and flushed by streaming and the WAL replayed). Run every half heartbeat on a
/// persistent connection by [`crate::localdb::track_wal`].
pub async fn wal_position(client: &Client, addr: &str) -> Result<(bool, Option<Lsn>), DbError> {
    let sets = result_sets(
        client
            .simple_query(WAL_POSITION_SQL)
            .await
            .map_err(|e| DbError::Query { addr: addr.to_owned(), message: chain(&e) })?,
    );
    let proto = |m: String| DbError::Protocol { addr: addr.to_owned(), message: m };
    let row = sets
        .first()
        .and_then(|s| s.first())
        .filter(|r| r.len() == 4)
        .ok_or_else(|| proto("WAL position query returned no row".into()))?;
    let lsn = |i: usize| -> Result<Option<Lsn>, DbError> {
        row[i].as_deref().map(str::parse).transpose().map_err(|e: ParseLsnError| proto(e.to_string()))
    };
    let in_recovery = match row[0].as_deref() {
        Some("t") => true,
        Some("f") => false,
        other => return Err(proto(format!("pg_is_in_recovery() returned {other:?}"))),
    };
    let info = DbInfo {
        in_recovery,
        server_version_num: 0,
        current_lsn: lsn(1)?,
        receive_lsn: lsn(2)?,
        replay_lsn: lsn(3)?,
        timeline: None,
        is_streaming: false,
        upstream_host: None,
    };
    Ok((in_recovery, info.wal_position()))
}

/// Text rows of the result sets of a simple query, one `Vec` per statement.
fn result_sets(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Vec<Option<String>>>> {
    let mut sets = vec![Vec::new()];
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                let row = (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect();
                sets.last_mut().expect("never empty").push(row);
            }
            SimpleQueryMessage::CommandComplete(_) => sets.push(Vec::new()),
            _ => {}
        }
    }
    sets.pop();
    sets
}

/// Asks a connected server for its [`DbInfo`].
pub async fn probe(client: &Client, addr: &str) -> Result<DbInfo, DbError> {
    let q = |e: &tokio_postgres::Error| DbError::Query { addr: addr.to_owned(), message: chain(e) };
    let proto = |m: String| DbError::Protocol { addr: addr.to_owned(), message: m };
    let sets = result_sets(client.simple_query(PROBE_SQL).await.map_err(|e| q(&e))?);
    let main = sets
        .first()
        .and_then(|s| s.first())
        .filter(|r| r.len() == 6)
        .ok_or_else(|| proto("probe returned no row".into()))?;
    let lsn = |i: usize| -> Result<Option<Lsn>, DbError> {
        main[i].as_deref().map(str::parse).transpose().map_err(|e: ParseLsnError| proto(e.to_string()))
    };
    let in_recovery = match main[0].as_deref() {
        Some("t") => true,
        Some("f") => false,
        other => return Err(proto(format!("pg_is_in_recovery() returned {other:?}"))),
    };
    let server_version_num = main[1]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| proto(format!("server_version_num is {:?}", main[1])))?;
    let mut info = DbInfo {
        in_recovery,
        server_version_num,
        current_lsn: lsn(2)?,
        receive_lsn: lsn(3)?,
        replay_lsn: lsn(4)?,
        timeline: main[5].as_deref().and_then(|f| f.get(..8)).and_then(|h| u32::from_str_radix(h, 16).ok()),
        is_streaming: false,
        upstream_host: None,
    };
    if in_recovery {
        if let Some(w) = sets.get(1).and_then(|s| s.first()) {
            info.is_streaming = w.first().and_then(Option::as_deref) == Some("streaming");
            info.timeline = w.get(1).and_then(Option::as_deref).and_then(|t| t.parse().ok());
            info.upstream_host = w.get(2).and_then(Clone::clone).filter(|h| !h.is_empty());
        }
        if info.upstream_host.is_none() {
            info.upstream_host = sets
                .get(2)
                .and_then(|s| s.first())
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|ci| conninfo_value(&ci, "host"));
        }
        if info.timeline.is_none() {
            // Needs the right to execute pg_control_checkpoint(); not fatal if missing.
            match client.simple_query("SELECT timeline_id FROM pg_control_checkpoint()").await {
                Ok(m) => {
                    info.timeline = result_sets(m)
                        .first()
                        .and_then(|s| s.first())
                        .and_then(|r| r.first().cloned().flatten())
                        .and_then(|t| t.parse().ok());
                }
                Err(e) => {
                    tracing::debug!(db = addr, error = %e, "cannot read the checkpoint timeline");
                }
            }
        }
    }
    Ok(info)
}

/// The value of `key` in a libpq keyword/value connection string (quotes and escapes
/// handled), e.g. `host` of `primary_conninfo`.
#[must_use]
pub fn conninfo_value(conninfo: &str, key: &str) -> Option<String> {
    parse_conninfo(conninfo).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Every `keyword=value` pair of a libpq connection string, in order (quotes and escapes
/// handled). Parsing stops at the first malformed pair.
#[must_use]
pub fn parse_conninfo(conninfo: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return out;
        }
        let mut k = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            k.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return out;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut v = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => v.push(c),
                        None => return out,
                    },
                    Some('\'') => break,
                    Some(c) => v.push(c),
                    None => return out,
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    match chars.next() {
                        Some(c) => v.push(c),
                        None => return out,
                    }
                } else {
                    v.push(c);
                }
            }
        }
        out.push((k, v));
    }
}

/// One server setting (`current_setting(name)`), read within `timeout`.
pub async fn setting(target: &DbTarget, name: &str, timeout: Duration) -> Result<String, DbError> {
    let addr = target.addr();
    let work = async {
        let client = connect(target, timeout).await?;
        let row = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| DbError::Query { addr: addr.clone(), message: chain(&e) })?;
        row.try_get::<_, String>(0).map_err(|e| DbError::Protocol { addr: addr.clone(), message: chain(&e) })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(DbError::Timeout { addr: addr.clone(), stage: "reading a setting", timeout }))
}

/// Probes another node's database once: connect, query, disconnect, all within
/// `remote_timeout` (EFM's `remote.timeout`).
pub async fn remote_check(target: &DbTarget, remote_timeout: Duration) -> Result<DbInfo, DbError> {
    let addr = target.addr();
    let work = async {
        let client = connect(target, remote_timeout).await?;
        probe(&client, &addr).await
    };
    match tokio::time::timeout(remote_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(DbError::Timeout { addr, stage: "checking the remote database", timeout: remote_timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_login_or_a_full_server_is_an_answer_a_refused_connection_is_not() {
        let addr = || "198.18.0.1:5432".to_owned();
        let connect = |m: &str| DbError::Connect { addr: addr(), message: m.into() };
        assert!(connect("sorry, too many clients already (53300)").server_answered());
        assert!(connect("too many connections for role \"efm\" (53300)").server_answered());
        assert!(DbError::Auth { addr: addr(), user: "efm".into(), message: "no pg_hba.conf entry".into() }
            .server_answered());
        assert!(!connect("the database system is shutting down (57P03)").server_answered());
        assert!(!DbError::Refused { addr: addr() }.server_answered());
        assert!(
            !DbError::Timeout { addr: addr(), stage: "connecting", timeout: Duration::from_secs(1) }.server_answered()
        );
        assert!(!DbError::Query { addr: addr(), message: "x (53300)".into() }.server_answered());
    }

    #[test]
    fn conninfo_parsing() {
        let ci = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer host=198.18.0.1 port=5432 sslmode=prefer application_name='a b\\'c'";
        assert_eq!(conninfo_value(ci, "host").as_deref(), Some("198.18.0.1"));
        assert_eq!(conninfo_value(ci, "passfile").as_deref(), Some("/var/lib/postgresql/.pgpass"));
        assert_eq!(conninfo_value(ci, "application_name").as_deref(), Some("a b'c"));
        assert_eq!(conninfo_value(ci, "dbname"), None);
        assert_eq!(conninfo_value("host = db1  port=1", "port").as_deref(), Some("1"));
        assert_eq!(conninfo_value("", "host"), None);
    }

    #[test]
    fn sslmode_names_round_trip() {
        for m in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(m.as_str().parse::<SslMode>(), Ok(m));
        }
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn error_messages_name_the_server() {
        let e = DbError::Timeout { addr: "db1:5432".into(), stage: "connecting", timeout: Duration::from_millis(1500) };
        assert_eq!(e.to_string(), "database db1:5432: no answer within 1500ms while connecting");
        let t = DbTarget::new("fd00::1", 5444, "postgres", "efm");
        assert_eq!(t.addr(), "[fd00::1]:5444");
    }

    #[test]
    fn password_property_wins_over_passfile() {
        let mut t = DbTarget::new("h", 1, "d", "u");
        t.passfile = Some(PathBuf::from("/nonexistent/pgpass"));
        assert_eq!(t.resolve_password(), None);
        t.password = Some("p".into());
        assert_eq!(t.resolve_password().as_deref(), Some("p"));
    }
}
