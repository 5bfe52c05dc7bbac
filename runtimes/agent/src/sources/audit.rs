//! `agent`: the agent's own audit trail.
//!
//! The agent pushes a record for every client connect/disconnect and for every request
//! ([`AuditTrail::push`]). **Every request leaves exactly one record with its outcome** —
//! success, failure, refusal (`--allow-user`: status 13) or cut-off (the client went away
//! or the agent stopped: `cut=disconnect`, `cut=shutdown`):
//!
//! * a command: `run` when its process starts, and `end` with how it ended (exit code,
//!   signal, timeout, failure to exec; `cut=...` when its client was gone and it was killed
//!   for that); a command that never started (refused, or the fork failed) leaves one
//!   `run-failed` record instead;
//! * an inject or extract: one record when it ends, `status=0` or the errno the client was
//!   sent (4 when the client interrupted it, 28 for a full disk...), or `cut=...`;
//! * a monitor: one record when it ends (by the client: `status=0`; refused or failed: the
//!   errno; or `cut=...`);
//! * an interrupt (`I` to a command): `status=0` when the signal was sent, 22 for an unknown
//!   signal name;
//! * a quit request: whether it was honoured.
//!
//! What belongs to a request already recorded is not recorded again: stdin, settle, procinfo
//! queries, and the interrupt of a transfer (it is that transfer's outcome, status 4).
//!
//! Records are kept as formatted lines in a bounded
//! ring shared by all monitors; each monitor is an [`AuditSubscriber`] with its own cursor, so
//! one slow monitor never holds memory for the others. When the ring overwrites lines a
//! subscriber has not read yet, that subscriber counts them as dropped and gets one
//! `[tuppence: N lines dropped]` line instead. A new subscriber starts at the current end (it
//! sees what happens after it subscribed, like the other sources).
//!
//! Lines look like the kernel log so the two can be read side by side:
//! `[    12.345678] agent: cid=1 xid=3 run pid=4242 user="root" tty=no cmd="echo hi"`.
//! The timestamp is `CLOCK_MONOTONIC`, the clock `/dev/kmsg` timestamps approximate. Strings
//! from clients are quoted and escaped ([`crate::escape`]: `"`, `\` and every byte outside
//! printable ASCII as `\xNN`, cut after 512 bytes, marked `...`), so a record is always one
//! bounded line that no client can forge. The agent's log uses the same text
//! ([`AuditEvent::text`]).
//!
//! The trail is a cheap-to-clone handle (`Arc<Mutex<…>>`), usable from a single-threaded loop
//! and from threads alike. There is no fd: the loop calls `read_new` on its `agent` monitors
//! after pushing records.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::{Batch, EventSource, SourceError, dropped_line, push_timestamp};
use crate::escape::push_quoted;

/// The default number of lines kept.
pub const DEFAULT_CAPACITY: usize = 1024;

/// How a command ended, for its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEnd {
    /// Normal exit with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// The agent's timeout fired.
    TimedOut,
    /// It never started; the errno.
    SpawnFailed(u32),
}

/// Why a request ended without the agent answering its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client went away (disconnected, or replaced on a device link by a new client).
    Disconnect,
    /// The agent stopped (a quit, a signal).
    Shutdown,
}

impl Cut {
    fn as_str(self) -> &'static str {
        match self {
            Cut::Disconnect => "disconnect",
            Cut::Shutdown => "shutdown",
        }
    }
}

/// How a transfer or monitor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The status sent to the client: 0 for success, else the errno.
    Status(u32),
    /// No status was sent: the request was cut off.
    Cut(Cut),
}

