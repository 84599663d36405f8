//! The HTTP server's edge cases over a real socket, the `/primary` and `/replica` decisions, and the Prometheus
//! rendering against golden text.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use efm_common::maps::{Counter, RTT_BUCKETS};
use std::fmt::Write as _;

use super::*;
use crate::{
    detector::{PeerHealth, Verdict},
    node::{DbView, Identity, KernelView, LocalDatabase, PeerEntry, Role, Status},
    postgres::{DbInfo, Lsn},
};

const ME: &str = "198.18.0.1:7800";
const PEER: &str = "198.18.0.2:7800";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn get(path: &str) -> Request {
    Request { method: Method::Get, path: path.into() }
}

fn route_str(method: &str, target: &str) -> Result<Request, Refusal> {
    route(&hyper::Method::from_bytes(method.as_bytes()).unwrap(), &target.parse().unwrap())
}

// --- Requests as hyper hands them over ----------------------------------------------------------

#[test]
fn routes_take_the_path_of_origin_and_absolute_forms() {
    assert_eq!(route_str("GET", "/primary"), Ok(get("/primary")));
    assert_eq!(route_str("GET", "/replica?lag=1MB"), Ok(get("/replica")), "query dropped");
    assert_eq!(route_str("GET", "http://db1:8008/metrics"), Ok(get("/metrics")), "absolute form");
    assert_eq!(route_str("GET", "http://db1:8008"), Ok(get("/")));
    assert_eq!(route_str("HEAD", "/primary").unwrap().method, Method::Head);
    assert_eq!(route_str("OPTIONS", "/primary").unwrap().method, Method::Options);
    assert!(matches!(route_str("GET", "*"), Err(Refusal::BadRequest(_))));
    assert!(matches!(route_str("OPTIONS", "*"), Err(Refusal::BadRequest(_))));
    for m in ["POST", "PUT", "DELETE", "get", "CONNECT", "TRACE", "BREW"] {
        assert_eq!(route_str(m, "/primary"), Err(Refusal::MethodNotAllowed), "{m}");
    }
}

#[test]
fn responses_close_the_connection_and_are_not_cached() {
    let r = Answer::text(404, "nope").into_response();
    assert_eq!(r.status(), 404);
    assert_eq!(r.body(), "nope\n");
    let h = r.headers();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["connection"], "close");
    assert!(h.get("allow").is_none());
    let allow = Answer::text(405, "x").into_response();
    assert_eq!(allow.headers()["allow"], "GET, HEAD, OPTIONS");
}

// --- /primary and /replica --------------------------------------------------------------------

fn info(in_recovery: bool) -> DbInfo {
    DbInfo {
        in_recovery,
        current_lsn: (!in_recovery).then_some(Lsn(0x300_0000)),
        replay_lsn: in_recovery.then_some(Lsn(0x2ff_0000)),
        receive_lsn: in_recovery.then_some(Lsn(0x2ff_0000)),
        server_version_num: 150_004,
        timeline: Some(1),
        is_streaming: in_recovery,
        upstream_host: None,
    }
}

fn serving(epoch: u64) -> KernelView {
    KernelView { fenced: false, lease_enforced: true, lease_left_ms: 812, epoch, max_epoch_seen: epoch, serving: true }
}

fn peer_health(verdict: Verdict, lsn: u64) -> PeerHealth {
    PeerHealth {
        node_id: 2,
        verdict,
        since_ns: 0,
        agent_age: Some(Duration::from_millis(20)),
        node_age: Some(Duration::from_millis(21)),
        last_rtt: Some(Duration::from_micros(40)),
        rtt_p50: None,
        rtt_p99: None,
        role: efm_common::wire::ROLE_PRIMARY,
        flags: 0,
        epoch: 3,
        lsn,
        pong_flags: efm_common::wire::ROLE_PRIMARY,
        pong_epoch: 3,
    }
}

/// The committed primary of epoch 3, serving.
fn primary_view() -> View {
    View {
        cluster: "acctg".into(),
        me: addr(ME),
        role: Role::Primary,
        epoch: 3,
        committed_primary: Some(addr(ME)),
        kernel: serving(3),
        db_up: Some(true),
        in_recovery: Some(false),
        lsn: Some(0x300_0000),
        outcome: Some("primary for epoch 3".into()),
        peers: vec![(addr(PEER), Some(peer_health(Verdict::Alive, 0x200_0000)))],
        max_lag: 0,
        metrics: None,
        now_ns: 10_000_000_000,
    }
}

