//! The routing mesh on a node, the pure half (design note §7): from the
//! view's `IngressView`, what netd programs besides the ingress overlay
//! itself (which `overlay` builds like any other, with the other nodes'
//! legs as remote endpoints, and this node's leg, `overlay::plan`'s
//! `CreateLeg`).
//!
//! **The host table** `ip shoal_ing` DNATs each published port arriving
//! for a local address (from outside, or from the host itself) to one of
//! its service's backends at the port's target, over the leg:
//!
//! ```text
//! table ip shoal_ing {
//!   map pub  { type inet_proto . inet_service : verdict }      # (proto, port) -> goto ilbN (N backends)
//!   map ibe  { typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport }
//!   set masq { type inet_proto . inet_service }                 # client-ip=false ports
//!   chain ilbN { dnat ip to meta l4proto . th dport . numgen random mod N map @ibe }
//!   chain prerouting  { nat, dstnat: mark the snat ports, then vmap @pub for local addresses }
//!   chain output      { nat, -100: vmap @pub for local addresses (the host's own clients) }
//!   chain forward     { MSS clamped to the route's MTU into the leg }
//!   chain postrouting { masquerade to the leg: the host's own clients, and marked (snat) flows }
//! }
//! ```
//!
//! A remote client's address is kept (no SNAT): the backend sees it, and
//! the reply steering below sends its answer back through this node,
//! where conntrack undoes the DNAT. A port with no backend is left out of
//! `pub`, so nothing listens and the host refuses it. Backends change by
//! element batches (`host_script` with what was programmed), in one
//! transaction; the whole table is written only when netd has not
//! programmed it yet (netd's start), atomically, so conntrack keeps every
//! established flow.
//!
//! **Reply steering** `ip shoal_ingress` in each local task's namespace on
//! ingress: a new connection coming in on the ingress interface gets the
//! connection mark of the leg it came by (its source MAC is the leg's,
//! `mac_for(leg)`; mark = route table = `0x5a000000 | the leg's host bits`),
//! the task's packets of that connection carry the mark, and a rule per leg
//! routes them by a table whose default route is that leg. A UDP server
//! bound to the wildcard would answer from its default route's address:
//! its replies get the task's ingress address back before conntrack sees
//! them, so they match the flow.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use shoal_proto::net::{IngressView, NetView, Proto, mac_for};

use crate::model::EndpointSpec;
use crate::net::mac_string;

/// The host table.
pub const TABLE: &str = "shoal_ing";
/// The steering table in each task's namespace.
pub const STEER_TABLE: &str = "shoal_ingress";
/// This node's leg in the host's namespace.
pub const LEG: &str = "shing0";
/// Its peer, a port of the ingress sandbox's `br0`.
pub const LEG_PEER: &str = "shing1";
/// The connection marks (and route tables) of the legs: this | host bits.
pub const MARK_BASE: u32 = 0x5a00_0000;
/// The packet mark of a `client_ip=false` flow: masqueraded into the leg.
pub const SNAT_MARK: u32 = 0x4000;
/// The priority of the steering rules in a task's namespace.
pub const RULE_PREF: u32 = 100;
/// A new host table has `ilb1`..`ilb16`; a larger count adds its chain once.
pub const PRESET_CHAINS: usize = 16;

/// The host table's elements, as netd programs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTable {
    /// (protocol, published port) → its backend count (the chain `ilbN`).
    pub ports: BTreeMap<(Proto, u16), usize>,
    /// (protocol, published port, slot) → (backend, target port).
    pub backends: BTreeMap<(Proto, u16, usize), (Ipv4Addr, u16)>,
    /// The published ports whose flows are masqueraded (`client_ip` false).
    pub snat: BTreeSet<(Proto, u16)>,
    /// The `ilbN` chains the table has.
    pub chains: BTreeSet<usize>,
}

/// The host table `ingress` asks for (its `chains` left empty: the
/// script adds those it lacks).
pub fn host_table(ingress: &IngressView) -> HostTable {
    let mut t = HostTable::default();
    for s in &ingress.services {
        let mut backends = s.backends.clone();
        backends.sort();
        backends.dedup();
        for p in &s.ports {
            if !p.client_ip {
                t.snat.insert((p.proto, p.published));
            }
            if backends.is_empty() {
                continue; // nothing listens: the host refuses it
            }
            t.ports.insert((p.proto, p.published), backends.len());
            for (slot, b) in backends.iter().enumerate() {
                t.backends.insert((p.proto, p.published, slot), (*b, p.target));
            }
        }
    }
    t
}

