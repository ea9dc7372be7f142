//! The allocator's pure plan: what each cluster network without an
//! allocation gets (a VNI, a subnet, its gateway, range and MTU), chosen so
//! that nothing overlaps what is held, the ingress subnet, or any node's own
//! subnets. A macvlan network takes no VNI (`MACVLAN_VNI`) and the subnet
//! its spec names (the nodes' LAN); its addresses are handed out below like
//! an overlay's, from its one range, so no two nodes ever use the same. The leader writes each pass in `Command::Allocate` entries
//! (`leader::allocate`); `apply` refuses anything held by another owner, so a
//! plan from a stale view fails safe.
//!
//! Then addresses, held per `(network, address)` in the same index: a VIP
//! per (`vip`-mode service, network its spec lists), then an address per
//! attachment of every task that lives and lacks one, then one per
//! container attachment (`run --network`) that lacks one: the address it
//! asked for, or the next. Each network's
//! addresses are handed out in turn after the highest one held, so one just
//! freed is not given again at once. A task that cannot get one (the
//! network is full, or has no subnet yet) waits: the scheduler places it
//! only once all its attachments have an address, and says why not.
//!
//! The routing mesh: every node gets a leg on the ingress network (before
//! any task there, so legs come first), and every service publishing
//! ingress ports gets them in one change: the ports its spec names, and
//! for each left at 0 the lowest port of `ClusterNet.ingress_ports` that
//! no service publishes in either mode. Its tasks' ingress addresses are
//! task addresses like any other (the orchestrator gives them the
//! attachment).
//!
//! Quarantine: an orphaned task (its node went down while it ran) keeps
//! its addresses, since its container may still hold them there, until
//! `reclaim` frees them: when its node is ready again (the node's worker
//! removes containers its assignment set lacks), is removed, or has been
//! down for `ClusterNet.addr_reclaim_secs` (ten minutes by default). The
//! reaper keeps such a task until then.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use shoal_proto::model::NodeState;
use shoal_proto::net::Subnet;
use shoal_proto::network::{
    ClusterNet, DEFAULT_ENCRYPTED_MTU, DEFAULT_MACVLAN_MTU, DEFAULT_OVERLAY_MTU, Driver, EndpointMode, FIRST_VNI,
    INGRESS_VNI, MACVLAN_VNI, MAX_VNI, Network, NetworkAlloc,
};
use shoal_proto::service::{PublishedPort, TaskState};

use crate::networks::{AllocChange, claimed_subnet, next_free};
use crate::state::State;

/// The allocations the state lacks: networks in id order, then VIPs by
/// service id, then task addresses by task id, then container attachments'
/// by attachment id.
pub fn plan(state: &State) -> Vec<AllocChange> {
    let mut changes = plan_networks(state);
    plan_addrs(state, &mut changes);
    plan_ports(state, &mut changes);
    changes
}

/// The orphaned tasks whose addresses can be freed at `now_ms` (see the
/// module doc), by task id. An orphan's `status.at_ms` is when the
/// orchestrator found its node down.
pub fn reclaim(state: &State, now_ms: u64) -> Vec<AllocChange> {
    let period_ms = state.cluster.as_ref().map_or(600, |c| c.net.addr_reclaim_secs).saturating_mul(1000);
    let mut ids: Vec<&String> = state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Orphaned && crate::networks::holds_addrs(t))
        .filter(|t| match state.nodes.get(&t.node_id) {
            None => true,
            Some(n) => n.status.state == NodeState::Ready || now_ms.saturating_sub(t.status.at_ms) >= period_ms,
        })
        .map(|t| &t.id)
        .collect();
    ids.sort();
    ids.into_iter().map(|id| AllocChange::Release { id: id.clone() }).collect()
}

/// The ingress ports services lack, by service id (see the module doc).
/// Services that cannot have them (no ingress network, `dnsrr`) wait; the
/// API refuses such specs, so only an ingress network removed since leaves one waiting.
fn plan_ports(state: &State, out: &mut Vec<AllocChange>) {
    let Some(cluster) = &state.cluster else { return };
    if state.ingress_network().is_none() {
        return;
    }
    let (lo, hi) = cluster.net.ingress_ports;
    let mut busy: HashSet<(String, u16)> = HashSet::new();
    for s in state.services.values() {
        let named = s.spec.task.ports.iter().filter(|p| p.published != 0);
        busy.extend(named.chain(&s.ports).map(|p| (p.protocol.clone(), p.published)));
    }
    let waiting = state.services.values().filter(|s| {
        s.spec.endpoint_mode == EndpointMode::Vip
            && s.spec.task.ports.iter().any(|p| p.is_ingress())
            && !s.ports_allocated()
    });
    for s in waiting {
        // What it holds still matches its spec (apply prunes the rest): keep it, add the missing.
        let mut ports: Vec<PublishedPort> = s.ports.clone();
        let mut used = vec![false; ports.len()];
        let mut wanted: Vec<&PublishedPort> = s.spec.task.ports.iter().filter(|p| p.is_ingress()).collect();
        wanted.sort_by_key(|p| p.published == 0);
        let mut complete = true;
        for w in wanted {
            if let Some(i) = (0..ports.len()).find(|i| !used[*i] && w.allocated_as(&ports[*i])) {
                used[i] = true;
                continue;
            }
            let published = if w.published != 0 {
                Some(w.published)
            } else {
                (lo..=hi).find(|p| !busy.contains(&(w.protocol.clone(), *p)))
            };
            let Some(published) = published else {
                complete = false;
                break;
            };
            busy.insert((w.protocol.clone(), published));
            ports.push(PublishedPort { published, ..w.clone() });
            used.push(true);
        }
        if complete {
            let ports = ports.into_iter().zip(used).filter(|(_, u)| *u).map(|(p, _)| p).collect();
            out.push(AllocChange::Ports { service: s.id.clone(), ports });
        }
    }
}

/// The addresses the state lacks (networks allocated in this same pass wait
/// for the next: their allocation is not applied yet).
fn plan_addrs(state: &State, out: &mut Vec<AllocChange>) {
    if state.networks.is_empty() {
        return;
    }
    let mut pool = Pool { state, cursor: HashMap::new(), taken: HashSet::new(), full: HashSet::new() };
    if let Some(ingress) = state.ingress_network() {
        for n in state.nodes.values().filter(|n| n.ingress.as_ref().is_none_or(|l| l.network != ingress.id)) {
            if let Some(addr) = pool.take(&ingress.id) {
                out.push(AllocChange::NodeLeg { node: n.id.clone(), network: ingress.id.clone(), addr });
            }
        }
    }
    for s in state.services.values().filter(|s| s.spec.endpoint_mode == EndpointMode::Vip) {
        for a in &s.spec.task.networks {
            if s.vips.iter().any(|v| v.network == a.target) {
                continue;
            }
            if let Some(addr) = pool.take(&a.target) {
                out.push(AllocChange::Vip { service: s.id.clone(), network: a.target.clone(), addr });
            }
        }
    }
    let wanted = |t: &&std::sync::Arc<shoal_proto::service::Task>| {
        !t.status.state.is_terminal() && t.desired <= TaskState::Running
    };
    for t in state.tasks.values().filter(wanted) {
        for n in t.networks.iter().filter(|n| n.addr.is_none()) {
            if let Some(addr) = pool.take(&n.network) {
                out.push(AllocChange::TaskAddr { id: t.id.clone(), network: n.network.clone(), addr });
            }
        }
    }
    for a in state.attachments.values().filter(|a| a.addr.is_none()) {
        let addr = match a.want {
            Some(want) => pool.take_exact(&a.network, want),
            None => pool.take(&a.network),
        };
        if let Some(addr) = addr {
            out.push(AllocChange::AttachmentAddr { id: a.id.clone(), addr });
        }
    }
}

/// The addresses of one pass: what is held, what this pass took, and where
/// each network's turn is.
struct Pool<'a> {
    state: &'a State,
    cursor: HashMap<&'a str, Option<Ipv4Addr>>,
    taken: HashSet<(&'a str, Ipv4Addr)>,
    /// Networks found full in this pass (not searched again).
    full: HashSet<&'a str>,
}

