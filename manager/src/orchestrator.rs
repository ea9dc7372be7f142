//! The orchestrator and the scheduler, as one pure function of the state:
//! `plan` returns the task changes that move the cluster toward every
//! service's spec, which the leader writes in one Raft entry per pass.
//!
//! - Orchestrator (the only creator of tasks and writer of `desired`):
//!   replicated services keep one live task per slot, global services one
//!   per eligible node, jobs run to completion. A task that ended is replaced
//!   by its restart policy (a new task in the same slot, with a doubling
//!   back-off); a task on a down node is replaced at once; a task on a node
//!   that no longer fits (drained, constraints) leaves it; out-of-date tasks
//!   (whose spec differs from the service's) are replaced `parallelism` at a
//!   time, stop-first or start-first. When new tasks fail beyond the update's
//!   failure ratio, it pauses or rolls back to the previous spec.
//! - Scheduler (the only writer of `node_id`): filters (ready, active,
//!   constraints, reservations, host ports, max per node), each able to say
//!   why a node was refused; then spread (fewest tasks of this service, then
//!   fewest tasks overall), after spreading over a label's values when asked.
//! - History: a slot keeps its `HISTORY` newest ended tasks.

use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::model::{Availability, Node, NodeState};
use shoal_proto::service::{
    MAX_RESTART_DELAY_MS, Mode, RestartCondition, Service, Task, TaskSpec, TaskState, TaskStatus, UpdateOrder,
    UpdateState,
};

use crate::state::{State, TaskChange};

/// Ended tasks kept per slot.
pub const HISTORY: usize = 5;

/// The changes one pass makes at `now_ms` (the leader's clock); `new_id` names new tasks.
pub fn plan(state: &State, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Vec<TaskChange> {
    let mut out = Vec::new();
    // Each service's tasks, found in one pass over all of them.
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in state.tasks.values() {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    for svc in state.services.values() {
        let tasks = by_service.get(svc.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        Orchestrator { state, svc, tasks, now_ms, out: &mut out, new_id }.run();
    }
    // Tasks of removed services go: at once when they never ran or their node is gone.
    for t in state.tasks.values().filter(|t| !state.services.contains_key(&t.service_id)) {
        if t.desired < TaskState::Remove {
            out.push(TaskChange::Desired { id: t.id.clone(), desired: TaskState::Remove });
        }
        if t.status.state.is_terminal() || t.node_id.is_empty() || !node_up(state, &t.node_id) {
            out.push(TaskChange::Delete { id: t.id.clone() });
        }
    }
    schedule(state, now_ms, &mut out);
    reap(state, &mut out);
    out
}

fn node_up(state: &State, id: &str) -> bool {
    state.nodes.get(id).is_some_and(|n| n.status.state == NodeState::Ready)
}

/// Why `node` cannot take a task of `spec` by itself (resources aside).
fn refusal(node: &Node, spec: &TaskSpec) -> Option<&'static str> {
    if node.status.state != NodeState::Ready {
        return Some("down");
    }
    match node.spec.availability {
        Availability::Drain => return Some("drained"),
        Availability::Pause => return Some("paused"),
        Availability::Active => {}
    }
    if !spec.constraints.iter().all(|c| constraint_holds(c, node)) {
        return Some("not matching the constraints");
    }
    None
}

/// `node.role==manager`, `node.labels.zone!=a`, `node.hostname==h1`, `node.id==…`,
/// `node.platform.os==linux`: `==` and `!=` only, as in Docker.
pub fn constraint_holds(c: &str, node: &Node) -> bool {
    let (key, want, eq) = match (c.split_once("!="), c.split_once("==")) {
        (Some((k, v)), _) => (k.trim(), v.trim(), false),
        (None, Some((k, v))) => (k.trim(), v.trim(), true),
        _ => return false,
    };
    let have: Option<String> = match key {
        "node.role" => Some(node.spec.role.as_str().to_string()),
        "node.hostname" => Some(node.description.hostname.clone()),
        "node.id" => Some(node.id.clone()),
        // The node's own platform, as it said in its hello (nothing until it did).
        "node.platform.os" => Some(node.description.os.clone()).filter(|s| !s.is_empty()),
        "node.platform.arch" => Some(node.description.arch.clone()).filter(|s| !s.is_empty()),
        k => k.strip_prefix("node.labels.").and_then(|l| node.spec.labels.get(l).cloned()),
    };
    (have.as_deref() == Some(want)) == eq
}

/// Checks a constraint's syntax (for the API).
pub fn valid_constraint(c: &str) -> Result<(), String> {
    let key = c
        .split_once("!=")
        .or_else(|| c.split_once("=="))
        .map(|(k, _)| k.trim())
        .ok_or_else(|| format!("invalid constraint {c:?}: use KEY==VALUE or KEY!=VALUE"))?;
    let known = ["node.role", "node.hostname", "node.id", "node.platform.os", "node.platform.arch"];
    if known.contains(&key) || key.strip_prefix("node.labels.").is_some_and(|l| !l.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "invalid constraint {c:?}: the key must be node.role, node.hostname, node.id, node.platform.os, node.platform.arch or node.labels.NAME"
        ))
    }
}

struct Orchestrator<'a> {
    state: &'a State,
    svc: &'a Service,
    /// The service's tasks.
    tasks: &'a [&'a Task],
    now_ms: u64,
    out: &'a mut Vec<TaskChange>,
    new_id: &'a mut dyn FnMut() -> String,
}

