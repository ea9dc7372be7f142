//! The leader-only loops: the orchestrator's, which writes each pass of
//! `orchestrator::plan`, the allocator's, which writes each pass of
//! `allocator::plan`, and the dispatcher's, which writes the nodes' batched
//! reports and the downs that liveness decides. All run for one leadership
//! term (until its token is cancelled) and reach the manager only through a
//! [`Proposer`]: read the store, propose a command and await its outcome. So
//! none needs a whole `Manager`, and a test can drive them with its own.
//!
//! Architecture Invariant: these loops run only while their token lives, and
//! the manager cancels it the moment its leadership ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::model::{new_node_id, now_ms};
use shoal_proto::service::{TaskState, TaskStatus};
use shoal_proto::timeline::{self, ALLOCATED, CREATED, SCHEDULED, WRITTEN};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::allocator;
use crate::dispatcher::Dispatcher;
use crate::networks::AllocChange;
use crate::orchestrator::plan;
use crate::state::{Command, NodeStatusUpdate, Response, State, TaskChange};
use crate::store::Store;

/// What the leader loops need from a manager.
pub trait Proposer: Send + Sync + 'static {
    /// Why a proposal failed (the loops log it and retry).
    type Error: std::fmt::Display + Send;

    /// The replicated state, as applied on this manager.
    fn store(&self) -> &Store;

    /// Proposes `cmd` and waits until it is committed and applied, or refused.
    fn propose(&self, cmd: Command) -> impl Future<Output = Result<Response, Self::Error>> + Send;

    /// The Raft term this manager leads in (for the logs).
    fn term(&self) -> u64;
}

/// Starts the loops for the leadership term that `token` lives for.
pub fn start<P: Proposer>(p: Arc<P>, dispatcher: Dispatcher, token: CancellationToken) {
    tokio::spawn(dispatch(dispatcher, p.clone(), token.clone()));
    tokio::spawn(orchestrate(p.clone(), token.clone()));
    tokio::spawn(allocate(p.clone(), token.clone()));
    tokio::spawn(rotate_keys(p, token));
}

/// Leader-only: moves the key epoch once `key_rotation_secs` have passed
/// since it last moved (or since the cluster was made), so every node's
/// netd makes a new WireGuard key (`network rotate-keys` does it at once).
pub async fn rotate_keys<P: Proposer>(p: Arc<P>, token: CancellationToken) {
    let mut tick = tokio::time::interval(KEY_CHECK);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !keys_due(&p.store().read(), now_ms()) {
            continue;
        }
        tracing::info!("the WireGuard key rotation period has passed: rotating every node's key");
        if let Err(e) = p.propose(Command::RotateNetworkKeys).await {
            tracing::warn!(error = %e, "rotating the WireGuard keys; trying again later");
        }
    }
}

/// How often the leader looks whether the keys are due.
const KEY_CHECK: Duration = Duration::from_secs(60);

/// Whether the period of the automatic key rotation has passed at `now_ms`.
pub fn keys_due(state: &State, now_ms: u64) -> bool {
    let Some(c) = &state.cluster else { return false };
    let since = if c.net.key_rotated_ms == 0 { c.meta.created_ms } else { c.net.key_rotated_ms };
    c.net.key_rotation_secs > 0 && now_ms.saturating_sub(since) >= c.net.key_rotation_secs.saturating_mul(1000)
}

/// Leader-only: runs `plan` after every change of the state (and every
/// `RESYNC`), writing each pass's changes in one Raft entry.
pub async fn orchestrate<P: Proposer>(p: Arc<P>, token: CancellationToken) {
    let term = p.term();
    let span = move || tracing::info_span!("orchestrator", raft.term = term);
    let plan = |state: &State| plan(state, now_ms(), &mut new_node_id);
    lead(p, token, span, plan, |changes| Command::Tasks { changes }, "orchestrator").await
}

/// Leader-only: the allocator's loop, shaped like the orchestrator's: each
/// pass of `allocator::plan` is written in `Command::Allocate` entries.
pub async fn allocate<P: Proposer>(p: Arc<P>, token: CancellationToken) {
    let term = p.term();
    let span = move || tracing::info_span!("allocator", raft.term = term);
    let plan = |state: &State| {
        let mut changes = allocator::plan(state);
        changes.extend(allocator::reclaim(state, now_ms()));
        changes
    };
    lead(p, token, span, plan, |changes| Command::Allocate { changes }, "allocator").await
}

