//! The agent's shared facts: the types several modules need, and the single-writer channels
//! that carry them between the agent's tasks.
//!
//! A leaf: it imports only plain types (configuration, the detector's per-peer health, the
//! database probe's result) and no module that does anything.
//!
//! **One writer per fact.** Every fact that more than one task reads is published on its own
//! `tokio::sync::watch` channel, whose one [`watch::Sender`] is handed to the one task that owns
//! it ([`wire`] makes them all at once; [`Owners`] holds the senders until the assembly in
//! `agent` hands each to its owner):
//!
//! | fact | written by |
//! |---|---|
//! | [`LocalDatabase`] (database view and role) | `localdb::run` (monitor events, and the [`DbReport`]s others send it) |
//! | [`WalSample`] (the fresh WAL position) | `localdb::track_wal` |
//! | peers' health ([`PeerEntry`]) | the main loop (kernel slots → detector) |
//! | the custom monitor's failure | `custom_monitor::run` |
//! | [`Status`] (epoch, outcome, kernel, suspension, committed primary, leader) | the HA runtime, once per cycle |
//! | stop (`efm stop-cluster` reached this agent) | the HA runtime; the main loop receives it |
//!
//! Configuration and identity never change while the agent runs: they are an
//! `Arc<`[`Identity`]`>` given to each task at construction. A task that learned something
//! another task owns does not write it: the promotion task and `efm resume` send a [`DbReport`]
//! to `localdb` (which applies it and says so), and `efm resume` asks the HA runtime, the owner
//! of the suspension, with a [`RuntimeRequest`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Instant};

use efm_common::wire::{ROLE_IDLE, ROLE_PRIMARY, ROLE_STANDBY, ROLE_WITNESS};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::Config,
    detector::PeerHealth,
    postgres::{DbInfo, Lsn},
};

/// A node's role as EFM names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Role {
    Primary,
    Standby,
    Witness,
    Idle,
}

impl Role {
    #[must_use]
    pub fn bits(self) -> u16 {
        match self {
            Self::Primary => ROLE_PRIMARY,
            Self::Standby => ROLE_STANDBY,
            Self::Witness => ROLE_WITNESS,
            Self::Idle => ROLE_IDLE,
        }
    }

    #[must_use]
    pub fn from_bits(bits: u16) -> Self {
        match bits & efm_common::wire::ROLE_MASK {
            ROLE_PRIMARY => Self::Primary,
            ROLE_STANDBY => Self::Standby,
            ROLE_WITNESS => Self::Witness,
            _ => Self::Idle,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One peer as the agent tracks it.
#[derive(Clone, Debug)]
pub struct PeerEntry {
    pub addr: SocketAddr,
    pub node_id: u32,
    pub slot: u32,
    pub health: Option<PeerHealth>,
}

/// The kernel's fence and lease as of the last cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelView {
    pub fenced: bool,
    pub lease_enforced: bool,
    /// The lease is enforced and has time left (ms), or 0.
    pub lease_left_ms: u64,
    pub epoch: u64,
    pub max_epoch_seen: u64,
    /// Client traffic to the database port passes (`efm_common::serving::fence_reasons` is 0, the
    /// rule the kernel applies): not fenced, not epoch-fenced, lease valid.
    pub serving: bool,
}

/// Why a node's database is not monitored.
#[derive(Clone, Debug)]
pub struct Suspension {
    pub reason: String,
    pub kind: SuspendKind,
    pub since: Instant,
}

/// Which `auto.resume.*.period` applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendKind {
    /// The database was not running when the agent started (`auto.resume.startup.period`).
    Startup,
    /// The database failed (`auto.resume.failure.period`).
    Failure,
}

/// Now as Unix milliseconds.
#[must_use]
pub fn unix_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()))
        .unwrap_or(0)
}

/// What the agent last learned about its database.
#[derive(Clone, Debug, Default)]
pub struct DbView {
    /// `None` until the first check finished.
    pub up: Option<bool>,
    pub info: Option<DbInfo>,
    pub error: Option<String>,
    /// Down because the postmaster exited (pidfd) and the final check failed, rather than
    /// because the local checks fail: see `ha::LocalDb::local_check_only`.
    pub postmaster_exited: bool,
}

impl DbView {
    /// The WAL position to advertise: current LSN on a primary, replayed LSN on a standby.
    #[must_use]
    pub fn lsn(&self) -> Option<Lsn> {
        self.info.as_ref().and_then(DbInfo::wal_position)
    }
}

/// The local database as `localdb` publishes it: what it last learned and the role it gives
/// this node (witness, or primary/standby from the database; idle while unknown).
#[derive(Clone, Debug)]
pub struct LocalDatabase {
    pub role: Role,
    pub view: DbView,
}

