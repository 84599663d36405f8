//! The agent's view of its own database: how to reach it, its role at start, and the task that
//! keeps [`DbView`] current from the local monitor's events (`local.period`, `local.timeout`,
//! `local.timeout.final`; see [`crate::postgres::monitor`]).

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    agent::{lock, Role, Shared},
    config::Config,
    postgres::{
        self,
        monitor::{DbEvent, LocalMonitor, LocalTimings},
        DbInfo, DbTarget, Lsn,
    },
    secret,
};

/// What the agent last learned about its database.
#[derive(Clone, Debug, Default)]
pub struct DbView {
    /// `None` until the first check finished.
    pub up: Option<bool>,
    pub info: Option<DbInfo>,
    pub error: Option<String>,
}

impl DbView {
    /// The WAL position to advertise: current LSN on a primary, replayed LSN on a standby.
    #[must_use]
    pub fn lsn(&self) -> Option<Lsn> {
        self.info.as_ref().and_then(DbInfo::wal_position)
    }
}

/// A WAL position read by [`track_wal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSample {
    pub lsn: Lsn,
    pub in_recovery: bool,
    /// `CLOCK_MONOTONIC` ns just before the query was sent: the position is at least this new.
    pub at_ns: u64,
}

/// The WAL position this node advertises (PINGs, PONGs) and decides with at `now_ns`: the
/// latest sample if it is at most two heartbeat intervals old, else 0 — "unknown", never
/// compared as a position (the HA engine's `position_max_age`).
#[must_use]
pub fn fresh_lsn(sample: Option<WalSample>, now_ns: u64, heartbeat_interval: Duration) -> u64 {
    let max_age = u64::try_from((heartbeat_interval * 2).as_nanos()).unwrap_or(u64::MAX);
    sample.filter(|w| now_ns.saturating_sub(w.at_ns) <= max_age).map_or(0, |w| w.lsn.0)
}

/// Keeps `shared.wal` fresh: every half `heartbeat.interval` (at most every 10 ms) one query
/// (`pg_is_in_recovery()`, the current, received and replayed positions) on a persistent
/// connection, independently of the `local.period` monitor and never on the heartbeat loop. A
/// query is bounded by four heartbeat intervals (at least 200 ms); a failed or slow one drops
/// the connection, which is opened again (within 2 s; 250 ms apart after a failed attempt).
/// Meanwhile the sample ages and [`fresh_lsn`] turns it into "unknown".
pub async fn track_wal(shared: Arc<Mutex<Shared>>, target: DbTarget) {
    let hb = lock(&shared).config.heartbeat_interval;
    let period = (hb / 2).max(Duration::from_millis(10));
    let query_timeout = (hb * 4).max(Duration::from_millis(200));
    let connect_timeout = Duration::from_secs(2);
    let addr = target.addr();
    let mut client = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.is_none() {
            match postgres::connect(&target, connect_timeout).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !failing {
                        tracing::warn!(db = %addr, error = %e, "cannot read the WAL position; it is advertised as unknown until it can");
                    }
                    failing = true;
                    // A database that is down refuses at once: do not knock 40 times a second.
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let at_ns = crate::heartbeat::monotonic_ns();
        match tokio::time::timeout(query_timeout, postgres::wal_position(c, &addr)).await {
            Ok(Ok((in_recovery, lsn))) => {
                if failing {
                    tracing::info!(db = %addr, lsn = ?lsn, "reading the WAL position again");
                    failing = false;
                }
                lock(&shared).wal = lsn.map(|lsn| WalSample { lsn, in_recovery, at_ns });
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(db = %addr, error = %e, "reading the WAL position failed; reconnecting");
                }
                failing = true;
                client = None;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(db = %addr, timeout_ms = query_timeout.as_millis(), "reading the WAL position timed out; reconnecting");
                }
                failing = true;
                client = None;
            }
        }
    }
}

/// The pause after a failed connection attempt of [`track_wal`].
const CONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// Aborts the task when dropped (the WAL tracker ends with [`run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How to reach the database of the node at `host` with this cluster's settings. The password
/// is `db.password.encrypted` decrypted with `<config_dir>/efm.key`; without it, libpq's rules
/// apply (`.pgpass`).
pub fn target(cfg: &Config, config_dir: &Path, host: &str) -> Result<DbTarget, String> {
    let mut t = DbTarget::new(host, cfg.db_port, &cfg.db_database, &cfg.db_user);
    t.sslmode = cfg.jdbc_sslmode.into();
    t.application_name = format!("efm-{}", cfg.cluster);
    if let Some(enc) = &cfg.db_password_encrypted {
        let key = secret::Key::load(&config_dir.join("efm.key")).map_err(|e| e.to_string())?;
        t.password = Some(secret::decrypt(&key, &cfg.cluster, enc).map_err(|e| e.to_string())?);
    }
    Ok(t)
}

