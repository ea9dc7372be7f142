//! The `shoal_lb` table's structure as nf_tables netlink requests, so that
//! netd writes a container namespace's table in-process (one batch on a
//! `NETLINK_NETFILTER` socket) instead of running `nft -f` there: an `nft`
//! run costs ~18 ms and netd made one in every new container namespace on
//! an overlay.
//!
//! The requests are the ones `nft -f` sends for `lb::whole_table`'s script
//! (learnt with `nft --debug=netlink` and strace on nft 1.0.6), attribute
//! for attribute, so `nft list` shows the same table, `typeof` included:
//! the table (created, deleted, created: whatever was there goes), the
//! chains `lbN`, `output`, `output_filter`, the sets `svc`, `be`, `empty`,
//! the rules, then the elements (`nft_elems`, whose framing every batch
//! shares). Only difference: element requests name their set, without
//! nft's set id (the kernel looks a set up by name first).
//!
//! Rules, in nft's `--debug=netlink` words:
//!
//! ```text
//! lbN:           payload load 4b @ network header + 16 => reg 1   (ip daddr)
//!                numgen reg 9 = random mod N                      (the 32-bit register after it)
//!                lookup reg 1 set be dreg 1                       (the concatenation's backend)
//!                nat dnat ip addr_min reg 1
//! output:        payload …; lookup reg 1 set svc dreg 0           (verdict map: goto lbN)
//! output_filter: payload …; lookup reg 1 set empty; meta load l4proto => reg 1;
//!                cmp eq reg 1 0x06; reject type 1 (tcp reset)
//!                payload …; lookup reg 1 set empty; reject type 0 code 3 (port unreachable)
//! ```

use std::collections::BTreeSet;

use crate::lb::{Elements, TABLE};
use crate::nft_elems::{
    Batch, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Request, cstr, element_requests, frame, nest,
    nla, nlmsg,
};

// linux/netfilter/nf_tables.h, linux/netfilter.h.
const NLM_F_APPEND: u16 = 0x800;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_MAP: u32 = 8;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFT_NAT_DNAT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
/// Registers: the verdict, the first 16-byte one, and the 32-bit one after
/// the first 4 bytes of it (where a concatenation's second part goes).
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG32_01: u32 = 9;

// nft's data types (the set's key and data type as nft names them).
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
/// A concatenation's type: its parts' types, 6 bits each.
const TYPE_BITS: u32 = 6;

/// The sets' ids in a batch that makes them (rules refer to a set by name
/// and by this id, as nft does).
const SVC_ID: u32 = 1;
const BE_ID: u32 = 2;
const EMPTY_ID: u32 = 3;

/// The sets' user data: how `nft list` prints them (libnftnl's TLVs: a
/// byte of type, a byte of length, the value; u32 values in host order).
mod udata {
    pub const KEY_BYTEORDER: u8 = 0;
    pub const DATA_BYTEORDER: u8 = 1;
    pub const KEY_TYPEOF: u8 = 3;
    pub const DATA_TYPEOF: u8 = 4;
    pub const DATA_INTERVAL: u8 = 6;
    pub const BIG_ENDIAN: u32 = 2;
    /// In a `typeof` expression: its kind, then its data.
    pub const EXPR_KIND: u8 = 0;
    pub const EXPR_DATA: u8 = 1;
    /// nft's expression kinds (libnftables' numbering, not the kernel's).
    pub const PAYLOAD: u32 = 7;
    pub const CONCAT: u32 = 13;
    pub const NUMGEN: u32 = 23;
    /// A payload's protocol (nft's `ip`) and field (`daddr`).
    pub const PROTO_IP: u32 = 12;
    pub const IP_DADDR: u32 = 12;

    pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        [&[kind, value.len() as u8][..], value].concat()
    }

    pub fn u32(kind: u8, v: u32) -> Vec<u8> {
        tlv(kind, &v.to_ne_bytes())
    }

    pub fn expr(kind: u32, data: &[Vec<u8>]) -> Vec<u8> {
        [u32(EXPR_KIND, kind), tlv(EXPR_DATA, &data.concat())].concat()
    }

    /// `ip daddr`.
    pub fn ip_daddr() -> Vec<u8> {
        expr(PAYLOAD, &[u32(0, PROTO_IP), u32(1, IP_DADDR)])
    }

    /// `numgen random mod 1` (`be`'s typeof: the modulus is the rule's, not the set's).
    pub fn numgen_random_mod_1() -> Vec<u8> {
        expr(NUMGEN, &[u32(0, 1), u32(1, 1), u32(2, 0)])
    }
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn u32_attr(kind: u16, v: u32) -> Vec<u8> {
    nla(kind, &v.to_be_bytes())
}

fn request(what: String, kind: u16, flags: u16, parts: &[Vec<u8>]) -> Request {
    Request { what, kind, flags, body: parts.concat() }
}

fn table_name() -> Vec<u8> {
    nla(NFTA_TABLE_NAME, &cstr(TABLE))
}

/// `table ip shoal_lb` (create it if absent), then `delete table`: the
/// table gone, whether it was there or not.
fn table_gone() -> [Request; 2] {
    [
        request("add the table".into(), NFT_MSG_NEWTABLE, 0, &[table_name(), nla(NFTA_TABLE_FLAGS, &be32(0))]),
        request("delete the table".into(), NFT_MSG_DELTABLE, 0, &[table_name()]),
    ]
}

fn chain(name: &str, hook: Option<(&str, i32)>) -> Request {
    let mut parts = vec![nla(NFTA_CHAIN_TABLE, &cstr(TABLE)), nla(NFTA_CHAIN_NAME, &cstr(name))];
    if let Some((kind, priority)) = hook {
        parts.push(nla(NFTA_CHAIN_TYPE, &cstr(kind)));
        parts.push(u32_attr(NFTA_CHAIN_POLICY, NF_ACCEPT));
        parts.push(nest(
            NFTA_CHAIN_HOOK,
            &[u32_attr(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT), nla(NFTA_HOOK_PRIORITY, &priority.to_be_bytes())],
        ));
    }
    request(format!("add chain {name}"), NFT_MSG_NEWCHAIN, NLM_F_CREATE, &parts)
}

fn sets() -> [Request; 3] {
    use udata::*;
    let set = |name: &str, id: u32, attrs: &[Vec<u8>], ud: &[Vec<u8>]| {
        let mut parts = vec![nla(NFTA_SET_TABLE, &cstr(TABLE)), nla(NFTA_SET_NAME, &cstr(name))];
        parts.extend_from_slice(attrs);
        parts.push(u32_attr(NFTA_SET_ID, id));
        parts.push(nla(NFTA_SET_USERDATA, &ud.concat()));
        request(format!("add set {name}"), NFT_MSG_NEWSET, NLM_F_CREATE, &parts)
    };
    [
        // map svc { type ipv4_addr : verdict; }
        set(
            "svc",
            SVC_ID,
            &[
                u32_attr(NFTA_SET_FLAGS, NFT_SET_MAP),
                u32_attr(NFTA_SET_KEY_TYPE, TYPE_IPADDR),
                u32_attr(NFTA_SET_KEY_LEN, 4),
                u32_attr(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT),
                u32_attr(NFTA_SET_DATA_LEN, 0),
            ],
            &[udata::u32(KEY_BYTEORDER, BIG_ENDIAN), udata::u32(DATA_BYTEORDER, 0), udata::u32(DATA_INTERVAL, 0)],
        ),
        // map be { typeof ip daddr . numgen random mod 1 : ip daddr; }
        set(
            "be",
            BE_ID,
            &[
                u32_attr(NFTA_SET_FLAGS, NFT_SET_MAP),
                u32_attr(NFTA_SET_KEY_TYPE, (TYPE_IPADDR << TYPE_BITS) | TYPE_INTEGER),
                u32_attr(NFTA_SET_KEY_LEN, 8),
                u32_attr(NFTA_SET_DATA_TYPE, TYPE_IPADDR),
                u32_attr(NFTA_SET_DATA_LEN, 4),
            ],
            &[
                udata::u32(KEY_BYTEORDER, 0),
                udata::u32(DATA_BYTEORDER, BIG_ENDIAN),
                tlv(KEY_TYPEOF, &expr(CONCAT, &[tlv(0, &ip_daddr()), tlv(1, &numgen_random_mod_1())])),
                tlv(DATA_TYPEOF, &ip_daddr()),
                udata::u32(DATA_INTERVAL, 0),
            ],
        ),
        // set empty { type ipv4_addr; }
        set(
            "empty",
            EMPTY_ID,
            &[u32_attr(NFTA_SET_FLAGS, 0), u32_attr(NFTA_SET_KEY_TYPE, TYPE_IPADDR), u32_attr(NFTA_SET_KEY_LEN, 4)],
            &[udata::u32(KEY_BYTEORDER, BIG_ENDIAN)],
        ),
    ]
}

