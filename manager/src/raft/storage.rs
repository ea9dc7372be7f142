//! Durable Raft storage in one redb file per manager: the log, the vote and
//! the state machine (objects + last applied + membership) side by side.
//! The log, the vote, snapshots and purges commit with redb's default
//! `Durability::Immediate` (fsync) before openraft is told they are done. What
//! the log can give again commits with `Durability::None`: the state machine's
//! applies. The committed index waits in memory for the next append, which
//! writes it with its entries. redb makes a `None` commit durable with the
//! next immediate one, and every entry an apply took was appended (durably)
//! before it: a crash loses at most applies that the log replays from the
//! last durable `applied` (objects and `applied` stay in step: one
//! transaction), and a committed index that openraft learns again. A purge or a
//! snapshot, immediate, makes the applies before it durable. (On a 500-task
//! create the managers' fsyncs for applies and committed indexes were ~2 % of
//! the machine's CPU and sat on the path to every task's start.) redb calls
//! run on the blocking pool so an fsync never stalls the tasks that drive
//! heartbeats.
//!
//! Every record is sealed with this manager's data key (`atrest`): the
//! database holds the table and key names, and ciphertext.
//!
//! Architecture Invariant: the state machine's objects and `last_applied` are
//! written in one transaction, so a crash never leaves them out of step.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::atrest::{self, Kek, Key};
use crate::state::{ObjKey, Response, State};
use crate::store::Store;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// The DEK, sealed by the KEK (the one record not sealed by the DEK).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn unjson<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(io_err)
}

/// A record's associated data: its table and key, so a sealed record moved
/// to another key (or table) fails to open.
fn aad(table: &str, key: &str) -> Vec<u8> {
    format!("{table}/{key}").into_bytes()
}

/// The manager's database and the data key that seals its records.
pub struct Disk {
    db: Database,
    dek: Key,
    dek_bytes: [u8; atrest::KEY_LEN],
}

/// The shared handle the log, the state machine and the snapshot builder hold.
pub type Db = Arc<Disk>;

impl Disk {
    fn seal(&self, table: &str, key: &str, plain: &[u8]) -> io::Result<Vec<u8>> {
        Ok(self.dek.seal(&aad(table, key), plain)?)
    }
    fn unseal(&self, table: &str, key: &str, record: &[u8]) -> io::Result<Vec<u8>> {
        Ok(self.dek.open(&aad(table, key), record, || format!("{table}/{key}"))?)
    }
    fn enc<T: Serialize>(&self, table: &str, key: &str, v: &T) -> io::Result<Vec<u8>> {
        self.seal(table, key, &json(v)?)
    }
    fn dec<T: DeserializeOwned>(&self, table: &str, key: &str, record: &[u8]) -> io::Result<T> {
        unjson(&self.unseal(table, key, record)?)
    }
    fn enc_entry(&self, e: &EntryOf<TypeConfig>) -> io::Result<Vec<u8>> {
        self.enc("log", &e.log_id.index.to_string(), e)
    }
    fn dec_entry(&self, index: u64, record: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
        self.dec("log", &index.to_string(), record)
    }

    /// Seals the DEK again with another KEK (autolock turned on or off, the
    /// unlock key rotated). One small transaction; the records stay as they are.
    pub fn rewrap(&self, kek: &Kek) -> io::Result<()> {
        let wrapped = atrest::wrap_dek(&self.dek_bytes, kek)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(KEYS).map_err(io_err)?.insert("dek", wrapped.as_slice()).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    /// Whether the DEK is sealed by the unlock key (autolock).
    pub fn autolocked(&self) -> io::Result<bool> {
        Ok(wrapped_dek(&self.db)?.is_some_and(|w| atrest::needs_unlock(&w)))
    }
}

fn create_db(path: &Path) -> io::Result<Database> {
    // A small page cache: the state machine lives in memory anyway.
    let db = Database::builder().set_cache_size(8 << 20).create(path).map_err(|e| {
        let kind = match e {
            redb::DatabaseError::DatabaseAlreadyOpen => io::ErrorKind::ResourceBusy,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("open {}: {e}", path.display()))
    })?;
    let txn = db.begin_write().map_err(io_err)?;
    for t in [META, SM, OBJECTS, KEYS] {
        txn.open_table(t).map_err(io_err)?;
    }
    txn.open_table(LOG).map_err(io_err)?;
    txn.commit().map_err(io_err)?;
    Ok(db)
}

fn wrapped_dek(db: &Database) -> io::Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(io_err)?;
    let t = txn.open_table(KEYS).map_err(io_err)?;
    Ok(t.get("dek").map_err(io_err)?.map(|v| v.value().to_vec()))
}

