//! `prog-cost`: nanoseconds per packet inside the kernel, measured by `BPF_PROG_RUN` on crafted
//! frames against the loaded (not attached) efm program with the test configuration, and against
//! an empty XDP program (`r0 = XDP_PASS; exit`) on the same frame as the baseline.
//!
//! Two modes: `repeat` (the kernel runs the same frame N times and reports the mean; median of 5
//! calls) for every frame whose path does not depend on state; and single runs with a fresh
//! sequence number each (median over many calls) for accepted PINGs and PONGs, whose repeated copy
//! would be a replay. Single runs include the kernel's timer overhead, so the empty program is
//! measured the same way for comparison.
//!
//! The egress fence (TC program) is measured the same way against an empty TC program: an
//! unrelated segment, a reply while serving, a reply dropped while fenced, a RST passing, and (in
//! single runs, since it rewrites the frame) a reply rewritten into a RST.

use anyhow::{ensure, Context as _, Result};
use efm_common::{
    maps::{FenceState, FENCE_FENCED, FENCE_RESET},
    wire::{Heartbeat, HB_KIND_PONG},
};
use efm_tests::{
    hb_frame, ping, ping_to, tcp_frame, Addrs, Fixture, DB_PORT, LOCAL_V4, STRANGER_V4, TCP_ACK, TCP_PSH, TCP_RST,
    TCP_SYN,
};

use crate::{
    bpf,
    harness::{Args, Report},
};

struct Case {
    name: &'static str,
    what: &'static str,
    frame: Vec<u8>,
    fenced: bool,
    expect: u32,
}

