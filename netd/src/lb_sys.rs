//! The VIP load balancer's kernel half, all from a thread that entered the
//! container's namespace (`sys::in_netns`), so the root namespace is never
//! touched. Every change is one nf_tables batch (one transaction) sent on a
//! `NETLINK_NETFILTER` socket opened in the namespace, with no process:
//! the table written whole at attach or when it is not netd's shape
//! (`nft_table::whole`), `lbN` chains the first time a count needs them,
//! and membership (a backend coming or going) as set-element changes
//! (`nft_elems`). Microseconds, where an `nft` run costs ~18 ms, and every
//! change is made in every container namespace on the network. The table
//! is read back the same way (`GETTABLE`, then dumps of its chains, sets
//! and elements: `nft_table::Reader`), only by the one-off `sync` and on
//! the passes that repair drift (`Balancers`, every `FULL_EVERY`). netd
//! runs no `nft` process in a container's namespace. A table netd does not
//! know is written whole.
//!
//! A backend that leaves the table keeps its established flows (their NAT
//! binding is in conntrack): that drains a task the managers are stopping.
//! Once its task is gone, `flush_conntrack` deletes the namespace's entries
//! whose replies come from it, with one ctnetlink flush filtered on the
//! reply's source (Linux 6.8 or later; no `conntrack` tool needed), so the
//! flow's next packet is balanced afresh and fails fast (a reset from the
//! new backend, or an answer for UDP) instead of hanging on a dead address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::lb::{self, LbService, Plan};
use crate::passes::Latest;
use crate::{nft_elems, nft_table, sys};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("{netns}: entering the namespace: {source}")]
    Run { netns: PathBuf, source: std::io::Error },
    #[error("{netns}: reading the load balancer's table: {why}")]
    Read { netns: PathBuf, why: String },
    #[error("{netns}: nf_tables refused the element batch ({what}): {source}")]
    Batch { netns: PathBuf, what: String, source: std::io::Error },
    #[error("{netns}: sending the element batch over netlink: {source}")]
    Netlink { netns: PathBuf, source: std::io::Error },
    #[error("{netns}: flushing the conntrack entries of {backend}: {source}")]
    Conntrack { netns: PathBuf, backend: Ipv4Addr, source: std::io::Error },
}

/// The table in the namespace: None when it has none, or one not of netd's
/// shape. Read over netlink (`GETTABLE`, then dumps of its chains, sets and
/// elements): no `nft` process.
pub fn observe(netns: &Path) -> Result<Option<lb::Elements>, LbError> {
    observe_on(netns, &mut None)
}

/// [`observe`] on `socket` (see [`apply_on`]).
fn observe_on(netns: &Path, socket: &mut Option<ElementSocket>) -> Result<Option<lb::Elements>, LbError> {
    let socket = ElementSocket::reuse(socket, netns)?;
    if !socket.has_table()? {
        return Ok(None);
    }
    socket.read_table()
}

/// Carries out a plan of `lb::plan` in the namespace, in one nf_tables
/// batch over netlink (no process): the table whole, or the chains it adds
/// and its element changes. A refused change leaves the table as it was.
pub fn apply(netns: &Path, plan: &Plan) -> Result<(), LbError> {
    apply_on(netns, plan, &mut None)
}

/// [`apply`], sending the batch on `socket` (opened there if it is `None`
/// or not in the namespace at `netns` any more), which stays open for the
/// next one.
fn apply_on(netns: &Path, plan: &Plan, socket: &mut Option<ElementSocket>) -> Result<(), LbError> {
    if plan.script.is_empty() {
        return Ok(());
    }
    let socket = ElementSocket::reuse(socket, netns)?;
    if plan.whole {
        socket.send_batch(|seq| Some(nft_table::whole(seq, &plan.want)))
    } else {
        socket.send_batch(|seq| nft_table::change(seq, &plan.new_chains, &plan.delete, &plan.add))
    }
}

/// Deletes `del`'s keys and adds `add`'s elements in the namespace's table,
/// in one nf_tables batch (on a socket of its own: see [`ElementSocket`]).
pub fn send_elements(netns: &Path, del: &lb::Elements, add: &lb::Elements) -> Result<(), LbError> {
    ElementSocket::open(netns)?.send(del, add)
}

