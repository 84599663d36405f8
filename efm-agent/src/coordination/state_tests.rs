use super::*;

fn a(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 7800))
}

const DB: NodeInfo = NodeInfo { kind: NodeKind::Database, priority: 1, promotable: true };
const WITNESS: NodeInfo = NodeInfo { kind: NodeKind::Witness, priority: 0, promotable: false };

/// Three database nodes and a witness, registered; primary 1 at epoch 1.
fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2), a(3), a(4)]);
    for n in 1..=3 {
        apply(&mut s, &Command::Register { node: a(n), info: DB }).unwrap();
    }
    apply(&mut s, &Command::Register { node: a(4), info: WITNESS }).unwrap();
    apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 0 }).unwrap();
    s
}

/// Votes from every voter but the primary against the current epoch.
fn vote(s: &mut ClusterState) {
    let e = s.epoch;
    for n in 1..=4 {
        if s.primary != Some(a(n)) {
            apply(s, &Command::Vote { voter: a(n), epoch: e }).unwrap();
        }
    }
}

fn promote(to: SocketAddr, expected_epoch: u64) -> Command {
    Command::Promote { candidate: to, expected_epoch, lsn: 0x100, timeline: 2, at_unix_ms: 5, reason: "test".into() }
}

#[test]
fn coordination_register_only_allowed() {
    let mut s = ClusterState::default();
    assert_eq!(apply(&mut s, &Command::Register { node: a(1), info: DB }), Err(Rejected::NotAllowed(a(1))));
    assert!(s.nodes.is_empty());
    apply(&mut s, &Command::AllowNode { node: a(1) }).unwrap();
    assert!(apply(&mut s, &Command::Register { node: a(1), info: DB }).unwrap().changed);
    assert!(!apply(&mut s, &Command::Register { node: a(1), info: DB }).unwrap().changed);
    assert_eq!(s.info(&a(1)), Some(&DB));
}

#[test]
fn coordination_membership_allows() {
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2)]);
    assert!(s.allowed.contains(&a(2)));
    apply(&mut s, &Command::Register { node: a(2), info: DB }).unwrap();
}

#[test]
fn coordination_set_primary_rules() {
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2), a(4)]);
    // Unregistered.
    assert_eq!(
        apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 0 }),
        Err(Rejected::NotRegistered(a(1)))
    );
    apply(&mut s, &Command::Register { node: a(1), info: DB }).unwrap();
    apply(&mut s, &Command::Register { node: a(4), info: WITNESS }).unwrap();
    assert_eq!(
        apply(&mut s, &Command::SetPrimary { node: a(4), expected_epoch: 0 }),
        Err(Rejected::NotPromotable(a(4)))
    );
    assert_eq!(
        apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 3 }),
        Err(Rejected::StaleEpoch { expected: 3, current: 0 })
    );
    let r = apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 0 }).unwrap();
    assert_eq!((r.epoch, r.primary), (1, Some(a(1))));
    // Only when there is none.
    apply(&mut s, &Command::Register { node: a(2), info: DB }).unwrap();
    assert_eq!(
        apply(&mut s, &Command::SetPrimary { node: a(2), expected_epoch: 1 }),
        Err(Rejected::PrimaryExists(a(1)))
    );
    assert_eq!(s.epoch, 1);
    assert!(s.history.is_empty());
}

#[test]
fn coordination_promote_bumps_epoch_and_records() {
    let mut s = cluster();
    vote(&mut s);
    let r = apply(&mut s, &promote(a(2), 1)).unwrap();
    assert_eq!((r.epoch, r.primary, r.changed), (2, Some(a(2)), true));
    assert_eq!(s.history.len(), 1);
    let h = &s.history[0];
    assert_eq!((h.epoch, h.node, h.lsn, h.timeline, h.at_unix_ms, h.reason.as_str()), (2, a(2), 0x100, 2, 5, "test"));
}

#[test]
fn coordination_at_most_one_promotion_per_epoch() {
    let mut s = cluster();
    vote(&mut s);
    // Two candidates race for epoch 1: the first committed wins, the second is stale.
    apply(&mut s, &promote(a(2), 1)).unwrap();
    assert_eq!(apply(&mut s, &promote(a(3), 1)), Err(Rejected::StaleEpoch { expected: 1, current: 2 }));
    // Even the same candidate again.
    assert_eq!(apply(&mut s, &promote(a(2), 1)), Err(Rejected::StaleEpoch { expected: 1, current: 2 }));
    assert_eq!((s.primary, s.epoch, s.history.len()), (Some(a(2)), 2, 1));
}

