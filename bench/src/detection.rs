//! `detection`: time from a fault to the detector's verdict, with real agents. Three witness
//! agents (no databases) in namespaces on a bridge; node 2 is hit, nodes 1 and 3 observe. The
//! verdict time is the agent's own record (`verdictSinceNs` in `node-status-json`: the
//! `CLOCK_MONOTONIC` time of the tick whose `Detector::observe` changed it); the fault time is
//! taken on the same clock just before the signal (SIGKILL or SIGSTOP of node 2's agent) or just
//! after the one ioctl that sets its switch port down returns. Each trial waits a random
//! 200–1200 ms after the previous one recovered, so faults land at random phases of the
//! heartbeat and tick cycle.

use std::time::Duration;

use anyhow::{Context as _, Result};
use efm_tests::{cluster::Agent, monotonic_ns};

use crate::{
    bpf,
    harness::{ms, Args, Dist, Report, Rng},
    witnesses::{self, Timing, DEFAULTS, FAST},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Link,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "agent_sigkill",
            Self::Stop => "agent_sigstop",
            Self::Link => "link_down",
        }
    }

    fn expect(self) -> &'static str {
        match self {
            Self::Kill | Self::Stop => "agent dead, node alive",
            Self::Link => "node dead",
        }
    }
}

const TARGET: usize = 1;
const OBSERVERS: [usize; 2] = [0, 2];

/// Applies the fault to node 2; returns the fault time and how long applying it took.
fn apply(c: &mut efm_tests::cluster::Cluster, f: Fault) -> Result<(u64, u64)> {
    Ok(match f {
        Fault::Kill => {
            let t = monotonic_ns();
            c.agents[TARGET].sigkill();
            (t, 0)
        }
        Fault::Stop => {
            let t = monotonic_ns();
            c.agents[TARGET].signal(libc::SIGSTOP);
            (t, 0)
        }
        Fault::Link => {
            let sw = c.bed.nodes[TARGET].sw_if.clone();
            // The ioctl waits for the RTNL lock, which namespace and link churn elsewhere on the
            // host can hold for milliseconds; the port goes down at the end, just before the call
            // returns, so that is the fault time.
            c.bed.switch.run(move || -> Result<(u64, u64)> {
                let t = monotonic_ns();
                bpf::set_link(&sw, false)?;
                let done = monotonic_ns();
                Ok((done, done - t))
            })?
        }
    })
}

fn restore(c: &mut efm_tests::cluster::Cluster, f: Fault) -> Result<()> {
    match f {
        Fault::Kill => c.agents[TARGET] = Agent::start(&c.bed.nodes[TARGET].ns.name, &c.files[TARGET]),
        Fault::Stop => c.agents[TARGET].signal(libc::SIGCONT),
        Fault::Link => {
            let sw = c.bed.nodes[TARGET].sw_if.clone();
            c.bed.switch.run(move || bpf::set_link(&sw, true))?;
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    let trials: usize = args.get("--trials", if args.flag("--quick") { 10 } else { 100 })?;
    let seed = monotonic_ns();
    let mut rng = Rng::seeded(seed);
    let mut rep = Report::new("detection");
    rep.setting("trials_per_fault_and_timing", trials);
    rep.setting("observers", "nodes 1 and 3 (two samples per trial)");
    rep.setting("cluster", "three witness agents (no databases), real agents, native XDP, namespaces on a bridge");
    rep.setting("random_wait_ms", "200..1200 before each fault");
    rep.setting("seed", seed);
    let mut rows = Vec::new();
    for timing in [DEFAULTS, FAST] {
        let mut c = witnesses::start(timing)?;
        let t = |x: u64| Duration::from_millis(x);
        for fault in [Fault::Kill, Fault::Stop, Fault::Link] {
            let mut samples = Vec::new();
            let mut apply_max = 0;
            for trial in 0..trials {
                for o in OBSERVERS {
                    // Alive (again): the fault before was seen, so any "alive" now is news.
                    witnesses::wait_verdict(&c, o, TARGET, "alive", 0, Duration::from_secs(30))
                        .context("waiting for node 2 to be seen alive")?;
                }
                std::thread::sleep(t(200 + rng.below(1000)));
                let (t_fault, took) = apply(&mut c, fault)?;
                apply_max = apply_max.max(took);
                for o in OBSERVERS {
                    let at = witnesses::wait_verdict(
                        &c,
                        o,
                        TARGET,
                        fault.expect(),
                        t_fault,
                        t(timing.timeout_ms * 10 + 2000),
                    )?;
                    samples.push(at - t_fault);
                }
                restore(&mut c, fault)?;
                eprintln!(
                    "{} {} trial {}/{trials}: {:?} ms",
                    timing.name,
                    fault.name(),
                    trial + 1,
                    samples[samples.len() - 2..].iter().map(|&x| ms(x)).collect::<Vec<_>>()
                );
            }
            let d = Dist::of(&mut samples);
            let key = format!("{}_{}", timing.name, fault.name());
            rep.samples.insert(format!("{key}_ns"), samples.clone().into());
            rep.metric(&format!("{key}_p50_ms"), ms(d.p50));
            rep.metric(&format!("{key}_p99_ms"), ms(d.p99));
            rep.metric(&format!("{key}_max_ms"), ms(d.max));
            rep.metric(&format!("{key}_min_ms"), ms(samples[0]));
            rep.metric(&format!("{key}_samples"), d.n);
            if fault == Fault::Link {
                rep.metric(&format!("{key}_ioctl_max_ms"), ms(apply_max));
            }
            if timing.name == FAST.name {
                rep.target(&format!("{key}_p50_ms"), "<= 40 ms", ms(d.p50), d.p50 <= 40_000_000);
                rep.target(&format!("{key}_p99_ms"), "<= 60 ms", ms(d.p99), d.p99 <= 60_000_000);
            }
            rows.push(row(timing, fault, trials, &d, samples[0]));
        }
        drop(c);
    }
    rep.table(&["timing", "fault", "verdict", "trials", "samples", "min ms", "p50 ms", "p99 ms", "max ms"], &rows);
    rep.note(
        "The verdict flips node.timeout after the last heartbeat that supported the old one, at the \
         agent's next tick: a fault lands up to one heartbeat interval after the last PING, so \
         detection lies near node.timeout − interval … node.timeout + interval.",
    );
    rep.finish(&crate::harness::command_line())
}

fn row(timing: Timing, fault: Fault, trials: usize, d: &Dist, min: u64) -> Vec<String> {
    vec![
        timing.label(),
        fault.name().replace('_', " "),
        fault.expect().to_owned(),
        trials.to_string(),
        d.n.to_string(),
        ms(min).to_string(),
        ms(d.p50).to_string(),
        ms(d.p99).to_string(),
        ms(d.max).to_string(),
    ]
}
