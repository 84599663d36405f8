//! EFM's confirmed primary database failure (EFM 2.0 guide §8.1, "Primary cannot ping local
//! database"): the committed primary's agent alone does not decide that its database failed
//! unless the postmaster is gone.
//!
//! - **Down for certain** — the postmaster exited (its pidfd) and a final check failed
//!   (`LocalDb::local_check_only` false): the primary fences itself and fails over at once, as
//!   before (`primary.rs`).
//! - **Only the local checks fail** (a connection limit, `pg_hba.conf` rejecting this host, a
//!   check slower than `local.timeout`): the primary keeps serving under its lease and asks the
//!   other agents to check its database. Its PINGs carry `FLAG_DB_CHECK` (and no
//!   `FLAG_DB_UP`); every voter then runs its remote check (`effects::remote_checks`, bounded by
//!   `remote.timeout`, at most once a second) and reports the result in its own PINGs
//!   (`FLAG_PRIMARY_DB_REACHED` / `FLAG_PRIMARY_DB_UNREACHABLE`, from a check at most a few
//!   seconds old). A server that answers — also with a refused login or "too many clients" —
//!   counts as reached (`postgres::DbError::server_answered`): it runs, and its sessions go on.
//!   - **Some agent reaches it** (EFM: "if an agent can connect to the database"): no failover.
//!     The primary's agent is idle — monitoring suspended, EFM's "Primary cannot ping local
//!     database" notification — keeps its role, the VIP and its lease, and resumes with
//!     `efm resume` or `auto.resume.failure.period`. The voters keep endorsing it on that
//!     evidence (`voter.rs`: a primary asking for a check is healthy unless no agent reaches its
//!     database and this voter's own check did not either).
//!   - **No agent reaches it** within [`EngineConfig::confirm_wait`](super::EngineConfig::confirm_wait)
//!     (`remote.timeout` plus slack), or every agent that answers has said it is unreachable for
//!     a second (two of their checks): the failure is confirmed and handled as before (fence,
//!     vote against its own epoch, `script.db.failure`).
//!
//! Safety does not depend on any of this: endorsing a primary only keeps its lease, and a voter
//! votes against an epoch only after `promotion_wait` without endorsing, so a confirmation that
//! is wrong or late only delays a failover. What it changes is whether a database that serves
//! is failed over because one agent cannot log in.

use std::net::SocketAddr;

use efm_common::wire::{FLAG_PRIMARY_DB_REACHED, FLAG_PRIMARY_DB_UNREACHABLE};

use super::{
    duration_ns, latch::Latch, Action, Committed, Engine, Inputs, LocalDb, Notice, Progress, SuspendKind, Suspension,
};

/// Words in the outcome of a primary whose local checks fail while the other agents check
/// (or reach) its database: `health`'s `/primary` answers 200 for it although its own view of
/// the database is "down" — its kernel serves, and so does the database.
pub const OWN_CHECKS_FAIL: &str = "its agent cannot reach its database";

/// One confirmation episode of this node as the committed primary of `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Confirm {
    epoch: u64,
    /// When the local checks were first seen failing.
    since_ns: u64,
    /// The last step at which another agent reported reaching the database, and which one.
    reached: Option<(u64, SocketAddr)>,
    /// Since when every agent that answers has reported the database unreachable.
    unreachable_since: Option<u64>,
    /// Nobody reached it: the failure is confirmed (for the rest of the epoch).
    failed: bool,
    /// "Primary cannot ping local database" was sent for this episode.
    notified: bool,
}

/// What the other agents' checks say about this primary's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Waiting for the other agents' checks (at most `confirm_wait`).
    Asking,
    /// `by` reached it: no failover; this agent is idle.
    Reached { by: SocketAddr },
    /// No agent reached it in time, or every agent that answers reports it unreachable.
    Failed,
}

/// A peer's report on the committed primary's database, from its PING flags.
#[must_use]
pub fn primary_db_flag(flags: u16) -> Option<bool> {
    if flags & FLAG_PRIMARY_DB_REACHED != 0 {
        Some(true)
    } else if flags & FLAG_PRIMARY_DB_UNREACHABLE != 0 {
        Some(false)
    } else {
        None
    }
}

impl Engine {
    /// The flags this node's PINGs carry about the committed primary's database: the result of
    /// its latest fresh remote check (none on the primary itself).
    pub(super) fn remote_check_flags(&self, c: &Committed, now_ns: u64) -> u16 {
        let Some(p) = c.primary.filter(|p| *p != self.cfg.me) else { return 0 };
        match self.db_reachable(p, now_ns) {
            Some(true) => FLAG_PRIMARY_DB_REACHED,
            Some(false) => FLAG_PRIMARY_DB_UNREACHABLE,
            None => 0,
        }
    }

    /// What this voter knows about the database of the committed primary `p`: reached if its
    /// own fresh check or any live peer of the epoch reached it; unreachable if its own check
    /// did not and nobody reports reaching it; `None` without a fresh check of its own.
    pub(super) fn primary_db_evidence(&self, c: &Committed, inp: &Inputs<'_>, p: SocketAddr) -> Option<bool> {
        let own = self.db_reachable(p, inp.now_ns);
        let others =
            inp.peers.iter().any(|v| v.addr != p && v.alive && v.epoch == c.epoch && v.primary_db == Some(true));
        if own == Some(true) || others {
            Some(true)
        } else {
            own
        }
    }

