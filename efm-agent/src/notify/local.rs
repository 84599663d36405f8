//! The notifications the local database monitor's events imply, decided by a pure tracker the
//! agent's database task ([`crate::localdb::run`]) feeds with every [`DbEvent`]:
//!
//! - **"Unable to connect to DB on …"** ([`Event::DbConnectFailed`]): a check was refused by the
//!   server for one of EFM's reasons — the connection limit (SQLSTATE 53300: `max_connections`
//!   reached, or only reserved slots left) or authentication (SQLSTATE class 28: wrong password,
//!   no `pg_hba.conf` entry, invalid authorization). Once per episode: again only after a
//!   successful check.
//! - **"Agent is timing out"** ([`Event::AgentTimingOut`]): `local.timeout` passed without a
//!   successful check, and the final check then succeeded, so the database was not declared
//!   failed (EFM's meaning: the agent timed out reaching its database, then reached it again).
//! - **"standby.signal/recovery.conf file … has been found"** ([`Event::RecoveryConfFound`]): the
//!   first time this agent sees its database as a primary, that database's data directory holds
//!   `standby.signal` (or `recovery.conf`): a restart would bring it back as a standby.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::Event;
use crate::{
    config::Config,
    postgres::{monitor::DbEvent, DbError},
};

/// Why a connection error is one of EFM's "Unable to connect to DB" cases; `None` for anything
/// else (refused TCP connection, timeout, query error: the monitor's failure handling covers
/// those).
#[must_use]
pub fn connect_refusal(error: &DbError) -> Option<String> {
    match error {
        DbError::Auth { .. } => Some(format!("the server refused the login: {error}")),
        DbError::Connect { message, .. } if message.contains("(53300)") => {
            Some(format!("the server's connection limit (max_connections) has been reached: {error}"))
        }
        _ => None,
    }
}

/// The file that makes a primary database come back as a standby when restarted, if present:
/// `standby.signal` in `db.data.dir`, or `recovery.conf` in `db.recovery.conf.dir` (default
/// `db.data.dir`).
#[must_use]
pub fn recovery_file(cfg: &Config) -> Option<PathBuf> {
    let data = cfg.db_data_dir.as_deref();
    let conf_dir = cfg.db_recovery_conf_dir.as_deref().or(data);
    let candidates = [data.map(|d| d.join("standby.signal")), conf_dir.map(|d| d.join("recovery.conf"))];
    candidates.into_iter().flatten().find(|p| Path::exists(p))
}

/// Per-episode memory for the notifications above (see the module documentation).
#[derive(Debug)]
pub struct LocalDbNotices {
    local_timeout: Duration,
    last_ok: Option<Instant>,
    failed_since_ok: bool,
    refusal_sent: bool,
    primary_seen: bool,
}

impl LocalDbNotices {
    /// `local_timeout` is `local.timeout`.
    #[must_use]
    pub fn new(local_timeout: Duration) -> Self {
        Self { local_timeout, last_ok: None, failed_since_ok: false, refusal_sent: false, primary_seen: false }
    }

    /// The notifications `ev`, observed at `now`, calls for. `node` is this node's address;
    /// `recovery_file` is asked once, the first time the database shows itself a primary.
    pub fn observe(
        &mut self,
        ev: &DbEvent,
        now: Instant,
        node: &str,
        recovery_file: impl FnOnce() -> Option<PathBuf>,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        match ev {
            DbEvent::CheckFailed { error, .. } | DbEvent::Failed { error, .. } => {
                self.failed_since_ok = true;
                if !self.refusal_sent {
                    if let Some(reason) = connect_refusal(error) {
                        self.refusal_sent = true;
                        out.push(Event::DbConnectFailed { node: node.to_owned(), reason });
                    }
                }
                if matches!(ev, DbEvent::Failed { .. }) {
                    // Declared failed: its recovery is EFM's resume flow, not "timing out".
                    self.last_ok = None;
                }
            }
            DbEvent::Available(info) | DbEvent::Checked(info) | DbEvent::Recovered(info) => {
                let silent = self.last_ok.map(|t| now.saturating_duration_since(t));
                if self.failed_since_ok && silent.is_some_and(|s| s >= self.local_timeout) {
                    out.push(Event::AgentTimingOut);
                }
                if !info.in_recovery && !self.primary_seen {
                    self.primary_seen = true;
                    if let Some(path) = recovery_file() {
                        out.push(Event::RecoveryConfFound { path: path.display().to_string() });
                    }
                }
                self.last_ok = Some(now);
                self.failed_since_ok = false;
                self.refusal_sent = false;
            }
        }
        out
    }
}