#[test]
fn coordination_promote_stale_and_future_epochs_rejected() {
    let mut s = cluster();
    assert_eq!(apply(&mut s, &promote(a(2), 0)), Err(Rejected::StaleEpoch { expected: 0, current: 1 }));
    assert_eq!(apply(&mut s, &promote(a(2), 7)), Err(Rejected::StaleEpoch { expected: 7, current: 1 }));
    assert_eq!((s.primary, s.epoch), (Some(a(1)), 1));
}

#[test]
fn coordination_promote_candidate_checks() {
    let mut s = cluster();
    let before = s.clone();
    assert_eq!(apply(&mut s, &promote(a(1), 1)), Err(Rejected::AlreadyPrimary(a(1))));
    assert_eq!(apply(&mut s, &promote(a(4), 1)), Err(Rejected::NotPromotable(a(4))));
    assert_eq!(apply(&mut s, &promote(a(9), 1)), Err(Rejected::NotAllowed(a(9))));
    apply(&mut s, &Command::SetPriority { node: a(2), priority: 0 }).unwrap();
    assert_eq!(apply(&mut s, &promote(a(2), 1)), Err(Rejected::NotPromotable(a(2))));
    apply(&mut s, &Command::Register { node: a(3), info: NodeInfo { promotable: false, ..DB } }).unwrap();
    assert_eq!(apply(&mut s, &promote(a(3), 1)), Err(Rejected::NotPromotable(a(3))));
    assert_eq!((s.primary, s.epoch, &s.history), (before.primary, before.epoch, &before.history));
    // Promotion from no primary (the old one was never recorded) is fine.
    let mut s = cluster();
    s.primary = None;
    apply(&mut s, &promote(a(2), 1)).unwrap();
}

#[test]
fn coordination_history_keeps_last_50() {
    let mut s = cluster();
    for e in 1..=60u64 {
        vote(&mut s);
        let to = if e % 2 == 1 { a(2) } else { a(1) };
        apply(&mut s, &promote(to, e)).unwrap();
    }
    assert_eq!(s.epoch, 61);
    assert_eq!(s.history.len(), HISTORY_LEN);
    assert_eq!(s.history.first().unwrap().epoch, 12);
    assert_eq!(s.history.last().unwrap().epoch, 61);
}

#[test]
fn coordination_promotion_needs_a_majority_of_votes() {
    let mut s = cluster();
    // 4 allowed nodes: 3 votes needed.
    assert_eq!(s.votes_needed(), 3);
    let not_enough = |have| Err(Rejected::NotEnoughVotes { have, need: 3 });
    assert_eq!(apply(&mut s, &promote(a(2), 1)), not_enough(0));
    apply(&mut s, &Command::Vote { voter: a(2), epoch: 1 }).unwrap();
    let again = apply(&mut s, &Command::Vote { voter: a(2), epoch: 1 });
    assert!(!again.unwrap().changed, "counted once");
    apply(&mut s, &Command::Vote { voter: a(4), epoch: 1 }).unwrap();
    assert_eq!(apply(&mut s, &promote(a(2), 1)), not_enough(2));
    // Votes for another epoch or from strangers do not count.
    assert_eq!(
        apply(&mut s, &Command::Vote { voter: a(3), epoch: 0 }),
        Err(Rejected::StaleEpoch { expected: 0, current: 1 })
    );
    let stranger = apply(&mut s, &Command::Vote { voter: a(9), epoch: 1 });
    assert_eq!(stranger, Err(Rejected::NotAllowed(a(9))));
    apply(&mut s, &Command::Vote { voter: a(3), epoch: 1 }).unwrap();
    apply(&mut s, &promote(a(2), 1)).unwrap();
    // The new epoch starts without votes.
    assert!(s.votes.is_empty());
    assert_eq!(apply(&mut s, &promote(a(3), 2)), not_enough(0));
}

#[test]
fn coordination_allow_disallow() {
    let mut s = cluster();
    assert!(!apply(&mut s, &Command::AllowNode { node: a(2) }).unwrap().changed);
    assert_eq!(apply(&mut s, &Command::DisallowNode { node: a(1) }), Err(Rejected::IsPrimary(a(1))));
    assert!(apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap().changed);
    assert!(!s.allowed.contains(&a(3)) && !s.nodes.contains_key(&a(3)));
    assert!(s.disallowed.contains(&a(3)));
    // The joint membership that removes it still lists it: it stays disallowed.
    apply_membership(&mut s, [a(1), a(2), a(3)]);
    assert!(!s.allowed.contains(&a(3)));
    assert!(!apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap().changed);
    assert_eq!(apply(&mut s, &promote(a(3), 1)), Err(Rejected::NotAllowed(a(3))));
    assert_eq!(apply(&mut s, &Command::Register { node: a(3), info: DB }), Err(Rejected::NotAllowed(a(3))));
    // Allowing it again clears the removal.
    assert!(apply(&mut s, &Command::AllowNode { node: a(3) }).unwrap().changed);
    assert!(s.disallowed.is_empty());
    apply(&mut s, &Command::Register { node: a(3), info: DB }).unwrap();
}

