//! The embedded DNS server's pure half: the names each container may
//! resolve (a `Table` built from netd's state) and its answers, query bytes
//! in, answer bytes out, read and written with `hickory-proto` (one question
//! in, A/PTR answers or an empty NOERROR out; the query's EDNS answered with
//! an OPT record; an answer too big for the client's UDP size cut with TC
//! set, so it retries over TCP). Anything the table does not know is
//! forwarded to the host's resolvers by `dnsd`, unchanged.
//!
//! A container resolves, on every user-defined network it is on, the other
//! containers' names, aliases and short ids (the predefined `bridge` has no
//! names, as in Docker), and the services on it: NAME (and each alias) is
//! the service's VIP, or with dnsrr its ready tasks' addresses; `tasks.NAME`
//! is its ready tasks' addresses, and each task's container name its own
//! address, wherever it runs. Reverse lookups of containers' and tasks'
//! addresses answer `NAME.NETWORK`. A service with no ready task has no
//! name and no `tasks.` name, in either mode, as in Docker (libnetwork drops
//! a service's name records with its last backend): the query is forwarded
//! to the host's resolvers, which normally answer NXDOMAIN.
//!
//! The services come from the managers' network view (`view_records`), on
//! the cluster networks a container is attached to (`Table::from_state`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::ProtoError;
use hickory_proto::op::message::{HeaderCounts, count_was_truncated, update_header_counts};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use shoal_proto::net::NetView;
use shoal_proto::network::EndpointMode;

use crate::model::{EndpointSpec, NetworkSpec};

/// The address netd's DNS listens on in every container's namespace.
pub use shoal_proto::net::DNS_ADDR as ADDR;
/// The TTL of the answers netd gives (Docker's).
const TTL: u32 = 600;

/// The largest UDP answer netd sends, whatever a client advertises (EDNS);
/// also what it advertises itself. Its UDP receive buffer is this size too.
pub const UDP_MAX: u16 = 4096;
/// What every client takes over UDP without EDNS (RFC 1035).
const UDP_PLAIN: u16 = 512;

/// A service as DNS sees it on one network: filled from the node's network
/// view, the same data the load balancer programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The network (id) whose containers resolve it.
    pub network: String,
    pub name: String,
    /// The service's aliases on this network (`--network name=N,alias=A`).
    pub aliases: Vec<String>,
    pub endpoint: ServiceEndpoint,
    /// Its tasks' addresses on this network.
    pub tasks: Vec<ServiceTask>,
}

/// What a service's own name answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceEndpoint {
    /// Its virtual address on the network (`--endpoint-mode vip`).
    Vip(Ipv4Addr),
    /// Its ready tasks' addresses, in turn (`--endpoint-mode dnsrr`).
    Dnsrr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTask {
    /// Its container's name (`NAME.SLOT.TASKID`), resolvable on the network
    /// wherever the task runs; empty for none.
    pub name: String,
    pub addr: Ipv4Addr,
    /// Running, and healthy if it has a health check: only these are answered.
    pub ready: bool,
}

/// The addresses of one name on one network.
#[derive(Debug, Default)]
struct Addrs {
    ips: Vec<Ipv4Addr>,
    /// Answered in turn (dnsrr and `tasks.`), so clients spread over them.
    spread: bool,
}

impl Addrs {
    fn add(&mut self, ip: Ipv4Addr) {
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }
}

/// Who may resolve what.
#[derive(Debug, Default)]
pub struct Table {
    /// network id → lower-case name → addresses (in endpoint order).
    names: HashMap<String, HashMap<String, Addrs>>,
    /// network id → address → `name.network` (reverse lookups).
    reverse: HashMap<String, HashMap<Ipv4Addr, String>>,
    /// container id → the networks whose names it sees.
    scope: HashMap<String, Vec<String>>,
}

/// The service records a container on `networks` (cluster network ids)
/// resolves, from the managers' view: each service's name and aliases are
/// its VIP (`vip` mode, once allocated) or its backends (`dnsrr`), and
/// `tasks.NAME` its backends. The view's backends are the running (and
/// healthy) tasks, so all are ready; it carries no task names.
pub fn view_records(view: &NetView, networks: &[&str]) -> Vec<ServiceRecord> {
    view.services
        .iter()
        .filter(|s| networks.contains(&s.network.as_str()))
        .filter_map(|s| {
            let endpoint = match s.mode {
                EndpointMode::Vip => ServiceEndpoint::Vip(s.vip?),
                EndpointMode::Dnsrr => ServiceEndpoint::Dnsrr,
            };
            Some(ServiceRecord {
                network: s.network.clone(),
                name: s.name.clone(),
                aliases: s.aliases.clone(),
                endpoint,
                tasks: s.backends.iter().map(|&addr| ServiceTask { name: String::new(), addr, ready: true }).collect(),
            })
        })
        .collect()
}

