//! netd's netfilter rules, generated whole from the desired state as one
//! nft table (`ip shoal`) and applied in one transaction that replaces the
//! table (`nft -f`): egress NAT for bridge networks, published ports (DNAT
//! from any local address, keeping the client's source address; the host's
//! own 127.0.0.1 clients are masqueraded, as Docker does without its
//! userland proxy), isolation
//! between networks, `--internal` and `icc=false`. Nothing outside the
//! table is ever flushed or changed.

use std::fmt::Write;

use crate::model::{Desired, bridge_name};

pub const TABLE: &str = "shoal";

/// The whole table, deterministic for the same desired state.
pub fn ruleset(d: &Desired) -> String {
    let mut networks = d.networks.clone();
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut ports: Vec<(String, &crate::model::PortMap)> = d
        .endpoints
        .iter()
        .filter(|e| d.network(&e.network).is_some_and(|n| !n.internal))
        .flat_map(|e| e.ports.iter().map(move |p| (e.ip.to_string(), p)))
        .collect();
    ports.sort_by(|a, b| {
        (a.1.proto, a.1.host_port, a.1.host_ip, &a.0).cmp(&(b.1.proto, b.1.host_port, b.1.host_ip, &b.0))
    });

    let mut t = String::new();
    let _ = writeln!(t, "table ip {TABLE} {{");
    // Published ports: from outside (prerouting) and from the host itself (output).
    let _ = writeln!(t, "  chain published {{");
    for (ip, p) in &ports {
        let daddr = p.host_ip.map(|h| format!("ip daddr {h} ")).unwrap_or_default();
        let _ = writeln!(t, "    {daddr}{} dport {} dnat to {ip}:{}", p.proto.as_str(), p.host_port, p.container_port);
    }
    let _ = writeln!(t, "  }}");
    let _ = writeln!(
        t,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump published\n  }}"
    );
    let _ = writeln!(
        t,
        "  chain output {{\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump published\n  }}"
    );
    // Egress: masquerade what leaves a (non-internal) network for elsewhere.
    let _ = writeln!(t, "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;");
    // The host's own loopback clients of published ports (their bridge routes 127/8: route_localnet).
    for n in networks.iter().filter(|n| !n.internal) {
        let _ = writeln!(t, "    ip saddr 127.0.0.0/8 oifname \"{}\" masquerade", bridge_name(&n.id));
    }
    for n in networks.iter().filter(|n| !n.internal) {
        let _ = writeln!(t, "    ip saddr {} oifname != \"{}\" masquerade", n.subnet, bridge_name(&n.id));
    }
    let _ = writeln!(t, "  }}");
    // Forwarding, in three passes so no network's egress accept can let traffic into
    // another: within each network (icc); then what may enter each (replies and
    // published ports, nothing for an internal one); then egress from non-internal ones.
    let _ = writeln!(t, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
    for n in &networks {
        let br = bridge_name(&n.id);
        let verdict = if n.icc { "accept" } else { "drop" };
        let _ = writeln!(t, "    iifname \"{br}\" oifname \"{br}\" {verdict}");
    }
    for n in &networks {
        let br = bridge_name(&n.id);
        if n.internal {
            let _ = writeln!(t, "    iifname \"{br}\" drop");
        } else {
            let _ = writeln!(t, "    oifname \"{br}\" ct state established,related accept");
            let _ = writeln!(t, "    oifname \"{br}\" ct status dnat accept");
        }
        let _ = writeln!(t, "    oifname \"{br}\" drop");
    }
    for n in networks.iter().filter(|n| !n.internal) {
        let _ = writeln!(t, "    iifname \"{}\" accept", bridge_name(&n.id));
    }
    let _ = writeln!(t, "  }}");
    let _ = writeln!(t, "}}");
    t
}

/// The nft script that replaces the table atomically (creating it first
/// makes the delete valid on a host that has none yet).
pub fn replace_script(ruleset: &str) -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n{ruleset}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointSpec, NetworkSpec, PortMap, Proto};

    fn net(id: &str, subnet: &str, internal: bool, icc: bool) -> NetworkSpec {
        let subnet: crate::net::Subnet = subnet.parse().unwrap();
        NetworkSpec {
            id: id.into(),
            name: id.into(),
            gateway: subnet.nth(1).unwrap(),
            subnet,
            internal,
            icc,
            mtu: 1500,
        }
    }

    #[test]
    fn the_table_says_what_each_network_allows() {
        let mut web = EndpointSpec {
            name: String::new(),
            aliases: vec![],
            container: "c1".into(),
            network: "aaaaaaaaaaaa".into(),
            ip: "10.5.0.2".parse().unwrap(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            ports: vec![
                PortMap { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                PortMap {
                    host_ip: Some("10.98.0.1".parse().unwrap()),
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp,
                },
            ],
            dns: vec![],
        };
        let mut hidden = web.clone();
        hidden.network = "bbbbbbbbbbbb".into();
        hidden.ip = "10.6.0.2".parse().unwrap();
        hidden.ports = vec![PortMap { host_ip: None, host_port: 9090, container_port: 90, proto: Proto::Tcp }];
        web.container = "c2".into();
        let d = Desired {
            networks: vec![
                net("bbbbbbbbbbbb", "10.6.0.0/24", true, true),
                net("aaaaaaaaaaaa", "10.5.0.0/24", false, false),
            ],
            endpoints: vec![web, hidden],
        };
        let r = ruleset(&d);
        assert!(r.contains("    tcp dport 8080 dnat to 10.5.0.2:80\n"), "{r}");
        assert!(r.contains("    ip daddr 10.98.0.1 udp dport 5353 dnat to 10.5.0.2:53\n"), "{r}");
        assert!(!r.contains("9090"), "an internal network publishes nothing: {r}");
        assert!(r.contains("ip saddr 10.5.0.0/24 oifname != \"shbraaaaaaaaaaa\" masquerade"), "{r}");
        assert!(!r.contains("ip saddr 10.6.0.0/24"), "an internal network has no egress: {r}");
        assert!(r.contains("iifname \"shbraaaaaaaaaaa\" oifname \"shbraaaaaaaaaaa\" drop"), "icc=false: {r}");
        assert!(r.contains("iifname \"shbrbbbbbbbbbbb\" drop\n    oifname \"shbrbbbbbbbbbbb\" drop"), "internal: {r}");
        // Every drop into a network comes before any network's egress accept.
        let last_drop = r.rfind("\" drop").unwrap();
        let first_egress = r.find("\" accept\n  }").map(|i| r[..i].rfind("iifname").unwrap()).unwrap();
        assert!(last_drop < first_egress, "{r}");
        // Deterministic: the same state gives the same text whatever the input order.
        let mut shuffled = d.clone();
        shuffled.networks.reverse();
        shuffled.endpoints.reverse();
        assert_eq!(ruleset(&shuffled), r);
        assert!(replace_script(&r).starts_with("table ip shoal\ndelete table ip shoal\ntable ip shoal {"));
    }
}
