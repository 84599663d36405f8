//! The `efm cluster-status` text report.
//!
//! Layout follows EFM's report (3.3 guide section 4.2.1; 2.0 guide section 4.2.1 for the
//! column widths and the idle-node table), with EFM 5 wording ("Primary", WAL LSN columns):
//!
//! ```text
//! Cluster Status: NAME
//!
//! <TAB>Agent Type  Address              Agent  DB       VIP               HB age   RTT p50/p99
//! <TAB>---------------------------------------------------------------------------------------
//! <TAB>Primary     198.18.0.1           UP     UP       198.18.0.100*     -        -
//!
//! Allowed node host list:
//! <TAB>198.18.0.1 198.18.0.2
//!
//! Membership coordinator: 198.18.0.1
//!
//! Standby priority host list:
//! <TAB>198.18.0.2
//!
//! Promote Status:
//!
//! <TAB>DB Type     Address              WAL Received LSN   WAL Replayed LSN   Info
//! <TAB>---------------------------------------------------------------------------
//! <TAB>Primary     198.18.0.1                              0/31000140
//! <TAB>Standby     198.18.0.2           0/31000140         0/31000140
//!
//! <TAB>Standby database(s) in sync with primary. It is safe to promote.
//! ```
//!
//! followed, when automatic failover is off, by "<TAB>Automatic failover is disabled." under the
//! promote verdict (the verdict says whether a promotion would be safe; this line says none will
//! happen by itself), then, when there are idle nodes, by "Idle Node Status (idle nodes ignored in WAL LSN
//! comparisons):" and its table, and by `messages`, one per line. Our additions are the "HB
//! age" and "RTT p50/p99" columns and, when members are missing, a "Missing nodes:" table
//! after the first one.
//!
//! EFM pads columns to fixed widths; those widths are our minimums and a column grows when
//! its content (an IPv6 address, say) is longer. Rows keep two spaces between columns, lines
//! carry no trailing blanks, and the dashes run the full width of the table.

use std::fmt::Write as _;

use super::{
    lsn_in_sync, promote_order_standbys, promotion_problems, sorted_nodes, AgentType, ClusterStatus, Heartbeat,
    NodeStatus, Problem, LSN_UNKNOWN,
};

const INDENT: &str = "\t";
const SAFE_TO_PROMOTE: &str = "Standby database(s) in sync with primary. It is safe to promote.";
const NOT_IN_SYNC: &str = "One or more standby databases are not in sync with the primary.";
const NOT_SAFE: &str = "It is not safe to promote.";
const EMPTY_LIST: &str = "(List is empty.)";
const AUTO_FAILOVER_OFF: &str = "Automatic failover is disabled.";

/// Renders the `efm cluster-status` report.
#[must_use]
pub fn render_text(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Cluster Status: {}", status.efm.cluster);
    out.push('\n');
    out.push_str(&cluster_table(status));

    if !status.missing_nodes.is_empty() {
        out.push_str("\nMissing nodes:\n\n");
        out.push_str(&missing_table(status));
    }

    out.push_str("\nAllowed node host list:\n");
    host_list(&mut out, &status.allowed_nodes);

    let _ = writeln!(out, "\nMembership coordinator: {}", status.membership_coordinator);

    out.push_str("\nStandby priority host list:\n");
    host_list(&mut out, &status.failover_priority);

    out.push_str("\nPromote Status:\n\n");
    out.push_str(&promote_table(status));
    out.push('\n');
    for line in promote_verdict(status) {
        let _ = writeln!(out, "{INDENT}{line}");
    }
    if status.efm.auto_failover == Some(false) {
        let _ = writeln!(out, "{INDENT}{AUTO_FAILOVER_OFF}");
    }

    let idle: Vec<(&str, &NodeStatus)> =
        sorted_nodes(status).into_iter().filter(|(_, n)| n.agent_type == AgentType::Idle).collect();
    if !idle.is_empty() {
        out.push_str("\nIdle Node Status (idle nodes ignored in WAL LSN comparisons):\n\n");
        let rows: Vec<Vec<String>> = idle
            .iter()
            .map(|(addr, n)| {
                vec![(*addr).to_owned(), received(n).to_owned(), replayed(n).to_owned(), info(n).to_owned()]
            })
            .collect();
        out.push_str(&table(
            &[("Address", 21), ("WAL Received LSN", 19), ("WAL Replayed LSN", 19), ("Info", 0)],
            &rows,
        ));
    }

    if !status.messages.is_empty() {
        out.push('\n');
        for message in &status.messages {
            let _ = writeln!(out, "{message}");
        }
    }
    out
}

fn cluster_table(status: &ClusterStatus) -> String {
    let rows: Vec<Vec<String>> = sorted_nodes(status)
        .into_iter()
        .map(|(addr, n)| {
            let vip = if n.vip.is_empty() {
                String::new()
            } else if n.vip_active {
                format!("{}*", n.vip)
            } else {
                n.vip.clone()
            };
            vec![
                n.agent_type.label().to_owned(),
                addr.to_owned(),
                n.agent.label().to_owned(),
                n.db.label().to_owned(),
                vip,
                hb_age(&n.heartbeat),
                rtt(&n.heartbeat),
            ]
        })
        .collect();
    table(
        &[("Agent Type", 12), ("Address", 21), ("Agent", 7), ("DB", 9), ("VIP", 18), ("HB age", 9), ("RTT p50/p99", 0)],
        &rows,
    )
}

