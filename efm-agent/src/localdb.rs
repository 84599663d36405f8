//! The agent's view of its own database: how to reach it, its role at start, and the task that
//! owns [`LocalDatabase`] — kept current from the local monitor's events (`local.period`,
//! `local.timeout`, `local.timeout.final`; see [`crate::postgres::monitor`]), the postmaster
//! watch, and the [`DbReport`]s other tasks send it (it is the only writer; see
//! [`crate::node`]) — and the WAL position tracker.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{
    config::Config,
    node::{DbOwner, DbReport, DbUpdate, Identity, LocalDatabase, Role},
    postgres::{
        self,
        monitor::{DbEvent, LocalMonitor, LocalTimings},
        DbInfo, DbTarget,
    },
    secret,
};

/// Kept under their old path for callers (they live in [`crate::node`]).
pub use crate::node::{DbView, WalSample};

/// The WAL position this node advertises (PINGs, PONGs) and decides with at `now_ns`: the
/// latest sample if it is at most two heartbeat intervals old, else 0 — "unknown", never
/// compared as a position (the HA engine's `position_max_age`).
#[must_use]
pub fn fresh_lsn(sample: Option<WalSample>, now_ns: u64, heartbeat_interval: Duration) -> u64 {
    let max_age = u64::try_from((heartbeat_interval * 2).as_nanos()).unwrap_or(u64::MAX);
    sample.filter(|w| now_ns.saturating_sub(w.at_ns) <= max_age).map_or(0, |w| w.lsn.0)
}

/// Keeps the WAL sample fresh (its only writer): every half `heartbeat.interval` (at most every 10 ms) one query
/// (`pg_is_in_recovery()`, the current, received and replayed positions) on a persistent
/// connection, independently of the `local.period` monitor and never on the heartbeat loop. A
/// query is bounded by four heartbeat intervals (at least 200 ms); a failed or slow one drops
/// the connection, which is opened again (within 2 s; 250 ms apart after a failed attempt).
/// Meanwhile the sample ages and [`fresh_lsn`] turns it into "unknown".
pub async fn track_wal(hb: Duration, wal: watch::Sender<Option<WalSample>>, target: DbTarget) {
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
                wal.send_replace(lsn.map(|lsn| WalSample { lsn, in_recovery, at_ns }));
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

/// Aborts the task when dropped (the WAL tracker and the postmaster watch end with [`run`]).
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

/// Owns [`LocalDatabase`] (the view and the role of a non-witness node) until aborted: applies
/// the local monitor's events, the postmaster watch's verdicts and other tasks' [`DbReport`]s,
/// in the order they arrive. Runs [`track_wal`] beside it.
pub async fn run(id: Arc<Identity>, owner: DbOwner, target: DbTarget) {
    let DbOwner { db, mut reports, wal } = owner;
    let timings = LocalTimings::from_config(&id.config);
    let (gone_tx, mut gone) = mpsc::channel(4);
    let _postmaster =
        id.config.db_data_dir.clone().map(|dir| {
            AbortOnDrop(tokio::spawn(watch_postmaster(gone_tx, target.clone(), dir, timings.timeout_final)))
        });
    let _wal = AbortOnDrop(tokio::spawn(track_wal(id.config.heartbeat_interval, wal, target.clone())));
    let (tx, mut rx) = mpsc::channel(16);
    let mut notices = crate::notify::local::LocalDbNotices::new(timings.timeout);
    let monitor = LocalMonitor::new(timings, Instant::now());
    let (recovered_tx, recovered_rx) = mpsc::channel(4);
    tokio::spawn(monitor.run_with(target, tx, std::future::pending(), Some(recovered_rx)));
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    notify_local(&mut notices, &ev, &id);
                    db.send_modify(|s| on_event(s, ev));
                }
                None => return,
            },
            Some(pid) = gone.recv() => db.send_modify(|s| postmaster_gone(s, pid)),
            Some(r) = reports.recv() => {
                // A check outside the monitor found the database up: the monitor counts from
                // there, so a failure right after `efm resume` is reported again.
                if matches!(r.update, DbUpdate::Checked(_)) {
                    let _ = recovered_tx.try_send(());
                }
                serve_report(&db, r);
            }
        }
    }
}