impl Orchestrator<'_> {
    fn run(mut self) {
        let mut by_slot: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
        for &t in self.tasks {
            let key = if self.svc.spec.mode.is_global() { t.node_id.clone() } else { format!("{:020}", t.slot) };
            by_slot.entry(key).or_default().push(t);
        }
        for tasks in by_slot.values_mut() {
            tasks.sort_by_key(|t| (t.created_index, t.id.clone()));
        }
        let spec = &self.svc.spec;
        // Out-of-date tasks are replaced `parallelism` at a time: the up-to-date
        // ones not running yet are the batch in flight.
        let in_flight = self
            .tasks
            .iter()
            .filter(|t| {
                t.spec_version == self.svc.spec_version
                    && t.desired == TaskState::Running
                    && t.status.state < TaskState::Running
            })
            .count() as u64;
        // --update-delay: the next batch waits this long after the last one came up.
        let last_up = self
            .tasks
            .iter()
            .filter(|t| t.spec_version == self.svc.spec_version && t.status.state == TaskState::Running)
            .map(|t| t.status.at_ms)
            .max();
        let delayed = spec_delay(self.svc) > 0 && last_up.is_some_and(|at| self.now_ms < at + spec_delay(self.svc));
        let paused = self.svc.update_state == UpdateState::Paused || delayed;
        let rollout = rollout(self.svc);
        let mut budget = if paused {
            0
        } else if rollout.parallelism == 0 {
            u64::MAX
        } else {
            rollout.parallelism.saturating_sub(in_flight)
        };

        match spec.mode {
            Mode::Replicated | Mode::ReplicatedJob => {
                let wanted = spec.replicas;
                let concurrent = if spec.max_concurrent == 0 { wanted } else { spec.max_concurrent };
                let mut live = by_slot
                    .values()
                    .flatten()
                    .filter(|t| t.desired == TaskState::Running && !t.status.state.is_terminal())
                    .count() as u64;
                for slot in 1..=wanted {
                    let tasks = by_slot.get(&format!("{slot:020}")).map(Vec::as_slice).unwrap_or(&[]);
                    if spec.mode == Mode::ReplicatedJob && tasks.is_empty() && live >= concurrent {
                        continue; // waits for a running one to finish
                    }
                    if self.slot(slot, "", tasks, &mut budget) && tasks.is_empty() {
                        live += 1;
                    }
                }
                // Slots past the count: scaled down.
                for (_, tasks) in by_slot.range(format!("{:020}", wanted + 1)..) {
                    for t in tasks.iter().filter(|t| t.desired == TaskState::Running) {
                        self.shutdown(t);
                    }
                }
            }
            Mode::Global | Mode::GlobalJob => {
                for node in self.state.nodes.values() {
                    let tasks = by_slot.get(&node.id).map(Vec::as_slice).unwrap_or(&[]);
                    if refusal(node, &spec.task).is_none() {
                        self.slot(0, &node.id, tasks, &mut budget);
                    } else {
                        for t in tasks.iter().filter(|t| t.desired == TaskState::Running) {
                            self.shutdown(t);
                        }
                    }
                }
                // Tasks of nodes that left the cluster.
                for (node, tasks) in &by_slot {
                    if !self.state.nodes.contains_key(node) {
                        for t in tasks.iter().filter(|t| t.desired == TaskState::Running) {
                            self.shutdown(t);
                        }
                    }
                }
            }
        }
        self.update_progress();
    }

    /// One slot (or a global service's node): returns whether it made a task.
    fn slot(&mut self, slot: u64, node: &str, tasks: &[&Task], budget: &mut u64) -> bool {
        let spec = &self.svc.spec;
        let mut live: Vec<&Task> = Vec::new();
        for t in tasks.iter().copied().filter(|t| t.desired == TaskState::Running) {
            if t.status.state.is_terminal() {
                self.shutdown(t); // it ended by itself: the restart policy decides below
            } else if !t.node_id.is_empty() && !node_up(self.state, &t.node_id) {
                self.shutdown(t);
                self.out.push(TaskChange::Status {
                    id: t.id.clone(),
                    status: TaskStatus {
                        state: TaskState::Orphaned,
                        message: "its node is down".into(),
                        err: "node is down".into(),
                        ..t.status.clone()
                    },
                });
            } else if node.is_empty()
                && !t.node_id.is_empty()
                && self.state.nodes.get(&t.node_id).is_none_or(|n| refusal(n, &spec.task).is_some())
            {
                self.shutdown(t); // drained, or the constraints changed
            } else {
                live.push(t);
            }
        }
        if let Some(&current) = live.last() {
            // start-first: the older ones go once the newest runs.
            for old in &live[..live.len() - 1] {
                if current.status.state >= TaskState::Running || current.spec != self.svc.spec.task {
                    self.shutdown(old);
                }
            }
            if current.spec != self.svc.spec.task && *budget > 0 && live.len() == 1 {
                *budget -= 1;
                if rollout(self.svc).order == UpdateOrder::StartFirst {
                    self.create(slot, node, 0, 0);
                } else {
                    self.shutdown(current);
                }
                return false;
            }
            return false;
        }
        // Nothing live: replace the newest task, if it should be.
        let Some(&last) = tasks.last() else {
            self.create(slot, node, 0, 0);
            return true;
        };
        let lost =
            last.status.state == TaskState::Orphaned || !last.node_id.is_empty() && !node_up(self.state, &last.node_id);
        if !last.status.state.is_terminal()
            && !lost
            && self.changes_for(&last.id).all(|c| !matches!(c, TaskChange::Status { .. }))
        {
            return false; // stop-first: the old one is still stopping
        }
        if !spec.mode.is_job() || last.status.state != TaskState::Complete {
            let ended_by_itself =
                matches!(last.status.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected);
            if !ended_by_itself || last.spec != self.svc.spec.task {
                if last.spec != self.svc.spec.task {
                    // A stop-first update's replacement: part of this batch.
                    *budget = budget.saturating_sub(1);
                }
                self.create(slot, node, 0, 0);
                return true;
            }
            let r = &spec.task.restart;
            let failed = last.status.state != TaskState::Complete || last.status.exit_code.is_some_and(|c| c != 0);
            let again = match r.condition {
                RestartCondition::None => false,
                RestartCondition::OnFailure => failed,
                RestartCondition::Any => !spec.mode.is_job() || failed,
            };
            // --restart-window: only the restarts within it count against max attempts.
            let attempts = if r.window_ms > 0 {
                let since = self.now_ms.saturating_sub(r.window_ms);
                tasks.iter().filter(|t| t.attempt > 0 && t.meta.created_ms >= since).count() as u64
            } else {
                last.attempt
            };
            if again && (r.max_attempts == 0 || attempts < r.max_attempts) {
                let attempt = last.attempt + 1;
                let delay =
                    r.delay_ms.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_RESTART_DELAY_MS.max(r.delay_ms));
                self.create(slot, node, attempt, last.status.at_ms.max(last.meta.updated_ms) + delay);
                return true;
            }
        }
        false
    }

    fn changes_for<'b>(&'b self, id: &'b str) -> impl Iterator<Item = &'b TaskChange> + 'b {
        self.out.iter().filter(
            move |c| matches!(c, TaskChange::Status { id: i, .. } | TaskChange::Desired { id: i, .. } if i == id),
        )
    }

    fn shutdown(&mut self, t: &Task) {
        if t.desired < TaskState::Shutdown
            && !self.out.iter().any(|c| matches!(c, TaskChange::Desired { id, .. } if *id == t.id))
        {
            self.out.push(TaskChange::Desired { id: t.id.clone(), desired: TaskState::Shutdown });
        }
    }

    fn create(&mut self, slot: u64, node: &str, attempt: u64, not_before_ms: u64) {
        let assigned = !node.is_empty();
        self.out.push(TaskChange::Create(Box::new(Task {
            id: (self.new_id)(),
            service_id: self.svc.id.clone(),
            service_name: self.svc.spec.name.clone(),
            slot,
            node_id: node.to_string(),
            desired: TaskState::Running,
            status: TaskStatus {
                state: if assigned { TaskState::Assigned } else { TaskState::Pending },
                message: if assigned { "assigned to its node".into() } else { "waiting for a node".into() },
                ..Default::default()
            },
            spec: self.svc.spec.task.clone(),
            spec_version: self.svc.spec_version,
            not_before_ms,
            attempt,
            created_index: 0,
            started_ms: 0,
            meta: Default::default(),
        })));
    }

    /// An update is complete when every live task is up to date and running,
    /// and the last one started has run for the monitor window; it pauses or
    /// rolls back when more of its new tasks fail within their window than it
    /// tolerates.
    fn update_progress(&mut self) {
        let svc = self.svc;
        if !matches!(svc.update_state, UpdateState::Updating | UpdateState::RollbackStarted) {
            return;
        }
        let cfg = rollout(svc);
        let mine = || self.tasks.iter().copied();
        // New tasks that failed before or within their monitor window, against the ratio tolerated.
        let new: Vec<&Task> = mine().filter(|t| t.spec_version == svc.spec_version).collect();
        let failed_early = |t: &&&Task| {
            matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && (t.started_ms == 0 || t.status.at_ms < t.started_ms + cfg.monitor_ms)
        };
        let failed = new.iter().filter(failed_early).count();
        let tolerated = (cfg.max_failure_ratio * new.len().max(1) as f64).floor() as usize;
        let what = if svc.update_state == UpdateState::Updating { "update" } else { "rollback" };
        if failed > tolerated
            && let Some(bad) = new.iter().find(failed_early)
        {
            let why = if bad.status.err.is_empty() { bad.status.state.to_string() } else { bad.status.err.clone() };
            use shoal_proto::service::FailureAction;
            // A rollback that fails pauses rather than rolling back again.
            let rolling_back = svc.update_state == UpdateState::RollbackStarted;
            match (cfg.failure_action, rolling_back) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Rollback, false) => {
                    self.out.push(TaskChange::Rollback {
                        service_id: svc.id.clone(),
                        message: format!(
                            "update rolled back due to failure or early termination of task {}: {why}",
                            bad.id
                        ),
                    });
                    return;
                }
                _ => {
                    self.out.push(TaskChange::UpdateState {
                        service_id: svc.id.clone(),
                        state: UpdateState::Paused,
                        message: format!("{what} paused due to failure or early termination of task {}: {why}", bad.id),
                    });
                    return;
                }
            }
        }
        let live: Vec<&Task> = mine().filter(|t| t.desired == TaskState::Running).collect();
        let enough = if svc.spec.mode.is_global() { !live.is_empty() } else { live.len() as u64 == svc.spec.replicas };
        let stable = live.iter().map(|t| t.started_ms).max().is_none_or(|last| self.now_ms >= last + cfg.monitor_ms);
        let done = enough
            && stable
            && !self.out.iter().any(|c| matches!(c, TaskChange::Create(t) if t.service_id == svc.id))
            && live.iter().all(|t| t.spec == svc.spec.task && t.status.state == TaskState::Running);
        if done {
            let (state, message) = if svc.update_state == UpdateState::Updating {
                (UpdateState::Completed, "update completed")
            } else {
                (UpdateState::RollbackCompleted, "rollback completed")
            };
            // An automatic rollback keeps saying why it happened.
            let message = if svc.update_message.contains("rolled back due to") {
                svc.update_message.clone()
            } else {
                message.to_string()
            };
            self.out.push(TaskChange::UpdateState { service_id: svc.id.clone(), state, message });
        }
    }
}

