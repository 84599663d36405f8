//! Seeded discrete-event simulation of whole clusters running the real [`Engine`].
//!
//! Each schedule is one cluster of 3 or 5 voters (database nodes, optionally a witness) that
//! runs for about 9 simulated seconds under random faults, with every node modelled as:
//!
//! - **a monotonic clock** running at rate `r ∈ [1 − δ, 1 + δ]` of real time (δ = 0.04, inside
//!   the engine's `clock_drift` = 0.05) from a random offset; the engine's `now_ns` and every
//!   kernel timestamp use it;
//! - **its kernel** (alive unless the whole node is down), mirroring `efm-ebpf`: per peer the
//!   last PING and PONG (arrival, flags, epoch, LSN, replay check on (incarnation, seq)); the
//!   endorsement rule of `heartbeat` (only an endorse flag with the node's own fence epoch
//!   records `endorse_ns[peer] = now` and recomputes `lease_deadline`, the k-th newest
//!   endorsement plus the lease timeout, with the `lease_k` in force at that moment; a PING
//!   without the flag changes nothing); `raise_epoch` on every accepted PING and PONG; PONGs
//!   built from the kernel's fence state; for client traffic the kernel's serving rule itself,
//!   `efm_common::serving::fence_reasons` (fenced, epoch-fenced, enforced lease lapsed);
//! - **its agent**: every `heartbeat.interval` of its own clock it reads the kernel slots like
//!   the detector (alive = a PING arrived within `node.timeout`), and steps the real [`Engine`]
//!   with the real inputs (committed state once read from a connected majority, the kernel's
//!   fence as last written and its lease deadline, the completions that came back since) —
//!   every decision (lease floor and lapse flag, suspension, remote-check scheduling, the VIP,
//!   the peer table) is the engine's. The simulated executor writes `Desired` into the kernel
//!   and carries out the actions with **faults injected at their effects**
//!   ([`EffectFaults`], per schedule): completions that come back late (0.2–1.5 s), a vote
//!   record on a slow disk (100–800 ms before the Vote is proposed) or one that fails (no
//!   proposal; the engine proposes again), proposals lost on their way to the log, remote
//!   checks that wrongly say "unreachable", failed promotions, a failing custom monitor,
//!   heartbeats delayed on every link, and database stops (`stop.failed.primary`,
//!   `stop.isolated.primary`) that report [`Completion::DbStopDone`]. It then sends one PING
//!   to each peer (endorse flag only to `Desired.endorse`); the PONG to each PING carries the
//!   kernel's role, epoch, and `FLAG_FENCED`/`FLAG_LEASE_LAPSED` by the serving rule at that
//!   moment, and the pinger's slot keeps it (the voters' evidence for an absent agent). A new or restarted agent has a fresh
//!   `Engine` and no committed state. A paused agent (SIGSTOP) does nothing and the kernel
//!   keeps the last values; a killed one disappears with its pending completions;
//! - **its database**: standby or primary; `PromoteLocal` makes it primary after 20–300 ms and
//!   [`Completion::Promoted`] comes back 0–20 ms later. A primary never becomes a standby by
//!   itself; a failed database is down for good (`LocalDb.failed`), and peers' remote checks
//!   ([`Action::CheckRemoteDb`]) then answer "unreachable". `HandOver { demote: true }` stops it
//!   cleanly after 50–500 ms (15 %: 1–2.5 s, longer than the promotion wait) and reports
//!   [`Completion::HandedOver`] — a planned stop, not a failure: the database is down until a
//!   `Rejoin`, 100–800 ms after which it runs as a standby ([`Completion::Rejoined`]); 8 % of
//!   the stops fail ([`Completion::HandOverFailed`], the database keeps running as primary). The
//!   stop goes on if the agent that started it dies; only that agent hears the result;
//! - **the coordination log**: one linearizable log with the apply rules the engine relies on
//!   (`Vote` only for the current epoch; `Promote` only with the expected epoch, a majority of
//!   votes and a database node as candidate, recording `previous_primary` and clearing any
//!   switchover; `SetPrimary` only without a primary; `ClearSwitchover`), and the operator's
//!   `switchover: (from, to, demote, requested epoch)`, which `committed()` turns into
//!   `Committed.handover` only for the current epoch and primary. The "Raft
//!   leader" is the lowest running agent bidirectionally connected to a majority of running
//!   agents; its neighbours form the majority group. A proposal commits 2–10 ms later only if its
//!   proposer is in that group when it proposes; only group members learn the committed state.
//!
//! The network has per directed link up/down (partitions may be asymmetric), a loss rate and a
//! delay of 0.1–3 ms (so messages may be reordered).
//!
//! **The client** (its own random stream) sends a write every 20–60 ms to each node whose kernel
//! lets client traffic in (a client may still hold an old VIP address); 30 % are long
//! statements that sleep 0.5–3 s inside the database before committing, the rest take
//! 1–20 ms. A statement commits if its database still runs as the same primary when it ends —
//! whatever the kernel did meanwhile, as the fence does not reach inside `PostgreSQL` — and its
//! acknowledgement leaves only if the kernel serves at that moment (the egress fence;
//! `Params::egress_fence = false` models the ingress-only data plane, and a test shows the
//! invariant then fails).
//!
//! **Operator hand-overs** (`Schedule::with_handovers`, a separate test): `efm promote
//! [-switchover]` at random times, 70 % with `-switchover`. As `operator::promote` checks it, the
//! request needs a running standby (the target is one of them, at random) and, with
//! `-switchover`, a running primary; `RequestSwitchover` then commits for the current epoch if
//! the log has a connected majority, a primary and no pending switchover. A third of these
//! schedules have no fault and no loss and one hand-over at 1.5–3 s; the others add one or two
//! hand-overs to a random schedule of the other families.
//!
//! Checked invariants: (1) after every event, at most one node serves writes (database primary,
//! node up, and the kernel lets clients through); (2) a database becomes primary only through a
//! `PromoteLocal` for an epoch whose committed `Promote` names it; (3) liveness: when after the
//! last fault a majority of running agents is fully connected and includes a usable database
//! for at least 5 s, some node serves within `node.timeout + promotion_wait + 1 s`; and pauses of
//! the primary's agent shorter than 0.9 s (nothing else failing) cause no failover. Liveness
//! failures where a majority of votes is out of reach without the committed primary's own vote
//! (which the engine never casts) are reported but fail only with `EFM_SIM_STRICT=1`. An
//! operator's request counts as a fault here, and the bound grows by the clean stop of a
//! `-switchover` (the hand-over waits for it, by design). With an absent primary agent
//! (`Schedule::with_absent_agent`, a separate test: the primary's agent killed, its kernel
//! serving, maybe restarted seconds later): without a further fault no failover happens and
//! the primary serves at the end; its database failing or its node cut off during the absence
//! is failed over within the bound plus one remote-check period. With hand-overs, also: (4) an old
//! primary whose database was stopped for a `-switchover` of epoch `e` never serves again
//! unless a committed `Promote` of an epoch after `e` names it; (5) without faults, within 5 s
//! of the request the target is promoted and a `-switchover` old primary is an unfenced standby
//! of it (a plain promotion leaves it a fenced old primary); a hand-over whose clean stop
//! failed is called off, the old primary serves again and no failover follows; (6) a
//! `-switchover`'s `Promote` never commits while the old primary's database still runs as
//! primary — no acknowledged write lost — unless a fault touched the old primary's agent, node
//! or links from 1 s before the request on (killed, paused, down, cut off); (7) `Rejoin` only
//! for a database whose agent has not seen it run since its hand-over's clean stop. (8) No
//! client write is acknowledged by the primary of an epoch after the first acknowledgement by
//! the primary of a later epoch — statements in flight included. A `Rejoin` before the
//! runtime reported the clean stop (the database had failed before the hand-over, so the old
//! primary's vote was already in the log) is counted and reported, not failed.
//!
//! Not modelled: `PostgreSQL` replication and data loss, the VIP's addresses (its actions
//! complete at once; clients reach any node whose kernel lets them in), scripts, Raft
//! elections and timeouts (leadership moves at once), the agent ending sessions (only the
//! kernel's fence is relied on), the start-up ordering of a rebooted node (the kernel comes back
//! fenced before the database accepts clients). The liveness bound grows by what the injected
//! effect faults may add ([`EffectFaults::slack`]); after an injected promotion failure
//! liveness is not checked (the candidate waits out the 30 s promotion grace, by design).
//!
//! `EFM_SIM_SEED` (base seed) and `EFM_SIM_SCHEDULES` (schedules per test) override the
//! defaults; a failure prints the seed that reproduces it with `EFM_SIM_SCHEDULES=1`;
//! `EFM_SIM_TRACE=1` prints every schedule's end state and trace (with `--nocapture`).

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    fmt::Write as _,
    net::SocketAddr,
    time::Duration,
};