#[test]
fn coordination_set_priority() {
    let mut s = cluster();
    assert!(apply(&mut s, &Command::SetPriority { node: a(3), priority: 9 }).unwrap().changed);
    assert_eq!(s.nodes[&a(3)].priority, 9);
    assert!(!apply(&mut s, &Command::SetPriority { node: a(3), priority: 9 }).unwrap().changed);
    assert_eq!(apply(&mut s, &Command::SetPriority { node: a(8), priority: 1 }), Err(Rejected::NotAllowed(a(8))));
    apply(&mut s, &Command::AllowNode { node: a(8) }).unwrap();
    assert_eq!(apply(&mut s, &Command::SetPriority { node: a(8), priority: 1 }), Err(Rejected::NotRegistered(a(8))));
}

#[test]
fn coordination_flags() {
    let mut s = cluster();
    assert!(s.auto_failover_or(true));
    assert!(!s.auto_failover_or(false));
    assert!(apply(&mut s, &Command::SetAutoFailover(false)).unwrap().changed);
    assert!(!s.auto_failover_or(true));
    assert!(!apply(&mut s, &Command::SetAutoFailover(false)).unwrap().changed);
    assert!(apply(&mut s, &Command::SetPaused(true)).unwrap().changed);
    assert!(s.paused);
    assert!(!apply(&mut s, &Command::SetPaused(true)).unwrap().changed);
}

#[test]
#[allow(clippy::too_many_lines)]
fn coordination_switchover() {
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2)]);
    apply(&mut s, &Command::Register { node: a(2), info: DB }).unwrap();
    assert_eq!(
        apply(
            &mut s,
            &Command::RequestSwitchover { to: a(2), expected_epoch: 0, demote: true, quiet: false, source: None }
        ),
        Err(Rejected::NoPrimary)
    );
    let mut s = cluster();
    assert_eq!(
        apply(
            &mut s,
            &Command::RequestSwitchover { to: a(2), expected_epoch: 0, demote: true, quiet: false, source: None }
        ),
        Err(Rejected::StaleEpoch { expected: 0, current: 1 })
    );
    assert_eq!(
        apply(
            &mut s,
            &Command::RequestSwitchover { to: a(1), expected_epoch: 1, demote: true, quiet: false, source: None }
        ),
        Err(Rejected::AlreadyPrimary(a(1)))
    );
    assert_eq!(
        apply(
            &mut s,
            &Command::RequestSwitchover { to: a(4), expected_epoch: 1, demote: true, quiet: false, source: None }
        ),
        Err(Rejected::NotPromotable(a(4)))
    );
    apply(
        &mut s,
        &Command::RequestSwitchover { to: a(2), expected_epoch: 1, demote: true, quiet: false, source: None },
    )
    .unwrap();
    assert_eq!(
        s.switchover,
        Some(Switchover { from: a(1), to: a(2), requested_epoch: 1, demote: true, quiet: false, source: None })
    );
    assert_eq!(
        apply(
            &mut s,
            &Command::RequestSwitchover { to: a(3), expected_epoch: 1, demote: true, quiet: false, source: None }
        ),
        Err(Rejected::SwitchoverPending(a(2)))
    );
    assert!(apply(&mut s, &Command::ClearSwitchover).unwrap().changed);
    assert!(!apply(&mut s, &Command::ClearSwitchover).unwrap().changed);
    // A promotion completes (clears) a pending switchover.
    apply(
        &mut s,
        &Command::RequestSwitchover { to: a(2), expected_epoch: 1, demote: true, quiet: false, source: None },
    )
    .unwrap();
    vote(&mut s);
    apply(&mut s, &promote(a(2), 1)).unwrap();
    assert_eq!(s.switchover, None);
    // Disallowing the target clears it too.
    apply(
        &mut s,
        &Command::RequestSwitchover { to: a(3), expected_epoch: 2, demote: true, quiet: false, source: None },
    )
    .unwrap();
    apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
    assert_eq!(s.switchover, None);
}

