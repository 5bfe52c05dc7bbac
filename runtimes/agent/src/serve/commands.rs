//! Commands: `/bin/sh -c COMMAND` as the requested user, on pipes or a pty. What starts
//! one, what moves its data (output while the link can take it, stdin while the child
//! takes it), the client's interrupts and procinfo queries, and its end: the status goes
//! out once the output has drained, or `T` at the command's timeout.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::Interest;
use tracing::warn;
use tuppence::link::status;
use tuppence::wire::{ProcInfoField, field};
use tuppence_mio::{ConnId, ExtraId, ExtraReady};

use super::arena::{BULK_CHUNK, whole_packets};
use super::connections::Tx;
use super::{LinkDaemon, Tag};
use crate::escape::Quoted;
use crate::fdio::{self, ReadOutcome};
use crate::read_procinfo;
use crate::sources::{AuditEvent, CommandEnd};
use crate::spawn::{
    Child, ExitStatus, SpawnSpec, signal_from_name, spawn_command_nowait_in, tty_eof_sequence,
};

/// Bytes read from a child pipe per call (a default pipe holds 64 KiB).
const CHUNK: usize = 64 * 1024;
/// A child's stdout/stderr pipe that is found full is grown to this, so the command runs
/// ahead while the loop is busy and each read takes more (fewer wakeups and turns). Only
/// pipes with bulk output are grown: pipe pages count against the user's limit
/// (`/proc/sys/fs/pipe-user-pages-soft`).
const BULK_PIPE: usize = 1024 * 1024;

/// What a queued stdin chunk costs beyond its payload: its `Bytes` in the queue, and the
/// packet header it keeps alive in the receive buffer (chunks are zero-copy slices of it).
/// Counted in `stdin_bytes`, so that a flood of 1-byte stdin packets is bounded by the
/// memory it takes, not by its payload (uncounted, 1 MiB of payload was 1 million chunks).
pub(crate) const STDIN_CHUNK_OVERHEAD: usize =
    std::mem::size_of::<Bytes>() + tuppence::wire::HEADER_LEN + 2;

/// A command request as the machine reported it.
pub(super) struct NewCommand {
    pub user: Bytes,
    pub command: Bytes,
    /// With the agent's default applied.
    pub timeout: Duration,
    pub tty: bool,
    pub env: Vec<Bytes>,
}

/// An output pipe (or the pty master) of a command and whether it may have data.
pub(super) struct OutPipe {
    pub extra: ExtraId,
    pub readable: bool,
    /// The pipe was grown for bulk output (see [`BULK_PIPE`]).
    pub bulk: bool,
}

/// A running command: its process and what it still has to do.
pub(super) struct CommandTx {
    pub child: Child,
    pub tty: bool,
    /// The pidfd registration, until the exit status is known.
    pub exit_extra: Option<ExtraId>,
    /// Channel 1 and 2 (tty: only channel 1, the master, which also takes stdin).
    pub out: [Option<OutPipe>; 2],
    /// The stdin pipe registration (pipes mode).
    pub stdin_extra: Option<ExtraId>,
    pub stdin_writable: bool,
    pub stdin: VecDeque<Bytes>,
    pub stdin_bytes: usize,
    /// The client ended stdin; close it once the queue is written.
    pub stdin_eof: bool,
    pub stdin_closed: bool,
    /// The last byte written to a tty was a newline (for delivering EOF).
    pub at_line_start: bool,
    pub status: Option<ExitStatus>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
}

impl CommandTx {
    /// Queues a chunk for the command's stdin.
    pub fn queue_stdin(&mut self, data: Bytes) {
        self.stdin_bytes = self
            .stdin_bytes
            .saturating_add(data.len())
            .saturating_add(STDIN_CHUNK_OVERHEAD);
        self.stdin.push_back(data);
    }

