//! The in-memory Raft transport for in-process tests: every manager's
//! `Raft` in one process, reached through a `Router` that can drop, delay
//! and partition messages, with faults drawn from a seeded RNG. The
//! managers' cluster simulation (`manager/tests/cluster_sim.rs`) and the
//! node-side cluster test (`agent/tests/cluster.rs`) both run on it; a
//! manager opened with `Manager::open_with` and a `MemNetworkFactory` runs
//! with it instead of gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::raft::{Raft, TypeConfig};

/// Faults applied to every message; changed by the test while the cluster runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Messages to or from these nodes fail as `Unreachable` (a partition).
    pub isolated: BTreeSet<u64>,
    /// Probability that a request, or independently its reply, is lost.
    pub drop_prob: f64,
    /// Each leg (request, reply) is delayed by a uniform 0..=max_delay.
    pub max_delay: Duration,
}

#[derive(Debug, Default)]
pub struct Stats {
    delivered: u64,
    dropped: u64,
    unreachable: u64,
}

struct RouterInner {
    rafts: BTreeMap<u64, Raft>,
    faults: Faults,
    rng: StdRng,
    stats: Stats,
}

/// Raft id → running `Raft`, plus the faults; shared by every node's network.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Mutex<RouterInner>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimError(String);

fn unreachable(from: u64, to: u64, why: &str) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&SimError(format!("{from} -> {to}: {why}"))))
}

impl Router {
    pub fn new(seed: u64) -> Router {
        Router {
            inner: Arc::new(Mutex::new(RouterInner {
                rafts: BTreeMap::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed),
                stats: Stats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouterInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, id: u64, raft: Raft) {
        self.lock().rafts.insert(id, raft);
    }

    pub fn remove(&self, id: u64) {
        self.lock().rafts.remove(&id);
    }

    pub fn set_noise(&self, drop_prob: f64, max_delay: Duration) {
        let mut g = self.lock();
        g.faults.drop_prob = drop_prob;
        g.faults.max_delay = max_delay;
    }

    pub fn isolate(&self, id: u64) {
        self.lock().faults.isolated.insert(id);
    }

    pub fn heal(&self) {
        self.lock().faults.isolated.clear();
    }

    pub fn stats(&self) -> String {
        let g = self.lock();
        format!("delivered {}, dropped {}, unreachable {}", g.stats.delivered, g.stats.dropped, g.stats.unreachable)
    }

    /// One leg of a message (request or reply): fails if either end is
    /// isolated or the RNG drops it; otherwise returns the delay to apply.
    fn leg(&self, from: u64, to: u64, what: &str) -> Result<Duration, RPCError<TypeConfig>> {
        let mut g = self.lock();
        let RouterInner { faults, rng, stats, .. } = &mut *g;
        if faults.isolated.contains(&from) || faults.isolated.contains(&to) {
            stats.unreachable += 1;
            return Err(unreachable(from, to, "partitioned"));
        }
        if faults.drop_prob > 0.0 && rng.random_bool(faults.drop_prob) {
            stats.dropped += 1;
            return Err(RPCError::Network(NetworkError::new(&SimError(format!("{from} -> {to}: {what} dropped")))));
        }
        let max = u64::try_from(faults.max_delay.as_micros()).unwrap_or(u64::MAX);
        Ok(if max == 0 { Duration::ZERO } else { Duration::from_micros(rng.random_range(0..=max)) })
    }

    /// The target of a request arriving now: a partition may have started
    /// while it was in flight, or the target may have stopped.
    fn deliver_to(&self, from: u64, to: u64) -> Result<Raft, RPCError<TypeConfig>> {
        let mut g = self.lock();
        if g.faults.isolated.contains(&from) || g.faults.isolated.contains(&to) {
            g.stats.unreachable += 1;
            return Err(unreachable(from, to, "partitioned in flight"));
        }
        match g.rafts.get(&to).cloned() {
            Some(r) => Ok(r),
            None => {
                g.stats.unreachable += 1;
                Err(unreachable(from, to, "not running"))
            }
        }
    }

    /// Carries one RPC from `from` to `to`: request leg, the call on the target
    /// `Raft`, reply leg; the whole within `ttl`. A partition that starts while
    /// the request is in flight loses it (or its reply).
    async fn rpc<T, E, F, Fut>(
        &self,
        from: u64,
        to: u64,
        action: RPCTypes,
        ttl: Duration,
        call: F,
    ) -> Result<T, RPCError<TypeConfig>>
    where
        E: std::fmt::Display,
        F: FnOnce(Raft) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let fut = async {
            let delay = self.leg(from, to, "request")?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await; // injected latency, not synchronisation
            }
            let target = self.deliver_to(from, to)?;
            // The remote Raft stopped: seen as an unreachable peer, like the gRPC transport.
            let resp = call(target).await.map_err(|e| unreachable(from, to, &e.to_string()))?;
            let delay = self.leg(from, to, "reply")?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.lock().stats.delivered += 1;
            Ok(resp)
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r,
            Err(_) => Err(RPCError::Timeout(Timeout { action, id: from, target: to, timeout: ttl })),
        }
    }
}

pub struct MemNetworkFactory {
    pub id: u64,
    pub router: Router,
}

impl RaftNetworkFactory<TypeConfig> for MemNetworkFactory {
    type Network = MemNetwork;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> MemNetwork {
        MemNetwork { from: self.id, to: target, router: self.router.clone() }
    }
}

/// One node's connection to one peer: calls the peer's `Raft` directly.
pub struct MemNetwork {
    from: u64,
    to: u64,
    router: Router,
}

impl RaftNetworkV2<TypeConfig> for MemNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router
            .rpc(self.from, self.to, RPCTypes::AppendEntries, option.hard_ttl(), |r| async move {
                r.append_entries(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router
            .rpc(self.from, self.to, RPCTypes::Vote, option.hard_ttl(), |r| async move { r.vote(rpc).await })
            .await
    }

    /// Not the default (which grants everything): the peer really decides.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router
            .rpc(self.from, self.to, RPCTypes::Vote, option.hard_ttl(), |r| async move { r.pre_vote(rpc).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // Same floor as the gRPC transport.
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let send = self.router.rpc(self.from, self.to, RPCTypes::InstallSnapshot, ttl, |r| async move {
            r.install_full_snapshot(vote, snapshot).await
        });
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router
            .rpc(self.from, self.to, RPCTypes::TransferLeader, option.hard_ttl(), |r| async move {
                r.handle_transfer_leader(req).await
            })
            .await
    }
}

// === seeded runs ===

/// Seeds from `SHOAL_SIM_SEEDS` (comma-separated) or the defaults.
pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("SHOAL_SIM_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

/// Prints the seed if the scenario panics (e.g. an `expect` deep inside).
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failing seed: {} (re-run with SHOAL_SIM_SEEDS={})", self.0, self.0);
        }
    }
}

/// Runs one seed's scenario within `within`; a failure or a timeout panics
/// naming the seed and how to run it alone.
pub async fn run_seeded<F, Fut>(name: &str, seed: u64, within: Duration, scenario: F)
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let _guard = SeedGuard(seed);
    let started = std::time::Instant::now();
    match tokio::time::timeout(within, scenario(seed)).await {
        Err(_) => panic!("{name}: seed {seed}: timed out after {within:?} (re-run with SHOAL_SIM_SEEDS={seed})"),
        Ok(Err(e)) => panic!("{name}: seed {seed}: {e:#} (re-run with SHOAL_SIM_SEEDS={seed})"),
        Ok(Ok(())) => eprintln!("{name}: seed {seed} passed in {:?}", started.elapsed()),
    }
}
