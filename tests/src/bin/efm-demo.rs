//! `cargo xtask demo`: a real efm cluster on this host, a failover, and its timeline.
//!
//! Three network namespaces on a bridge (198.18.0.1 to 198.18.0.3) with `PostgreSQL` 15: a primary and two
//! streaming standbys, or a primary, a standby and a witness with `--witness`; an efm-agent per
//! node, a VIP (198.18.0.100), and a client namespace (198.18.0.4) writing through the VIP. It
//! prints `efm cluster-status`, kills the primary (`--fault postmaster`, the default: SIGKILL of
//! the postmaster; `--fault link`: its link cut at the switch), prints the timeline measured on the
//! shared kernel clock, and the status again. Then it leaves the cluster running until Ctrl-C
//! (or exits at once with `--once`); everything it created is removed on the way out.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use efm_tests::{
    cluster::{Cluster, Kind, CLUSTER},
    monotonic_ns,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn ms(since: u64, t: u64) -> String {
    format!("{:>6} ms", t.saturating_sub(since) / 1_000_000)
}

#[expect(clippy::too_many_lines, reason = "the demo's steps in the order it shows them")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let witness = args.iter().any(|a| a == "--witness");
    let once = args.iter().any(|a| a == "--once");
    let fault =
        args.iter().position(|a| a == "--fault").and_then(|i| args.get(i + 1)).map_or("postmaster", String::as_str);
    if !matches!(fault, "postmaster" | "link") {
        eprintln!("efm-demo: --fault takes postmaster or link");
        std::process::exit(2);
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let kinds = if witness {
        vec![Kind::Primary, Kind::Standby, Kind::Witness]
    } else {
        vec![Kind::Primary, Kind::Standby, Kind::Standby]
    };
    println!(
        "== starting: {} (PostgreSQL 15, efm-agent with XDP per node, VIP 198.18.0.100)",
        if witness { "primary + standby + witness" } else { "primary + 2 standbys" }
    );
    let c = Cluster::start(&kinds, "");
    println!("\n== efm cluster-status {CLUSTER} (from node 1)");
    print!("{}", String::from_utf8_lossy(&c.efm(0, &["cluster-status"]).stdout));

    let w = c.writer();
    if w.wait_ack_from("n1", 0, Duration::from_secs(20)).is_none() {
        eprintln!("efm-demo: the client could not write through the VIP");
        std::process::exit(1);
    }
    std::thread::sleep(Duration::from_millis(500));
    let epoch0 = c.node_status(1).and_then(|v| v["epoch"].as_u64()).unwrap_or(0);

    println!(
        "\n== fault: {}",
        if fault == "link" { "primary's link cut at the switch" } else { "SIGKILL of the primary's postmaster" }
    );
    let t0 = monotonic_ns();
    if fault == "link" {
        c.bed.link_down(0);
    } else {
        c.pg[0].as_ref().expect("primary database").sigkill();
    }

    // Poll the nodes and the client until the new primary is writable and the other standby
    // follows it.
    let (mut detected, mut fenced, mut committed, mut writable, mut first_write, mut reattached) =
        (None, None, None, None, None, None);
    let until = Instant::now() + Duration::from_secs(30);
    let other_standby = if witness { None } else { Some(2usize) };
    while Instant::now() < until && !STOP.load(Ordering::SeqCst) {
        let now = monotonic_ns();
        let views: Vec<_> = (0..kinds.len()).map(|i| c.node_status(i)).collect();
        if detected.is_none() {
            let seen = views.iter().skip(1).flatten().any(|v| {
                v["peers"].as_array().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        p["address"] == "198.18.0.1:7800"
                            && (p["verdict"] != "alive" || p["epoch"].as_u64().is_some_and(|e| e > epoch0))
                    })
                }) || v["outcome"].as_str().is_some_and(|o| o.contains("suspect") || o.contains("voted"))
            }) || views[0].as_ref().is_some_and(|v| v["db"]["state"] == "DOWN");
            if seen {
                detected = Some(now);
            }
        }
        if fenced.is_none() && views[0].as_ref().is_none_or(|v| v["kernel"]["serving"] == false) {
            fenced = Some(now);
        }
        if committed.is_none()
            && views.iter().skip(1).flatten().any(|v| v["epoch"].as_u64().is_some_and(|e| e > epoch0))
        {
            committed = Some(now);
        }
        if writable.is_none()
            && views.iter().skip(1).flatten().any(|v| v["kernel"]["serving"] == true && v["db"]["inRecovery"] == false)
        {
            writable = Some(now);
        }
        if first_write.is_none() {
            first_write = w
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.t_ns > t0 && a.server.as_deref().is_some_and(|s| s != "n1"))
                .map(|a| a.t_ns);
        }
        if let (Some(_), None, Some(i)) = (first_write, reattached, other_standby) {
            let new = views
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, v)| v.as_ref().is_some_and(|v| v["kernel"]["serving"] == true))
                .map(|(j, _)| c.files[j].ip.clone());
            let streaming = c.pg[i]
                .as_ref()
                .map(|p| p.psql_output("SELECT sender_host || '|' || status FROM pg_stat_wal_receiver"));
            if let (Some(new), Some(out)) = (new, streaming) {
                let r = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if r == format!("{new}|streaming") {
                    reattached = Some(now);
                }
            }
        }
        if first_write.is_some()
            && (reattached.is_some() || other_standby.is_none())
            && writable.is_some()
            && committed.is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    println!(
        "\n== timeline (CLOCK_MONOTONIC, shared by all namespaces; ms after the fault; nodes polled every ~30 ms)"
    );
    let mut events = vec![
        (Some(t0), "fault"),
        (detected, "failure detected"),
        (fenced, "old primary fenced (its kernel refuses clients)"),
        (committed, "promotion committed (new epoch)"),
        (writable, "new primary writable (kernel serving, out of recovery)"),
        (first_write, "first client write after the fault"),
    ];
    if other_standby.is_some() {
        events.push((reattached, "other standby streaming from the new primary"));
    }
    events.sort_by_key(|(t, _)| t.unwrap_or(u64::MAX));
    for (t, what) in events {
        match t {
            Some(t) => println!("  {} {what}", ms(t0, t)),
            None => println!("  {:>9} {what}: not seen", "-"),
        }
    }
    let acks = w.finish();
    let new_name = acks
        .iter()
        .find(|a| a.t_ns > t0 && a.server.as_deref().is_some_and(|s| s != "n1"))
        .and_then(|a| a.server.clone());
    if let Some(new) = &new_name {
        let (last_old, first_new) = efm_tests::cluster::no_overlap(&acks, "n1", new);
        println!(
            "  last write acknowledged by the old primary: {} before the new primary's first",
            ms(last_old, first_new).trim()
        );
    }
    match first_write {
        Some(t) => println!("failover: {} ms from fault to first client write", (t - t0) / 1_000_000),
        None => println!("failover: no client write within 30 s of the fault"),
    }

    std::thread::sleep(Duration::from_secs(2));
    let p = c.serving_primary().unwrap_or(1);
    println!("\n== efm cluster-status {CLUSTER} (from node {})", p + 1);
    print!("{}", String::from_utf8_lossy(&c.efm(p, &["cluster-status"]).stdout));

    if !once {
        println!("\n== the cluster keeps running; Ctrl-C removes it. To look around:");
        for (i, n) in c.bed.nodes.iter().take(kinds.len()).enumerate() {
            let f = &c.files[i];
            println!(
                "  node {} ({}): ip netns exec {} bash    efm cluster-status {CLUSTER} --config-dir {} --run-dir {}",
                i + 1,
                n.ip,
                n.ns.name,
                f.config_dir.display(),
                f.run_dir.display()
            );
        }
        println!("  client: ip netns exec {} psql -h 198.18.0.100 -U postgres", c.bed.nodes[kinds.len()].ns.name);
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("== removing the cluster");
    drop(c);
}
