//! The in-memory view of the replicated state that every reader uses, and the
//! event stream of what changed. The Raft state machine is its only writer.
//! Readers take an `Arc<State>` (cheap, consistent, never blocks a writer for
//! long); watchers `subscribe()` first and then `read()`, skipping events at or
//! below the index they read, and resync on `Reset` or a lagged receiver.

use std::sync::{Arc, RwLock};

use openraft::alias::{LogIdOf, StoredMembershipOf};
use tokio::sync::{broadcast, watch};

use crate::raft::TypeConfig;
use crate::state::{ObjKey, State};

/// A change notice, published after the change is durable.
#[derive(Clone, Debug)]
pub enum Event {
    Changed {
        index: u64,
        keys: Arc<Vec<ObjKey>>,
    },
    /// The whole state was replaced (snapshot installed): resync.
    Reset,
}

struct Inner {
    state: Arc<State>,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<RwLock<Inner>>,
    events: broadcast::Sender<Event>,
    applied_index: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Returned by [`Store::apply_batch`]; publish once the batch is on disk.
#[must_use]
pub struct Commit {
    events: broadcast::Sender<Event>,
    applied_index: watch::Sender<u64>,
    index: u64,
    keys: Vec<ObjKey>,
}

impl Commit {
    pub fn publish(self) {
        if !self.keys.is_empty() {
            let _ = self.events.send(Event::Changed { index: self.index, keys: Arc::new(self.keys) });
        }
        self.applied_index.send_replace(self.index);
    }
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(4096);
        Store {
            inner: Arc::new(RwLock::new(Inner {
                state: Arc::new(State::default()),
                applied: None,
                membership: Default::default(),
            })),
            events,
            applied_index: watch::channel(0).0,
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state. Hold it for a pass, not between changes: an apply
    /// while any reader holds it copies the whole state (`Arc::make_mut`).
    pub fn read(&self) -> Arc<State> {
        self.lock_read().state.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Index of the last applied entry, as a watch (wait for read-your-writes).
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    pub fn applied(&self) -> (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>) {
        let g = self.lock_read();
        (g.applied, g.membership.clone())
    }

    pub fn snapshot(&self) -> (Arc<State>, Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>) {
        let g = self.lock_read();
        (g.state.clone(), g.applied, g.membership.clone())
    }

    /// Replaces everything (start-up, snapshot install) and tells watchers.
    pub fn reset(
        &self,
        state: State,
        applied: Option<LogIdOf<TypeConfig>>,
        membership: StoredMembershipOf<TypeConfig>,
    ) {
        let index = applied.as_ref().map(|l| l.index).unwrap_or(0);
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.state = Arc::new(state);
            g.applied = applied;
            g.membership = membership;
        }
        let _ = self.events.send(Event::Reset);
        self.applied_index.send_replace(index);
    }

    /// Runs `f` on the state under the write lock (copy-on-write if readers
    /// hold the old one). `f` returns the keys it changed.
    pub fn apply_batch(
        &self,
        f: impl FnOnce(&mut State, &mut Option<LogIdOf<TypeConfig>>, &mut StoredMembershipOf<TypeConfig>) -> Vec<ObjKey>,
    ) -> Commit {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let Inner { state, applied, membership } = &mut *g;
        let keys = f(Arc::make_mut(state), applied, membership);
        Commit {
            events: self.events.clone(),
            applied_index: self.applied_index.clone(),
            index: applied.as_ref().map(|l| l.index).unwrap_or(0),
            keys,
        }
    }
}