use efm_common::wire::{FLAG_DB_CHECK, FLAG_DB_UP, FLAG_ENDORSE, FLAG_FENCED, FLAG_LEASE_LAPSED, ROLE_MASK};

use super::{
    Action, Committed, Engine, EngineConfig, Event as Completion, Handover, Inputs, KernelPong, KernelState, LocalDb,
    NodeMeta, Outcome, PeerRole, PeerView, Proposal,
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const HB_INTERVAL: u64 = 50 * MS;
const NODE_TIMEOUT: u64 = 500 * MS;
const LEASE: u64 = SEC;
const CLOCK_DRIFT: f64 = 0.05;
const MARGIN: u64 = 50 * MS;
const ENDORSE_WINDOW: u64 = 150 * MS;
/// Largest deviation of a node's clock rate from real time.
const RATE_DELTA: f64 = 0.04;
const MAX_N: usize = 5;
/// Simulated length of one schedule.
const RUN_FOR: u64 = 9 * SEC;
/// Liveness is checked only when the cluster stayed healthy this long after the last fault.
const STABLE_FOR: u64 = 5 * SEC;
/// Without faults, an operator hand-over is carried out (and a `-switchover` old primary is a
/// standby again) this long after it was requested.
const HANDOVER_BOUND: u64 = 5 * SEC;
const DEFAULT_SEED: u64 = 0x00EF_5EED_0000;

#[expect(clippy::cast_precision_loss, reason = "simulated times stay far below 2^53 ns")]
fn to_f64(x: u64) -> f64 {
    x as f64
}

#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "non-negative, far below 2^64")]
fn to_u64(x: f64) -> u64 {
    x.max(0.0) as u64
}

/// `a − b` in milliseconds, signed.
fn signed_ms(a: u64, b: u64) -> f64 {
    if a >= b {
        to_f64(a - b) / 1e6
    } else {
        -to_f64(b - a) / 1e6
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, u8::try_from(i + 1).unwrap_or(u8::MAX)], 7800))
}

fn index_of(a: SocketAddr) -> usize {
    match a {
        SocketAddr::V4(v4) => usize::from(v4.ip().octets()[3]) - 1,
        SocketAddr::V6(_) => usize::MAX,
    }
}