/// One thing that happened, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent<'a> {
    /// A client connected.
    Connect {
        /// The connection id assigned.
        cid: u16,
        /// A description of the peer or transport.
        peer: &'a str,
    },
    /// A client went away (or was dropped).
    Disconnect {
        /// The connection id.
        cid: u16,
    },
    /// A command was started.
    CommandStart {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The shell's pid.
        pid: u32,
        /// The user it runs as.
        user: &'a [u8],
        /// The command line.
        command: &'a [u8],
        /// Whether it runs on a pty.
        tty: bool,
    },
    /// A started command ended.
    CommandEnd {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The shell's pid.
        pid: u32,
        /// How it ended.
        end: CommandEnd,
        /// Set when its client never got the status (the command was killed for that, unless
        /// it had ended already).
        cut: Option<Cut>,
    },
    /// A command was refused or could not be started (no process; its only record).
    CommandFailed {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The user asked for.
        user: &'a [u8],
        /// The command line.
        command: &'a [u8],
        /// Whether a pty was asked for.
        tty: bool,
        /// The errno sent to the client (13 for a user `--allow-user` does not allow).
        status: u32,
    },
    /// An inject ended.
    Inject {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The user.
        user: &'a [u8],
        /// The file name as requested.
        path: &'a [u8],
        /// The requested mode.
        mode: u32,
        /// Bytes written (into the temporary, for one that failed).
        bytes: u64,
        /// How it ended.
        outcome: AuditOutcome,
    },
    /// An extract ended.
    Extract {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The user.
        user: &'a [u8],
        /// The file name as requested.
        path: &'a [u8],
        /// Bytes read.
        bytes: u64,
        /// How it ended.
        outcome: AuditOutcome,
    },
    /// A monitor ended (or was refused).
    Monitor {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The source name as requested.
        source: &'a [u8],
        /// How it ended.
        outcome: AuditOutcome,
    },
    /// A client asked for a signal to a command.
    Interrupt {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The signal name as sent (empty = KILL).
        signal: &'a [u8],
        /// 0 when the signal was sent, else the errno (22: unknown name).
        status: u32,
    },
    /// A client asked the agent to stop.
    Quit {
        /// Connection.
        cid: u16,
        /// Whether the agent stops (`--no-quit` ignores the request).
        honoured: bool,
    },
}

impl AuditEvent<'_> {
    /// The record without its timestamp: one line of printable ASCII, no newline (what the
    /// agent's log shows for it).
    pub fn text(&self) -> String {
        let bytes = format_body(self);
        // `format_body` writes ASCII only (numbers, fixed words, escaped strings).
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<Bytes>,
    /// Sequence number of `lines[0]`; the next record gets `first_seq + lines.len()`.
    first_seq: u64,
    capacity: usize,
}

impl Ring {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.lines.len() as u64
    }
}

/// The shared, bounded trail.
#[derive(Debug, Clone)]
pub struct AuditTrail {
    ring: Arc<Mutex<Ring>>,
}

impl Default for AuditTrail {
    fn default() -> AuditTrail {
        AuditTrail::new(DEFAULT_CAPACITY)
    }
}

impl AuditTrail {
    /// A trail keeping the last `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> AuditTrail {
        let capacity = capacity.max(1);
        AuditTrail {
            ring: Arc::new(Mutex::new(Ring {
                lines: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
                first_seq: 0,
                capacity,
            })),
        }
    }

    /// The ring, even if another thread panicked while holding it (the ring is always
    /// consistent between statements, so its data stays usable).
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an event; returns its sequence number.
    pub fn push(&self, event: &AuditEvent<'_>) -> u64 {
        self.push_line(&format_event(event, monotonic_micros()))
    }

    /// Records a pre-formatted line (a `\n` is added if missing; cut at 4 KiB).
    pub fn push_line(&self, line: &[u8]) -> u64 {
        let mut line = line[..line.len().min(4096)].to_vec();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut ring = self.lock();
        let seq = ring.end_seq();
        if ring.lines.len() >= ring.capacity {
            ring.lines.pop_front();
            ring.first_seq += 1;
        }
        ring.lines.push_back(Bytes::from(line));
        seq
    }

    /// A new monitor cursor, starting after the last record pushed so far.
    pub fn subscribe(&self) -> AuditSubscriber {
        let next = self.lock().end_seq();
        AuditSubscriber {
            trail: self.clone(),
            next,
            dropped: 0,
        }
    }

    /// The sequence number the next record will get: it changes exactly when a record is
    /// pushed (a loop compares it to notice records made after it served its monitors).
    pub fn end_seq(&self) -> u64 {
        self.lock().end_seq()
    }

    /// The number of lines currently kept.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// True when nothing has been kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One monitor's position in the trail.
