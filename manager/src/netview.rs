//! Each node's view of the cluster networks (`proto::net::NetView`), derived
//! from the replicated state alone (pure; the dispatcher sends it, see
//! `Dispatcher::net_views`):
//!
//! * `networks`: the allocated networks where the node has a live task
//!   or a container attachment (`run --network`) with an address;
//! * `peers`: the other nodes with live tasks or attachments on those
//!   overlays, at their data-path address (a node that gave none is left
//!   out; a macvlan network brings none: its endpoints meet on the LAN);
//!   each macvlan network carries its parent on this node (its label
//!   `shoal.net.<network>.parent`, else `-o parent`);
//! * `endpoints`: every live task and attachment with an address on those
//!   networks, this node's too (an attachment's endpoint id is its id);
//! * `services`: the services whose spec lists one of those networks, with
//!   their VIP there and their backends: the addresses of their tasks that
//!   run, are wanted running, on a node that is ready. So a backend leaves
//!   as soon as the orchestrator wants its task stopped or its node is
//!   down, before its container is stopped.
//!
//! * `ingress`: the routing mesh, once any service has its ingress ports
//!   allocated, in the view of every node that has its leg on the
//!   allocated ingress network, task or not (a cluster that publishes
//!   nothing through the mesh builds nothing for it; legs are allocated
//!   all the same, so the first published port needs no new address):
//!   the node's leg, every node's leg, and each service with allocated
//!   ingress ports, its ports and its backends there (the rule above).
//!   Such a node also has the ingress network in `networks`, every live
//!   task's ingress address in `endpoints`, and every other node with a
//!   leg in `peers`.
//!
//! A live task is one that has not ended (orphaned tasks have: their node
//! is down). A task without a node yet is nowhere, so in no view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use shoal_proto::model::{Node, NodeState};
use shoal_proto::net::{
    IngressLeg, IngressPort, IngressService, IngressView, MacvlanView, NetView, OverlayEndpoint, OverlayNetwork, Peer,
    Proto, ViewService,
};
use shoal_proto::network::{Driver, EndpointMode, Network};
use shoal_proto::service::{Service, TaskState};

use crate::state::State;

/// The view of one node (empty when it has no task on a cluster network).
pub fn for_node(state: &State, node: &str) -> NetView {
    all(state).remove(node).unwrap_or_else(|| empty(state, node))
}

/// A node's view with nothing in it.
pub fn empty(state: &State, node: &str) -> NetView {
    NetView {
        node: node.to_string(),
        data_addr: data_addr(state, node).unwrap_or(Ipv4Addr::UNSPECIFIED),
        networks: Vec::new(),
        peers: Vec::new(),
        endpoints: Vec::new(),
        services: Vec::new(),
        ingress: None,
        wg_port: state.cluster.as_ref().map_or(0, |c| c.net.wg_port),
        key_epoch: state.cluster.as_ref().map_or(0, |c| c.net.key_epoch),
    }
}

fn data_addr(state: &State, node: &str) -> Option<Ipv4Addr> {
    state.nodes.get(node).and_then(|n| n.description.net.data_addr)
}

