//! The HTTP health endpoint for load balancers and monitoring (`health.listen.address`, off by
//! default).
//!
//! | path | answer |
//! |---|---|
//! | `/primary` (alias `/master`) | 200 when this node is the committed primary of the current epoch, its kernel lets clients through ([`KernelView::serving`]: not fenced, lease valid, no higher epoch seen) and its database is up and not in recovery; else 503 |
//! | `/replica` | 200 when the local database is up and in recovery, the kernel does not cut its clients off and, with `health.replica.max.lag.bytes` set, its WAL position is within that many bytes of the primary's last heartbeat; else 503 |
//! | `/health` | 200 while the agent runs |
//! | `/metrics` | Prometheus text exposition format (version 0.0.4) |
//!
//! `/primary`, `/replica` and `/health` carry a small JSON object (role, epoch, serving, lease
//! left, database state, and for a 503 the reason) for humans with `curl`.
//!
//! The server is a deliberately small HTTP/1.1 implementation on tokio: one request per
//! connection, every answer `Connection: close`. The request head is limited to
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines and must arrive within [`READ_TIMEOUT`] (a
//! deadline for the whole head, so a client dribbling bytes cannot hold a connection);
//! at most [`MAX_CONNECTIONS`] connections are served at once (further ones wait in the listen
//! backlog). Garbage gets 400, unknown paths 404, methods other than GET, HEAD and OPTIONS 405.
//! OPTIONS is answered like HEAD because `HAProxy` configurations written for Patroni check with
//! `option httpchk OPTIONS /primary`. A `Host` header is not required (HTTP/1.0 health checkers
//! send none). A request body is never read.
//!
//! **Where the numbers come from.** The datapath belongs to the main loop (`&mut Datapath`), so
//! the HTTP handlers never touch the kernel: the main loop calls [`after_tick`] after each cycle,
//! which takes a [`MetricsSnapshot`] (per-peer slots and RTT histograms, the verdict counters) at
//! most once per [`SNAPSHOT_EVERY`] into [`Shared::metrics`], and records the committed primary.
//! The role, database, fence and lease state come from [`Shared`] as of the last cycle (the main
//! loop updates them every `heartbeat.interval`). A handler holds the shared lock only to copy a
//! [`View`] out; rendering happens outside it, so a slow client never delays the agent.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use efm_common::maps::{Counter, RTT_BUCKETS};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::{JoinHandle, JoinSet},
};

use crate::{
    agent::{lock, KernelView, Role, Shared},
    datapath::{Datapath, DatapathError},
    detector::{PeerHealth, Verdict},
    heartbeat::monotonic_ns,
};

/// Largest request head (request line plus headers) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted; more get 431.
pub const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this time, else 408.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to write an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How often the main loop reads the kernel's counters and histograms for `/metrics`.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// The RTT histogram's finite `le` bounds are `2^k` ns for these `k` (1.024 µs … 17.2 s); lower
/// buckets are folded into the first bound, higher ones into `+Inf`.
const RTT_LE_EXPONENTS: std::ops::RangeInclusive<usize> = 10..=34;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health.listen.address {addr}: cannot listen: {source} (another process may use the port, or the address is not on this node)")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

// ---------------------------------------------------------------------------------------------
// The snapshot the main loop takes.

/// One peer as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMetrics {
    pub addr: SocketAddr,
    /// The kernel's log2 RTT histogram (see [`efm_common::maps::RTT_BUCKETS`]), summed over CPUs.
    pub rtt: [u64; RTT_BUCKETS],
    /// PINGs accepted from the peer's agent, PONGs accepted from the peer's kernel.
    pub pings: u64,
    pub pongs: u64,
    /// Arrival (`CLOCK_MONOTONIC` ns) of the last PING / PONG, if any arrived.
    pub ping_arrival_ns: Option<u64>,
    pub pong_arrival_ns: Option<u64>,
}

/// What `/metrics` shows from the kernel, taken by the main loop (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// When it was taken (`CLOCK_MONOTONIC` ns).
    pub taken_ns: u64,
    /// How long reading the maps took.
    pub cost: Duration,
    pub peers: Vec<PeerMetrics>,
    /// Every [`Counter`], summed over CPUs, in [`Counter::ALL`] order.
    pub counters: Vec<(Counter, u64)>,
}