/// The loop both share: a pass after every change of the state (and every
/// `RESYNC`), until the term ends.
async fn lead<P, C>(
    p: Arc<P>,
    token: CancellationToken,
    span: impl Fn() -> tracing::Span,
    plan: impl Fn(&State) -> Vec<C>,
    wrap: impl Fn(Vec<C>) -> Command,
    what: &'static str,
) where
    P: Proposer,
    C: Clone + PartialEq + Steps,
{
    let mut events = p.store().subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    let mut last: Vec<C> = Vec::new();
    loop {
        // The state read next holds every change already announced: one pass
        // covers them all (a pass per queued notice would plan the same state
        // again, over every task, as often as entries were applied meanwhile).
        if !drain(&mut events) {
            return;
        }
        let changes = plan(&p.store().read());
        match write_pass(&*p, changes, &mut last, &wrap, what, &token).instrument(span()).await {
            Pass::Stop => return,
            Pass::Wrote => continue, // look again at the state it made
            Pass::Idle => {}
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

/// Takes every notice already queued; false once the store is gone.
fn drain<T: Clone>(events: &mut tokio::sync::broadcast::Receiver<T>) -> bool {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Closed) => return false,
        }
    }
}

/// What one pass of a leader loop did.
enum Pass {
    /// It wrote (or tried to): look again at once.
    Wrote,
    /// Nothing to do: wait for news.
    Idle,
    /// The term ended.
    Stop,
}

/// One pass of the orchestrator or allocator: write what its plan changes.
async fn write_pass<P: Proposer, C: Clone + PartialEq + Steps>(
    p: &P,
    changes: Vec<C>,
    last: &mut Vec<C>,
    wrap: &impl Fn(Vec<C>) -> Command,
    what: &'static str,
    token: &CancellationToken,
) -> Pass {
    // The same changes again (the state did not take them): wait for news instead of spinning.
    if changes.is_empty() || changes == *last {
        return Pass::Idle;
    }
    *last = changes.clone();
    // Big passes go in several entries, each well under the transport's message limit.
    for chunk in changes.chunks(MAX_CHANGES_PER_ENTRY) {
        if timeline::enabled() {
            chunk.iter().for_each(Steps::emit);
        }
        if let Err(e) = p.propose(wrap(chunk.to_vec())).await {
            tracing::warn!(error = %e, changes = chunk.len(), "{what} write failed; retrying");
            // Not written: the same plan next time is a retry, not a repeat.
            last.clear();
            tokio::select! {
                _ = token.cancelled() => return Pass::Stop,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            break;
        }
    }
    Pass::Wrote
}

/// A change of a leader loop's pass that is a step of its task's timeline
/// (`shoal_proto::timeline`): emitted just before the pass is proposed.
pub(crate) trait Steps {
    fn emit(&self);
}

impl Steps for TaskChange {
    fn emit(&self) {
        match self {
            TaskChange::Create(t) => {
                shoal_proto::timeline!(CREATED, task = %t.id);
                // A global service's task is placed as it is made.
                if !t.node_id.is_empty() {
                    shoal_proto::timeline!(SCHEDULED, task = %t.id);
                }
            }
            TaskChange::Assign { id, .. } => shoal_proto::timeline!(SCHEDULED, task = %id),
            _ => {}
        }
    }
}

impl Steps for AllocChange {
    fn emit(&self) {
        if let AllocChange::TaskAddr { id, .. } = self {
            shoal_proto::timeline!(ALLOCATED, task = %id);
        }
    }
}

/// A task (or allocation) change is under 1 KiB of JSON: 2,000 keep an entry near 1.5 MiB.
const MAX_CHANGES_PER_ENTRY: usize = 2_000;

/// How often the orchestrator and allocator look even when nothing changed (restart back-offs come due).
const RESYNC: std::time::Duration = std::time::Duration::from_millis(500);

/// How often pending status changes are written and liveness is judged.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Leader-only: flushes status batches and declares silent nodes down.
pub async fn dispatch<P: Proposer>(d: Dispatcher, p: Arc<P>, token: CancellationToken) {
    let term = p.term();
    // Every node gets a full grace period to find the new leader.
    d.reset_liveness();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
            _ = d.woken() => {}
        }
        let pass = tracing::info_span!("dispatcher", raft.term = term);
        if let Pass::Stop = dispatcher_pass(&d, &*p, &token).instrument(pass).await {
            return;
        }
    }
}

