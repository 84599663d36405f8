//! What the executor does to the local database: promote it (after the VIP check and
//! `script.fence`), make it follow a new primary, demote it to a standby, rejoin it. Each runs
//! as a task of [`super::runtime`]; file writes go to the blocking pool.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::runtime::run_hook;
use crate::{
    config::Config,
    localdb,
    postgres::{self, control},
    scripts::{Hook, Substitutions},
};

/// How often a database node checks `ping.server.ip` (its PINGs carry the last result).
const PING_SERVER_EVERY: Duration = Duration::from_secs(3);
/// The longest a `ping.server.command` may run.
const PING_SERVER_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the agent makes sure its cluster lock file is still there.
const LOCK_FILE_EVERY: Duration = Duration::from_secs(5);

/// EFM's "Lock file … has been removed": the agent holds `<lock.dir>/<cluster>.lock` (a `flock`
/// on it keeps a second agent of the cluster off this node); if someone deletes it, a second
/// agent could start. Checked every [`LOCK_FILE_EVERY`] (asynchronously: never on the heartbeat
/// loop); said once per removal.
pub(super) async fn watch_lock_file(cfg: Config) {
    let path = cfg.lock_dir.join(format!("{}.lock", cfg.cluster));
    let mut missing = false;
    loop {
        tokio::time::sleep(LOCK_FILE_EVERY).await;
        let exists = tokio::fs::try_exists(&path).await.unwrap_or(true);
        if !exists && !missing {
            tracing::error!(path = %path.display(), "the cluster lock file has been removed");
            super::runtime::notify(&cfg, crate::notify::Event::LockFileRemoved { path: path.display().to_string() });
        }
        missing = !exists;
    }
}

/// EFM's isolation check, run by every database node (a candidate must be able to tell whether
/// it is the one cut off before it is proposed): `ping.server.command ping.server.ip` every
/// [`PING_SERVER_EVERY`], its result (`true`: reached) sent on `tx` until the receiver is gone.
pub(super) async fn ping_server_loop(cfg: Config, tx: tokio::sync::watch::Sender<Option<bool>>) {
    let Some(ip) = cfg.ping_server_ip else { return };
    let mut argv = cfg.ping_server_command.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    argv.push(ip.to_string());
    let mut last: Option<bool> = None;
    loop {
        let ok = match argv.first() {
            None => Err("ping.server.command is empty".to_owned()),
            Some(program) => {
                let run = tokio::process::Command::new(program)
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(PING_SERVER_TIMEOUT, run).await {
                    Ok(Ok(o)) if o.status.success() => Ok(()),
                    Ok(Ok(o)) => Err(format!("{} exited with {}", argv.join(" "), o.status)),
                    Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
                    Err(_) => Err(format!("{} did not finish in {PING_SERVER_TIMEOUT:?}", argv.join(" "))),
                }
            }
        };
        let reached = ok.is_ok();
        if last != Some(reached) {
            match &ok {
                Ok(()) => tracing::info!(%ip, "ping.server.ip answers: this node may be promoted"),
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "ping.server.ip does not answer: this node declines promotion while it does not");
                }
            }
            last = Some(reached);
        }
        if tx.send(Some(reached)).is_err() {
            return;
        }
        tokio::time::sleep(PING_SERVER_EVERY).await;
    }
}

/// How long `pg_promote()` may take.
const PROMOTE_WAIT: Duration = Duration::from_mins(1);