/// A streaming standby of epoch 3 whose primary is PEER.
fn standby_view() -> View {
    View {
        role: Role::Standby,
        committed_primary: Some(addr(PEER)),
        kernel: KernelView { lease_enforced: false, lease_left_ms: 0, ..serving(3) },
        in_recovery: Some(true),
        lsn: Some(0x2ff_0000),
        peers: vec![(addr(PEER), Some(peer_health(Verdict::Alive, 0x300_0000)))],
        outcome: Some("standby".into()),
        ..primary_view()
    }
}

fn status(view: &View, path: &str) -> u16 {
    answer(&get(path), view).status
}

#[test]
fn serving_committed_primary_is_primary_not_replica() {
    let v = primary_view();
    assert_eq!((status(&v, "/primary"), status(&v, "/master"), status(&v, "/replica")), (200, 200, 503));
    let body: serde_json::Value = serde_json::from_str(&answer(&get("/primary"), &v).body).unwrap();
    assert_eq!(body["role"], "Primary");
    assert_eq!(body["epoch"], 3);
    assert_eq!(body["serving"], true);
    assert_eq!(body["leaseLeftMs"], 812);
    assert_eq!(body["db"]["state"], "UP");
    assert_eq!(body["db"]["lsn"], "0/3000000");
    assert!(body.get("reason").is_none());
    let r: serde_json::Value = serde_json::from_str(&answer(&get("/replica"), &v).body).unwrap();
    assert_eq!(r["reason"], "database is not in recovery (not a standby)");
}

#[test]
fn primary_is_503_for_every_missing_condition() {
    type Change = Box<dyn Fn(&mut View)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "fenced",
            Box::new(|v: &mut View| v.kernel = KernelView { fenced: true, serving: false, ..v.kernel }),
            "the kernel fences this node",
        ),
        (
            "lease lapsed",
            Box::new(|v: &mut View| v.kernel = KernelView { lease_left_ms: 0, serving: false, ..v.kernel }),
            "lease has lapsed",
        ),
        (
            "higher epoch",
            Box::new(|v: &mut View| v.kernel = KernelView { max_epoch_seen: 4, serving: false, ..v.kernel }),
            "higher epoch (4)",
        ),
        (
            "another primary",
            Box::new(|v: &mut View| v.committed_primary = Some(addr(PEER))),
            "the committed primary is 198.18.0.2:7800",
        ),
        ("no primary", Box::new(|v: &mut View| v.committed_primary = None), "no committed primary"),
        ("stale kernel epoch", Box::new(|v: &mut View| v.epoch = 4), "kernel holds epoch 3, the committed epoch is 4"),
        ("database down", Box::new(|v: &mut View| v.db_up = Some(false)), "database is DOWN"),
        ("database unknown", Box::new(|v: &mut View| v.db_up = None), "database is UNKNOWN"),
        ("in recovery", Box::new(|v: &mut View| v.in_recovery = Some(true)), "in recovery"),
    ];
    for (what, change, reason) in cases {
        let mut v = primary_view();
        change(&mut v);
        let a = answer(&get("/primary"), &v);
        assert_eq!(a.status, 503, "{what}");
        assert!(a.body.contains(reason), "{what}: {}", a.body);
    }
}

/// A primary whose own checks fail while the other agents reach its database keeps serving
/// (`ha::confirm`): `/primary` stays 200 although its own view of the database is "down".
#[test]
fn a_primary_whose_own_checks_fail_but_serves_is_still_primary() {
    let idle = View {
        db_up: Some(false),
        outcome: Some(
            "primary for epoch 3, idle: its agent cannot reach its database but 198.18.0.2:7800 can (no failover; efm resume)"
                .into(),
        ),
        ..primary_view()
    };
    assert_eq!(status(&idle, "/primary"), 200);
    let fenced = View { kernel: KernelView { fenced: true, serving: false, ..idle.kernel }, ..idle.clone() };
    assert_eq!(status(&fenced, "/primary"), 503, "the kernel still decides");
}

