//! `-i` and `-t` on the client side: the local terminal in raw mode while a
//! container's terminal is attached, stdin read on a thread and sent as
//! `TerminalInput` (its end as `close_stdin`), the window size sent at the
//! start and on every SIGWINCH, and the output written back as it comes.

use std::io::Write;

use shoal_proto::pb;
use tokio::sync::mpsc;

/// Puts the local terminal in raw mode until dropped (a no-op when stdin is no terminal).
pub struct RawMode(Option<libc::termios>);

impl RawMode {
    pub fn enable() -> RawMode {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return RawMode(None);
        }
        // SAFETY: termios is plain data, filled in by tcgetattr before use.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: reading the terminal attributes of stdin into `saved`.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return RawMode(None);
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct in place; tcsetattr applies it to stdin.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restoring the attributes saved from stdin.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

/// The local terminal's (rows, cols), if stdout or stdin is one.
pub fn window_size() -> Option<(u32, u32)> {
    for fd in [1, 0] {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it in.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes a winsize to the pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row.into(), ws.ws_col.into()));
        }
    }
    None
}

/// What the user types (with `interactive`) and resizes (with `tty`), as a stream.
pub fn input(interactive: bool, tty: bool) -> mpsc::Receiver<pb::TerminalInput> {
    let (tx, rx) = mpsc::channel(16);
    if tty && let Some((rows, cols)) = window_size() {
        let _ = tx.try_send(pb::TerminalInput { rows, cols, ..Default::default() });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = window_size()
                    && tx.send(pb::TerminalInput { rows, cols, ..Default::default() }).await.is_err()
                {
                    return;
                }
            }
        });
    }
    if interactive {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                // SAFETY: reading our stdin into a valid buffer.
                let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                let msg = if n > 0 {
                    pb::TerminalInput { data: buf[..n as usize].to_vec(), ..Default::default() }
                } else {
                    pb::TerminalInput { close_stdin: true, ..Default::default() }
                };
                if tx.blocking_send(msg).is_err() || n <= 0 {
                    return;
                }
            }
        });
    }
    rx
}

/// Writes the output until the exit message; returns the exit code.
pub async fn output(mut out: tonic::Streaming<pb::ExecOutput>) -> anyhow::Result<i32> {
    while let Some(m) = out.message().await? {
        if m.exited {
            return Ok(m.exit_code);
        }
        if m.stream == "stderr" {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&m.data);
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&m.data);
            let _ = o.flush();
        }
    }
    anyhow::bail!("the stream ended without an exit code")
}
