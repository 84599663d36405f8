//! `script.custom.monitor`: an operator's health check run every `custom.monitor.interval`,
//! killed after `custom.monitor.timeout`.
//!
//! A failing run (non-zero exit) is a failure of this node's database as far as the cluster is
//! concerned: on the primary it starts a failover, on a standby the agent stops monitoring (idle,
//! fenced) — unless `custom.monitor.safe.mode=true`, which only reports it. A run that times out
//! is reported ("Custom monitor timeout") and does not count as a failure. The failure lasts
//! until a later run succeeds; monitoring then still needs `efm resume` (or an
//! `auto.resume.failure.period`), as after any database failure.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    agent::{lock, Shared},
    ha::runtime::notify,
    notify::{Event, ScriptResult},
    scripts::{Hook, ScriptRunner, Substitutions},
};

/// Used when `custom.monitor.interval` is 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the custom monitor until aborted.
pub async fn run(shared: Arc<Mutex<Shared>>) {
    let cfg = lock(&shared).config.clone();
    let Some(line) = cfg.script_custom_monitor.clone() else { return };
    let interval = if cfg.custom_monitor_interval.is_zero() { DEFAULT_INTERVAL } else { cfg.custom_monitor_interval };
    let timeout = if cfg.custom_monitor_timeout.is_zero() { interval } else { cfg.custom_monitor_timeout };
    tracing::info!(script = %line, ?interval, ?timeout, safe_mode = cfg.custom_monitor_safe_mode, "custom monitor running");
    let runner = ScriptRunner::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let res = runner.run(Hook::CustomMonitor, &line, &Substitutions::default(), timeout, cfg.script_user.as_deref()).await;
        let me = lock(&shared).me;
        match res {
            Ok(out) if out.success() => {
                let was = lock(&shared).custom_monitor_failed.take();
                if was.is_some() {
                    tracing::info!("custom monitor succeeds again");
                }
            }
            Ok(out) if out.timed_out => {
                tracing::warn!(%me, ?timeout, "custom monitor timed out");
                notify(&cfg, Event::CustomMonitorTimeout { result: ScriptResult::from_outcome(&line, &out) });
            }
            Ok(out) => failed(&shared, &cfg, ScriptResult::from_outcome(&line, &out)),
            Err(e) => failed(&shared, &cfg, ScriptResult::from_error(&line, &e)),
        }
    }
}

fn failed(shared: &Arc<Mutex<Shared>>, cfg: &crate::config::Config, result: ScriptResult) {
    if cfg.custom_monitor_safe_mode {
        notify(cfg, Event::CustomMonitorSafeModeFailure { result });
        return;
    }
    let (first, role) = {
        let mut s = lock(shared);
        let first = s.custom_monitor_failed.is_none();
        s.custom_monitor_failed = Some(format!("exit value {}", result.exit));
        (first, s.role)
    };
    if first {
        let event = if role == crate::agent::Role::Primary {
            Event::PrimaryCustomMonitorFailure { result }
        } else {
            Event::StandbyCustomMonitorFailure { result }
        };
        notify(cfg, event);
    }
}
