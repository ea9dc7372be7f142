//! Services under faults, simulated in process: the orchestrator's passes
//! and simulated nodes (which really "run" task processes) exchange their
//! writes and reports through a lossy network; nodes are partitioned away
//! and come back, tasks crash, and leadership passes are lost. Every seed
//! asserts that task states never move backward, and that once the faults
//! stop the cluster converges with exactly one running process per slot —
//! never two, even for slots whose old task was on a partitioned node.
//! Re-run one seed with `SHOAL_SIM_SEEDS=7 cargo test -p shoal-manager --test services_sim`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_manager::orchestrator::plan;
use shoal_manager::state::{Command, Request, State};
use shoal_proto::model::{Availability, Meta, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
use shoal_proto::service::{ServiceSpec, TaskState, TaskStatus};

struct Sim {
    rng: StdRng,
    state: State,
    index: u64,
    ids: u64,
    /// The task processes that really run, per node.
    running: BTreeMap<String, BTreeSet<String>>,
    /// Task containers that exited by themselves, per node.
    exited: BTreeMap<String, BTreeSet<String>>,
    /// Nodes cut off from the managers (their processes go on).
    partitioned: BTreeSet<String>,
    /// The state each task was last seen in.
    seen: HashMap<String, TaskState>,
}

impl Sim {
    fn new(seed: u64, nodes: usize) -> Sim {
        let mut state = State::default();
        for i in 1..=nodes {
            let id = format!("n{i}");
            state.nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    raft_id: 0,
                    spec: NodeSpec {
                        role: if i <= 3 { Role::Manager } else { Role::Worker },
                        availability: Availability::Active,
                        labels: Default::default(),
                    },
                    description: NodeDescription {
                        hostname: id.clone(),
                        nano_cpus: 2_000_000_000,
                        memory_bytes: 1 << 30,
                        ..Default::default()
                    },
                    status: NodeStatus { state: NodeState::Ready, message: String::new() },
                    meta: Meta::default(),
                    ingress: None,
                },
            );
        }
        Sim {
            rng: StdRng::seed_from_u64(seed),
            state,
            index: 0,
            ids: 0,
            running: BTreeMap::new(),
            exited: BTreeMap::new(),
            partitioned: BTreeSet::new(),
            seen: HashMap::new(),
        }
    }

    fn apply(&mut self, cmd: Command) {
        self.index += 1;
        self.state.apply(self.index, &Request { at_ms: self.index, cmd });
        // States only move forward.
        for t in self.state.tasks.values() {
            if let Some(before) = self.seen.get(&t.id) {
                assert!(t.status.state >= *before, "task {} went from {before} back to {}", t.id, t.status.state);
            }
            self.seen.insert(t.id.clone(), t.status.state);
        }
    }

    /// The leader's pass (lost with probability `loss`).
    fn orchestrate(&mut self, loss: f64) {
        let mut n = self.ids;
        let changes = plan(&self.state, self.index, &mut || {
            n += 1;
            format!("t{n:05}")
        });
        self.ids = n;
        if !changes.is_empty() && !self.rng.random_bool(loss) {
            self.apply(Command::Tasks { changes });
        }
    }

    /// Each connected node reconciles its assignment set like the worker does
    /// (start, stop, remove what is no longer assigned) and reports; reports are
    /// lost with probability `loss`; running tasks crash with probability `crash`.
    fn nodes_step(&mut self, loss: f64, crash: f64) {
        let nodes: Vec<String> = self.state.nodes.keys().cloned().collect();
        for node in nodes {
            if self.partitioned.contains(&node) {
                continue;
            }
            let set: Vec<_> = self
                .state
                .tasks
                .values()
                .filter(|t| t.node_id == node && !(t.desired >= TaskState::Shutdown && t.status.state.is_terminal()))
                .cloned()
                .collect();
            let procs = self.running.entry(node.clone()).or_default();
            let exited = self.exited.entry(node.clone()).or_default();
            let mut reports = Vec::new();
            for t in &set {
                let up = procs.contains(&t.id);
                if t.desired == TaskState::Running {
                    if exited.contains(&t.id) {
                        // An exited container: its exit is reported until the task leaves the set.
                        reports.push((
                            t.id.clone(),
                            TaskStatus { state: TaskState::Failed, exit_code: Some(1), ..Default::default() },
                        ));
                    } else if !up && !t.status.state.is_terminal() && t.status.state < TaskState::Running {
                        procs.insert(t.id.clone());
                        reports.push((t.id.clone(), TaskStatus { state: TaskState::Running, ..Default::default() }));
                    } else if up && self.rng.random_bool(crash) {
                        procs.remove(&t.id);
                        exited.insert(t.id.clone());
                        reports.push((
                            t.id.clone(),
                            TaskStatus { state: TaskState::Failed, exit_code: Some(1), ..Default::default() },
                        ));
                    } else if up {
                        reports.push((t.id.clone(), TaskStatus { state: TaskState::Running, ..Default::default() }));
                    }
                } else {
                    procs.remove(&t.id);
                    reports.push((t.id.clone(), TaskStatus { state: TaskState::Shutdown, ..Default::default() }));
                }
            }
            // What is no longer assigned here stops (and its container goes).
            procs.retain(|id| set.iter().any(|t| t.id == *id));
            exited.retain(|id| set.iter().any(|t| t.id == *id));
            let reports: Vec<_> = reports
                .into_iter()
                .filter(|(id, s)| self.state.tasks.get(id).is_some_and(|t| t.status.state.can_move_to(s.state)))
                .collect();
            if !reports.is_empty() && !self.rng.random_bool(loss) {
                self.apply(Command::TaskStatus { node_id: node.clone(), updates: reports });
            }
        }
    }

    /// The dispatcher's view: partitioned nodes are down, the others ready.
    fn liveness(&mut self) {
        let mut updates = Vec::new();
        for n in self.state.nodes.values() {
            let want = if self.partitioned.contains(&n.id) { NodeState::Down } else { NodeState::Ready };
            if n.status.state != want {
                updates.push(shoal_manager::state::NodeStatusUpdate {
                    id: n.id.clone(),
                    status: NodeStatus { state: want, message: String::new() },
                    description: None,
                });
            }
        }
        if !updates.is_empty() {
            self.apply(Command::NodeStatus { updates });
        }
    }

    /// Processes of `service` really running, per slot.
    fn processes_per_slot(&self, service: &str) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for procs in self.running.values() {
            for id in procs {
                if let Some(t) = self.state.tasks.get(id).filter(|t| t.service_id == service) {
                    *m.entry(t.slot).or_default() += 1;
                }
            }
        }
        m
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed, 5);
    let mut spec = ServiceSpec { name: "web".into(), replicas: 8, ..Default::default() };
    spec.task.image = "img".into();
    spec.task.restart.delay_ms = 0;
    sim.apply(Command::CreateService { id: "web".into(), spec: spec.clone(), auth: None });
    // Faults: lost writes and reports, crashes, partitions, a scale and an update on the way.
    for step in 0..200 {
        if step % 40 == 10 {
            let victim = format!("n{}", sim.rng.random_range(1..=5));
            sim.partitioned.insert(victim);
        }
        if step % 40 == 30 {
            sim.partitioned.clear();
        }
        if step == 60 {
            let mut s = sim.state.services["web"].spec.clone();
            s.replicas = 12;
            sim.apply(Command::UpdateService {
                id: "web".into(),
                spec: s,
                rollback: false,
                replace_auth: false,
                auth: None,
            });
        }
        if step == 120 {
            let mut s = sim.state.services["web"].spec.clone();
            s.task.env = vec!["V=2".into()];
            s.update.parallelism = 3;
            // Crashes are the faults' doing, not the update's: it goes on.
            s.update.failure_action = shoal_proto::service::FailureAction::Continue;
            sim.apply(Command::UpdateService {
                id: "web".into(),
                spec: s,
                rollback: false,
                replace_auth: false,
                auth: None,
            });
        }
        sim.liveness();
        sim.orchestrate(0.2);
        sim.nodes_step(0.2, 0.02);
    }
    // Faults stop: the cluster converges.
    sim.partitioned.clear();
    for _ in 0..60 {
        sim.liveness();
        sim.orchestrate(0.0);
        sim.nodes_step(0.0, 0.0);
    }
    let per_slot = sim.processes_per_slot("web");
    if std::env::var("SHOAL_SIM_DEBUG").is_ok() {
        for t in sim.state.tasks.values().filter(|t| t.slot == 1 || t.slot == 2) {
            eprintln!(
                "slot {} {} node {} desired {} state {} err {:?} v{} attempt {} nb {}",
                t.slot,
                t.id,
                t.node_id,
                t.desired,
                t.status.state,
                t.status.err,
                t.spec_version,
                t.attempt,
                t.not_before_ms
            );
        }
    }
    let want: BTreeMap<u64, usize> = (1..=12).map(|s| (s, 1)).collect();
    assert_eq!(per_slot, want, "seed {seed}: one process per slot, slots 1..=12");
    let version = sim.state.services["web"].spec_version;
    let live: Vec<_> = sim.state.tasks.values().filter(|t| t.desired == TaskState::Running).collect();
    assert_eq!(live.len(), 12, "seed {seed}");
    assert!(
        live.iter().all(|t| t.status.state == TaskState::Running && t.spec_version == version),
        "seed {seed}: all running, up to date"
    );
}

#[test]
fn services_converge_under_faults() {
    let seeds: Vec<u64> = match std::env::var("SHOAL_SIM_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => (1..=30).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}
