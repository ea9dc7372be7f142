//! The embedded DNS server's pure half: the names each container may
//! resolve (a `Table` built from netd's state) and the DNS wire format it
//! needs (one question in, A/PTR answers or an empty NOERROR/NXDOMAIN out).
//! Anything the table does not know is forwarded to the host's resolvers by
//! `dnsd`, unchanged.
//!
//! A container resolves, on every user-defined network it is on, the other
//! containers' names, aliases and short ids (the predefined `bridge` has no
//! names, as in Docker). Reverse lookups of their addresses answer
//! `NAME.NETWORK`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::model::{EndpointSpec, NetworkSpec};

/// The address netd's DNS listens on in every container's namespace.
pub use shoal_proto::net::DNS_ADDR as ADDR;
/// The TTL of the answers netd gives (Docker's).
const TTL: u32 = 600;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Who may resolve what.
#[derive(Debug, Default)]
pub struct Table {
    /// network id → lower-case name → addresses (in endpoint order).
    names: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// network id → address → `name.network` (reverse lookups).
    reverse: HashMap<String, HashMap<Ipv4Addr, String>>,
    /// container id → the networks whose names it sees.
    scope: HashMap<String, Vec<String>>,
}

impl Table {
    pub fn build(networks: &[NetworkSpec], endpoints: &[EndpointSpec]) -> Table {
        let mut t = Table::default();
        for e in endpoints {
            let Some(n) = networks.iter().find(|n| n.id == e.network && n.name != "bridge") else { continue };
            t.scope.entry(e.container.clone()).or_default().push(n.id.clone());
            let names = t.names.entry(n.id.clone()).or_default();
            let short = &e.container[..e.container.len().min(12)];
            let mut own: Vec<String> = std::iter::once(e.name.as_str())
                .chain(e.aliases.iter().map(String::as_str))
                .chain([short])
                .map(str::to_ascii_lowercase)
                .collect();
            own.retain(|s| !s.is_empty());
            own.dedup();
            for name in own {
                let ips = names.entry(name).or_default();
                if !ips.contains(&e.ip) {
                    ips.push(e.ip);
                }
            }
            if !e.name.is_empty() {
                t.reverse.entry(n.id.clone()).or_default().insert(e.ip, format!("{}.{}", e.name, n.name));
            }
        }
        t
    }

    /// The addresses `name` has for `container`: None when no network it is on knows it.
    pub fn lookup(&self, container: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for n in self.scope.get(container)? {
            for ip in self.names.get(n).and_then(|m| m.get(&name)).into_iter().flatten() {
                if !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The name of `ip` for `container`, if it shares a network with it.
    pub fn reverse(&self, container: &str, ip: Ipv4Addr) -> Option<&str> {
        self.scope.get(container)?.iter().find_map(|n| self.reverse.get(n)?.get(&ip).map(String::as_str))
    }

    /// Whether netd serves DNS to this container at all.
    pub fn serves(&self, container: &str) -> bool {
        self.scope.contains_key(container)
    }
}

/// The one question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message (answers follow it).
    end: usize,
}

/// Reads the header and first question of a query; None for anything that
/// is not a plain standard query (those are forwarded as they are).
pub fn parse_query(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let (qr, opcode) = (msg[2] >> 7, (msg[2] >> 3) & 0xf);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qr != 0 || opcode != 0 || qdcount != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // a compression pointer in a question: not from a stub resolver
        }
        let label = msg.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    Some(Question { id, name: labels.join("."), qtype, qclass, end: i + 4 })
}

/// What netd answers a question with, or None to forward it.
pub fn answer(table: &Table, container: &str, query: &[u8], q: &Question) -> Option<Vec<u8>> {
    if q.qclass != CLASS_IN {
        return None;
    }
    if let Some(ip) = reverse_name(&q.name) {
        let name = table.reverse(container, ip)?;
        let rdata = encode_name(name);
        return Some(response(query, q, 0, &[(TYPE_PTR, rdata)]));
    }
    let ips = table.lookup(container, &q.name)?;
    let records: Vec<(u16, Vec<u8>)> = match q.qtype {
        TYPE_A | TYPE_ANY => ips.iter().map(|ip| (TYPE_A, ip.octets().to_vec())).collect(),
        // The name exists, with no records of this type (AAAA, MX, ...).
        _ => vec![],
    };
    Some(response(query, q, 0, &records))
}

/// A SERVFAIL for a question netd could not get answered.
pub fn servfail(query: &[u8], q: &Question) -> Vec<u8> {
    response(query, q, 2, &[])
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4.
fn reverse_name(name: &str) -> Option<Ipv4Addr> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = lower.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [d, c, b, a] = parts.as_slice() else { return None };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

/// The query's header and question, made a response with these records
/// (each named by a pointer to the question's name).
fn response(query: &[u8], q: &Question, rcode: u8, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.end + records.len() * 16);
    out.extend_from_slice(&query[..q.end]);
    // QR, the query's opcode and RD, AA, RA; the rcode.
    out[2] = 0x80 | (query[2] & 0x79) | 0x04;
    out[3] = 0x80 | rcode;
    out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    out[8..12].fill(0); // no authority or additional records (the query's EDNS is dropped)
    for (rtype, rdata) in records {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
    out
}

/// The nameservers in a resolv.conf, loopback ones included (netd
/// forwards from the host's namespace, where they answer).
pub fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()?.parse().ok()).flatten()
        })
        .collect()
}