fn missing_table(status: &ClusterStatus) -> String {
    let default = super::MissingNode::default();
    let rows: Vec<Vec<String>> = status
        .missing_nodes
        .iter()
        .map(|addr| {
            let m = status.efm.missing.get(addr).unwrap_or(&default);
            vec![
                m.last_type.map_or("Unknown", AgentType::label).to_owned(),
                addr.clone(),
                m.heartbeat.verdict.label().to_owned(),
                hb_age(&m.heartbeat),
            ]
        })
        .collect();
    table(&[("Agent Type", 12), ("Address", 21), ("Heartbeat", 25), ("HB age", 0)], &rows)
}

fn promote_table(status: &ClusterStatus) -> String {
    let primaries = sorted_nodes(status).into_iter().filter(|(_, n)| n.agent_type == AgentType::Primary);
    let rows: Vec<Vec<String>> = primaries
        .chain(promote_order_standbys(status))
        .map(|(addr, n)| {
            // On the primary EFM leaves "received" empty and shows its current LSN as replayed.
            let received = if n.agent_type == AgentType::Primary { "" } else { received(n) };
            vec![
                n.agent_type.label().to_owned(),
                addr.to_owned(),
                received.to_owned(),
                replayed(n).to_owned(),
                info(n).to_owned(),
            ]
        })
        .collect();
    table(&[("DB Type", 12), ("Address", 21), ("WAL Received LSN", 19), ("WAL Replayed LSN", 19), ("Info", 0)], &rows)
}

/// The verdict lines under the Promote Status table.
fn promote_verdict(status: &ClusterStatus) -> Vec<String> {
    let problems = promotion_problems(status);
    if problems.is_empty() {
        return vec![SAFE_TO_PROMOTE.to_owned()];
    }
    let mut lines: Vec<String> =
        problems.iter().filter(|p| !matches!(p, Problem::NotInSync { .. })).map(ToString::to_string).collect();
    let behind: Vec<String> =
        problems.iter().filter(|p| matches!(p, Problem::NotInSync { .. })).map(ToString::to_string).collect();
    if !behind.is_empty() {
        lines.push(NOT_IN_SYNC.to_owned());
        lines.extend(behind);
    }
    let in_sync = in_sync_standbys(status);
    if in_sync.is_empty() {
        lines.push(NOT_SAFE.to_owned());
    } else {
        lines.push(format!("Standby database(s) in sync with primary, safe to promote: {}.", in_sync.join(" ")));
    }
    lines
}

/// Standbys in sync with the single primary, in promotion order.
fn in_sync_standbys(status: &ClusterStatus) -> Vec<&str> {
    let mut primaries = status.nodes.values().filter(|n| n.agent_type == AgentType::Primary);
    let (Some(primary), None) = (primaries.next(), primaries.next()) else {
        return Vec::new();
    };
    let Some(primary_lsn) = primary.lsn.as_deref() else {
        return Vec::new();
    };
    promote_order_standbys(status)
        .into_iter()
        .filter(|(_, n)| n.lsn.as_deref().is_some_and(|l| lsn_in_sync(primary_lsn, l)))
        .map(|(addr, _)| addr)
        .collect()
}

fn received(n: &NodeStatus) -> &str {
    n.promotion.received_lsn.as_deref().unwrap_or(LSN_UNKNOWN)
}

fn replayed(n: &NodeStatus) -> &str {
    n.lsn.as_deref().unwrap_or(LSN_UNKNOWN)
}

fn info(n: &NodeStatus) -> &str {
    n.lsn_info.as_deref().unwrap_or("")
}

fn host_list(out: &mut String, hosts: &[String]) {
    if hosts.is_empty() {
        let _ = writeln!(out, "{INDENT}{EMPTY_LIST}");
    } else {
        let _ = writeln!(out, "{INDENT}{}", hosts.join(" "));
    }
}

/// "HB age" column: time since the node last answered.
fn hb_age(hb: &Heartbeat) -> String {
    hb.age_ms.map_or_else(|| "-".to_owned(), |ms| duration(ms, "ms", "s"))
}

/// "RTT p50/p99" column.
fn rtt(hb: &Heartbeat) -> String {
    let one = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |us| duration(us, "us", "ms"));
    match (hb.rtt_p50_us, hb.rtt_p99_us) {
        (None, None) => "-".to_owned(),
        (p50, p99) => format!("{}/{}", one(p50), one(p99)),
    }
}

/// Formats `value` small units: as is below 1000, else in the next unit (×1000) with one
/// decimal below 100 of it.
fn duration(value: u64, unit: &str, big_unit: &str) -> String {
    if value < 1000 {
        format!("{value}{unit}")
    } else if value < 100_000 {
        format!("{}.{}{big_unit}", value / 1000, value % 1000 / 100)
    } else {
        format!("{}{big_unit}", value / 1000)
    }
}

/// Left-aligned table: each column is as wide as its minimum or its longest cell plus two
/// spaces, whichever is larger; the last column is not padded.
fn table(columns: &[(&str, usize)], rows: &[Vec<String>]) -> String {
    let last = columns.len() - 1;
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, min))| {
            let longest = rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(header.chars().count()))
                .max()
                .unwrap_or(0);
            if i == last {
                longest
            } else {
                (*min).max(longest + 2)
            }
        })
        .collect();
    let line = |cells: &[&str]| -> String {
        let mut s = String::from(INDENT);
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(s, "{cell:<width$}", width = widths[i]);
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let mut out = line(&headers);
    let _ = writeln!(out, "{INDENT}{}", "-".repeat(widths.iter().sum()));
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

#[cfg(test)]
pub(super) fn hb_age_for_test(hb: &Heartbeat) -> String {
    hb_age(hb)
}
