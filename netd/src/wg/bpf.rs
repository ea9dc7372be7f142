//! The programs that steer packets to the worker of their CPU
//! (`Steer::Cpu`): one on each encrypted network's TUN (which queue a packet
//! routed into it goes to) and one on the UDP socket group (which socket a
//! datagram goes to). Both choose the same way: the CPU that handles the
//! packet (its queue or socket is that CPU's, modulo their number), unless
//! the packet's flow had one less than a gap before, whose choice it then
//! follows. A flow that pauses moves to the CPU of its next packet, so a
//! request's hand-offs stay on one CPU; a flow in motion keeps its queue or
//! socket, so it stays in order and its worker may move. The gap is longer
//! for a stream (a flow whose packets come densely: `Gaps`), which may pause
//! for its window while packets of it still wait. The choices are an array
//! map of slots (last time, choice, dense) by a hash of the flow (on a
//! TUN, the XOR of its two addresses; for the sockets, the kernel's hash of
//! the datagram's addresses and ports: all of a peer host's datagrams are
//! one flow, as they share one pair of addresses and ports).
//!
//! The programs are a few instructions each, assembled here: no compiler,
//! no loader library. The kernel's verifier checks them at load.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Flows told apart (slots; a power of two).
const SLOTS: i32 = 1024;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;
const GET_SMP_PROCESSOR_ID: i32 = 8;
const SK_SELECT_REUSEPORT: i32 = 82;
/// `struct sk_reuseport_md`'s `hash` (of the datagram's addresses and ports).
const REUSEPORT_MD_HASH: i16 = 32;
const SK_PASS: i32 = 1;

/// `union bpf_attr` for `BPF_MAP_CREATE`, its leading fields.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, its leading fields.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

#[cfg(not(target_endian = "little"))]
compile_error!("the instructions below are laid out for a little-endian machine");

/// # Safety
/// `attr` must be the leading part of a `bpf_attr` for `cmd`, and the
/// pointers it holds must point at what `cmd` reads there.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's; `attr` is passed with its size and outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as u32) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// # Safety
/// As `bpf`, for a `cmd` that returns a new fd.
unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's.
    let fd = unsafe { bpf(cmd, attr) }? as libc::c_int;
    // SAFETY: the kernel just made this fd for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map(map_type: u32, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    let attr = MapCreate { map_type, key_size: 4, value_size, max_entries: entries };
    // SAFETY: a MapCreate is the leading part of BPF_MAP_CREATE's attr; it holds no pointer.
    unsafe { bpf_fd(BPF_MAP_CREATE, &attr) }
}

fn load(prog_type: u32, prog: &[u64]) -> io::Result<OwnedFd> {
    let attr = ProgLoad {
        prog_type,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
    };
    // SAFETY: a ProgLoad is the leading part of BPF_PROG_LOAD's attr; it points at `prog`
    // (`insn_cnt` instructions) and a NUL-terminated string, both live across the call.
    unsafe { bpf_fd(BPF_PROG_LOAD, &attr) }
}

/// One instruction (`struct bpf_insn`): opcode, registers, offset, immediate.
fn op(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst | src << 4) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
}

/// `dst = map` (a 64-bit load of the map's fd: two instructions).
fn load_map(dst: u8, map: &OwnedFd) -> [u64; 2] {
    [op(0x18, dst, 1, 0, map.as_raw_fd()), 0]
}

fn call(helper: i32) -> u64 {
    op(0x85, 0, 0, 0, helper)
}

const EXIT: u64 = 0x95;

/// How long a flow keeps its choice after its last packet: `sparse_ns`,
/// or `stream_ns` once its packets come less than `dense_ns` apart (a
/// stream, whose pauses while it waits for its window must not move it
/// while packets of it still wait), until one comes `dense_ns` or more
/// after the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gaps {
    pub dense_ns: u32,
    pub sparse_ns: u32,
    pub stream_ns: u32,
}

impl Gaps {
    /// Every packet chooses anew.
    pub const NONE: Gaps = Gaps { dense_ns: 0, sparse_ns: 0, stream_ns: 0 };

