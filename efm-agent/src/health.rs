//! The HTTP health endpoint for load balancers and monitoring (`health.listen.address`, off by
//! default).
//!
//! | path | answer |
//! |---|---|
//! | `/primary` (alias `/master`) | 200 when this node is the committed primary of the current epoch, its kernel lets clients through ([`KernelView::serving`]: not fenced, lease valid, no higher epoch seen) and its database is up and not in recovery (or only its own checks fail while the other agents check or reach it, `ha::confirm`); else 503 |
//! | `/replica` | 200 when the local database is up and in recovery, the kernel does not cut its clients off and, with `health.replica.max.lag.bytes` set, its WAL position is within that many bytes of the primary's last heartbeat; else 503 |
//! | `/health` | 200 while the agent runs |
//! | `/metrics` | Prometheus text exposition format (version 0.0.4) |
//!
//! `/primary`, `/replica` and `/health` carry a small JSON object (role, epoch, serving, lease
//! left, database state, and for a 503 the reason) for humans with `curl`.
//!
//! The server is hyper's HTTP/1 server (no HTTP/2), **one request per connection**: every
//! answer says `Connection: close` (load balancers open a connection per check; a kept-alive
//! idle connection would only hold one of the [`MAX_CONNECTIONS`] slots). The request head is
//! limited to [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines (else 431) and must arrive within
//! [`READ_TIMEOUT`] of the accept (a deadline for the whole head, so a client dribbling bytes
//! cannot hold a connection; else 408); the answer must be taken within [`WRITE_TIMEOUT`] after
//! that. At most [`MAX_CONNECTIONS`] connections are served at once (further ones wait in the
//! listen backlog). Garbage gets 400, unknown paths 404, methods other than GET, HEAD and
//! OPTIONS 405, an HTTP/2 preface a closed connection. OPTIONS is answered like GET because
//! `HAProxy` configurations written for Patroni check with `option httpchk OPTIONS /primary`.
//! A `Host` header is not required (HTTP/1.0 health checkers send none). A request body is
//! never read.
//!
//! **Where the numbers come from.** The datapath belongs to the main loop (`&mut Datapath`), so
//! the HTTP handlers never touch the kernel: the main loop calls [`after_tick`] after each cycle,
//! which takes a [`MetricsSnapshot`] (per-peer slots and RTT histograms, the verdict counters) at
//! most once per [`SNAPSHOT_EVERY`] and publishes it on its [`Metrics`] channel (the main loop is
//! its only writer). The role, database, fence, lease state and committed primary come from the
//! agent's published [`Facts`] (the HA runtime's [`crate::node::Status`] of the last cycle, the
//! local database's view, the peers' health). A handler copies a [`View`] out of the channels
//! (`borrow()`, no lock held while rendering), so a slow client never delays the agent.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};

use efm_common::maps::{Counter, RTT_BUCKETS};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::{JoinHandle, JoinSet},
};