/// Every node's view, by node id, in one pass over the tasks (nodes with
/// no task on a cluster network are absent: their view is [`empty`]).
pub fn all(state: &State) -> HashMap<String, NetView> {
    if state.networks.is_empty() {
        return HashMap::new();
    }
    // By network: its endpoints and the nodes they are on; by node: its
    // networks; by (service, network): the backends.
    let mut endpoints: BTreeMap<&str, Vec<OverlayEndpoint>> = BTreeMap::new();
    let mut nodes_of: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let mut nets_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut backends: HashMap<(&str, &str), Vec<Ipv4Addr>> = HashMap::new();
    let ready = |node: &str| state.nodes.get(node).is_some_and(|n| n.status.state == NodeState::Ready);
    for t in state.tasks.values().filter(|t| !t.node_id.is_empty() && !t.status.state.is_terminal()) {
        let serving = t.status.state == TaskState::Running && t.desired == TaskState::Running && ready(&t.node_id);
        for n in &t.networks {
            let Some(addr) = n.addr else { continue };
            let Some((net, _)) = state.networks.get_key_value(&n.network).filter(|(_, x)| x.alloc.is_some()) else {
                continue;
            };
            endpoints.entry(net).or_default().push(OverlayEndpoint {
                id: t.id.clone(),
                network: net.clone(),
                addr,
                node: t.node_id.clone(),
                names: vec![t.container_name()],
            });
            nodes_of.entry(net).or_default().insert(&t.node_id);
            nets_of.entry(&t.node_id).or_default().insert(net);
            if serving {
                backends.entry((&t.service_id, net)).or_default().push(addr);
            }
        }
    }
    // The routing mesh: every node with a leg on the allocated ingress
    // network takes part in it, task or not.
    let meshed = state.services.values().any(|s| !s.ports.is_empty());
    let ingress = state.ingress_network().filter(|n| n.alloc.is_some() && meshed);
    let legs: Vec<IngressLeg> = match ingress {
        None => Vec::new(),
        Some(i) => state
            .nodes
            .values()
            .filter_map(|n| {
                Some(IngressLeg { node: n.id.clone(), addr: n.ingress.as_ref().filter(|l| l.network == i.id)?.addr })
            })
            .collect(),
    };
    if let Some(i) = ingress {
        for l in &legs {
            let node = state.nodes.get_key_value(&l.node).map(|(k, _)| k.as_str()).unwrap_or_default();
            nets_of.entry(node).or_default().insert(i.id.as_str());
            nodes_of.entry(i.id.as_str()).or_default().insert(node);
        }
    }
    for a in state.attachments.values().filter(|a| !a.node_id.is_empty()) {
        let Some(addr) = a.addr else { continue };
        let Some((net, _)) = state.networks.get_key_value(&a.network).filter(|(_, x)| x.alloc.is_some()) else {
            continue;
        };
        let names = std::iter::once(&a.name).chain(&a.aliases).filter(|n| !n.is_empty()).cloned().collect();
        endpoints.entry(net).or_default().push(OverlayEndpoint {
            id: a.id.clone(),
            network: net.clone(),
            addr,
            node: a.node_id.clone(),
            names,
        });
        nodes_of.entry(net).or_default().insert(&a.node_id);
        nets_of.entry(&a.node_id).or_default().insert(net);
    }
    let mut services_on: HashMap<&str, Vec<&Service>> = HashMap::new();
    for s in state.services.values() {
        for a in &s.spec.task.networks {
            services_on.entry(a.target.as_str()).or_default().push(s);
        }
    }
    let mut views = HashMap::new();
    for (node, nets) in nets_of {
        let mut view = empty(state, node);
        let mut peers: BTreeSet<&str> = BTreeSet::new();
        for net in &nets {
            let network = &state.networks[*net];
            view.networks.extend(overlay(network, state.nodes.get(node)));
            // A macvlan network's endpoints meet on the LAN: no peer to tunnel to.
            if network.spec.driver == Driver::Overlay {
                peers.extend(nodes_of.get(net).into_iter().flatten().filter(|n| **n != node));
            }
            view.endpoints.extend(endpoints.get(net).into_iter().flatten().cloned());
            for s in services_on.get(net).into_iter().flatten() {
                let mut b = backends.get(&(s.id.as_str(), *net)).cloned().unwrap_or_default();
                b.sort();
                let vip = s.vips.iter().find(|v| v.network == *net).map(|v| v.addr);
                view.services.push(ViewService {
                    id: s.id.clone(),
                    name: s.spec.name.clone(),
                    network: net.to_string(),
                    mode: s.spec.endpoint_mode,
                    vip: vip.filter(|_| s.spec.endpoint_mode == EndpointMode::Vip),
                    aliases: s
                        .spec
                        .task
                        .networks
                        .iter()
                        .filter(|a| a.target == *net)
                        .flat_map(|a| a.aliases.clone())
                        .collect(),
                    backends: b,
                });
            }
        }
        view.peers = peers
            .into_iter()
            .filter_map(|p| {
                let net = &state.nodes.get(p)?.description.net;
                Some(Peer {
                    node: p.to_string(),
                    data_addr: net.data_addr?,
                    wg_key: net.wg_key,
                    wg_key_prev: net.wg_key_prev,
                })
            })
            .collect();
        view.endpoints.sort_by(|a, b| (&a.network, a.addr, &a.id).cmp(&(&b.network, b.addr, &b.id)));
        if let Some(i) = ingress
            && let Some(mine) = legs.iter().find(|l| l.node == node)
        {
            view.ingress = Some(IngressView {
                network: i.id.clone(),
                leg: mine.addr,
                legs: legs.clone(),
                services: ingress_services(state, &i.id, &backends),
            });
        }
        views.insert(node.to_string(), view);
    }
    views
}

