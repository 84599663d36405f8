//! `failover`: failover time (fault → first client write through the VIP on the new primary)
//! over fresh three-node clusters per fault kind, with the product's default timings.

use std::time::Duration;

use anyhow::Result;
use efm_tests::cluster::{run_failover, Cluster, Kind, LONG_WRITERS};
use serde_json::json;

use crate::harness::{percentile, Args, Report};

type Fault = fn(&mut Cluster);

pub fn run(args: &Args) -> Result<()> {
    let runs: usize = args.get("--runs", if args.flag("--quick") { 2 } else { 20 })?;
    // `--faults a,b`: only these faults (default: all).
    let only: String = args.get("--faults", String::new())?;
    crate::build_agent()?;
    let kinds = [Kind::Primary, Kind::Standby, Kind::Standby];
    let faults: [(&str, Fault); 3] = [
        // Node 1 is the primary (`kinds[0]`), so it always has a database.
        ("postmaster-sigkill", |c| c.pg[0].as_ref().expect("node 1 runs PostgreSQL").sigkill()),
        ("link-down", |c| c.bed.link_down(0)),
        // The agent frozen past the lease with its heartbeats cut, its node reachable by the
        // clients: statements in flight on the old primary commit there after the promotion;
        // only the kernel keeps their answers in. (A frozen agent whose node answers heartbeats
        // is "agent down" since issue 13: the voters keep endorsing it, no failover.)
        ("agent-sigstop", |c| {
            c.agents[0].signal(libc::SIGSTOP);
            c.bed.cut_heartbeats(0, &[1, 2]);
        }),
    ];
    let mut rep = Report::new("failover");
    rep.setting("heartbeat.interval", "50ms");
    rep.setting("node.timeout", "500ms");
    rep.setting("lease.timeout", "1s");
    rep.setting("fence.mode", "reset");
    rep.setting("nodes", "primary + 2 standbys");
    rep.setting("runs_per_fault", runs);
    let mut rows = Vec::new();
    for (name, fault) in faults {
        if !only.is_empty() && !only.split(',').any(|f| f == name) {
            continue;
        }
        let mut times = Vec::new();
        let (mut long_old, mut long_new, mut long_failed) = (0, 0, 0);
        for r in 0..runs {
            let (c, _acks, run) = run_failover(&kinds, "", Duration::from_secs(30), fault);
            eprintln!(
                "{name} run {}/{runs}: {} ms (gap {} ms; long statements acknowledged by the old primary {}, by the new {}, failed {})",
                r + 1,
                run.failover_ms,
                run.gap_ms,
                run.long_acks_old,
                run.long_acks_new,
                run.long_failed
            );
            times.push(run.failover_ms);
            long_old += run.long_acks_old;
            long_new += run.long_acks_new;
            long_failed += run.long_failed;
            drop(c);
        }
        times.sort_unstable();
        let (med, p90, worst) = (percentile(&times, 0.5), percentile(&times, 0.9), *times.last().unwrap_or(&0));
        rows.push(vec![
            name.to_owned(),
            runs.to_string(),
            med.to_string(),
            p90.to_string(),
            worst.to_string(),
            "0".into(),
            format!("{long_old} / {long_new} / {long_failed}"),
        ]);
        rep.metric(&format!("{name}_long_acks_old_primary"), long_old);
        rep.metric(&format!("{name}_long_acks_new_primary"), long_new);
        rep.metric(&format!("{name}_long_failed"), long_failed);
        rep.metric(&format!("{name}_median_ms"), med);
        rep.metric(&format!("{name}_p90_ms"), p90);
        rep.metric(&format!("{name}_worst_ms"), worst);
        rep.metric(&format!("{name}_overlaps"), 0);
        rep.samples.insert(format!("{name}_ms"), json!(times));
        rep.target(&format!("{name}_median_ms"), "< 1500", med, med < 1500);
        rep.target(&format!("{name}_worst_ms"), "< 3000", worst, worst < 3000);
    }
    rep.setting("client", format!("1 short writer + {LONG_WRITERS} long writers (statements sleeping 0.5-3 s inside the server), keepalives off"));
    rep.table(&["fault", "runs", "median ms", "p90 ms", "worst ms", "overlaps", "long acks old / new / failed"], &rows);
    rep.note(
        "An overlap of writable primaries fails the run; every run passed that check. The overlap check counts every \
         acknowledgement the client received, the long statements' included (when their answer arrived).",
    );
    rep.finish(&crate::harness::command_line())
}
