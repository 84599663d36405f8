//! Answers to the admin socket's status requests, built from the agent's published facts
//! ([`Facts`]: each read with `borrow()`, copied out, never held across an await).
//!
//! `cluster-status` combines what this node knows directly (its own role and database, and each
//! peer's heartbeat verdict from the kernel's slots) with a check of every live peer's database
//! bounded by `remote.timeout`, the way EFM's agents query each other's databases.
//! The "membership coordinator" is the coordination log's leader.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;

use crate::{
    detector::{PeerHealth, Verdict},
    heartbeat::monotonic_ns,
    localdb,
    node::{Facts, Role},
    postgres::{self, DbInfo},
    status::{self, AgentState, AgentType, ClusterStatus, DbState, MissingNode, NodeStatus, Promotion},
};

fn agent_type(r: Role) -> AgentType {
    match r {
        Role::Primary => AgentType::Primary,
        Role::Standby => AgentType::Standby,
        Role::Witness => AgentType::Witness,
        Role::Idle => AgentType::Idle,
    }
}

fn verdict(v: Verdict) -> status::Verdict {
    match v {
        Verdict::Alive => status::Verdict::Alive,
        Verdict::AgentDead => status::Verdict::AgentDeadNodeAlive,
        Verdict::NodeDead => status::Verdict::NodeDead,
        Verdict::Unknown => status::Verdict::Unknown,
    }
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn us(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn heartbeat(h: &PeerHealth) -> status::Heartbeat {
    status::Heartbeat {
        age_ms: ms(h.agent_age.or(h.node_age)),
        rtt_p50_us: us(h.rtt_p50),
        rtt_p99_us: us(h.rtt_p99),
        verdict: verdict(h.verdict),
    }
}

/// `node-status`: this node and the kernel's view of each peer.
#[must_use]
pub fn node_status(facts: &Facts) -> serde_json::Value {
    let id = &facts.id;
    let local = facts.db.borrow().clone();
    let status = facts.status.borrow().clone();
    let custom_monitor_failed = facts.custom_monitor.borrow().clone();
    let now = monotonic_ns();
    let info = local.view.info.as_ref();
    let peers: Vec<_> = facts
        .peers
        .borrow()
        .iter()
        .map(|p| {
            let h = p.health;
            json!({
                "address": p.addr.to_string(),
                "nodeId": p.node_id,
                "verdict": h.map_or("unknown".to_owned(), |h| h.verdict.to_string()),
                "verdictSinceNs": h.map(|h| h.since_ns),
                "verdictAgeMs": h.map(|h| now.saturating_sub(h.since_ns) / 1_000_000),
                "agentAgeMs": h.and_then(|h| ms(h.agent_age)),
                "nodeAgeMs": h.and_then(|h| ms(h.node_age)),
                "rttLastUs": h.and_then(|h| us(h.last_rtt)),
                "rttP50Us": h.and_then(|h| us(h.rtt_p50)),
                "rttP99Us": h.and_then(|h| us(h.rtt_p99)),
                "type": h.filter(|h| h.verdict == Verdict::Alive).map(|h| Role::from_bits(h.role).to_string()),
                "epoch": h.map(|h| h.epoch),
                "lsn": h.filter(|h| h.lsn != 0).map(|h| postgres::Lsn(h.lsn).to_string()),
            })
        })
        .collect();
    json!({
        "cluster": id.config.cluster,
        "address": id.me.to_string(),
        "nodeId": id.node_id,
        "type": local.role.to_string(),
        "epoch": status.epoch,
        "outcome": status.outcome,
        "monitoring": match &status.suspended {
            None => "active".to_owned(),
            Some(sus) => format!("suspended: {}", sus.reason),
        },
        "customMonitorFailure": custom_monitor_failed,
        "kernel": status.kernel,
        "leader": status.leader.map(|l| l.to_string()),
        "xdp": id.attachment,
        "monotonicNs": now,
        "db": {
            "state": match local.view.up { Some(true) => "UP", Some(false) => "DOWN", None => "UNKNOWN" },
            "inRecovery": info.map(|i| i.in_recovery),
            "lsn": local.view.lsn().map(|l| l.to_string()),
            "currentLsn": info.and_then(|i| i.current_lsn).map(|l| l.to_string()),
            "receiveLsn": info.and_then(|i| i.receive_lsn).map(|l| l.to_string()),
            "replayLsn": info.and_then(|i| i.replay_lsn).map(|l| l.to_string()),
            "timeline": info.and_then(|i| i.timeline),
            "streaming": info.map(|i| i.is_streaming),
            "error": local.view.error,
        },
        "peers": peers,
    })
}

fn db_row(
    kind: AgentType,
    up: Option<bool>,
    info: Option<&DbInfo>,
) -> (DbState, Option<String>, Option<String>, Option<String>) {
    if kind == AgentType::Witness {
        return (DbState::NotApplicable, None, None, None);
    }
    let state = match up {
        Some(true) => DbState::Up,
        Some(false) => DbState::Down,
        None => DbState::Unknown,
    };
    let lsn = info.and_then(|i| if i.in_recovery { i.replay_lsn } else { i.current_lsn }).map(|l| l.to_string());
    let received = info.filter(|i| i.in_recovery).and_then(|i| i.receive_lsn).map(|l| l.to_string());
    let lsn_info = info.map(|i| {
        if i.in_recovery {
            format!(
                "{} (timeline {})",
                if i.is_streaming { "streaming" } else { "not streaming" },
                i.timeline.map_or("?".into(), |t| t.to_string())
            )
        } else {
            format!("primary (timeline {})", i.timeline.map_or("?".into(), |t| t.to_string()))
        }
    });
    (state, lsn.or_else(|| Some(status::LSN_UNKNOWN.to_owned())), lsn_info, received)
}

/// `cluster-status`: the EFM report's data (see [`crate::status`]).
///
/// Priorities and the allowed node host list come from the committed cluster state `cs` (what
/// `efm set-priority` / `allow-node` / `disallow-node` changed), when this node has it.
pub async fn cluster_status(
    facts: &Facts,
    cs: &crate::coordination::ClusterState,
) -> Result<serde_json::Value, String> {
    let (cfg, me, config_dir) = (&facts.id.config, facts.id.me, &facts.id.config_dir);
    let role = facts.effective_role();
    let db = facts.db.borrow().view.clone();
    let peers = facts.peers.borrow().clone();
    let status = facts.status.borrow().clone();
    let (epoch, leader) = (status.epoch, status.leader);
    let mut st = ClusterStatus {
        minimum_standbys: u32::try_from(cfg.minimum_standbys).unwrap_or(u32::MAX),
        ..ClusterStatus::default()
    };
    env!("CARGO_PKG_VERSION").clone_into(&mut st.efm.version);
    st.efm.epoch = epoch;
    st.efm.cluster.clone_from(&cfg.cluster);
    st.efm.auto_failover = Some(cs.auto_failover_or(cfg.auto_failover));
    let vip = cfg.virtual_ip.map(|v| v.to_string()).unwrap_or_default();
    let vip_here = |addr: &SocketAddr| {
        cfg.virtual_ip.is_some() && *addr == me && cfg.virtual_ip.and_then(crate::vip::interface_of).is_some()
    };
    let priority = |addr: &SocketAddr| match cs.info(addr) {
        Some(i) => Some(i.priority),
        None => cfg
            .priority_standbys
            .iter()
            .position(|p| p == &addr.ip().to_string() || p == &addr.to_string())
            .map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX)),
    };
    let promotable = |addr: &SocketAddr, default: bool| {
        cs.info(addr).map_or(default, crate::coordination::NodeInfo::can_be_promoted)
    };

    // This node.
    let kind = agent_type(role);
    let (db_state, lsn, lsn_info, received) = db_row(kind, db.up, db.info.as_ref());
    st.nodes.insert(
        me.ip().to_string(),
        NodeStatus {
            agent_type: kind,
            agent: AgentState::Up,
            db: db_state,
            vip: vip.clone(),
            vip_active: vip_here(&me),
            lsn,
            lsn_info,
            promotion: Promotion {
                received_lsn: received,
                priority: priority(&me),
                promotable: promotable(&me, cfg.promotable),
            },
            heartbeat: status::Heartbeat { verdict: status::Verdict::SelfNode, ..status::Heartbeat::default() },
        },
    );

    // Peers: live agents get a database check, the others are missing.
    let mut checks = Vec::new();
    for p in &peers {
        let Some(h) = p.health.filter(|h| h.verdict == Verdict::Alive) else {
            // A node removed from the members (`efm reset-members`, `disallow-node`) is not
            // missing: it no longer belongs to the cluster until it joins again.
            if !cs.allowed.is_empty() && !cs.is_voter(&p.addr) {
                continue;
            }
            st.add_missing(
                &p.addr.ip().to_string(),
                MissingNode {
                    last_type: p.health.filter(|h| h.role != 0).map(|h| agent_type(Role::from_bits(h.role))),
                    heartbeat: p.health.as_ref().map(heartbeat).unwrap_or_default(),
                },
            );
            continue;
        };
        let kind = agent_type(Role::from_bits(h.role));
        let target = localdb::target(cfg, config_dir, &p.addr.ip().to_string());
        let timeout = cfg.remote_timeout;
        let task = tokio::spawn(async move {
            if kind == AgentType::Witness {
                return Ok(None);
            }
            let target = target?;
            Ok::<_, String>(postgres::remote_check(&target, timeout).await.map_err(|e| e.to_string()).ok())
        });
        checks.push((p.addr, h, kind, task));
    }
    for (addr, h, kind, task) in checks {
        let info = task.await.map_err(|e| e.to_string())??;
        let up = if kind == AgentType::Witness { None } else { Some(info.is_some()) };
        let (db_state, lsn, lsn_info, received) = db_row(kind, up, info.as_ref());
        st.nodes.insert(
            addr.ip().to_string(),
            NodeStatus {
                agent_type: kind,
                agent: AgentState::Up,
                db: db_state,
                vip: vip.clone(),
                vip_active: false,
                lsn,
                lsn_info,
                promotion: Promotion {
                    received_lsn: received,
                    priority: priority(&addr),
                    promotable: kind == AgentType::Standby && promotable(&addr, true),
                },
                heartbeat: heartbeat(&h),
            },
        );
    }

    let mut allowed: Vec<SocketAddr> =
        if cs.allowed.is_empty() { cfg.nodes.clone() } else { cs.allowed.iter().copied().collect() };
    if !allowed.contains(&me) && cs.allowed.is_empty() {
        allowed.push(me);
    }
    allowed.sort();
    st.allowed_nodes = allowed.iter().map(|a| a.ip().to_string()).collect();
    st.membership_coordinator = leader.map(|l| l.ip().to_string()).unwrap_or_default();
    let mut standbys: Vec<(Option<u32>, String)> = st
        .nodes
        .iter()
        .filter(|(_, n)| {
            n.agent_type == AgentType::Standby && n.promotion.promotable && n.promotion.priority != Some(0)
        })
        .map(|(a, n)| (n.promotion.priority, a.clone()))
        .collect();
    standbys.sort_by(|a, b| (a.0.unwrap_or(u32::MAX), &a.1).cmp(&(b.0.unwrap_or(u32::MAX), &b.1)));
    st.failover_priority = standbys.into_iter().map(|(_, a)| a).collect();
    serde_json::to_value(&st).map_err(|e| e.to_string())
}
