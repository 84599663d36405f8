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
    vip,
};

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

/// Promotes the local database: the VIP check (`check.vip.before.promotion`), `script.fence`,
/// then `pg_promote()`; returns how long it took.
pub(super) async fn promote_local(
    cfg: &Config,
    config_dir: &std::path::Path,
    me: SocketAddr,
    old: Option<SocketAddr>,
    iface: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    if cfg.check_vip_before_promotion {
        if let Some(addr) = cfg.virtual_ip {
            let iface = iface.to_owned();
            let found =
                tokio::task::spawn_blocking(move || vip::probe_in_use(&iface, addr, Duration::from_millis(300)))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            if let Some(mac) = found {
                // EFM refuses to promote here, because the holder might still be a working
                // primary. With efm the holder's kernel cuts database traffic to the VIP off once
                // its lease lapses (the promotion waited for that), so a stale holder — typically
                // a node whose agent died — cannot take writes: take the VIP over and announce it.
                tracing::warn!(vip = %addr, holder = %vip::fmt_mac(mac), "check.vip.before.promotion: the VIP is still answered by another node; its kernel lease has lapsed, taking it over");
            }
        }
    }
    if let Some(ip) = cfg.ping_server_ip {
        // EFM's isolation check: a node that cannot reach the configured address may be the one
        // that is cut off; it must not promote itself.
        let mut argv = cfg.ping_server_command.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        argv.push(ip.to_string());
        let Some(program) = argv.first().cloned() else { return Err("ping.server.command is empty".into()) };
        let out = tokio::time::timeout(
            Duration::from_secs(15),
            tokio::process::Command::new(&program).args(&argv[1..]).kill_on_drop(true).output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => tracing::info!(%ip, "isolation check passed"),
            Ok(Ok(o)) => {
                return Err(format!(
                    "isolation check failed: {} exited with {} (ping.server.ip {ip}); not promoting",
                    argv.join(" "),
                    o.status
                ))
            }
            Ok(Err(e)) => return Err(format!("isolation check: cannot run {program}: {e}; not promoting")),
            Err(_) => return Err(format!("isolation check: {} did not finish in 15 s; not promoting", argv.join(" "))),
        }
    }
    let subst = Substitutions {
        new_primary: Some(me.ip().to_string()),
        failed_primary: old.map(|o| o.ip().to_string()),
        ..Substitutions::default()
    };
    if run_hook(cfg, Hook::Fence, &subst).await == Some(false) {
        return Err("script.fence failed: promotion aborted".into());
    }
    let target = localdb::target(cfg, config_dir, &me.ip().to_string())?;
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
