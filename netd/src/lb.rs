//! Client-side VIP load balancing without IPVS, the pure half: in every
//! container's network namespace that shares a network with a `vip`-mode
//! service, an nft table `ip shoal_lb` DNATs every packet to a VIP (TCP,
//! UDP, ICMP echo: Docker's "every port") to one of the service's backends,
//! picked by `numgen random` over a map of dense slots:
//!
//! ```text
//! table ip shoal_lb {
//!   map svc   { type ipv4_addr : verdict }          # VIP -> goto lbN (N = its backend count)
//!   map be    { typeof ip daddr . numgen random mod 1 : ip daddr }   # (VIP, slot) -> backend
//!   set empty { type ipv4_addr }                    # VIPs with no backend: refused at once
//!   chain lbN { dnat ip to ip daddr . numgen random mod N map @be }  # one per N in use
//!   chain output        { type nat hook output priority -100; ip daddr vmap @svc }
//!   chain output_filter { type filter hook output priority -110;
//!                         ip daddr @empty reject (tcp reset for TCP) }
//! }
//! ```
//!
//! The rules never change with the backends: a backend coming or going is
//! element changes only (`be` slots, `svc`'s `goto lbN`, `empty`), in one
//! transaction; the table is made with a chain for each count in use, and
//! a chain for another count is added (never rewritten) in the batch that
//! first uses it. Slots stay dense (0..N) and move as little as they
//! can: a backend keeps its slot while it is below the new count; the freed
//! slots take the backends from above it, then the new ones. The whole table
//! is written only when it is absent or not netd's shape. Established flows
//! keep their backend (the NAT binding lives in conntrack), which is the
//! draining of a task the managers stopped.
//!
//! `random` rather than `inc`: the `lbN` chains are shared by every service
//! with N backends, so one round-robin counter could lock two services that
//! are called in turn onto fixed slots. `plan` is pure and table-tested;
//! `lb_sys` observes the table and applies the plan in a namespace as one
//! nf_tables netlink batch (`nft_table`, `nft_elems`: the requests `nft -f`
//! would send for the plan's script, which stays its readable form).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use shoal_proto::net::NetView;
use shoal_proto::network::EndpointMode;

use crate::model::EndpointSpec;

/// The table netd owns in each container's namespace.
pub const TABLE: &str = "shoal_lb";
// A table has the chains `lbN` of the counts it was made with and of those
// its changes went through, and no others: a chain is a rule with a map
// lookup the kernel makes, binds and validates, and with changes sent over
// netlink a new count's chain costs nothing apart from that (it rides in
// the count's element batch). When each change was an `nft` run, tables
// were made with `lb1`..`lb16` and a larger count added the chains up to
// its power of two; over a burst of starts on an overlay that was ~128
// rules in every container namespace, most of them never used.

/// A VIP and the addresses it spreads over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbService {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// The services a container on `networks` (cluster network ids) balances:
/// the view's `vip`-mode services with an allocated VIP on those networks.
/// `dnsrr` services have no VIP: DNS alone spreads them.
pub fn services_for(view: &NetView, networks: &[&str]) -> Vec<LbService> {
    let mut out: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for s in view.services.iter().filter(|s| s.mode == EndpointMode::Vip && networks.contains(&s.network.as_str())) {
        if let Some(vip) = s.vip {
            out.entry(vip).or_default().extend(s.backends.iter().copied());
        }
    }
    out.into_iter().map(|(vip, b)| LbService { vip, backends: b.into_iter().collect() }).collect()
}

/// What each container namespace balances: for every namespace with an
/// endpoint on one of the view's networks, `services_for` its cluster
/// networks. Namespaces with no such endpoint are absent (their table, if
/// one was made, is for `lb_sys::Balancers` to remove).
pub fn by_namespace(view: &NetView, endpoints: &[EndpointSpec]) -> BTreeMap<PathBuf, Vec<LbService>> {
    let mut nets: BTreeMap<PathBuf, Vec<&str>> = BTreeMap::new();
    for e in endpoints.iter().filter(|e| view.networks.iter().any(|n| n.id == e.network)) {
        nets.entry(e.netns.clone()).or_default().push(e.network.as_str());
    }
    nets.into_iter().map(|(netns, networks)| (netns, services_for(view, &networks))).collect()
}