    /// `n` bytes of the first queued chunk were written.
    pub fn stdin_written(&mut self, n: usize) {
        let Some(front) = self.stdin.front_mut() else {
            return;
        };
        bytes::Buf::advance(front, n.min(front.len()));
        self.stdin_bytes = self.stdin_bytes.saturating_sub(n);
        if front.is_empty() {
            self.stdin.pop_front();
            self.stdin_bytes = self.stdin_bytes.saturating_sub(STDIN_CHUNK_OVERHEAD);
        }
    }

    /// Everything is known: the shell's status and the end of its output.
    pub fn finished(&self) -> bool {
        self.status.is_some() && self.out.iter().all(Option::is_none)
    }

    /// Whether `pump_command` has anything to do: a timeout to apply, output to read,
    /// stdin to write or to close, or a status to send.
    pub fn has_work(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
            || self.out.iter().flatten().any(|p| p.readable)
            || (self.stdin_writable && !self.stdin.is_empty())
            || self.stdin_to_close()
            || self.finished()
    }

    /// Stdin (a pipe) is written and the client ended it: close it.
    fn stdin_to_close(&self) -> bool {
        self.stdin.is_empty() && self.stdin_eof && !self.tty && self.stdin_extra.is_some()
    }
}

impl LinkDaemon {
    // ---- requests ----

    pub(super) fn start_command(
        &mut self,
        id: ConnId,
        xid: u16,
        request: NewCommand,
        now: Instant,
    ) {
        let cid = self.cid(id);
        let NewCommand {
            user,
            command,
            timeout,
            tty,
            env,
        } = request;
        let failed =
            |daemon: &mut LinkDaemon, status: u32, error: Option<&dyn std::fmt::Display>| {
                let record = AuditEvent::CommandFailed {
                    cid,
                    xid,
                    user: &user,
                    command: &command,
                    tty,
                    status,
                };
                match error {
                    Some(e) => daemon.audit_failure(&record, e),
                    None => daemon.audit(&record),
                }
                daemon.answer(id, xid, "fail", |s| s.fail(xid, status));
            };
        if !self.user_allowed(&user) {
            return failed(self, status::EACCES, None);
        }
        let mut spec = SpawnSpec::new(user.to_vec(), command.to_vec());
        spec.env = env.iter().map(|e| e.to_vec()).collect();
        spec.tty = tty;
        // Without waiting for the child's exec: starting 1000 commands at once, the loop
        // spent most of its time suspended in clone(CLONE_VFORK) while each child set
        // itself up and exec'd. A failure there is reported when the child has exited.
        // A command in the same turn as the hello of a `defer_cgroups` agent.
        self.contain.complete();
        let mut child = match spawn_command_nowait_in(&spec, self.contain.cgroups.as_ref()) {
            Ok(child) => child,
            Err(e) => return failed(self, e.errno(), Some(&e)),
        };
        self.audit(&AuditEvent::CommandStart {
            cid,
            xid,
            pid: child.pid(),
            user: &user,
            command: &command,
            tty,
        });
        let exit_extra = self.register(
            child.pidfd().as_raw_fd(),
            Interest::READABLE,
            Tag::Exit(id, xid),
        );
        let mut out: [Option<OutPipe>; 2] = [None, None];
        let mut stdin_extra = None;
        let watch = |daemon: &mut LinkDaemon, fd: i32, interest: Interest, slot: usize| {
            daemon
                .register(fd, interest, Tag::Out(id, xid, slot))
                .map(|extra| OutPipe {
                    extra,
                    readable: true,
                    bulk: false,
                })
        };
        if tty {
            // The pty master carries output and takes stdin.
            if let Some(fd) = child.stdout_fd().map(|f| f.as_raw_fd()) {
                out[0] = watch(self, fd, Interest::READABLE | Interest::WRITABLE, 0);
            }
            // Nothing else holds the master's other end: without output the pipe slots
            // would stay empty and the status could go out before the output.
            child.close_stderr();
        } else {
            for (slot, fd) in [child.stdout_fd(), child.stderr_fd()]
                .into_iter()
                .enumerate()
            {
                if let Some(fd) = fd.map(|f| f.as_raw_fd()) {
                    out[slot] = watch(self, fd, Interest::READABLE, slot);
                }
            }
            if let Some(fd) = child.stdin_fd().map(|f| f.as_raw_fd()) {
                stdin_extra = self.register(fd, Interest::WRITABLE, Tag::Stdin(id, xid));
            }
        }
        let tx = CommandTx {
            child,
            tty,
            exit_extra,
            out,
            stdin_extra,
            stdin_writable: true,
            stdin: VecDeque::new(),
            stdin_bytes: 0,
            stdin_eof: false,
            stdin_closed: false,
            at_line_start: true,
            status: None,
            deadline: now.checked_add(timeout),
            timed_out: false,
        };
        self.put_tx(id, xid, Tx::Command(Box::new(tx)));
        self.unsettled.push((id, xid));
        self.busy = true;
    }