#[expect(clippy::result_large_err, reason = "the datapath's errors carry aya's; logged by the caller, once a second at most")]
/// Called by the main loop after each cycle: records the committed primary and, at most once
/// per [`SNAPSHOT_EVERY`], reads the kernel's maps into [`Shared::metrics`].
pub fn after_tick(
    shared: &Arc<Mutex<Shared>>,
    dp: &Datapath,
    committed_primary: Option<SocketAddr>,
) -> Result<(), DatapathError> {
    let now = monotonic_ns();
    let (due, slots) = {
        let mut s = lock(shared);
        s.committed_primary = committed_primary;
        let due = s
            .metrics
            .as_ref()
            .is_none_or(|m| now.saturating_sub(m.taken_ns) >= u64::try_from(SNAPSHOT_EVERY.as_nanos()).unwrap_or(u64::MAX));
        (due, s.peers.iter().map(|p| (p.addr, p.slot)).collect::<Vec<_>>())
    };
    if !due {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut peers = Vec::with_capacity(slots.len());
    for (addr, slot) in slots {
        let s = dp.slot(slot)?;
        let rtt = dp.rtt_histogram(slot)?;
        peers.push(PeerMetrics {
            addr,
            rtt,
            pings: s.pings,
            pongs: s.pongs,
            ping_arrival_ns: (s.pings > 0).then_some(s.ping_arrival_ns),
            pong_arrival_ns: (s.pongs > 0).then_some(s.pong_arrival_ns),
        });
    }
    let c = dp.counters()?;
    let counters = Counter::ALL.iter().map(|&k| (k, c.get(k))).collect();
    let snap = MetricsSnapshot { taken_ns: monotonic_ns(), cost: started.elapsed(), peers, counters };
    tracing::trace!(cost_us = snap.cost.as_micros(), "metrics snapshot");
    lock(shared).metrics = Some(Arc::new(snap));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the answers are computed from.

/// Everything an answer needs, copied out of [`Shared`] under its lock.
#[derive(Clone, Debug)]
pub struct View {
    pub cluster: String,
    pub me: SocketAddr,
    pub role: Role,
    /// The committed epoch as the HA engine last saw it.
    pub epoch: u64,
    pub committed_primary: Option<SocketAddr>,
    pub kernel: KernelView,
    pub db_up: Option<bool>,
    pub in_recovery: Option<bool>,
    /// Current LSN on a primary, replayed LSN on a standby.
    pub lsn: Option<u64>,
    pub outcome: Option<String>,
    pub peers: Vec<(SocketAddr, Option<PeerHealth>)>,
    /// `health.replica.max.lag.bytes` (0: no check).
    pub max_lag: u64,
    pub metrics: Option<Arc<MetricsSnapshot>>,
    /// `CLOCK_MONOTONIC` ns when the view was taken.
    pub now_ns: u64,
}

impl View {
    #[must_use]
    pub fn from_shared(s: &Shared, now_ns: u64) -> Self {
        Self {
            cluster: s.config.cluster.clone(),
            me: s.me,
            role: s.role,
            epoch: s.epoch,
            committed_primary: s.committed_primary,
            kernel: s.kernel,
            db_up: s.db.up,
            in_recovery: s.db.info.as_ref().map(|i| i.in_recovery),
            lsn: s.db.lsn().map(|l| l.0),
            outcome: s.outcome.clone(),
            peers: s.peers.iter().map(|p| (p.addr, p.health)).collect(),
            max_lag: s.config.health_replica_max_lag_bytes,
            metrics: s.metrics.clone(),
            now_ns,
        }
    }

    /// The `/primary` decision: `Ok` or why not.
    pub fn primary(&self) -> Result<(), String> {
        if self.db_up != Some(true) {
            return Err(format!("database is {}", db_state(self.db_up)));
        }
        if self.in_recovery != Some(false) {
            return Err("database is in recovery (a standby)".into());
        }
        if self.committed_primary != Some(self.me) {
            return Err(match self.committed_primary {
                Some(p) => format!("the committed primary is {p}"),
                None => "no committed primary".into(),
            });
        }
        if self.kernel.epoch != self.epoch {
            return Err(format!("the kernel holds epoch {}, the committed epoch is {}", self.kernel.epoch, self.epoch));
        }
        if !self.kernel.serving {
            return Err(self.not_serving());
        }
        Ok(())
    }

    /// The `/replica` decision: `Ok` or why not.
    pub fn replica(&self) -> Result<(), String> {
        if self.db_up != Some(true) {
            return Err(format!("database is {}", db_state(self.db_up)));
        }
        if self.in_recovery != Some(true) {
            return Err("database is not in recovery (not a standby)".into());
        }
        if !self.kernel.serving {
            return Err(self.not_serving());
        }
        if let Some(lag) = self.lag_limit_exceeded()? {
            return Err(format!("{lag} bytes behind the primary (health.replica.max.lag.bytes={})", self.max_lag));
        }
        Ok(())
    }

    /// Bytes this standby is behind the committed primary's last heartbeat, when known.
    #[must_use]
    pub fn lag_bytes(&self) -> Option<u64> {
        let p = self.committed_primary?;
        let primary_lsn = self
            .peers
            .iter()
            .find(|(a, _)| *a == p)
            .and_then(|(_, h)| h.filter(|h| h.verdict == Verdict::Alive && h.lsn != 0))?
            .lsn;
        Some(primary_lsn.saturating_sub(self.lsn?))
    }

    /// `Ok(Some(lag))` when the check is on and the lag exceeds it; an error when it is on and the
    /// lag is unknown (a standby that cannot hear its primary may be arbitrarily stale).
    fn lag_limit_exceeded(&self) -> Result<Option<u64>, String> {
        if self.max_lag == 0 {
            return Ok(None);
        }
        let lag = self.lag_bytes().ok_or_else(|| {
            "replication lag unknown (no live primary heard, or no WAL position) and health.replica.max.lag.bytes is set".to_owned()
        })?;
        Ok((lag > self.max_lag).then_some(lag))
    }

    fn not_serving(&self) -> String {
        let k = &self.kernel;
        if k.fenced {
            "the kernel fences this node".into()
        } else if k.max_epoch_seen > k.epoch {
            format!("a higher epoch ({}) was seen", k.max_epoch_seen)
        } else if k.lease_enforced {
            "the primary lease has lapsed".into()
        } else {
            "the kernel does not pass client traffic".into()
        }
    }

    /// The JSON body of `/primary`, `/replica` and `/health`.
    #[must_use]
    pub fn status_json(&self, check: &Result<(), String>) -> String {
        let mut v = json!({
            "cluster": self.cluster,
            "node": self.me.to_string(),
            "role": self.role.to_string(),
            "epoch": self.epoch,
            "committedPrimary": self.committed_primary.map(|p| p.to_string()),
            "serving": self.kernel.serving,
            "fenced": self.kernel.fenced,
            "leaseEnforced": self.kernel.lease_enforced,
            "leaseLeftMs": self.kernel.lease_left_ms,
            "db": {
                "state": db_state(self.db_up),
                "inRecovery": self.in_recovery,
                "lsn": self.lsn.map(|l| crate::postgres::Lsn(l).to_string()),
            },
            "outcome": self.outcome,
        });
        if self.in_recovery == Some(true) {
            v["lagBytes"] = json!(self.lag_bytes());
        }
        if let Err(reason) = check {
            v["reason"] = json!(reason);
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

fn db_state(up: Option<bool>) -> &'static str {
    match up {
        Some(true) => "UP",
        Some(false) => "DOWN",
        None => "UNKNOWN",
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition format.

/// A label value with `\`, `"` and newlines escaped.
#[must_use]
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "metric values are floats by definition; ns fit easily")]
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A float as Prometheus expects it (`+Inf`, `NaN`, else Rust's shortest round-trip form).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: &str) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn bit(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Unknown => "unknown",
        Verdict::Alive => "alive",
        Verdict::AgentDead => "agent_dead",
        Verdict::NodeDead => "node_dead",
    }
}

/// `/metrics`. Kernel counters and histograms come from the snapshot; without one (the first
/// second) those families are present with no samples.
#[must_use]
pub fn render_metrics(v: &View) -> String {
    let mut e = Exposition(String::with_capacity(8 * 1024));
    let role = v.role.to_string().to_lowercase();
    e.family("efm_info", "gauge", "The agent: cluster, node (bind.address), role and version; always 1.");
    e.sample(
        "efm_info",
        &[("cluster", v.cluster.as_str()), ("node", v.me.to_string().as_str()), ("role", role.as_str()), ("version", env!("CARGO_PKG_VERSION"))],
        "1",
    );
    e.gauge("efm_epoch", "The committed epoch as the HA engine last saw it.", &v.epoch.to_string());
    e.gauge("efm_kernel_epoch", "The epoch this node's kernel holds.", &v.kernel.epoch.to_string());
    e.gauge("efm_kernel_max_epoch_seen", "The highest epoch carried by any authenticated heartbeat.", &v.kernel.max_epoch_seen.to_string());
    e.gauge("efm_fenced", "1 when the agent fences this node in the kernel.", bit(v.kernel.fenced));
    e.gauge("efm_lease_enforced", "1 when the kernel enforces the primary lease on this node.", bit(v.kernel.lease_enforced));
    e.gauge(
        "efm_lease_left_seconds",
        "Time left on the enforced primary lease (0 when not enforced or lapsed).",
        &float(seconds(v.kernel.lease_left_ms * 1_000_000)),
    );
    e.gauge("efm_serving", "1 when the kernel passes client traffic to the database port.", bit(v.kernel.serving));
    e.gauge("efm_database_up", "1 when the last check of the local database succeeded.", bit(v.db_up == Some(true)));
    e.family("efm_database_in_recovery", "gauge", "1 when the local database is a standby (absent while unknown).");
    if let Some(r) = v.in_recovery {
        e.sample("efm_database_in_recovery", &[], bit(r));
    }
    e.gauge("efm_health_primary", "1 when /primary answers 200.", bit(v.primary().is_ok()));
    e.gauge("efm_health_replica", "1 when /replica answers 200.", bit(v.replica().is_ok()));

    e.family("efm_peer_verdict", "gauge", "The failure detector's verdict per peer: 1 for the current one.");
    for (addr, h) in &v.peers {
        let peer = addr.to_string();
        let cur = h.map_or(Verdict::Unknown, |h| h.verdict);
        for verdict in [Verdict::Unknown, Verdict::Alive, Verdict::AgentDead, Verdict::NodeDead] {
            e.sample("efm_peer_verdict", &[("peer", peer.as_str()), ("verdict", verdict_label(verdict))], bit(cur == verdict));
        }
    }
    let snap = v.metrics.as_deref();
    let peers = snap.map_or(&[][..], |s| &s.peers[..]);
    let age = |at: Option<u64>| at.map(|t| float(seconds(v.now_ns.saturating_sub(t))));
    e.family("efm_peer_ping_last_seen_seconds", "gauge", "Age of the last PING accepted from the peer's agent (absent before the first).");
    for p in peers {
        if let Some(a) = age(p.ping_arrival_ns) {
            e.sample("efm_peer_ping_last_seen_seconds", &[("peer", p.addr.to_string().as_str())], &a);
        }
    }
    e.family("efm_peer_pong_last_seen_seconds", "gauge", "Age of the last PONG accepted from the peer's kernel (absent before the first).");
    for p in peers {
        if let Some(a) = age(p.pong_arrival_ns) {
            e.sample("efm_peer_pong_last_seen_seconds", &[("peer", p.addr.to_string().as_str())], &a);
        }
    }
    e.family("efm_peer_pings_total", "counter", "PINGs accepted from the peer's agent.");
    for p in peers {
        e.sample("efm_peer_pings_total", &[("peer", p.addr.to_string().as_str())], &p.pings.to_string());
    }
    e.family("efm_peer_pongs_total", "counter", "PONGs accepted from the peer's kernel.");
    for p in peers {
        e.sample("efm_peer_pongs_total", &[("peer", p.addr.to_string().as_str())], &p.pongs.to_string());
    }
    e.family(
        "efm_peer_rtt_seconds",
        "histogram",
        "Heartbeat round-trip time per peer, from the kernel's log2 histogram (bucket bounds 2^k ns; no _sum: the kernel keeps counts only).",
    );
    for p in peers {
        let peer = p.addr.to_string();
        let mut cum = 0u64;
        let mut next = 0usize;
        for k in RTT_LE_EXPONENTS {
            // Bucket b holds [2^(b-1), 2^b) ns: every bucket up to k is at most 2^k ns.
            while next <= k {
                cum += p.rtt[next];
                next += 1;
            }
            e.sample("efm_peer_rtt_seconds_bucket", &[("peer", peer.as_str()), ("le", float(seconds(1u64 << k)).as_str())], &cum.to_string());
        }
        let total: u64 = p.rtt.iter().sum();
        e.sample("efm_peer_rtt_seconds_bucket", &[("peer", peer.as_str()), ("le", "+Inf")], &total.to_string());
        e.sample("efm_peer_rtt_seconds_count", &[("peer", peer.as_str())], &total.to_string());
    }
    e.family("efm_xdp_packets_total", "counter", "Frames by the decision (reason) of efm's kernel programs — XDP ingress, and the TC egress fence for the egress_* reasons —, summed over CPUs.");
    for (c, n) in snap.map_or(&[][..], |s| &s.counters[..]) {
        e.sample("efm_xdp_packets_total", &[("reason", c.label())], &n.to_string());
    }
    e.family("efm_metrics_snapshot_age_seconds", "gauge", "Age of the kernel snapshot these metrics come from (taken at most once a second).");
    if let Some(s) = snap {
        e.sample("efm_metrics_snapshot_age_seconds", &[], &float(seconds(v.now_ns.saturating_sub(s.taken_ns))));
    }
    e.family("efm_metrics_snapshot_duration_seconds", "gauge", "How long reading the kernel maps for the snapshot took.");
    if let Some(s) = snap {
        let cost = u64::try_from(s.cost.as_nanos()).unwrap_or(u64::MAX);
        e.sample("efm_metrics_snapshot_duration_seconds", &[], &float(seconds(cost)));
    }
    e.0
}

// ---------------------------------------------------------------------------------------------
// HTTP.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Answered like HEAD (`HAProxy` checks written for Patroni use it).
    Options,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
}

/// Why a request head was refused; each maps to a status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(&'static str),
    MethodNotAllowed,
    HeadTooLarge,
    VersionNotSupported,
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::HeadTooLarge => 431,
            Self::VersionNotSupported => 505,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::BadRequest(m) => m,
            Self::MethodNotAllowed => "only GET, HEAD and OPTIONS are answered",
            Self::HeadTooLarge => "request head too large",
            Self::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are spoken",
        }
    }
}