/// What a `shoal_lb` table holds: observed from the kernel or planned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elements {
    /// VIP → the backend count of the chain it jumps to (`goto lbN`).
    pub svc: BTreeMap<Ipv4Addr, u32>,
    /// (VIP, slot) → backend.
    pub be: BTreeMap<(Ipv4Addr, u32), Ipv4Addr>,
    /// VIPs with no backend.
    pub empty: BTreeSet<Ipv4Addr>,
    /// The N of every `lbN` chain present.
    pub chains: BTreeSet<u32>,
}

/// What to do to one namespace's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The whole change as an `nft -f` script; empty when the table is
    /// already right. The readable form of the batch `lb_sys` sends over
    /// netlink (`nft_table`: the same requests `nft -f` would send): the
    /// table whole (`want`), or the `new_chains`, then `delete`, `add`.
    pub script: String,
    /// Whether the script writes the whole table (absent or misshapen)
    /// rather than changing elements.
    pub whole: bool,
    /// The `lbN` chains the change adds to an existing table.
    pub new_chains: BTreeSet<u32>,
    /// Elements to delete (by key) from an existing table, then those to add.
    pub delete: Elements,
    pub add: Elements,
    /// The table once the script ran.
    pub want: Elements,
    /// Backends no VIP maps to any more: their flows from this namespace
    /// may be flushed from conntrack once their tasks are gone.
    pub removed: Vec<Ipv4Addr>,
}

impl Plan {
    /// Whether the change has structure (the table written whole, or a
    /// chain added). Else it is element changes only.
    pub fn has_structure(&self) -> bool {
        self.whole || !self.new_chains.is_empty()
    }
}

/// The script that makes the table in one namespace hold `services`, given
/// what it holds now (`None`: no table, or not one of netd's shape).
pub fn plan(services: &[LbService], current: Option<&Elements>) -> Plan {
    let want = desired(services, current);
    let removed = match current {
        Some(cur) => {
            let still: BTreeSet<Ipv4Addr> = want.be.values().copied().collect();
            let gone: BTreeSet<Ipv4Addr> = cur.be.values().copied().filter(|b| !still.contains(b)).collect();
            gone.into_iter().collect()
        }
        None => vec![],
    };
    match current {
        None if services.is_empty() => Plan::nothing(want, removed),
        None => Plan { script: whole_table(&want), whole: true, ..Plan::nothing(want, removed) },
        Some(cur) => {
            let (new_chains, delete, add) = changes(cur, &want);
            let script = batch(&new_chains, &delete, &add);
            Plan { script, whole: false, new_chains, delete, add, want, removed }
        }
    }
}

impl Plan {
    fn nothing(want: Elements, removed: Vec<Ipv4Addr>) -> Plan {
        Plan {
            script: String::new(),
            whole: false,
            new_chains: BTreeSet::new(),
            delete: Elements::default(),
            add: Elements::default(),
            want,
            removed,
        }
    }
}

