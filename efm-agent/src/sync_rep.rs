//! Synchronous replication kept writable (`reconfigure.num.sync`, `reconfigure.sync.primary`).
//!
//! With `synchronous_standby_names = 'FIRST 2 (n2, n3)'` a primary waits, for every commit,
//! until two of those standbys confirmed it; when one of them fails, commits hang. On the
//! serving primary this task watches the named standbys that stream (`pg_stat_replication`,
//! `state = 'streaming'`, and not on a node efm's detector declared dead — a dead node's
//! walsender lingers until `wal_sender_timeout`) and, as EFM does:
//! - `reconfigure.num.sync=true`: lowers the count to the number available (never below 1);
//! - `reconfigure.sync.primary=true`: with none available, sets the setting empty
//!   (asynchronous), so the primary keeps taking writes;
//! - restores the operator's setting, step by step, as the standbys come back.
//!
//! The operator's setting is kept in `<state_dir>/<cluster>.sync-standby-names` from the first
//! change until it is restored, so an agent restarted meanwhile restores the original and not
//! the lowered value. A change is `ALTER SYSTEM` (or `postgresql.auto.conf` written as the owner
//! for a user that may not) and `pg_reload_conf()` ([`control::set_and_reload`]).
//!
//! Durability: a commit acknowledged under the lowered count is on every standby the count
//! still names, and a failover promotes the most advanced standby (WAL is one stream, so that
//! one holds every acknowledged commit); with `reconfigure.sync.primary` the commits taken
//! while asynchronous are on the primary only, which is what that property asks for.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{
    detector::Verdict,
    node::Facts,
    postgres::{
        self,
        control::{self, DbControl},
        sync_names::{desired, Desired, SyncNames},
        DbTarget,
    },
};

/// How often the primary's replication is read.
const PERIOD: Duration = Duration::from_millis(500);

/// The file holding the operator's setting while efm has changed it.
#[must_use]
pub fn original_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join(format!("{cluster}.sync-standby-names"))
}

/// Runs until aborted (only started when one of the two properties is set).
pub async fn run(facts: Facts, target: DbTarget, control: DbControl, state_dir: PathBuf) {
    let cfg = facts.id.config.clone();
    let path = original_path(&state_dir, &cfg.cluster);
    let mut client: Option<Client> = None;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(PERIOD).await;
        let serving = {
            let st = facts.status.borrow();
            st.kernel.serving && st.committed_primary == Some(facts.id.me)
        };
        if !serving {
            client = None;
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = postgres::connect(&target, cfg.local_timeout).await.ok();
        }
        let Some(c) = client.as_ref() else { continue };
        let dead = dead_ips(&facts);
        let r = step(c, &target, &control, &path, &dead, cfg.reconfigure_num_sync, cfg.reconfigure_sync_primary).await;
        match r {
            Ok(()) => last_error = None,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "managing synchronous_standby_names failed");
                }
                last_error = Some(e);
                client = None;
            }
        }
    }
}

/// The IPs of nodes the detector declared dead (their walsenders may linger).
fn dead_ips(facts: &Facts) -> BTreeSet<IpAddr> {
    facts
        .peers
        .borrow()
        .iter()
        .filter(|p| p.health.is_some_and(|h| h.verdict == Verdict::NodeDead))
        .map(|p| p.addr.ip())
        .collect()
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = tokio::time::timeout(Duration::from_secs(5), client.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within 5 s"))?
        .map_err(|e| format!("{sql}: {e}"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

async fn step(
    client: &Client,
    target: &DbTarget,
    control: &DbControl,
    path: &Path,
    dead: &BTreeSet<IpAddr>,
    num_sync: bool,
    sync_primary: bool,
) -> Result<(), String> {
    let current = rows(client, "SELECT current_setting('synchronous_standby_names')")
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    let saved = read_saved(path)?;
    let original_text = saved.clone().unwrap_or_else(|| current.clone());
    let original = match SyncNames::parse(&original_text) {
        Ok(Some(o)) => o,
        // Asynchronous by the operator's choice: nothing to keep writable.
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("synchronous_standby_names = {original_text:?}: {e}")),
    };
    let standbys = rows(client, "SELECT application_name, host(client_addr), state FROM pg_stat_replication").await?;
    if standbys.iter().any(|r| r.get(2).is_none_or(Option::is_none)) {
        return Err("pg_stat_replication hides the standbys' state from the monitoring user: grant it pg_monitor \
                    (efm will not lower synchronous_standby_names on what it cannot see)"
            .into());
    }
    let available = standbys
        .iter()
        .filter(|r| {
            let name = r.first().cloned().flatten().unwrap_or_default();
            let ip = r.get(1).cloned().flatten().and_then(|h| h.parse::<IpAddr>().ok());
            r.get(2).cloned().flatten().as_deref() == Some("streaming")
                && ip.is_none_or(|ip| !dead.contains(&ip))
                && original.names(&name)
        })
        .count();
    let available = u32::try_from(available).unwrap_or(u32::MAX);
    let want = match desired(&original, available, num_sync, sync_primary) {
        Desired::Original => original_text.clone(),
        Desired::Lowered(s) => s.to_string(),
        Desired::Async => String::new(),
    };
    let same = SyncNames::parse(&current).ok() == SyncNames::parse(&want).ok();
    if !same {
        if saved.is_none() {
            save(path, &original_text)?;
        }
        let by_sql = control::set_and_reload(target, control, "synchronous_standby_names", &want)
            .await
            .map_err(|e| format!("setting synchronous_standby_names = {want:?}: {e}"))?;
        tracing::warn!(from = %current, to = %want, available, original = %original_text, by_sql,
            "synchronous standbys changed: synchronous_standby_names reconfigured so that the primary keeps taking writes");
    }
    if want == original_text && saved.is_some() {
        std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        tracing::info!(setting = %original_text, "synchronous_standby_names is the operator's setting again");
    }
    Ok(())
}

fn read_saved(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

fn save(path: &Path, text: &str) -> Result<(), String> {
    crate::files::write_atomic(path, format!("{text}\n").as_bytes(), crate::files::WriteOptions::private())
        .map_err(|e| format!("saving the operator's synchronous_standby_names to {}: {e}", path.display()))
}