    /// Every flow keeps its first choice for `ns`.
    pub const fn every(ns: u32) -> Gaps {
        Gaps { dense_ns: 0, sparse_ns: ns, stream_ns: ns }
    }
}

/// The choice, with the flow's slot number in r7: r9 = the slot's choice if
/// its last packet was less than the flow's gap ago (`Gaps`), else this CPU
/// (modulo `n` when given), saved in the slot. A slot is (last time: u64,
/// choice: u32, dense: u32). r6 is kept.
fn choose(slots: &OwnedFd, gaps: Gaps, n: Option<u32>) -> Vec<u64> {
    let imm = |ns: u32| ns.min(i32::MAX as u32) as i32;
    let this_cpu = |p: &mut Vec<u64>| {
        p.push(call(GET_SMP_PROCESSOR_ID));
        if let Some(n) = n {
            p.push(op(0x97, 0, 0, 0, n.max(1) as i32)); // r0 %= n
        }
    };
    let mut p = vec![op(0x63, 10, 7, -4, 0)]; // the key on the stack
    p.extend(load_map(1, slots));
    p.extend([op(0xbf, 2, 10, 0, 0), op(0x07, 2, 0, 0, -4), call(MAP_LOOKUP_ELEM)]);
    let no_slot = p.len();
    p.push(0); // if r0 == 0: this CPU, nothing saved (never, in an array)
    p.extend([
        op(0xbf, 8, 0, 0, 0), // r8 = the slot
        call(KTIME_GET_NS),
        op(0x79, 1, 8, 0, 0),                  // r1 = slot.last
        op(0x7b, 8, 0, 0, 0),                  // slot.last = now
        op(0x1f, 0, 1, 0, 0),                  // r0 = now - last
        op(0x61, 1, 8, 12, 0),                 // r1 = slot.dense (before this packet)
        op(0xb7, 2, 0, 0, 0),                  // r2 = 0
        op(0x35, 0, 0, 1, imm(gaps.dense_ns)), // if r0 >= dense: skip the next
        op(0xb7, 2, 0, 0, 1),                  // r2 = 1
        op(0x63, 8, 2, 12, 0),                 // slot.dense = r2
    ]);
    let sparse = p.len();
    p.push(0); // if r1 == 0: the sparse gap
    let stream_paused = p.len();
    p.push(0); // if r0 > stream: this CPU
    let stream_follows = p.len();
    p.push(0); // goto follow
    let paused = p.len();
    p.push(0); // if r0 > sparse: this CPU
    let follow = p.len();
    p.push(op(0x61, 9, 8, 8, 0)); // r9 = slot.choice
    let followed = p.len();
    p.push(0); // goto the end
    let resteer = p.len();
    this_cpu(&mut p);
    p.extend([op(0x63, 8, 0, 8, 0), op(0xbf, 9, 0, 0, 0)]); // slot.choice = r9 = r0
    let resteered = p.len();
    p.push(0); // goto the end
    let unsaved = p.len();
    this_cpu(&mut p);
    p.push(op(0xbf, 9, 0, 0, 0));
    let end = p.len();
    let jump = |from: usize, to: usize| (to - from - 1) as i16;
    p[no_slot] = op(0x15, 0, 0, jump(no_slot, unsaved), 0);
    p[sparse] = op(0x15, 1, 0, jump(sparse, paused), 0);
    p[stream_paused] = op(0x25, 0, 0, jump(stream_paused, resteer), imm(gaps.stream_ns));
    p[stream_follows] = op(0x05, 0, 0, jump(stream_follows, follow), 0);
    p[paused] = op(0x25, 0, 0, jump(paused, resteer), imm(gaps.sparse_ns));
    p[followed] = op(0x05, 0, 0, jump(followed, end), 0);
    p[resteered] = op(0x05, 0, 0, jump(resteered, end), 0);
    p
}

fn slots() -> io::Result<OwnedFd> {
    map(BPF_MAP_TYPE_ARRAY, 16, SLOTS as u32)
}