/// How long to wait for the kernel's acks of an element batch (it answers
/// in microseconds; this only bounds a lost answer).
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The receive buffer of an element socket: room for the acks of a whole
/// table's batch (~1 KiB of buffer each; the memory is taken only while
/// they wait to be read).
const ACK_BUFFER: usize = 8 << 20;

/// A `NETLINK_NETFILTER` socket opened in one container namespace (by a
/// thread that entered it; the socket stays in that namespace, so batches
/// are sent on it from any thread, with no `setns`).
///
/// It is kept open across batches, and closed on a thread of its own:
/// closing a socket that committed an nf_tables transaction waits for the
/// kernel to free what the transaction replaced, an RCU grace period
/// (15-30 ms measured on Linux 6.18, against ~10 µs for the batch).
#[derive(Debug)]
pub struct ElementSocket {
    socket: Option<rtnetlink::sys::Socket>,
    netns: PathBuf,
    /// The namespace's identity (nsfs device and inode) when opened.
    id: (u64, u64),
    seq: u32,
}

fn netns_id(netns: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(netns)?;
    Ok((m.dev(), m.ino()))
}

impl ElementSocket {
    pub fn open(netns: &Path) -> Result<ElementSocket, LbError> {
        use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};
        use rustix::net::sockopt::{Timeout, set_socket_recv_buffer_size_force, set_socket_timeout};
        let err = |source| LbError::Netlink { netns: netns.to_path_buf(), source };
        let id = netns_id(netns).map_err(err)?;
        let socket = sys::in_netns(netns, || {
            let socket = Socket::new(NETLINK_NETFILTER)?;
            set_socket_timeout(&socket, Timeout::Recv, Some(ACK_WAIT))?;
            // Every message of a batch is acked, each ack queued before any is read: a
            // whole table for a service of 300 backends (chains `lb1`..`lb512`) is over a
            // thousand, more than the default buffer holds (the batch then fails, ENOBUFS).
            set_socket_recv_buffer_size_force(&socket, ACK_BUFFER)?;
            Ok(socket)
        })
        .map_err(err)?;
        Ok(ElementSocket { socket: Some(socket), netns: netns.to_path_buf(), id, seq: 0 })
    }

    /// The socket in `slot` if it is still in the namespace at `netns`,
    /// else a new one put there.
    fn reuse<'a>(slot: &'a mut Option<ElementSocket>, netns: &Path) -> Result<&'a mut ElementSocket, LbError> {
        let current = slot.as_ref().is_some_and(|s| s.netns == netns && netns_id(netns).is_ok_and(|id| id == s.id));
        if !current {
            *slot = Some(ElementSocket::open(netns)?);
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// Sends one batch that deletes `del`'s keys, then adds `add`'s
    /// elements, and waits for every message's ack. The first refusal is
    /// returned (the kernel then applied none of the batch).
    pub fn send(&mut self, del: &lb::Elements, add: &lb::Elements) -> Result<(), LbError> {
        self.send_batch(|seq| nft_elems::batch(seq, del, add))
    }

    /// Sends the one-message request `make` builds with the next sequence
    /// number; returns that number, with the socket its answers come on and
    /// the namespace (None without a socket).
    fn request(
        &mut self,
        make: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Option<(u32, &rtnetlink::sys::Socket, &PathBuf)>, LbError> {
        let seq = self.next_seq();
        self.seq = seq;
        let Some(socket) = self.socket.as_ref() else {
            return Ok(None);
        };
        socket
            .send_to(&make(seq), &rtnetlink::sys::SocketAddr::new(0, 0), 0)
            .map_err(|source| LbError::Netlink { netns: self.netns.clone(), source })?;
        Ok(Some((seq, socket, &self.netns)))
    }

    /// The next sequence number (they restart long before they could wrap
    /// inside a batch).
    fn next_seq(&mut self) -> u32 {
        if self.seq > u32::MAX / 2 {
            self.seq = 0;
        }
        self.seq + 1
    }

    /// Whether the namespace has the table: a `GETTABLE` on this socket
    /// (the kernel answers the table then an ack, or `ENOENT`).
    pub fn has_table(&mut self) -> Result<bool, LbError> {
        let Some((seq, socket, netns)) = self.request(nft_table::get_table)? else {
            return Ok(false);
        };
        let io = |source| LbError::Netlink { netns: netns.clone(), source };
        loop {
            let (reply, _) = socket.recv_from_full().map_err(|e| io(timed_out(e)))?;
            // Answers to earlier requests (a batch that timed out) are skipped.
            match nft_elems::acks(&reply).into_iter().find(|(s, _)| *s == seq) {
                Some((_, 0)) => return Ok(true),
                Some((_, libc::ENOENT)) => return Ok(false),
                Some((_, errno)) => return Err(io(std::io::Error::from_raw_os_error(errno))),
                None => continue,
            }
        }
    }

    /// The table read back over netlink (see [`nft_table::Reader`]); a
    /// read the kernel reports interrupted by a change is read again.
    pub fn read_table(&mut self) -> Result<Option<lb::Elements>, LbError> {
        for _ in 0..3 {
            if let Some(table) = self.read_once()? {
                return Ok(table);
            }
        }
        Err(LbError::Read { netns: self.netns.clone(), why: "the table kept changing while it was read".into() })
    }

    /// One reading: None when a dump was interrupted.
    fn read_once(&mut self) -> Result<Option<Option<lb::Elements>>, LbError> {
        use nft_table::Dump;
        let mut reader = nft_table::Reader::default();
        for what in [Dump::Chains, Dump::Sets] {
            if !self.dump(what, &mut reader)? {
                return Ok(None);
            }
        }
        for set in reader.sets_present() {
            if !self.dump(Dump::Elements(set), &mut reader)? {
                return Ok(None);
            }
        }
        Ok(Some(reader.finish()))
    }

    /// One dump into `reader`: false when it was interrupted (or its set
    /// went meanwhile).
    fn dump(&mut self, what: nft_table::Dump, reader: &mut nft_table::Reader) -> Result<bool, LbError> {
        let Some((seq, socket, netns)) = self.request(|seq| nft_table::dump_request(seq, what))? else {
            return Ok(false);
        };
        let io = |source| LbError::Netlink { netns: netns.clone(), source };
        let read = |why: String| LbError::Read { netns: netns.clone(), why: format!("{what:?}: {why}") };
        let mut interrupted = false;
        loop {
            let (reply, _) = socket.recv_from_full().map_err(|e| io(timed_out(e)))?;
            // Answers to earlier requests (one that timed out) are skipped.
            for a in nft_table::answers(&reply).into_iter().filter(|a| a.seq == seq) {
                interrupted |= a.interrupted();
                match a.end() {
                    Some(0) => return Ok(!interrupted),
                    Some(libc::ENOENT) if matches!(what, nft_table::Dump::Elements(_)) => return Ok(false),
                    Some(errno) => return Err(read(std::io::Error::from_raw_os_error(errno).to_string())),
                    None => reader.read(a.kind, a.payload).map_err(read)?,
                }
            }
        }
    }

    /// Sends the batch `make` builds from the first sequence number it may
    /// use (nothing when it builds none), and waits for every message's
    /// ack. The first refusal is returned (the kernel then applied none of
    /// the batch).
    pub fn send_batch(&mut self, make: impl FnOnce(u32) -> Option<nft_elems::Batch>) -> Result<(), LbError> {
        let Some(batch) = make(self.next_seq()) else {
            return Ok(());
        };
        let Some(socket) = self.socket.as_ref() else {
            return Ok(());
        };
        self.seq = batch.markers[1];
        let netns = &self.netns;
        let io = |source| LbError::Netlink { netns: netns.clone(), source };
        socket.send_to(&batch.bytes, &rtnetlink::sys::SocketAddr::new(0, 0), 0).map_err(io)?;
        let mut waiting: BTreeMap<u32, String> = batch.messages.into_iter().map(|m| (m.seq, m.what)).collect();
        while !waiting.is_empty() {
            let (reply, _) = socket.recv_from_full().map_err(|e| io(timed_out(e)))?;
            for (seq, errno) in nft_elems::acks(&reply) {
                // Acks of an earlier batch (one that timed out) are not this one's.
                let what = match waiting.remove(&seq) {
                    Some(what) => what,
                    None if batch.markers.contains(&seq) => "the batch".to_string(),
                    None => continue,
                };
                if errno != 0 {
                    let source = std::io::Error::from_raw_os_error(errno);
                    return Err(LbError::Batch { netns: netns.clone(), what, source });
                }
            }
        }
        Ok(())
    }
}

/// A receive that timed out, said so.
fn timed_out(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {ACK_WAIT:?}"))
    } else {
        e
    }
}

