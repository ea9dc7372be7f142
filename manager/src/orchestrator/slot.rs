//! The orchestrator's pass over one service: one live task per slot (or per
//! eligible node for a global service), replacements by the restart policy,
//! and the out-of-date tasks of a rolling update, `parallelism` at a time.

use std::collections::BTreeMap;

use shoal_proto::network::TaskNetwork;
use shoal_proto::service::{
    MAX_RESTART_DELAY_MS, Mode, RestartCondition, Service, Task, TaskState, TaskStatus, UpdateOrder, UpdateState,
};

use super::update::{rollout, spec_delay};
use super::{node_up, refusal};
use crate::state::{State, TaskChange};

pub(super) struct Orchestrator<'a> {
    pub(super) state: &'a State,
    pub(super) svc: &'a Service,
    /// The service's tasks.
    pub(super) tasks: &'a [&'a Task],
    pub(super) now_ms: u64,
    /// What its tasks wait for, while its dependencies hold them (`super::held`).
    pub(super) held: Option<&'a str>,
    pub(super) out: &'a mut Vec<TaskChange>,
    pub(super) new_id: &'a mut dyn FnMut() -> String,
}

impl Orchestrator<'_> {
    pub(super) fn run(mut self) {
        // By slot, or by node for a global service: (slot, "") or (0, node), borrowed
        // from the tasks (this runs over every task of the service at each pass).
        let mut by_slot: BTreeMap<(u64, &str), Vec<&Task>> = BTreeMap::new();
        for &t in self.tasks {
            let key = if self.svc.spec.mode.is_global() { (0, t.node_id.as_str()) } else { (t.slot, "") };
            by_slot.entry(key).or_default().push(t);
        }
        for tasks in by_slot.values_mut() {
            tasks.sort_by(|a, b| (a.created_index, &a.id).cmp(&(b.created_index, &b.id)));
        }
        let spec = &self.svc.spec;
        // Out-of-date tasks are replaced `parallelism` at a time: the up-to-date
        // ones not running yet are the batch in flight, and so are the
        // out-of-date ones still stopping in a slot that has no up-to-date
        // task yet (a stop-first replacement before it is made; without
        // them, every pass while a stop took its time began another batch).
        let global = spec.mode.is_global();
        fn key(global: bool, t: &Task) -> (u64, &str) {
            if global { (0, t.node_id.as_str()) } else { (t.slot, "") }
        }
        // Current: of this version, to run (a stop-first replacement made ready counts).
        let current = |t: &&&Task| t.spec_version == self.svc.spec_version && t.desired <= TaskState::Running;
        let renewed: std::collections::HashSet<(u64, &str)> =
            self.tasks.iter().filter(current).map(|t| key(global, t)).collect();
        let in_flight = self
            .tasks
            .iter()
            .filter(|t| {
                (current(t) && t.status.state < TaskState::Running)
                    || (self.outdated(t)
                        && t.desired >= TaskState::Shutdown
                        && !t.status.state.is_terminal()
                        && super::with_its_node(self.state, t)
                        && (global || t.slot <= spec.replicas)
                        && !renewed.contains(&key(global, t)))
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
        // A held service runs nothing a rollout could keep up: every slot is replaced at once.
        let mut budget = if paused {
            0
        } else if rollout.parallelism == 0 || self.held.is_some() {
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
                    let tasks = by_slot.get(&(slot, "")).map(Vec::as_slice).unwrap_or(&[]);
                    if spec.mode == Mode::ReplicatedJob && tasks.is_empty() && live >= concurrent {
                        continue; // waits for a running one to finish
                    }
                    if self.slot(slot, "", tasks, &mut budget) && tasks.is_empty() {
                        live += 1;
                    }
                }
                // Slots past the count: scaled down.
                for (_, tasks) in by_slot.range((wanted + 1, "")..) {
                    for t in tasks.iter().filter(|t| t.desired <= TaskState::Running) {
                        self.shutdown(t);
                    }
                }
            }
            Mode::Global | Mode::GlobalJob => {
                for node in self.state.nodes.values() {
                    let tasks = by_slot.get(&(0, node.id.as_str())).map(Vec::as_slice).unwrap_or(&[]);
                    if refusal(node, &spec.task).is_none() {
                        self.slot(0, &node.id, tasks, &mut budget);
                    } else {
                        for t in tasks.iter().filter(|t| t.desired <= TaskState::Running) {
                            self.shutdown(t);
                        }
                    }
                }
                // Tasks of nodes that left the cluster.
                for ((_, node), tasks) in &by_slot {
                    if !self.state.nodes.contains_key(*node) {
                        for t in tasks.iter().filter(|t| t.desired <= TaskState::Running) {
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
            } else if self.node_down(t) {
                self.shutdown(t);
                self.orphan(t);
            } else if self.refused(node, t) {
                self.shutdown(t); // drained, or the constraints changed
            } else {
                if !node.is_empty() && t.status.state == TaskState::Pending {
                    self.gate(t); // a global task held for its dependencies
                }
                live.push(t);
            }
        }
        // A stop-first update's replacement, made ready while the task it
        // replaces stops (its node prepares it meanwhile): it runs once every
        // other task of the slot has ended.
        if let Some(&next) = tasks.iter().rev().find(|t| t.desired == TaskState::Ready) {
            let (node_down, ended) = (self.node_down(next), next.status.state.is_terminal());
            if !live.is_empty() || self.outdated(next) || node_down || self.refused(node, next) || ended {
                // Not (or no longer) the slot's next task: it ends like any other.
                if node_down && !ended {
                    self.orphan(next);
                }
                self.shutdown(next);
                if !next.status.state.is_terminal() && !self.lost(next) {
                    return false;
                }
            } else {
                if tasks.iter().all(|t| t.id == next.id || !self.stopping(t)) {
                    self.out.push(TaskChange::Desired { id: next.id.clone(), desired: TaskState::Running });
                }
                return false;
            }
        }
        if let Some(&current) = live.last() {
            // start-first: the older ones go once the newest runs.
            for old in &live[..live.len() - 1] {
                if current.status.state >= TaskState::Running || self.outdated(current) {
                    self.shutdown(old);
                }
            }
            if self.outdated(current) && *budget > 0 && live.len() == 1 {
                *budget -= 1;
                if rollout(self.svc).order == UpdateOrder::StartFirst {
                    self.create(slot, node, 0, 0);
                } else {
                    self.shutdown(current);
                    // Its replacement is made now, ready but not to run: its
                    // node prepares it while this one stops (as Swarm does).
                    if self.held.is_none() && !spec.mode.is_job() {
                        self.create_as(slot, node, 0, 0, TaskState::Ready);
                    }
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
        if tasks.iter().any(|t| self.stopping(t)) {
            return false; // stop-first: the old one is still stopping
        }
        if !spec.mode.is_job() || last.status.state != TaskState::Complete {
            let ended_by_itself =
                matches!(last.status.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected);
            if !ended_by_itself || self.outdated(last) {
                if self.outdated(last) {
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

    /// A global task made while its service was held (pending, on its node
    /// but not sent there: the dispatcher sends only assigned tasks): goes to
    /// its node once released, else says what it waits for.
    fn gate(&mut self, t: &Task) {
        match self.held {
            None => self.out.push(TaskChange::Status {
                id: t.id.clone(),
                status: TaskStatus {
                    state: TaskState::Assigned,
                    message: "assigned to its node".into(),
                    ..Default::default()
                },
            }),
            Some(why) if t.status.err != why => {
                self.out.push(TaskChange::Unplaced { id: t.id.clone(), message: why.to_string() })
            }
            Some(_) => {}
        }
    }

    /// Made from an older spec of its service's tasks. A task of the
    /// service's spec version has its spec (the version moves with every
    /// change of it), so only older ones are compared, field by field: a
    /// pass looks at every task of the service.
    pub(super) fn outdated(&self, t: &Task) -> bool {
        t.spec_version != self.svc.spec_version && t.spec != self.svc.spec.task
    }

    /// Placed on a node that is down.
    fn node_down(&self, t: &Task) -> bool {
        !t.node_id.is_empty() && !node_up(self.state, &t.node_id)
    }

    /// Placed (in a replicated slot, `node` empty) on a node that is gone,
    /// drained, or no longer matches the constraints.
    fn refused(&self, node: &str, t: &Task) -> bool {
        node.is_empty()
            && !t.node_id.is_empty()
            && self.state.nodes.get(&t.node_id).is_none_or(|n| refusal(n, &self.svc.spec.task).is_some())
    }

    /// Lost, or never on a node (unplaced, or held for its dependencies): no
    /// node will say it stopped.
    fn lost(&self, t: &Task) -> bool {
        t.status.state == TaskState::Orphaned || !super::with_its_node(self.state, t)
    }

    /// Still on its way out on its node: not ended, not lost, and not said to
    /// have ended in this pass.
    fn stopping(&self, t: &Task) -> bool {
        !t.status.state.is_terminal()
            && !self.lost(t)
            && self.changes_for(&t.id).all(|c| !matches!(c, TaskChange::Status { .. }))
    }

    /// Its node is down: the task is orphaned there.
    fn orphan(&mut self, t: &Task) {
        self.out.push(TaskChange::Status {
            id: t.id.clone(),
            status: TaskStatus {
                state: TaskState::Orphaned,
                message: "its node is down".into(),
                err: "node is down".into(),
                ..t.status.clone()
            },
        });
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
        self.create_as(slot, node, attempt, not_before_ms, TaskState::Running);
    }

    /// A new task of the slot, `desired` Running, or Ready: prepared by its
    /// node but not started until the orchestrator says so.
    fn create_as(&mut self, slot: u64, node: &str, attempt: u64, not_before_ms: u64, desired: TaskState) {
        let assigned = !node.is_empty() && self.held.is_none();
        self.out.push(TaskChange::Create(Box::new(Task {
            id: (self.new_id)(),
            service_id: self.svc.id.clone(),
            service_name: self.svc.spec.name.clone(),
            slot,
            node_id: node.to_string(),
            desired,
            status: TaskStatus {
                state: if assigned { TaskState::Assigned } else { TaskState::Pending },
                message: if assigned { "assigned to its node".into() } else { "waiting for a node".into() },
                err: self.held.unwrap_or_default().to_string(),
                ..Default::default()
            },
            spec: self.svc.spec.task.clone(),
            spec_version: self.svc.spec_version,
            not_before_ms,
            attempt,
            created_index: 0,
            started_ms: 0,
            meta: Default::default(),
            // The spec's networks, and ingress when it publishes ingress ports.
            networks: self
                .state
                .task_attachments(&self.svc.spec)
                .iter()
                .map(|a| TaskNetwork { network: a.target.clone(), aliases: a.aliases.clone(), addr: None })
                .collect(),
        })));
    }
}
