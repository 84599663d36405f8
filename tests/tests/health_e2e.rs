//! The health endpoint end to end: a primary and two standbys with real `PostgreSQL` 15 and real
//! agents, each with `health.listen.address` set; a client in the bed's client namespace asks
//! every node's `/primary` and `/replica` by hand-written HTTP/1.1. The answers match the roles,
//! `/metrics` is valid exposition text with the kernel's numbers in it, garbage gets 400 without
//! hurting the agent, and after the primary's postmaster is killed the answers flip: the new
//! primary says 200 on `/primary`, the old one (whose agent still runs) 503, and never do two
//! nodes say 200 on `/primary` in the same round. Needs root; run single-threaded.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use efm_tests::cluster::{Cluster, Kind};

const PSS: [Kind; 3] = [Kind::Primary, Kind::Standby, Kind::Standby];
const PORT: u16 = 8008;

/// One request from the client namespace to node `i`'s endpoint: (status, whole answer), or
/// `None` if the connection failed.
fn exchange(c: &Cluster, i: usize, request: &[u8]) -> Option<(u16, String)> {
    let to = SocketAddr::from((c.bed.nodes[i].ip, PORT));
    let request = request.to_vec();
    c.bed.nodes[c.kinds.len()].ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(&request).ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
        Some((status, text))
    })
}

fn get(c: &Cluster, i: usize, path: &str) -> Option<(u16, String)> {
    exchange(
        c,
        i,
        format!("GET {path} HTTP/1.1\r\nHost: {}:{PORT}\r\nUser-Agent: efm-test\r\n\r\n", c.bed.nodes[i].ip).as_bytes(),
    )
}

fn status(c: &Cluster, i: usize, path: &str) -> Option<u16> {
    get(c, i, path).map(|(s, _)| s)
}

/// Every node's (`/primary`, `/replica`) status.
fn round(c: &Cluster) -> Vec<(Option<u16>, Option<u16>)> {
    (0..c.kinds.len()).map(|i| (status(c, i, "/primary"), status(c, i, "/replica"))).collect()
}

/// Polls until `pred` holds for a round, asserting at most one `/primary` 200 per round.
fn wait_round(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[(Option<u16>, Option<u16>)]) -> bool,
) -> Vec<(Option<u16>, Option<u16>)> {
    let until = Instant::now() + timeout;
    loop {
        let r = round(c);
        let primaries = r.iter().filter(|(p, _)| *p == Some(200)).count();
        assert!(primaries <= 1, "two nodes answer 200 on /primary: {r:?}");
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}; last round {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the first sample whose series starts with `prefix`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Every line a comment or `name{labels} value`, every sample's family declared.
fn check_exposition(text: &str) {
    let mut families = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "bad value: {line:?}");
        let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l));
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "bad name: {line:?}");
        if !labels.is_empty() {
            assert!(labels.ends_with('}'), "bad labels: {line:?}");
            for kv in labels.trim_end_matches('}').split("\",").filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(
                    k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && v.starts_with('"'),
                    "bad label {kv:?} in {line:?}"
                );
            }
        }
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(name);
        assert!(families.contains(family), "undeclared family: {line:?}");
    }
}

