//! nf_tables set-element batches, the pure half: the bytes of one
//! `NETLINK_NETFILTER` batch that deletes and adds elements of the
//! `shoal_lb` table's sets (`lb::Elements`), and the reading of the
//! kernel's acks. `lb_sys` sends a batch on a socket opened in the
//! container's namespace: a membership change costs microseconds instead of
//! an `nft -f` run (~18 ms), which matters because every change is made in
//! every container namespace on the network.
//!
//! A batch is `NFNL_MSG_BATCH_BEGIN` (res_id `NFNL_SUBSYS_NFTABLES`), one
//! `NFT_MSG_DELSETELEM` per set with keys to delete, one
//! `NFT_MSG_NEWSETELEM` (`NLM_F_CREATE`) per set with elements to add, then
//! `NFNL_MSG_BATCH_END` ([`frame`], which `nft_table`'s batches share: the
//! table's structure before element requests). The kernel applies it as one transaction: if any
//! message fails, none takes effect. Every message asks for an ack, so each
//! one's result comes back as an `NLMSG_ERROR` with its sequence number.
//!
//! Element bytes (as nft writes them for the table in `lb`): an
//! `ipv4_addr` is 4 bytes in network order; the `be` key is the
//! concatenation `ip daddr . numgen`, the address then the slot as a u32 in
//! host order (nft keeps `numgen`'s register in host order); `svc`'s value
//! is a verdict `goto lbN`.

use std::net::Ipv4Addr;

use crate::lb::{Elements, TABLE};

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h.
pub(crate) const NLM_F_REQUEST: u16 = 1;
pub(crate) const NLM_F_ACK: u16 = 4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLA_F_NESTED: u16 = 1 << 15;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;

/// One message of a batch: its sequence number and what it does, to name
/// it when the kernel refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub seq: u32,
    pub what: String,
}

/// A batch ready to send: its bytes and the messages whose acks to await.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub messages: Vec<Message>,
    /// The sequence numbers of the begin and end markers (an error on
    /// either means the batch as a whole was refused).
    pub markers: [u32; 2],
}

/// A netlink attribute: header, payload, padding to 4 bytes.
pub(crate) fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

