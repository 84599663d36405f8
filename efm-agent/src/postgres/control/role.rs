//! Changing a running server's role over SQL: promotion and pointing a standby at a new primary.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::files::{own_primary_conninfo, read_optional, recovery_conf_text, set_conf_line, write_atomic};
use super::{
    quote_sql_literal, ApplyMethod, ConnInfo, ControlError, DbControl, PromoteOutcome, ReconfigureOutcome, Upstream,
};
use crate::postgres::{connect, probe, DbError, DbTarget};

fn sql_err(addr: &str, what: &'static str, e: &tokio_postgres::Error) -> ControlError {
    let message = e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} ({})", d.message(), d.code().code()));
    ControlError::Sql { addr: addr.to_owned(), what, message }
}

/// Runs file work (reads, atomic writes with `fsync`) on the blocking pool: nothing blocks
/// the runtime's threads (ARCHITECTURE.md, "nothing blocks the heartbeat").
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Config(format!("configuration file task failed: {e}")))?
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
        Err(_) => return Err(DbError::Timeout { addr: addr.to_owned(), stage: what, timeout: limit }.into()),
    };
    Ok(msgs.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
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
        return Err(ControlError::NotStandby { addr, what: "promote it" });
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
    let r =
        row(&client, &addr, "pg_promote()", &format!("SELECT pg_promote(wait => true, wait_seconds => {secs})"), limit)
            .await?;
    let promoted = r.as_ref().and_then(|r| r.first().cloned().flatten()).is_some_and(|v| v == "t");
    let after = probe(&client, &addr).await?;
    if !promoted {
        return Err(if after.in_recovery {
            ControlError::PromoteTimedOut { addr, wait }
        } else {
            ControlError::Sql { addr, what: "pg_promote()", message: "returned false".into() }
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

/// Resumes WAL replay on the standby `target` if it is paused (`pg_wal_replay_pause()`), so a
/// promotion that follows is not held up (EFM resumes replay while promoting). Returns whether
/// replay was paused.
///
/// # Errors
/// The connection or either function failed (the monitoring user needs `EXECUTE` on
/// `pg_wal_replay_resume`).
pub async fn resume_replay_if_paused(target: &DbTarget, limit: Duration) -> Result<bool, ControlError> {
    let addr = target.addr();
    let client = connect(target, limit).await?;
    let r = row(&client, &addr, "pg_is_wal_replay_paused()", "SELECT pg_is_wal_replay_paused()", limit).await?;
    let paused = r.as_ref().and_then(|r| r.first().cloned().flatten()).is_some_and(|v| v == "t");
    if paused {
        row(&client, &addr, "pg_wal_replay_resume()", "SELECT pg_wal_replay_resume()", limit).await?;
        tracing::info!(db = %addr, "WAL replay was paused: resumed before promoting");
    }
    Ok(paused)
}

/// State of the WAL receiver: `(pid, status, sender_host, sender_port, received_tli, conninfo)`.
type Receiver = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

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

/// Waits until the standby's WAL receiver streams from `up` (host and port) as `user` (when
/// known), with a pid other than `old_pid` when given.
async fn wait_streaming(
    target: &DbTarget,
    up: &Upstream,
    user: Option<&str>,
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
                    let got_user = conninfo.as_deref().and_then(|ci| crate::postgres::conninfo_value(ci, "user"));
                    state = format!(
                        "pid {} status {} sender {}:{} user {}",
                        pid.as_deref().unwrap_or("?"),
                        status.as_deref().unwrap_or("?"),
                        host.as_deref().unwrap_or("?"),
                        port.as_deref().unwrap_or("?"),
                        got_user.as_deref().unwrap_or("?"),
                    );
                    if status.as_deref() == Some("streaming")
                        && host.as_deref() == Some(up.host.as_str())
                        && port.as_deref() == Some(up.port.to_string().as_str())
                        && (user.is_none() || got_user.is_none() || got_user.as_deref() == user)
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

/// The running standby's `primary_conninfo`: `current_setting` (Postgres 12 or later; needs
/// superuser or `pg_read_all_settings`, which `pg_monitor` has), else — not allowed, or before
/// 12 — from its configuration files ([`own_primary_conninfo`]). `None` when it has none.
async fn current_primary_conninfo(
    client: &Client,
    addr: &str,
    control: &DbControl,
    version: u32,
) -> Result<Option<ConnInfo>, ControlError> {
    if version >= 120_000 {
        match row(
            client,
            addr,
            "reading primary_conninfo",
            "SELECT current_setting('primary_conninfo')",
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) => {
                let v = r.and_then(|r| r.into_iter().next().flatten()).unwrap_or_default();
                if v.trim().is_empty() {
                    return Ok(None);
                }
                return ConnInfo::parse(&v).map(Some).map_err(|e| ControlError::Sql {
                    addr: addr.to_owned(),
                    what: "parsing primary_conninfo",
                    message: e.to_string(),
                });
            }
            Err(e @ ControlError::Sql { .. }) => {
                tracing::info!(db = %addr, error = %e,
                    "cannot read primary_conninfo over SQL; reading the configuration files");
            }
            Err(e) => return Err(e),
        }
    }
    let c = control.clone();
    blocking(move || own_primary_conninfo(&c, &c.data_dir, version)).await
}

/// The `primary_conninfo` of the (running) server at `target`, e.g. another standby's to copy
/// (`-sourcenode`) or a new primary's former one (a promotion leaves it set). `None` when
/// unset. Needs superuser or `pg_read_all_settings` (in `pg_monitor`).
pub async fn read_primary_conninfo(target: &DbTarget, timeout: Duration) -> Result<Option<ConnInfo>, ControlError> {
    let addr = target.addr();
    let client = connect(target, timeout).await?;
    let r =
        row(&client, &addr, "reading primary_conninfo", "SELECT current_setting('primary_conninfo')", timeout).await?;
    let v = r.and_then(|r| r.into_iter().next().flatten()).unwrap_or_default();
    if v.trim().is_empty() {
        return Ok(None);
    }
    ConnInfo::parse(&v).map(Some).map_err(|e| ControlError::Sql {
        addr,
        what: "parsing primary_conninfo",
        message: e.to_string(),
    })
}

/// `ALTER SYSTEM SET name = value`; `false` when the user may not (SQLSTATE 42501: not a
/// superuser and no `ALTER SYSTEM` privilege on the parameter).
async fn alter_system(client: &Client, addr: &str, name: &str, value: &str) -> Result<bool, ControlError> {
    let sql = format!("ALTER SYSTEM SET {name} = {}", quote_sql_literal(value));
    match tokio::time::timeout(Duration::from_secs(10), client.simple_query(&sql)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => Ok(false),
        Ok(Err(e)) => Err(sql_err(addr, "ALTER SYSTEM", &e)),
        Err(_) => {
            Err(DbError::Timeout { addr: addr.to_owned(), stage: "ALTER SYSTEM", timeout: Duration::from_secs(10) }
                .into())
        }
    }
}

/// Postgres 12 or later: `primary_conninfo` (and `recovery_target_timeline = 'latest'` when it
/// is not) set with `ALTER SYSTEM` — or, when the user may not, written into
/// `postgresql.auto.conf` as `db.service.owner` — then a reload (13 or later, timeline already
/// `latest`) or a restart. Returns the method.
async fn apply_settings(
    client: Client,
    addr: &str,
    control: &DbControl,
    conninfo: &ConnInfo,
    version: u32,
) -> Result<ApplyMethod, ControlError> {
    let q = Duration::from_secs(10);
    let timeline =
        row(&client, addr, "reading recovery_target_timeline", "SELECT current_setting('recovery_target_timeline')", q)
            .await?
            .and_then(|r| r.into_iter().next().flatten());
    let timeline_latest = timeline.as_deref() == Some("latest");
    let text = conninfo.conninfo();
    let mut via_sql = alter_system(&client, addr, "primary_conninfo", &text).await?;
    if via_sql && !timeline_latest {
        via_sql = alter_system(&client, addr, "recovery_target_timeline", "latest").await?;
    }
    if !via_sql {
        let auto = control.data_dir.join("postgresql.auto.conf");
        let (c, path, value) = (control.clone(), auto.clone(), text.clone());
        blocking(move || {
            let owner = c.owner_ids()?;
            let existing = read_optional(&path)?;
            let mut new = set_conf_line(existing.as_deref(), "primary_conninfo", &value);
            if !timeline_latest {
                new = set_conf_line(Some(&new), "recovery_target_timeline", "latest");
            }
            write_atomic(&path, &new, Some(&owner))
        })
        .await?;
        tracing::info!(db = %addr, file = %auto.display(),
            "not allowed to ALTER SYSTEM; wrote primary_conninfo into postgresql.auto.conf");
    }
    if version >= 130_000 && timeline_latest {
        row(&client, addr, "pg_reload_conf()", "SELECT pg_reload_conf()", q).await?;
        tracing::info!(db = %addr, conninfo = %conninfo.redacted(),
            "primary_conninfo set; configuration reloaded");
        Ok(ApplyMethod::Reload)
    } else {
        drop(client);
        tracing::info!(db = %addr, conninfo = %conninfo.redacted(),
            "primary_conninfo set; restarting the standby");
        control.restart().await?;
        Ok(ApplyMethod::Restart)
    }
}

/// Sets a reloadable setting on the running server `target` and reloads: `ALTER SYSTEM`, or,
/// for a user that may not, the line written into `postgresql.auto.conf` as the owner; then
/// `pg_reload_conf()`. Returns whether `ALTER SYSTEM` did it.
///
/// # Errors
/// Connecting, the statements, or writing the file failed.
pub async fn set_and_reload(
    target: &DbTarget,
    control: &DbControl,
    name: &'static str,
    value: &str,
) -> Result<bool, ControlError> {
    let addr = target.addr();
    let q = Duration::from_secs(10);
    let client = connect(target, control.timeout.min(q)).await?;
    let via_sql = alter_system(&client, &addr, name, value).await?;
    if !via_sql {
        let auto = control.data_dir.join("postgresql.auto.conf");
        let (c, path, value) = (control.clone(), auto.clone(), value.to_owned());
        blocking(move || {
            let owner = c.owner_ids()?;
            let existing = read_optional(&path)?;
            write_atomic(&path, &set_conf_line(existing.as_deref(), name, &value), Some(&owner))
        })
        .await?;
    }
    row(&client, &addr, "pg_reload_conf()", "SELECT pg_reload_conf()", q).await?;
    Ok(via_sql)
}

/// Before Postgres 12: `recovery.conf` rewritten, then a restart. Returns the file written.
async fn apply_with_recovery_conf(
    control: &DbControl,
    conninfo: &ConnInfo,
    addr: &str,
) -> Result<PathBuf, ControlError> {
    let dir = control.recovery_conf_dir.clone().unwrap_or_else(|| control.data_dir.clone());
    let path = dir.join("recovery.conf");
    let (c, p, value) = (control.clone(), path.clone(), conninfo.conninfo());
    blocking(move || {
        let existing = read_optional(&p)?;
        let text = recovery_conf_text(existing.as_deref(), &value);
        write_atomic(&p, &text, Some(&c.owner_ids()?))
    })
    .await?;
    tracing::info!(db = %addr, conninfo = %conninfo.redacted(),
        "recovery.conf written; restarting the standby");
    control.restart().await?;
    Ok(path)
}

/// Points the standby `target` at `upstream` (see the module documentation): its own
/// `primary_conninfo` with only `host` and `port` changed ([`Upstream::conninfo_for`]),
/// restarting it through `control` when the server version requires it, and waits until it
/// streams from there (bounded by `control.timeout`). `target`'s user needs `pg_monitor` (to
/// read the settings and `pg_stat_wal_receiver`) and `EXECUTE` on `pg_reload_conf()`; without
/// `ALTER SYSTEM` rights the setting is written into `postgresql.auto.conf` in
/// `control.data_dir`.
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
        return Err(ControlError::NotStandby { addr, what: "point it at a new primary" });
    }
    let version = info.server_version_num;
    let old = wal_receiver(&client, &addr).await?;
    let own = current_primary_conninfo(&client, &addr, control, version).await?;
    let ci = upstream.conninfo_for(own.as_ref());
    let changed = own.as_ref() != Some(&ci);
    let (method, wrote) = if version >= 120_000 {
        (apply_settings(client, &addr, control, &ci, version).await?, None)
    } else {
        drop(client);
        let path = apply_with_recovery_conf(control, &ci, &addr).await?;
        (ApplyMethod::Restart, Some(path))
    };
    // After a restart the receiver is new anyway; after a reload it must be a new one unless
    // nothing changed.
    let old_pid = match method {
        ApplyMethod::Reload if changed => old
            .as_ref()
            .filter(|o| {
                o.5.as_deref()
                    .and_then(|ci| crate::postgres::conninfo_value(ci, "host"))
                    .is_some_and(|h| h == upstream.host)
            })
            .and_then(|o| o.0.clone()),
        ApplyMethod::Reload | ApplyMethod::Restart => None,
    };
    let waited = control.timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
    let (streaming_from, timeline) =
        wait_streaming(target, upstream, ci.get("user"), old_pid.as_deref(), method, waited).await?;
    tracing::info!(db = %addr, %method, from = %streaming_from, ?timeline, kept_own = own.is_some() && !upstream.replace_own,
        "standby streams from the new primary");
    Ok(ReconfigureOutcome {
        addr,
        method,
        conninfo: ci.redacted(),
        wrote,
        streaming_from,
        timeline,
        server_version_num: version,
        took: start.elapsed(),
    })
}
