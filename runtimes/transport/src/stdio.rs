//! `tuppence serve --stdio`: one link on this process's own stdin and stdout.
//!
//! [`StdioRelay::take`] takes fds 0 and 1 for the link — or fd 0 alone in both directions
//! when it is a socket (a connected socket on fd 0 is how the C library started its server
//! with `--port-stdio`, and how `exec:` targets start theirs) — and hands the agent a
//! [`Transport::Unix`]: its end of a socket pair, which two relay threads connect to the
//! stdio fds.
//!
//! # Why a relay, and not the fds themselves
//!
//! The agent's event loop needs non-blocking fds, and `O_NONBLOCK` belongs to the *open
//! file description*, which fds 0 and 1 share with whoever else holds them: the parent
//! shell, `sshd`, `podman`'s conmon, a terminal. Setting it would make their reads and
//! writes fail with `EAGAIN` (the classic breakage a program that sets its stdio
//! non-blocking leaves behind), and clearing it again on exit is not possible after a
//! crash. The ways around it each cover only part of the cases: reopening
//! `/proc/self/fd/N` gives a description of its own for a pipe or a tty, but not for a
//! socket, and needs `/proc` (absent in a chroot); `MSG_DONTWAIT` works only on sockets;
//! `RWF_NOWAIT` not on every pipe. The relay threads do blocking I/O on the stdio fds and
//! never change their flags (if the description is already non-blocking, they wait with
//! `poll` instead), and the agent gets a socket of its own, so every agent behaviour is
//! the one it has on a unix socket, by construction. The price is one copy per direction.
//!
//! # What stays on fds 0 and 1
//!
//! After `take`, fd 0 is `/dev/null` and fd 1 is a copy of fd 2 (the log): stdout must
//! carry nothing but protocol bytes, so anything the process might print by mistake goes to
//! the log instead, and nothing can read the link's input away from the relay. Commands
//! the agent starts get their own pipes or pty on fds 0–2 and every other fd closed, so
//! they never hold the link.
//!
//! # End
//!
//! End of file (or an error) on stdin shuts the socket's write side: the agent sees its
//! client leave. When the agent closes its end, the outbound thread writes what is left and
//! closes our stdout (for a socket on fd 0: shuts its write side), so the client reads end
//! of file; [`StdioRelay::finish`] waits for that before the process exits. A stdout whose
//! reader is gone (`EPIPE`) shuts the agent's socket down, so it stops too.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::FileType;

use crate::sys;
use crate::transport::Transport;

/// Bytes moved per read in each direction.
const RELAY_BUF: usize = 256 * 1024;

/// The two threads between the stdio fds and the agent's socket.
#[derive(Debug)]
pub struct StdioRelay {
    /// Set when the outbound thread has written everything the agent sent (or gave up).
    out_done: Arc<(Mutex<bool>, Condvar)>,
    socket: bool,
}

impl StdioRelay {
    /// Takes fds 0 and 1 for the link (see the module documentation) and starts the relay.
    /// Returns the agent's end of the link.
    ///
    /// Fails if stdin or stdout is closed.
    pub fn take() -> io::Result<(Transport, StdioRelay)> {
        let named = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let input = rustix::io::fcntl_dupfd_cloexec(io::stdin().as_fd(), 3)
            .map_err(|e| named("stdin", e.into()))?;
        let socket =
            FileType::from_raw_mode(rustix::fs::fstat(&input)?.st_mode) == FileType::Socket;
        // The C agent's `--port-stdio` also accepted on a listening socket; one client per
        // link is the rule here, so say so instead of reading an error as the end.
        if socket
            && let Err(e) = rustix::net::getpeername(&input)
            && e == rustix::io::Errno::NOTCONN
        {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stdin is a socket that is not connected (--stdio serves one connected client, it does not listen)",
            ));
        }
        let output = if socket {
            rustix::io::fcntl_dupfd_cloexec(&input, 3)?
        } else {
            rustix::io::fcntl_dupfd_cloexec(io::stdout().as_fd(), 3)
                .map_err(|e| named("stdout", e.into()))?
        };
        let (agent, ours) = UnixStream::pair()?;
        sys::tune_socket_buffers(&agent);
        sys::tune_socket_buffers(&ours);
        let ours_out = ours.try_clone()?;
        park_stdio()?;

        let out_done = Arc::new((Mutex::new(false), Condvar::new()));
        std::thread::Builder::new()
            .name("tuppence-stdin".into())
            .spawn(move || inbound(File::from(input), &ours))?;
        let done = out_done.clone();
        std::thread::Builder::new()
            .name("tuppence-stdout".into())
            .spawn(move || {
                outbound(&ours_out, File::from(output), socket);
                let (flag, cond) = &*done;
                *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
                cond.notify_all();
            })?;
        Ok((Transport::Unix(agent), StdioRelay { out_done, socket }))
    }

    /// Whether fd 0 was a socket serving both directions.
    pub fn is_socket(&self) -> bool {
        self.socket
    }

    /// Waits until everything the agent wrote has reached stdout — call it after the agent
    /// (and with it its end of the link) is gone — for at most `timeout`. False on timeout
    /// (the reader of stdout stopped reading).
    pub fn finish(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let (flag, cond) = &*self.out_done;
        let mut done = flag.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            if left.is_zero() {
                return false;
            }
            done = cond
                .wait_timeout(done, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

/// Points fd 0 at `/dev/null` and fd 1 at the log (fd 2), so that nothing but the relay
/// uses the link. Where `/dev/null` cannot be opened, fd 0 gets the log too (it is never
/// read).
fn park_stdio() -> io::Result<()> {
    let log = rustix::io::fcntl_dupfd_cloexec(io::stderr().as_fd(), 3).ok();
    let null: Option<OwnedFd> = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()
        .map(OwnedFd::from);
    let Some(for_stdin) = null.as_ref().or(log.as_ref()) else {
        return Err(io::Error::other(
            "neither /dev/null nor stderr can take the place of stdin",
        ));
    };
    rustix::stdio::dup2_stdin(for_stdin)?;
    let for_stdout = log.as_ref().or(null.as_ref()).unwrap_or(for_stdin);
    rustix::stdio::dup2_stdout(for_stdout)?;
    Ok(())
}

/// stdin → the agent, until end of file; then the agent reads end of file.
fn inbound(mut input: File, agent: &UnixStream) {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_all(agent, buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if wait_fd(input.as_fd(), libc::POLLIN).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = agent.shutdown(Shutdown::Write);
}

/// The agent → stdout, until the agent closes; then stdout is closed (or, for a socket,
/// shut for writing: the inbound thread still holds a copy).
fn outbound(agent: &UnixStream, output: File, socket: bool) {
    let mut buf = vec![0u8; RELAY_BUF];
    let mut reader = agent;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_all(&output, buf.get(..n).unwrap_or_default()).is_err() {
                    // Nobody reads the link any more: stop the agent's side too.
                    let _ = agent.shutdown(Shutdown::Both);
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if socket {
        let _ = rustix::net::shutdown(&output, rustix::net::Shutdown::Write);
    }
}

/// Writes all of `data`, waiting with `poll` if the fd turns out to be non-blocking.
fn write_all(mut w: impl Write + AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match w.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(w.as_fd(), libc::POLLOUT)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `poll(2)` on one fd for `events`, without a timeout. Any revent (including an error or
/// a hang-up) ends the wait: the next read or write reports it.
fn wait_fd(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid, initialised pollfd, count 1; the fd is borrowed and stays open
        // during the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
