//! A cluster of three real agents without databases (all witnesses), for the detection and
//! false-positive suites: the bed and the agents come from `efm_tests::cluster`, each agent
//! started with `nsenter --net` so its pins live in the host's bpffs.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use efm_tests::cluster::{Cluster, Kind, CLUSTER};

/// Timing settings measured: the product's defaults, and the fast pair of the issue.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub name: &'static str,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

pub const DEFAULTS: Timing = Timing { name: "default", interval_ms: 50, timeout_ms: 500 };
pub const FAST: Timing = Timing { name: "10ms_40ms", interval_ms: 10, timeout_ms: 40 };

impl Timing {
    pub fn props(self) -> String {
        format!("heartbeat.interval={}ms\nnode.timeout={}ms\n", self.interval_ms, self.timeout_ms)
    }

    pub fn label(self) -> String {
        format!("heartbeat.interval={}ms node.timeout={}ms", self.interval_ms, self.timeout_ms)
    }
}

/// Address of node `i` (0-based) as the agents name their peers.
pub fn addr(i: usize) -> String {
    format!("198.18.0.{}:7800", i + 1)
}

/// Starts three witness agents with `timing` and waits until every one sees every peer alive
/// (the test library panics, after printing the agents' logs, if they do not within a minute).
pub fn start(timing: Timing) -> Result<Cluster> {
    crate::build_agent()?;
    Ok(Cluster::start(&[Kind::Witness, Kind::Witness, Kind::Witness], &timing.props()))
}

/// Observer `obs`'s view of node `target`: (verdict, verdict since ns).
pub fn verdict(c: &Cluster, obs: usize, target: usize) -> Option<(String, u64)> {
    let v = c.node_status(obs)?;
    let p = v["peers"].as_array()?.iter().find(|p| p["address"] == addr(target).as_str())?.clone();
    Some((p["verdict"].as_str()?.to_owned(), p["verdictSinceNs"].as_u64()?))
}

/// Waits until observer `obs` holds `want` about `target`, decided after `after_ns`; returns
/// the time of the decision.
pub fn wait_verdict(
    c: &Cluster,
    obs: usize,
    target: usize,
    want: &str,
    after_ns: u64,
    timeout: Duration,
) -> Result<u64> {
    let until = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < until {
        if let Some((v, since)) = verdict(c, obs, target) {
            if v == want && since >= after_ns {
                return Ok(since);
            }
            last = Some((v, since));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("node {} did not reach verdict {want:?} about {} within {timeout:?}; last: {last:?}", obs + 1, addr(target))
}

/// Node `i`'s agent log file.
pub fn log_path(c: &Cluster, i: usize) -> PathBuf {
    c.root.path().join(format!("node{}/log/{CLUSTER}.log", i + 1))
}

/// Node `i`'s pinned map `name`.
pub fn pinned_map(c: &Cluster, i: usize, name: &str) -> PathBuf {
    c.files[i].bpffs.0.join(CLUSTER).join(name)
}