/// The chains a table made from `want` (or updated to it) has.
fn chains_for(want: &HostTable, have: &BTreeSet<usize>) -> BTreeSet<usize> {
    let mut c: BTreeSet<usize> = have.clone();
    c.extend(want.ports.values().copied());
    c
}

fn ilb(n: usize) -> String {
    format!("dnat ip to meta l4proto . th dport . numgen random mod {n} map @ibe")
}

fn key(p: Proto, port: u16) -> String {
    format!("{} . {port}", p.as_str())
}

/// The nft script that brings the host table from `have` (what netd
/// programmed; None: replace whatever is there) to `want`, and the table
/// it leaves (with its chains). An empty script: nothing to do.
pub fn host_script(want: &HostTable, have: Option<&HostTable>) -> (String, HostTable) {
    let mut out = String::new();
    let Some(have) = have else {
        let chains = chains_for(want, &(1..=PRESET_CHAINS).collect());
        let _ = writeln!(out, "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
        let _ = writeln!(out, "  map pub {{ type inet_proto . inet_service : verdict; }}");
        let _ = writeln!(
            out,
            "  map ibe {{ typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport; }}"
        );
        let _ = writeln!(out, "  set masq {{ type inet_proto . inet_service; }}");
        for n in &chains {
            let _ = writeln!(out, "  chain ilb{n} {{ {}; }}", ilb(*n));
        }
        let _ = writeln!(
            out,
            "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n    \
             fib daddr type local meta l4proto . th dport @masq meta mark set meta mark or {SNAT_MARK:#x}\n    \
             fib daddr type local meta l4proto . th dport vmap @pub; }}"
        );
        let _ = writeln!(
            out,
            "  chain output {{ type nat hook output priority -100; policy accept;\n    \
             fib daddr type local meta l4proto . th dport vmap @pub; }}"
        );
        let _ = writeln!(
            out,
            "  chain forward {{ type filter hook forward priority filter; policy accept;\n    \
             oifname \"{LEG}\" tcp flags syn tcp option maxseg size set rt mtu; }}"
        );
        let _ = writeln!(
            out,
            "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{LEG}\" fib saddr type local masquerade\n    \
             oifname \"{LEG}\" meta mark and {SNAT_MARK:#x} != 0 masquerade; }}"
        );
        let _ = writeln!(out, "}}");
        let (adds, _) = elements(want, &HostTable::default());
        out.push_str(&adds);
        return (out, HostTable { chains, ..want.clone() });
    };
    let chains = chains_for(want, &have.chains);
    for n in chains.difference(&have.chains) {
        let _ = writeln!(out, "add chain ip {TABLE} ilb{n}\nadd rule ip {TABLE} ilb{n} {}", ilb(*n));
    }
    let (adds, deletes) = elements(want, have);
    out.push_str(&deletes);
    out.push_str(&adds);
    (out, HostTable { chains, ..want.clone() })
}

/// The element adds and deletes from `have` to `want` (a changed key is
/// deleted and added: the kernel refuses to re-add a key with another value).
fn elements(want: &HostTable, have: &HostTable) -> (String, String) {
    let (mut adds, mut deletes) = (String::new(), String::new());
    let mut add = |set: &str, e: String| {
        let _ = writeln!(adds, "add element ip {TABLE} {set} {{ {e} }}");
    };
    for (&(p, port), &n) in &want.ports {
        if have.ports.get(&(p, port)) != Some(&n) {
            add("pub", format!("{} : goto ilb{n}", key(p, port)));
        }
    }
    for (&(p, port, slot), &(b, target)) in &want.backends {
        if have.backends.get(&(p, port, slot)) != Some(&(b, target)) {
            add("ibe", format!("{} . {slot} : {b} . {target}", key(p, port)));
        }
    }
    for &(p, port) in want.snat.difference(&have.snat) {
        add("masq", key(p, port));
    }
    let mut del = |set: &str, e: String| {
        let _ = writeln!(deletes, "delete element ip {TABLE} {set} {{ {e} }}");
    };
    for (&(p, port), &n) in &have.ports {
        if want.ports.get(&(p, port)) != Some(&n) {
            del("pub", key(p, port));
        }
    }
    for (&(p, port, slot), v) in &have.backends {
        if want.backends.get(&(p, port, slot)) != Some(v) {
            del("ibe", format!("{} . {slot}", key(p, port)));
        }
    }
    for &(p, port) in have.snat.difference(&want.snat) {
        del("masq", key(p, port));
    }
    (adds, deletes)
}

/// One leg as a task's steering sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SteerLeg {
    pub addr: Ipv4Addr,
    /// The connection mark and the route table of flows that came by it.
    pub mark: u32,
}