/// The table `services` need, slots kept where `current` has them.
fn desired(services: &[LbService], current: Option<&Elements>) -> Elements {
    let mut want = Elements { chains: current.map(|c| c.chains.clone()).unwrap_or_default(), ..Default::default() };
    for s in services {
        let backends: BTreeSet<Ipv4Addr> = s.backends.iter().copied().collect();
        let n = backends.len() as u32;
        if n == 0 {
            want.empty.insert(s.vip);
            continue;
        }
        want.svc.insert(s.vip, n);
        want.chains.insert(n);
        // Slots below the new count keep their backend if it stays.
        let mut slots: BTreeMap<u32, Ipv4Addr> = BTreeMap::new();
        let mut placed: BTreeSet<Ipv4Addr> = BTreeSet::new();
        if let Some(cur) = current {
            for ((_, slot), b) in cur.be.range((s.vip, 0)..=(s.vip, u32::MAX)) {
                if *slot < n && backends.contains(b) && placed.insert(*b) {
                    slots.insert(*slot, *b);
                }
            }
        }
        // The rest, in address order (the ones moved down from above the count
        // among them), fill the free slots from 0.
        let mut rest = backends.iter().filter(|b| !placed.contains(b));
        for slot in 0..n {
            if let std::collections::btree_map::Entry::Vacant(e) = slots.entry(slot) {
                e.insert(*rest.next().expect("as many backends as slots"));
            }
        }
        want.be.extend(slots.into_iter().map(|(slot, b)| ((s.vip, slot), b)));
    }
    want
}

fn chain_rule(n: u32) -> String {
    format!("dnat ip to ip daddr . numgen random mod {n} map @be")
}

/// The table whole, replacing any table of that name in one transaction.
pub fn whole_table(e: &Elements) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(t, "  map svc {{ type ipv4_addr : verdict; }}");
    let _ = writeln!(t, "  map be {{ typeof ip daddr . numgen random mod 1 : ip daddr; }}");
    let _ = writeln!(t, "  set empty {{ type ipv4_addr; }}");
    for n in &e.chains {
        let _ = writeln!(t, "  chain lb{n} {{ {}; }}", chain_rule(*n));
    }
    let _ = writeln!(t, "  chain output {{ type nat hook output priority -100; policy accept; ip daddr vmap @svc; }}");
    let _ = writeln!(
        t,
        "  chain output_filter {{ type filter hook output priority -110; policy accept; \
         ip daddr @empty meta l4proto tcp reject with tcp reset; ip daddr @empty reject; }}"
    );
    let _ = writeln!(t, "}}");
    elements(&mut t, "add", e);
    t
}

/// Element statements for everything in `e`.
fn elements(t: &mut String, verb: &str, e: &Elements) {
    let svc: Vec<String> = e.svc.iter().map(|(vip, n)| format!("{vip} : goto lb{n}")).collect();
    let be: Vec<String> = e.be.iter().map(|((vip, slot), b)| format!("{vip} . {slot} : {b}")).collect();
    let empty: Vec<String> = e.empty.iter().map(ToString::to_string).collect();
    for (what, items) in [("be", be), ("svc", svc), ("empty", empty)] {
        if !items.is_empty() {
            let _ = writeln!(t, "{verb} element ip {TABLE} {what} {{ {} }}", items.join(", "));
        }
    }
}

/// Keys only, for deletes (a map element is deleted by its key).
fn keys(t: &mut String, e: &Elements) {
    let svc: Vec<String> = e.svc.keys().map(ToString::to_string).collect();
    let be: Vec<String> = e.be.keys().map(|(vip, slot)| format!("{vip} . {slot}")).collect();
    let empty: Vec<String> = e.empty.iter().map(ToString::to_string).collect();
    for (what, items) in [("svc", svc), ("be", be), ("empty", empty)] {
        if !items.is_empty() {
            let _ = writeln!(t, "delete element ip {TABLE} {what} {{ {} }}", items.join(", "));
        }
    }
}