#[test]
fn streaming_standby_is_replica_not_primary() {
    let v = standby_view();
    assert_eq!((status(&v, "/primary"), status(&v, "/replica"), status(&v, "/health")), (503, 200, 200));
    let body: serde_json::Value = serde_json::from_str(&answer(&get("/replica"), &v).body).unwrap();
    assert_eq!(body["lagBytes"], 0x1_0000);
    assert_eq!(body["db"]["inRecovery"], true);
    for (what, change) in [
        ("down", Box::new(|v: &mut View| v.db_up = Some(false)) as Box<dyn Fn(&mut View)>),
        ("fenced", Box::new(|v: &mut View| v.kernel = KernelView { fenced: true, serving: false, ..v.kernel })),
        ("not in recovery", Box::new(|v: &mut View| v.in_recovery = Some(false))),
    ] {
        let mut v = standby_view();
        change(&mut v);
        assert_eq!(status(&v, "/replica"), 503, "{what}");
    }
}

#[test]
fn replica_lag_limit_applies_only_when_set() {
    let mut v = standby_view();
    v.max_lag = 0x1_0000;
    assert_eq!(status(&v, "/replica"), 200, "lag equal to the limit is fine");
    v.max_lag = 0xffff;
    let a = answer(&get("/replica"), &v);
    assert_eq!(a.status, 503);
    assert!(a.body.contains("65536 bytes behind"), "{}", a.body);
    // The primary is not heard: the lag is unknown, which fails a configured check only.
    v.peers = vec![(addr(PEER), Some(peer_health(Verdict::NodeDead, 0x300_0000)))];
    assert_eq!(status(&v, "/replica"), 503);
    v.max_lag = 0;
    assert_eq!(status(&v, "/replica"), 200);
}

#[test]
fn unknown_paths_are_404() {
    let v = primary_view();
    assert_eq!(status(&v, "/"), 404);
    assert_eq!(status(&v, "/primary/"), 404);
    assert_eq!(status(&v, "/PRIMARY"), 404);
}

// --- Prometheus -------------------------------------------------------------------------------

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
    assert_eq!(escape_label("x\ny"), "x\\ny");
    assert_eq!(escape_label("plain"), "plain");
}

fn snapshot() -> MetricsSnapshot {
    let mut rtt = [0u64; RTT_BUCKETS];
    rtt[3] = 1; // [4, 8) ns: folded into the first bound
    rtt[15] = 90; // [16.4 µs, 32.8 µs)
    rtt[16] = 9;
    rtt[39] = 1; // capped bucket: only +Inf
    MetricsSnapshot {
        taken_ns: 9_750_000_000,
        cost: Duration::from_micros(85),
        peers: vec![PeerMetrics {
            addr: addr(PEER),
            rtt,
            pings: 180,
            pongs: 179,
            ping_arrival_ns: Some(9_980_000_000),
            pong_arrival_ns: Some(9_979_000_000),
        }],
        counters: Counter::ALL.iter().zip(1u64..).map(|(c, i)| (*c, i * 10)).collect(),
    }
}

#[test]
fn metrics_render_golden() {
    let mut v = primary_view();
    v.cluster = "ac\"ctg".into();
    v.metrics = Some(Arc::new(snapshot()));
    let text = render_metrics(&v);
    let golden = include_str!("metrics.golden");
    if std::env::var_os("EFM_BLESS").is_some() {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/health/metrics.golden"), &text).unwrap();
        return;
    }
    assert_eq!(text, golden, "regenerate with EFM_BLESS=1 after checking the difference");
}

/// Every line a comment, or `name{labels} value` with a float value; histograms cumulative and
/// ending in `+Inf` equal to `_count`; every sample's family declared by `# TYPE`.
pub fn check_exposition(text: &str) {
    let mut typed = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{line}: family not declared");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
    }
}