/// The TUN's program (`tun::open_queues` attaches it; the kernel takes its
/// result modulo the queues).
pub fn tun_program(gaps: Gaps) -> io::Result<OwnedFd> {
    let slots = slots()?;
    let mut p = vec![
        op(0xbf, 6, 1, 0, 0),         // r6 = ctx (the packet loads use it)
        op(0x20, 0, 0, 0, 12),        // r0 = the source address
        op(0xbf, 7, 0, 0, 0),         // r7 = r0
        op(0x20, 0, 0, 0, 16),        // r0 = the destination address
        op(0xaf, 7, 0, 0, 0),         // r7 ^= r0
        op(0x57, 7, 0, 0, SLOTS - 1), // r7 &= slots - 1
    ];
    p.extend(choose(&slots, gaps, None));
    p.extend([op(0xbf, 0, 9, 0, 0), EXIT]); // return r9
    load(BPF_PROG_TYPE_SOCKET_FILTER, &p)
}

/// Steers the datagrams of the `SO_REUSEPORT` group `sockets` (bound, in
/// this order) to socket `cpu mod sockets.len()`, a flow in motion (its
/// addresses and ports) keeping its socket.
pub fn steer_sockets(sockets: &[BorrowedFd<'_>], gaps: Gaps) -> io::Result<()> {
    let Some(first) = sockets.first() else { return Ok(()) };
    let slots = slots()?;
    let group = map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, sockets.len() as u32)?;
    for (i, s) in sockets.iter().enumerate() {
        let (key, value) = (i as u32, s.as_raw_fd() as u64);
        let attr = MapUpdate {
            map_fd: group.as_raw_fd() as u32,
            pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u64 as u64,
            flags: 0,
        };
        // SAFETY: a MapUpdate is BPF_MAP_UPDATE_ELEM's attr; its key and value point at a u32
        // and a u64 on this stack, live across the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &attr) }?;
    }
    let mut p = vec![
        op(0xbf, 6, 1, 0, 0),                 // r6 = ctx
        op(0x61, 7, 6, REUSEPORT_MD_HASH, 0), // r7 = the datagram's hash
        op(0x57, 7, 0, 0, SLOTS - 1),         // r7 &= slots - 1
    ];
    p.extend(choose(&slots, gaps, Some(sockets.len() as u32)));
    p.push(op(0x63, 10, 9, -8, 0)); // the socket's index on the stack
    p.push(op(0xbf, 1, 6, 0, 0)); // r1 = ctx
    p.extend(load_map(2, &group));
    p.extend([
        op(0xbf, 3, 10, 0, 0),
        op(0x07, 3, 0, 0, -8), // r3 = &index
        op(0xb7, 4, 0, 0, 0),  // r4 = 0
        call(SK_SELECT_REUSEPORT),
        op(0xb7, 0, 0, 0, SK_PASS), // a failed selection falls back to the kernel's hash
        EXIT,
    ]);
    let prog = load(BPF_PROG_TYPE_SK_REUSEPORT, &p)?;
    super::sys::setsockopt_int(first.as_raw_fd(), libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::sys;
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    use std::os::fd::AsFd;

    fn can_load() -> bool {
        let root = rustix::process::geteuid().is_root();
        let cpus = crate::wg::allowed_cpus();
        if !root || cpus.len() < 2 || cpus[..2] != [0, 1] {
            eprintln!("skipped: needs root (to load BPF programs) and CPUs 0 and 1");
            return false;
        }
        true
    }

    /// Sends `[tag]` to `to` through `sender` from a thread pinned to `cpu`.
    fn send_from(cpu: usize, sender: &UdpSocket, to: SocketAddrV4, tag: u8) {
        let s = sender.try_clone().expect("the sender");
        std::thread::spawn(move || {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).expect("pinned");
            s.send_to(&[tag], to).expect("sent");
        })
        .join()
        .expect("the sender");
    }

    /// Which sockets of `group` hold the datagram `tag` (read and dropped), once one does.
    fn holders(group: &[OwnedFd], tag: u8) -> Vec<usize> {
        let mut buf = [0u8; 16];
        let mut found = Vec::new();
        let start = std::time::Instant::now();
        while found.is_empty() && start.elapsed() < std::time::Duration::from_secs(1) {
            for (i, s) in group.iter().enumerate() {
                while let Ok(Some(n)) = sys::read(s.as_fd(), &mut buf) {
                    if n == 1 && buf[0] == tag {
                        found.push(i);
                    }
                }
            }
        }
        found
    }

    /// A group of two loopback sockets on one port, steered with `gaps`.
    fn group(gaps: Gaps) -> (Vec<OwnedFd>, SocketAddrV4) {
        let first = sys::udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 16, false).expect("a socket");
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, sys::local_port(first.as_fd()).expect("its port"));
        let second = sys::udp_socket(to, 1 << 16, false).expect("a second socket on the port");
        steer_sockets(&[first.as_fd(), second.as_fd()], gaps).expect("the program attaches");
        (vec![first, second], to)
    }

    #[test]
    fn the_tun_program_passes_the_verifier() {
        if can_load() {
            tun_program(Gaps { dense_ns: 1_000_000, sparse_ns: 5_000_000, stream_ns: 20_000_000 })
                .expect("the TUN steering program loads");
        }
    }

    /// Loopback only: a datagram is received on the CPU that sent it.
    #[test]
    fn a_datagram_goes_to_the_socket_of_its_cpu_unless_its_flow_is_in_motion() {
        if !can_load() {
            return;
        }
        // No gap: each datagram to its CPU's socket.
        let (sockets, to) = group(Gaps::NONE);
        let new_port = || UdpSocket::bind("127.0.0.1:0").expect("a sender");
        for (tag, cpu) in [(1, 1), (2, 0), (3, 1), (4, 0)] {
            send_from(cpu, &new_port(), to, tag);
            assert_eq!(holders(&sockets, tag), vec![cpu], "datagram {tag} sent from CPU {cpu}");
        }
        // A gap longer than the test: a flow (one sender's port) keeps its first socket.
        let (sockets, to) = group(Gaps::every(2_000_000_000));
        let sender = UdpSocket::bind("127.0.0.1:0").expect("a sender");
        for (tag, cpu) in [(5, 1), (6, 0), (7, 1), (8, 0)] {
            send_from(cpu, &sender, to, tag);
            assert_eq!(holders(&sockets, tag), vec![1], "datagram {tag} of the flow in motion, from CPU {cpu}");
        }
    }

    /// A flow whose packets come densely keeps its socket for the stream's
    /// gap; one that does not, for the sparse gap only.
    #[test]
    fn a_dense_flow_keeps_its_socket_for_the_streams_gap() {
        if !can_load() {
            return;
        }
        // Every two datagrams of the test count as dense; no sparse gap, a stream's as long as
        // the test: the first two choose their CPU's socket (the flow is not dense before the
        // second), the rest follow the second.
        let (sockets, to) = group(Gaps { dense_ns: 2_000_000_000, sparse_ns: 0, stream_ns: 2_000_000_000 });
        let sender = UdpSocket::bind("127.0.0.1:0").expect("a sender");
        for (tag, cpu, want) in [(1, 1, 1), (2, 0, 0), (3, 1, 0), (4, 1, 0), (5, 1, 0)] {
            send_from(cpu, &sender, to, tag);
            assert_eq!(holders(&sockets, tag), vec![want], "datagram {tag}, from CPU {cpu}");
        }
        // A dense flow past the stream's gap chooses anew, though the sparse gap would have
        // kept it: the first datagram chooses, the second follows (and makes the flow dense),
        // the third, dense and past a stream gap of 0, goes to its CPU's socket.
        let (sockets, to) = group(Gaps { dense_ns: 2_000_000_000, sparse_ns: 2_000_000_000, stream_ns: 0 });
        for (tag, cpu, want) in [(10, 1, 1), (11, 0, 1), (12, 0, 0)] {
            send_from(cpu, &sender, to, tag);
            assert_eq!(holders(&sockets, tag), vec![want], "datagram {tag}, from CPU {cpu}");
        }
        // Never dense: the stream's gap does not apply.
        let (sockets, to) = group(Gaps { dense_ns: 0, sparse_ns: 0, stream_ns: 2_000_000_000 });
        for (tag, cpu) in [(6, 1), (7, 0), (8, 1), (9, 0)] {
            send_from(cpu, &sender, to, tag);
            assert_eq!(holders(&sockets, tag), vec![cpu], "datagram {tag}, from CPU {cpu}");
        }
    }
}