/// From `cur` to `want`: the missing chains, the elements to delete (what
/// goes or changes value: the kernel refuses to add a key with another
/// value), the elements to add.
fn changes(cur: &Elements, want: &Elements) -> (BTreeSet<u32>, Elements, Elements) {
    let new_chains = want.chains.difference(&cur.chains).copied().collect();
    let del = Elements {
        svc: cur.svc.iter().filter(|(k, v)| want.svc.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        be: cur.be.iter().filter(|(k, v)| want.be.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        empty: cur.empty.difference(&want.empty).copied().collect(),
        chains: BTreeSet::new(),
    };
    let add = Elements {
        svc: want.svc.iter().filter(|(k, v)| cur.svc.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        be: want.be.iter().filter(|(k, v)| cur.be.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        empty: want.empty.difference(&cur.empty).copied().collect(),
        chains: BTreeSet::new(),
    };
    (new_chains, del, add)
}

/// The change as one script (so one transaction): missing chains, then
/// deletes, then adds.
fn batch(new_chains: &BTreeSet<u32>, del: &Elements, add: &Elements) -> String {
    let mut t = String::new();
    for n in new_chains {
        let _ = writeln!(t, "add chain ip {TABLE} lb{n}\nadd rule ip {TABLE} lb{n} {}", chain_rule(*n));
    }
    keys(&mut t, del);
    elements(&mut t, "add", add);
    t
}

/// Reads `nft -j list table ip shoal_lb`: None when the table lacks a part
/// of netd's shape (then `plan` writes it whole); an error for what is not
/// nft's JSON at all. netd itself reads the table over netlink
/// (`nft_table::Reader`, which gives the same); this reads what users see,
/// and tests hold the two to each other.
pub fn parse_json(json: &str) -> Result<Option<Elements>, String> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft's JSON: {e}"))?;
    let items = v.get("nftables").and_then(Value::as_array).ok_or("nft's JSON: no \"nftables\" list")?;
    let mut e = Elements::default();
    let (mut maps, mut hooks) = (BTreeSet::new(), BTreeSet::new());
    let ip = |v: &Value| v.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok());
    let bad = |what: &str, x: &Value| format!("nft's JSON: unexpected {what} element {x}");
    for item in items {
        if let Some(c) = item.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(n) = name.strip_prefix("lb").and_then(|n| n.parse::<u32>().ok()) {
                e.chains.insert(n);
            } else {
                hooks.insert(name.to_string());
            }
            continue;
        }
        let Some((kind, m)) = item.get("map").map(|m| ("map", m)).or_else(|| item.get("set").map(|s| ("set", s)))
        else {
            continue;
        };
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        maps.insert(format!("{kind} {name}"));
        let elems = m.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
        for x in &elems {
            match name {
                "svc" => {
                    let vip = x.get(0).and_then(ip).ok_or_else(|| bad("svc", x))?;
                    let target = x.get(1).and_then(|v| v.get("goto")).and_then(|g| g.get("target"));
                    let n = target
                        .and_then(Value::as_str)
                        .and_then(|t| t.strip_prefix("lb"))
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| bad("svc", x))?;
                    e.svc.insert(vip, n);
                }
                "be" => {
                    let key = x.get(0).and_then(|k| k.get("concat")).ok_or_else(|| bad("be", x))?;
                    let vip = key.get(0).and_then(ip).ok_or_else(|| bad("be", x))?;
                    let slot = key.get(1).and_then(Value::as_u64).ok_or_else(|| bad("be", x))?;
                    let b = x.get(1).and_then(ip).ok_or_else(|| bad("be", x))?;
                    e.be.insert((vip, u32::try_from(slot).map_err(|_| bad("be", x))?), b);
                }
                "empty" => {
                    e.empty.insert(ip(x).ok_or_else(|| bad("empty", x))?);
                }
                _ => {}
            }
        }
    }
    let shaped = ["map svc", "map be", "set empty"].iter().all(|m| maps.contains(*m))
        && ["output", "output_filter"].iter().all(|h| hooks.contains(*h));
    Ok(shaped.then_some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::net::ViewService;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(vip: &str, backends: &[&str]) -> LbService {
        LbService { vip: ip(vip), backends: backends.iter().map(|b| ip(b)).collect() }
    }

    /// (VIP, slot) → backend, as a list for compact tables.
    fn slots(e: &Elements, vip: &str) -> Vec<Ipv4Addr> {
        e.be.range((ip(vip), 0)..=(ip(vip), u32::MAX)).map(|(_, b)| *b).collect()
    }

    #[test]
    fn a_fresh_table_is_written_whole() {
        let p = plan(&[svc("10.10.0.100", &["10.10.0.13", "10.10.0.12"]), svc("10.10.0.101", &[])], None);
        assert!(p.whole);
        assert!(
            p.script.starts_with("table ip shoal_lb\ndelete table ip shoal_lb\ntable ip shoal_lb {\n"),
            "{}",
            p.script
        );
        assert!(
            p.script.contains("  chain lb2 { dnat ip to ip daddr . numgen random mod 2 map @be; }\n"),
            "{}",
            p.script
        );
        assert_eq!(p.script.matches("  chain lb").count(), 1, "only the count in use: {}", p.script);
        assert!(
            p.script.contains(
                "add element ip shoal_lb be { 10.10.0.100 . 0 : 10.10.0.12, 10.10.0.100 . 1 : 10.10.0.13 }\n"
            ),
            "{}",
            p.script
        );
        assert!(p.script.contains("add element ip shoal_lb svc { 10.10.0.100 : goto lb2 }\n"), "{}", p.script);
        assert!(p.script.contains("add element ip shoal_lb empty { 10.10.0.101 }\n"), "{}", p.script);
        assert_eq!(p.removed, Vec::<Ipv4Addr>::new());
        // No services and no table: nothing to write.
        assert_eq!(plan(&[], None).script, "");
        let wide: Vec<String> = (0..20).map(|i| format!("10.10.1.{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let p = plan(&[svc("10.10.0.100", &wide), svc("10.10.0.101", &wide[..3])], None);
        assert_eq!(p.want.chains, BTreeSet::from([3, 20]), "the counts in use");
    }

    #[test]
    fn the_view_gives_each_container_its_networks_vips() {
        let s = |id: &str, net: &str, mode, vip: Option<&str>, backends: &[&str]| ViewService {
            id: id.into(),
            name: id.into(),
            network: net.into(),
            mode,
            vip: vip.map(ip),
            aliases: vec![],
            backends: backends.iter().map(|b| ip(b)).collect(),
        };
        let view = NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.1"),
            networks: vec![],
            peers: vec![],
            endpoints: vec![],
            services: vec![
                s("web", "x", EndpointMode::Vip, Some("10.10.0.100"), &["10.10.0.3", "10.10.0.2"]),
                s("cache", "x", EndpointMode::Dnsrr, None, &["10.10.0.4"]),
                s("new", "x", EndpointMode::Vip, None, &["10.10.0.5"]),
                s("db", "y", EndpointMode::Vip, Some("10.20.0.100"), &[]),
            ],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        };
        assert_eq!(
            services_for(&view, &["x"]),
            vec![svc("10.10.0.100", &["10.10.0.2", "10.10.0.3"])],
            "dnsrr and a VIP not yet allocated are not balanced"
        );
        assert_eq!(services_for(&view, &["y", "x"]).len(), 2);
        assert_eq!(services_for(&view, &["z"]), vec![]);
        // Per namespace: the networks of its endpoints that the view has.
        let mut view = view;
        view.networks = ["x", "y"]
            .iter()
            .map(|id| shoal_proto::net::OverlayNetwork {
                id: id.to_string(),
                name: id.to_string(),
                vni: 4100,
                subnet: ip("10.10.0.0"),
                prefix: 16,
                gateway: ip("10.10.0.1"),
                mtu: 1450,
                internal: false,
                encrypted: false,
                macvlan: None,
            })
            .collect();
        let ep = |netns: &str, network: &str| EndpointSpec {
            container: netns.into(),
            name: String::new(),
            aliases: vec![],
            network: network.into(),
            ip: ip("10.10.0.9"),
            netns: netns.into(),
            ifname: "eth0".into(),
            ports: vec![],
            dns: vec![],
        };
        let eps = [ep("/ns/a", "x"), ep("/ns/b", "x"), ep("/ns/b", "y"), ep("/ns/c", "local"), ep("/ns/d", "y")];
        let by = by_namespace(&view, &eps);
        assert_eq!(by.keys().collect::<Vec<_>>(), ["/ns/a", "/ns/b", "/ns/d"], "c is on no cluster network");
        assert_eq!(by[&PathBuf::from("/ns/a")], vec![svc("10.10.0.100", &["10.10.0.2", "10.10.0.3"])]);
        assert_eq!(by[&PathBuf::from("/ns/b")].len(), 2);
        assert_eq!(by[&PathBuf::from("/ns/d")], vec![svc("10.20.0.100", &[])], "an idle VIP still refuses");
    }

    /// Backends come and go: elements change (and a count's chain, the first
    /// time it is used), slots stay dense and move least.
    #[test]
    fn churn_is_element_batches_with_dense_slots() {
        struct Step {
            what: &'static str,
            backends: &'static [&'static str],
            /// The slots after the step, in slot order.
            slots: &'static [&'static str],
            /// The batch, line by line.
            script: &'static [&'static str],
            removed: &'static [&'static str],
        }
        let steps = [
            Step {
                what: "a third backend: one new slot, lb3 made in the batch",
                backends: &["10.10.0.12", "10.10.0.13", "10.10.0.14"],
                slots: &["10.10.0.12", "10.10.0.13", "10.10.0.14"],
                script: &[
                    "add chain ip shoal_lb lb3",
                    "add rule ip shoal_lb lb3 dnat ip to ip daddr . numgen random mod 3 map @be",
                    "delete element ip shoal_lb svc { 10.10.0.100 }",
                    "add element ip shoal_lb be { 10.10.0.100 . 2 : 10.10.0.14 }",
                    "add element ip shoal_lb svc { 10.10.0.100 : goto lb3 }",
                ],
                removed: &[],
            },
            Step {
                what: "the first goes: the last slot moves into slot 0",
                backends: &["10.10.0.13", "10.10.0.14"],
                slots: &["10.10.0.14", "10.10.0.13"],
                script: &[
                    "delete element ip shoal_lb svc { 10.10.0.100 }",
                    "delete element ip shoal_lb be { 10.10.0.100 . 0, 10.10.0.100 . 2 }",
                    "add element ip shoal_lb be { 10.10.0.100 . 0 : 10.10.0.14 }",
                    "add element ip shoal_lb svc { 10.10.0.100 : goto lb2 }",
                ],
                removed: &["10.10.0.12"],
            },
            Step {
                what: "one replaced by another: same count, one slot rewritten, lb2 reused",
                backends: &["10.10.0.13", "10.10.0.15"],
                slots: &["10.10.0.15", "10.10.0.13"],
                script: &[
                    "delete element ip shoal_lb be { 10.10.0.100 . 0 }",
                    "add element ip shoal_lb be { 10.10.0.100 . 0 : 10.10.0.15 }",
                ],
                removed: &["10.10.0.14"],
            },
            Step {
                what: "unchanged: nothing",
                backends: &["10.10.0.15", "10.10.0.13"],
                slots: &["10.10.0.15", "10.10.0.13"],
                script: &[],
                removed: &[],
            },
            Step {
                what: "three back: lb3 is there",
                backends: &["10.10.0.13", "10.10.0.15", "10.10.0.11"],
                slots: &["10.10.0.15", "10.10.0.13", "10.10.0.11"],
                script: &[
                    "delete element ip shoal_lb svc { 10.10.0.100 }",
                    "add element ip shoal_lb be { 10.10.0.100 . 2 : 10.10.0.11 }",
                    "add element ip shoal_lb svc { 10.10.0.100 : goto lb3 }",
                ],
                removed: &[],
            },
            Step {
                what: "all gone: the VIP refuses",
                backends: &[],
                slots: &[],
                script: &[
                    "delete element ip shoal_lb svc { 10.10.0.100 }",
                    "delete element ip shoal_lb be { 10.10.0.100 . 0, 10.10.0.100 . 1, 10.10.0.100 . 2 }",
                    "add element ip shoal_lb empty { 10.10.0.100 }",
                ],
                removed: &["10.10.0.11", "10.10.0.13", "10.10.0.15"],
            },
            Step {
                what: "one again",
                backends: &["10.10.0.16"],
                slots: &["10.10.0.16"],
                script: &[
                    "add chain ip shoal_lb lb1",
                    "add rule ip shoal_lb lb1 dnat ip to ip daddr . numgen random mod 1 map @be",
                    "delete element ip shoal_lb empty { 10.10.0.100 }",
                    "add element ip shoal_lb be { 10.10.0.100 . 0 : 10.10.0.16 }",
                    "add element ip shoal_lb svc { 10.10.0.100 : goto lb1 }",
                ],
                removed: &[],
            },
        ];
        let other = svc("10.10.0.200", &["10.10.0.50", "10.10.0.51"]);
        let first = plan(&[svc("10.10.0.100", &["10.10.0.13", "10.10.0.12"]), other.clone()], None);
        assert_eq!(first.want.chains, BTreeSet::from([2]));
        let mut cur = first.want;
        for s in steps {
            let p = plan(&[svc("10.10.0.100", s.backends), other.clone()], Some(&cur));
            assert!(!p.whole, "{}: a change, not the table whole", s.what);
            let chains = s.script.iter().filter(|l| l.starts_with("add chain")).count();
            assert_eq!(p.new_chains.len(), chains, "{}", s.what);
            assert_eq!(p.script.lines().collect::<Vec<_>>(), s.script, "{}", s.what);
            assert_eq!(slots(&p.want, "10.10.0.100"), s.slots.iter().map(|b| ip(b)).collect::<Vec<_>>(), "{}", s.what);
            assert_eq!(p.removed, s.removed.iter().map(|b| ip(b)).collect::<Vec<_>>(), "{}", s.what);
            assert_eq!(
                slots(&p.want, "10.10.0.200"),
                vec![ip("10.10.0.50"), ip("10.10.0.51")],
                "{}: untouched",
                s.what
            );
            cur = p.want;
        }
        // A new count adds its chain alone, once, in the batch (structure).
        let wide: Vec<String> = (0..17).map(|i| format!("10.10.2.{i}")).collect();
        let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
        let p = plan(&[svc("10.10.0.100", &["10.10.0.16"]), other.clone(), svc("10.10.0.201", &wide)], Some(&cur));
        assert!(
            p.script.starts_with(
                "add chain ip shoal_lb lb17\nadd rule ip shoal_lb lb17 dnat ip to ip daddr . numgen random mod 17 map @be\n"
            ),
            "{}",
            p.script
        );
        assert_eq!(p.script.matches("add chain").count(), 1, "lb17 alone: {}", p.script);
        assert_eq!(p.new_chains, BTreeSet::from([17]));
        assert!(p.has_structure());
        let (cur17, more) = (p.want, wide.iter().copied().chain(["10.10.2.100"]).collect::<Vec<_>>());
        let p = plan(&[svc("10.10.0.100", &["10.10.0.16"]), other.clone(), svc("10.10.0.201", &more)], Some(&cur17));
        assert_eq!(p.new_chains, BTreeSet::from([18]), "18 is new: {}", p.script);
        let p = plan(&[svc("10.10.0.100", &["10.10.0.16"]), other.clone(), svc("10.10.0.201", &wide)], Some(&p.want));
        assert!(!p.has_structure(), "back to 17, whose chain stays: {}", p.script);
        // A service gone from the view leaves no element behind.
        let p = plan(&[other], Some(&cur));
        assert_eq!(
            p.script.lines().collect::<Vec<_>>(),
            vec!["delete element ip shoal_lb svc { 10.10.0.100 }", "delete element ip shoal_lb be { 10.10.0.100 . 0 }",]
        );
        assert_eq!(p.removed, vec![ip("10.10.0.16")]);
    }

    #[test]
    fn shrinking_moves_only_the_slots_above_the_count() {
        let five = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
        let cur = plan(&[svc("10.9.0.1", &five)], None).want;
        // 2 and 4 go: slots 0, 2 keep 1 and 3; slot 1 takes 5 from slot 4.
        let p = plan(&[svc("10.9.0.1", &["10.0.0.1", "10.0.0.3", "10.0.0.5"])], Some(&cur));
        assert_eq!(slots(&p.want, "10.9.0.1"), vec![ip("10.0.0.1"), ip("10.0.0.5"), ip("10.0.0.3")]);
        assert!(
            p.script.contains("delete element ip shoal_lb be { 10.9.0.1 . 1, 10.9.0.1 . 3, 10.9.0.1 . 4 }"),
            "{}",
            p.script
        );
        assert!(p.script.contains("add element ip shoal_lb be { 10.9.0.1 . 1 : 10.0.0.5 }"), "{}", p.script);
        // Duplicates in the view count once.
        let p = plan(&[svc("10.9.0.1", &["10.0.0.1", "10.0.0.1"])], None);
        assert_eq!(p.want.svc, BTreeMap::from([(ip("10.9.0.1"), 1)]));
    }

    /// What `nft -j list table ip shoal_lb` printed for the note's table (nft 1.0.6).
    const JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "shoal_lb", "handle": 1}}, {"map": {"family": "ip", "name": "svc", "table": "shoal_lb", "type": "ipv4_addr", "handle": 5, "map": "verdict", "elem": [["10.10.0.100", {"goto": {"target": "lb2"}}]]}}, {"map": {"family": "ip", "name": "be", "table": "shoal_lb", "type": ["ipv4_addr", "integer"], "handle": 6, "map": "ipv4_addr", "elem": [[{"concat": ["10.10.0.100", 0]}, "10.10.0.12"], [{"concat": ["10.10.0.100", 1]}, "10.10.0.13"]]}}, {"set": {"family": "ip", "name": "empty", "table": "shoal_lb", "type": "ipv4_addr", "handle": 7, "elem": ["10.10.0.101"]}}, {"chain": {"family": "ip", "table": "shoal_lb", "name": "lb1", "handle": 1}}, {"chain": {"family": "ip", "table": "shoal_lb", "name": "lb2", "handle": 2}}, {"chain": {"family": "ip", "table": "shoal_lb", "name": "output", "handle": 3, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "shoal_lb", "name": "output_filter", "handle": 4, "type": "filter", "hook": "output", "prio": -110, "policy": "accept"}}]}"#;

    #[test]
    fn the_table_reads_back_from_nft_json() {
        let e = parse_json(JSON).unwrap().expect("netd's shape");
        assert_eq!(e.svc, BTreeMap::from([(ip("10.10.0.100"), 2)]));
        assert_eq!(
            e.be,
            BTreeMap::from([((ip("10.10.0.100"), 0), ip("10.10.0.12")), ((ip("10.10.0.100"), 1), ip("10.10.0.13"))])
        );
        assert_eq!(e.empty, BTreeSet::from([ip("10.10.0.101")]));
        assert_eq!(e.chains, BTreeSet::from([1, 2]), "what the kernel has, presets or not");
        // Read back, the same services plan nothing.
        let p = plan(&[svc("10.10.0.100", &["10.10.0.12", "10.10.0.13"]), svc("10.10.0.101", &[])], Some(&e));
        assert_eq!(p.script, "");
        // A table without its output hook is not netd's shape: written whole.
        let broken = JSON.replace("\"output_filter\"", "\"other\"");
        assert_eq!(parse_json(&broken), Ok(None));
        assert!(plan(&[svc("10.10.0.100", &["10.10.0.12"])], None).whole);
        assert!(parse_json("not json").unwrap_err().contains("nft's JSON"));
        let bad = JSON.replace("\"10.10.0.12\"]", "\"nope\"]");
        assert!(parse_json(&bad).unwrap_err().contains("unexpected be element"), "{:?}", parse_json(&bad));
    }
}
