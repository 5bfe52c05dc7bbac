//! `exec:`, `ssh:` and `chroot:` targets: an agent reached through a command's stdio.
//!
//! [`Target::connect`](crate::Target::connect) starts the command (see
//! [`Endpoint::command`](crate::Endpoint::command)) and returns a
//! [`Transport::Exec`](crate::Transport::Exec) holding an [`ExecLink`].
//!
//! # The command's stdio
//!
//! * **stdin and stdout are one end of a unix socket pair**, the link's other end is ours.
//!   One fd carries both directions, so every adapter drives it like any socket (one fd to
//!   register, `try_clone` for a reader and a writer thread, `shutdown`); it is ours alone,
//!   so setting `O_NONBLOCK` on it disturbs nobody (ssh sets its own stdio non-blocking,
//!   which on a pipe shared with a terminal or a parent shell breaks them); and a C
//!   `twopence_test_server --port-stdio`, which wants a connected socket on fd 0 (as the C
//!   library's `local:` and `chroot:` plugins gave it), is a valid peer of `legacy+exec:`.
//! * **stderr is passed through** to this process's stderr by a thread, a line at a time
//!   (lines longer than [`STDERR_LINE`] bytes are cut; a partial line is shown after
//!   200 ms of silence, so a prompt is not held back), and its last [`STDERR_TAIL`] bytes
//!   are kept for the error report ([`ExecHandle::end_report`]).
//! * the command runs in a **process group of its own**, so a Ctrl-C on the terminal
//!   reaches `tuppence` (which forwards it to the remote command) and not the `ssh` that
//!   carries the link. The price: it is a background job of the terminal and cannot
//!   prompt on it (a read of the terminal stops it): use keys, `sudo -n`, `BatchMode`.
//!
//! # End of the link
//!
//! A read returns `Ok(0)` when the command closes its stdout (it exited, or the agent
//! behind it ended the link): adapters see an ordinary end of stream. Why it ended — the
//! exit status and the end of its stderr — is [`ExecHandle::end_report`]; the `tuppence`
//! CLI adds it to its connection errors (status 202). A command that cannot be started at
//! all is [`TransportError::Spawn`] from `connect`.
//!
//! When the last clone of the link (the transport and its `try_clone`s; an [`ExecHandle`]
//! does not count) is dropped, or on [`ExecHandle::close`]: the socket is shut down (the
//! command reads end of file on its stdin, its writes fail), then the command gets
//! [`EXIT_GRACE`] (2 s) to exit, then its process group is sent SIGTERM (and SIGCONT, in
//! case it is stopped) and given [`TERM_GRACE`] (1 s), then SIGKILL and [`KILL_WAIT`]
//! (1 s) to be reaped; once it has exited, the relay gets up to 0.5 s more to pass the
//! rest of its stderr on. So closing never takes more than about 4.5 s, whatever the
//! command does; a well-behaved agent (`tuppence serve --stdio` exits at
//! once when its link closes; ssh then exits with it) takes milliseconds. That wait happens
//! in whichever thread drops the last clone: async code that cannot afford it calls
//! [`ExecHandle::close`] on a blocking thread first.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::error::TransportError;
use crate::sys;
use crate::words;

/// How long closing waits for the command to exit after its stdin closed, before SIGTERM.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long closing waits after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long closing waits for a SIGKILLed command to be reaped before leaving it.
pub const KILL_WAIT: Duration = Duration::from_secs(1);
/// Bytes of the command's stderr kept for the error report.
pub const STDERR_TAIL: usize = 4096;
/// The longest stderr line passed through in one piece; longer lines are cut.
pub const STDERR_LINE: usize = 4096;
/// A partial stderr line is shown after this long without more bytes.
const PARTIAL_LINE_AFTER: Duration = Duration::from_millis(200);
/// How long closing waits, once the command exited, for the rest of its stderr.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// Longest sleep between two checks for the command's exit.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Lines of stderr quoted in an [`ExecEnd`]'s message.
const REPORT_LINES: usize = 3;

/// Our end of the socket pair whose other end is the command's stdin and stdout, and a
/// share of the command itself. See the module documentation.
///
/// `try_clone` dups the socket and shares the command: it is closed (and reaped) when the
/// last clone is gone ([`ExecHandle`]s do not count).
#[derive(Debug)]
pub struct ExecLink {
    stream: UnixStream,
    guard: Arc<LinkGuard>,
}