/// Whether the store at `path` can only be opened with the unlock key
/// (autolock). A missing store needs none.
pub fn needs_unlock(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let db = create_db(path)?;
    Ok(wrapped_dek(&db)?.is_some_and(|w| atrest::needs_unlock(&w)))
}

/// [`open`], waiting a while for a manager this process stopped a moment
/// ago (a daemon resuming or forcing a new cluster in one life) to let go
/// of the file as its tasks see their cancellation; a file another process
/// holds gets the error after that wait.
pub async fn open_when_free(path: &Path, kek: &Kek) -> io::Result<Db> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(path, kek) {
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// Opens (or creates) the manager's database, opening its DEK with `kek`.
/// A new store gets a new DEK; a store written before encryption at rest
/// (plain records, no DEK) is rewritten sealed into a new file that replaces
/// the plain one, once.
pub fn open(path: &Path, kek: &Kek) -> io::Result<Db> {
    let db = create_db(path)?;
    let dek = match wrapped_dek(&db)? {
        Some(w) => atrest::unwrap_dek(&w, kek)?,
        None if is_empty(&db)? => {
            let dek = atrest::new_dek()?;
            let wrapped = atrest::wrap_dek(&dek, kek)?;
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(KEYS).map_err(io_err)?.insert("dek", wrapped.as_slice()).map_err(io_err)?;
            txn.commit().map_err(io_err)?;
            dek
        }
        None => {
            drop(db);
            let dek = migrate(path, kek)?;
            return Ok(Arc::new(Disk { db: create_db(path)?, dek: atrest::dek_key(&dek), dek_bytes: dek }));
        }
    };
    Ok(Arc::new(Disk { db, dek: atrest::dek_key(&dek), dek_bytes: dek }))
}

fn is_empty(db: &Database) -> io::Result<bool> {
    let txn = db.begin_read().map_err(io_err)?;
    for t in [META, SM, OBJECTS] {
        if !txn.open_table(t).map_err(io_err)?.is_empty().map_err(io_err)? {
            return Ok(false);
        }
    }
    txn.open_table(LOG).map_err(io_err)?.is_empty().map_err(io_err)
}

/// Rewrites a plain store sealed: every record into a new file beside it,
/// which then replaces the plain file (a rename, so a crash leaves either the
/// plain store, migrated again on the next start, or the sealed one). A new
/// file rather than records rewritten in place: the plain ones would linger
/// in the old file's free pages.
fn migrate(path: &Path, kek: &Kek) -> io::Result<[u8; atrest::KEY_LEN]> {
    let dek_bytes = atrest::new_dek()?;
    let wrapped = atrest::wrap_dek(&dek_bytes, kek)?;
    let next = PathBuf::from(format!("{}.sealing", path.display()));
    if next.exists() {
        std::fs::remove_file(&next)?;
    }
    {
        let old = create_db(path)?;
        let new = Disk { db: create_db(&next)?, dek: atrest::dek_key(&dek_bytes), dek_bytes };
        let r = old.begin_read().map_err(io_err)?;
        let w = new.db.begin_write().map_err(io_err)?;
        let mut records = 0usize;
        {
            let src = r.open_table(LOG).map_err(io_err)?;
            let mut dst = w.open_table(LOG).map_err(io_err)?;
            for item in src.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                let sealed = new.seal("log", &k.value().to_string(), v.value())?;
                dst.insert(k.value(), sealed.as_slice()).map_err(io_err)?;
                records += 1;
            }
        }
        for (def, name) in [(META, "meta"), (SM, "sm"), (OBJECTS, "objects")] {
            let src = r.open_table(def).map_err(io_err)?;
            let mut dst = w.open_table(def).map_err(io_err)?;
            for item in src.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                dst.insert(k.value(), new.seal(name, k.value(), v.value())?.as_slice()).map_err(io_err)?;
                records += 1;
            }
        }
        w.open_table(KEYS).map_err(io_err)?.insert("dek", wrapped.as_slice()).map_err(io_err)?;
        w.commit().map_err(io_err)?;
        tracing::info!(path = %path.display(), records, "sealed a plain Raft store with a new data key");
    }
    std::fs::rename(&next, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(dek_bytes)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

fn get_meta<T: DeserializeOwned>(disk: &Disk, table: TableDefinition<&str, &[u8]>, key: &str) -> io::Result<Option<T>> {
    let txn = disk.db.begin_read().map_err(io_err)?;
    let t = txn.open_table(table).map_err(io_err)?;
    match t.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(disk.dec(table.name(), key, v.value())?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(
    disk: &Disk,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    v: &T,
    durability: redb::Durability,
) -> io::Result<()> {
    let bytes = disk.enc(table.name(), key, v)?;
    let mut txn = disk.db.begin_write().map_err(io_err)?;
    txn.set_durability(durability).map_err(io_err)?;
    txn.open_table(table).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
    txn.commit().map_err(io_err)
}

// === log ===

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    /// The committed index openraft last saved, while it is not yet on disk:
    /// the next append writes it with its entries (see `save_committed`).
    committed: Arc<std::sync::Mutex<Option<Option<LogIdOf<TypeConfig>>>>>,
}

impl LogStore {
    pub fn new(db: Db) -> Self {
        LogStore { db, committed: Arc::default() }
    }

    fn pending_committed(&self) -> std::sync::MutexGuard<'_, Option<Option<LogIdOf<TypeConfig>>>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let db = self.db.clone();
        let range = bounds(&range);
        blocking(move || {
            let txn = db.db.begin_read().map_err(io_err)?;
            let t = txn.open_table(LOG).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.range::<u64>(range).map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                out.push(db.dec_entry(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, META, "vote")).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogIdOf<TypeConfig>> = get_meta(&db, META, "purged")?;
            let txn = db.db.begin_read().map_err(io_err)?;
            let t = txn.open_table(LOG).map_err(io_err)?;
            let last = match t.last().map_err(io_err)? {
                Some((k, v)) => Some(db.dec_entry(k.value(), v.value())?.log_id),
                None => None,
            };
            Ok(LogState { last_log_id: last.or(last_purged), last_purged_log_id: last_purged })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_meta(&db, META, "vote", &vote, redb::Durability::Immediate)).await
    }

    /// Kept in memory and written by the next append's transaction: a commit
    /// of its own per committed index cost each manager a redb transaction
    /// per round of replication. It was never durable before the next
    /// immediate commit anyway, and a lost one leaves a restart's state
    /// machine at its last durable apply until the leader commits again.
    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        *self.pending_committed() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        if let Some(committed) = *self.pending_committed() {
            return Ok(committed);
        }
        let db = self.db.clone();
        blocking(move || Ok(get_meta::<Option<LogIdOf<TypeConfig>>>(&db, META, "committed")?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, self.db.enc_entry(&e)?));
        }
        let committed = *self.pending_committed();
        let committed_row = committed.map(|c| self.db.enc("meta", "committed", &c)).transpose()?;
        let db = self.db.clone();
        let res = blocking(move || {
            let txn = db.db.begin_write().map_err(io_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                for (i, bytes) in &rows {
                    t.insert(*i, bytes.as_slice()).map_err(io_err)?;
                }
                if let Some(bytes) = &committed_row {
                    txn.open_table(META).map_err(io_err)?.insert("committed", bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await;
        // What was written is no longer pending (unless a newer one came meanwhile).
        if res.is_ok() {
            let mut pending = self.pending_committed();
            if *pending == committed {
                *pending = None;
            }
        }
        // Durable (fsync'd by the commit) before openraft hears about it.
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let db = self.db.clone();
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        blocking(move || {
            let txn = db.db.begin_write().map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?.retain_in(from.., |_, _| false).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = db.enc("meta", "purged", &Some(log_id))?;
            let txn = db.db.begin_write().map_err(io_err)?;
            txn.open_table(META).map_err(io_err)?.insert("purged", bytes.as_slice()).map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }
}

// === state machine ===

/// A snapshot as it travels and rests: the whole state, JSON.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// The state machine: redb for durability, [`Store`] for everything that reads.
pub struct StateMachine {
    db: Db,
    store: Store,
}

impl StateMachine {
    /// Loads the durable state into `store` (empty on a fresh database).
    pub async fn open(db: Db, store: Store) -> io::Result<StateMachine> {
        let db2 = db.clone();
        let (state, applied, membership) = blocking(move || {
            let txn = db2.db.begin_read().map_err(io_err)?;
            let t = txn.open_table(OBJECTS).map_err(io_err)?;
            let mut pairs = Vec::new();
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                pairs.push((k.value().to_string(), db2.unseal("objects", k.value(), v.value())?));
            }
            let state = State::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(io_err)?;
            let applied: Option<LogIdOf<TypeConfig>> = get_meta(&db2, SM, "applied")?.flatten();
            let membership: StoredMembershipOf<TypeConfig> = get_meta(&db2, SM, "membership")?.unwrap_or_default();
            Ok((state, applied, membership))
        })
        .await?;
        store.reset(state, applied, membership);
        Ok(StateMachine { db, store })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        Ok(self.store.applied())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        // Take what is ready now as one batch: one transaction, one fsync.
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut responses = Vec::with_capacity(batch.len());
        let mut rows: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        // Tasks placed by entries proposed here (on the leader: only there is a responder).
        let mut placed: Vec<String> = Vec::new();
        let timeline = shoal_proto::timeline::enabled();
        let commit = self.store.apply_batch(|state, applied, membership| {
            let mut changed: Vec<ObjKey> = Vec::new();
            for (entry, responder) in batch {
                *applied = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(req) => {
                        if timeline && responder.is_some() {
                            placed.extend(req.cmd.placed_tasks().map(str::to_string));
                        }
                        let (resp, keys) = state.apply(entry.log_id.index, &req);
                        changed.extend(keys);
                        resp
                    }
                    EntryPayload::Membership(m) => {
                        *membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m);
                        Response::Ok
                    }
                };
                responses.push((responder, resp));
            }
            changed.sort();
            changed.dedup();
            for k in &changed {
                rows.push((k.db_key(), state.encode(k)));
            }
            changed
        });
        let (applied, membership) = self.store.applied();
        let db = self.db.clone();
        blocking(move || {
            // The log holds every entry applied here: see the module's note on durability.
            let mut txn = db.db.begin_write().map_err(io_err)?;
            txn.set_durability(redb::Durability::None).map_err(io_err)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(io_err)?;
                for (key, value) in &rows {
                    match value {
                        Some(v) => {
                            objects.insert(key.as_str(), db.seal("objects", key, v)?.as_slice()).map_err(io_err)?
                        }
                        None => objects.remove(key.as_str()).map_err(io_err)?,
                    };
                }
                let mut sm = txn.open_table(SM).map_err(io_err)?;
                sm.insert("applied", db.enc("sm", "applied", &applied)?.as_slice()).map_err(io_err)?;
                sm.insert("membership", db.enc("sm", "membership", &membership)?.as_slice()).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await?;
        // Disk first, then watchers, then the clients.
        for id in &placed {
            shoal_proto::timeline!(shoal_proto::timeline::COMMITTED, task = %id);
        }
        commit.publish();
        for (responder, resp) in responses {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), store: self.store.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state: State = unjson(&snapshot)?;
        let stored = self.db.enc("sm", "snapshot", &StoredSnapshot { meta: meta.clone(), data: snapshot })?;
        let rows: Vec<(String, Vec<u8>)> =
            all_keys(&state).into_iter().filter_map(|k| state.encode(&k).map(|v| (k.db_key(), v))).collect();
        let applied = meta.last_log_id;
        let membership = meta.last_membership.clone();
        let (a, m) = (applied, membership.clone());
        let db = self.db.clone();
        blocking(move || {
            let txn = db.db.begin_write().map_err(io_err)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(io_err)?;
                objects.retain(|_, _| false).map_err(io_err)?;
                for (k, v) in &rows {
                    objects.insert(k.as_str(), db.seal("objects", k, v)?.as_slice()).map_err(io_err)?;
                }
                let mut sm = txn.open_table(SM).map_err(io_err)?;
                sm.insert("applied", db.enc("sm", "applied", &a)?.as_slice()).map_err(io_err)?;
                sm.insert("membership", db.enc("sm", "membership", &m)?.as_slice()).map_err(io_err)?;
                sm.insert("snapshot", stored.as_slice()).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await?;
        self.store.reset(state, applied, membership);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let db = self.db.clone();
        let stored: Option<StoredSnapshot> = blocking(move || get_meta(&db, SM, "snapshot")).await?;
        Ok(stored.map(|s| SnapshotOf::<TypeConfig, Vec<u8>> { meta: s.meta, snapshot: s.data }))
    }
}

fn all_keys(state: &State) -> Vec<ObjKey> {
    let mut keys: Vec<ObjKey> = state.nodes.keys().map(|id| ObjKey::Node(id.clone())).collect();
    keys.extend(state.services.keys().map(|id| ObjKey::Service(id.clone())));
    keys.extend(state.tasks.keys().map(|id| ObjKey::Task(id.clone())));
    keys.extend(state.networks.keys().map(|id| ObjKey::Network(id.clone())));
    keys.extend(state.attachments.keys().map(|id| ObjKey::Attachment(id.clone())));
    keys.extend(state.secrets.keys().map(|id| ObjKey::Secret(id.clone())));
    keys.extend(state.configs.keys().map(|id| ObjKey::Config(id.clone())));
    if state.cluster.is_some() {
        keys.push(ObjKey::Cluster);
    }
    keys
}

/// Builds a snapshot from the in-memory state, which `apply` only replaces
/// whole under its lock, so the copy is consistent with `applied`.
pub struct SnapshotBuilder {
    db: Db,
    store: Store,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (state, applied, membership) = self.store.snapshot();
        let data = json(&*state)?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: applied, last_membership: membership };
        let stored = self.db.enc("sm", "snapshot", &StoredSnapshot { meta: meta.clone(), data: data.clone() })?;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.db.begin_write().map_err(io_err)?;
            txn.open_table(SM).map_err(io_err)?.insert("snapshot", stored.as_slice()).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data })
    }
}

/// Disaster recovery (`swarm init --force-new-cluster`): appends a membership
/// entry that makes `raft_id` the only voter, keeping the log and state. Run on
/// a stopped manager; on start it elects itself and commits the entry.
pub fn force_single_voter(disk: &Disk, raft_id: u64, addr: &str) -> io::Result<()> {
    let txn = disk.db.begin_write().map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let last: Option<EntryOf<TypeConfig>> = match log.last().map_err(io_err)? {
            Some((k, v)) => Some(disk.dec_entry(k.value(), v.value())?),
            None => None,
        };
        let purged: Option<LogIdOf<TypeConfig>> = {
            let meta = txn.open_table(META).map_err(io_err)?;
            let v = meta.get("purged").map_err(io_err)?;
            match v {
                Some(v) => disk.dec::<Option<LogIdOf<TypeConfig>>>("meta", "purged", v.value())?,
                None => None,
            }
        };
        let prev = last
            .map(|e| e.log_id)
            .or(purged)
            .ok_or_else(|| io::Error::other("the Raft log is empty: nothing to recover"))?;
        let membership = openraft::Membership::<u64, openraft::BasicNode>::new(
            vec![std::collections::BTreeSet::from([raft_id])],
            std::collections::BTreeMap::from([(raft_id, openraft::BasicNode { addr: addr.to_string() })]),
        )
        .map_err(io_err)?;
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig> { leader_id: prev.leader_id, index: prev.index + 1 },
            payload: EntryPayload::Membership(membership),
        };
        log.insert(entry.log_id.index, disk.enc_entry(&entry)?.as_slice()).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use openraft::RaftLogReader;
    use openraft::storage::{RaftLogStorage, RaftStateMachine};

    use super::*;
    use crate::raft::atrest::{Kek, UnlockKey};
    use crate::state::{Command, Request};

    const MARK: &str = "PLAINTEXT-MARK-7f3a";

    fn entry(index: u64) -> EntryOf<TypeConfig> {
        let spec = shoal_proto::network::NetworkSpec { name: format!("{MARK}-{index}"), ..Default::default() };
        EntryOf::<TypeConfig> {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Request {
                at_ms: 1,
                cmd: Command::CreateNetwork { id: format!("n{index}"), spec },
            }),
        }
    }

    fn state_with_mark() -> State {
        let mut state = State::default();
        let spec = shoal_proto::network::NetworkSpec { name: MARK.into(), ..Default::default() };
        state.apply(1, &Request { at_ms: 1, cmd: Command::CreateNetwork { id: "net1".into(), spec } });
        state
    }

    fn contains(path: &Path, needle: &str) -> bool {
        std::fs::read(path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Writes a log, a vote and a snapshot (objects), as Raft would.
    async fn fill(db: Db) {
        let mut log = LogStore::new(db.clone());
        log.save_vote(&VoteOf::<TypeConfig>::new(3, 1)).await.unwrap();
        log.append((1..=3).map(entry), IOFlushed::<TypeConfig>::noop()).await.unwrap();
        let mut sm = StateMachine::open(db, Store::new()).await.unwrap();
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: None, last_membership: Default::default() };
        sm.install_snapshot(&meta, serde_json::to_vec(&state_with_mark()).unwrap()).await.unwrap();
    }

    async fn check(db: Db) {
        let mut log = LogStore::new(db.clone());
        assert_eq!(log.read_vote().await.unwrap(), Some(VoteOf::<TypeConfig>::new(3, 1)));
        let entries = log.try_get_log_entries(1..=3).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(3));
        let store = Store::new();
        let mut sm = StateMachine::open(db, store.clone()).await.unwrap();
        assert_eq!(*store.read(), state_with_mark());
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_sealed_store_reads_back_after_a_reopen_and_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let (path, kek) = (dir.path().join("raft.redb"), Kek::File(dir.path().join("raft.kek")));
        fill(open(&path, &kek).unwrap()).await;
        check(open(&path, &kek).unwrap()).await;
        assert!(!contains(&path, MARK), "no record is plain on disk");
        // Without the key file the store does not open.
        std::fs::remove_file(dir.path().join("raft.kek")).unwrap();
        let e = open(&path, &kek).err().unwrap();
        assert!(e.to_string().contains("raft.kek is missing"), "{e}");
    }

    #[tokio::test]
    async fn the_committed_index_is_read_back_at_once_and_written_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let (path, kek) = (dir.path().join("raft.redb"), Kek::File(dir.path().join("raft.kek")));
        let db = open(&path, &kek).unwrap();
        let mut log = LogStore::new(db.clone());
        log.append((1..=2).map(entry), IOFlushed::<TypeConfig>::noop()).await.unwrap();
        let two = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 2));
        log.save_committed(two).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), two, "what was saved is what is read");
        // Not on disk yet: a store opened afresh knows none.
        assert_eq!(LogStore::new(db.clone()).read_committed().await.unwrap(), None);
        // The next append carries it.
        log.append((3..=3).map(entry), IOFlushed::<TypeConfig>::noop()).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), two);
        drop((log, db));
        let mut reopened = LogStore::new(open(&path, &kek).unwrap());
        assert_eq!(reopened.read_committed().await.unwrap(), two);
        assert_eq!(reopened.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(3));
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_record_fails_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, kek) = (dir.path().join("raft.redb"), Kek::File(dir.path().join("raft.kek")));
        fill(open(&path, &kek).unwrap()).await;
        {
            let db = create_db(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                let mut rec = t.get(2).unwrap().unwrap().value().to_vec();
                let last = rec.len() - 1;
                rec[last] ^= 0x80;
                t.insert(2, rec.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut log = LogStore::new(open(&path, &kek).unwrap());
        let e = log.try_get_log_entries(1..=3).await.unwrap_err();
        assert!(e.to_string().contains("log/2 failed authentication"), "{e}");
        drop(log);
        // A record moved to another key fails too (the key is associated data).
        {
            let db = create_db(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                let rec = t.get(1).unwrap().unwrap().value().to_vec();
                t.insert(3, rec.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut log = LogStore::new(open(&path, &kek).unwrap());
        let e = log.try_get_log_entries(3..=3).await.unwrap_err();
        assert!(e.to_string().contains("log/3 failed authentication"), "{e}");
    }

    #[tokio::test]
    async fn a_plain_store_is_migrated_once_and_the_plain_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (path, kek) = (dir.path().join("raft.redb"), Kek::File(dir.path().join("raft.kek")));
        // A store as the releases before encryption at rest wrote it: plain JSON records.
        {
            let db = create_db(&path).unwrap();
            let state = state_with_mark();
            let snapshot = StoredSnapshot {
                meta: SnapshotMetaOf::<TypeConfig> { last_log_id: None, last_membership: Default::default() },
                data: json(&state).unwrap(),
            };
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                for i in 1..=3 {
                    log.insert(i, json(&entry(i)).unwrap().as_slice()).unwrap();
                }
                txn.open_table(META)
                    .unwrap()
                    .insert("vote", json(&VoteOf::<TypeConfig>::new(3, 1)).unwrap().as_slice())
                    .unwrap();
                let mut objects = txn.open_table(OBJECTS).unwrap();
                for k in all_keys(&state) {
                    objects.insert(k.db_key().as_str(), state.encode(&k).unwrap().as_slice()).unwrap();
                }
                let mut sm = txn.open_table(SM).unwrap();
                sm.insert("applied", json(&None::<LogIdOf<TypeConfig>>).unwrap().as_slice()).unwrap();
                sm.insert("snapshot", json(&snapshot).unwrap().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(contains(&path, MARK));
        let db = open(&path, &kek).unwrap();
        assert!(!contains(&path, MARK), "the plain file was replaced");
        assert!(!PathBuf::from(format!("{}.sealing", path.display())).exists());
        check(db).await;
        // A second start finds it sealed and leaves it be.
        let before = std::fs::read(&path).unwrap();
        check(open(&path, &kek).unwrap()).await;
        assert_eq!(wrapped_dek(&create_db(&path).unwrap()).unwrap().map(|w| w.len()), Some(1 + 1 + 12 + 32 + 16));
        assert!(!contains(&path, MARK) && !before.is_empty());
    }

    #[tokio::test]
    async fn autolock_rewraps_the_data_key_and_needs_the_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let file = Kek::File(dir.path().join("raft.kek"));
        let db = open(&path, &file).unwrap();
        fill(db.clone()).await;
        let key = UnlockKey::generate().unwrap();
        db.rewrap(&Kek::Unlock(key.clone())).unwrap();
        assert!(db.autolocked().unwrap());
        drop(db);
        assert!(needs_unlock(&path).unwrap());
        let e = open(&path, &Kek::Locked).err().unwrap();
        assert!(e.to_string().contains("shoal swarm unlock"), "{e}");
        let e = open(&path, &Kek::Unlock(UnlockKey::generate().unwrap())).err().unwrap();
        assert_eq!(e.to_string(), "invalid key");
        let db = open(&path, &Kek::Unlock(key)).unwrap();
        check(db.clone()).await;
        // Autolock off again: the key file opens it.
        db.rewrap(&file).unwrap();
        drop(db);
        assert!(!needs_unlock(&path).unwrap());
        check(open(&path, &file).unwrap()).await;
    }
}