pub(crate) fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | NLA_F_NESTED, &parts.concat())
}

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// A netlink message with an nfgenmsg header (family, version 0, res_id in
/// network order) before `body`.
pub(crate) fn nlmsg(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One element's attributes: its key and, for a map element being added,
/// its value.
fn elem(key: &[u8], data: Option<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut parts = vec![nest(NFTA_SET_ELEM_KEY, &[nla(NFTA_DATA_VALUE, key)])];
    if let Some(d) = data {
        parts.push(nest(NFTA_SET_ELEM_DATA, &[d]));
    }
    parts
}

/// The elements of a list, each nested in an attribute numbered from
/// `NFTA_LIST_ELEM` (1) up, as nft numbers them (the kernel reads the
/// numbers as list elements whatever they are; kept below the flag bits).
fn list(elems: impl Iterator<Item = Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    elems.enumerate().map(|(i, parts)| nest(NFTA_LIST_ELEM + (i % 0x3fff) as u16, &parts)).collect()
}

fn be_key(vip: Ipv4Addr, slot: u32) -> Vec<u8> {
    [&vip.octets()[..], &slot.to_ne_bytes()[..]].concat()
}

fn value(ip: Ipv4Addr) -> Vec<u8> {
    nla(NFTA_DATA_VALUE, &ip.octets())
}

pub(crate) fn goto(n: u32) -> Vec<u8> {
    nest(
        NFTA_DATA_VERDICT,
        &[nla(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes()), nla(NFTA_VERDICT_CHAIN, &cstr(&format!("lb{n}")))],
    )
}

/// The elements of each of the table's sets in `e`, in a set order:
/// (set name, elements). With `values`, map elements carry their value
/// (adds); without, keys only (deletes).
fn per_set(e: &Elements, values: bool, order: [&'static str; 3]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    order
        .into_iter()
        .map(|set| {
            let elems: Vec<Vec<u8>> = match set {
                "svc" => list(e.svc.iter().map(|(vip, n)| elem(&vip.octets(), values.then(|| goto(*n))))),
                "be" => list(e.be.iter().map(|((vip, slot), b)| elem(&be_key(*vip, *slot), values.then(|| value(*b))))),
                _ => list(e.empty.iter().map(|vip| elem(&vip.octets(), None))),
            };
            (set, elems)
        })
        .filter(|(_, elems)| !elems.is_empty())
        .collect()
}

/// One request of a batch before it is framed: what it does (to name it
/// when the kernel refuses it), its `NFT_MSG_*` type, its flags besides
/// `NLM_F_REQUEST | NLM_F_ACK`, and its attributes. Every nf_tables batch
/// netd sends (elements here, the table and its chains in `nft_table`) is
/// framed by [`frame`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub what: String,
    pub kind: u16,
    pub flags: u16,
    pub body: Vec<u8>,
}

/// The requests that delete `del`'s keys and then add `add`'s elements in
/// the `shoal_lb` table. Deletes come first (the kernel refuses to add a
/// key that is present, even with another value), in the order `lb`'s
/// script has them.
pub(crate) fn element_requests(del: &Elements, add: &Elements) -> Vec<Request> {
    let mut out = Vec::new();
    for (verb, flags, kind, e, values, order) in [
        ("delete", 0, NFT_MSG_DELSETELEM, del, false, ["svc", "be", "empty"]),
        ("add", NLM_F_CREATE, NFT_MSG_NEWSETELEM, add, true, ["be", "svc", "empty"]),
    ] {
        for (set, elems) in per_set(e, values, order) {
            let n = elems.len();
            let body = [
                nla(NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE)),
                nla(NFTA_SET_ELEM_LIST_SET, &cstr(set)),
                nest(NFTA_SET_ELEM_LIST_ELEMENTS, &elems),
            ]
            .concat();
            out.push(Request { what: format!("{verb} {n} element(s) of {set}"), kind, flags, body });
        }
    }
    out
}

/// `requests` as one batch (one transaction), numbered from `seq` on: the
/// begin marker, each request (family `AF_INET`, asking for an ack), the
/// end marker. `None` when there is no request.
pub(crate) fn frame(seq: u32, requests: Vec<Request>) -> Option<Batch> {
    if requests.is_empty() {
        return None;
    }
    let end = seq + 1 + requests.len() as u32;
    let mut bytes = nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let mut messages = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let s = seq + 1 + i as u32;
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | r.kind;
        bytes.extend(nlmsg(kind, NLM_F_REQUEST | NLM_F_ACK | r.flags, s, libc::AF_INET as u8, 0, &r.body));
        messages.push(Message { seq: s, what: r.what });
    }
    bytes.extend(nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]));
    Some(Batch { bytes, messages, markers: [seq, end] })
}

/// The batch that deletes `del`'s keys and then adds `add`'s elements in
/// the `shoal_lb` table ([`element_requests`]), its messages numbered from
/// `seq` on. `None` when there is nothing to change.
pub fn batch(seq: u32, del: &Elements, add: &Elements) -> Option<Batch> {
    frame(seq, element_requests(del, add))
}

