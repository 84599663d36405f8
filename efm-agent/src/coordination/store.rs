//! Raft storage: log, vote, committed index and the latest snapshot in one redb file per cluster;
//! the state machine ([`ClusterState`]) in memory.
//!
//! redb's default durability is `Durability::Immediate`: a write transaction's `commit()` returns
//! only after the data is on disk (fsync), so `save_vote` and `append` are durable before they
//! return (`append` reports completion to openraft after the commit). Entries and snapshots are
//! stored as JSON (small, inspectable with any redb tool).
//!
//! The state machine is rebuilt at start from the persisted snapshot, then openraft re-applies the
//! log entries after it up to the persisted committed index.

use std::{
    fmt::Debug,
    io::Cursor,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use openraft::{
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    state::{self, ApplyOk, ClusterState, Response},
    types::{RaftNode, TypeConfig},
};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "last_purged";
const K_SNAPSHOT: &str = "snapshot";

type SErr = StorageError<u64>;

fn err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> SErr {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn rerr(e: impl Into<redb::Error>) -> redb::Error {
    e.into()
}

/// Opens (or creates) the redb file and its tables.
pub fn open_db(path: &Path) -> Result<Arc<Database>, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(LOGS)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, redb::Error> {
    let tx = db.begin_read()?;
    let t = tx.open_table(META)?;
    let Some(v) = t.get(key)? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value()).map(Some).map_err(|e| {
        redb::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{key}: {e}"),
        ))
    })
}

fn put_meta<T: Serialize>(db: &Database, key: &str, v: &T) -> Result<(), redb::Error> {
    let bytes = serde_json::to_vec(v).map_err(|e| redb::Error::Io(e.into()))?;
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(META)?;
        t.insert(key, bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Whether the file holds any Raft state (a vote or a log entry or a snapshot).
pub fn has_state(db: &Database) -> Result<bool, redb::Error> {
    let tx = db.begin_read()?;
    let m = tx.open_table(META)?;
    let l = tx.open_table(LOGS)?;
    Ok(m.get(K_VOTE)?.is_some() || m.get(K_SNAPSHOT)?.is_some() || l.first()?.is_some())
}

/// The log and vote store. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    #[must_use]
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOGS)?;
            let start = match range.start_bound() {
                Bound::Included(&s) => s,
                Bound::Excluded(&s) => s + 1,
                Bound::Unbounded => 0,
            };
            let mut out = Vec::new();
            for item in t.range(start..)? {
                let (k, v) = item?;
                if !range.contains(&k.value()) {
                    break;
                }
                let e: Entry<TypeConfig> =
                    serde_json::from_slice(v.value()).map_err(|e| redb::Error::Io(e.into()))?;
                out.push(e);
            }
            Ok(out)
        };
        read().map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let read = || -> Result<LogState<TypeConfig>, redb::Error> {
            let last_purged: Option<LogId<u64>> = get_meta(&self.db, K_PURGED)?;
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOGS)?;
            let last = match t.last()? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(v.value()).map_err(|e| redb::Error::Io(e.into()))?;
                    Some(e.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        put_meta(&self.db, K_VOTE, vote).map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        get_meta(&self.db, K_VOTE).map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        put_meta(&self.db, K_COMMITTED, &committed)
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        get_meta::<Option<LogId<u64>>>(&self.db, K_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(LOGS)?;
                for e in entries {
                    let bytes = serde_json::to_vec(&e).map_err(|e| redb::Error::Io(e.into()))?;
                    t.insert(e.log_id.index, bytes.as_slice())?;
                }
            }
            // Durability::Immediate (the default): on disk when commit returns.
            tx.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(err(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let write = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(LOGS)?;
                t.retain_in(log_id.index.., |_, _| false)?;
            }
            tx.commit().map_err(rerr)
        };
        write().map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let write = || -> Result<(), redb::Error> {
            let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| redb::Error::Io(e.into()))?;
            let tx = self.db.begin_write()?;
            {
                let mut m = tx.open_table(META)?;
                m.insert(K_PURGED, bytes.as_slice())?;
                let mut t = tx.open_table(LOGS)?;
                t.retain_in(..=log_id.index, |_, _| false)?;
            }
            tx.commit().map_err(rerr)
        };
        write().map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

/// A snapshot as persisted: meta (last applied log id, membership) and the serialized state.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, RaftNode>,
    data: Vec<u8>,
}

struct SmInner {
    state: ClusterState,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, RaftNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
}