/// Where the head ends (the index after the blank line), accepting CRLF or bare LF line ends.
#[must_use]
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a complete request head (through the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    if head.len() > MAX_HEAD {
        return Err(Refusal::HeadTooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(Refusal::BadRequest("malformed method"));
    }
    let Some(v) = version.strip_prefix("HTTP/") else {
        return Err(Refusal::BadRequest("malformed HTTP version"));
    };
    let vb = v.as_bytes();
    if vb.len() != 3 || !vb[0].is_ascii_digit() || vb[1] != b'.' || !vb[2].is_ascii_digit() {
        return Err(Refusal::BadRequest("malformed HTTP version"));
    }
    if vb[0] != b'1' {
        return Err(Refusal::VersionNotSupported);
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return Err(Refusal::BadRequest("malformed request target"));
    }
    // Origin form (`/path?query`), or absolute form (`http://host/path`), which HTTP/1.1 servers
    // must accept.
    let origin = if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        target
    };
    if !origin.starts_with('/') {
        return Err(Refusal::BadRequest("request target must be a path"));
    }
    let path = origin.split(['?', '#']).next().unwrap_or("/").to_owned();
    let mut headers = 0;
    for l in lines {
        if l.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(Refusal::HeadTooLarge);
        }
        let Some((name, _value)) = l.split_once(':') else {
            return Err(Refusal::BadRequest("header line without a colon"));
        };
        // No whitespace before the colon, no obsolete line folding (RFC 9112 §5).
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(Refusal::BadRequest("malformed header name"));
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        _ => return Err(Refusal::MethodNotAllowed),
    };
    Ok(Request { method, path })
}

