//! efm benchmarks: `sudo cargo run -p bench --release -- SUITE [--runs N]`.
//!
//! Each suite prints a markdown table and writes `bench/results/SUITE.json`:
//! `{"suite", "machine": {...}, "settings": {...}, "metrics": {name: number}, "targets":
//! {name: {"target", "value", "met"}}}`. Suites that need the agent build it first (release).
//!
//! Implemented: `failover`. The others listed are tracked work.

use std::{fmt::Write as _, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};
use efm_tests::cluster::{run_failover, Kind};
use serde_json::{json, Value};

const SUITES: &[&str] = &["failover", "heartbeat-latency", "detection", "false-positives", "fence", "prog-cost"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(suite) = args.first() else {
        println!("usage: bench SUITE [--runs N]\nsuites: {}", SUITES.join(", "));
        return Ok(());
    };
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>().context("--runs takes a number"))
        .transpose()?
        .unwrap_or(20);
    match suite.as_str() {
        "failover" => failover(runs),
        s if SUITES.contains(&s) => bail!("suite {s} is not implemented in this build yet"),
        s => bail!("unknown suite {s:?}; suites: {}", SUITES.join(", ")),
    }
}

fn build_agent() -> Result<()> {
    // The cluster library starts the agent binaries found next to this executable.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile_release = std::env::current_exe()?.parent().is_some_and(|d| d.ends_with("release"));
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "efm-agent", "--bins"]);
    if profile_release {
        cmd.arg("--release");
    }
    let st = cmd.status().context("building efm-agent")?;
    if !st.success() {
        bail!("building efm-agent failed");
    }
    Ok(())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn machine() -> Value {
    let cpu = read("/proc/cpuinfo").lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim().to_owned();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "clocksource": read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "small indices")]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Failover time (fault → first client write through the VIP on the new primary) over `runs`
/// fresh three-node clusters per fault kind, with the product's default timings.
fn failover(runs: usize) -> Result<()> {
    build_agent()?;
    let kinds = [Kind::Primary, Kind::Standby, Kind::Standby];
    let faults: [(&str, fn(&mut efm_tests::cluster::Cluster)); 2] = [
        ("postmaster-sigkill", |c| c.pg[0].as_ref().unwrap().sigkill()),
        ("link-down", |c| c.bed.link_down(0)),
    ];
    let mut metrics = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    let mut table = String::from("| fault | runs | median ms | p90 ms | worst ms | overlaps |\n|---|---|---|---|---|---|\n");
    for (name, fault) in faults {
        let mut times = Vec::new();
        for r in 0..runs {
            let (c, _acks, run) = run_failover(&kinds, "", Duration::from_secs(30), fault);
            eprintln!("{name} run {}/{runs}: {} ms (gap {} ms)", r + 1, run.failover_ms, run.gap_ms);
            times.push(run.failover_ms);
            drop(c);
        }
        times.sort_unstable();
        let (med, p90, worst) = (percentile(&times, 0.5), percentile(&times, 0.9), *times.last().unwrap_or(&0));
        let _ = writeln!(table, "| {name} | {runs} | {med} | {p90} | {worst} | 0 |");
        metrics.insert(format!("{name}_median_ms"), json!(med));
        metrics.insert(format!("{name}_p90_ms"), json!(p90));
        metrics.insert(format!("{name}_worst_ms"), json!(worst));
        metrics.insert(format!("{name}_overlaps"), json!(0));
        metrics.insert(format!("{name}_all_ms"), json!(times));
        targets.insert(format!("{name}_median_ms"), json!({"target": "< 1500", "value": med, "met": med < 1500}));
        targets.insert(format!("{name}_worst_ms"), json!({"target": "< 3000", "value": worst, "met": worst < 3000}));
    }
    let out = json!({
        "suite": "failover",
        "machine": machine(),
        "settings": {"heartbeat.interval": "50ms", "node.timeout": "500ms", "lease.timeout": "1s", "fence.mode": "reset", "nodes": "primary + 2 standbys", "runs_per_fault": runs},
        "metrics": metrics,
        "targets": targets,
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("failover.json"), serde_json::to_string_pretty(&out)? + "\n")?;
    println!("{table}");
    println!("(an overlap of writable primaries fails the run; every run passed that check)");
    Ok(())
}