/// Shared by the clones of one link: the last one to go closes the command.
#[derive(Debug)]
struct LinkGuard(Arc<ExecChild>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if !self.0.detached.load(Ordering::SeqCst) {
            self.0.close();
        }
    }
}

/// A handle on the command behind an [`ExecLink`]: its fate, for error messages, and an
/// explicit close. Cloning is cheap. A handle does not keep the link open: the command is
/// closed when the last clone of the link goes, whatever handles remain.
#[derive(Clone, Debug)]
pub struct ExecHandle(Arc<ExecChild>);

struct ExecChild {
    /// The command as an `exec:` target would write it.
    command: String,
    pid: u32,
    proc: Mutex<Proc>,
    stderr: Arc<StderrTail>,
    /// A dup of our end, so closing can shut the socket down whatever else holds it (let
    /// go when the link becomes a bare fd).
    link: Mutex<Option<UnixStream>>,
    /// The link became a bare fd: its owner decides when it closes.
    detached: AtomicBool,
}

struct Proc {
    child: Child,
    status: Option<ExitStatus>,
    /// The signal closing sent, if it came to that.
    signalled: Option<Signal>,
}

#[derive(Default)]
struct StderrTail {
    state: Mutex<TailState>,
    done: Condvar,
}

#[derive(Default)]
struct TailState {
    tail: VecDeque<u8>,
    /// The command's stderr reached end of file (or could not be read).
    done: bool,
}

/// How the command behind a link ended, or that it has not: for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecEnd {
    /// The command, as an `exec:` target would write it.
    pub command: String,
    /// Its exit status; `None` while it runs.
    pub status: Option<ExitStatus>,
    /// Closing had to signal it (it did not exit within [`EXIT_GRACE`] of its stdin
    /// closing).
    pub killed_on_close: bool,
    /// The last [`STDERR_TAIL`] bytes of its stderr, lossily decoded.
    pub stderr_tail: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the stderr of an `exec:` command goes ([`Target::connect_with`](crate::Target::connect_with)).
/// Its last [`STDERR_TAIL`] bytes are kept for [`ExecHandle::end_report`] either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecStderr {
    /// To this process's stderr, a line at a time (the default: what `ssh` would show).
    #[default]
    PassThrough,
    /// Nowhere (only the tail is kept): for programs that report errors their own way.
    TailOnly,
}

/// Starts `argv` with its stdin and stdout on a new socket pair and its stderr read by a
/// thread; `shown` names it in errors.
pub(crate) fn spawn(
    argv: &[OsString],
    shown: String,
    stderr_to: ExecStderr,
) -> Result<ExecLink, TransportError> {
    let fail = |source: io::Error| TransportError::Spawn {
        command: shown.clone(),
        source,
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command",
        )));
    };
    let (ours, theirs) = UnixStream::pair().map_err(fail)?;
    sys::tune_socket_buffers(&ours);
    sys::tune_socket_buffers(&theirs);
    let theirs_out = theirs.try_clone().map_err(fail)?;
    let link = ours.try_clone().map_err(fail)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped())
        .process_group(0);
    let spawned = cmd.spawn();
    // The command's end must not stay open here: its EOF is how we learn it is gone.
    drop(cmd);
    let mut child = spawned.map_err(fail)?;
    let pid = child.id();
    let stderr = Arc::new(StderrTail::default());
    let relay = match child.stderr.take() {
        Some(pipe) => {
            let tail = stderr.clone();
            std::thread::Builder::new()
                .name("tuppence-exec-stderr".into())
                .spawn(move || relay_stderr(pipe, &tail, stderr_to))
                .map(|_| ())
        }
        None => {
            lock(&stderr.state).done = true;
            Ok(())
        }
    };
    if let Err(e) = relay {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(e));
    }
    Ok(ExecLink {
        stream: ours,
        guard: Arc::new(LinkGuard(Arc::new(ExecChild {
            command: shown,
            pid,
            proc: Mutex::new(Proc {
                child,
                status: None,
                signalled: None,
            }),
            stderr,
            link: Mutex::new(Some(link)),
            detached: AtomicBool::new(false),
        }))),
    })
}