fn spec_delay(svc: &Service) -> u64 {
    if matches!(svc.update_state, UpdateState::Updating | UpdateState::RollbackStarted) {
        rollout(svc).delay_ms
    } else {
        0
    }
}

/// The settings of the rollout in progress: the rollback's while rolling back.
fn rollout(svc: &Service) -> &shoal_proto::service::UpdateConfig {
    if svc.update_state == UpdateState::RollbackStarted { &svc.spec.rollback } else { &svc.spec.update }
}

/// What a node carries: for the filters and the spread.
#[derive(Default, Clone)]
struct Load {
    tasks: u64,
    per_service: HashMap<String, u64>,
    cpus: u64,
    memory: u64,
    ports: Vec<(u16, String)>,
}

impl Load {
    fn add(&mut self, t: &Task) {
        self.tasks += 1;
        *self.per_service.entry(t.service_id.clone()).or_default() += 1;
        self.cpus += t.spec.reserve_nano_cpus;
        self.memory += t.spec.reserve_memory;
        self.ports.extend(t.spec.ports.iter().map(|p| (p.published, p.protocol.clone())));
    }
}

/// A node where tasks of one version of a service failed this many times
/// within `RECENT_FAILURE_MS` takes that version's new tasks only after all
/// other nodes: a bad node, not a bad image (which fails everywhere).
const RECENT_FAILURES: usize = 5;
const RECENT_FAILURE_MS: u64 = 5 * 60_000;

