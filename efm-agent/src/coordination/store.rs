//! Raft storage: log, vote, committed index and the latest snapshot in one redb file per cluster;
//! the state machine ([`ClusterState`]) in memory.
//!
//! redb's default durability is `Durability::Immediate`: a write transaction's `commit()` returns
//! only after the data is on disk (fsync). Every redb call runs on tokio's blocking pool
//! ([`Disk::run`]), never on a runtime thread: a slow disk then suspends only the Raft task that
//! waits for it, never the heartbeat loop or other tasks (ARCHITECTURE.md, "Nothing blocks the
//! heartbeat"). openraft's contract is kept by awaiting each call: `save_vote` and `append` return
//! (and `append` reports completion to openraft) only after their commit, and openraft issues its
//! log calls one after another, so they reach the disk in its order. Entries and snapshots are
//! stored as JSON (small, inspectable with any redb tool).
//!
//! The state machine is rebuilt at start from the persisted snapshot, then openraft re-applies the
//! log entries after it up to the persisted committed index.
//!
//! **Test hook**: `EFM_TEST_STORE_DELAY_MS=N` in the agent's environment makes every commit of
//! this store take `N` ms longer (a sleep before `commit()`, on the thread doing the commit),
//! standing in for a slow disk in `tests/tests/slow_store.rs`. It is logged as a warning; never
//! set it in production.