/// The acks in one datagram from the kernel: (sequence number, errno; 0
/// for success). Messages that are not acks are skipped; a truncated one
/// ends the reading.
pub fn acks(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let word = |at: usize| u32::from_ne_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
        let len = word(0) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind == NLMSG_ERROR && len >= 20 {
            out.push((word(8), -(word(16) as i32)));
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Little-endian hosts: the bytes of the design note's prototype
    /// (nftelem.py, measured against the kernel) for one slot's
    /// replacement, field by field. `sys_lb` checks them on a real kernel.
    #[test]
    #[cfg(target_endian = "little")]
    fn a_slot_replacement_is_nfts_batch() {
        let del = Elements { be: BTreeMap::from([((ip("10.10.0.100"), 1), ip("10.10.0.12"))]), ..Default::default() };
        let add = Elements { be: BTreeMap::from([((ip("10.10.0.100"), 1), ip("10.10.0.11"))]), ..Default::default() };
        let b = batch(100, &del, &add).expect("a change");
        assert_eq!(b.markers, [100, 103]);
        assert_eq!(
            b.messages,
            vec![
                Message { seq: 101, what: "delete 1 element(s) of be".into() },
                Message { seq: 102, what: "add 1 element(s) of be".into() }
            ]
        );
        #[rustfmt::skip]
        let begin: &[u8] = &[
            20, 0, 0, 0, 0x10, 0, 1, 0, 100, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr: BATCH_BEGIN, REQUEST, seq 100
            0, 0, 0, 10,                                           // nfgenmsg: AF_UNSPEC, v0, res_id NFTABLES (be16)
        ];
        #[rustfmt::skip]
        let delete: &[u8] = &[
            68, 0, 0, 0, 14, 10, 5, 0, 101, 0, 0, 0, 0, 0, 0, 0,  // DELSETELEM, REQUEST|ACK, seq 101
            2, 0, 0, 0,                                            // AF_INET
            13, 0, 1, 0, b's', b'h', b'o', b'a', b'l', b'_', b'l', b'b', 0, 0, 0, 0, // LIST_TABLE
            7, 0, 2, 0, b'b', b'e', 0, 0,                          // LIST_SET
            24, 0, 3, 0x80,                                        // LIST_ELEMENTS {
            20, 0, 1, 0x80,                                        //  ELEM {
            16, 0, 1, 0x80,                                        //   KEY {
            12, 0, 1, 0, 10, 10, 0, 100, 1, 0, 0, 0,               //    VALUE 10.10.0.100 . 1 (host order) }}}
        ];
        #[rustfmt::skip]
        let add_tail: &[u8] = &[
            36, 0, 3, 0x80, 32, 0, 1, 0x80,                        // LIST_ELEMENTS { ELEM {
            16, 0, 1, 0x80, 12, 0, 1, 0, 10, 10, 0, 100, 1, 0, 0, 0, //  KEY { VALUE }
            12, 0, 2, 0x80, 8, 0, 1, 0, 10, 10, 0, 11,             //  DATA { VALUE 10.10.0.11 } }}
        ];
        #[rustfmt::skip]
        let end: &[u8] = &[20, 0, 0, 0, 0x11, 0, 1, 0, 103, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10];
        assert_eq!(&b.bytes[..20], begin);
        assert_eq!(&b.bytes[20..88], delete);
        let add = &b.bytes[88..b.bytes.len() - 20];
        assert_eq!(&add[..8], &[80, 0, 0, 0, 12, 10, 0x05, 0x04], "NEWSETELEM, REQUEST|ACK|CREATE");
        assert_eq!(&add[8..12], &[102, 0, 0, 0]);
        assert_eq!(&add[20..44], &delete[20..44], "same table and set");
        assert_eq!(&add[44..], add_tail);
        assert_eq!(&b.bytes[b.bytes.len() - 20..], end);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn svc_values_are_goto_verdicts_and_empty_is_keys_only() {
        let add = Elements {
            svc: BTreeMap::from([(ip("10.10.0.100"), 3)]),
            empty: BTreeSet::from([ip("10.10.0.101")]),
            ..Default::default()
        };
        let b = batch(1, &Elements::default(), &add).unwrap();
        assert_eq!(
            b.messages.iter().map(|m| m.what.as_str()).collect::<Vec<_>>(),
            ["add 1 element(s) of svc", "add 1 element(s) of empty"]
        );
        let svc = &b.bytes[20..];
        let len = u32::from_ne_bytes(svc[0..4].try_into().unwrap()) as usize;
        #[rustfmt::skip]
        let elements: &[u8] = &[
            44, 0, 3, 0x80, 40, 0, 1, 0x80,                  // LIST_ELEMENTS { ELEM {
            12, 0, 1, 0x80, 8, 0, 1, 0, 10, 10, 0, 100,      //  KEY { VALUE 10.10.0.100 }
            24, 0, 2, 0x80, 20, 0, 2, 0x80,                  //  DATA { VERDICT {
            8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfc,              //   CODE NFT_GOTO (be32 -4)
            8, 0, 2, 0, b'l', b'b', b'3', 0,                 //   CHAIN "lb3" }}}}
        ];
        assert_eq!(&svc[len - elements.len()..len], elements);
        assert_eq!(&svc[36..44], &[8, 0, 2, 0, b's', b'v', b'c', 0]);
        let empty = &svc[len..];
        #[rustfmt::skip]
        let elements: &[u8] = &[20, 0, 3, 0x80, 16, 0, 1, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0, 10, 10, 0, 101];
        let elen = u32::from_ne_bytes(empty[0..4].try_into().unwrap()) as usize;
        assert_eq!(&empty[elen - elements.len()..elen], elements);
        assert_eq!(&empty[36..48], &[10, 0, 2, 0, b'e', b'm', b'p', b't', b'y', 0, 0, 0]);
    }

    /// Several elements of a set go in one message; deletes of svc, be,
    /// empty come before the adds of be, svc, empty.
    #[test]
    fn messages_follow_the_scripts_order() {
        let cur = Elements {
            svc: BTreeMap::from([(ip("10.9.0.1"), 2)]),
            be: BTreeMap::from([((ip("10.9.0.1"), 0), ip("10.0.0.1")), ((ip("10.9.0.1"), 1), ip("10.0.0.2"))]),
            empty: BTreeSet::from([ip("10.9.0.2")]),
            chains: BTreeSet::new(),
        };
        let b = batch(7, &cur, &cur).unwrap();
        let what: Vec<&str> = b.messages.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "delete 1 element(s) of svc",
                "delete 2 element(s) of be",
                "delete 1 element(s) of empty",
                "add 2 element(s) of be",
                "add 1 element(s) of svc",
                "add 1 element(s) of empty",
            ]
        );
        assert_eq!(b.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (8..14).collect::<Vec<_>>());
        assert_eq!(b.markers, [7, 14]);
        assert_eq!(batch(1, &Elements::default(), &Elements::default()), None, "nothing to change");
        // The lengths chain: every message's length leads to the next.
        let mut at = 0;
        let mut kinds = vec![];
        while at < b.bytes.len() {
            kinds.push(u16::from_ne_bytes([b.bytes[at + 4], b.bytes[at + 5]]));
            at += u32::from_ne_bytes(b.bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        assert_eq!(at, b.bytes.len());
        assert_eq!(kinds, [0x10, 0x0a0e, 0x0a0e, 0x0a0e, 0x0a0c, 0x0a0c, 0x0a0c, 0x11]);
    }

    #[test]
    fn acks_are_read_from_a_datagram() {
        let ack = |seq: u32, errno: i32| {
            let mut m = vec![0u8; 36];
            m[0..4].copy_from_slice(&36u32.to_ne_bytes());
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[8..12].copy_from_slice(&seq.to_ne_bytes());
            m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
            m
        };
        let d = [ack(3, 0), ack(4, libc::ENOENT), vec![1, 2]].concat();
        assert_eq!(acks(&d), vec![(3, 0), (4, libc::ENOENT)]);
        assert_eq!(acks(&[]), vec![]);
        let mut other = ack(5, 0);
        other[4] = 3; // NLMSG_DONE: not an ack
        assert_eq!(acks(&other), vec![]);
    }
}