fn ts(t: u64) -> String {
    format!("{:>5}.{:03}ms", t / MS, (t % MS) / 1_000)
}

fn engine_cfg(i: usize, witness: bool) -> EngineConfig {
    EngineConfig {
        clock_drift: CLOCK_DRIFT,
        margin: Duration::from_nanos(MARGIN),
        endorse_window: Duration::from_nanos(ENDORSE_WINDOW),
        vip: Some(std::net::IpAddr::from([198, 18, 0, 100])),
        ..EngineConfig::basic(addr(i), witness, Duration::from_nanos(LEASE), Duration::from_nanos(HB_INTERVAL))
    }
}

/// The documented bound on the time to a serving primary: detection, the promotion wait, slack.
fn liveness_bound() -> u64 {
    let wait = engine_cfg(0, false).promotion_wait();
    NODE_TIMEOUT + u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX) + SEC
}

// ---------------------------------------------------------------------------------------------
// Seeded PRNG (splitmix64).

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
    fn unit(&mut self) -> f64 {
        to_f64(self.next() >> 11) / to_f64(1 << 53)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules.

/// Which node a fault hits, resolved when it happens.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The committed primary at that moment.
    Primary,
    Node(usize),
    /// One of the nodes that are not the committed primary at that moment.
    NonPrimary(usize),
}

#[derive(Clone, Debug)]
enum Fault {
    KillAgent {
        who: Target,
        restart_after: Option<u64>,
    },
    RestartAgent(usize),
    PauseAgent {
        who: Target,
        dur: u64,
    },
    Resume(usize),
    /// Cut the links into (`inbound`) and/or out of (`outbound`) a node.
    Cut {
        who: Target,
        inbound: bool,
        outbound: bool,
        heal_after: Option<u64>,
    },
    /// Cut the links from the nodes in `side` to the others (and back if `both_ways`).
    Partition {
        side: u32,
        both_ways: bool,
        heal_after: Option<u64>,
    },
    LinkDown {
        from: usize,
        to: usize,
        heal_after: Option<u64>,
    },
    Heal(Vec<(usize, usize)>),
    NodeDown {
        who: Target,
        back_after: Option<u64>,
    },
    NodeUp(usize),
    /// The database fails. `exit_seen`: its agent sees the postmaster exit (pidfd): down for
    /// certain; otherwise only its local checks fail and the other agents confirm it.
    DbFail {
        who: Target,
        exit_seen: bool,
    },
    /// The node's local checks of its database fail (a connection limit, `pg_hba.conf`) while
    /// the database serves and answers the other agents' checks; healed after a while or not.
    ProbeFails {
        who: Target,
        heal_after: Option<u64>,
    },
    /// The local checks of this node work again.
    ProbeHeals(usize),
    /// `script.custom.monitor` starts failing on a node (for good).
    CustomMonitorFails {
        who: Target,
    },
    /// Messages on every link take this much longer (heartbeats delayed, not lost).
    Delay {
        extra: u64,
        heal_after: u64,
    },
    Loss(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Random,
    /// Only a pause of the primary's agent of this length; no loss.
    PauseOnly(u64),
    /// The primary cut off while another voter's agent restarts.
    RestartDuringCut,
    /// No fault and no message loss: only the operator's hand-over.
    NoFaults,
    /// Only the primary's local checks fail while its database serves; no loss.
    ProbeOnly,
    /// The primary's agent is killed (its kernel keeps serving, its database runs), perhaps
    /// restarted seconds later; then nothing else, its database fails, or its node is cut off.
    AbsentAgent(AbsentThen),
}

/// What follows the primary agent's absence in [`Family::AbsentAgent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AbsentThen {
    /// Nothing: no failover may happen, the primary serves throughout (but for the moment a
    /// restarted simulated agent fences before it has read the log).
    Nothing,
    /// Its database fails: the voters' checks fail, a standby is promoted.
    DbFails,
    /// Its node is cut off both ways: no PONGs, no endorsement reaching it; it is fenced by
    /// its lease and a standby is promoted.
    CutOff,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::PauseOnly(_) => "pause-only",
            Self::RestartDuringCut => "restart-during-cut",
            Self::NoFaults => "no-faults",
            Self::ProbeOnly => "probe-only",
            Self::AbsentAgent(AbsentThen::Nothing) => "absent-agent",
            Self::AbsentAgent(AbsentThen::DbFails) => "absent-agent-db-fails",
            Self::AbsentAgent(AbsentThen::CutOff) => "absent-agent-cut-off",
        }
    }
}

/// `efm promote [-switchover]` run by the operator.
#[derive(Clone, Copy, Debug)]
struct OperatorPromote {
    /// Picks the target among the database nodes that are not the primary at that moment.
    to: usize,
    demote: bool,
}

#[derive(Clone, Debug)]
struct Schedule {
    seed: u64,
    n: usize,
    witness: Option<usize>,
    rates: Vec<f64>,
    offsets: Vec<u64>,
    loss: f64,
    family: Family,
    faults: Vec<(u64, Fault)>,
    operator: Vec<(u64, OperatorPromote)>,
    effects: EffectFaults,
}