/// A query for `name` and `qtype` (for tests and the benchmark client).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 18);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&encode_name(name));
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The rcode and the A records of a response (for tests and the benchmark client).
pub fn read_a_records(msg: &[u8]) -> Option<(u8, Vec<Ipv4Addr>)> {
    let q = parse_response_question_end(msg)?;
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut i = q;
    let mut out = Vec::new();
    for _ in 0..ancount {
        i = skip_name(msg, i)?;
        let rtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let len = u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]) as usize;
        let data = msg.get(i + 10..i + 10 + len)?;
        if rtype == TYPE_A && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some((msg[3] & 0xf, out))
}

fn parse_response_question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    Some(skip_name(msg, 12)? + 4)
}

fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + len as usize;
    }
}

pub const QTYPE_A: u16 = TYPE_A;
pub const QTYPE_AAAA: u16 = 28;

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, name: &str) -> NetworkSpec {
        let subnet: crate::net::Subnet = "10.5.0.0/24".parse().unwrap();
        NetworkSpec {
            id: id.into(),
            name: name.into(),
            subnet,
            gateway: subnet.nth(1).unwrap(),
            internal: false,
            icc: true,
            mtu: 1500,
        }
    }

    fn ep(container: &str, name: &str, network: &str, ip: &str, aliases: &[&str]) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            network: network.into(),
            ip: ip.parse().unwrap(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            ports: vec![],
        }
    }

    fn table() -> Table {
        let networks = vec![net("n1", "front"), net("n2", "back"), net("n0", "bridge")];
        let endpoints = vec![
            ep("aaaaaaaaaaaa0000", "web", "n1", "10.5.0.2", &["www"]),
            ep("bbbbbbbbbbbb0000", "db", "n2", "10.6.0.2", &[]),
            ep("cccccccccccc0000", "api", "n1", "10.5.0.3", &["www"]),
            ep("cccccccccccc0000", "api", "n2", "10.6.0.3", &[]),
            ep("dddddddddddd0000", "lonely", "n0", "172.17.0.2", &[]),
        ];
        Table::build(&networks, &endpoints)
    }

    #[test]
    fn names_resolve_only_on_shared_user_networks() {
        let t = table();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(t.lookup("aaaaaaaaaaaa0000", "api"), Some(vec![ip("10.5.0.3")]));
        assert_eq!(
            t.lookup("aaaaaaaaaaaa0000", "API."),
            Some(vec![ip("10.5.0.3")]),
            "case and the root dot do not matter"
        );
        assert_eq!(
            t.lookup("aaaaaaaaaaaa0000", "www"),
            Some(vec![ip("10.5.0.2"), ip("10.5.0.3")]),
            "a shared alias has every address"
        );
        assert_eq!(t.lookup("aaaaaaaaaaaa0000", "bbbbbbbbbbbb"), None, "db is on another network");
        assert_eq!(t.lookup("aaaaaaaaaaaa0000", "db"), None);
        assert_eq!(t.lookup("cccccccccccc0000", "db"), Some(vec![ip("10.6.0.2")]), "api is on both");
        assert_eq!(t.lookup("bbbbbbbbbbbb0000", "cccccccccccc"), Some(vec![ip("10.6.0.3")]), "short ids resolve");
        assert_eq!(t.lookup("dddddddddddd0000", "lonely"), None, "the default bridge has no names");
        assert!(!t.serves("dddddddddddd0000"));
        assert_eq!(t.reverse("aaaaaaaaaaaa0000", ip("10.5.0.3")), Some("api.front"));
        assert_eq!(t.reverse("aaaaaaaaaaaa0000", ip("10.6.0.2")), None);
    }

    #[test]
    fn queries_get_answers_in_wire_format() {
        let t = table();
        let c = "aaaaaaaaaaaa0000";
        let q = query(0x1234, "www", QTYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!((parsed.id, parsed.name.as_str(), parsed.qtype), (0x1234, "www", QTYPE_A));
        let r = answer(&t, c, &q, &parsed).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[2] & 0x01, 0x01, "RD copied");
        assert_eq!(read_a_records(&r), Some((0, vec!["10.5.0.2".parse().unwrap(), "10.5.0.3".parse().unwrap()])));
        // AAAA for a known name: no records, no error (so clients do not wait for it).
        let q6 = query(7, "web", QTYPE_AAAA);
        let r6 = answer(&t, c, &q6, &parse_query(&q6).unwrap()).unwrap();
        assert_eq!(read_a_records(&r6), Some((0, vec![])));
        // Unknown names are forwarded.
        let qx = query(8, "example.org", QTYPE_A);
        assert_eq!(answer(&t, c, &qx, &parse_query(&qx).unwrap()), None);
        // PTR.
        let qp = query(9, "3.0.5.10.in-addr.arpa", TYPE_PTR);
        let rp = answer(&t, c, &qp, &parse_query(&qp).unwrap()).unwrap();
        assert!(rp.ends_with(&encode_name("api.front")), "{rp:?}");
        // SERVFAIL keeps the question.
        let sf = servfail(&qx, &parse_query(&qx).unwrap());
        assert_eq!(read_a_records(&sf), Some((2, vec![])));
    }

    #[test]
    fn malformed_queries_are_not_parsed() {
        assert_eq!(parse_query(&[0; 5]), None);
        let mut resp = query(1, "x", QTYPE_A);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), None, "a response is not a query");
        let mut cut = query(1, "abc", QTYPE_A);
        cut.truncate(15);
        assert_eq!(parse_query(&cut), None);
        let mut ptr = query(1, "abc", QTYPE_A);
        ptr[12] = 0xc0;
        assert_eq!(parse_query(&ptr), None);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let conf =
            "# comment\nsearch lab\nnameserver 10.98.0.2\nnameserver 127.0.0.53\nnameserver bogus\noptions ndots:1\n";
        assert_eq!(
            nameservers(conf),
            vec!["10.98.0.2".parse::<std::net::IpAddr>().unwrap(), "127.0.0.53".parse().unwrap()]
        );
    }
}