impl Drop for ElementSocket {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            // If no thread can be made, the socket closes here (the closure is dropped).
            let _ = std::thread::Builder::new().name("shoal-lb-close".into()).spawn(move || drop(socket));
        }
    }
}

/// Makes the namespace's table balance `services` (from `lb::services_for`):
/// observe, plan, apply. Returns what was done (an empty script: nothing).
/// Blocking (netlink requests in the namespace): call it from blocking code.
pub fn sync(netns: &Path, services: &[LbService]) -> Result<Plan, LbError> {
    let mut socket = None;
    let current = observe_on(netns, &mut socket)?;
    let plan = lb::plan(services, current.as_ref());
    apply_on(netns, &plan, &mut socket)?;
    Ok(plan)
}

/// Removes the table from the namespace (the container left its last
/// network with services); nothing when it has none.
pub fn remove(netns: &Path) -> Result<(), LbError> {
    ElementSocket::open(netns)?.send_batch(|seq| Some(nft_table::remove(seq)))
}

// ctnetlink, as much as the flush needs (linux/netfilter/nfnetlink*.h); the
// netlink framing is nft_elems' (one encoder for both netfilter requests).
use crate::nft_elems::{NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, nla, nlmsg};
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// `CTA_FILTER_FLAG(CTA_IP_SRC)`: match the tuple's source address only.
const CTA_FILTER_F_IP_SRC: u32 = 1;