    pub(super) fn on_stdin(&mut self, id: ConnId, xid: u16, data: Bytes) {
        if let Some(Tx::Command(c)) = self.tx_mut(id, xid)
            && !c.stdin_closed
        {
            if let Some(last) = data.last() {
                c.at_line_start = *last == b'\n';
            }
            c.queue_stdin(data);
        }
    }

    pub(super) fn on_stdin_end(&mut self, id: ConnId, xid: u16) {
        if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
            if c.tty && !c.stdin_closed {
                c.queue_stdin(Bytes::from_static(tty_eof_sequence(c.at_line_start)));
                c.stdin_closed = true;
            }
            c.stdin_eof = true;
        }
    }

    /// A signal to the command's process group, with its record (`status=22` for a name
    /// the agent does not know, 3 for a command that is gone).
    pub(super) fn on_interrupt(&mut self, id: ConnId, xid: u16, signal: &[u8]) {
        let cid = self.cid(id);
        let status = match signal_from_name(signal) {
            None => {
                warn!(cid, xid, signal = %Quoted(signal), "unknown signal name; ignored");
                status::EINVAL
            }
            Some(signo) => match self.tx_mut(id, xid) {
                Some(Tx::Command(c)) => c
                    .child
                    .interrupt(signo)
                    .map_or_else(|e| crate::errno_of(&e), |()| 0),
                _ => status::ESRCH,
            },
        };
        self.audit(&AuditEvent::Interrupt {
            cid,
            xid,
            signal,
            status,
        });
    }

    pub(super) fn on_procinfo(&mut self, id: ConnId, xid: u16, mask: u32) {
        let probe = match self.tx_mut(id, xid) {
            Some(Tx::Command(c)) if c.status.is_none() => {
                Some((c.child.pid(), c.child.settle_exec()))
            }
            _ => None,
        };
        let fields: Vec<ProcInfoField> = probe
            .and_then(|(pid, before_exec)| {
                let mut fields = read_procinfo(pid, mask).ok()?;
                if before_exec {
                    // Started without waiting and not exec'd yet: its setsid may still be
                    // ahead, so /proc shows the agent's own group. The command's group is
                    // its pid; a client signalling the group must never reach the agent's.
                    for (kind, value) in &mut fields {
                        if *kind == field::PGID {
                            *value = pid.to_be_bytes().to_vec();
                        }
                    }
                }
                Some(fields)
            })
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, value)| ProcInfoField {
                kind,
                value: value.into(),
            })
            .collect();
        self.answer(id, xid, "procinfo", |s| s.procinfo(xid, fields));
    }

    // ---- readiness ----

    /// The command's pidfd fired: it exited (its status goes out once its output drained).
    pub(super) fn on_exit(&mut self, id: ConnId, xid: u16) {
        let Some(Tx::Command(c)) = self.tx_mut(id, xid) else {
            return;
        };
        match c.child.try_wait() {
            Ok(Some(st)) => c.status = Some(st),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "waiting for a child failed");
                c.status = Some(ExitStatus::Signaled(libc::SIGKILL));
            }
        }
        if c.status.is_some()
            && let Some(extra) = c.exit_extra.take()
        {
            self.io.remove_extra(extra);
        }
    }

    pub(super) fn on_output_ready(
        &mut self,
        id: ConnId,
        xid: u16,
        slot: usize,
        r: ExtraReady<Tag>,
    ) {
        if let Some(Tx::Command(c)) = self.tx_mut(id, xid) {
            if let Some(Some(p)) = c.out.get_mut(slot) {
                p.readable |= r.readable || r.closed;
            }
            // The pty master also takes stdin.
            if c.tty && (r.writable || r.closed) {
                c.stdin_writable = true;
            }
        }
    }

    /// Frees what commands started without waiting needed until their exec.
    pub(super) fn settle_execs(&mut self) {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        unsettled.retain(|&(id, xid)| match self.tx_mut(id, xid) {
            Some(Tx::Command(c)) => c.child.settle_exec(),
            _ => false,
        });
        self.unsettled = unsettled;
    }

    // ---- moving data ----

    /// Applies a due timeout, moves output and stdin, and sends the status when it is all
    /// done. Returns the command's unwritten stdin bytes.
    pub(super) fn pump_command(&mut self, id: ConnId, xid: u16, now: Instant) -> usize {
        let Some(Tx::Command(mut c)) = self.take_tx(id, xid) else {
            return 0;
        };
        // Timeout: kill the group; `T` if the shell was still running, else its status.
        if c.deadline.is_some_and(|d| now >= d) {
            c.deadline = None;
            let _ = c.child.kill_all();
            c.timed_out = c.status.is_none();
            for slot in 0..2 {
                self.close_out(&mut c, slot);
            }
        }
        for slot in 0..2 {
            self.pump_output(id, xid, &mut c, slot);
        }
        Self::pump_stdin(&mut c);
        if c.stdin_to_close() {
            if let Some(extra) = c.stdin_extra.take() {
                self.io.remove_extra(extra);
            }
            c.child.close_stdin();
        }
        if c.finished() {
            self.finish_command(id, xid, *c);
            self.busy = true;
            return 0;
        }
        let backlog = c.stdin_bytes;
        self.put_tx(id, xid, Tx::Command(c));
        backlog
    }

    /// Reads channel `slot + 1` while the link can take it.
    fn pump_output(&mut self, id: ConnId, xid: u16, c: &mut CommandTx, slot: usize) {
        let channel = if slot == 0 { 1 } else { 2 };
        while let Some(p) = c.out.get(slot).and_then(Option::as_ref) {
            if !p.readable || !self.link_has_room(id) {
                break;
            }
            let fd = match (c.tty, slot) {
                (_, 0) => c.child.stdout_fd(),
                _ => c.child.stderr_fd(),
            };
            let Some(fd) = fd else {
                self.close_out(c, slot);
                break;
            };
            let bulk = p.bulk;
            // Whole packets per read: a full pipe then leaves no runt behind.
            let chunk = self
                .io
                .get(id)
                .map_or(0, |conn| conn.link.machine().max_data_chunk());
            let max = whole_packets(if bulk { BULK_CHUNK } else { CHUNK }, chunk);
            let buf = self.arena.room(max);
            let r = if c.tty {
                fdio::read_pty_into(fd, buf, max)
            } else {
                fdio::read_into(fd, buf, max)
            };
            match r {
                Ok(ReadOutcome::Data(n)) => {
                    if n == max
                        && !bulk
                        && !c.tty
                        && let Some(Some(p)) = c.out.get_mut(slot)
                    {
                        // The pipe was full: bulk output. Failing to grow it is fine.
                        p.bulk = true;
                        let _ = fdio::set_pipe_size(fd, BULK_PIPE);
                    }
                    let data = self.arena.take();
                    // `link_has_room` held, so the machine takes it.
                    self.answer(id, xid, "output", |s| s.output(xid, channel, data));
                }
                Ok(ReadOutcome::WouldBlock) => {
                    if let Some(Some(p)) = c.out.get_mut(slot) {
                        p.readable = false;
                    }
                }
                Ok(ReadOutcome::Eof) | Err(_) => {
                    self.arena.discard();
                    self.close_out(c, slot);
                    self.answer(id, xid, "output end", |s| s.output_end(xid, channel));
                }
            }
        }
        if c.out
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.readable)
            && self.link_has_room(id)
        {
            self.busy = true;
        }
    }

    /// Writes stdin while the child takes it.
    fn pump_stdin(c: &mut CommandTx) {
        while c.stdin_writable && !c.stdin.is_empty() {
            let Some(fd) = c.child.stdin_fd() else {
                c.stdin.clear();
                c.stdin_bytes = 0;
                break;
            };
            let Some(front) = c.stdin.front_mut() else {
                break;
            };
            match fdio::write_some(fd, front) {
                Ok(Some(n)) => c.stdin_written(n),
                Ok(None) => c.stdin_writable = false,
                Err(_) => {
                    // The command closed its stdin (EPIPE): what is left has nowhere to go.
                    c.stdin.clear();
                    c.stdin_bytes = 0;
                    c.stdin_eof = true;
                }
            }
        }
    }

    /// The status after the output: a start failure, the agent's timeout, or how the shell
    /// ended; then its record, and the transaction is released.
    fn finish_command(&mut self, id: ConnId, xid: u16, c: CommandTx) {
        let cid = self.cid(id);
        let pid = c.child.pid();
        let mut failure = None;
        let end = if let Some(e) = c.child.exec_error() {
            // The child could not become the command (switching user or exec failed).
            let errno = crate::errno_of(&e);
            self.answer(id, xid, "fail", |s| s.fail(xid, errno));
            failure = Some(e);
            CommandEnd::SpawnFailed(errno)
        } else if c.timed_out {
            self.answer(id, xid, "timed out", |s| s.timed_out(xid));
            CommandEnd::TimedOut
        } else {
            match c.status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL)) {
                ExitStatus::Exited(code) => {
                    let code32 = u32::try_from(code).unwrap_or(0);
                    self.answer(id, xid, "exit", |s| s.command_exited(xid, code32));
                    CommandEnd::Exited(code)
                }
                ExitStatus::Signaled(sig) => {
                    let sig32 = u32::try_from(sig).unwrap_or(0);
                    self.answer(id, xid, "killed", |s| s.command_killed(xid, sig32));
                    CommandEnd::Signaled(sig)
                }
            }
        };
        let record = AuditEvent::CommandEnd {
            cid,
            xid,
            pid,
            end,
            cut: None,
        };
        match failure {
            Some(e) => self.audit_failure(&record, &e),
            None => self.audit(&record),
        }
        self.drop_command(c);
    }

    fn close_out(&mut self, c: &mut CommandTx, slot: usize) {
        let Some(p) = c.out.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.io.remove_extra(p.extra);
        if c.tty {
            if let Some(extra) = c.stdin_extra.take() {
                self.io.remove_extra(extra);
            }
            drop(c.child.take_pty());
            c.stdin.clear();
            c.stdin_bytes = 0;
        } else if slot == 0 {
            c.child.close_stdout();
        } else {
            c.child.close_stderr();
        }
    }

    /// Kills the command's process group (or cgroup) and releases its fds; a child not
    /// reaped yet stays watched until its pidfd says it is gone, so no zombie is left.
    pub(super) fn drop_command(&mut self, mut c: CommandTx) {
        let _ = c.child.kill_all();
        for extra in [c.stdin_extra.take()]
            .into_iter()
            .flatten()
            .chain(c.out.iter_mut().filter_map(|o| o.take().map(|o| o.extra)))
        {
            self.io.remove_extra(extra);
        }
        let CommandTx {
            mut child,
            exit_extra,
            ..
        } = c;
        child.close_stdin();
        child.close_stdout();
        child.close_stderr();
        drop(child.take_pty());
        match exit_extra {
            // Not reaped yet: keep watching the pidfd and reap it when it fires.
            Some(extra) if matches!(child.try_wait(), Ok(None)) => {
                self.watch_dying(extra, child);
            }
            other => {
                if let Some(extra) = other {
                    self.io.remove_extra(extra);
                }
                // Reaped (or unwatchable: then its drop parks it for later).
                drop(child);
            }
        }
    }
}