/// The in-memory state machine; publishes the committed state after every applied batch.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    inner: Arc<Mutex<SmInner>>,
    tx: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachine {
    /// Loads the persisted snapshot (if any) as the starting state.
    pub fn open(
        db: Arc<Database>,
    ) -> Result<(Self, watch::Receiver<Arc<ClusterState>>), redb::Error> {
        let snap: Option<StoredSnapshot> = get_meta(&db, K_SNAPSHOT)?;
        let mut inner = SmInner {
            state: ClusterState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshot_seq: 0,
        };
        if let Some(s) = snap {
            inner.state = serde_json::from_slice(&s.data).map_err(|e| redb::Error::Io(e.into()))?;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.snapshot = Some(s);
        }
        let (tx, rx) = watch::channel(Arc::new(inner.state.clone()));
        Ok((
            Self {
                db,
                inner: Arc::new(Mutex::new(inner)),
                tx: Arc::new(tx),
            },
            rx,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn build(&self) -> Result<Snapshot<TypeConfig>, SErr> {
        let stored = {
            let mut g = self.lock();
            g.snapshot_seq += 1;
            let data = serde_json::to_vec(&g.state)
                .map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
            let snapshot_id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_seq),
                None => format!("none-{}", g.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
                snapshot_id,
            };
            StoredSnapshot { meta, data }
        };
        put_meta(&self.db, K_SNAPSHOT, &stored)
            .map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        self.lock().snapshot = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        self.build()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, RaftNode>), SErr> {
        let g = self.lock();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let snapshot_state = {
            let mut g = self.lock();
            for e in entries {
                g.last_applied = Some(e.log_id);
                let r = match &e.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => {
                        let r = state::apply(&mut g.state, cmd);
                        match &r {
                            Ok(_) => tracing::debug!(index = e.log_id.index, "applied {cmd}"),
                            Err(why) => {
                                tracing::info!(index = e.log_id.index, "rejected {cmd}: {why}");
                            }
                        }
                        Some(r)
                    }
                    EntryPayload::Membership(m) => {
                        g.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        let addrs: Vec<_> = m.nodes().map(|(_, n)| n.addr).collect();
                        state::apply_membership(&mut g.state, addrs);
                        None
                    }
                };
                out.push(r.unwrap_or(Ok(ApplyOk {
                    changed: false,
                    epoch: g.state.epoch,
                    primary: g.state.primary,
                })));
            }
            Arc::new(g.state.clone())
        };
        self.tx.send_replace(snapshot_state);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let new_state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                &e,
            )
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        put_meta(&self.db, K_SNAPSHOT, &stored).map_err(|e| {
            err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })?;
        {
            let mut g = self.lock();
            g.state = new_state.clone();
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
            g.snapshot = Some(stored);
        }
        tracing::info!("installed snapshot {meta}");
        self.tx.send_replace(Arc::new(new_state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let g = self.lock();
        Ok(g.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    static SEQ: AtomicU32 = AtomicU32::new(0);

    /// Removes the store's directory after each suite case.
    struct Guard(PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
        async fn build(&self) -> Result<(Guard, LogStore, StateMachine), SErr> {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("efm-raft-suite-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let db = open_db(&dir.join("t.raft.redb")).unwrap();
            let (sm, _rx) = StateMachine::open(db.clone()).unwrap();
            Ok((Guard(dir), LogStore::new(db), sm))
        }
    }

    /// openraft's own conformance suite for `RaftLogStorage` + `RaftStateMachine`.
    #[test]
    fn coordination_store_passes_openraft_suite() {
        Suite::test_all(Builder).unwrap();
    }

    /// Vote, log and snapshot survive closing and reopening the file.
    #[test]
    fn coordination_store_survives_reopen() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("efm-raft-reopen-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let _g = Guard(dir.clone());
            let path = dir.join("c.raft.redb");
            let addr: std::net::SocketAddr = "198.18.0.1:7800".parse().unwrap();
            let leader = openraft::CommittedLeaderId::new(3, 1);
            {
                let db = open_db(&path).unwrap();
                assert!(!has_state(&db).unwrap());
                let mut log = LogStore::new(db.clone());
                log.save_vote(&Vote::new(3, 1)).await.unwrap();
                let (mut sm, rx) = StateMachine::open(db).unwrap();
                let entries = vec![
                    Entry::<TypeConfig> {
                        log_id: LogId::new(leader, 1),
                        payload: EntryPayload::Normal(super::super::state::Command::AllowNode {
                            node: addr,
                        }),
                    },
                    Entry::<TypeConfig> {
                        log_id: LogId::new(leader, 2),
                        payload: EntryPayload::Normal(super::super::state::Command::SetPaused(
                            true,
                        )),
                    },
                ];
                let r = sm.apply(entries).await.unwrap();
                assert_eq!(r.len(), 2);
                assert!(
                    rx.borrow().paused && rx.borrow().allowed.contains(&addr),
                    "published on apply"
                );
                let snap = sm
                    .get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .unwrap();
                assert_eq!(snap.meta.last_log_id, Some(LogId::new(leader, 2)));
            }
            let db = open_db(&path).unwrap();
            assert!(has_state(&db).unwrap());
            let mut log = LogStore::new(db.clone());
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            let (mut sm, rx) = StateMachine::open(db).unwrap();
            assert!(
                rx.borrow().paused && rx.borrow().allowed.contains(&addr),
                "state rebuilt from the snapshot"
            );
            assert_eq!(
                sm.applied_state().await.unwrap().0,
                Some(LogId::new(leader, 2))
            );
            assert!(sm.get_current_snapshot().await.unwrap().is_some());
        });
    }
}