impl Table {
    pub fn build(networks: &[NetworkSpec], endpoints: &[EndpointSpec], services: &[ServiceRecord]) -> Table {
        let named: Vec<(&str, &str)> = networks.iter().map(|n| (n.id.as_str(), n.name.as_str())).collect();
        Table::build_named(&named, endpoints, services)
    }

    /// The table for netd's state and the node's cluster view: the local
    /// networks' names as `build`, plus the cluster networks' (an endpoint
    /// whose network is a cluster network's id is scoped to it) and the
    /// services of the view on them.
    pub fn from_state(networks: &[NetworkSpec], endpoints: &[EndpointSpec], view: Option<&NetView>) -> Table {
        let mut named: Vec<(&str, &str)> = networks.iter().map(|n| (n.id.as_str(), n.name.as_str())).collect();
        let mut services = Vec::new();
        if let Some(view) = view {
            named.extend(view.networks.iter().map(|n| (n.id.as_str(), n.name.as_str())));
            let ids: Vec<&str> = view.networks.iter().map(|n| n.id.as_str()).collect();
            services = view_records(view, &ids);
        }
        let mut t = Table::build_named(&named, endpoints, &services);
        if let Some(view) = view {
            t.add_view_endpoints(view);
        }
        t
    }

    /// The names of the view's endpoints on the cluster networks, this
    /// node's and the others' (`run --name c1 --network app` on one host
    /// is `c1` on every host; a task is its container's name). The
    /// ingress network has no names, as Docker's.
    fn add_view_endpoints(&mut self, view: &NetView) {
        let ingress = view.ingress.as_ref().map(|i| i.network.as_str());
        for e in view.endpoints.iter().filter(|e| Some(e.network.as_str()) != ingress) {
            let Some(net) = view.networks.iter().find(|n| n.id == e.network) else { continue };
            let names = self.names.entry(e.network.clone()).or_default();
            for name in &e.names {
                names.entry(name.to_ascii_lowercase()).or_default().add(e.addr);
            }
            if let Some(first) = e.names.first() {
                let reverse = self.reverse.entry(e.network.clone()).or_default();
                reverse.entry(e.addr).or_insert_with(|| format!("{first}.{}", net.name));
            }
        }
    }

    /// `build` over (network id, name) pairs.
    fn build_named(networks: &[(&str, &str)], endpoints: &[EndpointSpec], services: &[ServiceRecord]) -> Table {
        let mut t = Table::default();
        for e in endpoints {
            let Some(&(id, name)) = networks.iter().find(|(id, name)| *id == e.network && *name != "bridge") else {
                continue;
            };
            t.scope.entry(e.container.clone()).or_default().push(id.to_string());
            let names = t.names.entry(id.to_string()).or_default();
            let short = &e.container[..e.container.len().min(12)];
            let mut own: Vec<String> = std::iter::once(e.name.as_str())
                .chain(e.aliases.iter().map(String::as_str))
                .chain([short])
                .map(str::to_ascii_lowercase)
                .collect();
            own.retain(|s| !s.is_empty());
            own.dedup();
            for name in own {
                names.entry(name).or_default().add(e.ip);
            }
            if !e.name.is_empty() {
                t.reverse.entry(id.to_string()).or_default().insert(e.ip, format!("{}.{name}", e.name));
            }
        }
        for s in services {
            let names = t.names.entry(s.network.clone()).or_default();
            let net_name = networks.iter().find(|(id, _)| *id == s.network).map(|(_, name)| *name);
            for task in s.tasks.iter().filter(|t| !t.name.is_empty()) {
                names.entry(task.name.to_ascii_lowercase()).or_default().add(task.addr);
                if let Some(net_name) = net_name {
                    let reverse = t.reverse.entry(s.network.clone()).or_default();
                    reverse.entry(task.addr).or_insert_with(|| format!("{}.{net_name}", task.name));
                }
            }
            let ready: Vec<Ipv4Addr> = s.tasks.iter().filter(|t| t.ready).map(|t| t.addr).collect();
            if ready.is_empty() {
                // Docker's way: no backend, no name (forwarded, so NXDOMAIN upstream).
                continue;
            }
            for name in std::iter::once(&s.name).chain(&s.aliases).map(|n| n.to_ascii_lowercase()) {
                if name.is_empty() {
                    continue;
                }
                let tasks = names.entry(format!("tasks.{name}")).or_default();
                tasks.spread = true;
                ready.iter().for_each(|ip| tasks.add(*ip));
                let own = names.entry(name).or_default();
                match s.endpoint {
                    ServiceEndpoint::Vip(vip) => own.add(vip),
                    ServiceEndpoint::Dnsrr => {
                        own.spread = true;
                        ready.iter().for_each(|ip| own.add(*ip));
                    }
                }
            }
        }
        t
    }

    /// The addresses `name` has for `container`: None when no network it is
    /// on knows it (a service with no ready task included).
    pub fn lookup(&self, container: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.find(container, &name.trim_end_matches('.').to_ascii_lowercase()).map(|(ips, _)| ips)
    }