/// A complete answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: u16, msg: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: format!("{msg}\n") }
    }

    fn json(status: u16, body: String) -> Self {
        Self { status, content_type: "application/json", body }
    }

    /// The bytes on the wire; HEAD and OPTIONS get the head only (with the body's length).
    #[must_use]
    pub fn to_bytes(&self, with_body: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Unknown",
        };
        let allow = if self.status == 405 { "Allow: GET, HEAD, OPTIONS\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a parsed request, from `view`.
#[must_use]
pub fn answer(req: &Request, view: &View) -> Answer {
    let status = |r: &Result<(), String>| if r.is_ok() { 200 } else { 503 };
    match req.path.as_str() {
        "/primary" | "/master" => {
            let r = view.primary();
            Answer::json(status(&r), view.status_json(&r))
        }
        "/replica" => {
            let r = view.replica();
            Answer::json(status(&r), view.status_json(&r))
        }
        "/health" => Answer::json(200, view.status_json(&Ok(()))),
        "/metrics" => Answer { status: 200, content_type: "text/plain; version=0.0.4; charset=utf-8", body: render_metrics(view) },
        _ => Answer::text(404, "unknown path; try /primary, /replica, /health or /metrics"),
    }
}

/// The bound listening socket, before it serves: binding happens early in start-up so a busy
/// port stops the agent before it touches the kernel.
pub struct HealthListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HealthListener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, HealthError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| HealthError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Self { listener, addr })
    }

    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves from `shared` until [`HealthServer::stop`].
    #[must_use]
    pub fn serve(self, shared: Arc<Mutex<Shared>>) -> HealthServer {
        tracing::info!(address = %self.addr, "health endpoint listening");
        let task = tokio::spawn(serve(self.listener, shared, Limits::default()));
        HealthServer { addr: self.addr, task }
    }
}

