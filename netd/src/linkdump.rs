//! A namespace's links read by one raw `RTM_GETLINK` dump and parsed only as
//! far as a pass reads them. Every whole pass observes the host's links, and
//! on a host of a hundred containers that is a hundred veths a pass, each
//! message ~1.5 kB of statistics, IPv6 settings and bridge-port attributes
//! that rtnetlink's parser decodes in full: ~5 % of a `create500`'s CPU
//! went to the dumps, most of it to that parsing. Here each message gives its
//! index, flags, name, MTU, master and kind from a walk over its top-level
//! attributes; the caller parses in full only the few links it needs whole
//! (bridges, VXLAN devices, macvlan shims). The request asks the kernel to
//! leave statistics out (`RTEXT_FILTER_SKIP_STATS`).

use std::time::Duration;

use crate::model::LinkKind;
use crate::nft_table::{answers, attrs};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_EXT_MASK: u16 = 29;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFF_UP: u32 = 1;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;

/// The dump request: every link of the namespace, statistics left out.
pub fn request(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    let len: u32 = 16 + IFINFOMSG_LEN as u32 + 8;
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0u8; IFINFOMSG_LEN]); // AF_UNSPEC, every link
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    m.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    m
}

/// One link of a dump, as a pass reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// The master's index.
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
}

/// The link an `RTM_NEWLINK` payload (ifinfomsg and attributes) describes;
/// None for one too short or without a name.
pub fn link(payload: &[u8]) -> Option<Link> {
    let header = payload.get(..IFINFOMSG_LEN)?;
    let index = u32::from_ne_bytes(header[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(header[8..12].try_into().ok()?);
    let (mut name, mut kind, mut master, mut mtu) = (None, LinkKind::Other, None, 0);
    let u32_of = |b: &[u8]| b.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    for (k, v) in attrs(&payload[IFINFOMSG_LEN..]) {
        match k {
            IFLA_IFNAME => name = Some(text(v).to_string()),
            IFLA_MTU => mtu = u32_of(v).unwrap_or(0),
            IFLA_MASTER => master = u32_of(v).filter(|i| *i != 0),
            IFLA_LINKINFO => {
                if let Some((_, kv)) = attrs(v).find(|(k, _)| *k == IFLA_INFO_KIND) {
                    kind = match text(kv) {
                        "bridge" => LinkKind::Bridge,
                        "veth" => LinkKind::Veth,
                        "vxlan" => LinkKind::Vxlan,
                        "tun" => LinkKind::Tun,
                        "macvlan" => LinkKind::Macvlan,
                        _ => LinkKind::Other,
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link { index, name: name?, kind, master, mtu, up: flags & IFF_UP != 0 })
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b.split(|c| *c == 0).next().unwrap_or_default()).unwrap_or_default()
}

/// A netlink socket for link dumps, in the namespace it was opened in (the
/// calling thread's). Dumps are short and blocking; one runs at a time.
pub struct Dumper {
    socket: std::sync::Mutex<(rtnetlink::sys::Socket, u32)>,
}

/// How long a dump's answer may take before the dump fails.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

impl Dumper {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<Dumper> {
        use rustix::net::sockopt::{Timeout, set_socket_timeout};
        let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        set_socket_timeout(&socket, Timeout::Recv, Some(ANSWER_WAIT))?;
        Ok(Dumper { socket: std::sync::Mutex::new((socket, 0)) })
    }

    /// Every link's `RTM_NEWLINK` payload, by one dump; a dump the kernel
    /// marks interrupted (the links changed meanwhile) is made again, up to
    /// three times in all, and the last one is taken.
    pub fn dump(&self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let (socket, seq) = &mut *guard;
        let mut links = Vec::new();
        for _ in 0..3 {
            *seq = seq.wrapping_add(1);
            links.clear();
            socket.send_to(&request(*seq), &rtnetlink::sys::SocketAddr::new(0, 0), 0)?;
            let mut interrupted = false;
            'answers: loop {
                let (datagram, _) = socket.recv_from_full()?;
                // Answers to an earlier request (one that failed) are skipped.
                for a in answers(&datagram).into_iter().filter(|a| a.seq == *seq) {
                    interrupted |= a.interrupted();
                    match a.end() {
                        Some(0) => break 'answers,
                        Some(errno) => return Err(std::io::Error::from_raw_os_error(errno)),
                        None if a.kind == RTM_NEWLINK => links.push(a.payload.to_vec()),
                        None => {}
                    }
                }
            }
            if !interrupted {
                break;
            }
        }
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable;
    use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

    fn emitted(m: &LinkMessage) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    #[test]
    fn a_link_reads_its_name_kind_master_mtu_and_state() {
        let mut m = LinkMessage::default();
        m.header.index = 42;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::Mtu(1450),
            LinkAttribute::IfName("shvabcdef12345".into()),
            LinkAttribute::Controller(7),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let want = Link {
            index: 42,
            name: "shvabcdef12345".into(),
            kind: LinkKind::Veth,
            master: Some(7),
            mtu: 1450,
            up: true,
        };
        assert_eq!(link(&emitted(&m)), Some(want));

        // Every kind netd reads; others are Other; no master, down.
        for (k, want) in [
            (InfoKind::Bridge, LinkKind::Bridge),
            (InfoKind::Vxlan, LinkKind::Vxlan),
            (InfoKind::Tun, LinkKind::Tun),
            (InfoKind::MacVlan, LinkKind::Macvlan),
            (InfoKind::Dummy, LinkKind::Other),
        ] {
            let mut m = LinkMessage::default();
            m.header.index = 3;
            m.attributes = vec![LinkAttribute::IfName("x".into()), LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)])];
            let l = link(&emitted(&m)).expect("a link");
            assert_eq!((l.kind, l.master, l.up), (want, None, false));
        }
        // No kind at all (lo), and a message without a name or too short.
        let mut lo = LinkMessage::default();
        lo.attributes = vec![LinkAttribute::IfName("lo".into()), LinkAttribute::Mtu(65536)];
        assert_eq!(link(&emitted(&lo)).map(|l| (l.kind, l.mtu)), Some((LinkKind::Other, 65536)));
        assert_eq!(link(&emitted(&LinkMessage::default())), None);
        assert_eq!(link(&[0; 8]), None);
    }

    #[test]
    fn the_request_is_a_dump_of_every_link_without_statistics() {
        let r = request(9);
        let a = answers(&r);
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].kind, a[0].seq), (RTM_GETLINK, 9));
        let ext: Vec<_> = attrs(&a[0].payload[IFINFOMSG_LEN..]).collect();
        assert_eq!(ext, vec![(IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes()[..])]);
    }
}