use std::{
    fmt::Debug,
    io::Cursor,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use openraft::{
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};
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

/// The test hook's environment variable (see the module documentation).
pub const DELAY_ENV: &str = "EFM_TEST_STORE_DELAY_MS";

type SErr = StorageError<u64>;

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &(impl std::error::Error + 'static)) -> SErr {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn json_err(e: serde_json::Error) -> redb::Error {
    redb::Error::Io(e.into())
}

/// The commit delay the test hook asks for: zero when [`DELAY_ENV`] is unset; an error naming the
/// variable when it is not a number of milliseconds.
pub fn test_commit_delay() -> Result<Duration, String> {
    let Some(v) = std::env::var_os(DELAY_ENV) else {
        return Ok(Duration::ZERO);
    };
    let ms = v
        .to_str()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{DELAY_ENV}={}: not a number of milliseconds", v.to_string_lossy()))?;
    Ok(Duration::from_millis(ms))
}

/// The redb file. Its methods block (reads and fsyncs): call them through [`Disk::run`].
pub struct Disk {
    db: Database,
    /// The test hook's delay before every commit (zero in production).
    commit_delay: Duration,
}

impl Disk {
    /// Commits `tx` (durable when this returns), after the test hook's delay.
    fn commit(&self, tx: WriteTransaction) -> Result<(), redb::Error> {
        if !self.commit_delay.is_zero() {
            std::thread::sleep(self.commit_delay);
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` with the file on the blocking pool and waits for it without blocking the runtime
    /// thread. If the waiting task is dropped, `f` still runs to its end (a commit is never cut
    /// short).
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, redb::Error> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || f(&disk))
            .await
            .map_err(|e| redb::Error::Io(std::io::Error::other(format!("store task: {e}"))))?
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, redb::Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        let Some(v) = t.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| redb::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{key}: {e}"))))
    }

    fn put_meta(&self, key: &str, bytes: &[u8]) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(META)?;
            t.insert(key, bytes)?;
        }
        self.commit(tx)
    }

    /// Whether the file holds any Raft state (a vote or a log entry or a snapshot).
    pub fn has_state(&self) -> Result<bool, redb::Error> {
        let tx = self.db.begin_read()?;
        let m = tx.open_table(META)?;
        let l = tx.open_table(LOGS)?;
        Ok(m.get(K_VOTE)?.is_some() || m.get(K_SNAPSHOT)?.is_some() || l.first()?.is_some())
    }

    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOGS)?;
        let start = match range.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in t.range(start..)? {
            let (k, v) = item?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, redb::Error> {
        let last_purged: Option<LogId<u64>> = self.get_meta(K_PURGED)?;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LOGS)?;
        let last = match t.last()? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(json_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOGS)?;
            for (index, bytes) in entries {
                t.insert(*index, bytes.as_slice())?;
            }
        }
        self.commit(tx)
    }

    fn truncate(&self, from: u64) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOGS)?;
            t.retain_in(from.., |_, _| false)?;
        }
        self.commit(tx)
    }

    fn purge(&self, log_id: LogId<u64>) -> Result<(), redb::Error> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(json_err)?;
        let tx = self.db.begin_write()?;
        {
            let mut m = tx.open_table(META)?;
            m.insert(K_PURGED, bytes.as_slice())?;
            let mut t = tx.open_table(LOGS)?;
            t.retain_in(..=log_id.index, |_, _| false)?;
        }
        self.commit(tx)
    }
}

/// Opens (or creates) the redb file and its tables; blocks (call it on the blocking pool).
/// `commit_delay` is the test hook's (zero in production).
pub fn open_db(path: &Path, commit_delay: Duration) -> Result<Arc<Disk>, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(LOGS)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(Arc::new(Disk { db, commit_delay }))
}

/// The log and vote store. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<Disk>,
}

impl LogStore {
    #[must_use]
    pub fn new(disk: Arc<Disk>) -> Self {
        Self { disk }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let owned = (range.start_bound().cloned(), range.end_bound().cloned());
        self.disk.run(move |d| d.read_entries(owned)).await.map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        self.disk.run(Disk::log_state).await.map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let write = |e| err(ErrorSubject::Vote, ErrorVerb::Write, &e);
        let bytes = serde_json::to_vec(vote).map_err(|e| write(json_err(e)))?;
        // Durable when this returns: openraft relies on it before answering a vote.
        self.disk.run(move |d| d.put_meta(K_VOTE, &bytes)).await.map_err(write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.disk.run(|d| d.get_meta(K_VOTE)).await.map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        let write = |e| err(ErrorSubject::Store, ErrorVerb::Write, &e);
        let bytes = serde_json::to_vec(&committed).map_err(|e| write(json_err(e)))?;
        self.disk.run(move |d| d.put_meta(K_COMMITTED, &bytes)).await.map_err(write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        self.disk
            .run(|d| d.get_meta::<Option<LogId<u64>>>(K_COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Result<Vec<(u64, Vec<u8>)>, redb::Error> =
            entries.into_iter().map(|e| Ok((e.log_id.index, serde_json::to_vec(&e).map_err(json_err)?))).collect();
        // Readable and on disk (Durability::Immediate) when this returns, so the callback can
        // report completion at once; openraft's next log call starts only after this one.
        let written = match encoded {
            Ok(rows) => self.disk.run(move |d| d.append(&rows)).await,
            Err(e) => Err(e),
        };
        match written {
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
        self.disk
            .run(move |d| d.truncate(log_id.index))
            .await
            .map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.disk.run(move |d| d.purge(log_id)).await.map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
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
    disk: Arc<Disk>,
    inner: Arc<Mutex<SmInner>>,
    /// Serializes persisting snapshots: openraft builds one on a task of its own, which may run
    /// while a snapshot from the leader is installed.
    snapshot_write: Arc<Mutex<()>>,
    tx: Arc<watch::Sender<Arc<ClusterState>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StateMachine {
    /// Loads the persisted snapshot (if any) as the starting state; blocks (call it on the
    /// blocking pool).
    pub fn open(disk: Arc<Disk>) -> Result<(Self, watch::Receiver<Arc<ClusterState>>), redb::Error> {
        let snap: Option<StoredSnapshot> = disk.get_meta(K_SNAPSHOT)?;
        let mut inner = SmInner {
            state: ClusterState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshot_seq: 0,
        };
        if let Some(s) = snap {
            inner.state = serde_json::from_slice(&s.data).map_err(json_err)?;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.snapshot = Some(s);
        }
        let (tx, rx) = watch::channel(Arc::new(inner.state.clone()));
        Ok((
            Self {
                disk,
                inner: Arc::new(Mutex::new(inner)),
                snapshot_write: Arc::new(Mutex::new(())),
                tx: Arc::new(tx),
            },
            rx,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmInner> {
        lock(&self.inner)
    }

    /// Writes `stored` and makes it the current snapshot, unless a newer one was persisted
    /// meanwhile (then that one stays: the log before it may be purged already). Runs on the
    /// blocking pool; the state machine's lock is held only to compare and swap, never during
    /// the commit.
    async fn persist(&self, stored: StoredSnapshot) -> Result<(), redb::Error> {
        let bytes = serde_json::to_vec(&stored).map_err(json_err)?;
        let (inner, serial) = (self.inner.clone(), self.snapshot_write.clone());
        self.disk
            .run(move |d| {
                let _serial = lock(&serial);
                let current = lock(&inner).snapshot.as_ref().map(|s| s.meta.last_log_id);
                if current.is_some_and(|c| c > stored.meta.last_log_id) {
                    return Ok(());
                }
                d.put_meta(K_SNAPSHOT, &bytes)?;
                lock(&inner).snapshot = Some(stored);
                Ok(())
            })
            .await
    }

    async fn build(&self) -> Result<Snapshot<TypeConfig>, SErr> {
        let stored = {
            let mut g = self.lock();
            g.snapshot_seq += 1;
            let data =
                serde_json::to_vec(&g.state).map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
            let snapshot_id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.snapshot_seq),
                None => format!("none-{}", g.snapshot_seq),
            };
            let meta = SnapshotMeta { last_log_id: g.last_applied, last_membership: g.membership.clone(), snapshot_id };
            StoredSnapshot { meta, data }
        };
        self.persist(stored.clone()).await.map_err(|e| err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        self.build().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, RaftNode>), SErr> {
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
                out.push(r.unwrap_or(Ok(ApplyOk { changed: false, epoch: g.state.epoch, primary: g.state.primary })));
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
        let new_state: ClusterState = serde_json::from_slice(&data)
            .map_err(|e| err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, &e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.persist(stored)
            .await
            .map_err(|e| err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, &e))?;
        {
            let mut g = self.lock();
            g.state = new_state.clone();
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
        }
        tracing::info!("installed snapshot {meta}");
        self.tx.send_replace(Arc::new(new_state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let g = self.lock();
        Ok(g.snapshot
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
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
            let dir = std::env::temp_dir().join(format!("efm-raft-suite-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let db = open_db(&dir.join("t.raft.redb"), Duration::ZERO).unwrap();
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
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("efm-raft-reopen-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let _g = Guard(dir.clone());
            let path = dir.join("c.raft.redb");
            let addr: std::net::SocketAddr = "198.18.0.1:7800".parse().unwrap();
            let leader = openraft::CommittedLeaderId::new(3, 1);
            {
                let db = open_db(&path, Duration::ZERO).unwrap();
                assert!(!db.has_state().unwrap());
                let mut log = LogStore::new(db.clone());
                log.save_vote(&Vote::new(3, 1)).await.unwrap();
                let (mut sm, rx) = StateMachine::open(db).unwrap();
                let entries = vec![
                    Entry::<TypeConfig> {
                        log_id: LogId::new(leader, 1),
                        payload: EntryPayload::Normal(super::super::state::Command::AllowNode { node: addr }),
                    },
                    Entry::<TypeConfig> {
                        log_id: LogId::new(leader, 2),
                        payload: EntryPayload::Normal(super::super::state::Command::SetPaused(true)),
                    },
                ];
                let r = sm.apply(entries).await.unwrap();
                assert_eq!(r.len(), 2);
                assert!(rx.borrow().paused && rx.borrow().allowed.contains(&addr), "published on apply");
                let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
                assert_eq!(snap.meta.last_log_id, Some(LogId::new(leader, 2)));
            }
            let db = open_db(&path, Duration::ZERO).unwrap();
            assert!(db.has_state().unwrap());
            let mut log = LogStore::new(db.clone());
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            let (mut sm, rx) = StateMachine::open(db).unwrap();
            assert!(rx.borrow().paused && rx.borrow().allowed.contains(&addr), "state rebuilt from the snapshot");
            assert_eq!(sm.applied_state().await.unwrap().0, Some(LogId::new(leader, 2)));
            assert!(sm.get_current_snapshot().await.unwrap().is_some());
        });
    }

    /// A slow disk (the test hook's commit delay) suspends only the task waiting for the store:
    /// on a single-threaded runtime a 10 ms ticker is never held up for a commit's 300 ms (bound
    /// 200 ms, for a busy machine) while a vote and a log entry take 300 ms each to commit, and
    /// both are durable when they return.
    #[test]
    fn coordination_store_slow_commit_does_not_block_the_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("efm-raft-slow-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let _g = Guard(dir.clone());
            let delay = Duration::from_millis(300);
            let disk = open_db(&dir.join("s.raft.redb"), delay).unwrap();
            let ticker = tokio::spawn(async {
                let (mut gaps, mut last) = (Vec::new(), std::time::Instant::now());
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for _ in 0..50 {
                    tick.tick().await;
                    gaps.push(last.elapsed());
                    last = std::time::Instant::now();
                }
                gaps
            });
            // The ticker is running before the first commit starts.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t0 = std::time::Instant::now();
            let mut log = LogStore::new(disk.clone());
            log.save_vote(&Vote::new(7, 1)).await.unwrap();
            // `append` itself needs openraft's callback; its write path is this one.
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(openraft::CommittedLeaderId::new(7, 1), 1),
                payload: EntryPayload::Blank,
            };
            let row = (1, serde_json::to_vec(&entry).unwrap());
            disk.run(move |d| d.append(&[row])).await.unwrap();
            let took = t0.elapsed();
            assert!(took >= delay * 2, "two commits took {took:?}, the hook asks {delay:?} each");
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
            assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(1));
            let gaps = ticker.await.unwrap();
            let worst = gaps.iter().max().unwrap();
            assert!(
                *worst < Duration::from_millis(200),
                "the runtime stalled {worst:?} during a slow commit: {gaps:?}"
            );
        });
    }

    /// A snapshot built from an older state (openraft builds on a task of its own) never replaces
    /// a newer one installed meanwhile, in memory or on disk.
    #[test]
    fn coordination_store_keeps_the_newer_snapshot() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("efm-raft-snap-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let _g = Guard(dir.clone());
            let path = dir.join("n.raft.redb");
            let leader = openraft::CommittedLeaderId::new(2, 1);
            let snapshot = |index: u64| StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: Some(LogId::new(leader, index)),
                    last_membership: StoredMembership::default(),
                    snapshot_id: format!("s{index}"),
                },
                data: serde_json::to_vec(&ClusterState::default()).unwrap(),
            };
            {
                let (mut sm, _rx) = StateMachine::open(open_db(&path, Duration::ZERO).unwrap()).unwrap();
                let newer = snapshot(10);
                sm.install_snapshot(&newer.meta, Box::new(Cursor::new(newer.data.clone()))).await.unwrap();
                sm.persist(snapshot(5)).await.unwrap();
                let current = sm.get_current_snapshot().await.unwrap().unwrap();
                assert_eq!(current.meta.snapshot_id, "s10", "in memory");
            }
            let (mut sm, _rx) = StateMachine::open(open_db(&path, Duration::ZERO).unwrap()).unwrap();
            assert_eq!(sm.get_current_snapshot().await.unwrap().unwrap().meta.snapshot_id, "s10", "on disk");
            assert_eq!(sm.applied_state().await.unwrap().0, Some(LogId::new(leader, 10)));
        });
    }
}
