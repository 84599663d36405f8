//! `efm`: the administration client (EFM's command names), talking to the local agent.
//!
//! The agent's admin socket does not exist in this build yet; the client says so instead of
//! pretending to work.

use std::process::ExitCode;

const COMMANDS: &[&str] = &[
    "cluster-status",
    "cluster-status-json",
    "node-status-json",
    "promote",
    "resume",
    "allow-node",
    "disallow-node",
    "set-priority",
    "stop-cluster",
    "prop-check",
    "upgrade-conf",
    "encrypt",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("efm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") | None => {
            println!("usage: efm COMMAND CLUSTER [ARGS...]\ncommands: {}", COMMANDS.join(", "));
            ExitCode::SUCCESS
        }
        Some(cmd) if COMMANDS.contains(&cmd) => {
            eprintln!(
                "efm {cmd}: not available in this build yet (the agent and its admin socket are \
                 not built; see README.md, \"Status\")"
            );
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("efm: unknown command {other:?}; commands: {}", COMMANDS.join(", "));
            ExitCode::from(2)
        }
    }
}
