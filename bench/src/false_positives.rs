//! `false-positives`: three witness agents that never fail, watched for a while under load;
//! every verdict change ("peer verdict changed" in an agent's log) is a false one. Conditions:
//! idle; `stress-ng --cpu 4 --vm 2`; a UDP flood at node 1's heartbeat port from a host that is
//! not a peer (the client namespace, frames injected at full speed with `BPF_PROG_RUN` live
//! frames), which node 1's XDP program drops.
//!
//! The heartbeat age is measured from the kernel's own stamps: a sampler reads every node's
//! pinned peer slots each millisecond and records the largest gap between consecutive accepted
//! PINGs from a peer (and the age at the end).
//!
//! Rate: false verdicts per 10^5 heartbeat intervals, counting one interval per directed pair of
//! nodes (3 × 2 detectors) per `heartbeat.interval`.

use std::{
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use efm_common::maps::{Counter, PeerSlot, MAP_SLOTS, MAP_STATS, MAX_SLOTS};
use efm_tests::{cluster::Cluster, monotonic_ns, udp_frame, Addrs};

use crate::{
    bpf,
    harness::{ms, Args, Report, Stress},
    witnesses::{self, Timing, DEFAULTS, FAST},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Idle,
    Stress,
    Flood,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Stress => "stress",
            Self::Flood => "flood",
        }
    }
}

const STRESS: [&str; 4] = ["--cpu", "4", "--vm", "2"];

/// "peer verdict changed" lines in each node's agent log.
fn verdict_changes(c: &Cluster) -> [usize; 3] {
    let mut n = [0; 3];
    for (i, v) in n.iter_mut().enumerate() {
        *v = std::fs::read_to_string(witnesses::log_path(c, i))
            .map_or(0, |t| t.lines().filter(|l| l.contains("peer verdict changed")).count());
    }
    n
}

