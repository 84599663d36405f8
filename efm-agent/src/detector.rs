//! Failure detection from the kernel's heartbeat slots.
//!
//! Pure logic with the clock injected: the runtime reads each peer's slot and RTT histogram from
//! the XDP maps every tick and feeds them here with the current `CLOCK_MONOTONIC` time (the clock
//! the kernel stamped the slots with).
//!
//! Per peer:
//! - **agent alive**: a PING from its agent arrived within `node.timeout`;
//! - **node alive**: a PONG from its kernel (answering our agent's PING) arrived within
//!   `node.timeout` — the node is up even if its agent is not;
//! - verdict: [`Verdict::Alive`] if the agent is alive, else [`Verdict::AgentDead`] if the node
//!   is, else [`Verdict::NodeDead`]. Before a peer has been heard from and until `node.timeout`
//!   has passed since start, [`Verdict::Unknown`].
//!
//! So a verdict changes `node.timeout` after the last heartbeat that supported the old one,
//! plus at most one tick of the caller.
//!
//! RTT percentiles come from the kernel's log2 histograms: the detector keeps one snapshot per
//! second and reports percentiles over the difference between now and the oldest snapshot in
//! the window (default 60 s), as the upper bound of the bucket holding the percentile.

use std::{collections::BTreeMap, collections::VecDeque, fmt, time::Duration};

use efm_common::{
    maps::{PeerSlot, RTT_BUCKETS},
    wire::{FLAG_FENCED, FLAG_LEASE_LAPSED, ROLE_MASK},
};

/// Detector settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How long without a heartbeat before a verdict changes.
    pub node_timeout: Duration,
    /// Window of the RTT percentiles.
    pub rtt_window: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { node_timeout: Duration::from_millis(500), rtt_window: Duration::from_mins(1) }
    }
}

/// What the detector believes about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Not heard from yet, and still within the start-up grace period.
    Unknown,
    /// Its agent's PINGs arrive.
    Alive,
    /// Its agent is silent but its kernel answers our PINGs.
    AgentDead,
    /// Neither its agent nor its kernel is heard.
    NodeDead,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Alive => "alive",
            Self::AgentDead => "agent dead, node alive",
            Self::NodeDead => "node dead",
        })
    }
}

/// A verdict that changed in this observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictChange {
    pub node_id: u32,
    pub from: Verdict,
    pub to: Verdict,
    /// `CLOCK_MONOTONIC` ns of the observation that changed it.
    pub at_ns: u64,
}

/// Everything the detector reports about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    pub node_id: u32,
    pub verdict: Verdict,
    /// When the verdict last changed (`CLOCK_MONOTONIC` ns).
    pub since_ns: u64,
    /// Time since the last PING from the peer's agent.
    pub agent_age: Option<Duration>,
    /// Time since the last PONG from the peer's kernel.
    pub node_age: Option<Duration>,
    /// Round-trip time of the last PONG.
    pub last_rtt: Option<Duration>,
    pub rtt_p50: Option<Duration>,
    pub rtt_p99: Option<Duration>,
    /// Role bits from the peer's last PING (see `efm_common::wire`).
    pub role: u16,
    pub flags: u16,
    pub epoch: u64,
    pub lsn: u64,
    /// Flags (role, `FLAG_FENCED`, `FLAG_LEASE_LAPSED`) and epoch of the last PONG from the
    /// peer's kernel: what its kernel holds, whether its agent runs or not.
    pub pong_flags: u16,
    pub pong_epoch: u64,
}

impl PeerHealth {
    /// The peer says its node is fenced or its lease lapsed.
    #[must_use]
    pub fn cut_off(&self) -> bool {
        self.flags & (FLAG_FENCED | FLAG_LEASE_LAPSED) != 0
    }
}

#[derive(Clone, Debug)]
struct PeerState {
    health: PeerHealth,
    /// (time, cumulative histogram) once per second, oldest first.
    snapshots: VecDeque<(u64, [u64; RTT_BUCKETS])>,
}

/// The per-peer failure detector.
#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    started_ns: u64,
    peers: BTreeMap<u32, PeerState>,
}