#[test]
#[expect(
    clippy::many_single_char_names,
    reason = "c is the cluster, r a round, t the fault time, as in the other e2e tests"
)]
fn health_endpoint_follows_roles_and_flips_on_failover() {
    let c = Cluster::start(&PSS, &format!("health.listen.address=0.0.0.0:{PORT}\n"));

    // Initial answers: n1 is the primary, n2 and n3 are replicas.
    let r = wait_round(&c, "the initial answers", Duration::from_secs(30), |r| {
        r[0] == (Some(200), Some(503)) && r[1..].iter().all(|x| *x == (Some(503), Some(200)))
    });
    eprintln!("initial: {r:?}");
    let (_, body) = get(&c, 0, "/primary").unwrap();
    assert!(
        body.contains("Connection: close\r\n")
            && body.contains("\"role\":\"Primary\"")
            && body.contains("\"serving\":true"),
        "{body}"
    );
    let (_, body) = get(&c, 1, "/primary").unwrap();
    assert!(body.contains("\"reason\":"), "a 503 says why: {body}");
    let (s, head) = exchange(&c, 0, b"HEAD /primary HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(s, 200);
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");

    // /metrics: valid text with the kernel's numbers.
    std::thread::sleep(Duration::from_millis(1200)); // a fresh snapshot with RTTs in it
    let (s, m) = get(&c, 0, "/metrics").unwrap();
    assert_eq!(s, 200);
    assert!(m.contains("Content-Type: text/plain; version=0.0.4"), "{m}");
    let text = m.split_once("\r\n\r\n").unwrap().1;
    check_exposition(text);
    for family in [
        "efm_info",
        "efm_epoch",
        "efm_fenced",
        "efm_lease_enforced",
        "efm_lease_left_seconds",
        "efm_serving",
        "efm_peer_verdict",
        "efm_peer_ping_last_seen_seconds",
        "efm_peer_pong_last_seen_seconds",
        "efm_peer_rtt_seconds",
        "efm_xdp_packets_total",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "family {family} missing:\n{text}");
    }
    assert!(text.contains("efm_info{cluster=\"acctg\",node=\"198.18.0.1:7800\",role=\"primary\""), "{text}");
    assert_eq!(sample(text, "efm_serving"), Some(1.0));
    assert_eq!(sample(text, "efm_fenced"), Some(0.0));
    assert_eq!(sample(text, "efm_lease_enforced"), Some(1.0));
    assert!(sample(text, "efm_lease_left_seconds").is_some_and(|v| v > 0.0 && v <= 1.0), "{text}");
    assert!(sample(text, "efm_xdp_packets_total{reason=\"hb_ping_accepted\"}").is_some_and(|v| v > 0.0), "{text}");
    assert!(sample(text, "efm_xdp_packets_total{reason=\"hb_pong_sent\"}").is_some_and(|v| v > 0.0), "{text}");
    for peer in ["198.18.0.2:7800", "198.18.0.3:7800"] {
        assert!(
            sample(text, &format!("efm_peer_rtt_seconds_count{{peer=\"{peer}\"}}")).is_some_and(|v| v > 0.0),
            "RTTs of {peer}:\n{text}"
        );
        assert_eq!(
            sample(text, &format!("efm_peer_verdict{{peer=\"{peer}\",verdict=\"alive\"}}")),
            Some(1.0),
            "{text}"
        );
        let age = sample(text, &format!("efm_peer_ping_last_seen_seconds{{peer=\"{peer}\"}}")).unwrap();
        assert!((0.0..2.0).contains(&age), "PING age of {peer}: {age}");
    }
    let epoch0 = sample(text, "efm_epoch").unwrap();
    let cost = sample(text, "efm_metrics_snapshot_duration_seconds").unwrap();
    eprintln!(
        "metrics snapshot (2 peers, {} counters) took {:.1} µs; /metrics is {} bytes",
        efm_common::maps::Counter::COUNT,
        cost * 1e6,
        text.len()
    );

    // Garbage gets 400 and the agent keeps serving.
    assert_eq!(exchange(&c, 0, b"\x00\x01garbage\xff\r\n\r\n").map(|x| x.0), Some(400));
    assert_eq!(exchange(&c, 0, b"DELETE /primary HTTP/1.1\r\n\r\n").map(|x| x.0), Some(405));
    assert_eq!(status(&c, 0, "/nowhere"), Some(404));
    assert_eq!(status(&c, 0, "/health"), Some(200));
    assert_eq!(status(&c, 0, "/primary"), Some(200));

    // Failover: the primary's postmaster dies; its agent stays.
    let t = Instant::now();
    c.pg[0].as_ref().unwrap().sigkill();
    let r = wait_round(&c, "/primary to move to a standby", Duration::from_secs(30), |r| {
        r[0].0 == Some(503) && r[1..].iter().any(|x| x.0 == Some(200))
    });
    eprintln!("after {} ms: {r:?}", t.elapsed().as_millis());
    let new = 1 + r[1..].iter().position(|x| x.0 == Some(200)).unwrap();
    let other = if new == 1 { 2 } else { 1 };
    assert_eq!(r[new].1, Some(503), "the new primary is no replica");
    assert_eq!(status(&c, 0, "/health"), Some(200), "the old primary's agent still answers");
    assert_eq!(status(&c, 0, "/replica"), Some(503), "the old primary's database is down");
    let (_, body) = get(&c, 0, "/primary").unwrap();
    assert!(body.contains("\"reason\":"), "{body}");
    // The other standby follows the new primary and is a replica again.
    let r = wait_round(&c, "the other standby to be a replica of the new primary", Duration::from_secs(30), |r| {
        r[new].0 == Some(200) && r[other] == (Some(503), Some(200))
    });
    eprintln!("settled after {} ms: {r:?}", t.elapsed().as_millis());
    let (_, m) = get(&c, new, "/metrics").unwrap();
    let text = m.split_once("\r\n\r\n").unwrap().1;
    check_exposition(text);
    assert_eq!(sample(text, "efm_serving"), Some(1.0), "{text}");
    assert!(sample(text, "efm_epoch").is_some_and(|e| e > epoch0), "a new epoch after {epoch0}: {text}");
}