    /// `lookup` for a lower-case name without the root dot, and whether its
    /// addresses are answered in turn.
    fn find(&self, container: &str, name: &str) -> Option<(Vec<Ipv4Addr>, bool)> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        let (mut known, mut spread) = (false, false);
        for n in self.scope.get(container)? {
            let Some(a) = self.names.get(n).and_then(|m| m.get(name)) else { continue };
            known = true;
            spread |= a.spread;
            for ip in &a.ips {
                if !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
        known.then_some((out, spread))
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

/// How a query came in: the answer's size limit depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// 512 bytes, or the size the query's EDNS record advertises (at most `UDP_MAX`).
    Udp,
    /// 65,535 bytes (each message after its 2-byte length).
    Tcp,
}

/// The one question of a standard query, with what the answer must echo.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    header: Header,
    query: Query,
    /// The query's OPT record (EDNS), if it had one.
    edns: Option<Edns>,
    /// The name asked, lower-case and without the root dot (the table's key).
    pub name: String,
}

impl Question {
    pub fn id(&self) -> u16 {
        self.header.id()
    }

    pub fn qtype(&self) -> u16 {
        self.query.query_type().into()
    }

    /// The UDP payload size the client advertised (EDNS), if any.
    pub fn udp_size(&self) -> Option<u16> {
        self.edns.as_ref().map(Edns::max_payload)
    }
}

/// Reads a query; None for anything that is not a standard query with one
/// question (those are forwarded as they are).
pub fn parse_query(msg: &[u8]) -> Option<Question> {
    let mut m = Message::from_vec(msg).ok()?;
    if m.message_type() != MessageType::Query || m.op_code() != OpCode::Query || m.queries().len() != 1 {
        return None;
    }
    let query = m.take_queries().pop()?;
    let mut name = query.name().to_ascii();
    name.make_ascii_lowercase();
    if name.ends_with('.') {
        name.pop();
    }
    Some(Question { header: *m.header(), query, edns: m.extensions().clone(), name })
}

/// What netd answers a question with, or None to forward it.
pub fn answer(table: &Table, container: &str, q: &Question, transport: Transport) -> Option<Vec<u8>> {
    if q.query.query_class() != DNSClass::IN {
        return None;
    }
    let records: Vec<Record> = if let Some(ip) = reverse_name(&q.name) {
        let name = table.reverse(container, ip)?;
        let target = Name::from_ascii(format!("{name}.")).ok()?;
        vec![Record::from_rdata(q.query.name().clone(), TTL, RData::PTR(PTR(target)))]
    } else {
        let (mut ips, spread) = table.find(container, &q.name)?;
        if spread && !ips.is_empty() {
            // Round robin by query id: successive clients start on different tasks.
            let n = ips.len();
            ips.rotate_left(usize::from(q.id()) % n);
        }
        match q.query.query_type() {
            RecordType::A | RecordType::ANY => {
                ips.into_iter().map(|ip| Record::from_rdata(q.query.name().clone(), TTL, RData::A(A(ip)))).collect()
            }
            // The name exists, with no records of this type (AAAA, MX, ...).
            _ => vec![],
        }
    };
    if q.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891: only EDNS version 0 is known here.
        return response(q, ResponseCode::BADVERS, &[], transport).ok();
    }
    response(q, ResponseCode::NoError, &records, transport).ok()
}

/// A SERVFAIL for a question netd could not get answered.
pub fn servfail(q: &Question, transport: Transport) -> Option<Vec<u8>> {
    response(q, ResponseCode::ServFail, &[], transport).ok()
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4.
fn reverse_name(name: &str) -> Option<Ipv4Addr> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = lower.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [d, c, b, a] = parts.as_slice() else { return None };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

/// The response to `q` with these answers: as many as fit the transport's
/// limit (TC set when some did not), and an OPT record when the query had one.
fn response(
    q: &Question,
    rcode: ResponseCode,
    answers: &[Record],
    transport: Transport,
) -> Result<Vec<u8>, ProtoError> {
    let mut header = Header::response_from_request(&q.header);
    header.set_authoritative(true).set_recursion_available(true).set_response_code(rcode);
    let opt = q
        .edns
        .as_ref()
        .map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(UDP_MAX).set_version(0).set_rcode_high(rcode.high());
            Record::from(&e).to_bytes()
        })
        .transpose()?;
    let limit = match transport {
        Transport::Tcp => u16::MAX,
        Transport::Udp => q.udp_size().map_or(UDP_PLAIN, |s| s.clamp(UDP_PLAIN, UDP_MAX)),
    };
    let opt_len = opt.as_ref().map_or(0, Vec::len);
    let mut buf = Vec::with_capacity(64 + answers.len() * 16);
    let mut enc = BinEncoder::new(&mut buf);
    // The OPT record goes last and must fit too: the answers get the rest.
    enc.set_max_size(limit - opt_len as u16);
    let place = enc.place::<Header>()?;
    q.query.emit(&mut enc)?;
    let (answered, truncated) = count_was_truncated(enc.emit_all(answers.iter()))?;
    enc.set_max_size(limit);
    if let Some(opt) = &opt {
        enc.emit_vec(opt)?;
    }
    let counts = HeaderCounts {
        query_count: 1,
        answer_count: answered,
        nameserver_count: 0,
        additional_count: usize::from(opt.is_some()),
    };
    place.replace(&mut enc, update_header_counts(&header, truncated, counts))?;
    Ok(buf)
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