/// A WAL position read by `localdb::track_wal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSample {
    pub lsn: Lsn,
    pub in_recovery: bool,
    /// `CLOCK_MONOTONIC` ns just before the query was sent: the position is at least this new.
    pub at_ns: u64,
}

/// What the HA runtime publishes at the end of every cycle.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The committed epoch as the cycle saw it (at start: the epoch the kernel held).
    pub epoch: u64,
    /// The HA engine's decision.
    pub outcome: Option<String>,
    /// What the kernel enforces after the cycle.
    pub kernel: KernelView,
    /// Monitoring of the local database is suspended (EFM's idle agent) until `efm resume` or an
    /// `auto.resume.*.period`.
    pub suspended: Option<Suspension>,
    /// The committed primary (coordination log) the cycle saw.
    pub committed_primary: Option<SocketAddr>,
    /// The coordination log's leader (EFM's membership coordinator).
    pub leader: Option<SocketAddr>,
}

impl Status {
    /// The role as EFM reports it: an agent whose monitoring is suspended is idle, whatever its
    /// database is.
    #[must_use]
    pub fn effective_role(&self, db_role: Role) -> Role {
        if self.suspended.is_some() {
            Role::Idle
        } else {
            db_role
        }
    }
}

/// Who this agent is; fixed for its life.
#[derive(Debug)]
pub struct Identity {
    pub config: Config,
    /// `bind.address`.
    pub me: SocketAddr,
    pub node_id: u32,
    /// Where the configuration (and the password key) live.
    pub config_dir: PathBuf,
    /// The interface XDP is attached to (the one holding `bind.address`, or `xdp.interface`).
    pub iface: String,
    /// How XDP was attached.
    pub attachment: String,
    /// When this agent started (Unix ms): a stop-cluster entry older than that is history.
    pub started_unix_ms: u64,
}

/// Something another task learned about the local database, sent to its owner (`localdb`).
#[derive(Clone, Debug, PartialEq)]
pub enum DbUpdate {
    /// `pg_promote()` confirmed the database left recovery: it is up and a primary, without
    /// waiting for the next `local.period` check.
    Promoted,
    /// A check made outside the monitor (`efm resume`) found the database up.
    Checked(DbInfo),
}

/// A [`DbUpdate`] and the answer once the owner applied it (so the sender's next step sees it).
#[derive(Debug)]
pub struct DbReport {
    pub update: DbUpdate,
    pub applied: oneshot::Sender<()>,
}

/// A request to the HA runtime, the owner of the suspension.
#[derive(Debug)]
pub enum RuntimeRequest {
    /// `efm resume`, with the database as the operator's check just found it.
    /// Answered with why it resumed (or had nothing to resume), or why it cannot.
    Resume { db: DbView, reply: oneshot::Sender<Result<String, String>> },
}

/// Why a request to an owner got no answer.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[error("the agent's {owner} is not running")]
pub struct OwnerGone {
    pub owner: &'static str,
}

/// What every task may read — the latest value of each fact — and the lines to the owners.
/// Cheap to clone; a reader copies what it needs out of a `borrow()` and never holds it across
/// an await.
#[derive(Clone, Debug)]
pub struct Facts {
    pub id: Arc<Identity>,
    pub db: watch::Receiver<LocalDatabase>,
    pub wal: watch::Receiver<Option<WalSample>>,
    pub peers: watch::Receiver<Vec<PeerEntry>>,
    /// The last `script.custom.monitor` failure, while it lasts.
    pub custom_monitor: watch::Receiver<Option<String>>,
    pub status: watch::Receiver<Status>,
    db_reports: mpsc::Sender<DbReport>,
    requests: mpsc::Sender<RuntimeRequest>,
}

impl Facts {
    /// The role as EFM reports it (see [`Status::effective_role`]).
    #[must_use]
    pub fn effective_role(&self) -> Role {
        let role = self.db.borrow().role;
        self.status.borrow().effective_role(role)
    }

    /// Sends `update` to `localdb` and waits until it is applied.
    pub async fn report_db(&self, update: DbUpdate) -> Result<(), OwnerGone> {
        let gone = OwnerGone { owner: "database task" };
        let (applied, done) = oneshot::channel();
        self.db_reports.send(DbReport { update, applied }).await.map_err(|_| gone)?;
        done.await.map_err(|_| gone)
    }

    /// Asks the HA runtime to resume monitoring, given the database as just checked; answered
    /// within one cycle.
    pub async fn resume(&self, db: DbView) -> Result<Result<String, String>, OwnerGone> {
        let gone = OwnerGone { owner: "HA runtime" };
        let (reply, answer) = oneshot::channel();
        self.requests.send(RuntimeRequest::Resume { db, reply }).await.map_err(|_| gone)?;
        answer.await.map_err(|_| gone)
    }
}