#[expect(clippy::too_many_lines, reason = "the suite's measurements in order, read top to bottom")]
pub fn run(args: &Args) -> Result<()> {
    let quick = args.flag("--quick");
    let repeat: u32 = args.get("--repeat", if quick { 1_000_000 } else { 10_000_000 })?;
    let calls: usize = args.get("--calls", if quick { 3 } else { 5 })?;
    let singles: usize = args.get("--singles", if quick { 10_000 } else { 100_000 })?;
    let mut fx = Fixture::new();
    let empty = bpf::load_constant_xdp(bpf::XDP_PASS, "efm_bench_pass")?;

    let client = Addrs::v4().with_src(STRANGER_V4.into()).with_dst(LOCAL_V4.into());
    let syn = tcp_frame(client, 40000, DB_PORT, 1, 0, TCP_SYN, &[]);
    let unrelated = tcp_frame(client, 40000, 8080, 1, 0, TCP_SYN, &[]);
    // Heartbeats echoing the fixture datapath's nonce, as a peer that learned it sends them.
    let nonce = fx.dp.nonce();
    let pong = |seq: u64| Heartbeat { kind: HB_KIND_PONG, ..ping_to(nonce, 1, seq) };
    let cases = [
        Case {
            name: "ping_replayed",
            what: "PING, repeated copy (MAC verified, then dropped as a replay)",
            frame: hb_frame(Addrs::v4(), &ping_to(nonce, 1, 1)),
            fenced: false,
            expect: 1,
        },
        Case {
            name: "pong_replayed",
            what: "PONG, repeated copy (MAC verified, then dropped as a replay)",
            frame: hb_frame(Addrs::v4(), &pong(1)),
            fenced: false,
            expect: 1,
        },
        Case {
            name: "client_fenced",
            what: "client TCP SYN to the database port, node fenced (drop)",
            frame: syn.clone(),
            fenced: true,
            expect: 1,
        },
        Case {
            name: "client_unfenced",
            what: "client TCP SYN to the database port, not fenced (pass)",
            frame: syn,
            fenced: false,
            expect: 2,
        },
        Case {
            name: "unrelated",
            what: "unrelated TCP SYN (port 8080)",
            frame: unrelated.clone(),
            fenced: false,
            expect: 2,
        },
    ];

    let base = Fixture::base_fence();
    let mut rep = Report::new("prog-cost");
    rep.setting("repeat", repeat);
    rep.setting("calls_per_case", calls);
    rep.setting("single_runs", singles);
    rep.setting("program", "efm_xdp (tail calls to the heartbeat / client programs), JIT as configured");
    rep.setting(
        "bpf_jit_enable",
        std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default().trim(),
    );

    // Repeat mode.
    let median_of = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut empty_runs = Vec::new();
    for _ in 0..calls {
        let (action, d) = bpf::prog_run(&empty, &unrelated, repeat)?;
        ensure!(action == 2, "the empty program returned {action}");
        empty_runs.push(u64::try_from(d.as_nanos())?);
    }
    let empty_ns = median_of(&mut empty_runs);
    let mut rows = vec![vec![
        "empty XDP program (XDP_PASS)".to_owned(),
        "repeat".into(),
        empty_ns.to_string(),
        "0".into(),
        format!("{empty_runs:?}"),
    ]];
    rep.metric("empty_ns", empty_ns);
    let mut unrelated_ns = 0;
    for c in &cases {
        fx.set_fence(if c.fenced { FenceState { flags: FENCE_FENCED, ..base } } else { base });
        // One run first, so the heartbeat cases measure the replay path from the first call on
        // (the accepted copy is rewritten into a PONG, which later repeats would see).
        fx.dp.test_run(&c.frame).context("BPF_PROG_RUN")?;
        let mut v = Vec::new();
        for _ in 0..calls {
            let r = fx.dp.test_run_repeat(&c.frame, repeat).context("BPF_PROG_RUN")?;
            ensure!(r.action == c.expect, "{}: action {} (expected {})", c.name, r.action, c.expect);
            v.push(u64::try_from(r.duration.as_nanos())?);
        }
        let ns = median_of(&mut v);
        if c.name == "unrelated" {
            unrelated_ns = ns;
        }
        rep.metric(&format!("{}_ns", c.name), ns);
        rows.push(vec![
            c.what.to_owned(),
            "repeat".into(),
            ns.to_string(),
            format!("{:+}", i128::from(ns) - i128::from(empty_ns)),
            format!("{v:?}"),
        ]);
    }
    fx.set_fence(base);

    // Single runs with fresh sequence numbers: accepted PING (slot update + PONG built, MAC
    // computed twice) and accepted PONG (slot update + RTT histogram).
    let single = |f: &mut dyn FnMut(u64) -> Result<(u32, u64)>, expect: u32, what: &str| -> Result<u64> {
        let mut v = Vec::with_capacity(singles);
        for i in 0..singles {
            let (action, ns) = f(u64::try_from(i)? + 2)?;
            ensure!(action == expect, "{what}: action {action} (expected {expect})");
            v.push(ns);
        }
        Ok(median_of(&mut v))
    };
    let empty_single = single(
        &mut |_| {
            let (a, d) = bpf::prog_run(&empty, &unrelated, 1)?;
            Ok((a, u64::try_from(d.as_nanos())?))
        },
        2,
        "empty",
    )?;
    let ping_ns = single(
        &mut |seq| {
            let r = fx.dp.test_run(&hb_frame(Addrs::v4(), &ping_to(nonce, 1, seq)))?;
            Ok((r.action, u64::try_from(r.duration.as_nanos())?))
        },
        3,
        "ping",
    )?;
    let stale_ns = single(
        &mut |seq| {
            let r = fx.dp.test_run(&hb_frame(Addrs::v4(), &ping(1, seq)))?;
            Ok((r.action, u64::try_from(r.duration.as_nanos())?))
        },
        3,
        "stale-nonce ping",
    )?;
    let pong_rx_ns = single(
        &mut |seq| {
            let r = fx.dp.test_run(&hb_frame(Addrs::v4(), &pong(seq)))?;
            Ok((r.action, u64::try_from(r.duration.as_nanos())?))
        },
        1,
        "pong",
    )?;
    rep.metric("single_empty_ns", empty_single);
    rep.metric("ping_accepted_ns", ping_ns);
    rep.metric("pong_accepted_ns", pong_rx_ns);
    rep.metric("ping_stale_nonce_ns", stale_ns);
    rep.metric("ping_accepted_over_empty_ns", i64::try_from(ping_ns)? - i64::try_from(empty_single)?);
    rep.metric("pong_accepted_over_empty_ns", i64::try_from(pong_rx_ns)? - i64::try_from(empty_single)?);
    rows.push(vec![
        "empty XDP program, single runs".into(),
        "single".into(),
        empty_single.to_string(),
        "0".into(),
        String::new(),
    ]);
    rows.push(vec![
        "PING accepted: slot updated, PONG built (XDP_TX)".into(),
        "single".into(),
        ping_ns.to_string(),
        format!("{:+}", i128::from(ping_ns) - i128::from(empty_single)),
        String::new(),
    ]);
    rows.push(vec![
        "PING echoing a stale nonce: nothing recorded, PONG built (XDP_TX)".into(),
        "single".into(),
        stale_ns.to_string(),
        format!("{:+}", i128::from(stale_ns) - i128::from(empty_single)),
        String::new(),
    ]);
    rows.push(vec![
        "PONG accepted: slot and RTT histogram updated".into(),
        "single".into(),
        pong_rx_ns.to_string(),
        format!("{:+}", i128::from(pong_rx_ns) - i128::from(empty_single)),
        String::new(),
    ]);
    rep.table(&["frame", "mode", "ns/packet (median)", "over empty", "calls (ns)"], &rows);
    rep.note(&format!(
        "repeat: the kernel's mean over {repeat} runs of one frame, median of {calls} calls. single: one \
         run per call with a fresh sequence number, median of {singles} calls; includes the kernel's \
         per-call timer overhead, hence its own empty baseline."
    ));
    let over = i64::try_from(unrelated_ns)? - i64::try_from(empty_ns)?;
    rep.metric("unrelated_over_empty_ns", over);
    rep.target("unrelated_over_empty_ns", "<= 10 ns over the empty XDP program", over, over <= 10);
    egress_cost(&mut fx, &mut rep, repeat, calls, singles)?;
    rep.finish(&crate::harness::command_line())
}

