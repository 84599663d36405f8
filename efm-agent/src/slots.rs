//! Physical replication slots kept in step on the standbys (`update.physical.slots.period`).
//!
//! A standby that streams through a slot (`primary_slot_name`) has its WAL kept by the primary
//! until it received it. After a failover the slot is gone with the old primary: the other
//! standbys' `primary_slot_name` names a slot the new primary does not have, so they cannot
//! stream (or, without slots, the new primary may remove WAL they still need). As EFM does,
//! every standby's agent copies, every period, the primary's physical slots to its own
//! database: each slot the primary has (but the one this standby streams through — a standby
//! needs no slot for itself) is created here if missing (`pg_create_physical_replication_slot`,
//! reserving WAL at once) and advanced to the primary's `restart_lsn`
//! (`pg_replication_slot_advance`, which a standby caps at what it has replayed). Once promoted,
//! a standby holds a slot for every other standby, at most one period behind, so they stream
//! through their slots again and no WAL they need has been removed.
//!
//! Slots are never dropped here: a slot the primary dropped stays on the standbys until the
//! operator drops it (removing one that a tool still uses would lose its WAL). The monitoring
//! user needs the `REPLICATION` attribute (or superuser) to create and advance slots; without
//! it the agent says so, once, and goes on trying.

use std::{collections::BTreeMap, time::Duration};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::{
    localdb,
    node::{Facts, Role},
    postgres::{self, control::quote_sql_literal, DbTarget, Lsn},
};

/// Runs until aborted (started on a database node when the period is not 0).
pub async fn run(facts: Facts, local: DbTarget) {
    let cfg = facts.id.config.clone();
    let period = cfg.update_physical_slots_period;
    let mut last_error: Option<String> = None;
    let mut here: Option<Client> = None;
    let mut there: Option<(std::net::IpAddr, Client)> = None;
    loop {
        tokio::time::sleep(period).await;
        let primary = facts.status.borrow().committed_primary;
        let standby = facts.db.borrow().role == Role::Standby;
        let Some(primary) = primary.filter(|p| standby && *p != facts.id.me) else {
            (here, there) = (None, None);
            continue;
        };
        let r = async {
            if here.as_ref().is_none_or(Client::is_closed) {
                here = Some(postgres::connect(&local, cfg.local_timeout).await.map_err(|e| e.to_string())?);
            }
            if there.as_ref().is_none_or(|(ip, c)| *ip != primary.ip() || c.is_closed()) {
                let target = localdb::target(&cfg, &facts.id.config_dir, &primary.ip().to_string())?;
                let c = postgres::connect(&target, cfg.remote_timeout).await.map_err(|e| e.to_string())?;
                there = Some((primary.ip(), c));
            }
            let (Some(h), Some((_, t))) = (here.as_ref(), there.as_ref()) else { return Ok(0) };
            copy(t, h).await
        }
        .await;
        match r {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(slots = n, %primary, "physical slots copied from the primary");
                }
                last_error = None;
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, %primary, "copying the primary's physical replication slots failed; retrying every update.physical.slots.period");
                }
                last_error = Some(e);
                (here, there) = (None, None);
            }
        }
    }
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = tokio::time::timeout(Duration::from_secs(5), client.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within 5 s"))?
        .map_err(|e| {
            let privilege = e.code().is_some_and(|c| *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
            if privilege {
                format!(
                    "{sql}: {e} (the monitoring user needs the REPLICATION attribute for update.physical.slots.period)"
                )
            } else {
                format!("{sql}: {e}")
            }
        })?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

fn slots(rows: Vec<Vec<Option<String>>>) -> BTreeMap<String, Option<Lsn>> {
    rows.into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            let name = it.next().flatten()?;
            let lsn = it.next().flatten().and_then(|l| l.parse::<Lsn>().ok());
            Some((name, lsn))
        })
        .collect()
}

const PHYSICAL: &str = "SELECT slot_name, restart_lsn FROM pg_replication_slots WHERE slot_type = 'physical'";

/// One round: returns how many slots were created or advanced.
async fn copy(primary: &Client, standby: &Client) -> Result<usize, String> {
    let theirs = slots(rows(primary, PHYSICAL).await?);
    let own_slot = rows(standby, "SELECT current_setting('primary_slot_name')")
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    let ours = slots(rows(standby, PHYSICAL).await?);
    let mut changed = 0;
    for (name, lsn) in &theirs {
        if *name == own_slot {
            continue;
        }
        let q = quote_sql_literal(name);
        if !ours.contains_key(name) {
            rows(standby, &format!("SELECT pg_create_physical_replication_slot({q}, true)")).await?;
            tracing::info!(slot = %name, "created the primary's physical replication slot here, for after a failover");
            changed += 1;
        }
        let Some(lsn) = lsn else { continue };
        if ours.get(name).copied().flatten().is_none_or(|have| have < *lsn) {
            rows(standby, &format!("SELECT pg_replication_slot_advance({q}, '{lsn}')")).await?;
            changed += 1;
        }
    }
    Ok(changed)
}