/// The ctnetlink request that deletes every IPv4 entry whose reply comes
/// from `backend` (a flush with a filter on the reply tuple's source).
pub fn ct_flush_request(seq: u32, backend: Ipv4Addr) -> Vec<u8> {
    let ip = nla(CTA_TUPLE_IP | NLA_F_NESTED, &nla(CTA_IP_V4_SRC, &backend.octets()));
    let tuple = nla(CTA_TUPLE_REPLY | NLA_F_NESTED, &ip);
    let flags = [
        nla(CTA_FILTER_ORIG_FLAGS, &0u32.to_ne_bytes()),
        nla(CTA_FILTER_REPLY_FLAGS, &CTA_FILTER_F_IP_SRC.to_ne_bytes()),
    ]
    .concat();
    let filter = nla(CTA_FILTER | NLA_F_NESTED, &flags);
    // nfgenmsg: family AF_INET, version 0, res_id 0.
    nlmsg(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        libc::AF_INET as u8,
        0,
        &[tuple, filter].concat(),
    )
}

/// The errno of a netlink ack (0: done), or None if `msg` is not one.
fn ack_errno(msg: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then(|| msg.get(16..20)?.try_into().ok().map(i32::from_ne_bytes)).flatten().map(|e| -e)
}

/// Deletes the namespace's conntrack entries of flows answered by each of
/// `backends` (their tasks are gone); none to delete is fine.
pub fn flush_conntrack(netns: &Path, backends: &[Ipv4Addr]) -> Result<(), LbError> {
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let wanted = backends.to_vec();
    let results = sys::in_netns(netns, move || {
        let socket = Socket::new(NETLINK_NETFILTER)?;
        let kernel = SocketAddr::new(0, 0);
        let mut out = Vec::new();
        for (seq, b) in wanted.into_iter().enumerate() {
            let r = socket.send_to(&ct_flush_request(seq as u32 + 1, b), &kernel, 0).and_then(|_| {
                let (reply, _) = socket.recv_from_full()?;
                match ack_errno(&reply) {
                    Some(0) => Ok(()),
                    Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
                    None => Err(std::io::Error::other("no ack from ctnetlink")),
                }
            });
            out.push((b, r));
        }
        Ok(out)
    })
    .map_err(|source| LbError::Run { netns: netns.to_path_buf(), source })?;
    for (backend, r) in results {
        r.map_err(|source| LbError::Conntrack { netns: netns.to_path_buf(), backend, source })?;
    }
    Ok(())
}