/// Passes the command's stderr through to ours a line at a time, keeping its tail.
fn relay_stderr(mut pipe: ChildStderr, tail: &StderrTail, to: ExecStderr) {
    let show = to == ExecStderr::PassThrough;
    let emit = |line: &mut Vec<u8>| {
        if show {
            write_line(line);
        }
        line.clear();
    };
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut buf = [0u8; 8192];
    loop {
        if !line.is_empty() {
            // Show a partial line (a prompt, a progress dot) once the command pauses.
            match sys::poll_in(pipe.as_fd(), Some(PARTIAL_LINE_AFTER)) {
                Ok(r) if !r.readable && !r.hangup => {
                    emit(&mut line);
                    continue;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        {
            let mut st = lock(&tail.state);
            st.tail.extend(chunk);
            let excess = st.tail.len().saturating_sub(STDERR_TAIL);
            st.tail.drain(..excess);
        }
        for &b in chunk {
            line.push(b);
            if b == b'\n' || line.len() >= STDERR_LINE {
                emit(&mut line);
            }
        }
    }
    emit(&mut line);
    lock(&tail.state).done = true;
    tail.done.notify_all();
}

/// Writes one line (completed with a newline) to our stderr; a failure is dropped: there is
/// nowhere left to show it.
fn write_line(line: &mut Vec<u8>) {
    if line.is_empty() {
        return;
    }
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    let _ = io::stderr().lock().write_all(line);
    line.clear();
}

impl Proc {
    /// The exit status if the command has exited (reaping it).
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
        }
        self.status
    }

    /// Sends `sig` to the command's process group. Only while the command is not reaped,
    /// so its pid (the group's id) cannot have been reused.
    fn signal_group(&mut self, pid: u32, sig: Signal) {
        if self.poll().is_some() {
            return;
        }
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        if rustix::process::kill_process_group(pid, sig).is_ok() && sig != Signal::CONT {
            self.signalled = Some(sig);
        }
    }
}

impl ExecChild {
    /// Waits up to `timeout` for the command to exit; its status, if it did.
    fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(s) = lock(&self.proc).poll() {
                return Some(s);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => EXIT_POLL,
            };
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(EXIT_POLL);
        }
    }

    /// Waits up to `timeout` for the stderr relay to reach the end of the command's stderr.
    fn wait_stderr(&self, timeout: Duration) {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = lock(&self.stderr.state);
        while !st.done {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            if left.is_zero() {
                return;
            }
            st = self
                .stderr
                .done
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn close(&self) -> Option<ExitStatus> {
        if let Some(link) = lock(&self.link).as_ref() {
            let _ = link.shutdown(Shutdown::Both);
        }
        let status = self.wait_exit(EXIT_GRACE).or_else(|| {
            let mut proc = lock(&self.proc);
            proc.signal_group(self.pid, Signal::TERM);
            // A command stopped in the background (SIGTTIN: it tried to read the
            // terminal) acts on TERM only once continued.
            proc.signal_group(self.pid, Signal::CONT);
            drop(proc);
            self.wait_exit(TERM_GRACE)
        });
        let status = status.or_else(|| {
            lock(&self.proc).signal_group(self.pid, Signal::KILL);
            self.wait_exit(KILL_WAIT)
        });
        // Its last words are shown before this process goes on (perhaps to exit).
        if status.is_some() {
            self.wait_stderr(STDERR_DRAIN);
        }
        status
    }

    fn report(&self, wait: Duration) -> ExecEnd {
        let started = Instant::now();
        let status = self.wait_exit(wait);
        // The stderr of a command that exited ends with it (unless a child of its own
        // holds it open: then what arrived so far is reported).
        if status.is_some() {
            self.wait_stderr(wait.saturating_sub(started.elapsed()));
        }
        let tail = {
            let st = lock(&self.stderr.state);
            let (a, b) = st.tail.as_slices();
            let mut bytes = Vec::with_capacity(a.len() + b.len());
            bytes.extend_from_slice(a);
            bytes.extend_from_slice(b);
            String::from_utf8_lossy(&bytes).into_owned()
        };
        ExecEnd {
            command: self.command.clone(),
            status,
            killed_on_close: lock(&self.proc).signalled.is_some(),
            stderr_tail: tail,
        }
    }
}

impl fmt::Debug for ExecChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecChild")
            .field("command", &self.command)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ExecLink {
    /// The handle on the command behind this link.
    pub fn handle(&self) -> ExecHandle {
        ExecHandle(self.guard.0.clone())
    }

    /// Another handle on the same link (a dup'd socket; `O_NONBLOCK` is shared).
    pub fn try_clone(&self) -> io::Result<ExecLink> {
        Ok(ExecLink {
            stream: self.stream.try_clone()?,
            guard: self.guard.clone(),
        })
    }

    /// Switches `O_NONBLOCK` on our end of the socket pair (the command's end is not
    /// touched).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.stream.set_nonblocking(nonblocking)
    }

    /// Shuts our end of the socket down: `Write` gives the command end of file on stdin
    /// while its output can still be read.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }

    /// The socket as a bare fd. The command is no longer closed with the link then: a
    /// thread waits for it to exit (once whoever holds the fd closes it, the command reads
    /// end of file) and reaps it.
    pub(crate) fn into_fd(self) -> OwnedFd {
        let ExecLink { stream, guard } = self;
        let child = guard.0.clone();
        child.detached.store(true, Ordering::SeqCst);
        // Our dup would keep the socket open after the fd's owner closed it.
        drop(lock(&child.link).take());
        drop(guard);
        let spawned = std::thread::Builder::new()
            .name("tuppence-exec-reaper".into())
            .spawn(move || {
                // Wait without reaping (so that `Proc::poll` reaps under the lock and no
                // signal can reach a reused pid), then reap.
                if let Some(pid) = i32::try_from(child.pid).ok().and_then(Pid::from_raw) {
                    let _ = rustix::process::waitid(
                        WaitId::Pid(pid),
                        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
                    );
                }
                lock(&child.proc).poll();
            });
        // Without a thread the command is left unreaped until this process exits.
        drop(spawned);
        OwnedFd::from(stream)
    }
}