use crate::{
    datapath::{Datapath, DatapathError},
    detector::{PeerHealth, Verdict},
    heartbeat::monotonic_ns,
    node::{Facts, KernelView, PeerEntry, Role},
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

/// The latest [`MetricsSnapshot`] (`None` until the first one): written by the main loop only.
pub type Metrics = watch::Sender<Option<Arc<MetricsSnapshot>>>;

#[expect(
    clippy::result_large_err,
    reason = "the datapath's errors carry aya's; logged by the caller, once a second at most"
)]
/// Called by the main loop after each cycle: at most once per [`SNAPSHOT_EVERY`], reads the
/// kernel's maps for `peers` and publishes them on `metrics`.
pub fn after_tick(metrics: &Metrics, dp: &Datapath, peers: &[PeerEntry]) -> Result<(), DatapathError> {
    let now = monotonic_ns();
    let due = metrics
        .borrow()
        .as_ref()
        .is_none_or(|m| now.saturating_sub(m.taken_ns) >= u64::try_from(SNAPSHOT_EVERY.as_nanos()).unwrap_or(u64::MAX));
    if !due {
        return Ok(());
    }
    let slots: Vec<(SocketAddr, u32)> = peers.iter().map(|p| (p.addr, p.slot)).collect();
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
    metrics.send_replace(Some(Arc::new(snap)));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the answers are computed from.

/// Everything an answer needs, copied out of the agent's [`Facts`].
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
    pub fn from_facts(facts: &Facts, metrics: Option<Arc<MetricsSnapshot>>, now_ns: u64) -> Self {
        let (role, db_up, in_recovery, lsn) = {
            let d = facts.db.borrow();
            (d.role, d.view.up, d.view.info.as_ref().map(|i| i.in_recovery), d.view.lsn().map(|l| l.0))
        };
        let (epoch, committed_primary, kernel, outcome) = {
            let s = facts.status.borrow();
            (s.epoch, s.committed_primary, s.kernel, s.outcome.clone())
        };
        Self {
            cluster: facts.id.config.cluster.clone(),
            me: facts.id.me,
            role,
            epoch,
            committed_primary,
            kernel,
            db_up,
            in_recovery,
            lsn,
            outcome,
            peers: facts.peers.borrow().iter().map(|p| (p.addr, p.health)).collect(),
            max_lag: facts.id.config.health_replica_max_lag_bytes,
            metrics,
            now_ns,
        }
    }

    /// The `/primary` decision: `Ok` or why not.
    pub fn primary(&self) -> Result<(), String> {
        // A primary whose own checks fail while the other agents check or reach its database
        // serves on (ha::confirm): its view of the database says "down", its kernel serves.
        let own_checks_fail = self.outcome.as_deref().is_some_and(|o| o.contains(crate::ha::confirm::OWN_CHECKS_FAIL));
        if self.db_up != Some(true) && !own_checks_fail {
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
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
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
    if b {
        "1"
    } else {
        "0"
    }
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
        &[
            ("cluster", v.cluster.as_str()),
            ("node", v.me.to_string().as_str()),
            ("role", role.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        "1",
    );
    e.gauge("efm_epoch", "The committed epoch as the HA engine last saw it.", &v.epoch.to_string());
    e.gauge("efm_kernel_epoch", "The epoch this node's kernel holds.", &v.kernel.epoch.to_string());
    e.gauge(
        "efm_kernel_max_epoch_seen",
        "The highest epoch carried by any authenticated heartbeat.",
        &v.kernel.max_epoch_seen.to_string(),
    );
    e.gauge("efm_fenced", "1 when the agent fences this node in the kernel.", bit(v.kernel.fenced));
    e.gauge(
        "efm_lease_enforced",
        "1 when the kernel enforces the primary lease on this node.",
        bit(v.kernel.lease_enforced),
    );
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
            e.sample(
                "efm_peer_verdict",
                &[("peer", peer.as_str()), ("verdict", verdict_label(verdict))],
                bit(cur == verdict),
            );
        }
    }
    let snap = v.metrics.as_deref();
    let peers = snap.map_or(&[][..], |s| &s.peers[..]);
    let age = |at: Option<u64>| at.map(|t| float(seconds(v.now_ns.saturating_sub(t))));
    e.family(
        "efm_peer_ping_last_seen_seconds",
        "gauge",
        "Age of the last PING accepted from the peer's agent (absent before the first).",
    );
    for p in peers {
        if let Some(a) = age(p.ping_arrival_ns) {
            e.sample("efm_peer_ping_last_seen_seconds", &[("peer", p.addr.to_string().as_str())], &a);
        }
    }
    e.family(
        "efm_peer_pong_last_seen_seconds",
        "gauge",
        "Age of the last PONG accepted from the peer's kernel (absent before the first).",
    );
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
            e.sample(
                "efm_peer_rtt_seconds_bucket",
                &[("peer", peer.as_str()), ("le", float(seconds(1u64 << k)).as_str())],
                &cum.to_string(),
            );
        }
        let total: u64 = p.rtt.iter().sum();
        e.sample("efm_peer_rtt_seconds_bucket", &[("peer", peer.as_str()), ("le", "+Inf")], &total.to_string());
        e.sample("efm_peer_rtt_seconds_count", &[("peer", peer.as_str())], &total.to_string());
    }
    e.family("efm_xdp_packets_total", "counter", "Frames by the decision (reason) of efm's kernel programs — XDP ingress, and the TC egress fence for the egress_* reasons —, summed over CPUs.");
    for (c, n) in snap.map_or(&[][..], |s| &s.counters[..]) {
        e.sample("efm_xdp_packets_total", &[("reason", c.label())], &n.to_string());
    }
    e.family(
        "efm_metrics_snapshot_age_seconds",
        "gauge",
        "Age of the kernel snapshot these metrics come from (taken at most once a second).",
    );
    if let Some(s) = snap {
        e.sample("efm_metrics_snapshot_age_seconds", &[], &float(seconds(v.now_ns.saturating_sub(s.taken_ns))));
    }
    e.family(
        "efm_metrics_snapshot_duration_seconds",
        "gauge",
        "How long reading the kernel maps for the snapshot took.",
    );
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
    /// Answered like GET (`HAProxy` checks written for Patroni use it).
    Options,
}

/// A request as the answers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
}

/// Why a request hyper parsed is still refused; each maps to a status code. (Malformed heads,
/// too many or too large headers never get here: hyper answers them 400 and 431.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(&'static str),
    MethodNotAllowed,
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::MethodNotAllowed => 405,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::BadRequest(m) => m,
            Self::MethodNotAllowed => "only GET, HEAD and OPTIONS are answered",
        }
    }
}