/// Places every pending task (existing, or created in this pass).
fn schedule(state: &State, now_ms: u64, out: &mut Vec<TaskChange>) {
    // Keyed like `state.nodes`, so both iterate in the same order.
    let mut loads: BTreeMap<&str, Load> = state.nodes.keys().map(|id| (id.as_str(), Load::default())).collect();
    // (service, spec version, node) where that version failed lately, and how often.
    let mut failures: HashMap<(&str, u64, &str), usize> = HashMap::new();
    for t in state.tasks.values().filter(|t| !t.node_id.is_empty()) {
        if t.desired == TaskState::Running && !t.status.state.is_terminal() {
            if let Some(l) = loads.get_mut(t.node_id.as_str()) {
                l.add(t);
            }
        } else if matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            && t.status.at_ms + RECENT_FAILURE_MS >= now_ms
        {
            *failures.entry((t.service_id.as_str(), t.spec_version, t.node_id.as_str())).or_default() += 1;
        }
    }
    // Those nodes go last for that version.
    let failed_on: HashSet<(&str, u64, &str)> =
        failures.into_iter().filter(|(_, n)| *n >= RECENT_FAILURES).map(|(k, _)| k).collect();
    for c in out.iter() {
        if let TaskChange::Create(t) = c
            && !t.node_id.is_empty()
            && let Some(l) = loads.get_mut(t.node_id.as_str())
        {
            l.add(t);
        }
    }
    // Tasks being shut down in this pass do not count against their node.
    let leaving: Vec<&str> = out
        .iter()
        .filter_map(|c| if let TaskChange::Desired { id, .. } = c { Some(id.as_str()) } else { None })
        .collect();
    for id in &leaving {
        if let Some(t) = state.tasks.get(*id)
            && let Some(l) = loads.get_mut(t.node_id.as_str())
        {
            l.tasks = l.tasks.saturating_sub(1);
            if let Some(n) = l.per_service.get_mut(&t.service_id) {
                *n = n.saturating_sub(1);
            }
            l.cpus = l.cpus.saturating_sub(t.spec.reserve_nano_cpus);
            l.memory = l.memory.saturating_sub(t.spec.reserve_memory);
            l.ports.retain(|p| !t.spec.ports.iter().any(|q| q.published == p.0 && q.protocol == p.1));
        }
    }
    let existing: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| {
            t.node_id.is_empty()
                && t.desired == TaskState::Running
                && t.status.state <= TaskState::Pending
                && !leaving.contains(&t.id.as_str())
        })
        .collect();
    let mut decisions: Vec<(String, Result<String, String>)> = Vec::new();
    let mut order: Vec<Task> = existing.into_iter().cloned().collect();
    order.extend(out.iter().filter_map(|c| {
        if let TaskChange::Create(t) = c { (t.node_id.is_empty()).then(|| (**t).clone()) } else { None }
    }));
    order.sort_by_key(|t| (t.service_id.clone(), t.slot));
    for t in &order {
        let decision = place(state, &loads, &failed_on, t);
        if let Ok(node) = &decision
            && let Some(l) = loads.get_mut(node.as_str())
        {
            l.add(t);
        }
        decisions.push((t.id.clone(), decision));
    }
    let mut extra = Vec::new();
    let created_at: HashMap<String, usize> = out
        .iter()
        .enumerate()
        .filter_map(|(i, c)| if let TaskChange::Create(t) = c { Some((t.id.clone(), i)) } else { None })
        .collect();
    for (id, decision) in decisions {
        let created =
            created_at.get(&id).and_then(|i| if let TaskChange::Create(t) = &mut out[*i] { Some(t) } else { None });
        match (created, decision) {
            (Some(t), Ok(node)) => {
                t.node_id = node;
                t.status = TaskStatus {
                    state: TaskState::Assigned,
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                };
            }
            (Some(t), Err(why)) => t.status.err = why,
            (None, Ok(node)) => extra.push(TaskChange::Assign { id, node_id: node }),
            (None, Err(why)) => {
                if state.tasks.get(&id).is_some_and(|t| t.status.err != why) {
                    extra.push(TaskChange::Unplaced { id, message: why });
                }
            }
        }
    }
    out.extend(extra);
}

/// The node for `t`, or why there is none.
fn place(
    state: &State,
    loads: &BTreeMap<&str, Load>,
    failed_on: &HashSet<(&str, u64, &str)>,
    t: &Task,
) -> Result<String, String> {
    let spec = &t.spec;
    let mut why: BTreeMap<&'static str, usize> = BTreeMap::new();
    // `--placement-pref spread=node.labels.zone`: first the label value with the
    // fewest tasks of this service (nodes without the label form one group).
    let spread_key = spec.spread.first().map(|k| k.trim_start_matches("node.labels.").to_string());
    let group_of = |node: &Node| spread_key.as_ref().map(|k| node.spec.labels.get(k).cloned().unwrap_or_default());
    let mut groups: HashMap<String, u64> = HashMap::new();
    if spread_key.is_some() {
        for (node, load) in state.nodes.values().zip(loads.values()) {
            *groups.entry(group_of(node).unwrap_or_default()).or_default() +=
                load.per_service.get(&t.service_id).copied().unwrap_or(0);
        }
    }
    // Then fewest of this service, then fewest overall; ties go to the first node by id.
    // Nodes where this service failed lately come after all others.
    // (failed here lately, spread group, tasks of this service, tasks in all)
    type Rank = (bool, u64, u64, u64);
    let mut best: Option<(Rank, &str)> = None;
    for (node, load) in state.nodes.values().zip(loads.values()) {
        let mine = load.per_service.get(&t.service_id).copied().unwrap_or(0);
        let refused = refusal(node, spec).or_else(|| {
            if spec.reserve_memory > 0 && load.memory + spec.reserve_memory > node.description.memory_bytes {
                Some("insufficient memory")
            } else if spec.reserve_nano_cpus > 0 && load.cpus + spec.reserve_nano_cpus > node.description.nano_cpus {
                Some("insufficient CPU")
            } else if spec
                .ports
                .iter()
                .any(|p| load.ports.iter().any(|(n, proto)| *n == p.published && *proto == p.protocol))
            {
                Some("host-mode port already in use")
            } else if spec.max_replicas_per_node > 0 && mine >= spec.max_replicas_per_node {
                Some("max replicas per node reached")
            } else {
                None
            }
        });
        if let Some(r) = refused {
            *why.entry(r).or_default() += 1;
            continue;
        }
        let group = group_of(node).map_or(0, |g| groups.get(&g).copied().unwrap_or(0));
        let rank =
            (failed_on.contains(&(t.service_id.as_str(), t.spec_version, node.id.as_str())), group, mine, load.tasks);
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, node.id.as_str()));
        }
    }
    match best {
        Some((_, id)) => Ok(id.to_string()),
        None if why.is_empty() => Err("no suitable node (no nodes)".into()),
        None => {
            let parts: Vec<String> =
                why.iter().map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" })).collect();
            Err(format!("no suitable node ({})", parts.join("; ")))
        }
    }
}