/// Faults injected into the executor's effects (from their own random stream, so the
/// schedule's other choices stay as they were).
#[derive(Clone, Copy, Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent switches of one schedule")]
struct EffectFaults {
    /// `stop.failed.primary` and `stop.isolated.primary`: stop actions stop the database.
    stop_databases: bool,
    /// Chance that a completion (promotion, clean stop, rejoin, remote check, VIP change)
    /// comes back late (0.2–1.5 s instead of milliseconds).
    slow_completion: f64,
    /// The disk syncing the vote record is slow (100–800 ms per record instead of 1–5 ms).
    slow_disk: bool,
    /// Chance that recording a vote fails (no proposal; the engine proposes again).
    vote_record_fails: f64,
    /// Chance that a proposal handed to the log is lost anyway (leader change).
    proposal_loss: f64,
    /// Chance that a remote check says "unreachable" although the database answers.
    remote_false_negative: f64,
    /// Chance that a local promotion fails (the node stays a fenced candidate until the
    /// promotion grace; liveness is not checked after it).
    promotion_fails: f64,
    /// A database node's custom monitor starts failing (a database failure to the engine).
    custom_monitor: bool,
    /// Heartbeats are delayed (not lost) for a while.
    delay: bool,
    /// A node's local checks fail while its database serves (`ProbeFails`), and database
    /// failures are seen only by the checks (no postmaster exit): the other agents confirm them.
    probe_faults: bool,
}

impl EffectFaults {
    /// How much the injected faults may add to the time to a serving primary: a late
    /// completion, a slow vote record, and a lost vote or proposal that the engine repeats a
    /// second later (more than once, at worst).
    fn slack(&self) -> u64 {
        let late = if self.slow_completion > 0.0 { 1_500 * MS } else { 0 };
        let disk = if self.slow_disk { 800 * MS } else { 0 };
        let retried = if self.vote_record_fails > 0.0 || self.proposal_loss > 0.0 { 3 * SEC } else { 0 };
        // A failure seen only by the local checks waits for the other agents' checks, at most
        // `confirm_wait`.
        let confirm = if self.probe_faults {
            u64::try_from(engine_cfg(0, false).confirm_wait().as_nanos()).unwrap_or(0)
        } else {
            0
        };
        late + disk + retried + confirm
    }

    fn generate(seed: u64) -> Self {
        let r = &mut Rng(seed ^ 0xEFFE_C7F0_0000_0001);
        Self {
            stop_databases: r.chance(0.5),
            slow_completion: if r.chance(0.3) { 0.1 } else { 0.0 },
            slow_disk: r.chance(0.2),
            vote_record_fails: if r.chance(0.2) { 0.2 } else { 0.0 },
            proposal_loss: if r.chance(0.3) { 0.05 } else { 0.0 },
            remote_false_negative: if r.chance(0.2) { 0.2 } else { 0.0 },
            promotion_fails: if r.chance(0.1) { 0.3 } else { 0.0 },
            custom_monitor: r.chance(0.1),
            delay: r.chance(0.15),
            probe_faults: r.chance(0.25),
        }
    }
}

fn heal(r: &mut Rng, p_heal: f64) -> Option<u64> {
    r.chance(p_heal).then(|| r.between(100 * MS, 3 * SEC))
}

fn random_fault(r: &mut Rng, n: usize) -> Fault {
    let node = |r: &mut Rng| Target::Node(r.pick(n));
    match r.below_kind() {
        0 => Fault::KillAgent {
            who: Target::Primary,
            restart_after: r.chance(0.5).then(|| r.between(200 * MS, 3 * SEC)),
        },
        1 => Fault::KillAgent { who: node(r), restart_after: r.chance(0.7).then(|| r.between(20 * MS, 3 * SEC)) },
        2 => Fault::PauseAgent { who: Target::Primary, dur: r.between(100 * MS, 3 * SEC) },
        3 => Fault::PauseAgent { who: node(r), dur: r.between(100 * MS, 3 * SEC) },
        4 => Fault::Cut { who: Target::Primary, inbound: true, outbound: true, heal_after: heal(r, 0.7) },
        5 => {
            let inbound = r.chance(0.5);
            Fault::Cut { who: Target::Primary, inbound, outbound: !inbound, heal_after: heal(r, 0.7) }
        }
        6 => {
            let side = loop {
                let s = u32::try_from(r.next() % (1 << n)).unwrap_or(0);
                if s != 0 && s != (1 << n) - 1 {
                    break s;
                }
            };
            Fault::Partition { side, both_ways: r.chance(0.6), heal_after: heal(r, 0.7) }
        }
        7 => {
            let from = r.pick(n);
            let to = (from + 1 + r.pick(n - 1)) % n;
            Fault::LinkDown { from, to, heal_after: heal(r, 0.7) }
        }
        8 => Fault::NodeDown { who: Target::Primary, back_after: r.chance(0.4).then(|| r.between(500 * MS, 3 * SEC)) },
        9 => Fault::NodeDown { who: node(r), back_after: r.chance(0.5).then(|| r.between(500 * MS, 3 * SEC)) },
        10 => Fault::DbFail { who: Target::Primary, exit_seen: true },
        11 => Fault::DbFail { who: Target::NonPrimary(r.pick(n)), exit_seen: true },
        12 => Fault::Cut {
            who: Target::NonPrimary(r.pick(n)),
            inbound: r.chance(0.7),
            outbound: r.chance(0.7),
            heal_after: heal(r, 0.7),
        },
        _ => Fault::Loss(r.unit() * 0.3),
    }
}

impl Rng {
    fn below_kind(&mut self) -> u64 {
        self.next() % 14
    }
}

