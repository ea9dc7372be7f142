//! The scheduler (the only writer of `node_id`): places every pending task
//! on the node its filters allow and its spread prefers, or says why none.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_proto::model::{Node, NodeDescription};
use shoal_proto::service::{Task, TaskSpec, TaskState, TaskStatus};

use super::refusal;
use crate::state::{State, TaskChange};

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
        self.ports.extend(host_ports(&t.spec).map(|p| (p.published, p.protocol.clone())));
    }
}

/// The ports a task binds on its own node: its host-mode ones. Ingress
/// ports answer on every node through the routing mesh and never limit
/// placement (the API keeps them apart from host-mode ports).
fn host_ports(spec: &TaskSpec) -> impl Iterator<Item = &shoal_proto::service::PublishedPort> {
    spec.ports.iter().filter(|p| !p.is_ingress())
}

/// A node where tasks of one version of a service failed this many times
/// within `RECENT_FAILURE_MS` takes that version's new tasks only after all
/// other nodes: a bad node, not a bad image (which fails everywhere).
pub(super) const RECENT_FAILURES: usize = 5;
pub(super) const RECENT_FAILURE_MS: u64 = 5 * 60_000;

/// Places every pending task (existing, or created in this pass), but
/// those of a service its dependencies hold (`held`: what they wait for).
pub(super) fn schedule(state: &State, now_ms: u64, held: &HashMap<String, String>, out: &mut Vec<TaskChange>) {
    // Keyed like `state.nodes`, so both iterate in the same order.
    let mut loads: BTreeMap<&str, Load> = state.nodes.keys().map(|id| (id.as_str(), Load::default())).collect();
    // (service, spec version, node) where that version failed lately, and how often.
    let mut failures: HashMap<(&str, u64, &str), usize> = HashMap::new();
    for t in state.tasks.values().filter(|t| !t.node_id.is_empty()) {
        // To run, or ready to (a stop-first replacement): it holds its place.
        if t.desired <= TaskState::Running && !t.status.state.is_terminal() {
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
            l.ports.retain(|p| !host_ports(&t.spec).any(|q| q.published == p.0 && q.protocol == p.1));
        }
    }
    let existing: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| {
            t.node_id.is_empty()
                && t.desired <= TaskState::Running
                && t.status.state <= TaskState::Pending
                && !leaving.contains(&t.id.as_str())
        })
        .map(|t| &**t)
        .collect();
    let mut decisions: Vec<(String, Result<String, String>)> = Vec::new();
    let mut order: Vec<Task> = existing.into_iter().cloned().collect();
    order.extend(out.iter().filter_map(|c| {
        if let TaskChange::Create(t) = c { (t.node_id.is_empty()).then(|| (**t).clone()) } else { None }
    }));
    order.sort_by_key(|t| (t.service_id.clone(), t.slot));
    let mut full: HashMap<&str, bool> = HashMap::new();
    for t in &order {
        let decision = match (held.get(&t.service_id), unaddressed(state, &mut full, t)) {
            (Some(waiting), _) => Err(waiting.clone()),
            (None, Some(why)) => Err(why),
            (None, None) => place(state, &loads, &failed_on, t),
        };
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

/// Why a task cannot be placed yet for want of an address on one of its
/// networks, or `None` when every attachment has one. Waiting for the
/// allocator's next pass says nothing (an empty reason); a network that is
/// full, has no subnet, or is gone says so, in the task's status.
fn unaddressed<'a>(state: &'a State, full: &mut HashMap<&'a str, bool>, t: &'a Task) -> Option<String> {
    let missing = t.networks.iter().find(|n| n.addr.is_none())?;
    let id = missing.network.as_str();
    let Some(net) = state.networks.get(id) else { return Some(format!("network {id} not found")) };
    let name = &net.spec.name;
    let Some(alloc) = &net.alloc else { return Some(format!("network {name} has no subnet yet")) };
    if *full.entry(id).or_insert_with(|| state.network_full(id)) {
        return Some(format!("no free address on network {name} ({})", alloc.subnet));
    }
    Some(String::new())
}

/// The start of the reason a node cannot take a task on a macvlan network.
const PARENT_MISSING: &str = "no parent interface ";