/// Each slot keeps its `HISTORY` newest ended tasks.
fn reap(state: &State, out: &mut Vec<TaskChange>) {
    let mut by_slot: HashMap<(String, u64, String), Vec<&Task>> = HashMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired >= TaskState::Shutdown && (t.status.state.is_terminal() || !node_up(state, &t.node_id)))
    {
        let node = if t.slot == 0 { t.node_id.clone() } else { String::new() };
        by_slot.entry((t.service_id.clone(), t.slot, node)).or_default().push(t);
    }
    for tasks in by_slot.values_mut() {
        if tasks.len() > HISTORY {
            tasks.sort_by_key(|t| std::cmp::Reverse(t.created_index));
            for t in &tasks[HISTORY..] {
                if !out.iter().any(|c| matches!(c, TaskChange::Delete { id } if *id == t.id)) {
                    out.push(TaskChange::Delete { id: t.id.clone() });
                }
            }
        }
    }
}

/// Leader-only: runs `plan` after every change of the state (and every
/// `RESYNC`), writing each pass's changes in one Raft entry.
pub async fn lead(mgr: std::sync::Arc<crate::Manager>, token: tokio_util::sync::CancellationToken) {
    let mut events = mgr.store.subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    let mut last: Vec<TaskChange> = Vec::new();
    loop {
        let state = mgr.store.read();
        let changes = plan(&state, shoal_proto::model::now_ms(), &mut shoal_proto::model::new_node_id);
        // The same changes again (the state did not take them): wait for news instead of spinning.
        if !changes.is_empty() && changes != last {
            last = changes.clone();
            // Big passes go in several entries, each well under the transport's message limit.
            for chunk in changes.chunks(MAX_CHANGES_PER_ENTRY) {
                if let Err(e) = mgr.write(crate::state::Command::Tasks { changes: chunk.to_vec() }).await {
                    tracing::warn!(error = %e, changes = chunk.len(), "orchestrator write failed; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    }
                    break;
                }
            }
            continue; // look again at the state it made
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

/// A task change is under 1 KiB of JSON: 2,000 keep an entry near 1.5 MiB.
const MAX_CHANGES_PER_ENTRY: usize = 2_000;

/// How often the orchestrator looks even when nothing changed (restart back-offs come due).
const RESYNC: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Request};
    use shoal_proto::model::{Meta, NodeDescription, NodeSpec, NodeStatus, Role};
    use shoal_proto::service::{PublishedPort, ServiceSpec};

    fn node(id: &str, role: Role) -> Node {
        Node {
            id: id.into(),
            raft_id: 0,
            spec: NodeSpec { role, availability: Availability::Active, labels: Default::default() },
            description: NodeDescription {
                hostname: format!("h-{id}"),
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
                ..Default::default()
            },
            status: NodeStatus { state: NodeState::Ready, message: String::new() },
            meta: Meta::default(),
        }
    }

    struct World {
        state: State,
        index: u64,
        ids: u64,
        /// Added to the clock (`index * 10`), to let time pass.
        skew: u64,
    }

    impl World {
        fn new(nodes: &[(&str, Role)]) -> World {
            let mut state = State::default();
            for (id, role) in nodes {
                state.nodes.insert(id.to_string(), node(id, *role));
            }
            World { state, index: 1, ids: 0, skew: 0 }
        }

        fn apply(&mut self, cmd: Command) {
            self.index += 1;
            let (r, _) = self.state.apply(self.index, &Request { at_ms: self.index * 10 + self.skew, cmd });
            assert_eq!(r, crate::state::Response::Ok);
        }

        fn service(&mut self, name: &str, f: impl FnOnce(&mut ServiceSpec)) -> String {
            let mut spec = ServiceSpec { name: name.into(), replicas: 1, ..Default::default() };
            spec.task.image = "img".into();
            f(&mut spec);
            let id = format!("svc-{name}");
            self.apply(Command::CreateService { id: id.clone(), spec, auth: None });
            id
        }

        /// `service update`: the service's spec, changed by `f`.
        fn update(&mut self, svc: &str, f: impl FnOnce(&mut ServiceSpec)) {
            let mut spec = self.state.services[svc].spec.clone();
            f(&mut spec);
            self.apply(Command::UpdateService {
                id: svc.to_string(),
                spec,
                rollback: false,
                replace_auth: false,
                auth: None,
            });
        }

        /// One orchestrator pass, applied; returns its changes.
        fn pass(&mut self) -> Vec<TaskChange> {
            let mut n = self.ids;
            let now = self.index * 10 + self.skew;
            let changes = plan(&self.state, now, &mut || {
                n += 1;
                format!("t{n:04}")
            });
            self.ids = n;
            if !changes.is_empty() {
                self.apply(Command::Tasks { changes: changes.clone() });
            }
            changes
        }

        /// Every assigned task reports running (as its node would).
        fn run_all(&mut self) {
            let mut by_node: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
            for t in self
                .state
                .tasks
                .values()
                .filter(|t| t.desired == TaskState::Running && t.status.state == TaskState::Assigned)
            {
                by_node
                    .entry(t.node_id.clone())
                    .or_default()
                    .push((t.id.clone(), TaskStatus { state: TaskState::Running, ..Default::default() }));
            }
            for t in self.state.tasks.values().filter(|t| {
                t.desired >= TaskState::Shutdown && !t.status.state.is_terminal() && node_up(&self.state, &t.node_id)
            }) {
                by_node
                    .entry(t.node_id.clone())
                    .or_default()
                    .push((t.id.clone(), TaskStatus { state: TaskState::Shutdown, ..Default::default() }));
            }
            for (node_id, updates) in by_node {
                self.apply(Command::TaskStatus { node_id, updates });
            }
        }

        /// Passes and reports until nothing changes.
        fn settle(&mut self) {
            for _ in 0..50 {
                let changes = self.pass();
                self.run_all();
                if changes.is_empty() && self.pass().is_empty() {
                    return;
                }
            }
            panic!("did not settle");
        }

        fn running(&self, svc: &str) -> Vec<&Task> {
            self.state
                .tasks
                .values()
                .filter(|t| {
                    t.service_id == svc && t.desired == TaskState::Running && t.status.state == TaskState::Running
                })
                .collect()
        }

        fn per_node(&self, svc: &str) -> BTreeMap<String, usize> {
            let mut m = BTreeMap::new();
            for t in self.running(svc) {
                *m.entry(t.node_id.clone()).or_default() += 1;
            }
            m
        }
    }

    fn five() -> World {
        World::new(&[
            ("n1", Role::Manager),
            ("n2", Role::Manager),
            ("n3", Role::Manager),
            ("n4", Role::Worker),
            ("n5", Role::Worker),
        ])
    }

    #[test]
    fn replicas_spread_evenly_and_scale() {
        let mut w = five();
        let web = w.service("web", |s| s.replicas = 10);
        w.settle();
        assert!(w.per_node(&web).values().all(|n| *n == 2), "{:?}", w.per_node(&web));
        let mut spec = w.state.services[&web].spec.clone();
        spec.replicas = 3;
        w.apply(Command::UpdateService { id: web.clone(), spec, rollback: false, replace_auth: false, auth: None });
        w.settle();
        let slots: Vec<u64> = w.running(&web).iter().map(|t| t.slot).collect();
        assert_eq!(slots.len(), 3);
        assert!(slots.iter().all(|s| *s <= 3), "{slots:?}");
    }

    #[test]
    fn a_down_node_is_replaced_at_once_and_its_tasks_are_orphaned() {
        let mut w = five();
        let web = w.service("web", |s| s.replicas = 5);
        w.settle();
        w.state.nodes.get_mut("n5").unwrap().status.state = NodeState::Down;
        w.settle();
        assert_eq!(w.running(&web).len(), 5);
        assert!(!w.per_node(&web).contains_key("n5"));
        let orphan = w.state.tasks.values().find(|t| t.node_id == "n5").unwrap();
        assert_eq!((orphan.desired, orphan.status.state), (TaskState::Shutdown, TaskState::Orphaned));
    }

    #[test]
    fn restarts_follow_the_policy_with_a_doubling_backoff() {
        let mut w = five();
        let svc = w.service("flaky", |s| {
            s.task.restart.delay_ms = 100;
            s.task.restart.max_attempts = 2;
            s.task.restart.condition = RestartCondition::OnFailure;
        });
        w.settle();
        let mut delays = Vec::new();
        for _ in 0..3 {
            let t = w.running(&svc)[0].clone();
            w.apply(Command::TaskStatus {
                node_id: t.node_id.clone(),
                updates: vec![(
                    t.id.clone(),
                    TaskStatus { state: TaskState::Failed, exit_code: Some(1), at_ms: 0, ..Default::default() },
                )],
            });
            let failed_at = w.state.tasks[&t.id].meta.updated_ms;
            w.settle();
            if let Some(next) = w.state.tasks.values().find(|n| n.slot == 1 && n.attempt == t.attempt + 1) {
                delays.push(next.not_before_ms - failed_at);
            }
        }
        assert_eq!(delays, vec![100, 200], "two restarts, doubling; then no more");
        assert!(w.running(&svc).is_empty());
        // A clean exit under on-failure is not restarted.
        let ok = w.service("ok", |s| s.task.restart.condition = RestartCondition::OnFailure);
        w.settle();
        let t = w.running(&ok)[0].clone();
        w.apply(Command::TaskStatus {
            node_id: t.node_id.clone(),
            updates: vec![(
                t.id.clone(),
                TaskStatus { state: TaskState::Complete, exit_code: Some(0), ..Default::default() },
            )],
        });
        w.settle();
        assert_eq!(w.state.tasks.values().filter(|x| x.service_id == ok).count(), 1);
    }

    #[test]
    fn global_services_follow_nodes_and_drain() {
        let mut w = five();
        let g = w.service("g", |s| s.mode = Mode::Global);
        w.settle();
        assert_eq!(w.running(&g).len(), 5);
        w.state.nodes.get_mut("n2").unwrap().spec.availability = Availability::Drain;
        w.state.nodes.insert("n6".into(), node("n6", Role::Worker));
        w.settle();
        let nodes: Vec<String> = w.per_node(&g).into_keys().collect();
        assert_eq!(nodes, ["n1", "n3", "n4", "n5", "n6"]);
    }

    #[test]
    fn every_filter_says_why_a_task_is_not_placed() {
        let mut w = five();
        w.state.nodes.get_mut("n4").unwrap().spec.availability = Availability::Drain;
        w.state.nodes.get_mut("n5").unwrap().status.state = NodeState::Down;
        w.state.nodes.get_mut("n1").unwrap().description.memory_bytes = 1 << 20;
        let svc = w.service("picky", |s| {
            s.replicas = 3;
            s.task.constraints = vec!["node.role==manager".into()];
            s.task.reserve_memory = 64 << 20;
            s.task.max_replicas_per_node = 1;
        });
        w.settle();
        assert_eq!(w.running(&svc).len(), 2);
        let pending = w.state.tasks.values().find(|t| t.service_id == svc && t.node_id.is_empty()).unwrap();
        assert_eq!(
            pending.status.err,
            "no suitable node (down on 1 node; drained on 1 node; insufficient memory on 1 node; max replicas per node reached on 2 nodes)"
        );
        // Host ports: one task per node.
        let mut w = World::new(&[("a", Role::Worker), ("b", Role::Worker)]);
        let p = w.service("ports", |s| {
            s.replicas = 3;
            s.task.ports = vec![PublishedPort { published: 8080, target: 80, protocol: "tcp".into() }];
        });
        w.settle();
        assert_eq!(w.running(&p).len(), 2);
        assert!(
            w.state
                .tasks
                .values()
                .any(|t| t.status.err == "no suitable node (host-mode port already in use on 2 nodes)")
        );
    }

    #[test]
    fn placement_preferences_spread_over_label_values() {
        let mut w =
            World::new(&[("a1", Role::Worker), ("a2", Role::Worker), ("a3", Role::Worker), ("b1", Role::Worker)]);
        for (id, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
            w.state.nodes.get_mut(id).unwrap().spec.labels.insert("zone".into(), zone.into());
        }
        let svc = w.service("zoned", |s| {
            s.replicas = 4;
            s.task.spread = vec!["node.labels.zone".into()];
        });
        w.settle();
        let per = w.per_node(&svc);
        assert_eq!(per.get("b1"), Some(&2), "half in zone b, on its one node: {per:?}");
        assert_eq!(per.iter().filter(|(n, _)| n.starts_with('a')).map(|(_, c)| c).sum::<usize>(), 2);
    }

    #[test]
    fn constraints_parse_and_match() {
        let mut n = node("x", Role::Worker);
        n.spec.labels.insert("zone".into(), "a".into());
        assert!(constraint_holds("node.role==worker", &n));
        assert!(constraint_holds("node.role != manager", &n));
        assert!(constraint_holds("node.labels.zone==a", &n));
        assert!(!constraint_holds("node.labels.zone==b", &n));
        assert!(constraint_holds("node.labels.rack!=1", &n), "a missing label is not equal");
        assert!(constraint_holds("node.hostname==h-x", &n));
        // The node's own platform, not the leader's: an arm64 node is not x86_64.
        assert!(!constraint_holds("node.platform.arch==x86_64", &n), "no platform until its hello");
        (n.description.os, n.description.arch) = ("linux".into(), "aarch64".into());
        assert!(constraint_holds("node.platform.arch==aarch64", &n) && constraint_holds("node.platform.os==linux", &n));
        assert!(
            !constraint_holds("node.platform.arch==x86_64", &n) && constraint_holds("node.platform.arch!=x86_64", &n)
        );
        assert!(valid_constraint("node.labels.zone==a").is_ok());
        assert!(valid_constraint("zone==a").is_err() && valid_constraint("node.role=manager").is_err());
    }

    #[test]
    fn rolling_updates_respect_parallelism_and_order() {
        let mut w = five();
        let web = w.service("web", |s| {
            s.replicas = 4;
            s.update.parallelism = 2;
            s.update.order = UpdateOrder::StartFirst;
        });
        w.settle();
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        let v = w.state.services[&web].spec_version;
        // First pass: two new tasks start beside the old ones (start-first).
        let changes = w.pass();
        assert_eq!(changes.iter().filter(|c| matches!(c, TaskChange::Create(_))).count(), 2);
        assert!(
            !changes.iter().any(|c| matches!(c, TaskChange::Desired { .. })),
            "start-first keeps the old ones until the new run"
        );
        assert!(w.pass().iter().all(|c| !matches!(c, TaskChange::Create(_))), "no more than parallelism in flight");
        w.settle();
        assert!(w.running(&web).iter().all(|t| t.spec_version == v) && w.running(&web).len() == 4);
        assert_eq!(
            w.state.services[&web].update_state,
            UpdateState::Updating,
            "the last tasks are in their monitor window"
        );
        w.skew += 5_000;
        w.settle();
        assert_eq!(w.state.services[&web].update_state, UpdateState::Completed);
        // stop-first: the old task goes before its replacement is made.
        let mut spec = w.state.services[&web].spec.clone();
        spec.update.order = UpdateOrder::StopFirst;
        spec.task.env = vec!["V=3".into()];
        w.apply(Command::UpdateService { id: web.clone(), spec, rollback: false, replace_auth: false, auth: None });
        let changes = w.pass();
        assert_eq!(changes.iter().filter(|c| matches!(c, TaskChange::Desired { .. })).count(), 2);
        assert!(!changes.iter().any(|c| matches!(c, TaskChange::Create(_))));
        w.settle();
        assert_eq!(w.running(&web).len(), 4);
    }

    #[test]
    fn a_failing_update_rolls_back_by_itself() {
        let mut w = five();
        let web = w.service("web", |s| {
            s.replicas = 3;
            s.update.failure_action = shoal_proto::service::FailureAction::Rollback;
        });
        w.settle();
        let old = w.state.services[&web].spec.task.clone();
        let mut spec = w.state.services[&web].spec.clone();
        spec.task.image = "broken".into();
        w.apply(Command::UpdateService { id: web.clone(), spec, rollback: false, replace_auth: false, auth: None });
        // The first new task cannot start.
        w.pass();
        w.run_all();
        w.pass();
        let bad = w
            .state
            .tasks
            .values()
            .find(|t| t.spec.image == "broken" && t.desired == TaskState::Running)
            .cloned()
            .expect("a new task");
        w.apply(Command::TaskStatus {
            node_id: bad.node_id.clone(),
            updates: vec![(
                bad.id.clone(),
                TaskStatus { state: TaskState::Rejected, err: "No such image: broken".into(), ..Default::default() },
            )],
        });
        w.settle();
        w.skew += 5_000;
        w.settle();
        let svc = &w.state.services[&web];
        assert_eq!(svc.spec.task, old, "back to the previous spec");
        assert_eq!(svc.update_state, UpdateState::RollbackCompleted);
        assert!(w.running(&web).len() == 3 && w.running(&web).iter().all(|t| t.spec.image == "img"));
    }

    #[test]
    fn update_delay_spaces_the_batches() {
        let mut w = five();
        let web = w.service("web", |s| {
            s.replicas = 2;
            s.update.parallelism = 1;
            s.update.delay_ms = 60_000;
        });
        w.settle();
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        w.settle();
        let new = |w: &World| w.running(&web).iter().filter(|t| t.spec.env == ["V=2"]).count();
        assert_eq!(new(&w), 1, "one batch, then the delay");
        w.skew += 60_000;
        w.settle();
        assert_eq!(new(&w), 2);
        w.skew += 5_000;
        w.settle();
        assert_eq!(w.state.services[&web].update_state, UpdateState::Completed);
    }

    #[test]
    fn nodes_where_the_service_failed_often_lately_go_last() {
        let mut w = World::new(&[("a", Role::Worker), ("b", Role::Worker)]);
        let web = w.service("web", |s| s.task.restart.delay_ms = 0);
        w.settle();
        let fail = |w: &mut World| {
            let t = w.running(&web)[0].clone();
            let at_ms = w.index * 10 + w.skew;
            w.apply(Command::TaskStatus {
                node_id: t.node_id.clone(),
                updates: vec![(t.id.clone(), TaskStatus { state: TaskState::Failed, at_ms, ..Default::default() })],
            });
            w.settle();
        };
        // Ties go to the first node; a few failures there do not move the service.
        for _ in 1..RECENT_FAILURES {
            assert_eq!(w.running(&web)[0].node_id, "a");
            fail(&mut w);
        }
        assert_eq!(w.running(&web)[0].node_id, "a", "{} failures are not enough", RECENT_FAILURES - 1);
        fail(&mut w);
        assert_eq!(
            w.running(&web)[0].node_id,
            "b",
            "the replacement avoids the node it failed on {RECENT_FAILURES} times"
        );
        // A new version of the service starts with a clean slate.
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        w.settle();
        w.skew += 5_000;
        w.settle();
        assert_eq!(w.running(&web)[0].node_id, "a");
        // Five minutes on, failures are forgotten: one on b sends it back to a.
        for _ in 0..RECENT_FAILURES {
            fail(&mut w);
        }
        assert_eq!(w.running(&web)[0].node_id, "b");
        w.skew += RECENT_FAILURE_MS + 1_000;
        fail(&mut w);
        assert_eq!(w.running(&web)[0].node_id, "a");
    }

    /// Fails a running task of `svc` whose env is `env`, as its node would, at the world's clock now.
    fn fail_one(w: &mut World, svc: &str, env: &str) {
        let t = w.running(svc).into_iter().find(|t| t.spec.env == [env]).cloned().expect("a running task of that spec");
        let at_ms = w.index * 10 + w.skew;
        let status = TaskStatus {
            state: TaskState::Failed,
            err: "exit 1".into(),
            exit_code: Some(1),
            at_ms,
            ..Default::default()
        };
        w.apply(Command::TaskStatus { node_id: t.node_id.clone(), updates: vec![(t.id.clone(), status)] });
    }

    #[test]
    fn failures_count_within_the_monitor_window_and_rollbacks_use_their_own_settings() {
        use shoal_proto::service::FailureAction;
        let mut w = five();
        let web = w.service("web", |s| {
            s.replicas = 4;
            s.task.env = vec!["V=1".into()];
            s.update.parallelism = 0;
            s.update.monitor_ms = 1_000;
            s.update.failure_action = FailureAction::Rollback;
            s.rollback.parallelism = 1;
            s.rollback.monitor_ms = 1_000;
        });
        w.settle();
        // A failure after the window is the restart policy's business, not the update's.
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        w.settle();
        w.skew += 2_000;
        fail_one(&mut w, &web, "V=2");
        w.settle();
        assert_eq!(
            w.state.services[&web].update_state,
            UpdateState::Updating,
            "no rollback; its replacement is watched"
        );
        w.skew += 1_000;
        w.settle();
        let svc = &w.state.services[&web];
        assert_eq!(
            (svc.update_state.clone(), svc.spec.task.env.clone()),
            (UpdateState::Completed, vec!["V=2".to_string()]),
            "{}",
            svc.update_message
        );
        // Within the window it rolls back, one task at a time as the rollback settings say.
        w.update(&web, |s| s.task.env = vec!["V=3".into()]);
        w.settle();
        fail_one(&mut w, &web, "V=3");
        w.pass();
        assert_eq!(w.state.services[&web].update_state, UpdateState::RollbackStarted);
        let first = w.pass();
        assert_eq!(
            first.iter().filter(|c| matches!(c, TaskChange::Desired { .. })).count(),
            1,
            "rollback parallelism 1: {first:?}"
        );
        w.settle();
        w.skew += 1_000;
        w.settle();
        let svc = &w.state.services[&web];
        assert_eq!(svc.update_state, UpdateState::RollbackCompleted);
        assert!(
            svc.update_message.contains("rolled back due to") && svc.update_message.contains("exit 1"),
            "{}",
            svc.update_message
        );
        assert!(w.running(&web).iter().all(|t| t.spec.env == ["V=2"]) && w.running(&web).len() == 4);
        // A rollback whose tasks fail pauses rather than rolling back again.
        w.update(&web, |s| s.task.env = vec!["V=4".into()]);
        w.settle();
        w.apply(Command::UpdateService {
            id: web.clone(),
            spec: w.state.services[&web].spec.clone(),
            rollback: true,
            replace_auth: false,
            auth: None,
        });
        w.settle();
        fail_one(&mut w, &web, "V=2");
        w.settle();
        let svc = &w.state.services[&web];
        assert_eq!(svc.update_state, UpdateState::Paused);
        assert!(svc.update_message.starts_with("rollback paused"), "{}", svc.update_message);
    }

    #[test]
    fn max_attempts_count_within_the_restart_window() {
        let mut w = World::new(&[("a", Role::Worker)]);
        let svc = w.service("flaky", |s| {
            s.task.restart.delay_ms = 0;
            s.task.restart.max_attempts = 1;
            s.task.restart.window_ms = 1_000;
        });
        let fail = |w: &mut World| {
            w.settle();
            let t = w.running(&svc).first().map(|t| (*t).clone());
            if let Some(t) = t {
                w.apply(Command::TaskStatus {
                    node_id: "a".into(),
                    updates: vec![(
                        t.id.clone(),
                        TaskStatus { state: TaskState::Failed, exit_code: Some(1), ..Default::default() },
                    )],
                });
            }
            w.settle();
        };
        fail(&mut w);
        assert_eq!(w.running(&svc).len(), 1, "the first restart");
        fail(&mut w);
        assert!(w.running(&svc).is_empty(), "a second failure within the window: no more");
        w.skew += 2_000;
        w.settle();
        assert_eq!(w.running(&svc).len(), 1, "once the window has passed, it restarts again");
    }

    #[test]
    fn history_is_kept_per_slot_and_then_reaped() {
        let mut w = World::new(&[("a", Role::Worker)]);
        let svc = w.service("crashy", |s| s.task.restart.delay_ms = 0);
        for _ in 0..9 {
            w.settle();
            let t = w.running(&svc)[0].clone();
            w.apply(Command::TaskStatus {
                node_id: "a".into(),
                updates: vec![(
                    t.id.clone(),
                    TaskStatus { state: TaskState::Failed, exit_code: Some(1), ..Default::default() },
                )],
            });
        }
        w.settle();
        let ended = w.state.tasks.values().filter(|t| t.service_id == svc && t.status.state.is_terminal()).count();
        assert_eq!(ended, HISTORY);
        assert_eq!(w.running(&svc).len(), 1);
    }

    #[test]
    fn jobs_run_to_completion_within_max_concurrent() {
        let mut w = five();
        let job = w.service("job", |s| {
            s.mode = Mode::ReplicatedJob;
            s.replicas = 5;
            s.max_concurrent = 2;
            s.task.restart.condition = RestartCondition::OnFailure;
        });
        for _ in 0..10 {
            w.settle();
            let running: Vec<Task> = w.running(&job).into_iter().cloned().collect();
            assert!(running.len() <= 2, "{}", running.len());
            for t in running {
                w.apply(Command::TaskStatus {
                    node_id: t.node_id.clone(),
                    updates: vec![(
                        t.id.clone(),
                        TaskStatus { state: TaskState::Complete, exit_code: Some(0), ..Default::default() },
                    )],
                });
            }
        }
        let done =
            w.state.tasks.values().filter(|t| t.service_id == job && t.status.state == TaskState::Complete).count();
        assert_eq!(done, 5);
    }

    #[test]
    fn removed_services_take_their_tasks_with_them() {
        let mut w = five();
        let web = w.service("web", |s| s.replicas = 3);
        w.settle();
        w.apply(Command::RemoveService { id: web.clone() });
        w.settle();
        assert!(w.state.tasks.is_empty());
    }
}