/// The services with allocated ingress ports, with their backends on the
/// ingress network `net`.
fn ingress_services(state: &State, net: &str, backends: &HashMap<(&str, &str), Vec<Ipv4Addr>>) -> Vec<IngressService> {
    state
        .services
        .values()
        .filter(|s| !s.ports.is_empty())
        .map(|s| {
            let mut b = backends.get(&(s.id.as_str(), net)).cloned().unwrap_or_default();
            b.sort();
            IngressService {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| IngressPort {
                        published: p.published,
                        target: p.target,
                        proto: if p.protocol == "udp" { Proto::Udp } else { Proto::Tcp },
                        client_ip: p.client_ip,
                    })
                    .collect(),
                backends: b,
            }
        })
        .collect()
}

/// A service or a node on a network: its id, its name, its address.
pub type Who = (String, String, Option<Ipv4Addr>);

/// Who is on network `id`, for `network inspect`: the services whose spec
/// lists it, with their VIP there (`(id, name, vip)`), and the nodes with
/// live tasks or container attachments on it (`(id, hostname, data address)`).
#[allow(clippy::type_complexity)]
pub fn usage(
    state: &State,
    id: &str,
) -> (Vec<(String, String, Option<Ipv4Addr>)>, Vec<(String, String, Option<Ipv4Addr>)>) {
    let services = state
        .services
        .values()
        .filter(|s| s.spec.task.networks.iter().any(|a| a.target == id))
        .map(|s| (s.id.clone(), s.spec.name.clone(), s.vips.iter().find(|v| v.network == id).map(|v| v.addr)))
        .collect();
    let mut nodes: BTreeSet<&str> = state
        .tasks
        .values()
        .filter(|t| !t.node_id.is_empty() && !t.status.state.is_terminal())
        .filter(|t| t.networks.iter().any(|n| n.network == id && n.addr.is_some()))
        .map(|t| t.node_id.as_str())
        .collect();
    nodes
        .extend(state.attachments.values().filter(|a| a.network == id && a.addr.is_some()).map(|a| a.node_id.as_str()));
    let peers = nodes
        .into_iter()
        .map(|n| {
            let node = state.nodes.get(n);
            let host = node.map(|x| x.description.hostname.clone()).unwrap_or_default();
            (n.to_string(), host, node.and_then(|x| x.description.net.data_addr))
        })
        .collect();
    (services, peers)
}

