//! What every suite shares: command-line options, the machine description, statistics, the
//! report (JSON plus a markdown table, printed and written to `bench/results/SUITE.{json,md}`),
//! and a `stress-ng` guard.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

/// `--name value` options and `--flag` switches after the suite name.
pub struct Args {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `args`; `known_values` take a value, `known_flags` do not. Anything else is an error.
    pub fn parse(args: &[String], known_values: &[&str], known_flags: &[&str]) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut flags = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if known_values.contains(&a.as_str()) {
                let v = it.next().with_context(|| format!("{a} takes a value"))?;
                values.insert(a.clone(), v.clone());
            } else if known_flags.contains(&a.as_str()) {
                flags.push(a.clone());
            } else {
                bail!(
                    "unknown option {a:?}; this suite takes {} {}",
                    known_values.iter().map(|v| format!("{v} N")).collect::<Vec<_>>().join(" "),
                    known_flags.join(" ")
                );
            }
        }
        Ok(Self { values, flags })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}")),
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Kernel, CPU model, CPU count and clocksource of this machine.
pub fn machine() -> Value {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "clocksource": read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "loadavg_at_start": read("/proc/loadavg"),
    })
}

/// The one-line machine description for markdown output.
pub fn machine_line(m: &Value) -> String {
    format!(
        "kernel {}, {} ({} CPUs), clocksource {}, load average at start {}",
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"],
        m["clocksource"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?"),
    )
}

/// The `p`-quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "indices far below 2^52"
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p99, p99.9 and max of a sample (sorted in place).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub n: usize,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Dist {
    pub fn of(v: &mut [u64]) -> Self {
        v.sort_unstable();
        Self {
            n: v.len(),
            p50: percentile(v, 0.5),
            p99: percentile(v, 0.99),
            p999: percentile(v, 0.999),
            max: v.last().copied().unwrap_or(0),
        }
    }
}

/// Nanoseconds as microseconds with one decimal.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// Nanoseconds as milliseconds with one decimal.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 100_000.0).round() / 10.0
}

/// The median of a non-empty slice of floats.
pub fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One suite's results.
pub struct Report {
    pub suite: &'static str,
    pub settings: Map<String, Value>,
    pub metrics: Map<String, Value>,
    pub targets: Map<String, Value>,
    /// Raw samples behind some metrics (arrays), kept out of `metrics`, which holds numbers only.
    pub samples: Map<String, Value>,
    /// Markdown: tables and notes, in order.
    pub body: String,
}

impl Report {
    pub fn new(suite: &'static str) -> Self {
        Self {
            suite,
            settings: Map::new(),
            metrics: Map::new(),
            targets: Map::new(),
            samples: Map::new(),
            body: String::new(),
        }
    }

    pub fn setting(&mut self, name: &str, v: impl Into<Value>) {
        self.settings.insert(name.to_owned(), v.into());
    }

    pub fn metric(&mut self, name: &str, v: impl Into<Value>) {
        self.metrics.insert(name.to_owned(), v.into());
    }

    /// A target: `text` says what is required, `value` what was measured.
    pub fn target(&mut self, name: &str, text: &str, value: impl Into<Value>, met: bool) {
        self.targets.insert(name.to_owned(), json!({"target": text, "value": value.into(), "met": met}));
    }

    /// Appends a markdown table.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.body, "| {} |", header.join(" | "));
        let _ = writeln!(self.body, "|{}", "---|".repeat(header.len()));
        for r in rows {
            let _ = writeln!(self.body, "| {} |", r.join(" | "));
        }
        self.body.push('\n');
    }

    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.body, "{text}\n");
    }

    /// Prints the markdown and writes `bench/results/SUITE.json` and `SUITE.md`.
    pub fn finish(mut self, command: &str) -> Result<()> {
        let m = machine();
        if !self.targets.is_empty() {
            let rows: Vec<Vec<String>> = self
                .targets
                .iter()
                .map(|(k, t)| {
                    vec![
                        k.clone(),
                        t["target"].as_str().unwrap_or("").to_owned(),
                        t["value"].to_string(),
                        if t["met"] == true { "met".into() } else { "**not met**".into() },
                    ]
                })
                .collect();
            self.table(&["target", "required", "measured", ""], &rows);
        }
        let out = json!({
            "suite": self.suite,
            "command": command,
            "machine": m,
            "settings": self.settings,
            "metrics": self.metrics,
            "targets": self.targets,
            "samples": self.samples,
        });
        let md = format!(
            "## {}\n\n`{command}`\n\nMachine: {}.\n\nSettings: {}\n\n{}",
            self.suite,
            machine_line(&m),
            serde_json::to_string(&self.settings)?,
            self.body
        );
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(format!("{}.json", self.suite)), serde_json::to_string_pretty(&out)? + "\n")
            .context("writing the JSON result")?;
        std::fs::write(dir.join(format!("{}.md", self.suite)), &md).context("writing the markdown result")?;
        println!("{md}");
        println!("(written to {}/{}.json and .md)", dir.display(), self.suite);
        Ok(())
    }
}

/// A `stress-ng` run in the root namespace, stopped (by its pid) on drop.
pub struct Stress {
    child: Child,
    _args: Vec<String>,
}

impl Stress {
    pub fn start(args: &[&str]) -> Result<Self> {
        let child = Command::new("stress-ng")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting stress-ng (installed by `cargo xtask setup`)")?;
        // Let its workers start before measuring.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, _args: args.iter().map(|s| (*s).to_owned()).collect() })
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        // stress-ng's parent stops its workers on SIGTERM.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator for random fault times (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, bound)`.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
}

/// The command line as run, for the records.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("bench {}", args.join(" "))
}