impl ExecHandle {
    /// The command, as an `exec:` target would write it.
    pub fn command(&self) -> &str {
        &self.0.command
    }

    /// The command's process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.0.pid
    }

    /// The exit status if the command has exited (never waits).
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.0.proc).poll()
    }

    /// How the command ended, waiting up to `wait` for it to exit and for the end of its
    /// stderr: for the message of a link that closed.
    pub fn end_report(&self, wait: Duration) -> ExecEnd {
        self.0.report(wait)
    }

    /// Closes the link now (see the module documentation: shutdown, [`EXIT_GRACE`],
    /// SIGTERM, [`TERM_GRACE`], SIGKILL, [`KILL_WAIT`]) and returns the command's exit
    /// status, if it was reaped. Every clone of the link reads end of file afterwards.
    pub fn close(&self) -> Option<ExitStatus> {
        self.0.close()
    }
}

impl ExecEnd {
    /// The last lines of stderr, control characters escaped, joined with ` | `.
    fn last_lines(&self) -> String {
        let lines: Vec<&str> = self
            .stderr_tail
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let start = lines.len().saturating_sub(REPORT_LINES);
        lines
            .get(start..)
            .unwrap_or_default()
            .iter()
            .map(|l| {
                l.chars()
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            format!("\\x{:02x}", u32::from(c))
                        } else {
                            c.to_string()
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl fmt::Display for ExecEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ", self.command)?;
        match self.status {
            None => f.write_str("is still running")?,
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => write!(f, "exited with status {code}")?,
                (None, Some(sig)) => {
                    write!(f, "was killed by signal {sig}")?;
                    if self.killed_on_close {
                        f.write_str(" (sent when the link closed)")?;
                    }
                }
                (None, None) => write!(f, "ended ({s})")?,
            },
        }
        let lines = self.last_lines();
        if !lines.is_empty() {
            write!(f, "; its stderr ended with: {lines}")?;
        }
        Ok(())
    }
}

/// Plain socket reads: end of file is `Ok(0)`.
fn read_socket(s: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    (&*s).read(buf)
}

fn read_socket_vectored(s: &UnixStream, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
    (&*s).read_vectored(bufs)
}

stream_io!(ExecLink, stream, read_socket, read_socket_vectored);

/// The display form of a command (for errors and [`ExecHandle::command`]).
pub(crate) fn show(argv: &[OsString]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    words::join(&words)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn end(status: Option<ExitStatus>, tail: &str) -> ExecEnd {
        ExecEnd {
            command: "ssh -T h".into(),
            status,
            killed_on_close: false,
            stderr_tail: tail.into(),
        }
    }

    #[test]
    fn the_report_names_status_and_last_lines() {
        let e = end(
            Some(ExitStatus::from_raw(255 << 8)),
            "one\ntwo\n\nthree\nfour\x1b[31m\n",
        );
        assert_eq!(
            e.to_string(),
            "`ssh -T h` exited with status 255; its stderr ended with: two | three | four\\x1b[31m"
        );
        assert_eq!(
            end(Some(ExitStatus::from_raw(9)), "").to_string(),
            "`ssh -T h` was killed by signal 9"
        );
        assert_eq!(
            end(None, "x").to_string(),
            "`ssh -T h` is still running; its stderr ended with: x"
        );
    }
}