/// EFM's notifications about the local database (connection refused, timing out,
/// standby.signal on a primary): see `notify::local`.
fn notify_local(notices: &mut crate::notify::local::LocalDbNotices, ev: &DbEvent, id: &Identity) {
    let node = id.me.ip().to_string();
    for n in notices.observe(ev, Instant::now(), &node, || crate::notify::local::recovery_file(&id.config)) {
        crate::notify::emit(&id.config, n);
    }
}

/// Applies a report and tells its sender (who may now rely on the view showing it).
fn serve_report(db: &watch::Sender<LocalDatabase>, r: DbReport) {
    db.send_modify(|s| apply(s, r.update));
    let _ = r.applied.send(());
}

/// A successful check: the database is up, and its role is this node's.
fn observed(s: &mut LocalDatabase, info: DbInfo) {
    let role = if info.in_recovery { Role::Standby } else { Role::Primary };
    if s.role != role {
        tracing::info!(from = %s.role, to = %role, "role from the local database");
        s.role = role;
    }
    if s.view.up != Some(true) {
        tracing::info!(lsn = ?info.wal_position(), "local database is up");
    }
    s.view = DbView { up: Some(true), info: Some(info), error: None, postmaster_exited: false };
}

fn on_event(s: &mut LocalDatabase, ev: DbEvent) {
    match ev {
        DbEvent::Available(info) | DbEvent::Checked(info) | DbEvent::Recovered(info) => observed(s, info),
        DbEvent::CheckFailed { error, silent_for } => {
            tracing::warn!(%error, silent_ms = silent_for.as_millis(), "local database check failed");
        }
        DbEvent::Failed { error, silent_for, .. } => {
            tracing::error!(%error, silent_ms = silent_for.as_millis(), "local database failed");
            s.view.up = Some(false);
            s.view.error = Some(error.to_string());
        }
    }
}

fn postmaster_gone(s: &mut LocalDatabase, pid: i32) {
    if s.view.up != Some(false) {
        tracing::error!(pid, "local database failed: the postmaster exited and the final check failed");
    }
    s.view.up = Some(false);
    s.view.error = Some(format!("postmaster (pid {pid}) exited"));
    // Down for certain: the HA engine does not ask the other agents to confirm it.
    s.view.postmaster_exited = true;
}

/// What another task learned (see [`DbUpdate`]), applied by the owner.
fn apply(s: &mut LocalDatabase, update: DbUpdate) {
    match update {
        DbUpdate::Promoted => {
            if let Some(info) = s.view.info.as_mut() {
                info.in_recovery = false;
            }
            s.view.up = Some(true);
            s.role = Role::Primary;
        }
        DbUpdate::Checked(info) => observed(s, info),
    }
}