/// The namespaces netd balanced in, across passes: each pass makes every
/// wanted namespace's table right and removes the tables of namespaces
/// no longer wanted (a container that left its last cluster network).
#[derive(Debug, Default)]
pub struct Balancers {
    programmed: BTreeMap<PathBuf, Programmed>,
    /// Each balanced namespace's element socket, kept open across passes.
    sockets: BTreeMap<PathBuf, Option<ElementSocket>>,
    /// When the last round of drift repair began (None: no sync yet).
    last_full: Option<std::time::Instant>,
    /// The namespaces the round of drift repair under way has yet to
    /// observe (see [`repair`](Self::repair)).
    unrepaired: Vec<PathBuf>,
}

/// What netd last made a namespace's table balance, and the table as it
/// then was (`None`: no table), unless not `known` (then it is observed
/// before the next change).
#[derive(Debug, Clone)]
struct Programmed {
    services: Vec<LbService>,
    known: bool,
    table: Option<lb::Elements>,
}

/// How often every balanced namespace is observed, not only those whose
/// services changed: drift behind netd's back is repaired within this
/// (and the time a round takes, which yields to changes).
pub const FULL_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Balancers {
    /// One sync to `want` (from `lb::by_namespace`). A namespace whose
    /// services changed since it was last programmed is planned against
    /// the table netd left there, and changed by one batch on the
    /// namespace's socket (elements, and chains when a count needs them).
    /// One netd does not know (new, after a failure, or every namespace
    /// after a restart) gets its table written whole (one batch, which
    /// replaces any table there), without being read. Nothing is observed
    /// here: drift is [`repair`](Self::repair)'s, so a change to every
    /// namespace never waits for every table to be read back. The tables of
    /// namespaces that left are removed (nothing to do when the namespace
    /// itself is gone). Returns what failed; a failed namespace is written
    /// whole on the next sync.
    pub fn sync(&mut self, want: Want) -> Vec<LbError> {
        self.sync_until(&want, || false).0
    }

    /// [`sync`](Self::sync), giving way when `give_way` says so after a
    /// namespace it changed: then it returns early (false) with the
    /// namespaces done so far recorded, and a call with the same or a newer
    /// want goes on from there (a namespace already right is passed over).
    /// True when every namespace of `want` is done.
    pub fn sync_until(&mut self, want: &Want, give_way: impl Fn() -> bool) -> (Vec<LbError>, bool) {
        let mut failed = Vec::new();
        for (netns, services) in want {
            if self.programmed.get(netns).is_some_and(|p| p.known && p.services == *services) {
                continue;
            }
            // Not recorded if it fails: the next sync writes it whole.
            let last = self.programmed.remove(netns).filter(|p| p.known);
            let socket = self.sockets.entry(netns.clone()).or_default();
            match program(netns, services.clone(), last, false, socket) {
                Ok(p) => {
                    self.programmed.insert(netns.clone(), p);
                }
                Err(e) => failed.push(e),
            }
            if give_way() {
                return (failed, false);
            }
        }
        // The tables of namespaces that left, last: most of them go with
        // their namespace (a removed container's).
        let left: Vec<PathBuf> = self.programmed.keys().filter(|netns| !want.contains_key(*netns)).cloned().collect();
        for netns in left {
            if !netns.exists() {
                self.programmed.remove(&netns);
                continue;
            }
            // On the namespace's socket, when it has one (no thread entering it for a new one).
            let mut slot = self.sockets.remove(&netns).flatten();
            match ElementSocket::reuse(&mut slot, &netns).and_then(|s| s.send_batch(|seq| Some(nft_table::remove(seq))))
            {
                Ok(()) => {
                    self.programmed.remove(&netns);
                }
                Err(e) => {
                    failed.push(e);
                    if let Some(p) = self.programmed.get_mut(&netns) {
                        (p.known, p.table) = (false, None);
                    }
                }
            }
            if give_way() {
                return (failed, false);
            }
        }
        // Every table was just written whole or by what netd left there: the
        // first round of repair is a period away.
        self.last_full.get_or_insert_with(std::time::Instant::now);
        // The sockets of namespaces no longer balanced close (on their own threads).
        self.sockets.retain(|netns, _| self.programmed.contains_key(netns));
        (failed, true)
    }

    /// Whether drift repair has work: a round under way, or [`FULL_EVERY`]
    /// since the last one began.
    pub fn repair_due(&self) -> bool {
        !self.unrepaired.is_empty() || self.last_full.is_some_and(|at| at.elapsed() >= FULL_EVERY)
    }

    /// Begins a round of drift repair now (it is also begun when due).
    pub fn begin_repair(&mut self) {
        self.last_full = Some(std::time::Instant::now());
        self.unrepaired = self.programmed.keys().rev().cloned().collect();
    }

    /// Drift repair, up to `at_most` namespaces: each is observed (over
    /// netlink) and planned against what it holds, so a table changed or
    /// removed behind netd's back is made right. A round covers every
    /// balanced namespace, a few at a time between syncs (the follower
    /// stops when a want waits). Returns what failed (such a namespace is
    /// written whole by the next sync).
    pub fn repair(&mut self, at_most: usize) -> Vec<LbError> {
        if self.unrepaired.is_empty() {
            if !self.repair_due() {
                return vec![];
            }
            self.begin_repair();
        }
        let mut failed = Vec::new();
        for _ in 0..at_most {
            let Some(netns) = self.unrepaired.pop() else { break };
            let Some(last) = self.programmed.get(&netns).filter(|p| p.known) else { continue };
            let socket = self.sockets.entry(netns.clone()).or_default();
            match program(&netns, last.services.clone(), None, true, socket) {
                Ok(p) => {
                    self.programmed.insert(netns, p);
                }
                Err(e) => {
                    if let Some(p) = self.programmed.get_mut(&netns) {
                        p.known = false;
                    }
                    failed.push(e);
                }
            }
        }
        failed
    }

    /// Programs, of `want`, only the namespaces a container's start waits
    /// for: those netd has not balanced yet (written whole, without being
    /// read), and those whose VIPs changed (a container joined another
    /// network). A namespace whose backends alone moved is left to the next
    /// [`sync`](Self::sync), as are the tables of namespaces that left.
    /// Returns what failed (a failed namespace is written whole later).
    pub fn sync_starts(&mut self, want: &BTreeMap<PathBuf, Vec<LbService>>) -> Vec<LbError> {
        let vips = |s: &[LbService]| s.iter().map(|s| s.vip).collect::<Vec<_>>();
        let mut failed = Vec::new();
        for (netns, services) in want {
            let last = self.programmed.get(netns);
            if last.is_some_and(|p| vips(&p.services) == vips(services)) {
                continue;
            }
            let last = last.filter(|p| p.known).cloned();
            let socket = self.sockets.entry(netns.clone()).or_default();
            match program(netns, services.clone(), last, false, socket) {
                Ok(p) => {
                    self.programmed.insert(netns.clone(), p);
                }
                Err(e) => {
                    // Written whole by the next sync.
                    self.programmed.remove(netns);
                    failed.push(e);
                }
            }
        }
        failed
    }

    /// Flushes, in every namespace balanced now, the conntrack entries of
    /// flows to `backends` (addresses whose tasks are gone, not merely out
    /// of the table: those drain). Returns what failed.
    pub fn flush(&self, backends: &[Ipv4Addr]) -> Vec<LbError> {
        if backends.is_empty() {
            return vec![];
        }
        self.programmed.keys().filter_map(|netns| flush_conntrack(netns, backends).err()).collect()
    }
}

