//! The operator's commands that change the cluster, answered by the local agent over the admin
//! socket (`efm promote`, `resume`, `set-priority`, `allow-node`, `disallow-node`,
//! `stop-cluster`).
//!
//! Every command checks its arguments and the committed cluster state first and refuses with a
//! message naming what is wrong; what changes cluster state goes through the coordination log as
//! one entry, so it is applied by every node or by none (nothing is half-applied). Requests are
//! typed ([`AdminCommand`], shared with `efm`); node addresses are the operator's words (`IP` or
//! `IP:PORT`), resolved here against the cluster's nodes.
//!
//! # Promotion and switchover (`efm promote [-switchover [-sourcenode ADDR] [-quiet]]`)
//!
//! The agent picks the standby as EFM does (alive, database up, promotable; the best priority —
//! `efm set-priority` — then the most WAL; automatic failover instead puts the most WAL first,
//! since nothing stops the old primary cleanly there), asks for confirmation when it is behind the primary
//! (plain promotion only: a switchover stops the primary cleanly, which ships its last WAL), and
//! commits a hand-over request for the current epoch. The HA engine does the rest: the old
//! primary fences its kernel, with `-switchover` stops its database cleanly, and votes against
//! its own epoch; the log's leader promotes the chosen standby; the old primary then rejoins as
//! a standby of the new one (`-switchover`) or stays fenced (plain promotion). The command waits
//! until the new primary serves, or says why it did not.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    admin::{AdminCommand, Request, Response},
    config::Config,
    coordination::{ClusterState, Command, CoordError, Coordinator, NodeKind},
    detector::Verdict,
    localdb,
    node::{unix_ms, DbUpdate, DbView, Facts, PeerEntry},
    postgres,
};

/// The admin commands this module answers (the others are the status reports).
pub const COMMANDS: &[&str] =
    &["promote", "resume", "set-priority", "allow-node", "disallow-node", "stop-cluster", "reset-members", "rejoin"];

/// How long `promote` waits for the new primary to serve.
const PROMOTE_WAIT: Duration = Duration::from_secs(75);
/// How long `resume` waits for a restarted standby to stream from the primary.
const RESUME_WAIT: Duration = Duration::from_secs(15);
/// How long `set-priority` waits for a node that joined the log to register.
const REGISTER_WAIT: Duration = Duration::from_secs(5);
/// How long `resume` waits for the HA runtime's answer (it answers within one cycle).
const ANSWER_WAIT: Duration = Duration::from_secs(5);

fn message(m: impl Into<String>) -> Response {
    Response::ok(json!({ "message": m.into() }))
}

/// Answers one of [`COMMANDS`].
pub async fn handle(facts: &Facts, coord: &Arc<Coordinator>, req: &Request) -> Response {
    let res = match &req.command {
        AdminCommand::Promote { switchover, quiet, force, sourcenode } => {
            promote(
                facts,
                coord,
                Promote { switchover: *switchover, quiet: *quiet, force: *force, sourcenode: sourcenode.as_deref() },
            )
            .await
        }
        AdminCommand::Resume => resume(facts).await,
        AdminCommand::SetPriority { address, priority } => set_priority(facts, coord, address, *priority).await,
        AdminCommand::AllowNode { address } => allow_node(facts, coord, address).await,
        AdminCommand::DisallowNode { address } => disallow_node(facts, coord, address).await,
        AdminCommand::StopCluster => stop_cluster(coord).await,
        AdminCommand::ResetMembers => reset_members(facts, coord).await,
        AdminCommand::Rejoin { force } => rejoin(facts, coord, *force).await,
        other @ (AdminCommand::ClusterStatus | AdminCommand::NodeStatus) => {
            Err(format!("{other} is a status report, not an operator command"))
        }
    };
    res.unwrap_or_else(Response::err)
}

/// `efm promote`'s options.
#[derive(Clone, Copy, Debug)]
struct Promote<'a> {
    switchover: bool,
    quiet: bool,
    force: bool,
    sourcenode: Option<&'a str>,
}