/// A network as `node` programs it (none until it is allocated; a macvlan
/// network with its parent there: the node's label, else the spec's).
fn overlay(n: &Network, node: Option<&Node>) -> Option<OverlayNetwork> {
    let a = n.alloc.as_ref()?;
    let no_labels = BTreeMap::new();
    let labels = node.map_or(&no_labels, |x| &x.spec.labels);
    let macvlan = n.spec.parent_on(labels).map(|parent| MacvlanView {
        parent: parent.to_string(),
        host_access: n.spec.host_access,
        arp_probe: n.spec.arp_probe,
    });
    Some(OverlayNetwork {
        id: n.id.clone(),
        name: n.spec.name.clone(),
        vni: a.vni,
        subnet: a.subnet.network(),
        prefix: a.subnet.prefix(),
        gateway: a.gateway,
        mtu: a.mtu,
        internal: n.spec.internal,
        encrypted: n.spec.encrypted,
        macvlan,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use shoal_proto::model::{Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role};
    use shoal_proto::network::{NetworkAlloc, NetworkAttachmentSpec, NetworkSpec, TaskNetwork, Vip};
    use shoal_proto::service::{PublishMode, PublishedPort, ServiceSpec, Task, TaskSpec, TaskStatus};

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn node(s: &mut State, id: &str, state: NodeState, data: Option<&str>) {
        let mut n = Node {
            id: id.into(),
            raft_id: 0,
            spec: NodeSpec { role: Role::Worker, availability: Default::default(), labels: Default::default() },
            description: NodeDescription { hostname: id.into(), ..Default::default() },
            status: NodeStatus { state, message: String::new() },
            meta: Meta::default(),
            ingress: None,
        };
        n.description.net.data_addr = data.map(ip);
        s.nodes.insert(id.into(), n);
    }

    /// The networks' ids (hex, as the API makes them).
    pub(crate) const APP: &str = "a00000000000000a";
    pub(crate) const DB: &str = "d00000000000000d";

    fn network(s: &mut State, id: &str, subnet: &str, vni: u32) {
        let sub: shoal_proto::net::Subnet = subnet.parse().expect("subnet");
        let alloc = NetworkAlloc {
            vni,
            subnet: sub,
            gateway: sub.nth(1).expect("gw"),
            range: sub,
            mtu: 1450,
            reserved: vec![],
        };
        let name = if id == APP { "app" } else { "db" };
        let spec = NetworkSpec { name: name.into(), ..Default::default() };
        s.networks.insert(id.into(), Network { id: id.into(), meta: Meta::default(), spec, alloc: Some(alloc) });
    }

    fn service(s: &mut State, id: &str, net: &str, mode: EndpointMode, vip: Option<&str>) {
        let mut spec = ServiceSpec { name: id.into(), endpoint_mode: mode, ..Default::default() };
        spec.task.networks = vec![NetworkAttachmentSpec { target: net.into(), aliases: vec![format!("{id}-alias")] }];
        let vips = vip.map(|v| vec![Vip { network: net.into(), addr: ip(v) }]).unwrap_or_default();
        s.services.insert(id.into(), Service { id: id.into(), spec, vips, ..Default::default() });
    }

    /// A task of `svc` on `node` with `addr` on `net`, in `state`, wanted `desired`.
    fn task(
        s: &mut State,
        id: &str,
        (svc, node): (&str, &str),
        (net, addr): (&str, &str),
        state: TaskState,
        desired: TaskState,
    ) {
        let t = Task {
            id: id.into(),
            service_id: svc.into(),
            node_id: node.into(),
            desired,
            status: TaskStatus { state, ..Default::default() },
            spec: TaskSpec::default(),
            networks: vec![TaskNetwork { network: net.into(), aliases: vec![], addr: Some(ip(addr)) }],
            ..Default::default()
        };
        s.tasks.insert(id.into(), t.into());
    }

    /// Five nodes (n3 without a data address, n4 down), networks app and db,
    /// services web (vip, on app) and rr (dnsrr, on db), and tasks in every state.
    pub(crate) fn world() -> State {
        use NodeState::{Down, Ready};
        use TaskState::{Failed, Orphaned, Running, Shutdown, Starting};
        let mut s = State::default();
        node(&mut s, "n1", Ready, Some("10.98.0.1"));
        node(&mut s, "n2", Ready, Some("10.98.0.2"));
        node(&mut s, "n3", Ready, None);
        node(&mut s, "n4", Down, Some("10.98.0.4"));
        node(&mut s, "n5", Ready, Some("10.98.0.5"));
        network(&mut s, APP, "10.0.1.0/24", 4097);
        network(&mut s, DB, "10.0.2.0/24", 4098);
        service(&mut s, "web", APP, EndpointMode::Vip, Some("10.0.1.2"));
        service(&mut s, "rr", DB, EndpointMode::Dnsrr, None);
        task(&mut s, "t1", ("web", "n1"), (APP, "10.0.1.3"), Running, Running);
        task(&mut s, "t2", ("web", "n2"), (APP, "10.0.1.4"), Running, Running);
        task(&mut s, "t3", ("web", "n2"), (APP, "10.0.1.5"), Running, Shutdown); // leaving: no backend
        task(&mut s, "t4", ("web", "n3"), (APP, "10.0.1.6"), Running, Running); // a node without data address
        task(&mut s, "t5", ("web", "n4"), (APP, "10.0.1.7"), Running, Running); // its node is down
        task(&mut s, "t6", ("web", "n1"), (APP, "10.0.1.8"), Failed, Shutdown); // ended: nowhere
        task(&mut s, "t7", ("web", ""), (APP, "10.0.1.9"), Running, Running); // no node: nowhere
        task(&mut s, "t8", ("rr", "n2"), (DB, "10.0.2.3"), Starting, Running); // not running yet: no backend
        task(&mut s, "t9", ("rr", "n5"), (DB, "10.0.2.4"), Orphaned, Shutdown); // ended (orphaned)
        s.reindex();
        s
    }

    #[test]
    fn a_macvlan_network_has_each_nodes_parent_and_no_peers() {
        use shoal_proto::network::parent_label;
        let mut s = world();
        // db becomes a macvlan network on the nodes' LAN; n2's parent is named otherwise.
        let db = s.networks.get_mut(DB).expect("db");
        db.spec.driver = Driver::Macvlan;
        db.spec.parent = Some("eth0".into());
        db.spec.host_access = true;
        db.spec.arp_probe = true;
        db.alloc.as_mut().expect("alloc").vni = 0;
        task(&mut s, "t10", ("rr", "n5"), (DB, "10.0.2.5"), TaskState::Running, TaskState::Running);
        s.nodes.get_mut("n2").expect("n2").spec.labels.insert(parent_label("db"), "ens5".into());
        s.nodes.get_mut("n5").expect("n5").spec.labels.insert(parent_label("app"), "ignored".into());
        s.reindex();
        let mv = |v: &NetView| v.networks.iter().find(|n| n.id == DB).and_then(|n| n.macvlan.clone());
        let v5 = for_node(&s, "n5");
        assert_eq!(
            mv(&v5),
            Some(MacvlanView { parent: "eth0".into(), host_access: true, arp_probe: true }),
            "the spec's parent"
        );
        let v2 = for_node(&s, "n2");
        assert_eq!(mv(&v2).map(|m| m.parent), Some("ens5".into()), "the node's label beats the spec");
        assert_eq!(v2.networks.iter().find(|n| n.id == APP).and_then(|n| n.macvlan.clone()), None, "an overlay");
        // n5 shares only db with n2: no peer (n2's come from app).
        assert!(v5.peers.is_empty(), "{:?}", v5.peers);
        assert_eq!(v2.peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), vec!["n1", "n4"]);
        // Endpoints on db are in both views, for DNS and the balancers.
        assert!(v5.endpoints.iter().any(|e| e.id == "t8") && v2.endpoints.iter().any(|e| e.id == "t10"));
    }

    #[test]
    fn a_node_sees_its_networks_peers_endpoints_and_services() {
        let s = world();
        let v = for_node(&s, "n1");
        assert_eq!((v.node.as_str(), v.data_addr), ("n1", ip("10.98.0.1")));
        assert_eq!(v.networks.iter().map(|n| (n.id.as_str(), n.vni)).collect::<Vec<_>>(), vec![(APP, 4097)]);
        assert_eq!(
            v.peers.iter().map(|p| (p.node.as_str(), p.data_addr)).collect::<Vec<_>>(),
            vec![("n2", ip("10.98.0.2")), ("n4", ip("10.98.0.4"))],
            "n3 gave no data address"
        );
        let eps: Vec<&str> = v.endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(eps, vec!["t1", "t2", "t3", "t4", "t5"]);
        assert_eq!(v.services.len(), 1);
        let web = &v.services[0];
        assert_eq!((web.name.as_str(), web.mode, web.vip), ("web", EndpointMode::Vip, Some(ip("10.0.1.2"))));
        assert_eq!(web.aliases, vec!["web-alias".to_string()]);
        assert_eq!(web.backends, vec![ip("10.0.1.3"), ip("10.0.1.4"), ip("10.0.1.6")]);

        let v = for_node(&s, "n2");
        assert_eq!(v.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec![APP, DB]);
        let rr = v.services.iter().find(|x| x.name == "rr").expect("rr");
        assert_eq!((rr.mode, rr.vip, rr.backends.len()), (EndpointMode::Dnsrr, None, 0));
        assert_eq!(v.endpoints.iter().filter(|e| e.network == DB).count(), 1, "t9 ended");

        // A node with nothing on a cluster network gets an empty view, with its own address.
        let v = for_node(&s, "n5");
        assert!(v.networks.is_empty() && v.peers.is_empty() && v.endpoints.is_empty() && v.services.is_empty());
        assert_eq!(v.data_addr, ip("10.98.0.5"));
        assert_eq!(for_node(&s, "n3").data_addr, Ipv4Addr::UNSPECIFIED);
    }

    pub(crate) const ING: &str = "1000000000000001";

    /// The world with the ingress network, legs on n1, n2 and n5 (not on
    /// n3, n4), and service pub publishing 8080->80/tcp and 30000->53/udp
    /// (SNAT) through it, with tasks on n2 (running), n4 (down) and n2
    /// (starting).
    fn meshed() -> State {
        use TaskState::{Running, Starting};
        let mut s = world();
        let sub: shoal_proto::net::Subnet = "10.255.0.0/16".parse().expect("subnet");
        let alloc =
            NetworkAlloc { vni: 4096, subnet: sub, gateway: ip("10.255.0.1"), range: sub, mtu: 1450, reserved: vec![] };
        let spec = NetworkSpec { name: "ingress".into(), ingress: true, ..Default::default() };
        s.networks.insert(ING.into(), Network { id: ING.into(), meta: Meta::default(), spec, alloc: Some(alloc) });
        for (n, a) in [("n1", "10.255.0.2"), ("n2", "10.255.0.3"), ("n5", "10.255.0.4")] {
            let leg = shoal_proto::network::NodeAttachment { network: ING.into(), addr: ip(a) };
            s.nodes.get_mut(n).expect("node").ingress = Some(leg);
        }
        let ing = |published, target, proto: &str, client_ip| PublishedPort {
            published,
            target,
            protocol: proto.into(),
            mode: PublishMode::Ingress,
            client_ip,
        };
        let mut spec = ServiceSpec { name: "pub".into(), ..Default::default() };
        spec.task.ports = vec![ing(8080, 80, "tcp", true), ing(0, 53, "udp", false)];
        let ports = vec![ing(8080, 80, "tcp", true), ing(30000, 53, "udp", false)];
        s.services.insert("pub".into(), Service { id: "pub".into(), spec, ports, ..Default::default() });
        task(&mut s, "p1", ("pub", "n2"), (ING, "10.255.0.10"), Running, Running);
        task(&mut s, "p2", ("pub", "n4"), (ING, "10.255.0.11"), Running, Running); // its node is down
        task(&mut s, "p3", ("pub", "n2"), (ING, "10.255.0.12"), Starting, Running); // not running yet
        s.reindex();
        s
    }

    #[test]
    fn every_node_with_a_leg_sees_the_routing_mesh() {
        let s = meshed();
        let legs = vec![
            IngressLeg { node: "n1".into(), addr: ip("10.255.0.2") },
            IngressLeg { node: "n2".into(), addr: ip("10.255.0.3") },
            IngressLeg { node: "n5".into(), addr: ip("10.255.0.4") },
        ];
        let pub_ = IngressService {
            id: "pub".into(),
            name: "pub".into(),
            ports: vec![
                IngressPort { published: 8080, target: 80, proto: Proto::Tcp, client_ip: true },
                IngressPort { published: 30000, target: 53, proto: Proto::Udp, client_ip: false },
            ],
            backends: vec![ip("10.255.0.10")],
        };
        // n5 has no task at all: it still takes part, with every ingress endpoint and every leg's node as a peer.
        let v = for_node(&s, "n5");
        let i = v.ingress.as_ref().expect("n5 has a leg");
        assert_eq!((i.network.as_str(), i.leg), (ING, ip("10.255.0.4")));
        assert_eq!((i.legs.clone(), i.services.clone()), (legs.clone(), vec![pub_.clone()]));
        assert_eq!(v.networks.iter().map(|n| (n.id.as_str(), n.vni)).collect::<Vec<_>>(), vec![(ING, 4096)]);
        let peers: Vec<&str> = v.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(peers, vec!["n1", "n2", "n4"], "legs' nodes, and n4 with a task on ingress");
        let eps: Vec<&str> = v.endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(eps, vec!["p1", "p2", "p3"]);
        assert!(v.services.is_empty(), "no service lists ingress: no DNS there");
        // n1 sees app as before, and ingress beside it.
        let v = for_node(&s, "n1");
        assert_eq!(v.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec![ING, APP]);
        assert_eq!(v.ingress.as_ref().map(|i| i.leg), Some(ip("10.255.0.2")));
        assert_eq!(v.services.len(), 1, "web on app");
        // n4 has a task on ingress but no leg: the mesh is not its yet.
        assert_eq!(for_node(&s, "n4").ingress, None);
        // A task that runs becomes a backend; one wanted stopped leaves at once.
        let mut s = s;
        s.task_mut("p3").expect("p3").status.state = TaskState::Running;
        s.task_mut("p1").expect("p1").desired = TaskState::Shutdown;
        let b = for_node(&s, "n1").ingress.expect("ingress").services[0].backends.clone();
        assert_eq!(b, vec![ip("10.255.0.12")]);
        // No mesh anywhere while no service has ingress ports, or before the ingress network is allocated.
        let mut idle = s.clone();
        idle.services.get_mut("pub").expect("pub").ports.clear();
        assert!(all(&idle).values().all(|v| v.ingress.is_none()));
        assert_eq!(for_node(&idle, "n5").networks, vec![]);
        s.networks.get_mut(ING).expect("ingress").alloc = None;
        assert!(all(&s).values().all(|v| v.ingress.is_none()));
    }

    /// A container attached on n5 (`run --network app`): n5 gets app, its
    /// peers and the service web; the others see its endpoint; an attachment
    /// without an address yet is nowhere.
    #[test]
    fn a_container_attachment_brings_its_node_onto_the_network() {
        let mut s = world();
        let att = |id: &str, addr: Option<&str>| shoal_proto::network::Attachment {
            id: id.into(),
            node_id: "n5".into(),
            container_id: format!("{id}-container"),
            name: "probe".into(),
            network: APP.into(),
            addr: addr.map(ip),
            ..Default::default()
        };
        s.attachments.insert("a1".into(), att("a1", Some("10.0.1.20")));
        s.attachments.insert("a2".into(), att("a2", None));
        let v = for_node(&s, "n5");
        assert_eq!(v.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec![APP]);
        assert_eq!(
            v.peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(),
            vec!["n1", "n2", "n4"],
            "n3 gave no data address"
        );
        let mine: Vec<(&str, Ipv4Addr)> =
            v.endpoints.iter().filter(|e| e.node == "n5").map(|e| (e.id.as_str(), e.addr)).collect();
        assert_eq!(mine, vec![("a1", ip("10.0.1.20"))]);
        let web = v.services.iter().find(|x| x.name == "web").expect("web");
        assert_eq!(web.vip, Some(ip("10.0.1.2")));
        assert!(web.backends.contains(&ip("10.0.1.3")), "the tasks answer it");
        assert!(!web.backends.contains(&ip("10.0.1.20")), "a container is no backend");
        // The others reach it: n1 knows n5 as a peer and its endpoint.
        let v1 = for_node(&s, "n1");
        assert!(v1.peers.iter().any(|p| p.node == "n5"));
        assert!(v1.endpoints.iter().any(|e| e.id == "a1" && e.node == "n5" && e.names == ["probe"]));
        let t1 = v1.endpoints.iter().find(|e| e.id == "t1").expect("t1's endpoint");
        assert_eq!(t1.names, vec![s.tasks["t1"].container_name()], "a task is named as its container");
        let (_, peers) = usage(&s, APP);
        assert!(peers.iter().any(|p| p.0 == "n5"));
        assert_eq!(all(&s)["n5"], v);
    }

    #[test]
    fn network_usage_lists_its_services_and_nodes() {
        let s = world();
        let (services, peers) = usage(&s, APP);
        assert_eq!(services, vec![("web".to_string(), "web".to_string(), Some(ip("10.0.1.2")))]);
        let nodes: Vec<&str> = peers.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(nodes, vec!["n1", "n2", "n3", "n4"]);
        assert_eq!(peers[2].2, None, "n3 gave no data address");
    }

    #[test]
    fn a_backend_leaves_when_its_task_is_wanted_stopped() {
        let mut s = world();
        let backends = |s: &State| for_node(s, "n1").services[0].backends.clone();
        assert!(backends(&s).contains(&ip("10.0.1.4")));
        s.task_mut("t2").expect("t2").desired = TaskState::Shutdown;
        assert!(!backends(&s).contains(&ip("10.0.1.4")), "gone before the container stops");
        assert!(for_node(&s, "n1").endpoints.iter().any(|e| e.id == "t2"), "still an endpoint");
        s.nodes.get_mut("n3").expect("n3").status.state = NodeState::Down;
        assert_eq!(backends(&s), vec![ip("10.0.1.3")]);
        // Views from one pass are the per-node ones.
        let all = all(&s);
        for n in ["n1", "n2", "n4"] {
            assert_eq!(all[n], for_node(&s, n));
        }
    }
}