/// The request hyper parsed, as a [`Request`]: GET, HEAD or OPTIONS on a path (origin form, or
/// absolute form, which HTTP/1.1 servers must accept; not `*` or an authority).
pub fn route(method: &hyper::Method, uri: &hyper::Uri) -> Result<Request, Refusal> {
    let method = match *method {
        hyper::Method::GET => Method::Get,
        hyper::Method::HEAD => Method::Head,
        hyper::Method::OPTIONS => Method::Options,
        _ => return Err(Refusal::MethodNotAllowed),
    };
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(Refusal::BadRequest("request target must be a path"));
    }
    Ok(Request { method, path: path.to_owned() })
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

    /// The hyper response: `Connection: close` (one request per connection), never cached, and
    /// `Allow` on a 405. hyper writes `Content-Length` and leaves the body out for HEAD.
    #[must_use]
    pub fn into_response(self) -> hyper::Response<String> {
        use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
        let status = hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = hyper::Response::new(self.body);
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == hyper::StatusCode::METHOD_NOT_ALLOWED {
            h.insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        }
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

/// The answer to a request, from `view`.
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
        "/metrics" => {
            Answer { status: 200, content_type: "text/plain; version=0.0.4; charset=utf-8", body: render_metrics(view) }
        }
        _ => Answer::text(404, "unknown path; try /primary, /replica, /health or /metrics"),
    }
}

/// The whole answer to one parsed request (the service hyper calls).
fn respond(req: &hyper::Request<hyper::body::Incoming>, src: &Sources) -> Answer {
    match route(req.method(), req.uri()) {
        Err(r) => Answer::text(r.status(), r.message()),
        Ok(req) => {
            let metrics = src.metrics.borrow().clone();
            let view = View::from_facts(&src.facts, metrics, monotonic_ns());
            answer(&req, &view)
        }
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

    /// Serves from `facts` and `metrics` until [`HealthServer::stop`].
    #[must_use]
    pub fn serve(self, facts: Facts, metrics: watch::Receiver<Option<Arc<MetricsSnapshot>>>) -> HealthServer {
        tracing::info!(address = %self.addr, "health endpoint listening");
        let task = tokio::spawn(serve(self.listener, Arc::new(Sources { facts, metrics }), Limits::default()));
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

/// What the answers are read from.
struct Sources {
    facts: Facts,
    metrics: watch::Receiver<Option<Arc<MetricsSnapshot>>>,
}

async fn serve(listener: TcpListener, src: Arc<Sources>, limits: Limits) {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    // Owned here, so aborting the server aborts its connections too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let src = src.clone();
                conns.spawn(async move {
                    connection(stream, peer, src, limits.read_timeout).await;
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

/// The answer to a client that did not send a complete head within the deadline (hyper itself
/// would close without a word).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 34\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nrequest head not received in time\n";

/// One connection, one request: hyper parses the head (at most [`MAX_HEAD`] bytes and
/// [`MAX_HEADERS`] lines, else 431; malformed, 400) and writes the answer. The head must be
/// complete within `read_timeout` of the accept (else 408), the answer written within
/// [`WRITE_TIMEOUT`] after that.
async fn connection(stream: TcpStream, peer: SocketAddr, src: Arc<Sources>, read_timeout: Duration) {
    let answered = Arc::new(AtomicU16::new(0));
    let service = {
        let answered = answered.clone();
        hyper::service::service_fn(move |req| {
            let a = respond(&req, &src);
            answered.store(a.status, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>(a.into_response()))
        })
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut deadline = tokio::time::Instant::now() + read_timeout;
    let mut head_deadline = true;
    let outcome = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r.err(),
            () = tokio::time::sleep_until(deadline) => {
                if !head_deadline {
                    tracing::debug!(%peer, "health endpoint: answer not taken in time");
                    return;
                }
                if answered.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(%peer, status = 408, "health endpoint request");
                    let mut stream = conn.into_parts().io.into_inner();
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, finish(&mut stream, REQUEST_TIMEOUT)).await;
                    return;
                }
                head_deadline = false;
                deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            }
        }
    };
    let status = answered.load(Ordering::Relaxed);
    match &outcome {
        None => tracing::debug!(%peer, status, "health endpoint request"),
        // A parse error (hyper answered 400 or 431), a client gone, an HTTP/2 preface (closed).
        Some(e) => tracing::debug!(%peer, error = %e, "health endpoint: request refused"),
    }
    let mut stream = conn.into_parts().io.into_inner();
    let _ =
        tokio::time::timeout(deadline.saturating_duration_since(tokio::time::Instant::now()), finish(&mut stream, b""))
            .await;
}

/// Writes `bytes`, shuts the sending side and reads what the client still sends (a body, a
/// pipelined request) for a moment: closing with unread data makes the kernel send a RST,
/// which can destroy the answer in flight.
async fn finish(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    let mut left = 64 * 1024usize;
    while left > 0 {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
