//! The WireGuard datapath's kernel calls (with `bpf.rs`, the only unsafe
//! code under `wg/`): the TUN ioctls, the interface ioctls for MTU and up, the UDP
//! socket's options, `sendmsg` with `UDP_SEGMENT`, `recvmmsg` (epoll is rustix's).
#![allow(unsafe_code)]

use rustix::event::epoll;
use std::ffi::c_void;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
pub const IFF_TUN: i16 = 0x0001;
pub const IFF_NO_PI: i16 = 0x1000;
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
pub const IFF_VNET_HDR: i16 = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// Opens `/dev/net/tun` (non-blocking) and attaches it to the TUN `name`
/// with `flags` (made if missing): a queue of that device.
pub fn tun_attach(name: &str, flags: i16) -> io::Result<OwnedFd> {
    let mut req = ifreq(name)?;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: a NUL-terminated path literal; the returned fd is owned below.
    let fd = cvt(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads (and writes back) one `struct ifreq`, which `req` is laid out as.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) })?;
    Ok(fd)
}

pub fn tun_set_persist(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, on as libc::c_ulong) }).map(drop)
}

pub fn tun_set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes an integer argument, no pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) }).map(drop)
}

/// Whether the queue `fd` is still attached to its device: once the TUN is
/// deleted (alone or with its namespace) its queues answer `EBADFD`.
pub fn tun_attached(fd: BorrowedFd<'_>) -> bool {
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
    // SAFETY: TUNGETIFF writes one `struct ifreq`, which `req` is laid out as.
    unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) >= 0 }
}

fn inet_dgram() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: just made, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the calling thread's namespace has an interface `name`.
pub fn link_exists(name: &str) -> io::Result<bool> {
    let s = inet_dgram()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX fills the int after the name in `req`.
    match cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFINDEX, &mut req as *mut IfReq) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets `name`'s MTU and brings it up, in the calling thread's namespace.
pub fn set_mtu_up(name: &str, mtu: u32) -> io::Result<()> {
    let s = inet_dgram()?;
    let mut req = ifreq(name)?;
    req.data[..4].copy_from_slice(&(mtu as libc::c_int).to_ne_bytes());
    // SAFETY: SIOCSIFMTU reads the int after the name in `req`.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU, &mut req as *mut IfReq) })?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS writes the short after the name in `req`.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) })?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SIOCSIFFLAGS reads the short after the name in `req`.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req as *mut IfReq) }).map(drop)
}

pub(super) fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is one int, passed with its size.
    cvt(unsafe {
        libc::setsockopt(fd, level, name, &v as *const libc::c_int as *const c_void, size_of::<libc::c_int>() as u32)
    })
    .map(drop)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
    sa
}

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (one per
/// worker on the same address) and buffers of `buf` bytes (forced past
/// `rmem_max` where netd may; the plain setting otherwise). With `gro`, it
/// asks for `UDP_GRO`: consecutive datagrams from one sender may then come
/// as one message (`RecvBatch` reports their size); a kernel without it
/// (before 5.0) hands each datagram alone.
pub fn udp_socket(addr: SocketAddrV4, buf: usize, gro: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: just made, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let b = buf.min(i32::MAX as usize) as libc::c_int;
    if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, b).is_err() {
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, b)?;
    }
    if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, b).is_err() {
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, b)?;
    }
    if gro {
        // A kernel without it (`udp_gro` says) hands each datagram alone.
        setsockopt_int(raw, SOL_UDP, UDP_GRO, 1).ok();
    }
    let sa = sockaddr(addr);
    // SAFETY: `sa` is a sockaddr_in of the size passed.
    cvt(unsafe {
        libc::bind(raw, &sa as *const libc::sockaddr_in as *const libc::sockaddr, size_of::<libc::sockaddr_in>() as u32)
    })?;
    Ok(fd)
}

/// Whether `UDP_GRO` is on for a socket (`udp_socket` asks for it).
pub fn udp_gro(fd: BorrowedFd<'_>) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option value is one int, with its size passed.
    let r = unsafe {
        libc::getsockopt(fd.as_raw_fd(), SOL_UDP, UDP_GRO, &mut v as *mut libc::c_int as *mut c_void, &mut len)
    };
    r == 0 && v != 0
}

/// Attaches `prog` to the TUN that `queue` belongs to: it picks the queue of
/// each packet. `None` removes the one attached (the kernel's flow table picks).
pub fn tun_steer(queue: BorrowedFd<'_>, prog: Option<BorrowedFd<'_>>) -> io::Result<()> {
    const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
    let fd: libc::c_int = prog.map_or(-1, |p| p.as_raw_fd());
    // SAFETY: TUNSETSTEERINGEBPF reads one int (a program's fd) from the pointer.
    cvt(unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF, &fd as *const libc::c_int) }).map(drop)
}