const SNAPSHOT_EVERY_NS: u64 = 1_000_000_000;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Detector {
    /// A detector for `peers` (node ids), started at `now_ns`.
    pub fn new(cfg: DetectorConfig, now_ns: u64, peers: impl IntoIterator<Item = u32>) -> Self {
        let peers = peers
            .into_iter()
            .map(|node_id| {
                let health = PeerHealth {
                    node_id,
                    verdict: Verdict::Unknown,
                    since_ns: now_ns,
                    agent_age: None,
                    node_age: None,
                    last_rtt: None,
                    rtt_p50: None,
                    rtt_p99: None,
                    role: 0,
                    flags: 0,
                    epoch: 0,
                    lsn: 0,
                    pong_flags: 0,
                    pong_epoch: 0,
                };
                (node_id, PeerState { health, snapshots: VecDeque::new() })
            })
            .collect();
        Self { cfg, started_ns: now_ns, peers }
    }

    #[must_use]
    pub fn config(&self) -> DetectorConfig {
        self.cfg
    }

    /// Feeds one peer's slot and cumulative RTT histogram as read from the kernel at `now_ns`.
    /// Returns the verdict change, if any. Unknown node ids are ignored.
    pub fn observe(
        &mut self,
        now_ns: u64,
        node_id: u32,
        slot: &PeerSlot,
        hist: &[u64; RTT_BUCKETS],
    ) -> Option<VerdictChange> {
        let timeout = ns(self.cfg.node_timeout);
        let window = ns(self.cfg.rtt_window);
        let started = self.started_ns;
        let st = self.peers.get_mut(&node_id)?;
        let age = |count: u64, at: u64| (count > 0).then(|| Duration::from_nanos(now_ns.saturating_sub(at)));
        let agent_age = age(slot.pings, slot.ping_arrival_ns);
        let node_age = age(slot.pongs, slot.pong_arrival_ns);
        let fresh = |a: Option<Duration>| a.is_some_and(|a| ns(a) <= timeout);
        let verdict = if fresh(agent_age) {
            Verdict::Alive
        } else if fresh(node_age) {
            Verdict::AgentDead
        } else if now_ns.saturating_sub(started) < timeout && agent_age.is_none() && node_age.is_none() {
            Verdict::Unknown
        } else {
            Verdict::NodeDead
        };

        // RTT window.
        if st.snapshots.back().is_none_or(|(t, _)| now_ns.saturating_sub(*t) >= SNAPSHOT_EVERY_NS) {
            st.snapshots.push_back((now_ns, *hist));
        }
        while st.snapshots.len() > 1 && st.snapshots.front().is_some_and(|(t, _)| now_ns.saturating_sub(*t) > window) {
            st.snapshots.pop_front();
        }
        let base = st.snapshots.front().map_or([0; RTT_BUCKETS], |(_, h)| *h);
        let mut delta = [0u64; RTT_BUCKETS];
        for (d, (now, old)) in delta.iter_mut().zip(hist.iter().zip(base.iter())) {
            *d = now.saturating_sub(*old);
        }
        // Right after start (one snapshot equal to the current histogram) use the whole histogram.
        if delta.iter().all(|&c| c == 0) {
            delta = *hist;
        }

        let h = &mut st.health;
        h.agent_age = agent_age;
        h.node_age = node_age;
        h.last_rtt = (slot.pongs > 0).then(|| Duration::from_nanos(slot.pong_rtt_ns));
        h.rtt_p50 = percentile(&delta, 50);
        h.rtt_p99 = percentile(&delta, 99);
        if slot.pings > 0 {
            h.role = u16::try_from(slot.ping_flags).unwrap_or(0) & ROLE_MASK;
            h.flags = u16::try_from(slot.ping_flags).unwrap_or(0);
            h.epoch = slot.ping_epoch;
            h.lsn = slot.ping_lsn;
        }
        if slot.pongs > 0 {
            h.pong_flags = u16::try_from(slot.pong_flags).unwrap_or(0);
            h.pong_epoch = slot.pong_epoch;
        }
        if verdict == h.verdict {
            return None;
        }
        let change = VerdictChange { node_id, from: h.verdict, to: verdict, at_ns: now_ns };
        h.verdict = verdict;
        h.since_ns = now_ns;
        Some(change)
    }

    #[must_use]
    pub fn peer(&self, node_id: u32) -> Option<PeerHealth> {
        self.peers.get(&node_id).map(|p| p.health)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerHealth> {
        self.peers.values().map(|p| &p.health)
    }
}

/// The `pct`-th percentile of a log2 histogram, as the upper bound of its bucket.
#[must_use]
pub fn percentile(hist: &[u64; RTT_BUCKETS], pct: u64) -> Option<Duration> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    // Smallest bucket whose cumulative count reaches ceil(total * pct / 100).
    let rank = (total * pct).div_ceil(100).max(1);
    let mut seen = 0;
    for (b, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            // Bucket b holds [2^(b-1), 2^b) ns; bucket 0 holds 0 ns.
            return Some(Duration::from_nanos(if b == 0 { 0 } else { 1u64 << b.min(63) }));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg() -> DetectorConfig {
        DetectorConfig { node_timeout: Duration::from_millis(500), rtt_window: Duration::from_mins(1) }
    }

    #[expect(clippy::similar_names, reason = "ping/pong pairs")]
    fn slot(pings: u64, ping_arrival: u64, pongs: u64, pong_arrival: u64) -> PeerSlot {
        PeerSlot {
            pings,
            ping_arrival_ns: ping_arrival,
            ping_flags: u32::from(efm_common::wire::ROLE_STANDBY),
            ping_epoch: 4,
            ping_lsn: 0x1_0000_0060,
            pongs,
            pong_arrival_ns: pong_arrival,
            pong_rtt_ns: 40_000,
            ..PeerSlot::default()
        }
    }

    const NO_HIST: [u64; RTT_BUCKETS] = [0; RTT_BUCKETS];

    #[test]
    fn silent_peer_is_unknown_during_grace_then_node_dead() {
        let t0 = 1_000 * MS;
        let mut d = Detector::new(cfg(), t0, [2]);
        assert_eq!(d.observe(t0 + 100 * MS, 2, &PeerSlot::default(), &NO_HIST), None);
        assert_eq!(d.peer(2).unwrap().verdict, Verdict::Unknown);
        let c = d.observe(t0 + 501 * MS, 2, &PeerSlot::default(), &NO_HIST).unwrap();
        assert_eq!((c.from, c.to), (Verdict::Unknown, Verdict::NodeDead));
    }

    #[test]
    fn fresh_pings_mean_alive() {
        let t0 = 1_000 * MS;
        let mut d = Detector::new(cfg(), t0, [2]);
        let c = d.observe(t0 + 60 * MS, 2, &slot(3, t0 + 50 * MS, 3, t0 + 55 * MS), &NO_HIST).unwrap();
        assert_eq!(c.to, Verdict::Alive);
        let h = d.peer(2).unwrap();
        assert_eq!(h.agent_age, Some(Duration::from_millis(10)));
        assert_eq!(h.node_age, Some(Duration::from_millis(5)));
        assert_eq!(h.role, efm_common::wire::ROLE_STANDBY);
        assert_eq!((h.epoch, h.lsn), (4, 0x1_0000_0060));
        assert_eq!(h.last_rtt, Some(Duration::from_micros(40)));
    }

    #[test]
    fn dead_agent_on_live_node_is_agent_dead_after_node_timeout() {
        let t0 = 1_000 * MS;
        let mut d = Detector::new(cfg(), t0, [2]);
        let last_ping = t0 + 100 * MS;
        d.observe(t0 + 110 * MS, 2, &slot(10, last_ping, 10, t0 + 105 * MS), &NO_HIST);
        // The agent stops; its kernel keeps answering our PINGs.
        let s = |now: u64| slot(10, last_ping, 20, now - 5 * MS);
        assert_eq!(
            d.observe(last_ping + 500 * MS, 2, &s(last_ping + 500 * MS), &NO_HIST),
            None,
            "not before node.timeout"
        );
        let c = d.observe(last_ping + 550 * MS, 2, &s(last_ping + 550 * MS), &NO_HIST).unwrap();
        assert_eq!((c.from, c.to), (Verdict::Alive, Verdict::AgentDead));
        assert_eq!(c.to.to_string(), "agent dead, node alive");
    }

    #[test]
    fn silent_node_is_node_dead_and_comes_back() {
        let t0 = 1_000 * MS;
        let mut d = Detector::new(cfg(), t0, [2]);
        d.observe(t0 + 10 * MS, 2, &slot(1, t0 + 5 * MS, 1, t0 + 6 * MS), &NO_HIST);
        let c = d.observe(t0 + 600 * MS, 2, &slot(1, t0 + 5 * MS, 1, t0 + 6 * MS), &NO_HIST).unwrap();
        assert_eq!(c.to, Verdict::NodeDead);
        let c = d.observe(t0 + 700 * MS, 2, &slot(2, t0 + 690 * MS, 1, t0 + 6 * MS), &NO_HIST).unwrap();
        assert_eq!((c.from, c.to), (Verdict::NodeDead, Verdict::Alive));
        assert_eq!(d.peer(2).unwrap().since_ns, t0 + 700 * MS);
    }

    #[test]
    fn unknown_peer_ids_are_ignored() {
        let mut d = Detector::new(cfg(), 0, [2]);
        assert_eq!(d.observe(10, 9, &slot(1, 5, 0, 0), &NO_HIST), None);
        assert!(d.peer(9).is_none());
    }

    #[test]
    fn percentiles_use_bucket_upper_bounds() {
        let mut h = [0u64; RTT_BUCKETS];
        h[15] = 98; // [16.4 µs, 32.8 µs)
        h[20] = 2; // [0.5 ms, 1 ms)
        assert_eq!(percentile(&h, 50), Some(Duration::from_nanos(1 << 15)));
        assert_eq!(percentile(&h, 99), Some(Duration::from_nanos(1 << 20)));
        assert_eq!(percentile(&[0; RTT_BUCKETS], 50), None);
    }

    #[test]
    fn rtt_percentiles_cover_the_window_only() {
        let t0 = 1_000 * MS;
        let mut d = Detector::new(
            DetectorConfig { node_timeout: Duration::from_millis(500), rtt_window: Duration::from_secs(2) },
            t0,
            [2],
        );
        let mut h = [0u64; RTT_BUCKETS];
        h[25] = 100; // an old burst of slow RTTs
        d.observe(t0, 2, &slot(1, t0, 1, t0), &h);
        assert_eq!(d.peer(2).unwrap().rtt_p50, Some(Duration::from_nanos(1 << 25)));
        // Later only fast RTTs arrive; once the old snapshot leaves the window they dominate.
        for s in 1..=4u64 {
            h[15] += 100;
            let now = t0 + s * 1_000 * MS;
            d.observe(now, 2, &slot(s, now, s, now), &h);
        }
        assert_eq!(d.peer(2).unwrap().rtt_p99, Some(Duration::from_nanos(1 << 15)));
    }
}