/// The running listener; [`HealthServer::stop`] ends it and every connection it serves.
pub struct HealthServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// The server's limits ([`READ_TIMEOUT`], [`MAX_CONNECTIONS`]; tests shorten them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    read_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { read_timeout: READ_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>, limits: Limits) {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    // Owned here, so aborting the server aborts its connections too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                conns.spawn(async move {
                    connection(stream, peer, &shared, limits.read_timeout).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: do not spin.
                tracing::warn!(error = %e, "health endpoint: accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the head within [`READ_TIMEOUT`]: `Ok(Some(len))` when complete, `Ok(None)` when the
/// client closed before sending anything.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> Result<Option<usize>, Answer> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(Answer::text(408, "request head not received in time")),
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(Answer::text(400, "incomplete request head")) };
        }
        // Look for the end from a little before the new bytes (the blank line may straddle).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            if end > MAX_HEAD {
                return Err(Answer::text(431, Refusal::HeadTooLarge.message()));
            }
            return Ok(Some(end));
        }
        if buf.len() > MAX_HEAD {
            return Err(Answer::text(431, Refusal::HeadTooLarge.message()));
        }
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, shared: &Arc<Mutex<Shared>>, read_timeout: Duration) {
    let mut buf = Vec::with_capacity(1024);
    let (answer, with_body) = match read_head(&mut stream, &mut buf, read_timeout).await {
        Ok(None) => return,
        Err(a) => (a, true),
        Ok(Some(end)) => match parse_head(&buf[..end]) {
            Err(r) => (Answer::text(r.status(), r.message()), true),
            Ok(req) => {
                let view = View::from_shared(&lock(shared), monotonic_ns());
                (answer(&req, &view), req.method == Method::Get)
            }
        },
    };
    tracing::debug!(%peer, status = answer.status, "health endpoint request");
    let bytes = answer.to_bytes(with_body);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client still sends (a body, a pipelined request) for a moment: closing
        // with unread data makes the kernel send a RST, which can destroy the answer in flight.
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests;