/// The port a socket is bound to.
pub fn local_port(fd: BorrowedFd<'_>) -> io::Result<u16> {
    // SAFETY: plain data, filled by getsockname.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` has room for `len` bytes.
    cvt(unsafe {
        libc::getsockname(fd.as_raw_fd(), &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut len)
    })?;
    Ok(u16::from_be(sa.sin_port))
}

/// Sends `buf` to `dst`; with `seg` set, as `UDP_SEGMENT` datagrams of
/// `seg` bytes each (the last may be shorter).
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], dst: SocketAddrV4, seg: Option<u16>) -> io::Result<usize> {
    let mut sa = sockaddr(dst);
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut c_void, iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut sa as *mut libc::sockaddr_in as *mut c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // Room for one cmsg carrying a u16, 8-aligned.
    let mut control = [0u64; 4];
    if let Some(seg) = seg {
        // SAFETY: CMSG_SPACE is a size computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `control` (32 bytes ≥ `space`), so the first header
        // and its data lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        }
    }
    // SAFETY: every pointer in `msg` refers to locals that outlive the call.
    cvt_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

/// `recvmmsg`'s headers for up to `n` messages, made once per worker and
/// reused by every `recv` (no allocation per wake-up).
pub struct RecvBatch {
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// Room for each message's `UDP_GRO` control message, 8-aligned.
    controls: Vec<[u64; 4]>,
}

/// One message taken by `RecvBatch::recv`: `len` bytes from `from`, made
/// of datagrams of `seg` bytes each (the last may be shorter); `seg` is
/// `len` where the kernel did not coalesce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub seg: usize,
    pub from: SocketAddrV4,
}

impl Received {
    /// The datagrams in the message's buffer.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        buf[..self.len].chunks(self.seg.max(1))
    }
}

impl RecvBatch {
    pub fn new(n: usize) -> RecvBatch {
        // SAFETY: plain data; all-zero is valid.
        let (name, msg) = unsafe { (zeroed::<libc::sockaddr_in>(), zeroed::<libc::mmsghdr>()) };
        RecvBatch {
            names: vec![name; n],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            msgs: vec![msg; n],
            controls: vec![[0; 4]; n],
        }
    }

    /// Receives up to `min(n, bufs.len())` messages without blocking into
    /// `bufs`, and says what each holds in `got` (`got[i]` for `bufs[i]`).
    /// 0 when none is waiting. A message cut short (by its buffer, or its
    /// control message by the room for it) counts as empty.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, bufs: &mut [Vec<u8>], got: &mut Vec<Received>) -> io::Result<usize> {
        let n = bufs.len().min(self.msgs.len());
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            self.iovs[i] = libc::iovec { iov_base: b.as_mut_ptr() as *mut c_void, iov_len: b.len() };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut libc::sockaddr_in as *mut c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr() as *mut c_void;
            h.msg_controllen = size_of::<[u64; 4]>();
            h.msg_flags = 0;
        }
        // SAFETY: each of the first `n` headers points at its own name, iovec and control
        // buffer, each iovec at a live buffer of the length given; all of them outlive the call.
        let r = unsafe {
            libc::recvmmsg(fd.as_raw_fd(), self.msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        got.clear();
        for i in 0..r as usize {
            let h = &self.msgs[i].msg_hdr;
            let mut len = self.msgs[i].msg_len as usize;
            if h.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
                // Cut short, or its segment size lost with its control message: unreadable.
                tracing::debug!(len, flags = h.msg_flags, "wireguard: a message cut short, dropped");
                len = 0;
            }
            let sa = &self.names[i];
            let from = SocketAddrV4::new(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sa.sin_port));
            got.push(Received { len, seg: gro_size(h).filter(|&s| s > 0).unwrap_or(len), from });
        }
        Ok(r as usize)
    }
}

/// The segment size in a received message's `UDP_GRO` control message.
fn gro_size(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: `h` was filled by recvmmsg: the CMSG macros walk its control buffer within
    // `msg_controllen`, and the data of a UDP_GRO message is one int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int) as usize);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// An epoll set (level-triggered, readable) whose events carry the token
/// each fd was added with.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<epoll::Event>,
}