/// One namespace's table made to balance `services`: planned against the
/// table netd left there (`last`), or against what it holds when `full`,
/// and changed by one batch on `socket`. A table netd does not know is
/// written whole, which replaces whatever is there: no need to read it first.
fn program(
    netns: &Path,
    services: Vec<LbService>,
    last: Option<Programmed>,
    full: bool,
    socket: &mut Option<ElementSocket>,
) -> Result<Programmed, LbError> {
    let current = match last {
        _ if full => observe_on(netns, socket)?,
        Some(p) => p.table,
        None => None,
    };
    let plan = lb::plan(&services, current.as_ref());
    apply_on(netns, &plan, socket).inspect_err(|_| *socket = None)?;
    if !plan.script.is_empty() {
        tracing::debug!(netns = %netns.display(), whole = plan.whole, structure = plan.has_structure(), removed = ?plan.removed, "load balancer updated");
    }
    // No table and nothing to balance: still no table.
    let table = (current.is_some() || plan.whole).then_some(plan.want);
    Ok(Programmed { services, known: true, table })
}

/// How many namespaces a step of drift repair observes (each read back
/// whole, ~2 ms with a large service) before it looks for a newer want.
const REPAIR_STEP: usize = 4;

/// What every balanced namespace's table must hold (`lb::by_namespace`).
pub type Want = BTreeMap<PathBuf, Vec<LbService>>;

