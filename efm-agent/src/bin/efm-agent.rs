//! `efm-agent`: the efm agent for one cluster on this node.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use efm_agent::agent::{self, AgentError, Options};

/// Runs the efm agent for one cluster on this node: attaches the XDP data plane, sends and times
/// heartbeats, watches the local database, and answers `efm` commands on its admin socket.
///
/// Needs root (or `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`). Stops in order on SIGTERM/SIGINT.
#[derive(Parser, Debug)]
#[command(name = "efm-agent", version, after_help = "Example:\n  sudo efm-agent --cluster acctg")]
struct Args {
    /// Cluster name: reads <config-dir>/<cluster>.properties and <cluster>.nodes.
    #[arg(long)]
    cluster: String,
    /// Directory of the cluster's configuration files.
    #[arg(long, default_value = "/etc/efm")]
    config_dir: PathBuf,
    /// Directory of the admin socket and pid file.
    #[arg(long, default_value = "/run/efm")]
    run_dir: PathBuf,
    /// Root of the pinned BPF state (the cluster's pins go to <bpffs-dir>/<cluster>).
    #[arg(long, default_value = "/sys/fs/bpf/efm")]
    bpffs_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("EFM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let opts = Options {
        cluster: args.cluster,
        config_dir: args.config_dir,
        run_dir: args.run_dir,
        bpffs_dir: args.bpffs_dir,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("efm-agent: cannot start the runtime: {e}");
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
            eprintln!("efm-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
