//! Changing a running server's role over SQL: promotion and pointing a standby at a new primary.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::files::{read_optional, recovery_conf_text, write_atomic};
use super::{quote_sql_literal, ApplyMethod, ControlError, DbControl, PromoteOutcome, ReconfigureOutcome, Upstream};
use crate::postgres::{connect, probe, DbError, DbTarget};

fn sql_err(addr: &str, what: &'static str, e: &tokio_postgres::Error) -> ControlError {
    let message = e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} ({})", d.message(), d.code().code()));
    ControlError::Sql { addr: addr.to_owned(), what, message }
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
                    let user = conninfo.as_deref().and_then(|ci| crate::postgres::conninfo_value(ci, "user"));
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
    let sql = format!("ALTER SYSTEM SET primary_conninfo = {}", quote_sql_literal(&conninfo));
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
        row(&client, addr, "pg_reload_conf()", "SELECT pg_reload_conf()", q).await?;
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
    let dir = control.recovery_conf_dir.clone().unwrap_or_else(|| control.data_dir.clone());
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
        return Err(ControlError::NotStandby { addr, what: "point it at a new primary" });
    }
    let version = info.server_version_num;
    let old = wal_receiver(&client, &addr).await?;
    let (method, changed, wrote) = if version >= 120_000 {
        let (m, changed) = apply_with_alter_system(client, &addr, control, upstream, version).await?;
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
                    .and_then(|ci| crate::postgres::conninfo_value(ci, "host"))
                    .is_some_and(|h| h == upstream.host)
            })
            .and_then(|o| o.0.clone()),
        ApplyMethod::Reload | ApplyMethod::Restart => None,
    };
    let waited = control.timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
    let (streaming_from, timeline) = wait_streaming(target, upstream, old_pid.as_deref(), method, waited).await?;
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