impl Epoll {
    /// Room for `max` events per `wait`.
    pub fn new(max: usize) -> io::Result<Epoll> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let none = epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
        Ok(Epoll { fd, events: vec![none; max.max(1)] })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        Ok(epoll::add(&self.fd, fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN)?)
    }

    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// Waits until an fd is readable (or has an error) or `timeout_ms`
    /// passes; the ready fds' tokens go to `ready`.
    pub fn wait(&mut self, ready: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        ready.clear();
        let timeout = rustix::event::Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        };
        match epoll::wait(&self.fd, &mut self.events[..], Some(&timeout)) {
            Ok(n) => ready.extend(self.events[..n].iter().map(|e| e.data.u64())),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// One non-blocking read; `None` when nothing is waiting.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match rustix::io::read(fd, buf) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One write of a whole packet.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Loopback UDP only: nothing in the namespace is changed.
    fn bound() -> (OwnedFd, SocketAddrV4) {
        let s = udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 16, false).expect("a loopback socket");
        let port = local_port(s.as_fd()).expect("its port");
        (s, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn epoll_names_the_ready_socket_by_its_token_and_a_reused_batch_reads_what_waits() {
        let ((a, at_a), (b, at_b)) = (bound(), bound());
        let mut ep = Epoll::new(4).expect("an epoll set");
        ep.add(a.as_fd(), 7).expect("a added");
        ep.add(b.as_fd(), 9).expect("b added");
        let mut ready = Vec::new();
        ep.wait(&mut ready, 0).expect("waited");
        assert!(ready.is_empty(), "nothing sent yet: {ready:?}");

        let (mut batch, mut bufs) = (RecvBatch::new(4), vec![vec![0u8; 2048]; 8]);
        let mut got = Vec::new();
        for round in 0..2 {
            // Three datagrams to b, then once more to see the headers reused.
            for n in [10, 300, 1400] {
                send(a.as_fd(), &vec![round as u8; n], at_b, None).expect("sent");
            }
            ep.wait(&mut ready, 5000).expect("waited");
            assert_eq!(ready, [9], "only b is readable");
            assert_eq!(batch.recv(b.as_fd(), &mut bufs, &mut got).expect("received"), 3);
            let want = [10, 300, 1400].map(|len| Received { len, seg: len, from: at_a });
            assert_eq!(got, want, "no UDP_GRO asked: one datagram a message");
            assert!(bufs[2][..1400].iter().all(|&x| x == round as u8));
            assert_eq!(batch.recv(b.as_fd(), &mut bufs, &mut got).expect("received"), 0, "drained");
        }

        // Level-triggered: a datagram left unread keeps its socket ready; a removed one is not watched.
        send(b.as_fd(), b"x", at_a, None).expect("sent");
        for _ in 0..2 {
            ep.wait(&mut ready, 5000).expect("waited");
            assert_eq!(ready, [7]);
        }
        ep.remove(a.as_fd()).expect("a removed");
        ep.wait(&mut ready, 0).expect("waited");
        assert!(ready.is_empty(), "a is no longer watched: {ready:?}");
    }

    #[test]
    fn with_udp_gro_a_segmented_send_comes_as_one_message_that_splits_into_its_datagrams() {
        let (a, at_a) = bound();
        let grouped = udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, true).expect("a GRO socket");
        if !udp_gro(grouped.as_fd()) {
            eprintln!("skipped: this kernel has no UDP_GRO");
            return;
        }
        let (single, at_single) = bound();
        assert!(!udp_gro(single.as_fd()), "only asked for");
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, local_port(grouped.as_fd()).expect("its port"));
        let data: Vec<u8> = (0..4 * 1000 + 300).map(|i| (i / 1000) as u8).collect();
        for to in [at, at_single] {
            assert_eq!(send(a.as_fd(), &data, to, Some(1000)).expect("sent"), data.len());
        }
        let (mut batch, mut bufs, mut got) = (RecvBatch::new(8), vec![vec![0u8; 65536]; 8], Vec::new());
        let mut ep = Epoll::new(1).expect("an epoll set");
        ep.add(grouped.as_fd(), 1).expect("added");
        ep.wait(&mut Vec::new(), 5000).expect("waited");
        assert_eq!(batch.recv(grouped.as_fd(), &mut bufs, &mut got).expect("received"), 1);
        assert_eq!(got, [Received { len: data.len(), seg: 1000, from: at_a }], "one message, its segment size given");
        let parts: Vec<&[u8]> = got[0].datagrams(&bufs[0]).collect();
        assert_eq!(parts.iter().map(|d| d.len()).collect::<Vec<_>>(), [1000, 1000, 1000, 1000, 300]);
        assert!(parts.iter().enumerate().all(|(i, d)| d.iter().all(|&x| x == i as u8)), "each in its place");

        // Without UDP_GRO the same send comes as five datagrams.
        let mut n = 0;
        while n < 5 {
            let mut ep = Epoll::new(1).expect("an epoll set");
            ep.add(single.as_fd(), 1).expect("added");
            ep.wait(&mut Vec::new(), 5000).expect("waited");
            n += batch.recv(single.as_fd(), &mut bufs, &mut got).expect("received");
            assert!(got.iter().all(|g| g.seg == g.len), "{got:?}");
        }
        assert_eq!(n, 5);

        // A message longer than its buffer counts as empty.
        send(a.as_fd(), &data[..3000], at_single, None).expect("sent");
        let mut small = vec![vec![0u8; 2048]; 1];
        let mut ep = Epoll::new(1).expect("an epoll set");
        ep.add(single.as_fd(), 1).expect("added");
        ep.wait(&mut Vec::new(), 5000).expect("waited");
        assert_eq!(batch.recv(single.as_fd(), &mut small, &mut got).expect("received"), 1);
        assert_eq!(got[0].len, 0);
        assert_eq!(got[0].datagrams(&small[0]).count(), 0);
    }
}