fn expr(name: &str, attrs: &[Vec<u8>]) -> Vec<u8> {
    nest(NFTA_LIST_ELEM, &[nla(NFTA_EXPR_NAME, &cstr(name)), nest(NFTA_EXPR_DATA, attrs)])
}

fn rule(chain: &str, exprs: &[Vec<u8>]) -> Request {
    request(
        format!("add a rule to {chain}"),
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        &[nla(NFTA_RULE_TABLE, &cstr(TABLE)), nla(NFTA_RULE_CHAIN, &cstr(chain)), nest(NFTA_RULE_EXPRESSIONS, exprs)],
    )
}

/// `ip daddr` into register 1.
fn ip_daddr() -> Vec<u8> {
    expr(
        "payload",
        &[
            u32_attr(NFTA_PAYLOAD_DREG, NFT_REG_1),
            u32_attr(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
            u32_attr(NFTA_PAYLOAD_OFFSET, 16),
            u32_attr(NFTA_PAYLOAD_LEN, 4),
        ],
    )
}

/// A lookup of register 1 in `set` (with the set's id in the batch that
/// makes it), its value into `dreg` for a map.
fn lookup(set: &str, id: u32, dreg: Option<u32>) -> Vec<u8> {
    let mut attrs = vec![u32_attr(NFTA_LOOKUP_SREG, NFT_REG_1)];
    attrs.extend(dreg.map(|r| u32_attr(NFTA_LOOKUP_DREG, r)));
    attrs.push(nla(NFTA_LOOKUP_SET, &cstr(set)));
    attrs.push(u32_attr(NFTA_LOOKUP_SET_ID, id));
    expr("lookup", &attrs)
}

/// `dnat ip to ip daddr . numgen random mod N map @be`.
fn lb_rule(n: u32) -> Request {
    let numgen = expr(
        "numgen",
        &[
            u32_attr(NFTA_NG_DREG, NFT_REG32_01),
            u32_attr(NFTA_NG_MODULUS, n),
            u32_attr(NFTA_NG_TYPE, NFT_NG_RANDOM),
            u32_attr(NFTA_NG_OFFSET, 0),
        ],
    );
    let nat = expr(
        "nat",
        &[
            u32_attr(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            u32_attr(NFTA_NAT_FAMILY, NFPROTO_IPV4),
            u32_attr(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
        ],
    );
    rule(&format!("lb{n}"), &[ip_daddr(), numgen, lookup("be", BE_ID, Some(NFT_REG_1)), nat])
}

/// The base chains' rules: `ip daddr vmap @svc`; `ip daddr @empty meta
/// l4proto tcp reject with tcp reset`, `ip daddr @empty reject`.
fn base_rules() -> [Request; 3] {
    let in_empty = || lookup("empty", EMPTY_ID, None);
    let reject =
        |kind: u32, code: u8| expr("reject", &[u32_attr(NFTA_REJECT_TYPE, kind), nla(NFTA_REJECT_ICMP_CODE, &[code])]);
    let tcp = [
        expr("meta", &[u32_attr(NFTA_META_KEY, NFT_META_L4PROTO), u32_attr(NFTA_META_DREG, NFT_REG_1)]),
        expr(
            "cmp",
            &[
                u32_attr(NFTA_CMP_SREG, NFT_REG_1),
                u32_attr(NFTA_CMP_OP, NFT_CMP_EQ),
                nest(NFTA_CMP_DATA, &[nla(NFTA_DATA_VALUE, &[libc::IPPROTO_TCP as u8])]),
            ],
        ),
    ];
    [
        rule("output", &[ip_daddr(), lookup("svc", SVC_ID, Some(NFT_REG_VERDICT))]),
        rule("output_filter", &[ip_daddr(), in_empty(), tcp[0].clone(), tcp[1].clone(), reject(NFT_REJECT_TCP_RST, 0)]),
        rule("output_filter", &[ip_daddr(), in_empty(), reject(NFT_REJECT_ICMP_UNREACH, ICMP_PORT_UNREACH)]),
    ]
}

/// The batch that writes the table whole with `e`'s chains and elements,
/// replacing any table of that name (`lb::whole_table`'s script), its
/// messages numbered from `seq` on.
pub fn whole(seq: u32, e: &Elements) -> Batch {
    let mut r: Vec<Request> = table_gone().into();
    r.push(request("add the table".into(), NFT_MSG_NEWTABLE, 0, &[table_name(), nla(NFTA_TABLE_FLAGS, &be32(0))]));
    r.extend(e.chains.iter().map(|n| chain(&format!("lb{n}"), None)));
    r.push(chain("output", Some(("nat", -100))));
    r.push(chain("output_filter", Some(("filter", -110))));
    r.extend(sets());
    r.extend(e.chains.iter().map(|n| lb_rule(*n)));
    r.extend(base_rules());
    r.extend(element_requests(&Elements::default(), e));
    frame(seq, r).expect("a table has requests")
}

/// The batch that adds the chains `new_chains` (each with its rule) to the
/// existing table, then deletes `del`'s keys and adds `add`'s elements:
/// `lb::plan`'s change in one transaction. `None` when there is nothing.
pub fn change(seq: u32, new_chains: &BTreeSet<u32>, del: &Elements, add: &Elements) -> Option<Batch> {
    let mut r: Vec<Request> = Vec::new();
    for n in new_chains {
        r.push(chain(&format!("lb{n}"), None));
        r.push(lb_rule(*n));
    }
    r.extend(element_requests(del, add));
    frame(seq, r)
}

/// The batch that removes the table; nothing is refused when it is absent.
pub fn remove(seq: u32) -> Batch {
    frame(seq, table_gone().into()).expect("two requests")
}

/// A `GETTABLE` request for the table: the kernel answers the table and an
/// ack, or an `ENOENT` error when the namespace has none.
pub fn get_table(seq: u32) -> Vec<u8> {
    nlmsg(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        libc::AF_INET as u8,
        0,
        &table_name(),
    )
}

// Reading the table back: dumps of its chains, sets and elements.
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NLM_F_DUMP: u16 = 0x300;
/// On a dump's answer: the ruleset changed while it was dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_DONE: u16 = 3;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// What a dump asks for: the family's chains, the table's sets, or one
/// set's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    Chains,
    Sets,
    Elements(&'static str),
}

/// The sets of netd's table, and whether each is a map.
pub const SETS: [(&str, bool); 3] = [("svc", true), ("be", true), ("empty", false)];

/// The request of one dump (the kernel answers messages, then `NLMSG_DONE`).
pub fn dump_request(seq: u32, what: Dump) -> Vec<u8> {
    let (kind, body) = match what {
        Dump::Chains => (NFT_MSG_GETCHAIN, nla(NFTA_CHAIN_TABLE, &cstr(TABLE))),
        Dump::Sets => (NFT_MSG_GETSET, nla(NFTA_SET_TABLE, &cstr(TABLE))),
        Dump::Elements(set) => (
            NFT_MSG_GETSETELEM,
            [nla(NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE)), nla(NFTA_SET_ELEM_LIST_SET, &cstr(set))].concat(),
        ),
    };
    nlmsg((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_DUMP, seq, libc::AF_INET as u8, 0, &body)
}

/// One netlink message of a datagram from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// After the netlink header (for nf_tables messages: nfgenmsg, then attributes).
    pub payload: &'a [u8],
}

impl Answer<'_> {
    /// The end of a dump (`Some(0)`), or an error or ack (its errno), or
    /// `None` for a message with content.
    pub fn end(&self) -> Option<i32> {
        match self.kind {
            NLMSG_DONE => Some(0),
            crate::nft_elems::NLMSG_ERROR => {
                let e = self.payload.get(..4)?;
                Some(-i32::from_ne_bytes(e.try_into().ok()?))
            }
            _ => None,
        }
    }

    /// Whether the ruleset changed while this dump ran (read it again).
    pub fn interrupted(&self) -> bool {
        self.flags & NLM_F_DUMP_INTR != 0
    }
}

/// The messages in one datagram (a truncated one ends the reading).
pub fn answers(datagram: &[u8]) -> Vec<Answer<'_>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        out.push(Answer {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[16..len],
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// The attributes in `b`: (type without the flag bits, payload).
pub(crate) fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = b;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((kind, payload))
    })
}

