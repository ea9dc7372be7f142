//! What the shim needs to attach a client to a container (`run -i`/`-t`)
//! and to receive a terminal: a unix listener, the pty master libcontainer
//! sends over the OCI console socket, and the attached client itself, spoken
//! to in `frames`. Single-threaded and poll-driven like the rest of the shim.

// Part of the shim: its kernel calls on raw descriptors (the unix listener,
// the pty master received with SCM_RIGHTS, its window size) stay here.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::frames::{self, Decoder};

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A listening unix socket at `path` (replacing a stale one).
pub fn listen(path: &Path) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(path);
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(format!("socket path too long: {}", path.display()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creating a socket; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err("socket"));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of that length.
    if unsafe { libc::bind(fd, (&raw const addr).cast(), len) } != 0 {
        return Err(last_err("bind"));
    }
    // SAFETY: listening on our own bound socket.
    if unsafe { libc::listen(fd, 4) } != 0 {
        return Err(last_err("listen"));
    }
    Ok(sock)
}

/// Accepts one connection (None if none is pending on a non-blocking listener).
pub fn accept(listener: RawFd) -> Option<OwnedFd> {
    // SAFETY: accept on a listening socket with no address wanted.
    let fd = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    // SAFETY: fd is a new descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Receives the descriptor sent with SCM_RIGHTS on `conn` (the pty master).
pub fn recv_fd(conn: RawFd) -> Result<OwnedFd, String> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is valid, and we fill what recvmsg reads.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at buffers that live across the call.
    if unsafe { libc::recvmsg(conn, &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(last_err("receiving the terminal"));
    }
    // SAFETY: walking the control messages recvmsg filled in.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: cmsg is either null or points into `control`.
    if cmsg.is_null() || unsafe { (*cmsg).cmsg_type } != libc::SCM_RIGHTS {
        return Err("the console socket sent no terminal".into());
    }
    // SAFETY: an SCM_RIGHTS message carries at least one descriptor.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    // SAFETY: the kernel installed this descriptor for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets a terminal's window size.
pub fn set_size(tty: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    unsafe { libc::ioctl(tty, libc::TIOCSWINSZ, &ws) };
}

/// Writes all of `data`, retrying short writes; false when the peer is gone.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writing from a valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
}

/// What a client asked for.
pub enum Request {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

/// The requests among decoded frames (output frames a client sends are ignored).
pub fn requests(frames: Vec<(u8, Vec<u8>)>) -> Vec<Request> {
    frames
        .into_iter()
        .filter_map(|(kind, p)| match kind {
            frames::STDIN => Some(Request::Stdin(p)),
            frames::CLOSE_STDIN => Some(Request::CloseStdin),
            frames::RESIZE => frames::parse_resize(&p).map(|(r, c)| Request::Resize(r, c)),
            _ => None,
        })
        .collect()
}

/// Acts on a client's request against the process's input: a pipe (closed
/// at the end of input) or, with `tty`, the terminal (which is resized).
pub fn apply(req: Request, input: &mut Option<OwnedFd>, tty: bool) {
    match (req, input.as_ref()) {
        (Request::Stdin(data), Some(i)) => {
            write_all(i.as_raw_fd(), &data);
        }
        (Request::CloseStdin, Some(_)) if !tty => *input = None,
        (Request::Resize(rows, cols), Some(i)) if tty => set_size(i.as_raw_fd(), rows, cols),
        _ => {}
    }
}

/// Copies what `from` has right now (non-blocking) to `to`.
pub fn drain(from: RawFd, to: RawFd, buf: &mut [u8]) {
    set_nonblocking(from);
    loop {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        write_all(to, &buf[..n as usize]);
    }
}

/// The attach endpoint: a listener and at most one client at a time. Output
/// from before the first client is kept (up to a limit) and replayed to it,
/// so `run -it` sees the container's first prompt.
pub struct Attach {
    pub listener: OwnedFd,
    pub client: Option<OwnedFd>,
    decoder: Decoder,
    replay: Option<Vec<u8>>,
}

const REPLAY_MAX: usize = 1 << 20;

impl Attach {
    pub fn new(listener: OwnedFd) -> Attach {
        set_nonblocking(listener.as_raw_fd());
        Attach { listener, client: None, decoder: Decoder::default(), replay: Some(Vec::new()) }
    }

    /// Takes a pending connection as the client (a newer one replaces an older one).
    pub fn accept(&mut self) {
        if let Some(c) = accept(self.listener.as_raw_fd()) {
            if let Some(early) = self.replay.take()
                && !early.is_empty()
            {
                write_all(c.as_raw_fd(), &early);
            }
            self.client = Some(c);
            self.decoder = Decoder::default();
        }
    }

    /// Reads what the client sent; a client that hung up or spoke garbage is dropped.
    pub fn read_client(&mut self, buf: &mut [u8]) -> Vec<Request> {
        let Some(c) = &self.client else { return vec![] };
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            self.client = None;
            return vec![];
        }
        match self.decoder.push(&buf[..n as usize]) {
            Ok(frames) => requests(frames),
            Err(_) => {
                self.client = None;
                vec![]
            }
        }
    }

    /// Sends output to the client, or keeps it for the first one.
    pub fn output(&mut self, kind: u8, data: &[u8]) {
        let frame = frames::encode(kind, data);
        match (&self.client, &mut self.replay) {
            (Some(c), _) if !write_all(c.as_raw_fd(), &frame) => self.client = None,
            (Some(_), _) => {}
            (None, Some(early)) if early.len() + frame.len() <= REPLAY_MAX => early.extend_from_slice(&frame),
            _ => {}
        }
    }
}

/// `path` as a C string, for exec arguments.
pub fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())
}