#[test]
fn stop_cluster_is_recorded_and_forgets_disallowed_nodes() {
    let mut s = cluster();
    apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
    assert!(s.disallowed.contains(&a(3)));
    apply(&mut s, &Command::StopCluster { at_unix_ms: 1234 }).unwrap();
    assert_eq!(s.stopped_at_unix_ms, Some(1234));
    assert!(s.disallowed.is_empty());
    // The primary and the epoch are untouched: databases keep running as they are.
    assert_eq!((s.primary, s.epoch), (Some(a(1)), 1));
}

#[test]
fn log_entries_from_before_the_switchover_fields_still_decode() {
    let old = r#"{"RequestSwitchover":{"to":"198.18.0.2:7800","expected_epoch":3}}"#;
    let cmd: Command = serde_json::from_str(old).unwrap();
    assert_eq!(
        cmd,
        Command::RequestSwitchover { to: a(2), expected_epoch: 3, demote: false, quiet: false, source: None }
    );
}

#[test]
fn coordination_state_roundtrips_json() {
    let mut s = cluster();
    vote(&mut s);
    apply(&mut s, &promote(a(2), 1)).unwrap();
    let j = serde_json::to_vec(&s).unwrap();
    assert_eq!(serde_json::from_slice::<ClusterState>(&j).unwrap(), s);
    let c = promote(a(3), 2);
    assert_eq!(serde_json::from_slice::<Command>(&serde_json::to_vec(&c).unwrap()).unwrap(), c);
}

fn vote_by(s: &mut ClusterState, voter: SocketAddr) -> Response {
    let epoch = s.epoch;
    apply(s, &Command::Vote { voter, epoch })
}

#[test]
fn quorum_counts_joined_members_not_addresses_only_allowed() {
    let mut s = cluster();
    assert_eq!((s.voters().len(), s.quorum()), (4, 3));
    // `efm allow-node` for two nodes whose agents have not started: the quorum stays.
    apply(&mut s, &Command::AllowNode { node: a(5) }).unwrap();
    apply(&mut s, &Command::AllowNode { node: a(6) }).unwrap();
    assert_eq!(s.allowed.len(), 6);
    assert_eq!((s.voters().len(), s.quorum(), s.votes_needed()), (4, 3, 3));
    assert!(!s.is_voter(&a(5)) && s.is_voter(&a(4)));
    // It cannot vote before it joined, so its vote cannot make up a majority either.
    assert_eq!(vote_by(&mut s, a(5)), Err(Rejected::NotJoined(a(5))));
    for n in 2..=4 {
        vote_by(&mut s, a(n)).unwrap();
    }
    assert!(s.promotion_votes_met());
    apply(&mut s, &promote(a(2), 1)).unwrap();
    // Joining (the Raft membership lists it) makes it a voter.
    apply_membership(&mut s, [a(1), a(2), a(3), a(4), a(5)]);
    assert_eq!((s.voters().len(), s.quorum()), (5, 3));
    assert!(s.is_voter(&a(5)) && !s.is_voter(&a(6)));
}

#[test]
fn a_failed_member_still_counts_until_disallowed() {
    // Nodes 3 and 4 joined; their agents are gone now (they do not vote). EFM 5: they count.
    let mut s = cluster();
    vote_by(&mut s, a(2)).unwrap();
    assert_eq!(s.missing_votes(), Some((1, 3)));
    assert_eq!(apply(&mut s, &promote(a(2), 1)), Err(Rejected::NotEnoughVotes { have: 1, need: 3 }));
    // The operator removes one: 3 voters, 2 needed; the failed primary's own vote (it fenced
    // itself first) makes the majority.
    apply(&mut s, &Command::DisallowNode { node: a(4) }).unwrap();
    apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
    assert_eq!((s.voters().len(), s.quorum()), (2, 2));
    assert_eq!(s.missing_votes(), Some((1, 2)));
    vote_by(&mut s, a(1)).unwrap();
    apply(&mut s, &promote(a(2), 1)).unwrap();
}