/// What one local task's namespace on ingress gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// The task's interface on the ingress network.
    pub ifname: String,
    /// Its address there.
    pub addr: Ipv4Addr,
    pub legs: Vec<SteerLeg>,
}

/// The mark of a leg: `MARK_BASE` with the leg's host bits in the ingress
/// subnet of `prefix` bits.
pub fn leg_mark(leg: Ipv4Addr, prefix: u8) -> u32 {
    let host_bits = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
    MARK_BASE | (u32::from(leg) & host_bits & 0x00ff_ffff)
}

/// The steering of every local task (`endpoints` of this host) on the
/// ingress network, by namespace; none without a routing mesh.
pub fn steering(view: &NetView, endpoints: &[EndpointSpec]) -> BTreeMap<PathBuf, Steering> {
    let Some(ing) = &view.ingress else { return BTreeMap::new() };
    let Some(net) = view.networks.iter().find(|n| n.id == ing.network) else { return BTreeMap::new() };
    let mut legs: Vec<SteerLeg> =
        ing.legs.iter().map(|l| SteerLeg { addr: l.addr, mark: leg_mark(l.addr, net.prefix) }).collect();
    legs.sort();
    legs.dedup();
    endpoints
        .iter()
        .filter(|e| e.network == ing.network)
        .map(|e| (e.netns.clone(), Steering { ifname: e.ifname.clone(), addr: e.ip, legs: legs.clone() }))
        .collect()
}