impl Schedule {
    fn generate(seed: u64, n: usize) -> Self {
        let r = &mut Rng(seed);
        let witness = if n == 3 { r.chance(0.5).then_some(2) } else { r.chance(0.3).then_some(4) };
        // A quarter of the runs use the worst clocks for the lease: the first primary slow, the
        // voters fast.
        let extreme = r.chance(0.25);
        let rates = (0..n)
            .map(|i| match (extreme, i) {
                (true, 0) => 1.0 - RATE_DELTA,
                (true, _) => 1.0 + RATE_DELTA,
                _ => 1.0 + RATE_DELTA * (2.0 * r.unit() - 1.0),
            })
            .collect();
        let offsets = (0..n).map(|_| r.between(SEC, 1_000 * SEC)).collect();
        let roll = r.unit();
        let (family, loss, faults) = if roll < 0.15 {
            let dur = r.between(100 * MS, 3 * SEC);
            (
                Family::PauseOnly(dur),
                0.0,
                vec![(r.between(2 * SEC, 3 * SEC), Fault::PauseAgent { who: Target::Primary, dur })],
            )
        } else if roll < 0.30 {
            // The first primary (node 0) stops being heard by voter `w` (who then stops
            // endorsing it), later it is cut off while voter `v`'s agent restarts.
            let v = 1 + r.pick(n - 1);
            let w = 1 + (v + r.pick(n - 2)) % (n - 1);
            let at1 = r.between(1_500 * MS, 2 * SEC);
            let at2 = at1 + r.between(1_200 * MS, 2_500 * MS);
            let mut faults = Vec::new();
            if r.chance(0.6) {
                faults.push((at1, Fault::LinkDown { from: 0, to: w, heal_after: heal(r, 0.3) }));
            }
            let inbound = r.chance(0.6);
            faults.push((at2, Fault::Cut { who: Target::Node(0), inbound, outbound: true, heal_after: heal(r, 0.5) }));
            faults.push((
                at2 + r.between(0, 400 * MS),
                Fault::KillAgent { who: Target::Node(v), restart_after: Some(r.between(20 * MS, 400 * MS)) },
            ));
            (Family::RestartDuringCut, if r.chance(0.7) { 0.0 } else { r.unit() * 0.3 }, faults)
        } else {
            let horizon = if r.chance(0.2) { 7 * SEC } else { 4 * SEC };
            let count = r.between(1, 4);
            let faults = (0..count).map(|_| (r.between(1_500 * MS, horizon), random_fault(r, n))).collect();
            (Family::Random, if r.chance(0.5) { 0.0 } else { r.unit() * 0.3 }, faults)
        };
        // Faults of the effects and the network delay come from their own stream: the schedules
        // above stay the ones earlier versions of this simulation ran.
        let mut faults = faults;
        let effects = EffectFaults::generate(seed);
        let r = &mut Rng(seed ^ 0xEFFE_C7F0_0000_0002);
        if effects.custom_monitor && family == Family::Random {
            faults.push((
                r.between(1_500 * MS, 6 * SEC),
                Fault::CustomMonitorFails {
                    who: if r.chance(0.5) { Target::Primary } else { Target::NonPrimary(r.pick(n)) },
                },
            ));
        }
        if effects.probe_faults && family == Family::Random {
            // Database failures seen by the local checks only, and a node whose local checks
            // fail while its database serves.
            for (_, f) in &mut faults {
                if let Fault::DbFail { exit_seen, .. } = f {
                    *exit_seen = r.chance(0.3);
                }
            }
            faults.push((
                r.between(1_500 * MS, 6 * SEC),
                Fault::ProbeFails {
                    who: if r.chance(0.6) { Target::Primary } else { Target::NonPrimary(r.pick(n)) },
                    heal_after: r.chance(0.5).then(|| r.between(200 * MS, 3 * SEC)),
                },
            ));
        }
        if effects.delay && family == Family::Random {
            faults.push((
                r.between(1_500 * MS, 6 * SEC),
                Fault::Delay { extra: r.between(20 * MS, 400 * MS), heal_after: r.between(200 * MS, 3 * SEC) },
            ));
        }
        let (family, loss, faults) = if family == Family::Random && r.chance(0.08) {
            // Only the primary's local checks fail, for good or for a while.
            let heal_after = r.chance(0.5).then(|| r.between(500 * MS, 3 * SEC));
            (
                Family::ProbeOnly,
                0.0,
                vec![(r.between(2 * SEC, 3 * SEC), Fault::ProbeFails { who: Target::Primary, heal_after })],
            )
        } else {
            (family, loss, faults)
        };
        let effects = if family == Family::ProbeOnly {
            EffectFaults {
                remote_false_negative: 0.0,
                custom_monitor: false,
                delay: false,
                probe_faults: true,
                ..effects
            }
        } else {
            effects
        };
        Self { seed, n, witness, rates, offsets, loss, family, faults, operator: Vec::new(), effects }
    }

    /// The primary's agent killed at 1.5–2.5 s (restarted 2–5 s later in 40 %), then (from
    /// 0.5–2 s later) nothing, its database failing, or its node cut off both ways. Clocks and
    /// effect faults as [`Schedule::generate`] draws them; without a follow-up fault no loss and
    /// no effect faults, so that any failover is one the absence caused.
    fn with_absent_agent(seed: u64, n: usize) -> Self {
        let mut s = Self::generate(seed, n);
        let r = &mut Rng(seed ^ 0xAB5E_47A6_E470_0000);
        let then = match r.pick(3) {
            0 => AbsentThen::Nothing,
            1 => AbsentThen::DbFails,
            _ => AbsentThen::CutOff,
        };
        let at = r.between(1_500 * MS, 2_500 * MS);
        let restart_after = r.chance(0.4).then(|| r.between(2 * SEC, 5 * SEC));
        s.faults = vec![(at, Fault::KillAgent { who: Target::Node(0), restart_after })];
        let later = at + r.between(500 * MS, 2 * SEC);
        match then {
            AbsentThen::Nothing => {
                s.loss = 0.0;
                s.effects = EffectFaults {
                    slow_completion: 0.0,
                    vote_record_fails: 0.0,
                    proposal_loss: 0.0,
                    remote_false_negative: 0.0,
                    promotion_fails: 0.0,
                    custom_monitor: false,
                    delay: false,
                    ..s.effects
                };
            }
            AbsentThen::DbFails => s.faults.push((later, Fault::DbFail { who: Target::Node(0), exit_seen: true })),
            AbsentThen::CutOff => s
                .faults
                .push((later, Fault::Cut { who: Target::Node(0), inbound: true, outbound: true, heal_after: None })),
        }
        s.family = Family::AbsentAgent(then);
        s
    }