/// The egress fence (TC program) against an empty TC program (`r0 = TCX_NEXT`). Repeat mode for
/// the paths that leave the frame as it is; the RST conversion rewrites the frame, and the kernel
/// runs every repeat on the same skb (the second run would see a RST), so it is measured in single
/// runs, against the empty program's single runs.
fn egress_cost(fx: &mut Fixture, rep: &mut Report, repeat: u32, calls: usize, singles: usize) -> Result<()> {
    const NEXT: u32 = u32::MAX;
    const SHOT: u32 = 2;
    let empty = bpf::load_constant_tc(bpf::TCX_NEXT, "efm_bench_tcnext")?;
    let server = Addrs { src: LOCAL_V4.into(), dst: STRANGER_V4.into(), vlan: None };
    let reply = tcp_frame(server, DB_PORT, 40000, 1, 2, TCP_ACK | TCP_PSH, &[0x5a; 64]);
    let unrelated = tcp_frame(server, 22, 40000, 1, 2, TCP_ACK | TCP_PSH, &[0x5a; 64]);
    let base = Fixture::base_fence();
    let median_of = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut v = Vec::new();
    for _ in 0..calls {
        let (action, d) = bpf::prog_run(&empty, &reply, repeat)?;
        ensure!(action == NEXT, "the empty TC program returned {action}");
        v.push(u64::try_from(d.as_nanos())?);
    }
    let empty_ns = median_of(&mut v);
    rep.metric("egress_empty_ns", empty_ns);
    let mut rows =
        vec![vec!["empty TC program (TCX_NEXT)".to_owned(), "repeat".into(), empty_ns.to_string(), "0".into()]];
    let cases: [(&str, &str, &[u8], FenceState, u32); 4] = [
        ("egress_unrelated", "unrelated segment (source port 22) from a service address", &unrelated, base, NEXT),
        ("egress_serving", "reply from the database port, node serving (pass)", &reply, base, NEXT),
        (
            "egress_fenced_drop",
            "reply from the database port, node fenced, drop mode",
            &reply,
            FenceState { flags: FENCE_FENCED, ..base },
            SHOT,
        ),
        (
            "egress_fenced_rst_passes",
            "a RST from the database port, node fenced (passes)",
            &tcp_frame(server, DB_PORT, 40000, 1, 2, TCP_RST, &[]),
            FenceState { flags: FENCE_FENCED | FENCE_RESET, ..base },
            NEXT,
        ),
    ];
    for (name, what, frame, fence, expect) in cases {
        fx.set_fence(fence);
        let mut v = Vec::new();
        for _ in 0..calls {
            let r = fx.dp.test_run_egress(frame, repeat).context("BPF_PROG_RUN of the egress program")?;
            ensure!(r.action == expect, "{name}: action {} (expected {expect})", r.action);
            ensure!(r.frame == frame, "{name}: the frame was changed");
            v.push(u64::try_from(r.duration.as_nanos())?);
        }
        let ns = median_of(&mut v);
        rep.metric(&format!("{name}_ns"), ns);
        rep.metric(&format!("{name}_over_empty_ns"), i64::try_from(ns)? - i64::try_from(empty_ns)?);
        rows.push(vec![
            what.to_owned(),
            "repeat".into(),
            ns.to_string(),
            format!("{:+}", i128::from(ns) - i128::from(empty_ns)),
        ]);
    }
    // Single runs: the empty program, a serving reply, and the conversion into a RST.
    let single = |run: &mut dyn FnMut() -> Result<(u32, Vec<u8>, u64)>,
                  check: &dyn Fn(u32, &[u8]) -> bool,
                  what: &str|
     -> Result<u64> {
        let mut v = Vec::with_capacity(singles);
        for _ in 0..singles {
            let (action, out, ns) = run()?;
            ensure!(check(action, &out), "{what}: unexpected result {action}");
            v.push(ns);
        }
        Ok(median_of(&mut v))
    };
    let empty_single = single(
        &mut || {
            let (a, d) = bpf::prog_run(&empty, &reply, 1)?;
            Ok((a, Vec::new(), u64::try_from(d.as_nanos())?))
        },
        &|a, _| a == NEXT,
        "empty TC",
    )?;
    fx.set_fence(base);
    let serving_single = single(
        &mut || {
            let r = fx.dp.test_run_egress(&reply, 1)?;
            Ok((r.action, r.frame, u64::try_from(r.duration.as_nanos())?))
        },
        &|a, f| a == NEXT && f == reply.as_slice(),
        "serving",
    )?;
    fx.set_fence(FenceState { flags: FENCE_FENCED | FENCE_RESET, ..base });
    let rst_single = single(
        &mut || {
            let r = fx.dp.test_run_egress(&reply, 1)?;
            Ok((r.action, r.frame, u64::try_from(r.duration.as_nanos())?))
        },
        // Converted: the flags byte (Ethernet 14 + IPv4 20 + 13) is RST|ACK.
        &|a, f| a == NEXT && f.get(47) == Some(&(TCP_RST | TCP_ACK)),
        "fenced, RST conversion",
    )?;
    fx.set_fence(base);
    for (name, ns) in [
        ("egress_single_empty_ns", empty_single),
        ("egress_single_serving_ns", serving_single),
        ("egress_single_fenced_rst_ns", rst_single),
    ] {
        rep.metric(name, ns);
    }
    rep.metric("egress_serving_over_empty_single_ns", i64::try_from(serving_single)? - i64::try_from(empty_single)?);
    rep.metric("egress_fenced_rst_over_empty_single_ns", i64::try_from(rst_single)? - i64::try_from(empty_single)?);
    rows.push(vec!["empty TC program, single runs".into(), "single".into(), empty_single.to_string(), "0".into()]);
    rows.push(vec![
        "reply from the database port, node serving (pass)".into(),
        "single".into(),
        serving_single.to_string(),
        format!("{:+}", i128::from(serving_single) - i128::from(empty_single)),
    ]);
    rows.push(vec![
        "reply from the database port, node fenced: rewritten into a RST".into(),
        "single".into(),
        rst_single.to_string(),
        format!("{:+}", i128::from(rst_single) - i128::from(empty_single)),
    ]);
    rep.note("Egress fence (TC program on TCX egress), 118-byte IPv4 frames, against an empty TC program:");
    rep.table(&["segment", "mode", "ns/packet (median)", "over empty TC"], &rows);
    Ok(())
}