/// The [`Balancers`] driven beside netd's passes rather than inside them.
/// A pass publishes its want ([`follow`](Self::follow)); one sync at a time,
/// on a blocking thread, takes the newest (`passes::Latest`), and a want
/// published during a sync is taken up where the sync is (the namespaces
/// still to do get it in their one batch, those done get it after): a burst
/// of task starts costs about one batch per namespace, not one per view,
/// and no pass waits for other namespaces' updates. A pass that makes
/// containers' namespaces programs theirs itself
/// ([`sync_starts`](Self::sync_starts)) before it answers, so a started
/// container's first connection to a VIP works; a sync gives way to it
/// between two namespaces (a start waits for one batch, not for a change
/// to reach a hundred namespaces).
#[derive(Debug, Default)]
pub struct Follower {
    balancers: Mutex<Balancers>,
    queue: Mutex<Latest<Want>>,
    /// The newest want a finished sync covered, for those who wait on it.
    done: Notify,
    /// How many `sync_starts` wait for the balancers: a sync and repair
    /// give way to them, and wait on `started` until they have the
    /// balancers (a mutex let go and taken again at once is seldom handed
    /// over).
    starts_waiting: Mutex<usize>,
    started: std::sync::Condvar,
}

impl Follower {
    /// Publishes `want` (the balancers then sync to it, or to a newer one);
    /// its number. Starts the sync loop on a blocking thread of the current
    /// runtime if none runs.
    pub fn follow(self: &Arc<Self>, want: Want) -> u64 {
        let (n, start) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).publish(want);
        if start {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.run());
        }
        n
    }

    /// The sync loop: the newest want, synced, until none is newer. The
    /// want is taken while the balancers are held, so a sync never undoes
    /// what a later-published `sync_starts` did.
    fn run(&self) {
        struct Abandon<'a>(&'a Follower, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.queue.lock().unwrap_or_else(|p| p.into_inner()).abandoned();
                }
            }
        }
        let mut guard = Abandon(self, true);
        loop {
            self.let_starts_in();
            let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
            let Some((mut n, mut want)) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                guard.1 = false;
                return;
            };
            let (began, namespaces) = (std::time::Instant::now(), want.len());
            let mut errors = Vec::new();
            // A start waits for one namespace's batch at most, not the whole
            // sync; a newer want is taken up where the sync is (the
            // namespaces still to do get both changes in one batch).
            loop {
                let give_way = || self.starts_wait() || self.queue.lock().unwrap_or_else(|p| p.into_inner()).waiting();
                let (failed, done) = balancers.sync_until(&want, give_way);
                errors.extend(failed);
                if done {
                    break;
                }
                if self.starts_wait() {
                    drop(balancers);
                    self.let_starts_in();
                    balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
                }
                if let Some(newer) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take_newer() {
                    (n, want) = newer;
                }
            }
            drop(balancers);
            tracing::debug!(want = n, namespaces, ms = began.elapsed().as_secs_f64() * 1e3, "load balancers synced");
            for e in errors {
                tracing::warn!(error = %e, "load balancer step failed");
            }
            self.queue.lock().unwrap_or_else(|p| p.into_inner()).finished(n);
            self.done.notify_waiters();
            self.repair();
        }
    }

    /// Drift repair when due, [`REPAIR_STEP`] namespaces at a time, until
    /// the round ends, a want waits or a start's `sync_starts` does: a
    /// change never waits for a round, and a start for one step at most.
    /// A round left unfinished goes on after the next sync.
    fn repair(&self) {
        loop {
            if self.starts_wait() || self.queue.lock().unwrap_or_else(|p| p.into_inner()).waiting() {
                return;
            }
            let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
            if !balancers.repair_due() {
                return;
            }
            for e in balancers.repair(REPAIR_STEP) {
                tracing::warn!(error = %e, "load balancer repair failed");
            }
        }
    }

    /// [`Balancers::sync_starts`] for `want` (which the caller published
    /// first). Blocking: it waits for a sync that runs.
    pub fn sync_starts(&self, want: &Want) -> Vec<LbError> {
        *self.starts_waiting.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut balancers = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
        *self.starts_waiting.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.started.notify_all();
        balancers.sync_starts(want)
    }

    /// Whether a `sync_starts` waits for the balancers.
    fn starts_wait(&self) -> bool {
        *self.starts_waiting.lock().unwrap_or_else(|p| p.into_inner()) > 0
    }

    /// Waits (the balancers let go) until every `sync_starts` that waited
    /// has them: the sync then queues behind them.
    fn let_starts_in(&self) {
        let mut waiting = self.starts_waiting.lock().unwrap_or_else(|p| p.into_inner());
        while *waiting > 0 {
            waiting = self.started.wait(waiting).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The newest want published.
    pub fn published(&self) -> u64 {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).published()
    }

    /// Waits until a sync covered want `n`, at most `limit`: whether one did.
    pub async fn covered(&self, n: u64, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.queue.lock().unwrap_or_else(|p| p.into_inner()).done() >= n {
                    return true;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// [`Balancers::flush`] (blocking: it waits for a sync that runs).
    pub fn flush(&self, backends: &[Ipv4Addr]) -> Vec<LbError> {
        self.balancers.lock().unwrap_or_else(|p| p.into_inner()).flush(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes as a little-endian host sends them.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_flush_request_is_ctnetlinks() {
        let m = ct_flush_request(7, Ipv4Addr::new(10, 77, 0, 13));
        assert_eq!(m.len(), 56);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 56, "nlmsg_len");
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0102, "ctnetlink delete");
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5, "request, ack");
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7, "seq");
        assert_eq!(&m[16..20], &[2, 0, 0, 0], "nfgenmsg: AF_INET");
        // CTA_TUPLE_REPLY { CTA_TUPLE_IP { CTA_IP_V4_SRC 10.77.0.13 } }
        assert_eq!(&m[20..24], &[16, 0, 2, 0x80]);
        assert_eq!(&m[24..28], &[12, 0, 1, 0x80]);
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 10, 77, 0, 13]);
        // CTA_FILTER { ORIG_FLAGS 0, REPLY_FLAGS IP_SRC }
        assert_eq!(&m[36..40], &[20, 0, 25, 0x80]);
        assert_eq!(&m[40..48], &[8, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&m[48..56], &[8, 0, 2, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn acks_are_read() {
        let ack = |errno: i32| {
            let mut m = vec![0u8; 36];
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
            m
        };
        assert_eq!(ack_errno(&ack(0)), Some(0));
        assert_eq!(ack_errno(&ack(libc::EINVAL)), Some(libc::EINVAL));
        assert_eq!(ack_errno(&[0; 8]), None);
    }
}