#[test]
fn metrics_are_valid_exposition_and_histograms_cumulative() {
    let mut v = primary_view();
    v.metrics = Some(Arc::new(snapshot()));
    let text = render_metrics(&v);
    check_exposition(&text);
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("efm_peer_rtt_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.first(), Some(&1));
    assert_eq!(buckets.last(), Some(&101));
    assert!(text.contains("efm_peer_rtt_seconds_count{peer=\"198.18.0.2:7800\"} 101\n"));
    // Without a snapshot (the first second) the families are declared with no samples.
    v.metrics = None;
    let text = render_metrics(&v);
    check_exposition(&text);
    assert!(text.contains("# TYPE efm_xdp_packets_total counter\n"));
    assert!(!text.contains("efm_xdp_packets_total{"));
}

// --- The server over a real socket ------------------------------------------------------------

/// The channels as a primary's agent would have published them. The writers are dropped: a
/// receiver keeps the last value.
fn sources() -> Arc<Sources> {
    let props = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=pg\ndb.data.dir=/d\nbind.address=198.18.0.1:7800\n";
    let cfg = crate::config::from_properties(
        props,
        Path::new("/etc/efm/acctg.properties"),
        "acctg",
        vec![addr(ME), addr(PEER)],
    )
    .unwrap()
    .config;
    let v = primary_view();
    let id = Arc::new(Identity {
        config: cfg,
        me: v.me,
        node_id: 1,
        config_dir: PathBuf::from("/etc/efm"),
        iface: "eth0".into(),
        attachment: "native".into(),
        started_unix_ms: 0,
    });
    let db = LocalDatabase {
        role: Role::Primary,
        view: DbView { up: Some(true), info: Some(info(false)), error: None, postmaster_exited: false },
    };
    let peers = vec![PeerEntry { addr: addr(PEER), node_id: 2, slot: 0, health: Some(peer_health(Verdict::Alive, 1)) }];
    let (facts, owners) = crate::node::wire(id, db, peers, 3);
    owners.runtime.status.send_replace(Status {
        epoch: 3,
        kernel: serving(3),
        committed_primary: Some(v.me),
        ..Status::default()
    });
    let (_, metrics) = tokio::sync::watch::channel(Some(Arc::new(snapshot())));
    Arc::new(Sources { facts, metrics })
}

/// A server on 127.0.0.1 with a short read timeout; returns its address and the runtime.
fn server(limits: Limits) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let l = rt.block_on(HealthListener::bind(addr("127.0.0.1:0"))).unwrap();
    let a = l.local_addr();
    let src = sources();
    rt.spawn(serve(l.listener, src, limits));
    (a, rt)
}