    /// A schedule of [`Schedule::generate`] plus operator hand-overs (from a separate random
    /// stream): a third of them without faults or loss (one hand-over early enough to check that
    /// it completes), the others with one or two hand-overs among the faults.
    fn with_handovers(seed: u64, n: usize) -> Self {
        let mut s = Self::generate(seed, n);
        let r = &mut Rng(seed ^ 0x0E5F_5A1C_7C0F_FEE0);
        let quiet = r.chance(0.35);
        if quiet {
            s.faults.clear();
            s.loss = 0.0;
            s.family = Family::NoFaults;
            s.effects = EffectFaults {
                slow_completion: 0.0,
                vote_record_fails: 0.0,
                proposal_loss: 0.0,
                promotion_fails: 0.0,
                custom_monitor: false,
                delay: false,
                ..s.effects
            };
        }
        let count = if quiet { 1 } else { r.between(1, 2) };
        for _ in 0..count {
            let at = if quiet { r.between(1_500 * MS, 3 * SEC) } else { r.between(SEC, 7 * SEC) };
            s.operator.push((at, OperatorPromote { to: r.pick(n), demote: r.chance(0.7) }));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The modelled world.

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    pings: u64,
    ping_id: (u64, u64),
    arrival: u64,
    flags: u16,
    epoch: u64,
    lsn: u64,
    pong_id: (u64, u64),
    pongs: u64,
    pong_arrival: u64,
    /// Role and `FLAG_FENCED` / `FLAG_LEASE_LAPSED` of the last PONG, as `efm-ebpf` sets them.
    pong_flags: u16,
    pong_epoch: u64,
}

/// The kernel side of one node: `EFM_FENCE` (written by the agent), `EFM_LEASE` and the slots
/// (written by XDP).
#[derive(Clone, Debug)]
struct Kernel {
    fenced: bool,
    lease_enforced: bool,
    lease_k: u32,
    epoch: u64,
    role: u16,
    endorse: [u64; MAX_N],
    deadline: u64,
    max_epoch_seen: u64,
    slots: [Slot; MAX_N],
    /// The peer table (`EFM_PEERS`): heartbeats from others are dropped.
    peers: u32,
}

impl Kernel {
    /// As the agent's datapath loads it: fenced until the engine says otherwise.
    fn fresh() -> Self {
        Self {
            fenced: true,
            lease_enforced: false,
            lease_k: 0,
            epoch: 0,
            role: 0,
            endorse: [0; MAX_N],
            deadline: 0,
            max_epoch_seen: 0,
            slots: [Slot::default(); MAX_N],
            peers: u32::MAX,
        }
    }

    /// The kernel's serving rule, [`efm_common::serving::fence_reasons`] itself (the one the XDP
    /// and egress programs run), on this kernel's state; the first reason, named.
    fn fence_reason(&self, now: u64) -> Option<&'static str> {
        use efm_common::{
            maps::{FenceState, LeaseState, FENCE_FENCED, FENCE_LEASE_ENFORCED},
            serving::{fence_reasons, REASON_EPOCH, REASON_FENCED, REASON_LAPSED},
        };
        let fence = FenceState {
            flags: if self.fenced { FENCE_FENCED } else { 0 }
                | if self.lease_enforced { FENCE_LEASE_ENFORCED } else { 0 },
            epoch: self.epoch,
            lease_k: self.lease_k,
            lease_timeout_ns: LEASE,
            ..FenceState::default()
        };
        let lease =
            LeaseState { deadline_ns: self.deadline, max_epoch_seen: self.max_epoch_seen, ..LeaseState::default() };
        let r = fence_reasons(&fence, &lease, now);
        if r & REASON_FENCED != 0 {
            Some("fenced")
        } else if r & REASON_EPOCH != 0 {
            Some("epoch-fenced")
        } else if r & REASON_LAPSED != 0 {
            Some("lease lapsed")
        } else {
            None
        }
    }

    /// `raise_epoch`; true when this fences the node.
    fn raise_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.max_epoch_seen {
            self.max_epoch_seen = epoch;
            return epoch > self.epoch;
        }
        false
    }
}

