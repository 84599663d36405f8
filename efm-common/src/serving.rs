//! The kernel's "serving" rule, written once. The XDP program (ingress fence, VIP ARP), the TC
//! egress program and the agent's view of its kernel (`KernelView`, the lease-lapsed input of the
//! HA engine) all call [`fence_reasons`], so they can never disagree on whether a node serves.
//!
//! A node serves database clients when no reason holds:
//! - [`REASON_FENCED`]: the agent set [`FENCE_FENCED`];
//! - [`REASON_EPOCH`]: an authenticated heartbeat carried a higher epoch than the one this node
//!   holds (`lease.max_epoch_seen > fence.epoch`);
//! - [`REASON_LAPSED`]: the lease is enforced and either needs no endorsement (`lease_k == 0`, a
//!   contradiction the agent never writes: fail closed) or `now > deadline`.
//!
//! Members (the cluster's own nodes, `EFM_EXEMPT` value [`EXEMPT_MEMBER`]) are exempt only while
//! the explicit flag is the *only* reason and the agent asked for it with
//! [`FENCE_MEMBERS_EXEMPT`] ([`exempt_applies`]): the primary of the current epoch fenced for an
//! operator's clean hand-over keeps its standbys streaming until its database has stopped. In
//! every other state (agent start, a stale old primary whose agent adopted the newer epoch, a
//! newer epoch seen, a lapsed lease) members are fenced like any client — dropped, never reset,
//! by the programs (a reset walreceiver waits 5 s before it streams again; a dropped segment is
//! sent again). Always-exempt prefixes (`fence.exempt.hosts`, [`EXEMPT_ALWAYS`]) pass in every
//! state.

use crate::maps::{FenceState, LeaseState, FENCE_FENCED, FENCE_LEASE_ENFORCED, FENCE_MEMBERS_EXEMPT};

/// The agent fenced the node explicitly.
pub const REASON_FENCED: u32 = 1 << 0;
/// A higher epoch than the node's own was seen.
pub const REASON_EPOCH: u32 = 1 << 1;
/// The enforced lease lapsed (or is enforced with `k == 0`: fail closed).
pub const REASON_LAPSED: u32 = 1 << 2;

/// `EFM_EXEMPT` value: an always-exempt prefix (`fence.exempt.hosts`).
pub const EXEMPT_ALWAYS: u32 = 1;
/// `EFM_EXEMPT` value: a cluster member, exempt only while the node is fenced explicitly only.
pub const EXEMPT_MEMBER: u32 = 2;

/// Which fence reasons hold (`REASON_*` bits; 0: the node serves). Pure: `now_ns` is
/// `CLOCK_MONOTONIC` (`bpf_ktime_get_ns` in the kernel).
#[inline(always)]
#[must_use]
pub fn fence_reasons(fence: &FenceState, lease: &LeaseState, now_ns: u64) -> u32 {
    let mut r = 0;
    if fence.flags & FENCE_FENCED != 0 {
        r |= REASON_FENCED;
    }
    if lease.max_epoch_seen > fence.epoch {
        r |= REASON_EPOCH;
    }
    if fence.flags & FENCE_LEASE_ENFORCED != 0 && (fence.lease_k == 0 || now_ns > lease.deadline_ns) {
        r |= REASON_LAPSED;
    }
    r
}

/// Whether a node with these fence reasons serves clients.
#[inline(always)]
#[must_use]
pub const fn serves(reasons: u32) -> bool {
    reasons == 0
}