/// A query for `name` and `qtype` (for tests and the benchmark client);
/// None when `name` is not a domain name.
pub fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::from(qtype)));
    m.to_vec().ok()
}

/// The rcode and the A records of a response (for tests and the benchmark client).
pub fn read_a_records(msg: &[u8]) -> Option<(u8, Vec<Ipv4Addr>)> {
    let m = Message::from_vec(msg).ok()?;
    let ips = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some((m.response_code().low(), ips))
}

pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;
pub const QTYPE_PTR: u16 = 12;

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
            dns: vec![],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// `n` tasks at 10.7.(i/250).(i%250 + 2), every third one not ready when `some_down`.
    fn tasks(n: usize, some_down: bool) -> Vec<ServiceTask> {
        (0..n)
            .map(|i| ServiceTask {
                name: format!("svc.{}.task{i}", i + 1),
                addr: Ipv4Addr::new(10, 7, (i / 250) as u8, (i % 250 + 2) as u8),
                ready: !(some_down && i % 3 == 2),
            })
            .collect()
    }

    /// `n` tasks, none ready.
    fn down(n: usize) -> Vec<ServiceTask> {
        tasks(n, false)
            .into_iter()
            .enumerate()
            .map(|(i, t)| ServiceTask { name: format!("svc.1.down{i}"), ready: false, ..t })
            .collect()
    }

    fn svc(
        network: &str,
        name: &str,
        aliases: &[&str],
        endpoint: ServiceEndpoint,
        tasks: Vec<ServiceTask>,
    ) -> ServiceRecord {
        ServiceRecord {
            network: network.into(),
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            endpoint,
            tasks,
        }
    }

    const A: &str = "aaaaaaaaaaaa0000"; // web: on front (n1)
    const B: &str = "bbbbbbbbbbbb0000"; // db: on back (n2)

    fn table() -> Table {
        let networks = vec![net("n1", "front"), net("n2", "back"), net("n0", "bridge")];
        let endpoints = vec![
            ep(A, "web", "n1", "10.5.0.2", &["www"]),
            ep(B, "db", "n2", "10.6.0.2", &[]),
            ep("cccccccccccc0000", "api", "n1", "10.5.0.3", &["www"]),
            ep("cccccccccccc0000", "api", "n2", "10.6.0.3", &[]),
            ep("dddddddddddd0000", "lonely", "n0", "172.17.0.2", &[]),
        ];
        let services = vec![
            svc("n1", "shop", &["store"], ServiceEndpoint::Vip(ip("10.5.0.100")), tasks(6, true)),
            svc("n1", "cache", &[], ServiceEndpoint::Dnsrr, tasks(3, false)),
            svc("n1", "many", &[], ServiceEndpoint::Vip(ip("10.5.0.101")), tasks(200, false)),
            svc("n1", "huge", &[], ServiceEndpoint::Dnsrr, tasks(300, false)),
            svc("n1", "idle", &[], ServiceEndpoint::Dnsrr, vec![]),
            svc("n1", "down", &[], ServiceEndpoint::Vip(ip("10.5.0.102")), down(2)),
            svc("n2", "ledger", &[], ServiceEndpoint::Vip(ip("10.6.0.100")), tasks(2, false)),
        ];
        Table::build(&networks, &endpoints, &services)
    }

    #[test]
    fn names_resolve_only_on_shared_user_networks() {
        let t = table();
        assert_eq!(t.lookup(A, "api"), Some(vec![ip("10.5.0.3")]));
        assert_eq!(t.lookup(A, "API."), Some(vec![ip("10.5.0.3")]), "case and the root dot do not matter");
        assert_eq!(t.lookup(A, "www"), Some(vec![ip("10.5.0.2"), ip("10.5.0.3")]), "a shared alias has every address");
        assert_eq!(t.lookup(A, "bbbbbbbbbbbb"), None, "db is on another network");
        assert_eq!(t.lookup(A, "db"), None);
        assert_eq!(t.lookup("cccccccccccc0000", "db"), Some(vec![ip("10.6.0.2")]), "api is on both");
        assert_eq!(t.lookup(B, "cccccccccccc"), Some(vec![ip("10.6.0.3")]), "short ids resolve");
        assert_eq!(t.lookup("dddddddddddd0000", "lonely"), None, "the default bridge has no names");
        assert!(!t.serves("dddddddddddd0000"));
        assert_eq!(t.reverse(A, ip("10.5.0.3")), Some("api.front"));
        assert_eq!(t.reverse(A, ip("10.6.0.2")), None);
    }

    #[test]
    fn services_resolve_per_network() {
        let t = table();
        let ready = |n: usize, some_down: bool| -> Vec<Ipv4Addr> {
            tasks(n, some_down).into_iter().filter(|t| t.ready).map(|t| t.addr).collect()
        };
        assert_eq!(t.lookup(A, "shop"), Some(vec![ip("10.5.0.100")]), "vip mode: the VIP");
        assert_eq!(t.lookup(A, "Store"), Some(vec![ip("10.5.0.100")]), "a service alias: the VIP");
        assert_eq!(t.lookup(A, "tasks.shop"), Some(ready(6, true)), "tasks.: ready tasks only");
        assert_eq!(t.lookup(A, "tasks.shop").unwrap().len(), 4);
        assert_eq!(t.lookup(A, "tasks.store"), Some(ready(6, true)), "tasks. of an alias");
        assert_eq!(t.lookup(A, "cache"), Some(ready(3, false)), "dnsrr: the tasks");
        assert_eq!(t.lookup(A, "tasks.cache"), Some(ready(3, false)));
        assert_eq!(t.lookup(A, "idle"), None, "no ready task: no name, as in Docker (forwarded)");
        assert_eq!(t.lookup(A, "tasks.idle"), None);
        assert_eq!(t.lookup(A, "down"), None, "vip mode too");
        assert_eq!(t.lookup(A, "svc.1.down0"), Some(vec![ip("10.7.0.2")]), "its tasks' names stay");
        assert_eq!(t.lookup(A, "ledger"), None, "ledger is on back only");
        assert_eq!(t.lookup(B, "ledger"), Some(vec![ip("10.6.0.100")]));
        assert_eq!(t.lookup(B, "shop"), None);
        assert_eq!(t.lookup(B, "tasks.shop"), None);
        assert_eq!(t.lookup("cccccccccccc0000", "ledger"), Some(vec![ip("10.6.0.100")]), "api is on both");
        assert_eq!(t.lookup("dddddddddddd0000", "shop"), None, "not on the service's network");
        assert_eq!(t.lookup(A, "svc.3.task2"), Some(vec![ip("10.7.0.4")]), "a task's name, ready or not");
        assert_eq!(t.lookup(B, "svc.3.task2"), None);
        assert_eq!(t.reverse(A, ip("10.7.0.4")), Some("svc.3.task2.front"));
    }

    /// The cluster view's services, for containers on cluster networks.
    #[test]
    fn the_view_feeds_the_cluster_networks_names() {
        use shoal_proto::net::{OverlayEndpoint, OverlayNetwork, ViewService};
        let onet = |id: &str, name: &str| OverlayNetwork {
            id: id.into(),
            name: name.into(),
            vni: 4100,
            subnet: ip("10.10.0.0"),
            prefix: 24,
            gateway: ip("10.10.0.1"),
            mtu: 1450,
            internal: false,
            encrypted: false,
            macvlan: None,
        };
        let vs = |name: &str, net: &str, mode, vip: Option<&str>, aliases: &[&str], backends: &[&str]| ViewService {
            id: format!("id-{name}"),
            name: name.into(),
            network: net.into(),
            mode,
            vip: vip.map(ip),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            backends: backends.iter().map(|b| ip(b)).collect(),
        };
        let view = NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.1"),
            networks: vec![onet("x0", "appnet"), onet("y0", "dbnet")],
            peers: vec![],
            endpoints: vec![
                // On other hosts: a task, and a container attached with an alias.
                OverlayEndpoint {
                    id: "t3".into(),
                    network: "x0".into(),
                    addr: ip("10.10.0.3"),
                    node: "n2".into(),
                    names: vec!["web.1.t3".into()],
                },
                OverlayEndpoint {
                    id: "a1".into(),
                    network: "y0".into(),
                    addr: ip("10.20.0.30"),
                    node: "n3".into(),
                    names: vec!["Probe".into(), "checker".into()],
                },
            ],
            services: vec![
                vs("web", "x0", EndpointMode::Vip, Some("10.10.0.100"), &["www"], &["10.10.0.3", "10.10.0.4"]),
                vs("cache", "x0", EndpointMode::Dnsrr, None, &[], &["10.10.0.5", "10.10.0.6"]),
                vs("idle", "x0", EndpointMode::Vip, Some("10.10.0.101"), &[], &[]),
                vs("unallocated", "x0", EndpointMode::Vip, None, &[], &["10.10.0.7"]),
                vs("db", "y0", EndpointMode::Vip, Some("10.20.0.100"), &[], &["10.20.0.3"]),
            ],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        };
        // The pure records for a container on x0 only.
        let recs = view_records(&view, &["x0"]);
        let names: Vec<(&str, ServiceEndpoint, usize)> =
            recs.iter().map(|r| (r.name.as_str(), r.endpoint, r.tasks.len())).collect();
        assert_eq!(
            names,
            vec![
                ("web", ServiceEndpoint::Vip(ip("10.10.0.100")), 2),
                ("cache", ServiceEndpoint::Dnsrr, 2),
                ("idle", ServiceEndpoint::Vip(ip("10.10.0.101")), 0),
            ],
            "a VIP service without its VIP yet has no record; other networks' services none"
        );
        assert_eq!(recs[0].aliases, vec!["www".to_string()]);
        assert!(recs.iter().flat_map(|r| &r.tasks).all(|t| t.ready && t.name.is_empty()));

        // Through the table: C is on appnet, D on dbnet, E on both, F on the local bridge network.
        let endpoints = vec![
            ep("C", "c", "x0", "10.10.0.9", &[]),
            ep("D", "d", "y0", "10.20.0.9", &[]),
            ep("E", "e", "x0", "10.10.0.10", &[]),
            ep("E", "e", "y0", "10.20.0.10", &[]),
            ep("F", "f", "n1", "10.5.0.9", &[]),
        ];
        let t = Table::from_state(&[net("n1", "front")], &endpoints, Some(&view));
        struct Case {
            container: &'static str,
            name: &'static str,
            want: Option<&'static [&'static str]>,
        }
        let cases = [
            Case { container: "C", name: "web", want: Some(&["10.10.0.100"]) },
            Case { container: "C", name: "WWW.", want: Some(&["10.10.0.100"]) },
            Case { container: "C", name: "tasks.web", want: Some(&["10.10.0.3", "10.10.0.4"]) },
            Case { container: "C", name: "tasks.www", want: Some(&["10.10.0.3", "10.10.0.4"]) },
            Case { container: "C", name: "cache", want: Some(&["10.10.0.5", "10.10.0.6"]) },
            Case { container: "C", name: "tasks.cache", want: Some(&["10.10.0.5", "10.10.0.6"]) },
            Case { container: "C", name: "idle", want: None },
            Case { container: "C", name: "tasks.idle", want: None },
            Case { container: "C", name: "unallocated", want: None },
            Case { container: "C", name: "db", want: None },
            Case { container: "C", name: "e", want: Some(&["10.10.0.10"]) },
            Case { container: "D", name: "db", want: Some(&["10.20.0.100"]) },
            Case { container: "D", name: "web", want: None },
            Case { container: "E", name: "web", want: Some(&["10.10.0.100"]) },
            Case { container: "E", name: "db", want: Some(&["10.20.0.100"]) },
            Case { container: "F", name: "web", want: None },
            Case { container: "C", name: "web.1.t3", want: Some(&["10.10.0.3"]) },
            Case { container: "D", name: "probe", want: Some(&["10.20.0.30"]) },
            Case { container: "E", name: "checker", want: Some(&["10.20.0.30"]) },
            Case { container: "C", name: "probe", want: None },
        ];
        for c in cases {
            let want = c.want.map(|w| w.iter().map(|a| ip(a)).collect::<Vec<_>>());
            assert_eq!(t.lookup(c.container, c.name), want, "{} asks {}", c.container, c.name);
        }
        assert_eq!(t.reverse("C", ip("10.10.0.10")), Some("e.appnet"));
        assert_eq!(t.reverse("D", ip("10.20.0.30")), Some("Probe.dbnet"));
        // dnsrr answers turn per query id.
        let first = |id| {
            let q = parse_query(&wire(id, "cache", RecordType::A, None)).unwrap();
            read_a_records(&answer(&t, "C", &q, Transport::Udp).unwrap()).unwrap().1[0]
        };
        assert_eq!([first(0), first(1)], [ip("10.10.0.5"), ip("10.10.0.6")]);
        // Without a view, only local names.
        let t = Table::from_state(&[net("n1", "front")], &endpoints, None);
        assert_eq!(t.lookup("C", "web"), None);
        assert!(!t.serves("C"));
        assert!(t.serves("F"));
    }

    /// A query as bytes, with an OPT record when `edns` (UDP size, version).
    fn wire(id: u16, name: &str, qtype: RecordType, edns: Option<(u16, u8)>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id).set_message_type(MessageType::Query).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((size, version)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size).set_version(version);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// Table: query bytes in, answer bytes out (read back with hickory).
    #[test]
    fn answers_on_the_wire() {
        struct Case {
            what: &'static str,
            container: &'static str,
            query: Vec<u8>,
            transport: Transport,
            /// None: forwarded. Else (rcode, answers, TC, the answer's EDNS size).
            want: Option<(ResponseCode, usize, bool, Option<u16>)>,
        }
        use RecordType::{A as TA, AAAA, PTR as TPTR};
        use ResponseCode::{BADVERS, NoError};
        use Transport::{Tcp, Udp};
        let case = |what, container, query, transport, want| Case { what, container, query, transport, want };
        let cases = vec![
            case("a container name", A, wire(1, "api", TA, None), Udp, Some((NoError, 1, false, None))),
            case("a shared alias", A, wire(2, "www.", TA, None), Udp, Some((NoError, 2, false, None))),
            case(
                "AAAA of a known name: no records, no error",
                A,
                wire(3, "web", AAAA, None),
                Udp,
                Some((NoError, 0, false, None)),
            ),
            case("an unknown name is forwarded", A, wire(4, "example.org", TA, None), Udp, None),
            case("another network's name is forwarded", A, wire(5, "db", TA, None), Udp, None),
            case("PTR", A, wire(6, "3.0.5.10.in-addr.arpa", TPTR, None), Udp, Some((NoError, 1, false, None))),
            case("an unknown PTR is forwarded", A, wire(7, "9.9.9.9.in-addr.arpa", TPTR, None), Udp, None),
            case("a VIP", A, wire(8, "shop", TA, None), Udp, Some((NoError, 1, false, None))),
            case("a service with no ready task is forwarded", A, wire(9, "idle", TA, None), Udp, None),
            case(
                "EDNS: the answer carries OPT",
                A,
                wire(10, "api", TA, Some((1232, 0))),
                Udp,
                Some((NoError, 1, false, Some(UDP_MAX))),
            ),
            case(
                "EDNS version 1: BADVERS",
                A,
                wire(11, "api", TA, Some((1232, 1))),
                Udp,
                Some((BADVERS, 0, false, Some(UDP_MAX))),
            ),
            // 12 (header) + 16 (the question) + 16 per A record (its name a pointer to the question's)
            // + 11 (the OPT record, when the query had one).
            case(
                "200 tasks, plain UDP: what fits 512 bytes, TC",
                A,
                wire(12, "tasks.many", TA, None),
                Udp,
                Some((NoError, 30, true, None)),
            ),
            case(
                "200 tasks over TCP: all",
                A,
                wire(13, "tasks.many", TA, None),
                Tcp,
                Some((NoError, 200, false, None)),
            ),
            case(
                "200 tasks, EDNS 1232: what fits with the OPT, TC",
                A,
                wire(14, "tasks.many", TA, Some((1232, 0))),
                Udp,
                Some((NoError, 74, true, Some(UDP_MAX))),
            ),
            case(
                "200 tasks, EDNS 4096: all",
                A,
                wire(15, "tasks.many", TA, Some((4096, 0))),
                Udp,
                Some((NoError, 200, false, Some(UDP_MAX))),
            ),
            case(
                "EDNS below 512 counts as 512",
                A,
                wire(16, "tasks.many", TA, Some((100, 0))),
                Udp,
                Some((NoError, 29, true, Some(UDP_MAX))),
            ),
            case(
                "300 tasks, EDNS 65000: capped at 4096, TC",
                A,
                wire(17, "huge", TA, Some((65000, 0))),
                Udp,
                Some((NoError, 253, true, Some(UDP_MAX))),
            ),
            case(
                "300 tasks over TCP with EDNS: all",
                A,
                wire(18, "huge", TA, Some((1232, 0))),
                Tcp,
                Some((NoError, 300, false, Some(UDP_MAX))),
            ),
        ];
        let t = table();
        for c in cases {
            let q = parse_query(&c.query).unwrap_or_else(|| panic!("{}: not parsed", c.what));
            let r = answer(&t, c.container, &q, c.transport);
            let Some((rcode, n, tc, edns)) = c.want else {
                assert_eq!(r, None, "{}", c.what);
                continue;
            };
            let r = r.unwrap_or_else(|| panic!("{}: forwarded", c.what));
            if c.transport == Udp {
                let limit = q.udp_size().map_or(512, |s| s.clamp(512, UDP_MAX));
                assert!(r.len() <= usize::from(limit), "{}: {} bytes over UDP", c.what, r.len());
            }
            let m = Message::from_vec(&r).unwrap_or_else(|e| panic!("{}: {e}", c.what));
            assert_eq!(m.id(), q.id(), "{}", c.what);
            assert_eq!(m.message_type(), MessageType::Response, "{}", c.what);
            assert!(m.recursion_desired() && m.recursion_available() && m.authoritative(), "{}", c.what);
            // (16 reads back as BADSIG, BADVERS's twin: compare the codes.)
            assert_eq!(u16::from(m.response_code()), u16::from(rcode), "{}", c.what);
            assert_eq!(m.queries(), std::slice::from_ref(&q.query), "{}: the question is echoed", c.what);
            assert_eq!(m.answers().len(), n, "{}", c.what);
            assert_eq!(m.truncated(), tc, "{}", c.what);
            assert_eq!(m.extensions().as_ref().map(Edns::max_payload), edns, "{}", c.what);
            for rec in m.answers() {
                assert_eq!(rec.name(), q.query.name(), "{}", c.what);
                assert_eq!(rec.ttl(), TTL, "{}", c.what);
            }
        }
    }

    #[test]
    fn answers_carry_the_right_records() {
        let t = table();
        let ask = |id, name, qtype, transport| {
            let q = parse_query(&wire(id, name, qtype, None)).unwrap();
            Message::from_vec(&answer(&t, A, &q, transport).unwrap()).unwrap()
        };
        let ips = |m: &Message| read_a_records(&m.to_vec().unwrap()).unwrap().1;
        assert_eq!(ips(&ask(0, "www", RecordType::A, Transport::Udp)), vec![ip("10.5.0.2"), ip("10.5.0.3")]);
        let ptr = ask(1, "3.0.5.10.in-addr.arpa", RecordType::PTR, Transport::Udp);
        assert_eq!(ptr.answers()[0].data(), &RData::PTR(PTR(Name::from_ascii("api.front.").unwrap())));
        // The whole set over TCP, each address once.
        let all: Vec<Ipv4Addr> = tasks(200, false).iter().map(|t| t.addr).collect();
        let mut got = ips(&ask(2, "tasks.many", RecordType::A, Transport::Tcp));
        got.sort();
        assert_eq!(got, all);
        // dnsrr and tasks. answers start on a different task per query id; container names do not.
        let first = |id| ips(&ask(id, "cache", RecordType::A, Transport::Udp))[0];
        assert_eq!(
            [first(0), first(1), first(2), first(3)],
            [ip("10.7.0.2"), ip("10.7.0.3"), ip("10.7.0.4"), ip("10.7.0.2")]
        );
        assert_eq!(ips(&ask(1, "tasks.cache", RecordType::A, Transport::Udp))[0], ip("10.7.0.3"));
        assert_eq!(ips(&ask(1, "www", RecordType::A, Transport::Udp))[0], ip("10.5.0.2"));
        // A truncated UDP answer holds the first of the (rotated) set.
        let cut = ips(&ask(5, "tasks.many", RecordType::A, Transport::Udp));
        assert_eq!(cut, all[5..5 + 30].to_vec());
        // SERVFAIL keeps the question.
        let q = parse_query(&wire(9, "example.org", RecordType::A, None)).unwrap();
        let sf = Message::from_vec(&servfail(&q, Transport::Udp).unwrap()).unwrap();
        assert_eq!((sf.id(), sf.response_code(), sf.queries().len()), (9, ResponseCode::ServFail, 1));
    }

    #[test]
    fn the_benchmark_client_reads_answers() {
        let t = table();
        let q = query(0x1234, "www", QTYPE_A).unwrap();
        let parsed = parse_query(&q).unwrap();
        assert_eq!((parsed.id(), parsed.name.as_str(), parsed.qtype()), (0x1234, "www", QTYPE_A));
        let r = answer(&t, A, &parsed, Transport::Udp).unwrap();
        assert_eq!(read_a_records(&r), Some((0, vec![ip("10.5.0.2"), ip("10.5.0.3")])));
        let q6 = query(7, "web", QTYPE_AAAA).unwrap();
        assert_eq!(
            read_a_records(&answer(&t, A, &parse_query(&q6).unwrap(), Transport::Udp).unwrap()),
            Some((0, vec![]))
        );
        assert_eq!(query(1, "a..b", QTYPE_A), None, "not a name");
    }

    #[test]
    fn malformed_queries_are_not_parsed() {
        assert_eq!(parse_query(&[0; 5]), None);
        let mut resp = query(1, "x", QTYPE_A).unwrap();
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), None, "a response is not a query");
        let mut cut = query(1, "abc", QTYPE_A).unwrap();
        cut.truncate(15);
        assert_eq!(parse_query(&cut), None);
        let mut ptr = query(1, "abc", QTYPE_A).unwrap();
        ptr[12] = 0xc0;
        assert_eq!(parse_query(&ptr), None, "a pointer forward");
        let mut two = query(1, "abc", QTYPE_A).unwrap();
        two[5] = 2;
        assert_eq!(parse_query(&two), None, "two questions");
        let mut notify = query(1, "abc", QTYPE_A).unwrap();
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), None, "not a standard query");
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

    /// The pure path's throughput (parse, look up, answer):
    /// `cargo test -p shoal-netd --lib dns::tests::qps -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn qps() {
        let t = table();
        let names = ["www", "api", "web"];
        let queries: Vec<Vec<u8>> = (0..1000u16).map(|i| query(i, names[i as usize % 3], QTYPE_A).unwrap()).collect();
        let n = 1_000_000;
        let start = std::time::Instant::now();
        let mut bytes = 0;
        for i in 0..n {
            let q = parse_query(&queries[i % queries.len()]).unwrap();
            bytes += answer(&t, A, &q, Transport::Udp).unwrap().len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("dns pure path: {n} queries in {secs:.3} s = {:.0} queries/s ({bytes} bytes out)", n as f64 / secs);
    }
}