/// The role the local database gives this node at start (standby if in recovery, else primary)
/// and what the check found.
pub async fn initial_role(cfg: &Config, target: &DbTarget) -> Result<(Role, DbInfo), postgres::DbError> {
    let info = postgres::remote_check(target, cfg.local_timeout).await?;
    Ok((if info.in_recovery { Role::Standby } else { Role::Primary }, info))
}

/// Keeps `shared.db` (and the role of a non-witness node) current until aborted.
pub async fn run(shared: Arc<Mutex<Shared>>, target: DbTarget) {
    let timings = LocalTimings::from_config(&lock(&shared).config);
    let data_dir = lock(&shared).config.db_data_dir.clone();
    if let Some(dir) = data_dir {
        tokio::spawn(watch_postmaster(shared.clone(), target.clone(), dir, timings.timeout_final));
    }
    let _wal = AbortOnDrop(tokio::spawn(track_wal(shared.clone(), target.clone())));
    let (tx, mut rx) = mpsc::channel(16);
    let mut notices = crate::notify::local::LocalDbNotices::new(timings.timeout);
    let monitor = LocalMonitor::new(timings, Instant::now());
    tokio::spawn(monitor.run(target, tx, std::future::pending()));
    while let Some(ev) = rx.recv().await {
        // EFM's notifications about the local database (connection refused, timing out,
        // standby.signal on a primary): see `notify::local`.
        let node = lock(&shared).me.ip().to_string();
        let notes = notices.observe(&ev, Instant::now(), &node, || crate::notify::local::recovery_file(&lock(&shared).config));
        if !notes.is_empty() {
            let cfg = lock(&shared).config.clone();
            for n in notes {
                crate::notify::emit(&cfg, n);
            }
        }
        let mut s = lock(&shared);
        match ev {
            DbEvent::Available(info) | DbEvent::Checked(info) | DbEvent::Recovered(info) => {
                let role = if info.in_recovery { Role::Standby } else { Role::Primary };
                if s.role != role {
                    tracing::info!(from = %s.role, to = %role, "role from the local database");
                    s.role = role;
                }
                if s.db.up != Some(true) {
                    tracing::info!(lsn = ?info.wal_position(), "local database is up");
                }
                s.db = DbView { up: Some(true), info: Some(info), error: None };
            }
            DbEvent::CheckFailed { error, silent_for } => {
                tracing::warn!(%error, silent_ms = silent_for.as_millis(), "local database check failed");
            }
            DbEvent::Failed { error, silent_for, .. } => {
                tracing::error!(%error, silent_ms = silent_for.as_millis(), "local database failed");
                s.db.up = Some(false);
                s.db.error = Some(error.to_string());
            }
        }
    }
}

/// Watches the postmaster process named in `<data_dir>/postmaster.pid` (a pidfd becomes readable
/// when the process exits). When it exits, one final check runs at once with
/// `local.timeout.final`; if that fails too, the database is declared failed without waiting for
/// `local.timeout` — the process is gone, there is nothing to wait for. The periodic monitor
/// keeps running and reports the recovery when a new postmaster answers.
async fn watch_postmaster(shared: Arc<Mutex<Shared>>, target: DbTarget, data_dir: std::path::PathBuf, final_timeout: std::time::Duration) {
    use tokio::io::unix::AsyncFd;
    loop {
        let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let Some(pid) = pid else {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        let Some(owned) = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
        else {
            // No such process (stale pid file): the monitor's checks decide.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        // SAFETY: `owned` is a valid pidfd that the AsyncFd owns until it is dropped.
        let Ok(afd) = (unsafe { AsyncFd::register(owned) }) else { return };
        if let Ok(mut guard) = afd.readable().await {
            guard.clear_ready();
        }
        tracing::warn!(pid, "the postmaster exited; checking the database once more");
        let ok = crate::postgres::remote_check(&target, final_timeout).await.is_ok();
        if !ok {
            let mut s = lock(&shared);
            if s.db.up != Some(false) {
                tracing::error!(pid, "local database failed: the postmaster exited and the final check failed");
            }
            s.db.up = Some(false);
            s.db.error = Some(format!("postmaster (pid {pid}) exited"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_older_than_two_heartbeats_is_advertised_as_unknown() {
        let hb = Duration::from_millis(50);
        let w = Some(WalSample { lsn: Lsn(0x1_0000_0060), in_recovery: true, at_ns: 1_000_000_000 });
        assert_eq!(fresh_lsn(w, 1_000_000_000, hb), 0x1_0000_0060);
        assert_eq!(fresh_lsn(w, 1_100_000_000, hb), 0x1_0000_0060, "exactly two heartbeats old");
        assert_eq!(fresh_lsn(w, 1_100_000_001, hb), 0, "older: unknown");
        assert_eq!(fresh_lsn(None, 1_000_000_000, hb), 0, "never read");
        // The `local.period` monitor's view plays no part: only the sample's age counts.
        assert_eq!(fresh_lsn(w, 11_000_000_000, hb), 0);
    }
}