    /// EFM's "Database connection failure": this voter's check of the primary's database fails
    /// while another agent reaches it — the problem is this node's path to it, and until it is
    /// fixed this node cannot tell whether that database runs. Once per epoch.
    pub(super) fn remote_check_notices(&mut self, c: &Committed, inp: &Inputs<'_>, actions: &mut Vec<Action>) {
        let me = self.cfg.me;
        let Some(p) = c.primary.filter(|p| *p != me) else { return };
        if self.db_reachable(p, inp.now_ns) != Some(false) {
            return;
        }
        let by = inp.peers.iter().find(|v| v.addr != p && v.alive && v.epoch == c.epoch && v.primary_db == Some(true));
        if let Some(by) = by {
            if self.latches.once(Latch::DbConnectionFailureNotified, c.epoch) {
                actions.push(Action::Notify(Notice::DatabaseConnectionFailure {
                    error: format!(
                        "{me} cannot reach the database of the primary {p}, which {} reaches; until this is fixed, \
                         {me} cannot tell whether that database runs",
                        by.addr
                    ),
                }));
            }
        }
    }

    /// For this node as the committed primary: whether its database, down to the local checks,
    /// is confirmed failed by the other agents (see the module documentation). `None` when no
    /// confirmation applies: the database is up, or down for certain (the postmaster exited,
    /// the custom monitor fails, the epoch was given up, a promotion of this node is still
    /// under way, the database is a standby or was never seen).
    pub(super) fn confirm_primary_db(
        &mut self,
        c: &Committed,
        inp: &Inputs<'_>,
        db: &LocalDb,
        actions: &mut Vec<Action>,
    ) -> Option<Verdict> {
        let (me, e, now) = (self.cfg.me, c.epoch, inp.now_ns);
        if !db.failed && db.up != Some(false) {
            // Monitored and up: the episode (if any) is over.
            self.confirm = None;
            return None;
        }
        let promoting = self.latches.fired(Latch::PromoteStarted, e)
            && !matches!(self.promotion, Some((pe, Progress::Done { .. })) if pe == e);
        // Down to the local checks only, or an episode goes on: the local checks work again but
        // the agent is idle (monitoring suspended) until `efm resume`.
        let ongoing = self.confirm.is_some_and(|st| st.epoch == e && !st.failed);
        let unconfirmed = db.local_check_only || (db.up == Some(true) && ongoing);
        if !unconfirmed
            || inp.custom_monitor_failed.is_some()
            || db.in_recovery == Some(true)
            || self.voted_against(e)
            || promoting
        {
            return None;
        }
        let mut st = match self.confirm {
            Some(st) if st.epoch == e => st,
            _ => Confirm {
                epoch: e,
                since_ns: now,
                reached: None,
                unreachable_since: None,
                failed: false,
                notified: false,
            },
        };
        if st.failed {
            self.confirm = Some(st);
            return Some(Verdict::Failed);
        }
        let voters: Vec<_> = inp
            .peers
            .iter()
            .filter(|v| v.addr != me && c.nodes.contains_key(&v.addr) && v.alive && v.epoch == e)
            .collect();
        let reached_now = voters.iter().find(|v| v.primary_db == Some(true)).map(|v| v.addr);
        if let Some(by) = reached_now {
            st.reached = Some((now, by));
        }
        let last = st.reached.map_or(st.since_ns, |(t, _)| t.max(st.since_ns));
        // Every agent that answers says unreachable, over two of their checks (a voter checks
        // at most once a second): one wrong check does not fail a database over.
        let all_unreachable = !voters.is_empty() && voters.iter().all(|v| v.primary_db == Some(false));
        st.unreachable_since = if all_unreachable { Some(st.unreachable_since.unwrap_or(now)) } else { None };
        let sustained = self.cfg.heartbeat_interval * 4 + std::time::Duration::from_secs(1);
        let unreachable = st.unreachable_since.is_some_and(|t| now.saturating_sub(t) >= duration_ns(sustained));
        let verdict = match (reached_now, st.reached) {
            (Some(by), _) => Verdict::Reached { by },
            _ if unreachable => Verdict::Failed,
            _ if now.saturating_sub(last) > duration_ns(self.cfg.confirm_wait()) => Verdict::Failed,
            (None, Some((_, by))) => Verdict::Reached { by },
            (None, None) => Verdict::Asking,
        };
        match verdict {
            Verdict::Failed => st.failed = true,
            Verdict::Reached { by } if !st.notified => {
                st.notified = true;
                actions.push(Action::Notify(Notice::PrimaryCannotPingLocalDb));
                // EFM's idle agent: monitoring suspended, with why.
                let cause = inp.db_error.unwrap_or("the local checks fail");
                let since_ns = self.monitor.suspension.as_ref().map_or(now, |s| s.since_ns);
                self.monitor.suspension = Some(Suspension {
                    reason: format!(
                        "this agent cannot reach its database ({cause}), but {by} can: no failover; the database \
                         keeps serving, run efm resume once the local checks work again"
                    ),
                    kind: SuspendKind::Failure,
                    since_ns,
                });
            }
            _ => {}
        }
        self.confirm = Some(st);
        Some(verdict)
    }
}