#[derive(Debug)]
pub struct AuditSubscriber {
    trail: AuditTrail,
    next: u64,
    dropped: u64,
}

impl AuditSubscriber {
    /// True when records were pushed that this subscriber has not read.
    pub fn has_pending(&self) -> bool {
        self.trail.lock().end_seq() > self.next
    }
}

impl EventSource for AuditSubscriber {
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Up to `max_lines` lines (one more when a drop notice is due).
    fn read_new(&mut self, max_lines: usize) -> Result<Batch, SourceError> {
        let ring = self.trail.lock();
        let mut batch = Batch::default();
        if self.next < ring.first_seq {
            let lost = ring.first_seq - self.next;
            self.dropped += lost;
            self.next = ring.first_seq;
            batch.lines.push(dropped_line(lost));
        }
        let start = usize::try_from(self.next - ring.first_seq).unwrap_or(usize::MAX);
        let available = ring.lines.len().saturating_sub(start);
        let take = available.min(max_lines);
        batch
            .lines
            .extend(ring.lines.iter().skip(start).take(take).cloned());
        self.next += take as u64;
        batch.drained = take == available;
        Ok(batch)
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn monotonic_micros() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// ` user="…" tty=yes|no cmd="…"`.
fn push_command(out: &mut Vec<u8>, user: &[u8], command: &[u8], tty: bool) {
    out.extend_from_slice(b" user=");
    push_quoted(out, user);
    out.extend_from_slice(if tty {
        b" tty=yes cmd="
    } else {
        b" tty=no cmd="
    });
    push_quoted(out, command);
}

fn push_outcome(out: &mut Vec<u8>, outcome: AuditOutcome) {
    match outcome {
        AuditOutcome::Status(status) => {
            out.extend_from_slice(format!(" status={status}").as_bytes())
        }
        AuditOutcome::Cut(cut) => {
            out.extend_from_slice(b" cut=");
            out.extend_from_slice(cut.as_str().as_bytes());
        }
    }
}

fn format_event(event: &AuditEvent<'_>, micros: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    push_timestamp(&mut out, micros);
    out.extend_from_slice(b"agent: ");
    out.extend_from_slice(&format_body(event));
    out.push(b'\n');
    out
}

fn format_body(event: &AuditEvent<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut text = |s: String| out.extend_from_slice(s.as_bytes());
    match *event {
        AuditEvent::Connect { cid, peer } => {
            text(format!("cid={cid} connect peer="));
            push_quoted(&mut out, peer.as_bytes());
        }
        AuditEvent::Disconnect { cid } => text(format!("cid={cid} disconnect")),
        AuditEvent::CommandStart {
            cid,
            xid,
            pid,
            user,
            command,
            tty,
        } => {
            text(format!("cid={cid} xid={xid} run pid={pid}"));
            push_command(&mut out, user, command, tty);
        }
        AuditEvent::CommandEnd {
            cid,
            xid,
            pid,
            end,
            cut,
        } => {
            let how = match end {
                CommandEnd::Exited(code) => format!("exit code={code}"),
                CommandEnd::Signaled(sig) => format!("killed signal={sig}"),
                CommandEnd::TimedOut => "timeout".to_string(),
                CommandEnd::SpawnFailed(errno) => format!("spawn-failed errno={errno}"),
            };
            text(format!("cid={cid} xid={xid} end pid={pid} {how}"));
            if let Some(cut) = cut {
                push_outcome(&mut out, AuditOutcome::Cut(cut));
            }
        }
        AuditEvent::CommandFailed {
            cid,
            xid,
            user,
            command,
            tty,
            status,
        } => {
            text(format!("cid={cid} xid={xid} run-failed"));
            push_command(&mut out, user, command, tty);
            push_outcome(&mut out, AuditOutcome::Status(status));
        }
        AuditEvent::Inject {
            cid,
            xid,
            user,
            path,
            mode,
            bytes,
            outcome,
        } => {
            text(format!("cid={cid} xid={xid} inject user="));
            push_quoted(&mut out, user);
            out.extend_from_slice(b" path=");
            push_quoted(&mut out, path);
            out.extend_from_slice(format!(" mode={mode:04o} bytes={bytes}").as_bytes());
            push_outcome(&mut out, outcome);
        }
        AuditEvent::Extract {
            cid,
            xid,
            user,
            path,
            bytes,
            outcome,
        } => {
            text(format!("cid={cid} xid={xid} extract user="));
            push_quoted(&mut out, user);
            out.extend_from_slice(b" path=");
            push_quoted(&mut out, path);
            out.extend_from_slice(format!(" bytes={bytes}").as_bytes());
            push_outcome(&mut out, outcome);
        }
        AuditEvent::Monitor {
            cid,
            xid,
            source,
            outcome,
        } => {
            text(format!("cid={cid} xid={xid} monitor source="));
            push_quoted(&mut out, source);
            push_outcome(&mut out, outcome);
        }
        AuditEvent::Interrupt {
            cid,
            xid,
            signal,
            status,
        } => {
            text(format!("cid={cid} xid={xid} interrupt signal="));
            push_quoted(&mut out, signal);
            push_outcome(&mut out, AuditOutcome::Status(status));
        }
        AuditEvent::Quit { cid, honoured } => {
            text(format!("cid={cid} quit"));
            if !honoured {
                out.extend_from_slice(b" ignored (--no-quit)");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_single_bounded_lines() {
        let line = format_event(
            &AuditEvent::CommandStart {
                cid: 1,
                xid: 3,
                pid: 42,
                user: b"root",
                command: b"echo \"hi\"\nrm x\\",
                tty: false,
            },
            12_345_678,
        );
        assert_eq!(
            line,
            b"[   12.345678] agent: cid=1 xid=3 run pid=42 user=\"root\" tty=no cmd=\"echo \\\"hi\\\"\\x0arm x\\\\\"\n"
        );
        let long = vec![b'a'; 2000];
        let line = format_event(
            &AuditEvent::Extract {
                cid: 1,
                xid: 2,
                user: b"u",
                path: &long,
                bytes: 0,
                outcome: AuditOutcome::Status(2),
            },
            0,
        );
        assert!(line.len() < 700);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"...\" bytes=0 status=2\n"));
        let line = format_event(
            &AuditEvent::CommandEnd {
                cid: 1,
                xid: 2,
                pid: 9,
                end: CommandEnd::Signaled(15),
                cut: None,
            },
            0,
        );
        assert!(line.ends_with(b"end pid=9 killed signal=15\n"));
        let line = format_event(
            &AuditEvent::CommandEnd {
                cid: 1,
                xid: 2,
                pid: 9,
                end: CommandEnd::Signaled(9),
                cut: Some(Cut::Disconnect),
            },
            0,
        );
        assert!(line.ends_with(b"end pid=9 killed signal=9 cut=disconnect\n"));
        let line = format_event(
            &AuditEvent::Inject {
                cid: 1,
                xid: 2,
                user: b"u",
                path: b"/f\n[ 1.0] agent: forged",
                mode: 0o644,
                bytes: 7,
                outcome: AuditOutcome::Cut(Cut::Shutdown),
            },
            0,
        );
        assert!(
            line.ends_with(
                b" path=\"/f\\x0a[ 1.0] agent: forged\" mode=0644 bytes=7 cut=shutdown\n"
            ),
            "{}",
            String::from_utf8_lossy(&line)
        );
        let event = AuditEvent::Monitor {
            cid: 3,
            xid: 4,
            source: b"file:/x",
            outcome: AuditOutcome::Status(13),
        };
        assert_eq!(
            event.text(),
            "cid=3 xid=4 monitor source=\"file:/x\" status=13"
        );
    }
}