/// One pass of the dispatcher: judge liveness, then write the task reports
/// and node status changes queued since the last pass.
async fn dispatcher_pass<P: Proposer>(d: &Dispatcher, p: &P, token: &CancellationToken) -> Pass {
    d.expire();
    let reports: HashMap<String, Vec<(String, TaskStatus)>> = d.take_task_reports();
    // Every node's reports at once: Raft takes proposals made together in one append.
    let writes = reports.into_iter().map(|(node_id, updates)| async move {
        let written = p.propose(Command::TaskStatus { node_id: node_id.clone(), updates: updates.clone() }).await;
        (node_id, updates, written)
    });
    for (node_id, updates, written) in futures::future::join_all(writes).await {
        if let Err(e) = written {
            // Nodes send only what changed, so what was not written is queued
            // again, before anything newer from that node.
            tracing::warn!(error = %e, node.id = %node_id, "task status write failed; will retry");
            d.requeue_task_reports(node_id, updates);
        } else if timeline::enabled() {
            for (id, _) in updates.iter().filter(|(_, s)| s.state == TaskState::Running) {
                shoal_proto::timeline!(WRITTEN, task = %id);
            }
        }
    }
    let batch: Vec<NodeStatusUpdate> = d.take_node_statuses();
    if batch.is_empty() {
        return Pass::Idle;
    }
    let n = batch.len();
    if let Err(e) = p.propose(Command::NodeStatus { updates: batch.clone() }).await {
        tracing::warn!(error = %e, updates = n, "status write failed; will retry");
        d.requeue_node_statuses(batch);
        tokio::select! {
            _ = token.cancelled() => return Pass::Stop,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    Pass::Wrote
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use shoal_proto::model::{Availability, Meta, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
    use shoal_proto::service::{ServiceSpec, Task, TaskState};

    use super::*;
    use crate::state::Request;

    /// A manager without Raft: a proposal is applied to its store at once
    /// (the first one fails when `fail_next` is set, as without a quorum).
    struct Applier {
        store: Store,
        index: AtomicU64,
        fail_next: AtomicBool,
    }

    impl Proposer for Applier {
        type Error = String;

        fn store(&self) -> &Store {
            &self.store
        }

        async fn propose(&self, cmd: Command) -> Result<Response, String> {
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err("no quorum".into());
            }
            let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
            let mut resp = Response::Ok;
            self.store
                .apply_batch(|state, _, _| {
                    let (r, keys) = state.apply(index, &Request { at_ms: now_ms(), cmd });
                    resp = r;
                    keys
                })
                .publish();
            Ok(resp)
        }

        fn term(&self) -> u64 {
            7
        }
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 0,
            spec: NodeSpec { role: Role::Worker, availability: Availability::Active, labels: Default::default() },
            description: NodeDescription { hostname: id.into(), ..Default::default() },
            status: NodeStatus { state: NodeState::Ready, message: String::new() },
            meta: Meta::default(),
            ingress: None,
        }
    }

    /// Waits up to 5 s for `f` to hold of the store's state.
    async fn until(store: &Store, f: impl Fn(&crate::state::State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if f(&store.read()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[test]
    fn keys_are_due_once_a_period_has_passed_since_the_last_rotation() {
        let mut s = State::default();
        assert!(!keys_due(&s, u64::MAX), "no cluster, no keys");
        let mut c = crate::state::tests::cluster();
        c.meta.created_ms = 1_000;
        c.net.key_rotation_secs = 10;
        s.cluster = Some(c);
        assert!(!keys_due(&s, 10_999));
        assert!(keys_due(&s, 11_000));
        s.cluster.as_mut().expect("cluster").net.key_rotated_ms = 20_000;
        assert!(!keys_due(&s, 29_999));
        assert!(keys_due(&s, 30_000));
        s.cluster.as_mut().expect("cluster").net.key_rotation_secs = 0;
        assert!(!keys_due(&s, u64::MAX), "0 turns it off");
    }

    #[test]
    fn a_pass_takes_every_notice_queued_before_it() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(2);
        assert!(drain(&mut rx), "nothing queued");
        for i in 0..5 {
            tx.send(i).expect("a receiver");
        }
        // Five notices into a ring of two: lagged, and all taken.
        assert!(drain(&mut rx));
        assert!(matches!(rx.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Empty)));
        tx.send(9).expect("a receiver");
        drop(tx);
        assert!(!drain(&mut rx), "the store is gone");
    }

    #[tokio::test]
    async fn the_orchestrator_loop_runs_on_any_proposer_retries_and_stops_with_its_term() {
        let p = Arc::new(Applier { store: Store::new(), index: AtomicU64::new(0), fail_next: AtomicBool::new(false) });
        p.store
            .apply_batch(|state, _, _| {
                for id in ["a", "b"] {
                    state.nodes.insert(id.into(), node(id));
                }
                Vec::new()
            })
            .publish();
        let mut spec = ServiceSpec { name: "web".into(), replicas: 2, ..Default::default() };
        spec.task.image = "img".into();
        p.propose(Command::CreateService { id: "svc".into(), spec, auth: None }).await.expect("create");
        // Its first write fails: the pass is written again.
        p.fail_next.store(true, Ordering::SeqCst);
        let token = CancellationToken::new();
        let running = tokio::spawn(orchestrate(p.clone(), token.clone()));
        let placed = until(&p.store, |s| {
            s.tasks.values().filter(|t| t.desired == TaskState::Running && !t.node_id.is_empty()).count() == 2
        })
        .await;
        assert!(placed, "two tasks placed: {:?}", p.store.read().tasks);
        assert!(!p.fail_next.load(Ordering::SeqCst), "the failed write was retried");
        let nodes: std::collections::BTreeSet<String> =
            p.store.read().tasks.values().map(|t| t.node_id.clone()).collect();
        assert_eq!(nodes.len(), 2, "spread over both nodes");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the loop ends with its term")
            .expect("no panic");
    }

    #[tokio::test]
    async fn the_allocator_loop_allocates_each_new_network_and_stops_with_its_term() {
        use shoal_proto::model::{Cluster, RootCa};
        use shoal_proto::network::NetworkSpec;
        let p = Arc::new(Applier { store: Store::new(), index: AtomicU64::new(0), fail_next: AtomicBool::new(true) });
        let cluster = Cluster {
            id: "c".into(),
            root_ca: RootCa { cert_pem: String::new(), key_pem: String::new() },
            worker_secret: String::new(),
            manager_secret: String::new(),
            node_cert_ttl_secs: 0,
            net: Default::default(),
            unlock_key: String::new(),
            settings: Default::default(),
            meta: Meta::default(),
        };
        p.store
            .apply_batch(|state, _, _| {
                state.apply(1, &Request { at_ms: 1, cmd: Command::Bootstrap { cluster, node: node("a") } }).1
            })
            .publish();
        let token = CancellationToken::new();
        let running = tokio::spawn(allocate(p.clone(), token.clone()));
        // Its first write fails (no quorum), and networks created while it runs are seen.
        for name in ["app", "db"] {
            let spec = NetworkSpec { name: name.into(), ..Default::default() };
            let fail = p.fail_next.swap(false, Ordering::SeqCst);
            p.propose(Command::CreateNetwork { id: name.into(), spec }).await.expect("create");
            p.fail_next.store(fail, Ordering::SeqCst);
        }
        let allocated = until(&p.store, |s| s.networks.values().all(|n| n.alloc.is_some())).await;
        assert!(allocated, "both allocated: {:?}", p.store.read().networks);
        assert!(!p.fail_next.load(Ordering::SeqCst), "the failed write was retried");
        let vnis: Vec<u32> = p.store.read().networks.values().filter_map(|n| n.alloc.as_ref().map(|a| a.vni)).collect();
        assert_eq!(vnis, vec![4097, 4098]);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the loop ends with its term")
            .expect("no panic");
    }

    #[tokio::test]
    async fn the_dispatcher_loop_writes_task_reports_and_requeues_a_failed_write() {
        let p = Arc::new(Applier { store: Store::new(), index: AtomicU64::new(0), fail_next: AtomicBool::new(true) });
        p.store
            .apply_batch(|state, _, _| {
                state.nodes.insert("a".into(), node("a"));
                let status = TaskStatus { state: TaskState::Assigned, ..Default::default() };
                let task = Task {
                    id: "t1".into(),
                    node_id: "a".into(),
                    desired: TaskState::Running,
                    status,
                    ..Default::default()
                };
                state.tasks.insert("t1".into(), task.into());
                Vec::new()
            })
            .publish();
        let d = Dispatcher::new(p.store.clone());
        let token = CancellationToken::new();
        let running = tokio::spawn(dispatch(d.clone(), p.clone(), token.clone()));
        // The node reports once (it sends only what changed); the first write fails.
        let status = TaskStatus { state: TaskState::Running, ..Default::default() };
        let report = shoal_proto::pb::TaskStatusReport {
            task_id: "t1".into(),
            status_json: serde_json::to_string(&status).expect("json"),
        };
        d.report_tasks("a", vec![report]);
        let written = until(&p.store, |s| s.tasks["t1"].status.state == TaskState::Running).await;
        assert!(written, "the report was written after the failed write: {:?}", p.store.read().tasks["t1"].status);
        assert!(!p.fail_next.load(Ordering::SeqCst), "a write failed first");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the loop ends with its term")
            .expect("no panic");
    }
}
