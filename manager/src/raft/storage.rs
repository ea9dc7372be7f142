//! Durable Raft storage in one redb file per manager: the log, the vote and
//! the state machine (objects + last applied + membership) side by side.
//! Every write transaction commits with redb's default `Durability::Immediate`
//! (fsync) before openraft is told it is done. redb calls run on the blocking
//! pool so an fsync never stalls the tasks that drive heartbeats.
//!
//! Architecture Invariant: the state machine's objects and `last_applied` are
//! written in one transaction, so a crash never leaves them out of step.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::state::{ObjKey, Response, State};
use crate::store::Store;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(io_err)
}

/// Opens (or creates) the manager's database.
pub fn open(path: &Path) -> io::Result<Arc<Database>> {
    // A small page cache: the state machine lives in memory anyway.
    let db = Database::builder()
        .set_cache_size(8 << 20)
        .create(path)
        .map_err(|e| io::Error::other(format!("open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(io_err)?;
    {
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.open_table(SM).map_err(io_err)?;
        txn.open_table(OBJECTS).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)?;
    Ok(Arc::new(db))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

fn get_meta<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    let txn = db.begin_read().map_err(io_err)?;
    let t = txn.open_table(table).map_err(io_err)?;
    match t.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(db: &Database, table: TableDefinition<&str, &[u8]>, key: &str, v: &T) -> io::Result<()> {
    let bytes = enc(v)?;
    let txn = db.begin_write().map_err(io_err)?;
    txn.open_table(table).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
    txn.commit().map_err(io_err)
}

// === log ===

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
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
            let txn = db.begin_read().map_err(io_err)?;
            let t = txn.open_table(LOG).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.range::<u64>(range).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                out.push(dec(v.value())?);
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
            let txn = db.begin_read().map_err(io_err)?;
            let t = txn.open_table(LOG).map_err(io_err)?;
            let last = match t.last().map_err(io_err)? {
                Some((_, v)) => Some(dec::<EntryOf<TypeConfig>>(v.value())?.log_id),
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
        blocking(move || put_meta(&db, META, "vote", &vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || put_meta(&db, META, "committed", &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
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
            rows.push((e.log_id.index, enc(&e)?));
        }
        let db = self.db.clone();
        let res = blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                for (i, bytes) in &rows {
                    t.insert(*i, bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await;
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
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?.retain_in(from.., |_, _| false).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = enc(&Some(log_id))?;
            let txn = db.begin_write().map_err(io_err)?;
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
    db: Arc<Database>,
    store: Store,
}

impl StateMachine {
    /// Loads the durable state into `store` (empty on a fresh database).
    pub async fn open(db: Arc<Database>, store: Store) -> io::Result<StateMachine> {
        let db2 = db.clone();
        let (state, applied, membership) = blocking(move || {
            let txn = db2.begin_read().map_err(io_err)?;
            let t = txn.open_table(OBJECTS).map_err(io_err)?;
            let mut pairs = Vec::new();
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                pairs.push((k.value().to_string(), v.value().to_vec()));
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
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(io_err)?;
                for (key, value) in &rows {
                    match value {
                        Some(v) => objects.insert(key.as_str(), v.as_slice()).map_err(io_err)?,
                        None => objects.remove(key.as_str()).map_err(io_err)?,
                    };
                }
                let mut sm = txn.open_table(SM).map_err(io_err)?;
                sm.insert("applied", enc(&applied)?.as_slice()).map_err(io_err)?;
                sm.insert("membership", enc(&membership)?.as_slice()).map_err(io_err)?;
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
        let state: State = dec(&snapshot)?;
        let stored = enc(&StoredSnapshot { meta: meta.clone(), data: snapshot })?;
        let rows: Vec<(String, Vec<u8>)> =
            all_keys(&state).into_iter().filter_map(|k| state.encode(&k).map(|v| (k.db_key(), v))).collect();
        let applied = meta.last_log_id;
        let membership = meta.last_membership.clone();
        let (a, m) = (applied, membership.clone());
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(io_err)?;
                objects.retain(|_, _| false).map_err(io_err)?;
                for (k, v) in &rows {
                    objects.insert(k.as_str(), v.as_slice()).map_err(io_err)?;
                }
                let mut sm = txn.open_table(SM).map_err(io_err)?;
                sm.insert("applied", enc(&a)?.as_slice()).map_err(io_err)?;
                sm.insert("membership", enc(&m)?.as_slice()).map_err(io_err)?;
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
    db: Arc<Database>,
    store: Store,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (state, applied, membership) = self.store.snapshot();
        let data = enc(&*state)?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: applied, last_membership: membership };
        let stored = enc(&StoredSnapshot { meta: meta.clone(), data: data.clone() })?;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
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
pub fn force_single_voter(db: &Database, raft_id: u64, addr: &str) -> io::Result<()> {
    let txn = db.begin_write().map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let last: Option<EntryOf<TypeConfig>> = match log.last().map_err(io_err)? {
            Some((_, v)) => Some(dec(v.value())?),
            None => None,
        };
        let purged: Option<LogIdOf<TypeConfig>> = {
            let meta = txn.open_table(META).map_err(io_err)?;
            let v = meta.get("purged").map_err(io_err)?;
            match v {
                Some(v) => dec::<Option<LogIdOf<TypeConfig>>>(v.value())?,
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
        log.insert(entry.log_id.index, enc(&entry)?.as_slice()).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}