fn exchange(a: SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn server_answers_refuses_and_times_out() {
    let (a, _rt) = server(Limits { read_timeout: Duration::from_millis(300), max_connections: 4 });
    let ok = exchange(a, b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains("\"serving\":true"), "{ok}");
    for h in ["Content-Type: application/json\r\n", "Cache-Control: no-store\r\n", "Connection: close\r\n"] {
        assert!(ok.contains(h), "{h:?} in {ok}");
    }
    let body = ok.split_once("\r\n\r\n").unwrap().1;
    assert!(ok.contains(&format!("Content-Length: {}\r\n", body.len())), "{ok}");
    let head = exchange(a, b"HEAD /replica HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 503 ") && head.ends_with("\r\n\r\n"), "{head}");
    let options = exchange(a, b"OPTIONS /primary HTTP/1.1\r\n\r\n");
    assert!(
        options.starts_with("HTTP/1.1 200 ") && options.ends_with("}\n"),
        "OPTIONS is answered like GET: {options}"
    );
    assert!(exchange(a, b"GET /health HTTP/1.1\nX-Empty:\n\n").starts_with("HTTP/1.1 200 "), "bare LF, empty value");
    let m = exchange(a, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(m.contains("efm_xdp_packets_total{reason=\"hb_ping_accepted\"}"), "{m}");
    assert!(m.contains("Content-Type: text/plain; version=0.0.4"), "{m}");
    assert!(
        exchange(a, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").starts_with("HTTP/1.1 400 "),
        "TLS hello"
    );
    let post = exchange(a, b"POST /primary HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD, OPTIONS\r\n"), "{post}");
    assert!(exchange(a, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(exchange(a, b"GET * HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
    // Slowloris: a partial head gets 408 after the read timeout, while others are served.
    let mut slow = std::net::TcpStream::connect(a).unwrap();
    slow.write_all(b"GET /primary HTTP/1.1\r\nX-Slow:").unwrap();
    assert!(exchange(a, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    let mut out = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && out.ends_with("\r\n\r\nrequest head not received in time\n"),
        "{out}"
    );
    // Empty lines only: not a head either.
    assert!(exchange(a, b"\r\n\r\n").starts_with("HTTP/1.1 408 "));
    // A client that connects and leaves gets nothing and costs nothing.
    drop(std::net::TcpStream::connect(a).unwrap());
    // HTTP/1.0 health checkers (HAProxy's default) get an HTTP/1.0 answer.
    let old = exchange(a, b"OPTIONS /health HTTP/1.0\r\n\r\n");
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n") && old.contains("Connection: close\r\n"), "{old}");
}

#[test]
fn garbage_and_malformed_heads_are_bad_requests() {
    let (a, _rt) = server(Limits { read_timeout: Duration::from_secs(5), max_connections: 4 });
    for bad in [
        b"hello\r\n\r\n".as_slice(),
        b"GET\r\n\r\n",
        b"GET /primary\r\n\r\n",
        b"GET  /primary HTTP/1.1\r\n\r\n",
        b"GET /primary HTTP/1.1 extra\r\n\r\n",
        b"GET /primary HTTX/1.1\r\n\r\n",
        b"GET /primary HTTP/1.10\r\n\r\n",
        b"G(T /primary HTTP/1.1\r\n\r\n",
        b"GET primary HTTP/1.1\r\n\r\n",
        b"GET /pri\x01mary HTTP/1.1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"GET /primary HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /primary HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /primary HTTP/1.1\r\n: x\r\n\r\n",
        b"GET /primary HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /primary HTTP/2.0\r\n\r\n",
        b"\x00\x01garbage\xff\r\n\r\n",
    ] {
        let out = exchange(a, bad);
        assert!(out.starts_with("HTTP/1.1 400 "), "{:?}: {out:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn heads_beyond_the_limits_get_431_and_h2_is_closed() {
    let (a, _rt) = server(Limits { read_timeout: Duration::from_secs(5), max_connections: 4 });
    let many = (0..=MAX_HEADERS).fold(String::new(), |mut acc, i| {
        let _ = write!(acc, "X-{i}: y\r\n");
        acc
    });
    let out = exchange(a, format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert!(out.starts_with("HTTP/1.1 431 "), "{} headers: {out:?}", MAX_HEADERS + 1);
    let at_limit = many.split_inclusive("\r\n").skip(1).collect::<String>();
    let out = exchange(a, format!("GET /health HTTP/1.1\r\n{at_limit}\r\n").as_bytes());
    assert!(out.starts_with("HTTP/1.1 200 "), "{MAX_HEADERS} headers: {out:?}");
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
    assert!(exchange(a, long.as_bytes()).starts_with("HTTP/1.1 431 "));
    let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 3 * MAX_HEAD], b"\r\n\r\n"].concat();
    assert!(exchange(a, &big).starts_with("HTTP/1.1 431 "));
    // HTTP/2 with prior knowledge: hyper closes without an answer (it speaks HTTP/1 only).
    assert_eq!(exchange(a, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "");
    assert!(exchange(a, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "), "still serving");
}

#[test]
fn connections_beyond_the_limit_wait_instead_of_failing() {
    let (a, _rt) = server(Limits { read_timeout: Duration::from_millis(500), max_connections: 2 });
    // Two idle connections occupy both slots; a third request is served once they time out.
    let idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::Instant::now();
    assert!(exchange(a, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    assert!(t.elapsed() >= Duration::from_millis(300), "served while both slots were busy: {:?}", t.elapsed());
    drop(idle);
}

#[test]
fn a_busy_port_is_a_clear_start_up_error() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = rt.block_on(HealthListener::bind(addr("127.0.0.1:0"))).unwrap();
    let taken = first.local_addr();
    let Err(e) = rt.block_on(HealthListener::bind(taken)) else { panic!("bound {taken} twice") };
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("health.listen.address {taken}: cannot listen: ")), "{msg}");
    assert!(msg.contains("in use"), "{msg}");
}