/// `lease_deadline`: the k-th newest endorsement plus the lease; 0 with fewer than k.
fn lease_deadline(endorse: &[u64; MAX_N], k: u32, lease: u64) -> u64 {
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    if k == 0 || k > MAX_N {
        return 0;
    }
    let mut e = *endorse;
    e.sort_unstable_by(|a, b| b.cmp(a));
    if e[k - 1] == 0 {
        0
    } else {
        e[k - 1].saturating_add(lease)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    /// A witness has none.
    None,
    Standby,
    Primary,
    Failed,
    /// Stopped cleanly by an operator's `-switchover` (not a failure: it rejoins as a standby).
    Stopped,
}

#[derive(Clone, Debug)]
struct Agent {
    engine: Engine,
    incarnation: u64,
    committed: Option<Committed>,
    seq: u64,
    paused_until: u64,
    last_outcome: Option<Outcome>,
    /// The executor's channel: completions not yet handed to the engine.
    inbox: Vec<Completion>,
    /// `EFM_FENCE` as this agent last wrote it.
    last_fence: Option<efm_common::maps::FenceState>,
}

#[derive(Clone, Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent facts of one simulated node")]
struct Node {
    witness: bool,
    rate: f64,
    offset: u64,
    up: bool,
    db: Db,
    lag: u64,
    kernel: Kernel,
    agent: Option<Agent>,
    incarnations: u64,
    /// Its custom monitor fails.
    custom_failed: bool,
    /// Its local checks fail while its database serves (`ProbeFails`).
    probe_failed: bool,
    /// Its local checks failed at some point: as a standby its agent stays idle (monitoring
    /// suspended, no `efm resume` in the simulation), so it is no candidate.
    probe_failed_once: bool,
    /// Its failed database was seen to exit (pidfd): down for certain.
    exit_seen: bool,
}

/// The coordination log's state machine, with the apply rules the engine relies on.
#[derive(Clone, Debug)]
struct Log {
    epoch: u64,
    primary: Option<usize>,
    votes: BTreeSet<usize>,
    /// (epoch, node) of every primary: the initial registration and each committed `Promote`.
    history: Vec<(u64, usize)>,
    nodes: BTreeMap<SocketAddr, NodeMeta>,
    previous_primary: Option<usize>,
    /// The operator's pending hand-over: (from, to, demote, requested epoch).
    switchover: Option<(usize, usize, bool, u64)>,
}

impl Log {
    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn is_db_node(&self, i: usize) -> bool {
        self.nodes.get(&addr(i)).is_some_and(|m| !m.witness)
    }

    fn committed(&self) -> Committed {
        Committed {
            epoch: self.epoch,
            primary: self.primary.map(addr),
            nodes: self.nodes.clone(),
            votes: self.votes.iter().map(|&i| addr(i)).collect(),
            auto_failover: true,
            votes_short: false,
            previous_primary: self.previous_primary.map(addr),
            handover: self.switchover.filter(|&(from, _, _, e)| e == self.epoch && Some(from) == self.primary).map(
                |(from, to, demote, _)| Handover { from: addr(from), to: addr(to), demote, quiet: false, source: None },
            ),
        }
    }

    /// `RequestSwitchover` as the state machine applies it (for the current epoch).
    fn request_switchover(&mut self, to: usize, demote: bool) -> Result<usize, &'static str> {
        let Some(from) = self.primary else { return Err("no primary") };
        if self.switchover.is_some() {
            return Err("a switchover is pending");
        }
        if from == to {
            return Err("already primary");
        }
        if !self.is_db_node(to) {
            return Err("not a database node");
        }
        self.switchover = Some((from, to, demote, self.epoch));
        Ok(from)
    }

    fn apply(&mut self, p: &Proposal) -> Result<(), &'static str> {
        match p {
            Proposal::SetPrimary { node, expected_epoch } => {
                let i = index_of(*node);
                if self.primary.is_some() {
                    return Err("a primary exists");
                }
                if *expected_epoch != self.epoch {
                    return Err("stale epoch");
                }
                if !self.is_db_node(i) {
                    return Err("not a database node");
                }
                self.primary = Some(i);
                self.epoch += 1;
                self.votes.clear();
                self.history.push((self.epoch, i));
            }
            Proposal::Vote { voter, epoch } => {
                if *epoch != self.epoch {
                    return Err("stale epoch");
                }
                if !self.nodes.contains_key(voter) {
                    return Err("not a voter");
                }
                self.votes.insert(index_of(*voter));
            }
            Proposal::Promote { candidate, expected_epoch, .. } => {
                let i = index_of(*candidate);
                if *expected_epoch != self.epoch {
                    return Err("stale epoch");
                }
                if self.votes.len() < self.majority() {
                    return Err("votes short of a majority");
                }
                if !self.is_db_node(i) {
                    return Err("not a database node");
                }
                if self.primary == Some(i) {
                    return Err("already primary");
                }
                self.previous_primary = self.primary;
                self.primary = Some(i);
                self.epoch += 1;
                self.votes.clear();
                self.switchover = None;
                self.history.push((self.epoch, i));
            }
            Proposal::ClearSwitchover => {
                if self.switchover.take().is_none() {
                    return Err("no switchover pending");
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Ping {
        from: usize,
        to: usize,
        id: (u64, u64),
        flags: u16,
        epoch: u64,
        lsn: u64,
    },
    Pong {
        from: usize,
        to: usize,
        id: (u64, u64),
        epoch: u64,
        flags: u16,
    },
    Commit {
        from: usize,
        proposal: Proposal,
    },
    DbPromoted {
        node: usize,
        epoch: u64,
        incarnation: u64,
    },
    /// A completion reaches the agent's channel (dropped if that agent is gone).
    Done {
        node: usize,
        incarnation: u64,
        event: Completion,
    },
    /// The vote record is synced: the vote goes to the log.
    VoteRecorded {
        node: usize,
        incarnation: u64,
        proposal: Proposal,
    },
    /// A stop action's `pg_ctl stop` finished.
    DbStopped {
        node: usize,
        incarnation: u64,
    },
    Fault(Fault),
    Operator(OperatorPromote),
    /// The clean stop of a `-switchover` finished (`ok`) or failed.
    HandOverDone {
        node: usize,
        epoch: u64,
        incarnation: u64,
        ok: bool,
    },
    RejoinDone {
        node: usize,
        epoch: u64,
        incarnation: u64,
    },
    /// The client sends a write to every node whose kernel lets it in.
    ClientTick,
    /// A write received at `started` finishes inside the database (`life`: the database's life
    /// it started in; `epoch`: the epoch the database was primary for).
    StatementDone {
        node: usize,
        life: u64,
        epoch: u64,
        started: u64,
        long: bool,
    },
}

/// One committed operator hand-over and what became of it.
#[derive(Clone, Debug)]
struct HandoverRec {
    at: u64,
    epoch: u64,
    from: usize,
    to: usize,
    demote: bool,
    /// The old primary's database stopped cleanly.
    stopped_at: Option<u64>,
    /// The runtime reported `HandOverFailed`.
    failed: bool,
    cleared_at: Option<u64>,
    /// The `Promote` that ended the epoch: when, and whom.
    promoted: Option<(u64, usize)>,
    /// The old primary's database runs as a standby again.
    rejoined_at: Option<u64>,
    /// After a failed hand-over: the old primary serves again.
    served_again: Option<u64>,
}

#[derive(Debug)]
struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed: `BinaryHeap` pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What one schedule produced.
#[derive(Clone, Debug, Default)]
struct RunResult {
    violation: Option<String>,
    liveness: Option<String>,
    faults: u32,
    failovers: u32,
    /// Longest time without a serving node after start-up.
    max_outage: Option<u64>,
    /// Liveness-checked schedules: time from the last fault (or the outage start, if later) to
    /// a serving node.
    time_to_serving: Option<u64>,
    checked_liveness: bool,
    /// The liveness failure is the engine's "the primary never votes against itself" defect.
    needs_primary_vote: bool,
    proposals_dropped: u32,
    messages: u64,
    /// Operator hand-overs committed, carried out (a `Promote` ended their epoch), failed
    /// (`HandOverFailed`), and old primaries rejoined as standbys.
    handovers: u32,
    handovers_promoted: u32,
    handovers_failed: u32,
    rejoined: u32,
    /// Old primaries whose database was still stopped at the end.
    left_stopped: u32,
    /// `-switchover` `Promote`s committed, and those while the old primary's database still
    /// ran (allowed only when a fault touched it: (6)).
    switchover_promotes: u32,
    switchover_promotes_running: u32,
    /// `Rejoin` of a database its agent saw run since its hand-over (asserted against).
    stale_rejoin: Option<String>,
    /// `Rejoin` before the runtime reported the clean stop (the database had failed before),
    /// with the first one's trace.
    early_rejoins: u32,
    early_rejoin: Option<String>,
    /// Client writes acknowledged (of them long statements); committed locally on a kernel
    /// that no longer served (never acknowledged); lost with their database.
    acks: u64,
    long_acks: u64,
    statements_unacknowledged: u64,
    statements_lost: u64,
}

/// Choices about the data plane around the engine.
#[derive(Clone, Copy, Debug)]
struct Params {
    /// The kernel's egress fence: a segment from the database port leaves only while the kernel
    /// serves. Off models the data plane before it (ingress only), to show what it prevents.
    egress_fence: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self { egress_fence: true }
    }
}

struct Sim {
    params: Params,
    sched: Schedule,
    nodes: Vec<Node>,
    log: Log,
    down: [[u8; MAX_N]; MAX_N],
    loss: f64,
    queue: BinaryHeap<Queued>,
    seq: u64,
    now: u64,
    rng: Rng,
    trace: Vec<String>,
    serving: u32,
    /// Sim ms up to which WAL exists: it grows only while some node serves writes (a dead or
    /// cut-off primary writes nothing its standbys could receive), so positions stop moving.
    wal_head: u64,
    /// When the last check ran (a lease lapse between checks is dated by its deadline).
    checked_at: u64,
    warm: bool,
    outages: Vec<(u64, Option<u64>)>,
    last_fault: u64,
    healthy_after_last_fault: bool,
    res: RunResult,
    handovers: Vec<HandoverRec>,
    /// Per node: the epoch it handed over with `-switchover` (its database stopped cleanly).
    handed_over: [Option<u64>; MAX_N],
    /// Per node: its agent has not seen its database run since its hand-over (a rejoin is due).
    down_since_handover: [bool; MAX_N],
    /// Per node: a clean stop for a `-switchover` is under way.
    stop_pending: [bool; MAX_N],
    /// Per node: the last fault that touched its agent, node or links.
    touched: [Option<u64>; MAX_N],
    /// The longest clean stop of a `-switchover` since the last fault: a planned outage the
    /// liveness bound allows for (the hand-over waits for it, by design).
    stop_slack: u64,
    /// Extra delay on every message (a `Delay` fault), and the effects' own random stream.
    extra_delay: u64,
    fx_rng: Rng,
    /// An injected promotion failure happened: the candidate stays fenced until the promotion
    /// grace (30 s), beyond the run; liveness is not checked.
    promotion_failed: bool,
    /// The client's own random stream, so client traffic does not change the schedule's.
    client_rng: Rng,
    /// Per node: the database's life (bumped whenever it stops, fails, goes down with its node
    /// or is promoted: a statement in flight does not survive that).
    db_life: [u64; MAX_N],
    /// Per node: the epoch its database is primary for (0: never was).
    db_epoch: [u64; MAX_N],
    acks: Acks,
}

/// The acknowledgements the client received, for invariant (8).
#[derive(Clone, Debug, Default)]
struct Acks {
    /// The highest epoch acknowledged so far, and when its first acknowledgement left.
    newest: Option<(u64, u64)>,
}

mod agent;
mod driver;
mod faults;
mod invariants;
mod world;
