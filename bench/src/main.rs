//! efm benchmarks: `cargo run -p bench --release -- SUITE` (root). Each suite will write
//! `bench/results/SUITE.json` and a markdown table. No suite is implemented in this build yet.

use std::process::ExitCode;

const SUITES: &[&str] = &["heartbeat-latency", "detection", "false-positives", "fence", "prog-cost", "failover"];

fn main() -> ExitCode {
    let suite = std::env::args().nth(1);
    match suite.as_deref() {
        None | Some("--help" | "-h") => {
            println!("usage: bench SUITE\nsuites: {}", SUITES.join(", "));
            ExitCode::SUCCESS
        }
        Some(s) if SUITES.contains(&s) => {
            eprintln!("bench: suite {s} is not implemented in this build yet");
            ExitCode::from(2)
        }
        Some(s) => {
            eprintln!("bench: unknown suite {s:?}; suites: {}", SUITES.join(", "));
            ExitCode::from(2)
        }
    }
}