fn attr(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b.split(|c| *c == 0).next().unwrap_or_default()).unwrap_or_default()
}

fn ipv4(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    Some(<[u8; 4]>::try_from(b).ok()?.into())
}

/// The table as its dumps' messages read it: `lb::parse_json`'s result,
/// from netlink (no `nft` process).
#[derive(Debug, Default)]
pub struct Reader {
    chains: BTreeSet<String>,
    /// The table's sets: name → whether it is a map.
    sets: std::collections::BTreeMap<String, bool>,
    elements: Elements,
}

impl Reader {
    /// Takes in one message of a dump (`payload` as [`Answer`] has it);
    /// what is not about netd's table is skipped. An element netd would
    /// not write is an error.
    pub fn read(&mut self, kind: u16, payload: &[u8]) -> Result<(), String> {
        let Some(body) = payload.get(4..) else {
            return Ok(());
        };
        let table = |k| attr(body, k).map(text) == Some(TABLE);
        match kind & 0xff {
            NFT_MSG_NEWCHAIN if table(NFTA_CHAIN_TABLE) => {
                let name = attr(body, NFTA_CHAIN_NAME).map(text).unwrap_or_default();
                match name.strip_prefix("lb").and_then(|n| n.parse::<u32>().ok()) {
                    Some(n) => {
                        self.elements.chains.insert(n);
                    }
                    None => {
                        self.chains.insert(name.to_string());
                    }
                }
            }
            NFT_MSG_NEWSET if table(NFTA_SET_TABLE) => {
                let name = attr(body, NFTA_SET_NAME).map(text).unwrap_or_default();
                let flags =
                    attr(body, NFTA_SET_FLAGS).and_then(|f| <[u8; 4]>::try_from(f).ok()).map(u32::from_be_bytes);
                self.sets.insert(name.to_string(), flags.unwrap_or(0) & NFT_SET_MAP != 0);
            }
            NFT_MSG_NEWSETELEM if table(NFTA_SET_ELEM_LIST_TABLE) => {
                let set = attr(body, NFTA_SET_ELEM_LIST_SET).map(text).unwrap_or_default().to_string();
                for (_, elem) in attrs(attr(body, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap_or_default()) {
                    self.element(&set, elem)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn element(&mut self, set: &str, elem: &[u8]) -> Result<(), String> {
        let bad = || format!("the table's netlink dump: unexpected {set} element");
        let key = attr(elem, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE)).ok_or_else(bad)?;
        let data = attr(elem, NFTA_SET_ELEM_DATA);
        let e = &mut self.elements;
        match set {
            "svc" => {
                let chain = data
                    .and_then(|d| attr(d, NFTA_DATA_VERDICT))
                    .and_then(|v| attr(v, NFTA_VERDICT_CHAIN))
                    .map(text)
                    .and_then(|c| c.strip_prefix("lb")?.parse().ok());
                e.svc.insert(ipv4(key).ok_or_else(bad)?, chain.ok_or_else(bad)?);
            }
            "be" => {
                let (vip, slot) = key.split_at_checked(4).ok_or_else(bad)?;
                let slot = u32::from_ne_bytes(slot.try_into().map_err(|_| bad())?);
                let backend = data.and_then(|d| attr(d, NFTA_DATA_VALUE)).and_then(ipv4).ok_or_else(bad)?;
                e.be.insert((ipv4(vip).ok_or_else(bad)?, slot), backend);
            }
            "empty" => {
                e.empty.insert(ipv4(key).ok_or_else(bad)?);
            }
            _ => {}
        }
        Ok(())
    }

    /// The sets whose elements to dump next: netd's that the table has.
    pub fn sets_present(&self) -> Vec<&'static str> {
        SETS.iter().filter(|(name, _)| self.sets.contains_key(*name)).map(|(name, _)| *name).collect()
    }

    /// The table read: None when it lacks a part of netd's shape (a set,
    /// a map that is not one, a base chain).
    pub fn finish(self) -> Option<Elements> {
        let shaped = SETS.iter().all(|(name, map)| self.sets.get(*name) == Some(map))
            && ["output", "output_filter"].iter().all(|c| self.chains.contains(*c));
        shaped.then_some(self.elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft_elems::NLA_F_NESTED;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The messages of a batch: (type, flags, seq, body after nfgenmsg).
    fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = vec![];
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            out.push((kind, flags, seq, bytes[at + 20..at + len].to_vec()));
            at += len;
        }
        assert_eq!(at, bytes.len(), "the lengths chain to the end");
        out
    }

    fn two_backends() -> Elements {
        Elements {
            svc: BTreeMap::from([(ip("10.10.0.100"), 2)]),
            be: BTreeMap::from([
                ((ip("10.10.0.100"), 0), ip("10.10.0.12")),
                ((ip("10.10.0.100"), 1), ip("10.10.0.13")),
            ]),
            empty: BTreeSet::from([ip("10.10.0.101")]),
            chains: BTreeSet::from([1, 2]),
        }
    }

    /// What nft 1.0.6 sent (strace) for `lb::whole_table`'s script with
    /// these elements (testdata/nft-1.0.6-lb-table.nft), on a
    /// little-endian host.
    const NFT: &[u8] = include_bytes!("../testdata/nft-1.0.6-lb-table.bin");

    /// A body's top-level attributes other than `kind`.
    fn without(body: &[u8], kind: u16) -> Vec<u8> {
        let mut out = vec![];
        let mut at = 0;
        while at < body.len() {
            let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
            let end = (at + len.next_multiple_of(4)).min(body.len());
            if u16::from_ne_bytes([body[at + 2], body[at + 3]]) & !NLA_F_NESTED != kind {
                out.extend_from_slice(&body[at..end]);
            }
            at = end;
        }
        out
    }

    /// Message for message, the batch nft sends: the same types, flags
    /// (with our acks asked for) and bodies, byte for byte; element
    /// requests without nft's set id.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_whole_table_is_nfts_batch() {
        let ours = whole(0, &two_backends());
        let (ours, nft) = (messages(&ours.bytes), messages(NFT));
        assert_eq!(ours.len(), nft.len());
        for (i, (o, n)) in ours.iter().zip(&nft).enumerate() {
            assert_eq!(o.0, n.0, "message {i}: type");
            let ack = if i == 0 || i == nft.len() - 1 { 0 } else { NLM_F_ACK };
            assert_eq!(o.1, n.1 | ack, "message {i}: flags");
            assert_eq!(o.2, n.2, "message {i}: seq");
            let nft_body = if n.0 == 0x0a0c { without(&n.3, 4) } else { n.3.clone() };
            assert_eq!(o.3, nft_body, "message {i} (type {:#x}): body", o.0);
        }
        let b = whole(10, &two_backends());
        assert_eq!(b.markers, [10, 29]);
        assert_eq!(b.messages[7].what, "add set svc");
        assert_eq!(b.messages[12].what, "add a rule to output");
    }

    /// The messages that write a table, read as the kernel's dumps answer
    /// them (the same attributes), give that table back; a part missing
    /// is not netd's shape; a malformed element is an error.
    #[test]
    fn the_reader_reads_what_the_batch_writes() {
        let e = two_backends();
        let b = whole(1, &e);
        let read = |skip: Option<&str>| {
            let mut r = Reader::default();
            for a in answers(&b.bytes) {
                let what = b.messages.iter().find(|m| m.seq == a.seq).map(|m| m.what.as_str());
                if what.is_some() && what == skip {
                    continue;
                }
                r.read(a.kind, a.payload).unwrap();
            }
            r
        };
        let r = read(None);
        assert_eq!(r.sets_present(), ["svc", "be", "empty"]);
        assert_eq!(r.finish(), Some(e.clone()));
        assert_eq!(read(Some("add set empty")).finish(), None, "no set empty");
        assert_eq!(read(Some("add chain output_filter")).finish(), None, "no filter chain");
        // A be element whose key is not (address, slot).
        let bad = crate::nft_elems::element_requests(
            &Elements::default(),
            &Elements { empty: BTreeSet::from([ip("10.0.0.1")]), ..Default::default() },
        );
        let mut body = bad[0].body.clone();
        let set = body.windows(6).position(|w| w == b"empty\0").unwrap();
        body[set..set + 2].copy_from_slice(b"be");
        body[set + 2] = 0;
        let mut payload = vec![2, 0, 0, 0];
        payload.extend(body);
        let err = Reader::default().read(0x0a0c, &payload).unwrap_err();
        assert!(err.contains("unexpected be element"), "{err}");
        // Dump requests and their ends.
        let d = dump_request(4, Dump::Elements("be"));
        let a = answers(&d);
        assert_eq!((a[0].kind, a[0].flags, a[0].seq), (0x0a0d, 0x301, 4));
        let mut done = d[..20].to_vec();
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        done[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        let a = answers(&done);
        assert_eq!(a[0].end(), Some(0));
        assert!(a[0].interrupted());
    }

    #[test]
    fn a_change_adds_its_chains_before_the_elements() {
        let add = Elements { svc: BTreeMap::from([(ip("10.10.0.100"), 17)]), ..Default::default() };
        let del = Elements { svc: BTreeMap::from([(ip("10.10.0.100"), 2)]), ..Default::default() };
        let b = change(1, &BTreeSet::from([17, 18]), &del, &add).expect("a change");
        let what: Vec<&str> = b.messages.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "add chain lb17",
                "add a rule to lb17",
                "add chain lb18",
                "add a rule to lb18",
                "delete 1 element(s) of svc",
                "add 1 element(s) of svc"
            ]
        );
        assert_eq!(change(1, &BTreeSet::new(), &Elements::default(), &Elements::default()), None);
        let e = Elements::default();
        assert_eq!(change(1, &BTreeSet::new(), &e, &add), crate::nft_elems::batch(1, &e, &add), "elements alone");
        let r = remove(5);
        assert_eq!(
            r.messages.iter().map(|m| m.what.as_str()).collect::<Vec<_>>(),
            ["add the table", "delete the table"]
        );
        let g = get_table(3);
        assert_eq!(u16::from_ne_bytes([g[4], g[5]]), 0x0a01, "GETTABLE");
        assert_eq!(&g[20..], &table_name()[..]);
    }
}