impl<'a> Pool<'a> {
    /// `want` on an allocated network, if it is free (`apply` checks the range).
    fn take_exact(&mut self, net: &'a str, want: Ipv4Addr) -> Option<Ipv4Addr> {
        let alloc = self.state.networks.get(net)?.alloc.as_ref()?;
        let free = crate::networks::assignable(alloc, want)
            && self.state.held().addr(net, want).is_none()
            && self.taken.insert((net, want));
        free.then_some(want)
    }

    /// The next free address of an allocated network, if it has one.
    fn take(&mut self, net: &'a str) -> Option<Ipv4Addr> {
        if self.full.contains(net) {
            return None;
        }
        let alloc = self.state.networks.get(net)?.alloc.as_ref()?;
        let held = self.state.held();
        let after = *self.cursor.entry(net).or_insert_with(|| held.highest(net));
        let taken = &self.taken;
        match next_free(alloc, after, |ip| held.addr(net, ip).is_some() || taken.contains(&(net, ip))) {
            Some(ip) => {
                self.cursor.insert(net, Some(ip));
                self.taken.insert((net, ip));
                Some(ip)
            }
            None => {
                self.full.insert(net);
                None
            }
        }
    }
}

/// The network allocations the state lacks, in network id order. A network that
/// cannot be given a subnet (the pools are full) is left for a later pass.
fn plan_networks(state: &State) -> Vec<AllocChange> {
    let Some(cluster) = &state.cluster else { return Vec::new() };
    let mut vnis: BTreeSet<u32> = state.held().vnis().collect();
    // Everything a chosen subnet must not overlap (claimed ones are held).
    let mut taken: Vec<Subnet> = state.held().subnets().collect();
    taken.extend(state.nodes.values().flat_map(|n| n.description.net.subnets.iter().copied()));
    let mut changes = Vec::new();
    for n in state.networks.values().filter(|n| n.alloc.is_none()) {
        let Some(vni) = next_vni(n, &vnis) else { continue };
        let Some(subnet) = choose_subnet(n, &cluster.net, &taken) else { continue };
        let spec = &n.spec;
        let Some(gateway) = spec.ipam.gateway.or_else(|| subnet.nth(1)) else { continue };
        let default_mtu = match spec.driver {
            Driver::Macvlan => DEFAULT_MACVLAN_MTU,
            Driver::Overlay if spec.encrypted => DEFAULT_ENCRYPTED_MTU,
            Driver::Overlay => DEFAULT_OVERLAY_MTU,
        };
        let alloc = NetworkAlloc {
            vni,
            subnet,
            gateway,
            range: spec.ipam.ip_range.unwrap_or(subnet),
            mtu: spec.mtu.unwrap_or(default_mtu),
            reserved: spec.ipam.reserved(),
        };
        if vni != MACVLAN_VNI {
            vnis.insert(vni);
        }
        taken.push(subnet);
        changes.push(AllocChange::Network { id: n.id.clone(), alloc });
    }
    changes
}

/// Ingress takes 4096; every other overlay the lowest free VNI from 4097;
/// a macvlan network none (`MACVLAN_VNI`, held by no one).
fn next_vni(n: &Network, held: &BTreeSet<u32>) -> Option<u32> {
    if n.spec.driver == Driver::Macvlan {
        return Some(MACVLAN_VNI);
    }
    if n.spec.ingress {
        return (!held.contains(&INGRESS_VNI)).then_some(INGRESS_VNI);
    }
    (FIRST_VNI..=MAX_VNI).find(|v| !held.contains(v))
}