/// The nft script that replaces a namespace's steering table (it changes
/// only when legs come or go; connection marks live in conntrack, so
/// replacing it keeps every flow's way back).
pub fn steer_script(s: &Steering) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {STEER_TABLE}\ndelete table ip {STEER_TABLE}\ntable ip {STEER_TABLE} {{");
    let legs: Vec<String> =
        s.legs.iter().map(|l| format!("{} : {:#010x}", mac_string(mac_for(l.addr)), l.mark)).collect();
    if legs.is_empty() {
        let _ = writeln!(out, "  map legs {{ type ether_addr : mark; }}");
    } else {
        let _ = writeln!(out, "  map legs {{ type ether_addr : mark; elements = {{ {} }} }}", legs.join(", "));
    }
    let _ = writeln!(
        out,
        "  set uflows {{ type ipv4_addr . inet_service . inet_service; flags dynamic, timeout; timeout 180s; }}"
    );
    let (i, a) = (&s.ifname, s.addr);
    let _ = writeln!(
        out,
        "  chain prerouting {{ type filter hook prerouting priority mangle; policy accept;\n    \
         iifname \"{i}\" ct state new ct mark set ether saddr map @legs; }}"
    );
    let _ = writeln!(
        out,
        "  chain prerouting_udp {{ type filter hook prerouting priority mangle + 1; policy accept;\n    \
         iifname \"{i}\" ct mark and 0xff000000 == {MARK_BASE:#x} meta l4proto udp \
         update @uflows {{ ip saddr . udp sport . udp dport }}; }}"
    );
    let _ = writeln!(
        out,
        "  chain output_udp_src {{ type route hook output priority raw; policy accept;\n    \
         meta l4proto udp ip daddr . udp dport . udp sport @uflows ip saddr != {a} ip saddr set {a}; }}"
    );
    let _ = writeln!(
        out,
        "  chain output {{ type route hook output priority mangle; policy accept;\n    \
         ct mark and 0xff000000 == {MARK_BASE:#x} meta mark set ct mark; }}"
    );
    let _ = writeln!(out, "}}");
    out
}

/// The `ip -batch` lines that route each leg's flows back by it: first
/// what goes (the rules and routes of legs in `gone`, marks programmed
/// before, and the rules about to be added, so a rerun never doubles one;
/// run with `-force`, its misses are expected), then what is added.
pub fn route_batch(s: &Steering, gone: &[u32]) -> (String, String) {
    let (mut dels, mut adds) = (String::new(), String::new());
    for m in gone {
        let _ = writeln!(dels, "rule del pref {RULE_PREF} fwmark {m:#x} lookup {m}");
        let _ = writeln!(dels, "route flush table {m}");
    }
    for l in &s.legs {
        let m = l.mark;
        let _ = writeln!(dels, "rule del pref {RULE_PREF} fwmark {m:#x} lookup {m}");
        let _ = writeln!(adds, "rule add pref {RULE_PREF} fwmark {m:#x} lookup {m}");
        let _ = writeln!(adds, "route replace default via {} dev {} table {m}", l.addr, s.ifname);
    }
    (dels, adds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::net::{IngressLeg, IngressPort, IngressService, OverlayNetwork};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn port(published: u16, target: u16, proto: Proto, client_ip: bool) -> IngressPort {
        IngressPort { published, target, proto, client_ip }
    }

    fn ingress(services: Vec<IngressService>) -> IngressView {
        IngressView {
            network: "ing".into(),
            leg: ip("10.255.0.2"),
            legs: vec![
                IngressLeg { node: "n1".into(), addr: ip("10.255.0.2") },
                IngressLeg { node: "n2".into(), addr: ip("10.255.0.3") },
            ],
            services,
        }
    }

    fn web(backends: &[&str]) -> IngressService {
        IngressService {
            id: "s1".into(),
            name: "web".into(),
            ports: vec![port(8080, 80, Proto::Tcp, true), port(8080, 53, Proto::Udp, false)],
            backends: backends.iter().map(|b| ip(b)).collect(),
        }
    }

    #[test]
    fn each_published_port_spreads_over_its_backends_at_the_target() {
        let t = host_table(&ingress(vec![web(&["10.255.0.9", "10.255.0.7"])]));
        assert_eq!(t.ports, BTreeMap::from([((Proto::Tcp, 8080), 2), ((Proto::Udp, 8080), 2)]));
        assert_eq!(t.backends[&(Proto::Tcp, 8080, 0)], (ip("10.255.0.7"), 80), "slots in address order");
        assert_eq!(t.backends[&(Proto::Tcp, 8080, 1)], (ip("10.255.0.9"), 80));
        assert_eq!(t.backends[&(Proto::Udp, 8080, 1)], (ip("10.255.0.9"), 53));
        assert_eq!(t.snat, BTreeSet::from([(Proto::Udp, 8080)]), "client-ip=false only");
        // No backend: the port is not in the table, so the host refuses it.
        let none = host_table(&ingress(vec![web(&[])]));
        assert!(none.ports.is_empty() && none.backends.is_empty());
    }

    #[test]
    fn the_whole_table_first_then_element_batches_only() {
        let want = host_table(&ingress(vec![web(&["10.255.0.7", "10.255.0.9"])]));
        let (whole, made) = host_script(&want, None);
        assert!(whole.starts_with("table ip shoal_ing\ndelete table ip shoal_ing\n"), "{whole}");
        for s in [
            "chain ilb1 { dnat ip to meta l4proto . th dport . numgen random mod 1 map @ibe; }",
            "chain ilb16 ",
            "fib daddr type local meta l4proto . th dport vmap @pub",
            "oifname \"shing0\" fib saddr type local masquerade",
            "meta mark and 0x4000 != 0 masquerade",
            "add element ip shoal_ing pub { tcp . 8080 : goto ilb2 }",
            "add element ip shoal_ing ibe { udp . 8080 . 1 : 10.255.0.9 . 53 }",
            "add element ip shoal_ing masq { udp . 8080 }",
        ] {
            assert!(whole.contains(s), "{s:?} in\n{whole}");
        }
        assert_eq!(made.chains, (1..=16).collect(), "{made:?}");
        assert_eq!(host_script(&want, Some(&made)).0, "", "unchanged: nothing");

        // A backend leaves: its slot goes, the count changes; no rule is touched.
        let less = host_table(&ingress(vec![web(&["10.255.0.7"])]));
        let (script, after) = host_script(&less, Some(&made));
        assert!(!script.contains("table ip") && !script.contains("rule"), "{script}");
        for s in [
            "delete element ip shoal_ing pub { tcp . 8080 }",
            "delete element ip shoal_ing ibe { tcp . 8080 . 1 }",
            "add element ip shoal_ing pub { tcp . 8080 : goto ilb1 }",
        ] {
            assert!(script.contains(s), "{s:?} in\n{script}");
        }
        assert!(!script.contains("ibe { tcp . 8080 . 0"), "an unchanged slot stays: {script}");
        let deletes_first = script.find("delete element").unwrap() < script.find("add element").unwrap();
        assert!(deletes_first, "a changed key is deleted, then added: {script}");

        // Seventeen backends: the chain is added once, then kept.
        let many: Vec<String> = (10..27).map(|i| format!("10.255.0.{i}")).collect();
        let many = host_table(&ingress(vec![web(&many.iter().map(String::as_str).collect::<Vec<_>>())]));
        let (script, grown) = host_script(&many, Some(&after));
        assert!(script.starts_with("add chain ip shoal_ing ilb17\nadd rule ip shoal_ing ilb17 dnat"), "{script}");
        assert!(grown.chains.contains(&17));
        assert!(!host_script(&less, Some(&grown)).0.contains("chain"), "never rewritten");

        // The service goes: its elements go, the table stays.
        let (script, _) = host_script(&HostTable::default(), Some(&made));
        assert!(script.lines().all(|l| l.starts_with("delete element")), "{script}");
    }

    #[test]
    fn marks_carry_the_legs_host_bits() {
        assert_eq!(leg_mark(ip("10.255.0.2"), 16), 0x5a00_0002);
        assert_eq!(leg_mark(ip("10.255.1.3"), 16), 0x5a00_0103);
        assert_eq!(leg_mark(ip("10.0.0.9"), 8), 0x5a00_0009);
    }

    fn view() -> NetView {
        NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.1"),
            networks: vec![OverlayNetwork {
                id: "ing".into(),
                name: "ingress".into(),
                vni: 4096,
                subnet: ip("10.255.0.0"),
                prefix: 16,
                gateway: ip("10.255.0.1"),
                mtu: 1450,
                internal: false,
                encrypted: false,
                macvlan: None,
            }],
            peers: vec![],
            endpoints: vec![],
            services: vec![],
            ingress: Some(ingress(vec![web(&["10.255.0.7"])])),
            wg_port: 0,
            key_epoch: 0,
        }
    }

    fn endpoint(container: &str, network: &str, addr: &str, ifname: &str) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: String::new(),
            aliases: vec![],
            network: network.into(),
            ip: ip(addr),
            netns: format!("/run/shoal/netns/{container}").into(),
            ifname: ifname.into(),
            ports: vec![],
            dns: vec![],
        }
    }

    #[test]
    fn every_local_task_on_ingress_is_steered_by_every_leg() {
        let eps = [endpoint("c1", "ing", "10.255.0.7", "eth1"), endpoint("c2", "app", "10.0.1.2", "eth0")];
        let s = steering(&view(), &eps);
        let legs = vec![
            SteerLeg { addr: ip("10.255.0.2"), mark: 0x5a00_0002 },
            SteerLeg { addr: ip("10.255.0.3"), mark: 0x5a00_0003 },
        ];
        let want = Steering { ifname: "eth1".into(), addr: ip("10.255.0.7"), legs };
        assert_eq!(s, BTreeMap::from([(PathBuf::from("/run/shoal/netns/c1"), want.clone())]));
        assert!(steering(&NetView { ingress: None, ..view() }, &eps).is_empty(), "no mesh, no steering");

        let script = steer_script(&want);
        for s in [
            "map legs { type ether_addr : mark; elements = { 02:42:0a:ff:00:02 : 0x5a000002, 02:42:0a:ff:00:03 : 0x5a000003 } }",
            "iifname \"eth1\" ct state new ct mark set ether saddr map @legs",
            "ip saddr != 10.255.0.7 ip saddr set 10.255.0.7",
            "ct mark and 0xff000000 == 0x5a000000 meta mark set ct mark",
        ] {
            assert!(script.contains(s), "{s:?} in\n{script}");
        }
        let (dels, adds) = route_batch(&want, &[0x5a00_0009]);
        assert!(
            dels.starts_with("rule del pref 100 fwmark 0x5a000009 lookup 1509949449\nroute flush table 1509949449\n")
        );
        assert!(dels.contains("rule del pref 100 fwmark 0x5a000002 lookup 1509949442\n"), "{dels}");
        assert!(adds.contains("rule add pref 100 fwmark 0x5a000002 lookup 1509949442\n"), "{adds}");
        assert!(adds.contains("route replace default via 10.255.0.3 dev eth1 table 1509949443\n"), "{adds}");
    }
}
