//! `script.custom.monitor`: an operator's health check run every `custom.monitor.interval`,
//! killed after `custom.monitor.timeout`.
//!
//! A failing run (non-zero exit) is a failure of this node's database as far as the cluster is
//! concerned: on the primary it starts a failover, on a standby the agent stops monitoring (idle,
//! fenced) — unless `custom.monitor.safe.mode=true`, which only reports it. A run that times out
//! is reported ("Custom monitor timeout") and does not count as a failure. The failure lasts
//! until a later run succeeds; monitoring then still needs `efm resume` (or an
//! `auto.resume.failure.period`), as after any database failure.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{
    node::{Identity, LocalDatabase, Role},
    notify::{emit as notify, Event, ScriptResult},
    scripts::{Hook, ScriptRunner, Substitutions},
};

/// Used when `custom.monitor.interval` is 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the custom monitor until aborted; the only writer of its failure (`failure`, `None`
/// while the script succeeds), which the HA runtime and `efm resume` read. `db` gives the role
/// the failure notification names.
pub async fn run(id: Arc<Identity>, db: watch::Receiver<LocalDatabase>, failure: watch::Sender<Option<String>>) {
    let cfg = &id.config;
    let me = id.me;
    let Some(line) = cfg.script_custom_monitor.clone() else { return };
    let interval = if cfg.custom_monitor_interval.is_zero() { DEFAULT_INTERVAL } else { cfg.custom_monitor_interval };
    let timeout = if cfg.custom_monitor_timeout.is_zero() { interval } else { cfg.custom_monitor_timeout };
    tracing::info!(script = %line, ?interval, ?timeout, safe_mode = cfg.custom_monitor_safe_mode, "custom monitor running");
    let runner = ScriptRunner::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let res = runner
            .run(Hook::CustomMonitor, &line, &Substitutions::default(), timeout, cfg.script_user.as_deref())
            .await;
        match res {
            Ok(out) if out.success() => {
                let was = failure.send_replace(None);
                if was.is_some() {
                    tracing::info!("custom monitor succeeds again");
                }
            }
            Ok(out) if out.timed_out => {
                tracing::warn!(%me, ?timeout, "custom monitor timed out");
                notify(cfg, Event::CustomMonitorTimeout { result: ScriptResult::from_outcome(&line, &out) });
            }
            Ok(out) => failed(&failure, &db, cfg, ScriptResult::from_outcome(&line, &out)),
            Err(e) => failed(&failure, &db, cfg, ScriptResult::from_error(&line, &e)),
        }
    }
}

fn failed(
    failure: &watch::Sender<Option<String>>,
    db: &watch::Receiver<LocalDatabase>,
    cfg: &crate::config::Config,
    result: ScriptResult,
) {
    if cfg.custom_monitor_safe_mode {
        notify(cfg, Event::CustomMonitorSafeModeFailure { result });
        return;
    }
    let first = failure.send_replace(Some(format!("exit value {}", result.exit))).is_none();
    if first {
        let role = db.borrow().role;
        let event = if role == Role::Primary {
            Event::PrimaryCustomMonitorFailure { result }
        } else {
            Event::StandbyCustomMonitorFailure { result }
        };
        notify(cfg, event);
    }
}