/// Watches the postmaster process named in `<data_dir>/postmaster.pid` (a pidfd becomes readable
/// when the process exits). When it exits, one final check runs at once with
/// `local.timeout.final`; if that fails too, the database is declared failed without waiting for
/// `local.timeout` — the process is gone, there is nothing to wait for. The periodic monitor
/// keeps running and reports the recovery when a new postmaster answers.
async fn watch_postmaster(
    gone: mpsc::Sender<i32>,
    target: DbTarget,
    data_dir: std::path::PathBuf,
    final_timeout: std::time::Duration,
) {
    use tokio::io::unix::AsyncFd;
    loop {
        let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            // A single-user server (crash recovery before a rewind) writes its pid negated;
            // there is no postmaster to watch then (and `Pid::from_raw` asserts a positive pid).
            .filter(|p| *p > 0);
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
        if !ok && gone.send(pid).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::Lsn;

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

    fn standby(upstream: Option<&str>) -> DbInfo {
        DbInfo {
            in_recovery: true,
            server_version_num: 150_004,
            current_lsn: None,
            receive_lsn: Some(Lsn(0x2ff_0000)),
            replay_lsn: Some(Lsn(0x2ff_0000)),
            timeline: Some(1),
            is_streaming: upstream.is_some(),
            upstream_host: upstream.map(str::to_owned),
        }
    }

    fn primary() -> DbInfo {
        DbInfo {
            in_recovery: false,
            current_lsn: Some(Lsn(0x300_0000)),
            receive_lsn: None,
            replay_lsn: None,
            ..standby(None)
        }
    }

    fn config() -> Config {
        let props = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=pg\ndb.data.dir=/d\nbind.address=198.18.0.1:7800\n";
        let nodes = vec!["198.18.0.1:7800".parse().unwrap(), "198.18.0.2:7800".parse().unwrap()];
        crate::config::from_properties(props, Path::new("/etc/efm/acctg.properties"), "acctg", nodes).unwrap().config
    }

    fn identity() -> Arc<Identity> {
        let config = config();
        Arc::new(Identity {
            me: config.bind_address,
            config,
            node_id: 1,
            config_dir: "/etc/efm".into(),
            iface: "eth0".into(),
            attachment: "native".into(),
            started_unix_ms: 0,
        })
    }

    fn failed_standby() -> LocalDatabase {
        LocalDatabase {
            role: Role::Standby,
            view: DbView {
                up: Some(false),
                info: Some(standby(None)),
                error: Some("gone".into()),
                postmaster_exited: false,
            },
        }
    }

    /// The promotion task and `efm resume` report to the owner, which applies the report before
    /// the sender goes on; without an owner the sender is told so.
    #[tokio::test]
    async fn reports_are_applied_by_the_owner_before_the_sender_goes_on() {
        let (facts, owners) = crate::node::wire(identity(), failed_standby(), Vec::new(), 3);
        let DbOwner { db, mut reports, .. } = owners.db;
        let owner = tokio::spawn(async move {
            while let Some(r) = reports.recv().await {
                serve_report(&db, r);
            }
        });

        facts.report_db(DbUpdate::Promoted).await.unwrap();
        let now = facts.db.borrow().clone();
        assert_eq!(now.role, Role::Primary);
        assert_eq!(now.view.up, Some(true));
        assert_eq!(
            now.view.info.as_ref().map(|i| i.in_recovery),
            Some(false),
            "pg_promote() confirmed it left recovery"
        );

        facts.report_db(DbUpdate::Checked(standby(Some("198.18.0.2")))).await.unwrap();
        let now = facts.db.borrow().clone();
        assert_eq!(now.role, Role::Standby, "a check gives the role, as the monitor's do");
        assert_eq!((now.view.up, now.view.error), (Some(true), None));
        assert_eq!(now.view.info.and_then(|i| i.upstream_host).as_deref(), Some("198.18.0.2"));

        owner.abort();
        let _ = owner.await;
        let gone = facts.report_db(DbUpdate::Promoted).await.unwrap_err();
        assert!(gone.to_string().contains("database task"), "{gone}");
        assert_eq!(facts.db.borrow().role, Role::Standby, "nothing applied without the owner");
    }

    #[test]
    fn monitor_events_and_the_postmaster_watch_change_the_view_as_before() {
        let mut s = failed_standby();
        on_event(&mut s, DbEvent::Recovered(primary()));
        assert_eq!((s.role, s.view.up, s.view.error.clone()), (Role::Primary, Some(true), None));
        postmaster_gone(&mut s, 4242);
        assert_eq!((s.role, s.view.up), (Role::Primary, Some(false)), "the role stays what the database last said");
        assert_eq!(s.view.error.as_deref(), Some("postmaster (pid 4242) exited"));
        assert!(s.view.postmaster_exited, "down for certain: no confirmation by the other agents");
        on_event(
            &mut s,
            DbEvent::CheckFailed {
                error: crate::postgres::DbError::Refused { addr: "198.18.0.1:5444".into() },
                silent_for: Duration::from_secs(1),
            },
        );
        assert_eq!(s.view.up, Some(false), "a failed check alone changes nothing");
        on_event(&mut s, DbEvent::Recovered(primary()));
        assert!(!s.view.postmaster_exited, "a new postmaster answers");
        on_event(
            &mut s,
            DbEvent::Failed {
                error: crate::postgres::DbError::Connect {
                    addr: "198.18.0.1:5444".into(),
                    message: "sorry, too many clients already (53300)".into(),
                },
                silent_for: Duration::from_secs(6),
                ever_available: true,
            },
        );
        assert_eq!(s.view.up, Some(false));
        assert!(!s.view.postmaster_exited, "only the local checks fail: the other agents are asked first");
    }
}