/// The parent a node lacks for one of the task's macvlan networks, with
/// that network's name: the node's label `shoal.net.<network>.parent` or
/// the network's `-o parent`, not among the interfaces the node said it
/// has (`NodeNet.interfaces`).
fn missing_parent(state: &State, node: &Node, t: &Task) -> Option<(String, String)> {
    t.networks.iter().find_map(|a| {
        let net = state.networks.get(&a.network)?;
        let parent = net.spec.parent_on(&node.spec.labels)?;
        let has = node.description.net.interfaces.contains_key(parent);
        (!has).then(|| (parent.to_string(), net.spec.name.clone()))
    })
}

/// Whether the node has as many CPUs as the task's `--limit-cpu` (a node
/// refuses a limit above its CPUs, so such a task stays pending instead of
/// being rejected by every node in turn). A node that did not say how many
/// CPUs it has (0) is taken to fit.
fn cpu_limit_fits(spec: &TaskSpec, node: &NodeDescription) -> bool {
    spec.limit_nano_cpus == 0 || node.nano_cpus == 0 || spec.limit_nano_cpus <= node.nano_cpus
}

/// The node for `t`, or why there is none.
fn place(
    state: &State,
    loads: &BTreeMap<&str, Load>,
    failed_on: &HashSet<(&str, u64, &str)>,
    t: &Task,
) -> Result<String, String> {
    let spec = &t.spec;
    let mut why: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
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
            if !cpu_limit_fits(spec, &node.description) {
                Some("insufficient CPUs for the limit")
            } else if spec.reserve_memory > 0 && load.memory + spec.reserve_memory > node.description.memory_bytes {
                Some("insufficient memory")
            } else if spec.reserve_nano_cpus > 0 && load.cpus + spec.reserve_nano_cpus > node.description.nano_cpus {
                Some("insufficient CPU")
            } else if host_ports(spec)
                .any(|p| load.ports.iter().any(|(n, proto)| *n == p.published && *proto == p.protocol))
            {
                Some("host-mode port already in use")
            } else if spec.max_replicas_per_node > 0 && mine >= spec.max_replicas_per_node {
                Some("max replicas per node reached")
            } else {
                None
            }
        });
        let refused = refused.map(Cow::Borrowed).or_else(|| {
            missing_parent(state, node, t)
                .map(|(parent, net)| Cow::Owned(format!("{PARENT_MISSING}{parent} for network {net}")))
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
        // Every node lacks the parent of a macvlan network the task is on.
        None if why.len() == 1
            && why.values().all(|n| *n == state.nodes.len())
            && why.keys().all(|r| r.starts_with(PARENT_MISSING)) =>
        {
            let r = why.keys().next().map(|r| r.to_string()).unwrap_or_default();
            let (parent, net) = r[PARENT_MISSING.len()..].split_once(" for network ").unwrap_or((&r, ""));
            let hint = shoal_proto::network::vlan_hint(parent).map(|h| format!(": {h}")).unwrap_or_default();
            Err(format!("{PARENT_MISSING}{parent} on any node for network {net}{hint}"))
        }
        None => {
            let parts: Vec<String> =
                why.iter().map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" })).collect();
            Err(format!("no suitable node ({})", parts.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_limit_fits_a_node_with_as_many_cpus_or_an_unknown_count() {
        const CPU: u64 = 1_000_000_000;
        // (limit, node's CPUs, fits)
        let table = [
            (0, 2 * CPU, true),       // no limit
            (0, 0, true),             // no limit, unknown node
            (CPU / 2, 2 * CPU, true), // below
            (2 * CPU, 2 * CPU, true), // exactly all of them
            (2 * CPU + 1, 2 * CPU, false),
            (4 * CPU, 2 * CPU, false),
            (64 * CPU, 0, true), // the node did not say: taken to fit
        ];
        for (limit, cpus, fits) in table {
            let spec = TaskSpec { limit_nano_cpus: limit, ..Default::default() };
            let node = NodeDescription { nano_cpus: cpus, ..Default::default() };
            assert_eq!(cpu_limit_fits(&spec, &node), fits, "limit {limit} on a node with {cpus}");
        }
    }
}