#[test]
fn a_promotion_needs_a_majority_of_every_voter_set_of_the_epoch() {
    // Three voters; the primary's lease needs one endorsement (k = 1).
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2), a(3)]);
    for n in 1..=3 {
        apply(&mut s, &Command::Register { node: a(n), info: DB }).unwrap();
    }
    apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 0 }).unwrap();
    assert_eq!(s.epoch_voter_sets.len(), 1);
    // Two nodes join one after the other. A primary cut off from the log may not have seen
    // either: its kernel still keeps its lease with node 2's endorsement alone.
    apply_membership(&mut s, [a(1), a(2), a(3), a(4)]);
    apply_membership(&mut s, [a(1), a(2), a(3), a(4), a(5)]);
    assert_eq!(s.epoch_voter_sets.len(), 3);
    assert_eq!(s.quorum(), 3);
    // Nodes 3, 4 and 5 are a majority of the five, but not of the three the primary may still
    // count on: without node 2 no promotion.
    for n in 3..=5 {
        vote_by(&mut s, a(n)).unwrap();
    }
    assert_eq!(s.missing_votes(), Some((1, 2)));
    assert_eq!(apply(&mut s, &promote(a(3), 1)), Err(Rejected::NotEnoughVotes { have: 1, need: 2 }));
    vote_by(&mut s, a(2)).unwrap();
    assert!(s.promotion_votes_met());
    apply(&mut s, &promote(a(3), 1)).unwrap();
    // The new epoch starts from the current voters only.
    assert_eq!(s.epoch_voter_sets, vec![s.voters()]);
    for n in [1, 2, 4] {
        vote_by(&mut s, a(n)).unwrap();
    }
    apply(&mut s, &promote(a(2), 2)).unwrap();
}

#[test]
fn disallowing_shrinks_every_voter_set_of_the_epoch() {
    let mut s = ClusterState::default();
    apply_membership(&mut s, [a(1), a(2), a(3), a(4), a(5)]);
    for n in 1..=5 {
        apply(&mut s, &Command::Register { node: a(n), info: DB }).unwrap();
    }
    apply(&mut s, &Command::SetPrimary { node: a(1), expected_epoch: 0 }).unwrap();
    apply(&mut s, &Command::DisallowNode { node: a(4) }).unwrap();
    apply(&mut s, &Command::DisallowNode { node: a(5) }).unwrap();
    assert_eq!(s.epoch_voter_sets, vec![[a(1), a(2), a(3)].into()]);
    vote_by(&mut s, a(2)).unwrap();
    vote_by(&mut s, a(3)).unwrap();
    apply(&mut s, &promote(a(2), 1)).unwrap();
}

#[test]
fn stop_cluster_forgets_the_allowed_list_but_keeps_members_and_the_epoch() {
    let mut s = cluster();
    vote(&mut s);
    apply(&mut s, &promote(a(2), 1)).unwrap();
    // Allowed but never joined, and one disallowed member.
    apply(&mut s, &Command::AllowNode { node: a(9) }).unwrap();
    apply(&mut s, &Command::DisallowNode { node: a(3) }).unwrap();
    let before = s.clone();
    apply(&mut s, &Command::StopCluster { at_unix_ms: 77 }).unwrap();
    assert_eq!(s.stopped_at_unix_ms, Some(77));
    assert!(s.disallowed.is_empty());
    // EFM 3.3: the allowed-host list is lost; what stays are the members (the `.nodes` list).
    assert_eq!(s.allowed, [a(1), a(2), a(4)].into());
    assert!(!s.allowed.contains(&a(9)), "allowed but never joined: must be allowed again");
    // Nothing is allowed back by the stop, and the quorum is unchanged.
    assert_eq!(s.voters(), before.voters());
    // The fencing token never goes back: epoch, primary and history stay.
    assert_eq!((s.epoch, s.primary, &s.history), (2, Some(a(2)), &before.history));
    // After a restart the members go on: a vote and a promotion still apply.
    vote_by(&mut s, a(1)).unwrap();
    vote_by(&mut s, a(4)).unwrap();
    apply(&mut s, &promote(a(1), 2)).unwrap();
    // The address allowed before the stop cannot register until allowed again.
    assert_eq!(apply(&mut s, &Command::Register { node: a(9), info: DB }), Err(Rejected::NotAllowed(a(9))));
}

#[test]
fn a_state_from_before_membership_tracking_counts_every_allowed_node() {
    let mut s = cluster();
    s.members = None;
    s.epoch_voter_sets.clear();
    apply(&mut s, &Command::AllowNode { node: a(5) }).unwrap();
    assert_eq!((s.voters().len(), s.quorum()), (5, 3));
    // And stop-cluster cannot tell members from other allowed nodes: it keeps them all.
    apply(&mut s, &Command::StopCluster { at_unix_ms: 1 }).unwrap();
    assert_eq!(s.allowed.len(), 5);
    // Decoding such a state: the new fields default.
    let mut j: serde_json::Value = serde_json::to_value(cluster()).unwrap();
    j.as_object_mut().unwrap().remove("members");
    j.as_object_mut().unwrap().remove("epoch_voter_sets");
    let old: ClusterState = serde_json::from_value(j).unwrap();
    assert_eq!((old.members, old.epoch_voter_sets.len()), (None, 0));
}