/// Whether a source (ingress) or destination (egress) whose `EFM_EXEMPT` lookup gave `kind`
/// (0: not in the trie) passes a fence with these `reasons` (non-zero), the agent's
/// `FenceState::flags` being `fence_flags`.
#[inline(always)]
#[must_use]
pub const fn exempt_applies(kind: u32, reasons: u32, fence_flags: u32) -> bool {
    kind == EXEMPT_ALWAYS
        || (kind == EXEMPT_MEMBER && reasons == REASON_FENCED && fence_flags & FENCE_MEMBERS_EXEMPT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::FENCE_RESET;

    const NOW: u64 = 1_000_000_000;

    fn fence(flags: u32, epoch: u64, k: u32) -> FenceState {
        FenceState { flags, epoch, lease_k: k, lease_timeout_ns: 1_000_000, ..FenceState::default() }
    }

    fn lease(deadline_ns: u64, max_epoch_seen: u64) -> LeaseState {
        LeaseState { deadline_ns, max_epoch_seen, ..LeaseState::default() }
    }

    #[test]
    fn unfenced_node_serves() {
        assert_eq!(fence_reasons(&fence(0, 3, 0), &lease(0, 3), NOW), 0);
        assert_eq!(fence_reasons(&fence(FENCE_RESET, 3, 1), &lease(0, 0), NOW), 0, "lease not enforced");
        assert!(serves(0));
    }

    #[test]
    fn explicit_flag() {
        assert_eq!(fence_reasons(&fence(FENCE_FENCED, 3, 0), &lease(0, 3), NOW), REASON_FENCED);
        assert!(!serves(REASON_FENCED));
    }

    #[test]
    fn higher_epoch_fences_equal_does_not() {
        assert_eq!(fence_reasons(&fence(0, 3, 0), &lease(0, 4), NOW), REASON_EPOCH);
        assert_eq!(fence_reasons(&fence(0, 4, 0), &lease(0, 4), NOW), 0);
        assert_eq!(fence_reasons(&fence(0, 5, 0), &lease(0, 4), NOW), 0, "agent ahead of the kernel");
    }

    #[test]
    fn enforced_lease_valid_until_deadline_inclusive() {
        let f = fence(FENCE_LEASE_ENFORCED, 3, 1);
        assert_eq!(fence_reasons(&f, &lease(NOW, 3), NOW), 0, "now == deadline still serves");
        assert_eq!(fence_reasons(&f, &lease(NOW + 1, 3), NOW), 0);
        assert_eq!(fence_reasons(&f, &lease(NOW - 1, 3), NOW), REASON_LAPSED);
        assert_eq!(fence_reasons(&f, &lease(0, 3), NOW), REASON_LAPSED, "never endorsed");
    }

    #[test]
    fn enforced_lease_with_k_zero_fails_closed() {
        let f = fence(FENCE_LEASE_ENFORCED, 3, 0);
        assert_eq!(fence_reasons(&f, &lease(u64::MAX, 3), NOW), REASON_LAPSED);
    }

    #[test]
    fn reasons_accumulate() {
        let f = fence(FENCE_FENCED | FENCE_LEASE_ENFORCED, 3, 2);
        assert_eq!(fence_reasons(&f, &lease(0, 9), NOW), REASON_FENCED | REASON_EPOCH | REASON_LAPSED);
    }

    #[test]
    fn members_exempt_only_while_fenced_explicitly_only() {
        let ask = FENCE_FENCED | FENCE_MEMBERS_EXEMPT;
        for (reasons, member) in [
            (REASON_FENCED, true),
            (REASON_EPOCH, false),
            (REASON_LAPSED, false),
            (REASON_FENCED | REASON_EPOCH, false),
            (REASON_FENCED | REASON_LAPSED, false),
            (REASON_EPOCH | REASON_LAPSED, false),
        ] {
            assert_eq!(exempt_applies(EXEMPT_MEMBER, reasons, ask), member, "member, reasons {reasons:#b}");
            assert!(
                !exempt_applies(EXEMPT_MEMBER, reasons, FENCE_FENCED),
                "member without the agent's request, reasons {reasons:#b}"
            );
            assert!(exempt_applies(EXEMPT_ALWAYS, reasons, 0), "always-exempt, reasons {reasons:#b}");
            assert!(!exempt_applies(0, reasons, ask), "not exempt, reasons {reasons:#b}");
            assert!(!exempt_applies(77, reasons, ask), "unknown kind");
        }
    }
}
