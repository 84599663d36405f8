//! efm benchmarks: `sudo cargo run -p bench --release -- SUITE [options]`.
//!
//! Each suite prints markdown and writes `bench/results/SUITE.json` (`{"suite", "command",
//! "machine", "settings", "metrics": {name: number}, "targets": {name: {"target", "value",
//! "met"}}, "samples": {name: [...]}}`) and `bench/results/SUITE.md`. Every suite has options for shorter runs; the defaults are the
//! issue's sizes. Suites that run agents build them first (release).

mod bpf;
mod detection;
mod failover;
mod false_positives;
mod fence;
mod harness;
mod heartbeat_latency;
mod prog_cost;
mod witnesses;

use std::{fmt::Write as _, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::harness::Args;

/// Suite name, options that take a value, switches, one-line description.
const SUITES: &[(&str, &[&str], &[&str], &str)] = &[
    (
        "heartbeat-latency",
        &["--samples"],
        &["--quick", "--no-stress"],
        "kernel PONG vs user-space UDP echo vs ICMP echo RTT, idle and under stress-ng",
    ),
    (
        "detection",
        &["--trials"],
        &["--quick"],
        "fault -> detector verdict for agent SIGKILL, SIGSTOP, link down; default and 10ms/40ms timings",
    ),
    (
        "false-positives",
        &["--duration", "--flood-pps"],
        &["--quick", "--fast-all"],
        "false verdicts and max heartbeat age: idle, stress-ng, UDP flood",
    ),
    (
        "fence",
        &["--duration", "--rounds", "--trials"],
        &["--quick"],
        "XDP fence vs iptables-legacy / iptables-nft / nft netdev: drop rate and activation latency",
    ),
    ("prog-cost", &["--repeat", "--calls", "--singles"], &["--quick"], "ns per packet in the kernel (BPF_PROG_RUN)"),
    (
        "failover",
        &["--runs", "--faults"],
        &["--quick"],
        "fault -> first client write on the new primary (real PostgreSQL cluster; short and long statements)",
    ),
];

fn usage() -> String {
    let mut s = String::from("usage: bench SUITE [options]   (as root)\n\nsuites:\n");
    for (name, values, flags, what) in SUITES {
        let opts: Vec<String> =
            values.iter().map(|v| format!("[{v} N]")).chain(flags.iter().map(|f| format!("[{f}]"))).collect();
        let _ = writeln!(s, "  {name} {}\n      {what}", opts.join(" "));
    }
    s
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((suite, rest)) = args.split_first() else {
        print!("{}", usage());
        return Ok(());
    };
    let Some((name, values, flags, _)) = SUITES.iter().find(|s| s.0 == suite) else {
        bail!("unknown suite {suite:?}\n\n{}", usage());
    };
    let a = Args::parse(rest, values, flags)?;
    efm_tests::require_root();
    match *name {
        "heartbeat-latency" => heartbeat_latency::run(&a),
        "detection" => detection::run(&a),
        "false-positives" => false_positives::run(&a),
        "fence" => fence::run(&a),
        "prog-cost" => prog_cost::run(&a),
        "failover" => failover::run(&a),
        _ => unreachable!("every suite in SUITES is dispatched"),
    }
}

/// Builds the agent binaries next to this executable (the cluster library starts them from there).
pub fn build_agent() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let profile_dir = exe.parent().context("the bench executable's directory")?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "efm-agent", "--bins"]);
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    // Into the target directory this executable was built in, whatever CARGO_TARGET_DIR says now.
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    let st = cmd.status().context("building efm-agent")?;
    if !st.success() {
        bail!("building efm-agent failed");
    }
    Ok(())
}
