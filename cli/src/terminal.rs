//! `-i` and `-t` on the client side: the local terminal in raw mode while a
//! container's terminal is attached, stdin read on a thread and sent as
//! `TerminalInput` (its end as `close_stdin`), the window size sent at the
//! start and on every SIGWINCH, and the output written back as it comes.
//! Also the CLI's only other kernel calls: the password prompt's echo and
//! the benchmark's network namespace.

use std::io::Write;
use std::os::fd::AsFd;

use anyhow::Context;
use rustix::termios::{LocalModes, OptionalActions, Termios, isatty, tcgetattr, tcgetwinsize, tcsetattr};
use shoal_proto::pb;
use tokio::sync::mpsc;

/// Puts the local terminal in raw mode until dropped (a no-op when stdin is no terminal).
pub struct RawMode(Option<Termios>);

impl RawMode {
    pub fn enable() -> RawMode {
        let stdin = std::io::stdin();
        if !isatty(&stdin) {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = tcsetattr(&stdin, OptionalActions::Now, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // restoring the attributes saved from stdin.
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, saved);
        }
    }
}

/// The local terminal's (rows, cols), if stdout or stdin is one.
pub fn window_size() -> Option<(u32, u32)> {
    let (stdout, stdin) = (std::io::stdout(), std::io::stdin());
    for fd in [stdout.as_fd(), stdin.as_fd()] {
        if let Ok(ws) = tcgetwinsize(fd)
            && ws.ws_row > 0
        {
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
            let stdin = std::io::stdin();
            loop {
                // read(2) on fd 0 itself, past std's buffer.
                let n = match rustix::io::read(stdin.as_fd(), &mut buf) {
                    Err(rustix::io::Errno::INTR) => continue,
                    Ok(n) => n,
                    Err(_) => 0,
                };
                let msg = if n > 0 {
                    pb::TerminalInput { data: buf[..n].to_vec(), ..Default::default() }
                } else {
                    pb::TerminalInput { close_stdin: true, ..Default::default() }
                };
                if tx.blocking_send(msg).is_err() || n == 0 {
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

/// Reads a line from the terminal, without echo for a password.
pub fn prompt(label: &str, echo: bool) -> anyhow::Result<String> {
    eprint!("{label}");
    std::io::stderr().flush()?;
    let stdin = std::io::stdin();
    // stdin is a terminal (checked by the caller), or this reads a plain line.
    let saved = tcgetattr(&stdin).ok();
    let quiet = if echo { None } else { saved.as_ref() };
    if let Some(saved) = quiet {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // restoring `saved` below undoes it.
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(saved) = quiet {
        // restores the settings read above.
        let _ = tcsetattr(&stdin, OptionalActions::Now, saved);
        eprintln!();
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Moves the calling thread (only) into a new network namespace.
#[cfg(feature = "bench")]
#[allow(unsafe_code)]
pub fn unshare_netns() -> std::io::Result<()> {
    // SAFETY: unshare_unsafe is unsafe only for CLONE_FILES (a thread could
    // then see descriptors from a table it no longer shares); a new network
    // namespace changes no descriptor table.
    Ok(unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?)
}