/// The owner's end of the local database's facts (given to `localdb::run`).
#[derive(Debug)]
pub struct DbOwner {
    pub db: watch::Sender<LocalDatabase>,
    pub reports: mpsc::Receiver<DbReport>,
    pub wal: watch::Sender<Option<WalSample>>,
}

/// The HA runtime's ends: its [`Status`], the stop signal and the requests it answers.
#[derive(Debug)]
pub struct RuntimeOwner {
    pub status: watch::Sender<Status>,
    pub stop: watch::Sender<bool>,
    pub requests: mpsc::Receiver<RuntimeRequest>,
}

/// Every writer, each to be handed to its one owner.
#[derive(Debug)]
pub struct Owners {
    pub db: DbOwner,
    pub peers: watch::Sender<Vec<PeerEntry>>,
    pub custom_monitor: watch::Sender<Option<String>>,
    pub runtime: RuntimeOwner,
    /// The main loop's end of the stop signal.
    pub stop: watch::Receiver<bool>,
}

/// The channels, with their first values: the database as found at start, the peers from the
/// `.nodes` file, the epoch the kernel held.
#[must_use]
pub fn wire(id: Arc<Identity>, db: LocalDatabase, peers: Vec<PeerEntry>, epoch: u64) -> (Facts, Owners) {
    let (db_tx, db_rx) = watch::channel(db);
    let (wal_tx, wal_rx) = watch::channel(None);
    let (peers_tx, peers_rx) = watch::channel(peers);
    let (custom_tx, custom_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(Status { epoch, ..Status::default() });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reports_tx, reports_rx) = mpsc::channel(8);
    let (requests_tx, requests_rx) = mpsc::channel(8);
    let facts = Facts {
        id,
        db: db_rx,
        wal: wal_rx,
        peers: peers_rx,
        custom_monitor: custom_rx,
        status: status_rx,
        db_reports: reports_tx,
        requests: requests_tx,
    };
    let owners = Owners {
        db: DbOwner { db: db_tx, reports: reports_rx, wal: wal_tx },
        peers: peers_tx,
        custom_monitor: custom_tx,
        runtime: RuntimeOwner { status: status_tx, stop: stop_tx, requests: requests_rx },
        stop: stop_rx,
    };
    (facts, owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Arc<Identity> {
        let props = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=pg\ndb.data.dir=/d\nbind.address=198.18.0.1:7800\n";
        let nodes = vec!["198.18.0.1:7800".parse().unwrap()];
        let config =
            crate::config::from_properties(props, std::path::Path::new("/etc/efm/acctg.properties"), "acctg", nodes)
                .unwrap()
                .config;
        Arc::new(Identity {
            me: config.bind_address,
            config,
            node_id: 1,
            config_dir: "/etc/efm".into(),
            iface: "eth0".into(),
            attachment: "native".into(),
            started_unix_ms: 0,
        })
    }

    fn standby() -> LocalDatabase {
        LocalDatabase { role: Role::Standby, view: DbView::default() }
    }

    #[test]
    fn readers_see_the_owners_latest_value_and_suspension_idles_the_role() {
        let (facts, owners) = wire(identity(), standby(), Vec::new(), 7);
        assert_eq!(facts.status.borrow().epoch, 7, "the kernel's epoch until the first cycle");
        assert_eq!(facts.effective_role(), Role::Standby);
        let suspension =
            Suspension { reason: "database failure".into(), kind: SuspendKind::Failure, since: Instant::now() };
        owners.runtime.status.send_replace(Status { suspended: Some(suspension), ..Status::default() });
        assert_eq!(facts.effective_role(), Role::Idle, "EFM reports a suspended agent as idle");
        drop(owners);
        assert_eq!(facts.effective_role(), Role::Idle, "the last value outlives its writer");
    }

    #[tokio::test]
    async fn a_resume_request_is_answered_by_the_owner_or_says_it_is_gone() {
        let (facts, mut owners) = wire(identity(), standby(), Vec::new(), 0);
        let owner = tokio::spawn(async move {
            let Some(RuntimeRequest::Resume { db, reply }) = owners.runtime.requests.recv().await else {
                panic!("no request")
            };
            let _ = reply.send(Err(format!("up: {:?}", db.up)));
            owners
        });
        let answer = facts.resume(DbView { up: Some(false), ..DbView::default() }).await.unwrap();
        assert_eq!(answer, Err("up: Some(false)".into()));
        drop(owner.await.unwrap());
        assert_eq!(facts.resume(DbView::default()).await, Err(OwnerGone { owner: "HA runtime" }));
    }
}
