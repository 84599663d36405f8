//! `efm-agent`: the efm agent for one cluster on this node. The command line is
//! [`efm_agent::cli::AgentArgs`]; logging is set up by [`efm_agent::logging`].

use std::process::ExitCode;

use clap::Parser as _;
use efm_agent::{
    agent::{self, AgentError, Options},
    cli::AgentArgs,
    config, logging, notify,
};

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    // stderr until the configuration says where logs go. The agent loads the configuration again
    // (and reports its problems); here it is read only for the logging properties.
    let early = logging::early();
    let env = logging::Environment::detect();
    let early_config = config::load(&args.config_dir, &args.cluster).ok().map(|l| l.config);
    let plan = match &early_config {
        Some(cfg) => logging::Plan::for_agent(cfg, &env),
        None => logging::stderr_plan(&args.cluster, &env),
    };
    drop(early);
    let logging = match logging::init(&plan) {
        Ok(l) => {
            tracing::debug!(sinks = ?l.sinks, "logging");
            Some(l)
        }
        Err(e) => {
            eprintln!("efm-agent: {e}");
            None
        }
    };
    // Whether a fatal error logged with tracing is already visible to whoever started the agent.
    let logged_to_console = logging.as_ref().is_some_and(|l| l.sinks.iter().any(|s| s == "stderr" || s == "journald"));
    let opts = Options {
        cluster: args.cluster,
        config_dir: args.config_dir,
        run_dir: args.run_dir,
        bpffs_dir: args.bpffs_dir,
        state_dir: args.state_dir,
    };
    // Two workers for the spawned tasks (Raft, the admin socket, database probes, actions); the
    // main loop that sends PINGs and endorsements runs on this thread in `block_on`, beside
    // them. Blocking work (redb commits, file writes, netlink) still belongs on the blocking
    // pool, never on a worker (ARCHITECTURE.md, "nothing blocks the heartbeat").
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("efm-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            if !logged_to_console {
                eprintln!("efm-agent: cannot start the runtime: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Config(errors)) => {
            for d in &errors.0 {
                eprintln!("efm-agent: {d}");
            }
            eprintln!("efm-agent: not started: {} configuration error(s)", errors.0.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("efm-agent stopped: {e}");
            if !logged_to_console {
                eprintln!("efm-agent: {e}");
            }
            // EFM's "Agent exited for cluster": the agent could not start (its configuration
            // loaded, so the notification settings are known).
            if let Some(cfg) = &early_config {
                let event = notify::Event::AgentExitedEarly { reason: e.to_string() };
                rt.block_on(notify::deliver_now(cfg, &event));
            }
            ExitCode::FAILURE
        }
    }
}