/// The stopped old primary becomes a standby of `primary` (`standby.signal` and
/// `primary_conninfo`, copied from `source`'s settings when given) and is started.
pub(super) async fn rejoin(
    cfg: &Config,
    config_dir: &std::path::Path,
    primary: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<(), String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let data = cfg.db_data_dir.clone().or_else(|| cfg.db_recovery_conf_dir.clone()).ok_or("db.data.dir is not set")?;
    let version = control::read_pg_version(&data).map_err(|e| e.to_string())?;
    let mut up = upstream(cfg, config_dir, primary).await?;
    if let Some(src) = source {
        up.template = source_settings(cfg, config_dir, src).await?;
        up.replace_own = true;
    }
    let c = control.clone();
    tokio::task::spawn_blocking(move || {
        control::demote_to_standby(&c, &data, version, &up).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    control.start().await.map_err(|e| format!("starting the database as a standby: {e}"))
}

/// `-sourcenode`: the replication settings of the standby `src` that the old primary takes over
/// (its `primary_conninfo`; `Upstream::conninfo_for` changes host, port and `application_name`).
pub(super) async fn source_settings(
    cfg: &Config,
    config_dir: &std::path::Path,
    src: SocketAddr,
) -> Result<control::ConnInfo, String> {
    let t = localdb::target(cfg, config_dir, &src.ip().to_string())?;
    // Retried for a moment: right after the promotion the source standby's kernel may have seen
    // the new epoch before its agent adopted it, and an epoch-fenced node refuses members too
    // (ARCHITECTURE.md, "The fence and the cluster's own nodes").
    let deadline = Instant::now() + cfg.remote_timeout.max(Duration::from_secs(3));
    let conninfo = loop {
        match postgres::setting(&t, "primary_conninfo", cfg.remote_timeout).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("-sourcenode {src}: reading its primary_conninfo: {e}"))
            }
            Err(e) => {
                tracing::debug!(%src, error = %e, "reading the source node's primary_conninfo failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    control::ConnInfo::parse(&conninfo).map_err(|e| format!("-sourcenode {src}: its primary_conninfo: {e}"))
}

/// Promotes the local database: `script.fence`, then `pg_promote()`; returns how long it took.
pub(super) async fn promote_local(
    cfg: &Config,
    config_dir: &std::path::Path,
    me: SocketAddr,
    old: Option<SocketAddr>,
) -> Result<Duration, String> {
    // `check.vip.before.promotion` and the `ping.server.ip` check happened before the leader
    // proposed this promotion (`Engine::vip_clear`, `decline_if_orphaned` and the
    // candidate's PING flag): a committed promotion goes ahead.
    let start = Instant::now();
    let subst = Substitutions {
        new_primary: Some(me.ip().to_string()),
        failed_primary: old.map(|o| o.ip().to_string()),
        ..Substitutions::default()
    };
    if run_hook(cfg, Hook::Fence, &subst).await == Some(false) {
        return Err("script.fence failed: promotion aborted".into());
    }
    let target = localdb::target(cfg, config_dir, &me.ip().to_string())?;
    // A paused replay would hold the promotion up: resume it (EFM's "Could not resume replay"
    // when that fails; the promotion is still attempted).
    if let Err(e) = control::resume_replay_if_paused(&target, cfg.remote_timeout.max(Duration::from_secs(5))).await {
        tracing::error!(error = %e, "could not resume WAL replay before promoting");
        super::runtime::notify(cfg, crate::notify::Event::ReplayResumeFailed { error: e.to_string() });
    }
    control::promote(&target, PROMOTE_WAIT).await.map_err(|e| e.to_string())?;
    Ok(start.elapsed())
}

/// The new primary; for a server without a `primary_conninfo` of its own, the template is the
/// new primary's former one (a promotion leaves it set), else `user=db.user` (never db.user's
/// password: the monitoring password is not written into the database's configuration).
pub(crate) async fn upstream(
    cfg: &Config,
    config_dir: &std::path::Path,
    primary: SocketAddr,
) -> Result<control::Upstream, String> {
    let mut up = control::Upstream::new(primary.ip().to_string(), cfg.db_port, cfg.db_user.clone());
    up.application_name = cfg.application_name.clone().or_else(|| Some(cfg.bind_address.ip().to_string()));
    let t = localdb::target(cfg, config_dir, &primary.ip().to_string())?;
    match control::read_primary_conninfo(&t, cfg.remote_timeout).await {
        Ok(Some(template)) => up.template = template,
        Ok(None) => {
            tracing::warn!(%primary, "the new primary has no primary_conninfo to copy; a server without one uses user=db.user");
        }
        Err(e) => {
            tracing::warn!(%primary, error = %e, "cannot read the new primary's primary_conninfo; a server without one uses user=db.user");
        }
    }
    Ok(up)
}

pub(super) async fn follow(
    cfg: &Config,
    config_dir: &std::path::Path,
    me: SocketAddr,
    primary: SocketAddr,
) -> Result<String, String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let up = upstream(cfg, config_dir, primary).await?;
    let target = localdb::target(cfg, config_dir, &me.ip().to_string())?;
    let out = control::reconfigure_standby(&target, &control, &up).await.map_err(|e| e.to_string())?;
    Ok(format!("{:?}", out.method))
}

/// Blocking (file writes): runs on the blocking pool. `up` from [`upstream`].
pub(crate) fn demote_local(cfg: &Config, up: &control::Upstream) -> Result<(), String> {
    let control = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let data = cfg.db_data_dir.clone().or_else(|| cfg.db_recovery_conf_dir.clone()).ok_or("db.data.dir is not set")?;
    let version = control::read_pg_version(&data).map_err(|e| e.to_string())?;
    control::demote_to_standby(&control, &data, version, up).map(|_| ()).map_err(|e| e.to_string())
}

/// `standby.signal` in the data directory of a failed primary, so a restart comes up in recovery.
pub(super) async fn write_standby_signal(cfg: &Config) -> Result<(), String> {
    let data = cfg.db_data_dir.clone().ok_or("db.data.dir is not set")?;
    let path = data.join("standby.signal");
    tokio::fs::write(&path, b"").await.map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(owner) = &cfg.db_service_owner {
        let _ = tokio::process::Command::new("chown").arg(owner).arg(&path).status().await;
    }
    Ok(())
}
