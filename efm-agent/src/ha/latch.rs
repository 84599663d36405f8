//! One-shot decisions of the engine, latched per (what, epoch): each fires once for an epoch,
//! and one latch never silences another.

use std::collections::BTreeSet;

/// What was done once for an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Latch {
    /// `PromoteLocal` started.
    PromoteStarted,
    /// The failed primary database was handled (`PrimaryDbFailed`).
    DbFailureHandled,
    /// The isolated primary flow ran (cleared when endorsements come back).
    IsolationHandled,
    /// The stale old primary was demoted (`DemoteLocal`).
    Demoted,
    /// `auto.failover` is off: "manual failover required" was sent.
    ManualFailoverNotified,
    /// The leader found no standby to promote: "failover not occurred" was sent.
    NoCandidateNotified,
    /// The old primary could not rejoin as a standby: "demotion failed" was sent.
    RejoinFailureNotified,
    /// `Rejoin` started.
    RejoinStarted,
    /// `Follow` was decided for the epoch's primary.
    Followed,
    /// This voter cannot reach the primary's database that another agent reaches: "Database
    /// connection failure" was sent.
    DbConnectionFailureNotified,
    /// A promotion was refused while another host answers for the VIP: the notification.
    VipRefusalNotified,
    /// This standby declined a promotion: `ping.server.ip` did not answer.
    OrphanedDeclined,
    /// The primary's agent is not heard but its database answers: "primary DB is still
    /// running" was sent (reset when the agent is heard again).
    PrimaryRunningNotified,
    /// The local standby's database failure was handled (notification, `script.db.failure`).
    StandbyDbFailureHandled,
}

/// The latches that fired, by (what, epoch).
#[derive(Clone, Debug, Default)]
pub struct Latches(BTreeSet<(Latch, u64)>);

impl Latches {
    /// True the first time for (`what`, `epoch`), false after that.
    pub fn once(&mut self, what: Latch, epoch: u64) -> bool {
        self.0.insert((what, epoch))
    }

    #[must_use]
    pub fn fired(&self, what: Latch, epoch: u64) -> bool {
        self.0.contains(&(what, epoch))
    }

    /// Lets (`what`, `epoch`) fire again.
    pub fn reset(&mut self, what: Latch, epoch: u64) {
        self.0.remove(&(what, epoch));
    }

    /// Forgets the latches of epochs before `epoch` (they can no longer fire).
    pub fn forget_before(&mut self, epoch: u64) {
        self.0.retain(|(_, e)| *e >= epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latch_fires_once_per_epoch_and_never_for_another_kind() {
        let mut l = Latches::default();
        assert!(l.once(Latch::NoCandidateNotified, 3));
        assert!(!l.once(Latch::NoCandidateNotified, 3));
        assert!(l.once(Latch::RejoinFailureNotified, 3), "another kind, same epoch");
        assert!(l.once(Latch::NoCandidateNotified, 4), "same kind, next epoch");
        l.reset(Latch::NoCandidateNotified, 4);
        assert!(l.once(Latch::NoCandidateNotified, 4));
        l.forget_before(4);
        assert!(!l.fired(Latch::RejoinFailureNotified, 3));
        assert!(l.fired(Latch::NoCandidateNotified, 4));
    }
}