async fn propose(coord: &Coordinator, cmd: Command) -> Result<(), String> {
    match coord.propose(cmd.clone()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(rejected)) => Err(format!("the cluster refused it: {rejected}")),
        Err(CoordError::Timeout { .. }) => Err(format!(
            "no answer from the cluster within the timeout; the change ({cmd}) may or may not have been applied: check `efm cluster-status`"
        )),
        Err(e) => Err(format!("the cluster could not take the change: {e}")),
    }
}

/// Resolves an operator's node address: `IP` or `IP:PORT`. A bare IP names the known node with
/// that IP (the nodes file and the log); an unknown bare IP takes this node's agent port.
pub fn resolve_node(arg: &str, known: &[SocketAddr], default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = arg.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = arg
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{arg:?} is not an IP address or IP:PORT"))?;
    let matches: Vec<SocketAddr> = known.iter().copied().filter(|a| a.ip() == ip).collect();
    match matches.as_slice() {
        [] => Ok(SocketAddr::new(ip, default_port)),
        [one] => Ok(*one),
        many => Err(format!(
            "{ip} runs several agents ({}); give the address as IP:PORT",
            many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn known_nodes(st: &ClusterState, cfg: &Config) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = st.allowed.iter().chain(st.nodes.keys()).chain(cfg.nodes.iter()).copied().collect();
    v.sort();
    v.dedup();
    v
}

struct Snapshot {
    st: ClusterState,
    me: SocketAddr,
    cfg: Config,
    db: DbView,
    suspended: bool,
    peers: Vec<PeerEntry>,
    /// This node's fresh WAL position (0 / `None` when the sample is stale).
    own_lsn: Option<u64>,
}

/// What a command decides on. The cluster state is read after a read barrier, so it includes
/// every change the cluster committed before the command arrived (an operator's
/// `set-priority` answered by another node a moment ago, say).
async fn snapshot(facts: &Facts, coord: &Coordinator) -> Result<Snapshot, String> {
    coord.sync().await.map_err(|e| format!("cannot read the cluster's committed state: {e}"))?;
    let st = coord.state().borrow().as_ref().clone();
    Ok(Snapshot {
        st,
        me: facts.id.me,
        cfg: facts.id.config.clone(),
        db: facts.db.borrow().view.clone(),
        suspended: facts.status.borrow().suspended.is_some(),
        peers: facts.peers.borrow().clone(),
        // This node's WAL position as its PINGs carry it (read every half heartbeat), not the
        // `local.period` check's.
        own_lsn: {
            let now = crate::heartbeat::monotonic_ns();
            Some(localdb::fresh_lsn(*facts.wal.borrow(), now, facts.id.config.heartbeat_interval)).filter(|l| *l != 0)
        },
    })
}

fn member(snap: &Snapshot) -> Result<(), String> {
    if snap.st.allowed.contains(&snap.me) {
        Ok(())
    } else {
        Err(format!(
            "this node ({}) is not a member of cluster {} yet; run the command on a member",
            snap.me, snap.cfg.cluster
        ))
    }
}

/// A standby that can be promoted now, with its WAL position and priority.
#[derive(Debug, Clone, Copy)]
struct Standby {
    addr: SocketAddr,
    lsn: u64,
    priority: u32,
}

/// The standbys that could be promoted now and, for each one that cannot, why.
fn promotable_standbys(snap: &Snapshot) -> (Vec<Standby>, Vec<String>) {
    let (mut ok, mut why) = (Vec::new(), Vec::new());
    let info = |a: &SocketAddr| snap.st.info(a).copied();
    let mut consider = |addr: SocketAddr, usable: Result<u64, String>| {
        let Some(i) = info(&addr) else {
            why.push(format!("{addr}: not a registered member"));
            return;
        };
        if i.kind == NodeKind::Witness {
            return;
        }
        if !i.can_be_promoted() {
            why.push(format!("{addr}: promotable=false or priority 0"));
            return;
        }
        match usable {
            Ok(lsn) => ok.push(Standby { addr, lsn, priority: i.priority }),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    };
    if Some(snap.me) != snap.st.primary && !snap.cfg.is_witness {
        let usable = match (&snap.db.info, snap.db.up) {
            _ if snap.suspended => Err("monitoring suspended (efm resume)".to_owned()),
            (Some(i), Some(true)) if i.in_recovery => Ok(snap.own_lsn.or(snap.db.lsn().map(|l| l.0)).unwrap_or(0)),
            (Some(_), Some(true)) => Err("its database is not a standby".to_owned()),
            _ => Err("its database is not running".to_owned()),
        };
        consider(snap.me, usable);
    }
    for p in &snap.peers {
        if Some(p.addr) == snap.st.primary {
            continue;
        }
        let usable = match p.health {
            None => Err("not heard yet".to_owned()),
            Some(h) if h.verdict != Verdict::Alive => Err(format!("agent {}", h.verdict)),
            Some(h) => {
                let flags = h.flags;
                if flags & efm_common::wire::ROLE_MASK != efm_common::wire::ROLE_STANDBY {
                    Err("not a monitored standby".to_owned())
                } else if flags & efm_common::wire::FLAG_DB_UP == 0 {
                    Err("its database is down".to_owned())
                } else if flags & efm_common::wire::FLAG_FENCED != 0 {
                    Err("fenced (idle)".to_owned())
                } else {
                    Ok(h.lsn)
                }
            }
        };
        consider(p.addr, usable);
    }
    ok.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.lsn.cmp(&a.lsn)).then(a.addr.cmp(&b.addr)));
    (ok, why)
}

/// The primary's WAL position as last advertised (its PINGs, or the local database).
fn primary_lsn(snap: &Snapshot, primary: SocketAddr) -> Option<u64> {
    if primary == snap.me {
        return snap.own_lsn.or(snap.db.lsn().map(|l| l.0));
    }
    snap.peers
        .iter()
        .find(|p| p.addr == primary)
        .and_then(|p| p.health)
        .filter(|h| h.verdict == Verdict::Alive)
        .map(|h| h.lsn)
}

fn primary_alive(snap: &Snapshot, primary: SocketAddr) -> bool {
    primary == snap.me
        || snap.peers.iter().any(|p| p.addr == primary && p.health.is_some_and(|h| h.verdict == Verdict::Alive))
}

async fn promote(facts: &Facts, coord: &Arc<Coordinator>, opts: Promote<'_>) -> Result<Response, String> {
    let Promote { switchover, quiet, force, sourcenode: source_arg } = opts;
    if !switchover && (quiet || source_arg.is_some()) {
        return Err("-sourcenode and -quiet apply to a switchover only: add -switchover".into());
    }
    let snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let st = &snap.st;
    let Some(primary) = st.primary else {
        return Err(format!("cluster {} has no primary: there is nothing to promote from", snap.cfg.cluster));
    };
    if let Some(s) = st.switchover.filter(|s| s.requested_epoch == st.epoch) {
        return Err(format!("a promotion of {} is already in progress (epoch {})", s.to, st.epoch));
    }
    if switchover && !primary_alive(&snap, primary) {
        return Err(format!(
            "-switchover needs a running primary, and the agent of primary {primary} is not heard; use efm promote without -switchover to fail over"
        ));
    }
    let source = match source_arg {
        None => None,
        Some(a) => {
            let addr = resolve_node(a, &known_nodes(st, &snap.cfg), snap.me.port())?;
            if !st.allowed.contains(&addr) || st.info(&addr).is_some_and(|i| i.kind == NodeKind::Witness) {
                return Err(format!("-sourcenode {addr} is not a database node of the cluster"));
            }
            if addr == primary {
                return Err(format!(
                    "-sourcenode {addr} is the primary; name a standby whose settings the old primary should copy"
                ));
            }
            Some(addr)
        }
    };
    let (cands, why) = promotable_standbys(&snap);
    let Some(best) = cands.first().copied() else {
        return Err(format!(
            "no standby can be promoted{}",
            if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
        ));
    };
    if !switchover && !force {
        if let Some(plsn) = primary_lsn(&snap, primary).filter(|p| *p > best.lsn) {
            return Ok(Response::ok(json!({
                "confirm": format!(
                    "standby {} is not up to date: it has WAL up to {}, the primary {primary} up to {} ({} bytes behind); promoting it loses the difference",
                    best.addr,
                    postgres::Lsn(best.lsn),
                    postgres::Lsn(plsn),
                    plsn - best.lsn
                )
            })));
        }
    }
    let expected_epoch = st.epoch;
    propose(coord, Command::RequestSwitchover { to: best.addr, expected_epoch, demote: switchover, quiet, source })
        .await?;
    tracing::warn!(to = %best.addr, from = %primary, switchover, quiet, "operator promotion requested");
    let started = Instant::now();
    let mut rx = coord.state();
    // The entry committed on the leader; this node's copy may apply it a moment later.
    let mut seen = false;
    loop {
        let now = rx.borrow().as_ref().clone();
        let pending = now.switchover.is_some_and(|s| s.requested_epoch == expected_epoch);
        seen |= pending;
        if now.epoch > expected_epoch {
            let Some(p) = now.primary else {
                return Err("the promotion committed without a primary (unexpected)".into());
            };
            if serving(facts, p, now.epoch) {
                let what = if switchover { "Switchover" } else { "Promotion" };
                return Ok(message(format!(
                    "{what} completed: {p} is the primary of epoch {} (took {:.1} s){}",
                    now.epoch,
                    started.elapsed().as_secs_f64(),
                    if switchover {
                        format!("; {primary} is rejoining as its standby")
                    } else {
                        format!("; {primary} stays fenced")
                    }
                )));
            }
        } else if seen && !pending {
            return Err(format!(
                "the promotion was called off (see the agent log of {primary}); {primary} is still the primary"
            ));
        }
        if started.elapsed() > PROMOTE_WAIT {
            return Err(format!(
                "the promotion did not complete within {} s; epoch {}, primary {}; check efm cluster-status and the agents' logs",
                PROMOTE_WAIT.as_secs(),
                now.epoch,
                now.primary.map_or("none".into(), |p| p.to_string())
            ));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// The primary of `epoch` serves clients: its PINGs say primary, unfenced, that epoch (or, when
/// it is this node, its kernel lets clients through).
fn serving(facts: &Facts, p: SocketAddr, epoch: u64) -> bool {
    if p == facts.id.me {
        let kernel = facts.status.borrow().kernel;
        return kernel.serving && kernel.epoch == epoch;
    }
    facts.peers.borrow().iter().any(|e| {
        e.addr == p
            && e.health.is_some_and(|h| {
                h.verdict == Verdict::Alive
                    && h.epoch == epoch
                    && h.flags & efm_common::wire::ROLE_MASK == efm_common::wire::ROLE_PRIMARY
                    && h.flags & (efm_common::wire::FLAG_FENCED | efm_common::wire::FLAG_LEASE_LAPSED) == 0
            })
    })
}

/// `efm resume`: checks the database now and asks the HA runtime, the owner of the
/// suspension, to resume with it (the engine's rule, which the `auto.resume.*.period`s
/// apply too). A standby that just restarted gets [`RESUME_WAIT`] to stream again. The check
/// goes to the owner of the database view first, so the cycle that resumes sees it.
async fn resume(facts: &Facts) -> Result<Response, String> {
    let (cfg, me) = (&facts.id.config, facts.id.me);
    let was = facts.status.borrow().suspended.as_ref().map_or_else(String::new, |s| s.reason.clone());
    if cfg.is_witness {
        return Err("this node is a witness: it has no database to monitor".into());
    }
    let nothing = || message(format!("the agent on {me} is monitoring its database already; nothing to resume"));
    if facts.status.borrow().suspended.is_none() {
        return Ok(nothing());
    }
    let target = localdb::target(cfg, &facts.id.config_dir, &me.ip().to_string())?;
    let started = Instant::now();
    loop {
        let db = match postgres::remote_check(&target, cfg.local_timeout).await {
            Ok(info) => {
                facts.report_db(DbUpdate::Checked(info.clone())).await.map_err(|e| e.to_string())?;
                DbView { up: Some(true), info: Some(info), error: None, postmaster_exited: false }
            }
            Err(e) => DbView { up: Some(false), info: None, error: Some(e.to_string()), postmaster_exited: false },
        };
        let up = db.up == Some(true);
        let detail = db.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
        let answer = tokio::time::timeout(ANSWER_WAIT, facts.resume(db)).await.map_err(|_| {
            format!("the agent's HA runtime did not answer within {} s; see the agent's log", ANSWER_WAIT.as_secs())
        })?;
        match answer.map_err(|e| e.to_string())? {
            Ok(why) => return Ok(message(format!("Resumed monitoring on {me}: {why}"))),
            // A standby that just restarted needs a moment to stream again.
            Err(why) if up && started.elapsed() < RESUME_WAIT => {
                tracing::debug!(error = %why, "resume: not yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("cannot resume monitoring: {e}{detail} (suspended because: {was})")),
        }
    }
}

async fn set_priority(facts: &Facts, coord: &Arc<Coordinator>, addr: &str, priority: u32) -> Result<Response, String> {
    let mut snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let node = resolve_node(addr, &known_nodes(&snap.st, &snap.cfg), snap.me.port())?;
    // A node that joined the log registers itself a moment later (its agent's first cycles):
    // give it that moment rather than telling the operator to start an agent that runs.
    let until = Instant::now() + REGISTER_WAIT;
    while snap.st.info(&node).is_none() && snap.st.is_voter(&node) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        snap = snapshot(facts, coord).await?;
    }
    match snap.st.info(&node) {
        None if snap.st.allowed.contains(&node) => {
            return Err(format!("{node} has not joined the cluster yet; start its agent first"))
        }
        None => return Err(format!("{node} is not a member of cluster {}", snap.cfg.cluster)),
        Some(i) if i.kind == NodeKind::Witness => {
            return Err(format!("{node} is a witness; only database nodes have a priority"))
        }
        Some(_) => {}
    }
    propose(coord, Command::SetPriority { node, priority }).await?;
    Ok(message(format!(
        "Set the failover priority of {node} to {priority}{}",
        if priority == 0 { " (never promoted)" } else { "" }
    )))
}

async fn allow_node(facts: &Facts, coord: &Arc<Coordinator>, addr: &str) -> Result<Response, String> {
    let snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let node = resolve_node(addr, &known_nodes(&snap.st, &snap.cfg), snap.me.port())?;
    if snap.st.allowed.contains(&node) {
        return Ok(message(format!("{node} is allowed already")));
    }
    propose(coord, Command::AllowNode { node }).await?;
    Ok(message(format!("Added {node} to the allowed node host list; start its agent to join")))
}

async fn disallow_node(facts: &Facts, coord: &Arc<Coordinator>, addr: &str) -> Result<Response, String> {
    let snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let node = resolve_node(addr, &known_nodes(&snap.st, &snap.cfg), snap.me.port())?;
    if node == snap.me {
        return Err(format!("{node} is this node; run disallow-node on another member"));
    }
    if snap.st.primary == Some(node) {
        return Err(format!("{node} is the primary; promote another node first"));
    }
    if !snap.st.allowed.contains(&node) {
        return Err(format!("{node} is not in the allowed node host list"));
    }
    propose(coord, Command::DisallowNode { node }).await?;
    // EFM 5 sizes the cluster by its members (failed ones included): removing one is the moment
    // it can drop below three.
    let left = snap.st.voters().iter().filter(|v| **v != node).count();
    if left < crate::config::check::MIN_AGENTS {
        crate::notify::emit(&snap.cfg, crate::notify::Event::BelowThreeNodes { nodes: left });
    }
    Ok(message(format!(
        "Removed {node} from the allowed node host list; it no longer counts in the cluster and cannot rejoin until allowed again (its agent keeps running until stopped)"
    )))
}

async fn stop_cluster(coord: &Arc<Coordinator>) -> Result<Response, String> {
    propose(coord, Command::StopCluster { at_unix_ms: unix_ms() }).await?;
    Ok(message(
        "Every agent of the cluster is stopping; the databases keep running as they are, without failover protection",
    ))
}

/// `efm reset-members` (EFM 5): since EFM 5 a member that fails or is cut off keeps counting for
/// the quorum until it returns or the operator resets the members. Here: every voter whose
/// agent this node does not hear is removed from the Raft voters (a membership change, so it
/// needs the current quorum like any other); the removed nodes stay allowed and join again
/// when their agents start or reach the cluster again.
async fn reset_members(facts: &Facts, coord: &Arc<Coordinator>) -> Result<Response, String> {
    let snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let heard = |a: &SocketAddr| {
        *a == snap.me
            || snap.peers.iter().any(|p| p.addr == *a && p.health.is_some_and(|h| h.verdict == Verdict::Alive))
    };
    let voters = snap.st.voters();
    let failed: Vec<SocketAddr> = voters.iter().copied().filter(|a| !heard(a)).collect();
    if failed.is_empty() {
        return Ok(message(format!(
            "every member of cluster {} is heard ({}); nothing to reset",
            snap.cfg.cluster,
            list(&voters)
        )));
    }
    if let Some(p) = snap.st.primary.filter(|p| failed.contains(p)) {
        return Err(format!(
            "the primary {p} is among the members not heard; it cannot be reset: wait for the failover or run efm promote first"
        ));
    }
    let now = coord.remove_voters(&failed).await.map_err(|e| match e {
        CoordError::Timeout { .. } => format!(
            "no answer from the cluster within the timeout; the members ({}) may or may not have been removed: check efm cluster-status",
            list(&failed)
        ),
        e => format!("the cluster could not remove {}: {e}", list(&failed)),
    })?;
    tracing::warn!(removed = %list(&failed), voters = %list(&now), "efm reset-members: failed members removed from the quorum");
    if now.len() < crate::config::check::MIN_AGENTS {
        crate::notify::emit(&snap.cfg, crate::notify::Event::BelowThreeNodes { nodes: now.len() });
    }
    Ok(message(format!(
        "Removed {} from the members of cluster {}; members now {} (quorum {}). They join again when their agents start or reach the cluster.",
        list(&failed),
        snap.cfg.cluster,
        list(&now),
        now.len() / 2 + 1
    )))
}

/// `efm rejoin [--force]`, on a former primary replaced by a failover: stop its database (its
/// kernel refuses clients already: an earlier epoch's primary is fenced), rewind it from the
/// current primary ([`control::DbControl::rewind`]: refused when the discarded WAL holds
/// commits, unless forced), write the standby configuration, start it, and resume monitoring
/// once it streams.
async fn rejoin(facts: &Facts, coord: &Arc<Coordinator>, force: bool) -> Result<Response, String> {
    use crate::postgres::control;
    let snap = snapshot(facts, coord).await?;
    member(&snap)?;
    let (cfg, me) = (&snap.cfg, snap.me);
    if cfg.is_witness {
        return Err("this node is a witness: it has no database to rejoin".into());
    }
    let Some(primary) = snap.st.primary else {
        return Err(format!("cluster {} has no primary to rejoin", cfg.cluster));
    };
    if primary == me {
        return Err(format!("this node is the primary of epoch {}; there is nothing to rejoin", snap.st.epoch));
    }
    if !serving(facts, primary, snap.st.epoch) {
        return Err(format!("the primary {primary} does not serve clients now; rejoin needs a serving primary"));
    }
    if snap.db.up == Some(true) && snap.db.info.as_ref().is_some_and(|i| i.in_recovery) {
        return Err(format!(
            "the database on {me} is a standby already; if it does not stream, see its log (efm resume after fixing it)"
        ));
    }
    let ctl = control::DbControl::from_config(cfg).map_err(|e| e.to_string())?;
    let started = Instant::now();
    if ctl.is_running().await.map_err(|e| e.to_string())? {
        tracing::warn!("efm rejoin: stopping the former primary's database");
        ctl.stop().await.map_err(|e| e.to_string())?;
    }
    let src = localdb::target(cfg, &facts.id.config_dir, &primary.ip().to_string())?;
    control::ensure_source_checkpointed(&src).await.map_err(|e| e.to_string())?;
    let pass =
        control::PassFile::new(&ctl, &src.host, src.port, &src.user, &src.resolve_password().unwrap_or_default())
            .map_err(|e| e.to_string())?;
    let q = control::quote_conninfo_value;
    let source = format!(
        "host={} port={} user={} dbname={} passfile={} connect_timeout=10",
        q(&src.host),
        src.port,
        q(&src.user),
        q(&src.dbname),
        q(&pass.path().display().to_string())
    );
    let out = ctl.rewind(&source, force).await.map_err(|e| e.to_string())?;
    drop(pass);
    let up = crate::ha::local::upstream(cfg, &facts.id.config_dir, primary).await?;
    let c2 = cfg.clone();
    tokio::task::spawn_blocking(move || crate::ha::local::demote_local(&c2, &up))
        .await
        .map_err(|e| format!("writing the standby configuration: {e}"))??;
    ctl.start().await.map_err(|e| e.to_string())?;
    let resumed = resume(facts).await;
    let what = match &out.diverged_at {
        Some((lsn, tli)) => format!(
            "rewound from {primary} (diverged at {lsn} on timeline {tli}{})",
            if out.discarded_commits > 0 {
                format!("; {} commit(s) discarded (--force)", out.discarded_commits)
            } else {
                String::new()
            }
        ),
        None => "no rewind was needed".to_owned(),
    };
    let tail = match resumed {
        Ok(_) => "it streams and is monitored again".to_owned(),
        Err(e) => format!("monitoring is not resumed yet: {e}"),
    };
    Ok(message(format!(
        "{me} rejoined cluster {} as a standby of {primary} in {:.1} s: {what}; {tail}",
        cfg.cluster,
        started.elapsed().as_secs_f64()
    )))
}

fn list<'a>(a: impl IntoIterator<Item = &'a SocketAddr>) -> String {
    a.into_iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn commands_are_the_operator_variants() {
        let ours: Vec<&str> = AdminCommand::NAMES.iter().copied().filter(|n| !n.ends_with("-status")).collect();
        assert_eq!(ours, COMMANDS);
    }

    #[test]
    fn bare_ip_names_the_known_node() {
        let known = [a("198.18.0.1:7800"), a("198.18.0.2:7801")];
        assert_eq!(resolve_node("198.18.0.2", &known, 7800).unwrap(), a("198.18.0.2:7801"));
        assert_eq!(resolve_node("198.18.0.9", &known, 7800).unwrap(), a("198.18.0.9:7800"));
        assert_eq!(resolve_node("198.18.0.1:7900", &known, 7800).unwrap(), a("198.18.0.1:7900"));
        assert!(resolve_node("node-1", &known, 7800).unwrap_err().contains("not an IP address"));
        let two = [a("198.18.0.1:7800"), a("198.18.0.1:7801")];
        assert!(resolve_node("198.18.0.1", &two, 7800).unwrap_err().contains("IP:PORT"));
    }
}
