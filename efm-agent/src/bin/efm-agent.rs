//! `efm-agent`: the per-node, per-cluster agent.
//!
//! This build contains the XDP data plane and its loader (`efm_agent::datapath`); the agent loop
//! (configuration, heartbeats, detection, database monitoring) is not built yet. The binary says
//! so instead of pretending to run.

use std::process::ExitCode;

const USAGE: &str = "usage: efm-agent --cluster NAME [--config-dir DIR]\n       efm-agent --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("efm-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") | None => {
            println!("{USAGE}");
            println!(
                "\nRuns the efm agent for one cluster on this node (needs root or CAP_BPF + CAP_NET_ADMIN)."
            );
            ExitCode::SUCCESS
        }
        Some("--cluster") => {
            eprintln!(
                "efm-agent: the agent loop (configuration, heartbeats, failure detection) is not \
                 available in this build yet; only the XDP data plane is. See README.md, \"Status\"."
            );
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("efm-agent: unknown argument {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
