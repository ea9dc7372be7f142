//! The planner: desired state and what the kernel shows → the actions that
//! make them agree. Pure, so every case is a table test; `sys` applies the
//! actions with idempotent operations. Order matters and is fixed here:
//! stale endpoints go first (their addresses may be reused), then bridges
//! are made right, then endpoints are added, then stale bridges go, and the
//! netfilter rules are replaced last, whole, in one batch.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::model::{Desired, EndpointSpec, LinkKind, ObservedLink, bridge_name, is_ours, veth_name};
use crate::rules;

// A pass's plan, applied and dropped: the endpoint a create carries (with its
// --dns servers) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Removes a link netd created (its veth peer goes with it).
    DeleteLink {
        name: String,
    },
    CreateBridge {
        name: String,
        mtu: u32,
    },
    SetMtu {
        name: String,
        mtu: u32,
    },
    AddAddress {
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    DelAddress {
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    SetUp {
        name: String,
    },
    /// A veth pair: `host` enslaved to `bridge`, its peer made in the
    /// endpoint's namespace as its ifname with the address, the MAC derived
    /// from it, the MTU and a default route via the gateway (none on an
    /// internal network).
    CreateEndpoint {
        host: String,
        bridge: String,
        endpoint: EndpointSpec,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        mtu: u32,
    },
    SetMaster {
        name: String,
        master: String,
    },
    /// Replaces netd's netfilter table with this ruleset (nft syntax).
    ApplyRules {
        ruleset: String,
    },
}

/// The actions that bring `observed` (links) and `current_rules` (netd's
/// table as last applied, if known) to `desired`.
pub fn plan(desired: &Desired, observed: &[ObservedLink], current_rules: Option<&str>) -> Vec<Action> {
    let find = |name: &str| observed.iter().find(|l| l.name == name);
    let mut actions = Vec::new();

    let wanted_bridges: BTreeSet<String> = desired.networks.iter().map(|n| bridge_name(&n.id)).collect();
    let wanted_veths: BTreeSet<String> = desired
        .endpoints
        .iter()
        .filter(|e| desired.network(&e.network).is_some())
        .map(|e| veth_name(&e.container, &e.network))
        .collect();

    // 1. Stale endpoints (ours, not wanted, or not a veth any more).
    for l in observed.iter().filter(|l| is_ours(&l.name) && l.name.starts_with("shv")) {
        if !wanted_veths.contains(&l.name) || l.kind != LinkKind::Veth {
            actions.push(Action::DeleteLink { name: l.name.clone() });
        }
    }

    // 2. Bridges, made right.
    for n in &desired.networks {
        let name = bridge_name(&n.id);
        let want_addr = (n.gateway, n.subnet.prefix());
        match find(&name) {
            Some(l) if l.kind == LinkKind::Bridge => {
                if l.mtu != n.mtu {
                    actions.push(Action::SetMtu { name: name.clone(), mtu: n.mtu });
                }
                for &(addr, prefix) in l.addrs.iter().filter(|a| **a != want_addr) {
                    actions.push(Action::DelAddress { name: name.clone(), addr, prefix });
                }
                if !l.addrs.contains(&want_addr) {
                    actions.push(Action::AddAddress { name: name.clone(), addr: n.gateway, prefix: n.subnet.prefix() });
                }
                if !l.up {
                    actions.push(Action::SetUp { name: name.clone() });
                }
            }
            other => {
                if other.is_some() {
                    actions.push(Action::DeleteLink { name: name.clone() });
                }
                actions.push(Action::CreateBridge { name: name.clone(), mtu: n.mtu });
                actions.push(Action::AddAddress { name: name.clone(), addr: n.gateway, prefix: n.subnet.prefix() });
                actions.push(Action::SetUp { name: name.clone() });
            }
        }
    }

    // 3. Endpoints.
    for e in &desired.endpoints {
        let Some(n) = desired.network(&e.network) else { continue };
        let host = veth_name(&e.container, &e.network);
        let bridge = bridge_name(&n.id);
        match find(&host) {
            Some(l) if l.kind == LinkKind::Veth => {
                if l.master.as_deref() != Some(bridge.as_str()) {
                    actions.push(Action::SetMaster { name: host.clone(), master: bridge.clone() });
                }
                if l.mtu != n.mtu {
                    actions.push(Action::SetMtu { name: host.clone(), mtu: n.mtu });
                }
                if !l.up {
                    actions.push(Action::SetUp { name: host.clone() });
                }
            }
            _ => actions.push(Action::CreateEndpoint {
                host,
                bridge,
                endpoint: e.clone(),
                prefix: n.subnet.prefix(),
                gateway: (!n.internal).then_some(n.gateway),
                mtu: n.mtu,
            }),
        }
    }

    // 4. Stale bridges.
    for l in
        observed.iter().filter(|l| is_ours(&l.name) && l.name.starts_with("shbr") && !wanted_bridges.contains(&l.name))
    {
        actions.push(Action::DeleteLink { name: l.name.clone() });
    }

    // 5. Rules, whole.
    let ruleset = rules::ruleset(desired);
    if current_rules != Some(ruleset.as_str()) {
        actions.push(Action::ApplyRules { ruleset });
    }
    actions
}

/// The host's links once `actions` (a plan against `observed`) are carried
/// out, when all they change is what this follows: new endpoints' host
/// veths (up, on their bridge, at the network's MTU, as `CreateEndpoint`
/// leaves them) and the rules, which no link shows. None for any other
/// step: then the next pass observes. A host pass plans against this
/// rather than a dump of every link while the passes only add endpoints.
pub fn after(observed: &[ObservedLink], actions: &[Action]) -> Option<Vec<ObservedLink>> {
    let mut links = observed.to_vec();
    for a in actions {
        match a {
            Action::CreateEndpoint { host, bridge, mtu, .. } => links.push(ObservedLink {
                name: host.clone(),
                kind: LinkKind::Veth,
                master: Some(bridge.clone()),
                mtu: *mtu,
                up: true,
                addrs: vec![],
            }),
            Action::ApplyRules { .. } => {}
            _ => return None,
        }
    }
    Some(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkSpec, PortMap, Proto};

    fn net(id: &str, subnet: &str) -> NetworkSpec {
        let subnet: crate::net::Subnet = subnet.parse().unwrap();
        NetworkSpec {
            id: id.into(),
            name: format!("n-{id}"),
            gateway: subnet.nth(1).unwrap(),
            subnet,
            internal: false,
            icc: true,
            mtu: 1500,
        }
    }

    fn ep(container: &str, network: &str, ip: &str) -> EndpointSpec {
        EndpointSpec {
            name: String::new(),
            aliases: vec![],
            container: container.into(),
            network: network.into(),
            ip: ip.parse().unwrap(),
            netns: format!("/run/shoal/netns/{container}").into(),
            ifname: "eth0".into(),
            ports: vec![],
            dns: vec![],
        }
    }

    fn link(name: &str, kind: LinkKind, master: Option<&str>, addrs: &[(&str, u8)]) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            kind,
            master: master.map(String::from),
            mtu: 1500,
            up: true,
            addrs: addrs.iter().map(|(a, p)| (a.parse().unwrap(), *p)).collect(),
        }
    }

    fn without_rules(actions: Vec<Action>) -> Vec<Action> {
        actions.into_iter().filter(|a| !matches!(a, Action::ApplyRules { .. })).collect()
    }

    #[test]
    fn from_nothing_everything_is_created_in_order() {
        let d = Desired {
            networks: vec![net("aaaaaaaaaaaa", "10.5.0.0/24")],
            endpoints: vec![ep("c1c1c1c1c1c1", "aaaaaaaaaaaa", "10.5.0.2")],
        };
        let a = plan(&d, &[], None);
        assert_eq!(a[0], Action::CreateBridge { name: "shbraaaaaaaaaaa".into(), mtu: 1500 });
        assert_eq!(
            a[1],
            Action::AddAddress { name: "shbraaaaaaaaaaa".into(), addr: "10.5.0.1".parse().unwrap(), prefix: 24 }
        );
        assert_eq!(a[2], Action::SetUp { name: "shbraaaaaaaaaaa".into() });
        assert!(
            matches!(&a[3], Action::CreateEndpoint { host, gateway: Some(_), prefix: 24, .. } if host == "shvc1c1c1aaaaa")
        );
        assert!(matches!(a[4], Action::ApplyRules { .. }));
        assert_eq!(a.len(), 5);
    }

    #[test]
    fn a_converged_host_needs_nothing() {
        let d = Desired {
            networks: vec![net("aaaaaaaaaaaa", "10.5.0.0/24")],
            endpoints: vec![ep("c1c1c1c1c1c1", "aaaaaaaaaaaa", "10.5.0.2")],
        };
        let observed = vec![
            link("eth0", LinkKind::Other, None, &[("10.98.0.1", 24)]),
            link("shbraaaaaaaaaaa", LinkKind::Bridge, None, &[("10.5.0.1", 24)]),
            link("shvc1c1c1aaaaa", LinkKind::Veth, Some("shbraaaaaaaaaaa"), &[]),
        ];
        let rules = rules::ruleset(&d);
        assert_eq!(plan(&d, &observed, Some(&rules)), vec![]);
    }

    #[test]
    fn drift_is_repaired_and_strangers_left_alone() {
        let d = Desired {
            networks: vec![net("aaaaaaaaaaaa", "10.5.0.0/24")],
            endpoints: vec![ep("c1c1c1c1c1c1", "aaaaaaaaaaaa", "10.5.0.2")],
        };
        let mut bridge = link("shbraaaaaaaaaaa", LinkKind::Bridge, None, &[("10.5.0.9", 24)]);
        bridge.up = false;
        bridge.mtu = 9000;
        let observed = vec![
            link("docker0", LinkKind::Bridge, None, &[("172.17.0.1", 16)]),
            bridge,
            link("shvc1c1c1aaaaa", LinkKind::Veth, None, &[]),
            link("shv999999bbbbb", LinkKind::Veth, Some("shbrbbbbbbbbbbb"), &[]),
            link("shbrbbbbbbbbbbb", LinkKind::Bridge, None, &[]),
        ];
        let a = without_rules(plan(&d, &observed, None));
        let b = "shbraaaaaaaaaaa".to_string();
        assert_eq!(
            a,
            vec![
                Action::DeleteLink { name: "shv999999bbbbb".into() },
                Action::SetMtu { name: b.clone(), mtu: 1500 },
                Action::DelAddress { name: b.clone(), addr: "10.5.0.9".parse().unwrap(), prefix: 24 },
                Action::AddAddress { name: b.clone(), addr: "10.5.0.1".parse().unwrap(), prefix: 24 },
                Action::SetUp { name: b.clone() },
                Action::SetMaster { name: "shvc1c1c1aaaaa".into(), master: b },
                Action::DeleteLink { name: "shbrbbbbbbbbbbb".into() },
            ]
        );
        assert!(!a.iter().any(|x| matches!(x, Action::DeleteLink { name } if name == "docker0")));
    }

    #[test]
    fn internal_networks_get_no_default_route_and_ports_reach_the_rules() {
        let mut n = net("cccccccccccc", "10.6.0.0/24");
        n.internal = true;
        let d = Desired { networks: vec![n], endpoints: vec![ep("d1d1d1d1d1d1", "cccccccccccc", "10.6.0.2")] };
        assert!(plan(&d, &[], None).iter().any(|x| matches!(x, Action::CreateEndpoint { gateway: None, .. })));
        let mut e = ep("d1d1d1d1d1d1", "eeeeeeeeeeee", "10.7.0.2");
        e.ports.push(PortMap { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp });
        let d = Desired { networks: vec![net("eeeeeeeeeeee", "10.7.0.0/24")], endpoints: vec![e] };
        let a = plan(&d, &[], None);
        let Some(Action::ApplyRules { ruleset }) = a.last() else { panic!("rules last") };
        assert!(ruleset.contains("tcp dport 8080 dnat to 10.7.0.2:80"), "{ruleset}");
    }

    #[test]
    fn after_new_endpoints_the_plan_against_what_follows_is_empty() {
        let n = net("aaaaaaaaaaaa", "10.5.0.0/24");
        let bridge = link("shbraaaaaaaaaaa", LinkKind::Bridge, None, &[("10.5.0.1", 24)]);
        let one =
            Desired { networks: vec![n.clone()], endpoints: vec![ep("c1c1c1c1c1c1", "aaaaaaaaaaaa", "10.5.0.2")] };
        let observed = vec![link("eth0", LinkKind::Other, None, &[("10.98.0.1", 24)]), bridge.clone()];
        let first = plan(&one, &observed, None);
        let known = after(&observed, &first).expect("an endpoint and the rules are followed");
        let rules = rules::ruleset(&one);
        assert_eq!(plan(&one, &known, Some(&rules)), vec![], "what the pass left needs nothing more");
        // Two more endpoints on top of what is known: the same again.
        let mut three = one.clone();
        three.endpoints.push(ep("c2c2c2c2c2c2", "aaaaaaaaaaaa", "10.5.0.3"));
        three.endpoints.push(ep("c3c3c3c3c3c3", "aaaaaaaaaaaa", "10.5.0.4"));
        let next = plan(&three, &known, Some(&rules));
        assert_eq!(next.iter().filter(|a| matches!(a, Action::CreateEndpoint { .. })).count(), 2);
        let known = after(&known, &next).expect("followed");
        assert_eq!(plan(&three, &known, Some(&rules::ruleset(&three))), vec![]);
        assert_eq!(known.len(), observed.len() + 3);
    }

    #[test]
    fn after_any_other_step_the_next_pass_observes() {
        let l = |name: &str| link(name, LinkKind::Veth, None, &[]);
        for a in [
            Action::DeleteLink { name: "shv1".into() },
            Action::CreateBridge { name: "shbr1".into(), mtu: 1500 },
            Action::SetMtu { name: "shv1".into(), mtu: 1400 },
            Action::AddAddress { name: "shbr1".into(), addr: "10.5.0.1".parse().unwrap(), prefix: 24 },
            Action::DelAddress { name: "shbr1".into(), addr: "10.5.0.1".parse().unwrap(), prefix: 24 },
            Action::SetUp { name: "shv1".into() },
            Action::SetMaster { name: "shv1".into(), master: "shbr1".into() },
        ] {
            assert_eq!(after(&[l("shv1")], &[Action::ApplyRules { ruleset: String::new() }, a.clone()]), None, "{a:?}");
        }
        assert_eq!(after(&[l("shv1")], &[]), Some(vec![l("shv1")]), "nothing done: as observed");
    }

    #[test]
    fn an_endpoint_on_an_unknown_network_is_skipped() {
        let d = Desired { networks: vec![], endpoints: vec![ep("e1e1e1e1e1e1", "nope", "10.7.0.2")] };
        assert_eq!(without_rules(plan(&d, &[], None)), vec![]);
    }
}