/// Samples the peer slots of every node each millisecond until `stop`; returns the largest
/// heartbeat age seen (ns).
fn age_sampler(maps: &[OwnedFd], stop: &AtomicBool) -> Result<u64> {
    let mut last: Vec<Vec<u64>> = vec![vec![0; MAX_SLOTS]; maps.len()];
    let mut max_age = 0;
    let mut active: Vec<Vec<u32>> = Vec::new();
    for m in maps {
        let mut a = Vec::new();
        for s in 0..u32::try_from(MAX_SLOTS)? {
            if bpf::array_get::<PeerSlot>(m, s)?.pings > 0 {
                a.push(s);
            }
        }
        active.push(a);
    }
    while !stop.load(Ordering::Relaxed) {
        for (n, m) in maps.iter().enumerate() {
            for &s in &active[n] {
                let slot = bpf::array_get::<PeerSlot>(m, s)?;
                let prev = &mut last[n][s as usize];
                if *prev != 0 && slot.ping_arrival_ns != *prev {
                    max_age = max_age.max(slot.ping_arrival_ns.saturating_sub(*prev));
                }
                *prev = slot.ping_arrival_ns;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let now = monotonic_ns();
    for row in &last {
        for &t in row.iter().filter(|&&t| t != 0) {
            max_age = max_age.max(now.saturating_sub(t));
        }
    }
    Ok(max_age)
}

/// Sum over CPUs of a per-CPU u64 counter in a pinned array map.
fn percpu_counter(map: &OwnedFd, index: u32) -> Result<u64> {
    let cpus = possible_cpus()?;
    anyhow::ensure!(cpus <= 64, "more than 64 possible CPUs");
    let mut v = vec![0u64; cpus];
    bpf::array_get_into(map, index, &mut v)?;
    Ok(v.iter().sum())
}

fn possible_cpus() -> Result<usize> {
    let t = std::fs::read_to_string("/sys/devices/system/cpu/possible").context("reading possible CPUs")?;
    let last = t.trim().rsplit(['-', ',']).next().unwrap_or("0").parse::<usize>()?;
    Ok(last + 1)
}

/// A flood of UDP frames from the client namespace to node 1's heartbeat port until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Flood {
    /// `pps` 0: as fast as one CPU can inject.
    #[expect(clippy::cast_precision_loss, reason = "pacing arithmetic")]
    fn start(c: &Cluster, pps: u64) -> Result<Self> {
        let client = c.bed.nodes.last().context("client namespace")?;
        let (cif, nif) = (client.ifname.clone(), c.bed.nodes[0].ifname.clone());
        let cmac = client.ns.run(move || bpf::mac_of(&cif))?;
        let nmac = c.bed.nodes[0].ns.run(move || bpf::mac_of(&nif))?;
        let mut frame = udp_frame(
            Addrs::v4().with_src(client.ip.into()).with_dst(c.bed.nodes[0].ip.into()),
            7800,
            7800,
            &[0x42; 64],
        );
        frame[0..6].copy_from_slice(&nmac);
        frame[6..12].copy_from_slice(&cmac);
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (st, se) = (stop.clone(), sent.clone());
        let (path, ifname) = (format!("/var/run/netns/{}", client.ns.name), client.ifname.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            efm_tests::enter_netns(&path);
            let gen = bpf::load_constant_xdp(bpf::XDP_TX, "efm_bench_gen")?;
            let ifindex = bpf::ifindex(&ifname)?;
            // Each call sets up a page pool, which costs milliseconds: pace in calls of 50 ms
            // worth of frames.
            let chunk: u32 =
                if pps == 0 { 1 << 14 } else { u32::try_from((pps / 20).clamp(64, 1 << 14)).unwrap_or(1 << 14) };
            let t0 = Instant::now();
            let mut sent = 0u64;
            while !st.load(Ordering::Relaxed) {
                bpf::inject_live(&gen, &frame, ifindex, chunk)?;
                sent += u64::from(chunk);
                se.store(sent, Ordering::Relaxed);
                if pps > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / pps as f64);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            Ok(())
        });
        Ok(Self { stop, sent, thread: Some(thread) })
    }

    fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[expect(clippy::cast_precision_loss, reason = "rates")]
pub fn run(args: &Args) -> Result<()> {
    let secs: u64 = args.get("--duration", if args.flag("--quick") { 60 } else { 600 })?;
    let flood_pps: u64 = args.get("--flood-pps", 0)?;
    let mut plan: Vec<(Timing, Load)> = vec![(DEFAULTS, Load::Idle), (DEFAULTS, Load::Stress), (DEFAULTS, Load::Flood)];
    if args.flag("--fast-all") {
        plan.extend([(FAST, Load::Idle), (FAST, Load::Stress)]);
    }
    plan.push((FAST, Load::Flood));
    let mut rep = Report::new("false-positives");
    rep.setting("seconds_per_condition", secs);
    rep.setting("stress", STRESS.join(" "));
    rep.setting("flood", "UDP to node 1's heartbeat port from the client namespace (not a peer), BPF_PROG_RUN live frames, dropped by node 1's XDP");
    rep.setting(
        "flood_pps_requested",
        if flood_pps == 0 { "as fast as one CPU injects".to_owned() } else { flood_pps.to_string() },
    );
    rep.setting("cluster", "three witness agents (no databases), native XDP, namespaces on a bridge");
    rep.setting("interval_count", "duration / heartbeat.interval × 6 directed detector pairs");
    let mut rows = Vec::new();
    let mut current: Option<(Timing, Cluster)> = None;
    for (timing, load) in plan {
        if current.as_ref().is_none_or(|(t, _)| t.name != timing.name) {
            drop(current.take());
            current = Some((timing, witnesses::start(timing)?));
        }
        let Some((_, c)) = current.as_ref() else { continue };
        // Settle, then count.
        std::thread::sleep(Duration::from_secs(2));
        let maps = (0..3).map(|i| bpf::obj_get(&witnesses::pinned_map(c, i, MAP_SLOTS))).collect::<Result<Vec<_>>>()?;
        let stats = bpf::obj_get(&witnesses::pinned_map(c, 0, MAP_STATS))?;
        let dropped_before = percpu_counter(&stats, Counter::HbUnknownPeer as u32)?;
        let before = verdict_changes(c);
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let sampler = std::thread::spawn(move || age_sampler(&maps, &st));
        let stress = if load == Load::Stress { Some(Stress::start(&STRESS)?) } else { None };
        let mut flood = if load == Load::Flood { Some(Flood::start(c, flood_pps)?) } else { None };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let flooded = flood.as_mut().map(Flood::stop).transpose()?.unwrap_or(0);
        drop(stress);
        let elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let max_age = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))??;
        // Verdict changes are logged at the tick that makes them; give the last tick time to log.
        std::thread::sleep(Duration::from_millis(200));
        let after = verdict_changes(c);
        let per_node: Vec<usize> = after.iter().zip(before.iter()).map(|(a, b)| a - b).collect();
        let false_verdicts: usize = per_node.iter().sum();
        let dropped = percpu_counter(&stats, Counter::HbUnknownPeer as u32)? - dropped_before;
        let intervals = elapsed.as_secs_f64() * 1000.0 / timing.interval_ms as f64 * 6.0;
        let per_1e5 = false_verdicts as f64 * 1e5 / intervals;
        let key = format!("{}_{}", timing.name, load.name());
        rep.metric(&format!("{key}_false_verdicts"), false_verdicts);
        rep.metric(&format!("{key}_per_1e5_intervals"), (per_1e5 * 1000.0).round() / 1000.0);
        rep.metric(&format!("{key}_max_heartbeat_age_ms"), ms(max_age));
        rep.metric(&format!("{key}_intervals"), intervals.round());
        for (i, n) in per_node.iter().enumerate() {
            rep.metric(&format!("{key}_false_verdicts_by_node{}", i + 1), *n);
        }
        if load == Load::Flood {
            let pps = flooded as f64 / elapsed.as_secs_f64();
            rep.metric(&format!("{key}_flood_pps"), pps.round());
            rep.metric(&format!("{key}_flood_dropped_by_xdp"), dropped);
        }
        let target = timing.name == DEFAULTS.name || load == Load::Flood;
        if target {
            rep.target(&format!("{key}_false_verdicts"), "0", false_verdicts, false_verdicts == 0);
        }
        eprintln!("{key}: {false_verdicts} false verdicts, max heartbeat age {} ms, flood {flooded} frames ({dropped} dropped by XDP)", ms(max_age));
        rows.push(vec![
            timing.label(),
            load.name().to_owned(),
            format!("{:.0}", elapsed.as_secs_f64()),
            format!("{intervals:.0}"),
            format!("{false_verdicts} ({})", per_node.iter().map(ToString::to_string).collect::<Vec<_>>().join("/")),
            format!("{per_1e5:.3}"),
            ms(max_age).to_string(),
            if load == Load::Flood {
                format!("{:.0} pps sent, {dropped} dropped by XDP", flooded as f64 / elapsed.as_secs_f64())
            } else {
                String::new()
            },
        ]);
    }
    drop(current);
    rep.table(
        &[
            "timing",
            "load",
            "seconds",
            "heartbeat intervals",
            "false verdicts (by observer n1/n2/n3)",
            "per 10^5 intervals",
            "max heartbeat age ms",
            "flood",
        ],
        &rows,
    );
    rep.note("Node 1 is the flooded node. A false verdict is any verdict change an agent logged during the window.");
    rep.finish(&crate::harness::command_line())
}