/// The subnet the spec asks for; for ingress, the cluster's ingress subnet;
/// otherwise the first carve of the default pools that overlaps nothing taken.
fn choose_subnet(n: &Network, net: &ClusterNet, taken: &[Subnet]) -> Option<Subnet> {
    if let Some(s) = claimed_subnet(n) {
        return Some(s);
    }
    let free = |s: &Subnet| !taken.iter().any(|t| t.overlaps(s));
    if n.spec.ingress {
        return Some(net.ingress_subnet).filter(free);
    }
    let ingress = net.ingress_subnet;
    net.default_pools.iter().flat_map(|p| p.pool.split(p.mask)).find(|s| free(s) && !s.overlaps(&ingress))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use shoal_proto::model::{Cluster, Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role, RootCa};
    use shoal_proto::network::{AddrPool, NetworkSpec};

    use shoal_proto::network::{NetworkAttachmentSpec, TaskNetwork};
    use shoal_proto::service::{ServiceSpec, Task, TaskSpec, TaskStatus};

    use super::*;
    use crate::networks::Owner;
    use crate::state::{Command, ObjKey, Request, Response, TaskChange};

    fn sub(s: &str) -> Subnet {
        s.parse().expect("subnet")
    }

    /// A cluster whose one node sits on the lab's 10.98.0.0/24.
    fn world(net: ClusterNet) -> State {
        let mut s = State::default();
        let cluster = Cluster {
            id: "c".into(),
            root_ca: RootCa { cert_pem: String::new(), key_pem: String::new() },
            worker_secret: String::new(),
            manager_secret: String::new(),
            node_cert_ttl_secs: 0,
            net,
            unlock_key: String::new(),
            settings: Default::default(),
            meta: Meta::default(),
        };
        let mut node = Node {
            id: "n1".into(),
            raft_id: 1,
            spec: NodeSpec { role: Role::Manager, availability: Default::default(), labels: Default::default() },
            description: NodeDescription { hostname: "lab1".into(), ..Default::default() },
            status: NodeStatus::default(),
            meta: Meta::default(),
            ingress: None,
        };
        node.description.net.subnets = vec![sub("10.98.0.0/24"), sub("10.0.1.0/24")];
        let (r, _) = s.apply(1, &Request { at_ms: 1, cmd: Command::Bootstrap { cluster, node } });
        assert_eq!(r, Response::Ok);
        s
    }

    fn apply(s: &mut State, index: u64, cmd: Command) -> Response {
        s.apply(index, &Request { at_ms: index, cmd }).0
    }

    fn create(s: &mut State, index: u64, id: &str, f: impl FnOnce(&mut NetworkSpec)) {
        let mut spec = NetworkSpec { name: id.into(), ..Default::default() };
        f(&mut spec);
        assert_eq!(apply(s, index, Command::CreateNetwork { id: id.into(), spec }), Response::Ok);
    }

    fn allocs(s: &State) -> Vec<(String, u32, String, String, u32)> {
        s.networks
            .values()
            .filter_map(|n| {
                let a = n.alloc.as_ref()?;
                Some((n.spec.name.clone(), a.vni, a.subnet.to_string(), a.gateway.to_string(), a.mtu))
            })
            .collect()
    }

    #[test]
    fn networks_get_vnis_and_subnets_around_everything_held() {
        let mut s = world(ClusterNet::default());
        create(&mut s, 2, "a", |_| {});
        create(&mut s, 3, "b", |sp| sp.encrypted = true);
        create(&mut s, 4, "c", |sp| {
            sp.ipam.subnet = Some(sub("10.0.0.0/24"));
            sp.mtu = Some(1400);
        });
        create(&mut s, 5, "ingress", |sp| sp.ingress = true);
        let changes = plan(&s);
        assert_eq!(changes.len(), 4);
        assert_eq!(apply(&mut s, 6, Command::Allocate { changes }), Response::Ok);
        assert_eq!(
            allocs(&s),
            vec![
                ("a".into(), 4097, "10.0.2.0/24".into(), "10.0.2.1".into(), 1450), // 10.0.0/24 is c's, 10.0.1/24 the node's
                ("b".into(), 4098, "10.0.3.0/24".into(), "10.0.3.1".into(), 1420), // WireGuard's 80 bytes
                ("c".into(), 4099, "10.0.0.0/24".into(), "10.0.0.1".into(), 1400),
                ("ingress".into(), 4096, "10.255.0.0/16".into(), "10.255.0.1".into(), 1450),
            ]
        );
        // Then the node's leg on the ingress network.
        let legs = plan(&s);
        let leg =
            AllocChange::NodeLeg { node: "n1".into(), network: "ingress".into(), addr: "10.255.0.2".parse().unwrap() };
        assert_eq!(legs, vec![leg]);
        apply(&mut s, 7, Command::Allocate { changes: legs });
        assert!(plan(&s).is_empty(), "nothing left to do");
    }

    #[test]
    fn a_macvlan_network_takes_its_lan_no_vni_and_the_lans_mtu() {
        let mut s = world(ClusterNet::default());
        create(&mut s, 2, "lan", |sp| {
            sp.driver = Driver::Macvlan;
            sp.parent = Some("eth0".into());
            sp.ipam.subnet = Some(sub("10.98.0.0/24"));
            sp.ipam.gateway = Some("10.98.0.254".parse().expect("ip"));
            sp.ipam.ip_range = Some(sub("10.98.0.192/28"));
        });
        create(&mut s, 3, "app", |_| {});
        let changes = plan(&s);
        assert_eq!(apply(&mut s, 4, Command::Allocate { changes }), Response::Ok);
        assert_eq!(
            allocs(&s),
            vec![
                ("app".into(), FIRST_VNI, "10.0.0.0/24".into(), "10.0.0.1".into(), DEFAULT_OVERLAY_MTU),
                ("lan".into(), MACVLAN_VNI, "10.98.0.0/24".into(), "10.98.0.254".into(), DEFAULT_MACVLAN_MTU),
            ]
        );
        assert_eq!(s.networks["lan"].alloc.as_ref().map(|a| a.range), Some(sub("10.98.0.192/28")));
    }

    #[test]
    fn the_labs_subnet_inside_the_default_pool_is_skipped() {
        // A pool of /24s whose first carves the lab's node holds.
        let net = ClusterNet {
            default_pools: vec![AddrPool { pool: sub("10.98.0.0/23"), mask: 24 }],
            ..ClusterNet::default()
        };
        let mut s = world(net);
        create(&mut s, 2, "a", |_| {});
        create(&mut s, 3, "b", |_| {});
        let changes = plan(&s);
        apply(&mut s, 4, Command::Allocate { changes });
        assert_eq!(allocs(&s), vec![("a".into(), 4097, "10.98.1.0/24".into(), "10.98.1.1".into(), 1450)]);
        assert!(s.networks["b"].alloc.is_none(), "the pool is full: b waits");
        // In the default pool, a carve never overlaps the lab's subnet either.
        let mut s = world(ClusterNet::default());
        for i in 0..120 {
            create(&mut s, 2 + i, &format!("n{i}"), |_| {});
        }
        let changes = plan(&s);
        apply(&mut s, 200, Command::Allocate { changes });
        assert_eq!(s.networks.values().filter(|n| n.alloc.is_some()).count(), 120);
        let lab = sub("10.98.0.0/24");
        assert!(s.networks.values().all(|n| !n.alloc.as_ref().expect("alloc").subnet.overlaps(&lab)));
    }

    /// Random creates and removes, with leader changes: a fresh allocator
    /// (the plan has no memory) planning from a state that may be behind the
    /// one its entry is applied to. Never a VNI twice, never overlapping subnets.
    #[test]
    fn never_a_duplicate_vni_or_overlapping_subnets_over_random_runs() {
        let net = ClusterNet {
            default_pools: vec![AddrPool { pool: sub("10.0.0.0/20"), mask: 24 }],
            ingress_subnet: sub("10.0.15.0/24"),
            ..ClusterNet::default()
        };
        let mut refused = 0;
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = world(net.clone());
            let mut index = 2;
            let mut ids = 0u32;
            // A leader's view: the state as of some earlier index.
            let mut view = s.clone();
            for _ in 0..300 {
                index += 1;
                match rng.random_range(0..10) {
                    0..=3 => {
                        ids += 1;
                        let id = format!("n{ids}");
                        let mut spec = NetworkSpec { name: id.clone(), ..Default::default() };
                        if rng.random_bool(0.2) {
                            spec.ipam.subnet =
                                Some(Subnet::new([10, 0, rng.random_range(0..16), 0].into(), 24).expect("subnet"));
                        }
                        apply(&mut s, index, Command::CreateNetwork { id, spec });
                    }
                    4..=5 => {
                        if let Some(id) = s.networks.keys().nth(rng.random_range(0..s.networks.len().max(1))).cloned() {
                            apply(&mut s, index, Command::RemoveNetwork { id });
                        }
                    }
                    6 => view = s.clone(), // a new leader, up to date
                    _ => {
                        // The leader plans from its (possibly stale) view; the entry applies to the latest state.
                        let changes = plan(&view);
                        let planned = changes.len();
                        let (_, keys) = s.apply(index, &Request { at_ms: index, cmd: Command::Allocate { changes } });
                        refused += planned - keys.len();
                        if rng.random_bool(0.5) {
                            view = s.clone();
                        }
                    }
                }
                check(&s, seed);
            }
            // A leader with the latest state allocates whatever fits: all of it applies.
            let changes = plan(&s);
            apply(&mut s, index + 1, Command::Allocate { changes });
            check(&s, seed);
            assert!(plan(&s).is_empty(), "seed {seed}: a plan from the latest state all applies");
            // A network still waiting waits for a free carve, and there is none.
            if s.networks.values().any(|n| n.alloc.is_none()) {
                let mut blocked: Vec<Subnet> = s.held().subnets().collect();
                blocked.extend([sub("10.0.1.0/24"), sub("10.0.15.0/24")]);
                let free = sub("10.0.0.0/20").split(24).find(|c| !blocked.iter().any(|b| b.overlaps(c)));
                assert_eq!(free, None, "seed {seed}: a network waits while {free:?} is free");
            }
        }
        assert!(refused > 0, "stale plans were tried, and apply refused them");
    }

    /// A service on `nets` (by id) and its tasks `ids`, created and assigned to n1.
    fn service(s: &mut State, index: &mut u64, id: &str, nets: &[&str], mode: EndpointMode, tasks: &[&str]) {
        let spec = ServiceSpec {
            name: id.into(),
            endpoint_mode: mode,
            task: TaskSpec {
                image: "busybox".into(),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentSpec { target: n.to_string(), aliases: vec![] })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        *index += 1;
        assert_eq!(apply(s, *index, Command::CreateService { id: id.into(), spec, auth: None }), Response::Ok);
        let changes = tasks
            .iter()
            .map(|t| {
                TaskChange::Create(Box::new(Task {
                    id: t.to_string(),
                    service_id: id.into(),
                    desired: TaskState::Running,
                    networks: nets
                        .iter()
                        .map(|n| TaskNetwork { network: n.to_string(), ..Default::default() })
                        .collect(),
                    ..Default::default()
                }))
            })
            .collect();
        *index += 1;
        apply(s, *index, Command::Tasks { changes });
    }

    fn allocate(s: &mut State, index: &mut u64) -> Vec<AllocChange> {
        let changes = plan(s);
        *index += 1;
        apply(s, *index, Command::Allocate { changes: changes.clone() });
        changes
    }

    fn addr(s: &State, task: &str, net: &str) -> Option<String> {
        s.tasks[task].networks.iter().find(|n| n.network == net)?.addr.map(|a| a.to_string())
    }

    fn vips(s: &State, svc: &str) -> Vec<(String, String)> {
        s.services[svc].vips.iter().map(|v| (v.network.clone(), v.addr.to_string())).collect()
    }

    fn report(s: &mut State, index: &mut u64, task: &str, state: TaskState) {
        *index += 1;
        let status = TaskStatus { state, ..Default::default() };
        s.apply(
            *index,
            &Request {
                at_ms: 0,
                cmd: Command::TaskStatus { node_id: "n1".into(), updates: vec![(task.into(), status)] },
            },
        );
    }

    fn assign(s: &mut State, index: &mut u64, task: &str) {
        *index += 1;
        let changes = vec![TaskChange::Assign { id: task.into(), node_id: "n1".into() }];
        apply(s, *index, Command::Tasks { changes });
    }

    #[test]
    fn vips_then_task_addresses_after_the_highest_held() {
        let mut s = world(ClusterNet::default());
        let mut i = 1;
        create(&mut s, 2, "app", |sp| sp.ipam.subnet = Some(sub("10.0.3.0/29")));
        create(&mut s, 3, "db", |_| {});
        i += 2;
        // The networks first: their addresses wait for the next pass.
        service(&mut s, &mut i, "web", &["app", "db"], EndpointMode::Vip, &["t1", "t2"]);
        service(&mut s, &mut i, "rr", &["app"], EndpointMode::Dnsrr, &["t3"]);
        let first = allocate(&mut s, &mut i);
        assert!(first.iter().all(|c| matches!(c, AllocChange::Network { .. })), "{first:?}");
        allocate(&mut s, &mut i);
        // 10.0.3.0/29: .1 the gateway, .2-.6 to hand out, .7 broadcast.
        assert_eq!(vips(&s, "web"), vec![("app".into(), "10.0.3.2".into()), ("db".into(), "10.0.0.2".into())]);
        assert!(vips(&s, "rr").is_empty(), "dnsrr has no VIP");
        let got = |s: &State| ["t1", "t2", "t3"].map(|t| addr(s, t, "app"));
        assert_eq!(got(&s), [Some("10.0.3.3".into()), Some("10.0.3.4".into()), Some("10.0.3.5".into())]);
        assert_eq!(addr(&s, "t1", "db"), Some("10.0.0.3".into()));
        assert!(plan(&s).is_empty(), "nothing left to do");
        // t2 ends (its node says so): .4 is free, but the next task gets .6, then wraps to .4.
        assign(&mut s, &mut i, "t2");
        report(&mut s, &mut i, "t2", TaskState::Failed);
        assert_eq!(s.held().addr("app", "10.0.3.4".parse().unwrap()), None, "released");
        service(&mut s, &mut i, "more", &["app"], EndpointMode::Dnsrr, &["t4", "t5", "t6"]);
        allocate(&mut s, &mut i);
        assert_eq!(
            ["t4", "t5", "t6"].map(|t| addr(&s, t, "app")),
            [Some("10.0.3.6".into()), Some("10.0.3.4".into()), None],
            "the network is full"
        );
        assert!(s.network_full("app"));
        // An orphaned task (its node is down) keeps its address; a deleted one frees it.
        let orphan = TaskStatus { state: TaskState::Orphaned, ..Default::default() };
        i += 1;
        apply(&mut s, i, Command::Tasks { changes: vec![TaskChange::Status { id: "t1".into(), status: orphan }] });
        assert_eq!(s.held().addr("app", "10.0.3.3".parse().unwrap()), Some(&Owner::Task("t1".into())));
        assert!(plan(&s).is_empty(), "t6 waits: nothing is free");
        i += 1;
        apply(&mut s, i, Command::Tasks { changes: vec![TaskChange::Delete { id: "t1".into() }] });
        allocate(&mut s, &mut i);
        assert_eq!(addr(&s, "t6", "app"), Some("10.0.3.3".into()));
        // Dropping a network from the spec releases the service's VIP there.
        let mut spec = s.services["web"].spec.clone();
        spec.task.networks.retain(|n| n.target == "db");
        i += 1;
        let update =
            Command::UpdateService { id: "web".into(), spec, rollback: false, replace_auth: false, auth: None };
        assert_eq!(apply(&mut s, i, update), Response::Ok);
        assert_eq!(vips(&s, "web"), vec![("db".into(), "10.0.0.2".into())]);
        assert_eq!(s.held().addr("app", "10.0.3.2".parse().unwrap()), None);
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held());
    }

    /// `--aux-address`: reserved addresses are never handed out, to a VIP,
    /// a task or a container (nor taken by an entry that names one, or by
    /// `--ip`), and the network is full when only they are left.
    #[test]
    fn aux_addresses_are_never_handed_out() {
        let mut s = world(ClusterNet::default());
        let mut i = 2;
        let ip = |x: &str| -> Ipv4Addr { x.parse().unwrap() };
        create(&mut s, i, "app", |sp| {
            sp.attachable = true;
            sp.ipam.subnet = Some(sub("10.0.3.0/24"));
            sp.ipam.ip_range = Some(sub("10.0.3.128/29"));
            sp.ipam.aux_addresses = [("router", "10.0.3.129"), ("nas", "10.0.3.131"), ("printer", "10.0.3.5")]
                .map(|(k, v)| (k.into(), ip(v)))
                .into();
        });
        // An allocation that leaves out the spec's reserved addresses is refused.
        let alloc = |reserved: Vec<Ipv4Addr>| NetworkAlloc {
            vni: FIRST_VNI,
            subnet: sub("10.0.3.0/24"),
            gateway: ip("10.0.3.1"),
            range: sub("10.0.3.128/29"),
            mtu: DEFAULT_OVERLAY_MTU,
            reserved,
        };
        let forged = vec![AllocChange::Network { id: "app".into(), alloc: alloc(vec![ip("10.0.3.129")]) }];
        i += 1;
        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: forged } });
        assert!(keys.is_empty(), "the nas's address is missing");
        allocate(&mut s, &mut i);
        let reserved = vec![ip("10.0.3.5"), ip("10.0.3.129"), ip("10.0.3.131")];
        assert_eq!(s.networks["app"].alloc, Some(alloc(reserved)));
        // A forged entry naming a reserved address is refused.
        service(&mut s, &mut i, "web", &["app"], EndpointMode::Vip, &["t1", "t2", "t3", "t4"]);
        let forged = vec![AllocChange::TaskAddr { id: "t1".into(), network: "app".into(), addr: ip("10.0.3.129") }];
        i += 1;
        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: forged } });
        assert!(keys.is_empty(), "10.0.3.129 is the router's");
        // .128-.135 less the two reserved in it: six, for the VIP and four tasks, then one more.
        allocate(&mut s, &mut i);
        assert!(!s.network_full("app"), "one address is left (the printer's lies outside the range)");
        service(&mut s, &mut i, "more", &["app"], EndpointMode::Dnsrr, &["t5"]);
        allocate(&mut s, &mut i);
        let mut got: Vec<Ipv4Addr> =
            ["t1", "t2", "t3", "t4", "t5"].iter().filter_map(|t| addr(&s, t, "app")).map(|a| ip(&a)).collect();
        got.extend(s.services["web"].vips.iter().map(|v| v.addr));
        got.sort();
        let want: Vec<Ipv4Addr> = ["128", "130", "132", "133", "134", "135"].map(|x| ip(&format!("10.0.3.{x}"))).into();
        assert_eq!(got, want);
        assert!(s.network_full("app"), "only reserved addresses are left");
        // `run --ip` of a reserved address says whose it is.
        i += 1;
        let r = apply(&mut s, i, attach("app", "n1", "c1", Some("10.0.3.131")));
        let why = "address 10.0.3.131 is reserved on network app (--aux-address nas=10.0.3.131)";
        assert!(matches!(&r, Response::Rejected(w) if w.contains(why)), "{r:?}");
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held());
    }

    #[test]
    fn an_orphans_addresses_stay_quarantined_until_its_node_returns_is_removed_or_the_period_ends() {
        let mut s = world(ClusterNet { addr_reclaim_secs: 600, ..ClusterNet::default() });
        let mut i = 1;
        create(&mut s, 2, "app", |sp| sp.ipam.subnet = Some(sub("10.0.3.0/29")));
        i += 1;
        service(&mut s, &mut i, "web", &["app"], EndpointMode::Dnsrr, &["t1", "t2"]);
        allocate(&mut s, &mut i);
        allocate(&mut s, &mut i);
        for t in ["t1", "t2"] {
            assign(&mut s, &mut i, t);
        }
        let node = |s: &mut State, i: &mut u64, state: NodeState| {
            *i += 1;
            let status = NodeStatus { state, ..Default::default() };
            let updates = vec![crate::state::NodeStatusUpdate { id: "n1".into(), status, description: None }];
            apply(s, *i, Command::NodeStatus { updates });
        };
        let orphan = |s: &mut State, i: &mut u64, t: &str, at_ms: u64| {
            *i += 1;
            let status = TaskStatus { state: TaskState::Orphaned, ..Default::default() };
            let changes = vec![TaskChange::Status { id: t.into(), status }];
            s.apply(*i, &Request { at_ms, cmd: Command::Tasks { changes } });
        };
        node(&mut s, &mut i, NodeState::Down);
        orphan(&mut s, &mut i, "t1", 1_000_000);
        let held = |s: &State| s.held().addr("app", "10.0.3.2".parse().unwrap()).cloned();
        assert_eq!(held(&s), Some(Owner::Task("t1".into())));
        // Down for less than the period: kept, and the reaper keeps the task.
        assert!(reclaim(&s, 1_000_000 + 599_999).is_empty());
        // The period ends: freed, once.
        let changes = reclaim(&s, 1_000_000 + 600_000);
        assert_eq!(changes, vec![AllocChange::Release { id: "t1".into() }]);
        i += 1;
        apply(&mut s, i, Command::Allocate { changes: changes.clone() });
        assert_eq!(held(&s), None, "released");
        assert_eq!(addr(&s, "t1", "app"), None);
        assert!(reclaim(&s, u64::MAX).is_empty());
        i += 1;
        apply(&mut s, i, Command::Allocate { changes });
        assert_eq!(held(&s), None, "a second release changes nothing");
        // The node comes back: its orphans are freed at once.
        orphan(&mut s, &mut i, "t2", 2_000_000);
        assert!(reclaim(&s, 2_000_001).is_empty());
        node(&mut s, &mut i, NodeState::Ready);
        assert_eq!(reclaim(&s, 2_000_001), vec![AllocChange::Release { id: "t2".into() }]);
        // A removed node's orphans too.
        node(&mut s, &mut i, NodeState::Down);
        i += 1;
        apply(&mut s, i, Command::RemoveNode { id: "n1".into() });
        assert_eq!(reclaim(&s, 2_000_001), vec![AllocChange::Release { id: "t2".into() }]);
        // A task that is not orphaned is never released.
        let mut live = s.clone();
        live.task_mut("t2").expect("t2").status.state = TaskState::Running;
        assert!(reclaim(&live, u64::MAX).is_empty());
        i += 1;
        apply(&mut live, i, Command::Allocate { changes: vec![AllocChange::Release { id: "t2".into() }] });
        assert!(addr(&live, "t2", "app").is_some(), "apply refuses to release a live task's address");
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held());
    }

    fn ing(published: u16, target: u16, proto: &str) -> PublishedPort {
        PublishedPort {
            published,
            target,
            protocol: proto.into(),
            mode: shoal_proto::service::PublishMode::Ingress,
            client_ip: true,
        }
    }

    fn host(published: u16, target: u16) -> PublishedPort {
        PublishedPort { published, target, ..Default::default() }
    }

    /// A service publishing `ports`, with tasks made as the orchestrator makes them.
    fn publishing(s: &mut State, index: &mut u64, id: &str, ports: Vec<PublishedPort>, tasks: &[&str]) {
        let spec = ServiceSpec {
            name: id.into(),
            task: TaskSpec { image: "busybox".into(), ports, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(s.ports_problem(id, &spec), None);
        let nets = s.task_attachments(&spec);
        *index += 1;
        assert_eq!(apply(s, *index, Command::CreateService { id: id.into(), spec, auth: None }), Response::Ok);
        let changes = tasks
            .iter()
            .map(|t| {
                TaskChange::Create(Box::new(Task {
                    id: t.to_string(),
                    service_id: id.into(),
                    desired: TaskState::Running,
                    networks: nets
                        .iter()
                        .map(|n| TaskNetwork { network: n.target.clone(), ..Default::default() })
                        .collect(),
                    ..Default::default()
                }))
            })
            .collect();
        *index += 1;
        apply(s, *index, Command::Tasks { changes });
    }

    fn published(s: &State, svc: &str) -> Vec<String> {
        s.services[svc].ports.iter().map(|p| format!("{}/{}", p.published, p.protocol)).collect()
    }

    #[test]
    fn ingress_ports_and_legs_are_handed_out_once_and_released() {
        let mut s = world(ClusterNet::default());
        let mut i = 1;
        let spec = ServiceSpec {
            name: "early".into(),
            task: TaskSpec { image: "busybox".into(), ports: vec![ing(0, 80, "tcp")], ..Default::default() },
            ..Default::default()
        };
        assert!(s.ports_problem("", &spec).is_some_and(|w| w.contains("need the ingress network")));
        create(&mut s, 2, "ingress", |sp| sp.ingress = true);
        i += 1;
        allocate(&mut s, &mut i);
        // The node's leg first, then a service's ports and its tasks' ingress addresses.
        assert_eq!(allocate(&mut s, &mut i).len(), 1);
        let leg = s.nodes["n1"].ingress.clone().expect("a leg");
        assert_eq!((leg.network.as_str(), leg.addr.to_string()), ("ingress", "10.255.0.2".into()));
        publishing(&mut s, &mut i, "web", vec![ing(0, 80, "tcp"), ing(8080, 80, "tcp")], &["t1"]);
        publishing(&mut s, &mut i, "dns", vec![ing(0, 53, "udp"), ing(0, 53, "tcp")], &[]);
        publishing(&mut s, &mut i, "h", vec![host(30002, 80)], &["t2"]);
        assert!(s.tasks["t2"].networks.is_empty(), "host-mode ports need no ingress address");
        publishing(&mut s, &mut i, "more", vec![ing(0, 80, "tcp")], &[]);
        allocate(&mut s, &mut i);
        // By service id: dns, more, web; each protocol has its own ports.
        assert_eq!(published(&s, "dns"), ["30000/udp", "30000/tcp"]);
        assert_eq!(published(&s, "more"), ["30001/tcp"]);
        assert_eq!(published(&s, "web"), ["8080/tcp", "30003/tcp"], "30002 is h's host-mode port");
        assert!(s.services["h"].ports.is_empty());
        assert_eq!(addr(&s, "t1", "ingress"), Some("10.255.0.3".into()));
        assert!(plan(&s).is_empty(), "nothing left to do");
        assert_eq!(s.held().port("tcp", 30003), Some("web"));
        // What another service may not publish, and what it may.
        let clash = |ports: Vec<PublishedPort>| {
            let spec = ServiceSpec { task: TaskSpec { ports, ..Default::default() }, ..Default::default() };
            s.ports_problem("x", &spec)
        };
        let table: [(Vec<PublishedPort>, Option<&str>); 6] = [
            (vec![ing(8080, 81, "tcp")], Some("port 8080/tcp is already in use by service web as an ingress port")),
            (vec![ing(30000, 81, "tcp")], Some("port 30000/tcp is already in use by service dns")),
            (vec![host(30001, 81)], Some("in use by service more as an ingress port, which takes it on every node")),
            (vec![ing(30002, 81, "tcp")], Some("already published by service h in host mode")),
            (vec![host(30002, 81)], None),
            (vec![ing(8080, 81, "udp"), ing(0, 81, "tcp")], None),
        ];
        for (ports, want) in table {
            let got = clash(ports.clone());
            match want {
                None => assert_eq!(got, None, "{ports:?}"),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{ports:?}: {got:?}"),
            }
        }
        // A stale plan's port, held by another by now, is refused on its own.
        let mut spec = s.services["more"].spec.clone();
        spec.task.ports.push(ing(0, 81, "tcp"));
        i += 1;
        let update =
            Command::UpdateService { id: "more".into(), spec, rollback: false, replace_auth: false, auth: None };
        assert_eq!(apply(&mut s, i, update), Response::Ok);
        assert_eq!(published(&s, "more"), ["30001/tcp"], "an update keeps the ports it did not touch");
        let stale = vec![AllocChange::Ports {
            service: "more".into(),
            ports: vec![ing(30001, 80, "tcp"), ing(30003, 81, "tcp")],
        }];
        i += 1;
        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: stale } });
        assert!(keys.is_empty(), "30003/tcp is web's");
        allocate(&mut s, &mut i);
        assert_eq!(published(&s, "more"), ["30001/tcp", "30004/tcp"]);
        // Dropping a port from the spec releases it at once; removing the service releases all.
        let mut spec = s.services["web"].spec.clone();
        spec.task.ports.retain(|p| p.published == 0);
        i += 1;
        let update =
            Command::UpdateService { id: "web".into(), spec, rollback: false, replace_auth: false, auth: None };
        assert_eq!(apply(&mut s, i, update), Response::Ok);
        assert_eq!(published(&s, "web"), ["30003/tcp"]);
        assert_eq!(s.held().port("tcp", 8080), None);
        i += 1;
        assert_eq!(apply(&mut s, i, Command::RemoveService { id: "dns".into() }), Response::Ok);
        assert_eq!(s.held().port("udp", 30000), None);
        // The ingress network is in use while a service publishes ingress ports.
        assert!(s.network_user("ingress").is_some_and(|w| w.contains("which publishes ingress ports")));
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held());
        // A removed node's leg is free again.
        i += 1;
        assert_eq!(apply(&mut s, i, Command::RemoveNode { id: "n1".into() }), Response::Ok);
        assert_eq!(s.held().addr("ingress", leg.addr), None);
    }

    #[test]
    fn apply_refuses_addresses_held_or_outside_the_range_one_by_one() {
        let mut s = world(ClusterNet::default());
        let mut i = 1;
        create(&mut s, 2, "app", |sp| {
            sp.ipam.subnet = Some(sub("10.0.3.0/24"));
            sp.ipam.ip_range = Some(sub("10.0.3.128/25"));
        });
        i += 1;
        allocate(&mut s, &mut i);
        service(&mut s, &mut i, "web", &["app"], EndpointMode::Vip, &["t1", "t2", "t3"]);
        let ip = |x: &str| -> Ipv4Addr { x.parse().unwrap() };
        let ta = |t: &str, a: &str| AllocChange::TaskAddr { id: t.into(), network: "app".into(), addr: ip(a) };
        let batch = vec![
            ta("t1", "10.0.3.130"),
            ta("t2", "10.0.3.130"), // t1 just took it
            ta("t2", "10.0.3.5"),   // outside the range
            ta("t2", "10.0.3.255"), // the broadcast address
            ta("t2", "10.0.4.9"),   // outside the subnet
            ta("t1", "10.0.3.131"), // t1 has its address already
            AllocChange::TaskAddr { id: "t2".into(), network: "nope".into(), addr: ip("10.0.3.140") },
            ta("gone", "10.0.3.141"),
            AllocChange::Vip { service: "web".into(), network: "app".into(), addr: ip("10.0.3.130") }, // t1's
            AllocChange::Vip { service: "web".into(), network: "app".into(), addr: ip("10.0.3.129") },
            AllocChange::Vip { service: "web".into(), network: "app".into(), addr: ip("10.0.3.132") }, // has one
            ta("t2", "10.0.3.129"),                                                                    // the VIP
            ta("t2", "10.0.3.133"),
        ];
        i += 1;
        let (r, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: batch } });
        assert_eq!(r, Response::Ok);
        assert_eq!(keys, vec![ObjKey::Service("web".into()), ObjKey::Task("t1".into()), ObjKey::Task("t2".into())]);
        assert_eq!(
            (addr(&s, "t1", "app"), addr(&s, "t2", "app")),
            (Some("10.0.3.130".into()), Some("10.0.3.133".into()))
        );
        assert_eq!(vips(&s, "web"), vec![("app".into(), "10.0.3.129".into())]);
        // A task that ended gets no address.
        assign(&mut s, &mut i, "t3");
        report(&mut s, &mut i, "t3", TaskState::Complete);
        i += 1;
        let (_, keys) =
            s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: vec![ta("t3", "10.0.3.150")] } });
        assert!(keys.is_empty());
    }

    #[test]
    fn network_rm_is_refused_while_a_service_or_a_live_task_uses_it() {
        let mut s = world(ClusterNet::default());
        let mut i = 1;
        create(&mut s, 2, "app", |_| {});
        i += 1;
        service(&mut s, &mut i, "web", &["app"], EndpointMode::Vip, &["t1"]);
        let rm = || Command::RemoveNetwork { id: "app".into() };
        i += 1;
        assert_eq!(apply(&mut s, i, rm()), Response::Rejected("network app is in use by service web".into()));
        i += 1;
        apply(&mut s, i, Command::RemoveService { id: "web".into() });
        i += 1;
        let r = apply(&mut s, i, rm());
        assert!(matches!(&r, Response::Rejected(why) if why.starts_with("network app is in use by task t1")), "{r:?}");
        i += 1;
        apply(&mut s, i, Command::Tasks { changes: vec![TaskChange::Delete { id: "t1".into() }] });
        i += 1;
        assert_eq!(apply(&mut s, i, rm()), Response::Ok);
        // A spec cannot name a network that is gone, nor the ingress network.
        create(&mut s, 100, "ingress", |sp| sp.ingress = true);
        for (net, why) in [("app", "network app not found"), ("ingress", "The network ingress cannot be used")] {
            let spec = ServiceSpec {
                name: "x".into(),
                task: TaskSpec {
                    networks: vec![NetworkAttachmentSpec { target: net.into(), aliases: vec![] }],
                    ..Default::default()
                },
                ..Default::default()
            };
            let r = apply(&mut s, 101, Command::CreateService { id: "x".into(), spec, auth: None });
            assert!(matches!(&r, Response::Rejected(w) if w.contains(why)), "{r:?}");
        }
    }

    fn attach(net: &str, node: &str, container: &str, want: Option<&str>) -> Command {
        Command::CreateAttachment {
            id: format!("att-{container}"),
            node_id: node.into(),
            container_id: container.into(),
            name: container.into(),
            network: net.into(),
            aliases: vec![],
            want: want.map(|w| w.parse().expect("ip")),
        }
    }

    fn att_addr(s: &State, container: &str) -> Option<String> {
        s.attachments.get(&format!("att-{container}"))?.addr.map(|a| a.to_string())
    }

    /// `run --network` on an attachable network: only such a network takes a
    /// container; its address comes from the allocator (the one asked for, or
    /// the next), held like a task's, and freed when the attachment or its
    /// node is removed; the network cannot be removed while it is there.
    #[test]
    fn container_attachments_on_attachable_networks_only() {
        let mut s = world(ClusterNet::default());
        let mut i = 1;
        create(&mut s, 2, "app", |sp| {
            sp.attachable = true;
            sp.ipam.subnet = Some(sub("10.5.0.0/24"));
        });
        create(&mut s, 3, "plain", |_| {});
        create(&mut s, 4, "ingress", |sp| sp.ingress = true);
        i += 3;
        allocate(&mut s, &mut i);
        let refused: &[(Command, &str)] = &[
            (attach("plain", "n1", "c1", None), "network plain is not manually attachable"),
            (attach("plain", "n1", "c1", None), "--attachable"),
            (attach("ingress", "n1", "c1", None), "routing mesh"),
            (attach("nope", "n1", "c1", None), "network nope not found"),
            (attach("app", "ghost", "c1", None), "node ghost is not in the swarm"),
            (attach("app", "n1", "c1", Some("10.6.0.5")), "address 10.6.0.5 cannot be had on network app"),
            (attach("app", "n1", "c1", Some("10.5.0.1")), "other than its gateway 10.5.0.1"),
        ];
        for (cmd, why) in refused {
            let before = s.clone();
            i += 1;
            let r = apply(&mut s, i, cmd.clone());
            assert!(matches!(&r, Response::Rejected(w) if w.contains(why)), "{cmd:?}: {r:?}");
            assert_eq!(s, before, "a refusal changes nothing");
        }
        // By name; a task on the same network shares its addresses.
        i += 1;
        assert_eq!(apply(&mut s, i, attach("app", "n1", "c1", None)), Response::Ok);
        assert_eq!(s.attachments["att-c1"].network, "app");
        i += 1;
        assert_eq!(apply(&mut s, i, attach("app", "n1", "c2", Some("10.5.0.200"))), Response::Ok);
        i += 1;
        let mut twice = attach("app", "n1", "c1", None);
        if let Command::CreateAttachment { id, .. } = &mut twice {
            *id = "other".into();
        }
        let r = apply(&mut s, i, twice);
        assert!(matches!(&r, Response::Rejected(w) if w.contains("container c1 is already attached")), "{r:?}");
        service(&mut s, &mut i, "web", &["app"], EndpointMode::Vip, &["t1"]);
        let changes = allocate(&mut s, &mut i);
        assert!(
            changes.contains(&AllocChange::AttachmentAddr {
                id: "att-c2".into(),
                addr: "10.5.0.200".parse().expect("ip")
            })
        );
        assert_eq!(vips(&s, "web"), vec![("app".to_string(), "10.5.0.2".to_string())]);
        assert_eq!(addr(&s, "t1", "app").as_deref(), Some("10.5.0.3"));
        assert_eq!(att_addr(&s, "c1").as_deref(), Some("10.5.0.4"));
        assert_eq!(att_addr(&s, "c2").as_deref(), Some("10.5.0.200"));
        assert_eq!(s.held().addr("app", "10.5.0.4".parse().expect("ip")), Some(&Owner::Attachment("att-c1".into())));
        // Asked-for addresses are refused once held, and an attachment is addressed once.
        i += 1;
        let r = apply(&mut s, i, attach("app", "n1", "c3", Some("10.5.0.4")));
        assert!(matches!(&r, Response::Rejected(w) if w.contains("10.5.0.4 is already in use")), "{r:?}");
        let again = vec![AllocChange::AttachmentAddr { id: "att-c1".into(), addr: "10.5.0.9".parse().expect("ip") }];
        i += 1;
        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes: again } });
        assert!(keys.is_empty(), "an attachment keeps its first address");
        // The network stays while a container is on it.
        apply(&mut s, i + 1, Command::RemoveService { id: "web".into() });
        apply(&mut s, i + 2, Command::Tasks { changes: vec![TaskChange::Delete { id: "t1".into() }] });
        i += 3;
        let r = apply(&mut s, i, Command::RemoveNetwork { id: "app".into() });
        assert!(matches!(&r, Response::Rejected(w) if w.contains("in use by container c1 on node lab1")), "{r:?}");
        // Only its node removes it; removing one that is gone is fine.
        i += 1;
        let r = apply(&mut s, i, Command::RemoveAttachment { id: "att-c1".into(), node_id: "n2".into() });
        assert!(matches!(&r, Response::Rejected(w) if w.contains("another node")), "{r:?}");
        for _ in 0..2 {
            i += 1;
            assert_eq!(
                apply(&mut s, i, Command::RemoveAttachment { id: "att-c1".into(), node_id: "n1".into() }),
                Response::Ok
            );
        }
        assert_eq!(s.held().addr("app", "10.5.0.4".parse().expect("ip")), None, "its address is free again");
        // The node's removal takes its attachments (and their addresses) with it.
        i += 1;
        assert_eq!(apply(&mut s, i, Command::RemoveNode { id: "n1".into() }), Response::Ok);
        assert!(s.attachments.is_empty());
        assert_eq!(s.held().addr("app", "10.5.0.200".parse().expect("ip")), None);
        i += 1;
        assert_eq!(apply(&mut s, i, Command::RemoveNetwork { id: "app".into() }), Response::Ok);
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held());
    }

    /// A stored attachment is reloaded with the address it holds.
    #[test]
    fn attachments_survive_a_reload_with_their_addresses_held() {
        let mut s = world(ClusterNet::default());
        let mut i = 2;
        create(&mut s, i, "app", |sp| sp.attachable = true);
        allocate(&mut s, &mut i);
        i += 1;
        apply(&mut s, i, attach("app", "n1", "c1", None));
        allocate(&mut s, &mut i);
        let a = att_addr(&s, "c1").expect("addressed");
        let loaded: State = serde_json::from_slice(&serde_json::to_vec(&s).expect("json")).expect("load");
        assert_eq!(loaded, s);
        assert_eq!(loaded.held(), s.held());
        let key = ObjKey::Attachment("att-c1".into());
        let value = s.encode(&key).expect("stored");
        let decoded = State::decode([(key.db_key().as_str(), value.as_slice())]).expect("decode");
        assert_eq!(decoded.attachments["att-c1"].addr.map(|x| x.to_string()), Some(a));
    }

    /// Random services and tasks on small networks, tasks ending, orphaned
    /// and deleted, networks added and removed, with leader changes: a
    /// stale plan may be applied to a newer state. Never one address held
    /// twice on a network, never a live task's address outside its range.
    /// Random services publishing from a small range, updated, removed,
    /// with stale leaders: an ingress port is never held twice, never
    /// another service's named port, and the index is always the one a
    /// fresh load derives.
    #[test]
    fn never_an_ingress_port_twice_over_random_runs() {
        let net = ClusterNet { ingress_ports: (30000, 30005), ..ClusterNet::default() };
        let (mut refused, mut chosen) = (0, 0);
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = world(net.clone());
            let mut i = 1;
            create(&mut s, 2, "ingress", |sp| sp.ingress = true);
            i += 1;
            allocate(&mut s, &mut i);
            let mut view = s.clone();
            let port = |rng: &mut StdRng| {
                let published = [0, 0, 8080, 30001, 30003][rng.random_range(0..5)];
                let proto = if rng.random_bool(0.8) { "tcp" } else { "udp" };
                if rng.random_bool(0.8) { ing(published, 80, proto) } else { host(published.max(9000), 80) }
            };
            for n in 0..300 {
                let ids: Vec<String> = s.services.keys().cloned().collect();
                let pick = |rng: &mut StdRng| ids.get(rng.random_range(0..ids.len().max(1))).cloned();
                match rng.random_range(0..10) {
                    0..=2 => {
                        let ports: Vec<PublishedPort> = (0..rng.random_range(1..3)).map(|_| port(&mut rng)).collect();
                        let spec = ServiceSpec {
                            name: format!("s{n}"),
                            task: TaskSpec { image: "busybox".into(), ports, ..Default::default() },
                            ..Default::default()
                        };
                        i += 1;
                        apply(&mut s, i, Command::CreateService { id: format!("s{n}"), spec, auth: None });
                    }
                    3..=4 => {
                        if let Some(id) = pick(&mut rng) {
                            let mut spec = s.services[&id].spec.clone();
                            spec.task.ports.push(port(&mut rng));
                            spec.task.ports.remove(0);
                            i += 1;
                            let cmd =
                                Command::UpdateService { id, spec, rollback: false, replace_auth: false, auth: None };
                            apply(&mut s, i, cmd);
                        }
                    }
                    5 => {
                        if let Some(id) = pick(&mut rng) {
                            i += 1;
                            apply(&mut s, i, Command::RemoveService { id });
                        }
                    }
                    6 => view = s.clone(),
                    _ => {
                        let changes = plan(&view);
                        let planned = changes.len();
                        i += 1;
                        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes } });
                        refused += planned - keys.len();
                        if rng.random_bool(0.5) {
                            view = s.clone();
                        }
                    }
                }
                let mut held: BTreeSet<(String, u16)> = BTreeSet::new();
                for svc in s.services.values() {
                    for p in &svc.ports {
                        assert!(held.insert((p.protocol.clone(), p.published)), "seed {seed}: {p:?} twice");
                        let named_by_other = s.services.values().any(|o| {
                            o.id != svc.id
                                && o.spec
                                    .task
                                    .ports
                                    .iter()
                                    .any(|q| q.published == p.published && q.protocol == p.protocol)
                        });
                        assert!(!named_by_other, "seed {seed}: {p:?} of {} is another's", svc.id);
                    }
                }
                let mut fresh = s.clone();
                fresh.reindex();
                assert_eq!(fresh.held(), s.held(), "seed {seed}");
                chosen += held.iter().filter(|(_, p)| (30000..=30005).contains(p)).count();
            }
        }
        assert!(refused > 0, "stale plans were tried, and apply refused them");
        assert!(chosen > 0, "ports were chosen from the range");
    }

    #[test]
    fn never_a_duplicate_address_over_random_runs() {
        let mut refused = 0;
        let mut attached = 0;
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = world(ClusterNet::default());
            let mut i = 1;
            // On odd seeds "b" is a macvlan network on the node's own LAN, its
            // range a /28 with the gateway inside it.
            let lan = seed % 2 == 1;
            for (k, net) in ["a", "b"].iter().enumerate() {
                create(&mut s, 2 + k as u64, net, |sp| {
                    sp.ipam.subnet = Some(sub(&format!("10.1.{k}.0/28")));
                    sp.attachable = true;
                    if lan && *net == "b" {
                        sp.driver = Driver::Macvlan;
                        sp.parent = Some("eth0".into());
                        sp.ipam.subnet = Some(sub("10.98.0.0/24"));
                        sp.ipam.gateway = Some("10.98.0.17".parse().expect("ip"));
                        sp.ipam.ip_range = Some(sub("10.98.0.16/28"));
                    }
                });
            }
            i += 2;
            allocate(&mut s, &mut i);
            let mut view = s.clone();
            let mut n = 0;
            for _ in 0..300 {
                let live: Vec<String> = s.tasks.keys().cloned().collect();
                let pick = |rng: &mut StdRng| live.get(rng.random_range(0..live.len().max(1))).cloned();
                match rng.random_range(0..14) {
                    0..=2 => {
                        n += 1;
                        let nets: &[&str] = match rng.random_range(0..3) {
                            0 => &["a"],
                            1 => &["b"],
                            _ => &["a", "b"],
                        };
                        let mode = if rng.random_bool(0.7) { EndpointMode::Vip } else { EndpointMode::Dnsrr };
                        let tasks: Vec<String> = (0..rng.random_range(1..4)).map(|k| format!("t{n}-{k}")).collect();
                        let tasks: Vec<&str> = tasks.iter().map(String::as_str).collect();
                        service(&mut s, &mut i, &format!("s{n}"), nets, mode, &tasks);
                    }
                    3 => {
                        if let Some(t) = pick(&mut rng) {
                            assign(&mut s, &mut i, &t);
                            let end =
                                [TaskState::Running, TaskState::Complete, TaskState::Failed][rng.random_range(0..3)];
                            report(&mut s, &mut i, &t, end);
                        }
                    }
                    4 => {
                        if let Some(t) = pick(&mut rng) {
                            let status = TaskStatus { state: TaskState::Orphaned, ..Default::default() };
                            i += 1;
                            apply(&mut s, i, Command::Tasks { changes: vec![TaskChange::Status { id: t, status }] });
                        }
                    }
                    5 => {
                        if let Some(t) = pick(&mut rng) {
                            i += 1;
                            apply(&mut s, i, Command::Tasks { changes: vec![TaskChange::Delete { id: t }] });
                        }
                    }
                    6 => {
                        if let Some(id) = s.services.keys().nth(rng.random_range(0..s.services.len().max(1))).cloned() {
                            let mut spec = s.services[&id].spec.clone();
                            if rng.random_bool(0.5) {
                                spec.task.networks.pop();
                            } else {
                                spec.endpoint_mode = EndpointMode::Vip;
                                spec.task.networks =
                                    vec![NetworkAttachmentSpec { target: "a".into(), aliases: vec![] }];
                            }
                            i += 1;
                            let cmd =
                                Command::UpdateService { id, spec, rollback: false, replace_auth: false, auth: None };
                            apply(&mut s, i, cmd);
                        }
                    }
                    7 => {
                        if let Some(id) = s.services.keys().nth(rng.random_range(0..s.services.len().max(1))).cloned() {
                            i += 1;
                            apply(&mut s, i, Command::RemoveService { id });
                        }
                    }
                    8 => view = s.clone(),
                    9 => {
                        n += 1;
                        let net = ["a", "b"][rng.random_range(0..2)];
                        let base = if lan && net == "b" { "10.98.0" } else { "10.1.0" };
                        let want = rng.random_bool(0.3).then(|| format!("{base}.{}", rng.random_range(2..31)));
                        i += 1;
                        apply(&mut s, i, attach(net, "n1", &format!("c{n}"), want.as_deref()));
                    }
                    10 => {
                        if let Some(id) =
                            s.attachments.keys().nth(rng.random_range(0..s.attachments.len().max(1))).cloned()
                        {
                            i += 1;
                            apply(&mut s, i, Command::RemoveAttachment { id, node_id: "n1".into() });
                        }
                    }
                    _ => {
                        let changes = plan(&view);
                        let planned = changes.len();
                        i += 1;
                        let (_, keys) = s.apply(i, &Request { at_ms: i, cmd: Command::Allocate { changes } });
                        refused += planned.saturating_sub(keys.len());
                        if rng.random_bool(0.5) {
                            view = s.clone();
                        }
                    }
                }
                check_addrs(&s, seed);
                attached += s.attachments.values().filter(|a| a.addr.is_some()).count();
            }
        }
        assert!(refused > 0, "stale plans were tried, and apply refused them");
        assert!(attached > 0, "container attachments were addressed");
    }

    fn check_addrs(s: &State, seed: u64) {
        let mut seen: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
        for net in s.networks.values() {
            seen.insert((net.id.clone(), net.alloc.as_ref().expect("allocated").gateway));
        }
        let mut hold = |net: &str, a: Ipv4Addr, who: &str| {
            let alloc = s.networks[net].alloc.as_ref().expect("allocated");
            assert!(crate::networks::assignable(alloc, a), "seed {seed}: {who} has {a} outside {net}'s range");
            assert!(seen.insert((net.to_string(), a)), "seed {seed}: {a} on {net} twice ({who})");
        };
        for t in s.tasks.values().filter(|t| crate::networks::task_holds(t)) {
            for n in &t.networks {
                if let Some(a) = n.addr {
                    hold(&n.network, a, &t.id);
                }
            }
        }
        for a in s.attachments.values() {
            if let Some(addr) = a.addr {
                hold(&a.network, addr, &a.id);
            }
        }
        for svc in s.services.values() {
            for v in &svc.vips {
                assert!(svc.spec.task.networks.iter().any(|a| a.target == v.network), "seed {seed}: a stale VIP");
                hold(&v.network, v.addr, &svc.id);
            }
        }
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held(), "seed {seed}: the index is what a reload derives");
    }

    fn check(s: &State, seed: u64) {
        let allocated: Vec<&NetworkAlloc> = s.networks.values().filter_map(|n| n.alloc.as_ref()).collect();
        let vnis: BTreeSet<u32> = allocated.iter().map(|a| a.vni).collect();
        assert_eq!(vnis.len(), allocated.len(), "seed {seed}: a VNI twice in {allocated:?}");
        for (i, a) in allocated.iter().enumerate() {
            for b in &allocated[i + 1..] {
                assert!(!a.subnet.overlaps(&b.subnet), "seed {seed}: {} overlaps {}", a.subnet, b.subnet);
            }
            assert!(!a.subnet.overlaps(&sub("10.0.15.0/24")), "seed {seed}: in the ingress subnet");
        }
        let mut fresh = s.clone();
        fresh.reindex();
        assert_eq!(fresh.held(), s.held(), "seed {seed}: the index is what a reload derives");
    }
}
