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
//!   constraints, CPU limit, reservations, host ports, max per node), each able to say
//!   why a node was refused; then spread (fewest tasks of this service, then
//!   fewest tasks overall), after spreading over a label's values when asked.
//! - History: a slot keeps its `task_history_limit` newest ended tasks (the
//!   cluster's setting, 5 unless `swarm update --task-history-limit` said).
//! - Dependencies (`ServiceSpec.depends_on`): a service with no running
//!   task of its own whose dependency is not met is held (`held`): its
//!   pending tasks are not placed, and say what they wait for.

mod reaper;
mod scheduler;
mod slot;
mod update;

use std::collections::HashMap;

use shoal_proto::model::{Availability, Node, NodeState};
use shoal_proto::service::{Condition, Task, TaskSpec, TaskState};

use crate::constraint::constraint_holds;
use crate::state::{State, TaskChange};
use reaper::reap;
use scheduler::schedule;
use slot::Orchestrator;

/// The changes one pass makes at `now_ms` (the leader's clock); `new_id` names new tasks.
pub fn plan(state: &State, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Vec<TaskChange> {
    let mut out = Vec::new();
    // Each service's tasks, found in one pass over all of them.
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in state.tasks.values() {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let held = held(state);
    for svc in state.services.values() {
        let tasks = by_service.get(svc.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let held = held.get(&svc.id).map(String::as_str);
        Orchestrator { state, svc, tasks, now_ms, held, out: &mut out, new_id }.run();
    }
    // Tasks of removed services go: at once when they never reached a node or their node is gone.
    for t in state.tasks.values().filter(|t| !state.services.contains_key(&t.service_id)) {
        if t.desired < TaskState::Remove {
            out.push(TaskChange::Desired { id: t.id.clone(), desired: TaskState::Remove });
        }
        if t.status.state.is_terminal() || !with_its_node(state, t) {
            out.push(TaskChange::Delete { id: t.id.clone() });
        }
    }
    schedule(state, now_ms, &held, &mut out);
    reap(state, &mut out);
    out
}

/// The services whose tasks are held, by id, with what they wait for
/// (`waiting for service db to be healthy`): those with dependencies and no
/// running task of their own, one of whose dependencies is not met (in the
/// spec's order, the first). A dependency is met by a task of it that was
/// started (`starting` or `running`: its container is up, healthy or not)
/// or, for `healthy`, by a running one (with a health check, running means
/// it passed). Once a service runs a task it is not held again until it
/// runs none (a whole-stack restart gates it anew).
pub fn held(state: &State) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if state.services.values().all(|s| s.spec.depends_on.is_empty()) {
        return out;
    }
    // (started, running) per service id.
    let mut up: HashMap<&str, (bool, bool)> = HashMap::new();
    for t in state.tasks.values() {
        let u = up.entry(t.service_id.as_str()).or_default();
        u.0 |= matches!(t.status.state, TaskState::Starting | TaskState::Running);
        u.1 |= t.status.state == TaskState::Running;
    }
    let by_name: HashMap<&str, &str> = state.services.values().map(|s| (s.spec.name.as_str(), s.id.as_str())).collect();
    for svc in state.services.values().filter(|s| !s.spec.depends_on.is_empty()) {
        if up.get(svc.id.as_str()).is_some_and(|u| u.1) {
            continue;
        }
        let unmet = svc.spec.depends_on.iter().find(|d| {
            let (started, running) =
                by_name.get(d.service.as_str()).and_then(|id| up.get(id)).copied().unwrap_or_default();
            match d.condition {
                Condition::Started => !started,
                Condition::Healthy => !running,
            }
        });
        if let Some(d) = unmet {
            out.insert(svc.id.clone(), d.waiting());
        }
    }
    out
}

pub(super) fn node_up(state: &State, id: &str) -> bool {
    state.nodes.get(id).is_some_and(|n| n.status.state == NodeState::Ready)
}

/// Whether a node has the task to run or stop: it was placed and sent
/// (assigned or later; a global task held pending for its dependencies is
/// on its node but never sent) and that node is up. A task no node has
/// ends with no report to wait for.
pub(super) fn with_its_node(state: &State, t: &Task) -> bool {
    t.status.state >= TaskState::Assigned && node_up(state, &t.node_id)
}

/// Why `node` cannot take a task of `spec` by itself (resources aside).
pub(super) fn refusal(node: &Node, spec: &TaskSpec) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::scheduler::{RECENT_FAILURE_MS, RECENT_FAILURES};
    use super::*;
    use crate::constraint::valid_constraint;
    use crate::state::{Command, Request};
    use shoal_proto::model::{Meta, NodeDescription, NodeSpec, NodeStatus, Role};
    use shoal_proto::service::{
        Mode, PublishedPort, RestartCondition, ServiceSpec, TaskStatus, UpdateOrder, UpdateState,
    };

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
            ingress: None,
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

        /// An allocated ingress network, as `swarm init` and the allocator leave it.
        fn ingress(&mut self) {
            let sub: shoal_proto::net::Subnet = "10.255.0.0/16".parse().expect("subnet");
            let gateway = sub.nth(1).expect("gateway");
            let alloc = shoal_proto::network::NetworkAlloc {
                vni: 4096,
                subnet: sub,
                gateway,
                range: sub,
                mtu: 1450,
                reserved: vec![],
            };
            let spec =
                shoal_proto::network::NetworkSpec { name: "ingress".into(), ingress: true, ..Default::default() };
            self.apply(Command::CreateNetwork { id: "ingress".into(), spec });
            let changes = vec![crate::networks::AllocChange::Network { id: "ingress".into(), alloc }];
            self.apply(Command::Allocate { changes });
        }

        /// One allocator pass, applied.
        fn allocate(&mut self) {
            let changes = crate::allocator::plan(&self.state);
            self.apply(Command::Allocate { changes });
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

        /// Every task made ready reports it prepared (as its node would).
        fn report_ready(&mut self) {
            self.report_each(|w, t| {
                (t.desired == TaskState::Ready && t.status.state == TaskState::Assigned && with_its_node(&w.state, t))
                    .then_some(TaskState::Ready)
            });
        }

        /// Every assigned task reports running (as its node would), and
        /// every task made ready, prepared.
        fn run_all(&mut self) {
            self.report_ready();
            self.report_each(|w, t| {
                if t.desired == TaskState::Running && matches!(t.status.state, TaskState::Assigned | TaskState::Ready) {
                    Some(TaskState::Running)
                } else {
                    // As the dispatcher: a node is sent only the tasks it has (`with_its_node`).
                    (t.desired >= TaskState::Shutdown && !t.status.state.is_terminal() && with_its_node(&w.state, t))
                        .then_some(TaskState::Shutdown)
                }
            });
        }

        /// Each node reports the state `to` gives its tasks, in one command.
        fn report_each(&mut self, to: impl Fn(&World, &Task) -> Option<TaskState>) {
            let mut by_node: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
            for t in self.state.tasks.values() {
                if let Some(state) = to(self, t) {
                    let status = TaskStatus { state, ..Default::default() };
                    by_node.entry(t.node_id.clone()).or_default().push((t.id.clone(), status));
                }
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
                .map(|t| &**t)
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
            s.task.ports =
                vec![PublishedPort { published: 8080, target: 80, protocol: "tcp".into(), ..Default::default() }];
        });
        w.settle();
        assert_eq!(w.running(&p).len(), 2);
        assert!(
            w.state
                .tasks
                .values()
                .any(|t| t.status.err == "no suitable node (host-mode port already in use on 2 nodes)")
        );
        // Ingress ports answer on every node through the mesh: they never limit placement.
        let mut w = World::new(&[("a", Role::Worker), ("b", Role::Worker)]);
        w.ingress();
        let p = w.service("mesh", |s| {
            s.replicas = 3;
            s.task.ports = vec![PublishedPort {
                published: 8080,
                target: 80,
                mode: shoal_proto::service::PublishMode::Ingress,
                ..Default::default()
            }];
        });
        w.settle();
        assert!(w.running(&p).is_empty(), "waiting for their ingress addresses");
        w.allocate();
        w.settle();
        assert_eq!(w.running(&p).len(), 3);
        assert!(w.state.tasks.values().all(|t| t.networks.len() == 1 && t.networks[0].addr.is_some()));
    }

    #[test]
    fn a_cpu_limit_above_every_node_leaves_the_task_pending_and_says_why() {
        let mut w = five();
        let big = w.service("big", |s| {
            s.replicas = 2;
            s.task.limit_nano_cpus = 4_000_000_000;
        });
        w.settle();
        let tasks: Vec<&Task> = w.state.tasks.values().filter(|t| t.service_id == big).map(|t| &**t).collect();
        assert_eq!(tasks.len(), 2, "one task per slot, not one per rejection");
        for t in &tasks {
            assert!(t.node_id.is_empty() && t.status.state == TaskState::Pending, "{t:?}");
            assert_eq!(t.status.err, "no suitable node (insufficient CPUs for the limit on 5 nodes)");
        }
        // A node big enough takes them; one that did not say how many CPUs it has is taken to fit.
        w.state.nodes.get_mut("n4").unwrap().description.nano_cpus = 8_000_000_000;
        w.state.nodes.get_mut("n5").unwrap().description.nano_cpus = 0;
        w.settle();
        assert_eq!(w.per_node(&big), BTreeMap::from([("n4".to_string(), 1), ("n5".to_string(), 1)]));
    }

    #[test]
    fn a_task_is_placed_once_it_has_its_addresses_and_says_when_the_network_is_full() {
        use crate::networks::AllocChange;
        use shoal_proto::network::{NetworkAlloc, NetworkAttachmentSpec, NetworkSpec};
        let mut w = five();
        w.apply(Command::CreateNetwork {
            id: "app".into(),
            spec: NetworkSpec { name: "app".into(), ..Default::default() },
        });
        let subnet: shoal_proto::net::Subnet = "10.0.3.0/29".parse().unwrap();
        let alloc = NetworkAlloc {
            vni: 4097,
            subnet,
            gateway: subnet.nth(1).unwrap(),
            range: subnet,
            mtu: 1450,
            reserved: vec![],
        };
        w.apply(Command::Allocate { changes: vec![AllocChange::Network { id: "app".into(), alloc }] });
        let web = w.service("web", |s| {
            s.replicas = 6;
            s.task.networks = vec![NetworkAttachmentSpec { target: "app".into(), aliases: vec![] }];
        });
        // The orchestrator's first pass makes the tasks but places none: no address yet.
        w.pass();
        let tasks = || w.state.tasks.values().filter(|t| t.service_id == web);
        assert_eq!(tasks().count(), 6);
        assert!(tasks().all(|t| t.node_id.is_empty() && t.status.err.is_empty()), "waiting says nothing");
        for _ in 0..5 {
            let changes = crate::allocator::plan(&w.state);
            if !changes.is_empty() {
                w.apply(Command::Allocate { changes });
            }
            w.pass();
            w.run_all();
        }
        // A /29 has five addresses to hand out: the VIP and four tasks.
        assert_eq!(w.running(&web).len(), 4);
        let waiting: Vec<&Task> =
            w.state.tasks.values().filter(|t| t.service_id == web && t.node_id.is_empty()).map(|t| &**t).collect();
        assert_eq!(waiting.len(), 2);
        for t in waiting {
            assert_eq!(t.status.err, "no free address on network app (10.0.3.0/29)");
        }
    }

    #[test]
    fn macvlan_tasks_go_only_to_nodes_with_the_parent_and_say_when_none_has_it() {
        use shoal_proto::network::{Driver, IpamSpec, NetworkAttachmentSpec, NetworkSpec, parent_label};
        let mut w = five();
        let ipam = IpamSpec { subnet: Some("10.98.0.0/24".parse().unwrap()), ..Default::default() };
        let spec = NetworkSpec {
            name: "lan".into(),
            driver: Driver::Macvlan,
            ipam,
            parent: Some("eth1".into()),
            ..Default::default()
        };
        w.apply(Command::CreateNetwork { id: "lan".into(), spec });
        let subnet: shoal_proto::net::Subnet = "10.98.0.0/24".parse().unwrap();
        let gateway = subnet.nth(1).unwrap();
        let alloc =
            shoal_proto::network::NetworkAlloc { vni: 0, subnet, gateway, range: subnet, mtu: 1500, reserved: vec![] };
        w.apply(Command::Allocate { changes: vec![crate::networks::AllocChange::Network { id: "lan".into(), alloc }] });
        let web = w.service("web", |s| {
            s.replicas = 7;
            s.task.max_replicas_per_node = 2;
            s.task.networks = vec![NetworkAttachmentSpec { target: "lan".into(), aliases: vec![] }];
        });
        let settle = |w: &mut World| {
            for _ in 0..10 {
                w.pass();
                w.allocate();
                w.pass();
                w.run_all();
            }
        };
        settle(&mut w);
        let tasks: Vec<&Task> = w.state.tasks.values().filter(|t| t.service_id == web).map(|t| &**t).collect();
        assert_eq!(tasks.len(), 7);
        for t in tasks {
            assert!(t.node_id.is_empty() && t.networks[0].addr.is_some(), "{t:?}");
            assert_eq!(t.status.err, "no parent interface eth1 on any node for network lan");
        }
        // A VLAN sub-interface as the parent (Docker would make it): what to do.
        let mut vlan = w.state.networks["lan"].clone();
        vlan.spec.parent = Some("eth1.10".into());
        w.state.networks.insert("lan".into(), vlan);
        settle(&mut w);
        let t = w.state.tasks.values().find(|t| t.service_id == web).expect("a task");
        assert_eq!(
            t.status.err,
            "no parent interface eth1.10 on any node for network lan: Docker makes VLAN sub-interfaces, Shoal \
             does not: make eth1.10 on each node (ip link add link eth1 name eth1.10 type vlan id 10, and keep it \
             across reboots)"
        );
        w.state.networks.get_mut("lan").unwrap().spec.parent = Some("eth1".into());
        // n2 and n4 have eth1; n5 names its parent with the label, and has
        // it; n1's label names one it lacks; n3 has none.
        let has = |w: &mut World, node: &str, iface: &str| {
            let n = w.state.nodes.get_mut(node).unwrap();
            n.description.net.interfaces.insert(iface.into(), vec![]);
        };
        has(&mut w, "n2", "eth1");
        has(&mut w, "n4", "eth1");
        has(&mut w, "n5", "ens5");
        has(&mut w, "n1", "eth1");
        w.state.nodes.get_mut("n5").unwrap().spec.labels.insert(parent_label("lan"), "ens5".into());
        w.state.nodes.get_mut("n1").unwrap().spec.labels.insert(parent_label("lan"), "eth9".into());
        settle(&mut w);
        let on = w.per_node(&web);
        assert_eq!(on, BTreeMap::from([("n2".into(), 2), ("n4".into(), 2), ("n5".into(), 2)]));
        // The seventh says why each node refused it.
        let waiting: Vec<&Task> =
            w.state.tasks.values().filter(|t| t.service_id == web && t.node_id.is_empty()).map(|t| &**t).collect();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            waiting[0].status.err,
            "no suitable node (max replicas per node reached on 3 nodes; no parent interface eth1 for network lan on 1 node; no parent interface eth9 for network lan on 1 node)"
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
        // stop-first: the old task goes before its replacement runs; the
        // replacement is made at once, ready (its node prepares it meanwhile).
        let mut spec = w.state.services[&web].spec.clone();
        spec.update.order = UpdateOrder::StopFirst;
        spec.task.env = vec!["V=3".into()];
        w.apply(Command::UpdateService { id: web.clone(), spec, rollback: false, replace_auth: false, auth: None });
        let changes = w.pass();
        assert_eq!(changes.iter().filter(|c| matches!(c, TaskChange::Desired { .. })).count(), 2);
        let ready = w.ready(&web);
        assert_eq!(ready.len(), 2, "{ready:?}");
        assert!(
            ready.iter().all(|t| !t.node_id.is_empty() && t.status.state == TaskState::Assigned),
            "placed: {ready:?}"
        );
        let ready: std::collections::BTreeSet<String> = ready.iter().map(|t| t.id.clone()).collect();
        // Their nodes prepare them; while the old two take their time to stop,
        // the four are the batch in flight, and the new two wait to run.
        w.report_ready();
        assert!(w.pass().is_empty(), "no other task stops, none runs while the batch's are stopping");
        w.settle();
        assert_eq!(w.running(&web).len(), 4);
        let v3: std::collections::BTreeSet<String> =
            w.running(&web).iter().filter(|t| t.spec.env.contains(&"V=3".to_string())).map(|t| t.id.clone()).collect();
        assert!(v3.len() == 4 && ready.is_subset(&v3), "the ready ones run: {v3:?} {ready:?}");
        let made = w.tasks_of(&web).into_iter().filter(|t| t.spec.env.contains(&"V=3".to_string())).count();
        assert_eq!(made, 4, "one replacement per slot");
    }

    #[test]
    fn a_stop_first_replacement_waits_ready_and_gives_way_to_a_newer_spec() {
        let mut w = five();
        let web = w.service("web", |s| s.replicas = 1);
        w.settle();
        let old = w.running(&web)[0].id.clone();
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        w.pass();
        let [v2] = w.ready(&web).try_into().expect("one replacement made ready");
        assert_eq!(w.state.tasks[&old].desired, TaskState::Shutdown);
        w.report_ready();
        assert!(w.pass().is_empty(), "it does not run while the old one stops");
        // Another update before the old one has stopped: the ready one is
        // not the slot's next task any more, and nothing new runs yet.
        w.update(&web, |s| s.task.env = vec!["V=3".into()]);
        let changes = w.pass();
        assert!(
            changes.contains(&TaskChange::Desired { id: v2.id.clone(), desired: TaskState::Shutdown }),
            "{changes:?}"
        );
        assert!(!changes.iter().any(|c| matches!(c, TaskChange::Create(_))), "{changes:?}");
        w.settle();
        let running = w.running(&web);
        assert!(running.len() == 1 && running[0].spec.env == ["V=3"], "{running:?}");
        assert_eq!(w.state.tasks[&v2.id].status.state, TaskState::Shutdown);
        // A ready replacement whose node went down is orphaned, and another takes its place.
        w.update(&web, |s| s.task.env = vec!["V=4".into()]);
        w.pass();
        let [v4] = w.ready(&web).try_into().expect("one replacement made ready");
        w.state.nodes.get_mut(&v4.node_id).expect("its node").status.state = NodeState::Down;
        w.settle();
        assert_eq!(w.state.tasks[&v4.id].status.state, TaskState::Orphaned);
        let running = w.running(&web);
        assert!(running.len() == 1 && running[0].spec.env == ["V=4"] && running[0].id != v4.id, "{running:?}");
    }

    #[test]
    fn a_ready_replacement_in_a_slot_scaled_away_is_stopped() {
        let mut w = five();
        let web = w.service("web", |s| {
            s.replicas = 2;
            s.update.parallelism = 0;
        });
        w.settle();
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        w.pass();
        w.report_ready();
        let ready = w.ready(&web);
        assert_eq!(ready.len(), 2, "{ready:?}");
        w.update(&web, |s| s.replicas = 1);
        let changes = w.pass();
        let gone = ready.iter().find(|t| t.slot == 2).expect("slot 2's");
        assert!(
            changes.contains(&TaskChange::Desired { id: gone.id.clone(), desired: TaskState::Shutdown }),
            "{changes:?}"
        );
        w.settle();
        let running = w.running(&web);
        assert!(running.len() == 1 && running[0].slot == 1, "{running:?}");
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
        assert_eq!(ended as u64, shoal_proto::model::TASK_HISTORY);
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

    fn on(service: &str, condition: shoal_proto::service::Condition) -> shoal_proto::service::Dependency {
        shoal_proto::service::Dependency { service: service.into(), condition }
    }

    impl World {
        /// The node of `task` reports it in `state`.
        fn report(&mut self, task: &str, state: TaskState) {
            let node_id = self.state.tasks[task].node_id.clone();
            let updates = vec![(task.to_string(), TaskStatus { state, ..Default::default() })];
            self.apply(Command::TaskStatus { node_id, updates });
        }

        /// The tasks of `svc` made ready, not yet to run.
        fn ready(&self, svc: &str) -> Vec<Task> {
            self.tasks_of(svc).into_iter().filter(|t| t.desired == TaskState::Ready).collect()
        }

        fn tasks_of(&self, svc: &str) -> Vec<Task> {
            self.state.tasks.values().filter(|t| t.service_id == svc).map(|t| Task::clone(t)).collect()
        }
    }

    #[test]
    fn a_service_is_held_while_it_runs_nothing_and_a_dependency_is_not_met() {
        use shoal_proto::service::Condition::{Healthy, Started};
        // (condition, the dependency's task, the service's own task) → what it waits for.
        let table: &[(_, Option<TaskState>, Option<TaskState>, Option<&str>)] = &[
            (Healthy, None, None, Some("waiting for service db to be healthy")),
            (Healthy, Some(TaskState::Assigned), None, Some("waiting for service db to be healthy")),
            (Healthy, Some(TaskState::Starting), None, Some("waiting for service db to be healthy")),
            (Healthy, Some(TaskState::Running), None, None),
            (Healthy, Some(TaskState::Failed), None, Some("waiting for service db to be healthy")),
            (Started, None, Some(TaskState::Pending), Some("waiting for service db to start")),
            (Started, Some(TaskState::Preparing), None, Some("waiting for service db to start")),
            (Started, Some(TaskState::Starting), None, None),
            (Started, Some(TaskState::Running), None, None),
            // Running already: not held again when the dependency goes.
            (Healthy, None, Some(TaskState::Running), None),
            (Healthy, Some(TaskState::Failed), Some(TaskState::Running), None),
            // Its own tasks ended (a whole-stack restart): held again.
            (Healthy, Some(TaskState::Starting), Some(TaskState::Failed), Some("waiting for service db to be healthy")),
        ];
        for (condition, dep, own, want) in table {
            let mut state = State::default();
            for (id, name) in [("s-db", "db"), ("s-web", "web")] {
                let mut svc = shoal_proto::service::Service { id: id.into(), ..Default::default() };
                svc.spec.name = name.into();
                state.services.insert(id.into(), svc);
            }
            state.services.get_mut("s-web").expect("web").spec.depends_on = vec![on("db", *condition)];
            for (svc, st) in [("s-db", dep), ("s-web", own)] {
                if let Some(st) = st {
                    let t = Task {
                        id: format!("t-{svc}"),
                        service_id: svc.to_string(),
                        status: TaskStatus { state: *st, ..Default::default() },
                        ..Default::default()
                    };
                    state.tasks.insert(t.id.clone(), t.into());
                }
            }
            let held = held(&state);
            assert_eq!(held.get("s-web").map(String::as_str), *want, "{condition:?} db {dep:?} web {own:?}");
            assert!(!held.contains_key("s-db"));
        }
    }

    #[test]
    fn held_tasks_wait_pending_and_are_placed_once_the_dependency_is_healthy() {
        use shoal_proto::service::Condition::{Healthy, Started};
        let mut w = five();
        let db = w.service("db", |_| {});
        let web = w.service("web", |s| {
            s.replicas = 2;
            s.depends_on = vec![on("db", Healthy)];
        });
        let api = w.service("api", |s| s.depends_on = vec![on("db", Started)]);
        w.pass();
        let waiting = |w: &World, svc: &str| -> Vec<(TaskState, String, bool)> {
            w.tasks_of(svc).iter().map(|t| (t.status.state, t.status.err.clone(), t.node_id.is_empty())).collect()
        };
        let held = |why: &str| (TaskState::Pending, why.to_string(), true);
        assert_eq!(waiting(&w, &web), vec![held("waiting for service db to be healthy"); 2]);
        assert_eq!(waiting(&w, &api), vec![held("waiting for service db to start")]);
        let entries = crate::listing::service_entries(&w.state, Some(&web));
        assert_eq!(entries[0].waiting, "waiting for service db to be healthy");
        // Its container started: `started` is met, `healthy` not yet.
        let db1 = w.tasks_of(&db)[0].id.clone();
        assert!(!w.state.tasks[&db1].node_id.is_empty(), "the dependency itself is placed");
        w.report(&db1, TaskState::Starting);
        w.pass();
        assert_eq!(waiting(&w, &web), vec![held("waiting for service db to be healthy"); 2]);
        assert!(w.tasks_of(&api).iter().all(|t| t.status.state == TaskState::Assigned));
        // Healthy (running, its check passed): web's tasks are placed.
        w.report(&db1, TaskState::Running);
        w.pass();
        assert!(w.tasks_of(&web).iter().all(|t| t.status.state == TaskState::Assigned && t.status.err.is_empty()));
        assert!(crate::listing::service_entries(&w.state, Some(&web))[0].waiting.is_empty());
        w.settle();
        // db fails; a web task fails too: its replacement starts at once (web runs).
        w.report(&db1, TaskState::Failed);
        let web1 = w.running(&web)[0].id.clone();
        w.report(&web1, TaskState::Failed);
        w.pass();
        let fresh: Vec<Task> = w.tasks_of(&web).into_iter().filter(|t| t.status.state == TaskState::Assigned).collect();
        assert_eq!(fresh.len(), 1, "the replacement is placed: {:?}", waiting(&w, &web));
        // A whole-stack restart: nothing of web runs, db is not healthy yet: held again.
        for t in w.tasks_of(&web).iter().chain(w.tasks_of(&db).iter()) {
            if !t.status.state.is_terminal() && !t.node_id.is_empty() {
                w.report(&t.id, TaskState::Failed);
            }
        }
        w.skew += 60_000; // past the restart back-off
        w.pass();
        w.pass();
        let live: Vec<(TaskState, String, bool)> = w
            .tasks_of(&web)
            .iter()
            .filter(|t| !t.status.state.is_terminal())
            .map(|t| (t.status.state, t.status.err.clone(), t.node_id.is_empty()))
            .collect();
        assert_eq!(live, vec![held("waiting for service db to be healthy"); 2]);
    }

    #[test]
    fn a_held_service_is_updated_whole_since_nothing_of_it_runs() {
        use shoal_proto::service::Condition::Healthy;
        let mut w = five();
        w.service("db", |_| {});
        let web = w.service("web", |s| {
            s.replicas = 3;
            s.update.parallelism = 1;
            s.depends_on = vec![on("db", Healthy)];
        });
        w.pass();
        w.update(&web, |s| s.task.env = vec!["V=2".into()]);
        let v = w.state.services[&web].spec_version;
        w.pass();
        w.pass();
        let mut live: Vec<(u64, u64)> = w
            .tasks_of(&web)
            .iter()
            .filter(|t| t.desired == TaskState::Running)
            .map(|t| (t.slot, t.spec_version))
            .collect();
        live.sort();
        assert_eq!(live, vec![(1, v), (2, v), (3, v)], "every slot has the new spec, none waits for another");
    }

    #[test]
    fn a_held_global_service_has_pending_tasks_on_its_nodes_that_no_node_is_sent() {
        use shoal_proto::service::Condition::Healthy;
        let mut w = World::new(&[("n1", Role::Manager), ("n2", Role::Worker)]);
        let db = w.service("db", |_| {});
        let agent = w.service("agent", |s| {
            s.mode = Mode::Global;
            s.depends_on = vec![on("db", Healthy)];
        });
        w.pass();
        let states = |w: &World| -> Vec<(String, TaskState, String)> {
            let mut v: Vec<_> =
                w.tasks_of(&agent).iter().map(|t| (t.node_id.clone(), t.status.state, t.status.err.clone())).collect();
            v.sort();
            v
        };
        let why = "waiting for service db to be healthy".to_string();
        assert_eq!(
            states(&w),
            vec![("n1".into(), TaskState::Pending, why.clone()), ("n2".into(), TaskState::Pending, why.clone())]
        );
        let db1 = w.tasks_of(&db)[0].id.clone();
        w.report(&db1, TaskState::Running);
        w.pass();
        assert!(states(&w).iter().all(|(_, s, _)| *s == TaskState::Assigned), "{:?}", states(&w));
        assert_eq!(w.tasks_of(&agent).len(), 2, "the same tasks, released");
    }

    /// A held global task is on its node but was never sent there: no node
    /// reports it stopped, so when it must go it goes without a report.
    #[test]
    fn a_held_global_task_that_must_go_does_not_wait_for_its_node() {
        use shoal_proto::service::Condition::Healthy;
        let mut w = World::new(&[("n1", Role::Manager), ("n2", Role::Worker)]);
        w.service("db", |_| {});
        let agent = w.service("agent", |s| {
            s.mode = Mode::Global;
            s.depends_on = vec![on("db", Healthy)];
        });
        // db's task is placed and never runs: agent stays held (no node reports anything).
        w.pass();
        w.pass();
        let held: Vec<Task> = w.tasks_of(&agent);
        assert!(held.len() == 2 && held.iter().all(|t| t.status.state == TaskState::Pending), "{held:?}");
        // Updated while held, again and again: the replaced tasks are history, reaped as any ended task.
        let history = shoal_proto::model::TASK_HISTORY;
        for i in 0..(history + 3) {
            w.update(&agent, |s| s.task.env = vec![format!("N={i}")]);
            w.pass();
            w.pass();
        }
        let tasks = w.tasks_of(&agent);
        for node in ["n1", "n2"] {
            let on: Vec<&Task> = tasks.iter().filter(|t| t.node_id == node).collect();
            assert_eq!(on.iter().filter(|t| t.desired == TaskState::Running).count(), 1, "{on:?}");
            assert!(on.len() as u64 <= 1 + history, "{node}'s history is bounded: {}", on.len());
        }
        assert!(tasks.len() as u64 >= 2 + history, "the updates replaced tasks: {}", tasks.len());
        // An unplaced task (no node fits) replaced by an update the same way.
        let web = w.service("web", |s| s.task.constraints = vec!["node.labels.zone==nowhere".into()]);
        w.pass();
        w.update(&web, |s| s.task.env = vec!["N=1".into()]);
        w.pass();
        w.pass();
        let live: Vec<Task> = w.tasks_of(&web).into_iter().filter(|t| t.desired == TaskState::Running).collect();
        assert!(live.len() == 1 && live[0].spec.env == ["N=1"], "{live:?}");
        // Removed while held: its tasks go, though their nodes are up.
        w.apply(Command::RemoveService { id: agent.clone() });
        w.pass();
        assert!(w.tasks_of(&agent).is_empty(), "{:?}", w.tasks_of(&agent));
    }
}
