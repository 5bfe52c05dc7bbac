//! `agent`: the agent's own audit trail.
//!
//! The agent pushes a record for every client connect/disconnect, command start and end,
//! inject and extract ([`AuditTrail::push`]). Records are kept as formatted lines in a bounded
//! ring shared by all monitors; each monitor is an [`AuditSubscriber`] with its own cursor, so
//! one slow monitor never holds memory for the others. When the ring overwrites lines a
//! subscriber has not read yet, that subscriber counts them as dropped and gets one
//! `[tuppence: N lines dropped]` line instead. A new subscriber starts at the current end (it
//! sees what happens after it subscribed, like the other sources).
//!
//! Lines look like the kernel log so the two can be read side by side:
//! `[    12.345678] agent: cid=1 xid=3 run pid=4242 user="root" tty=no cmd="echo hi"`.
//! The timestamp is `CLOCK_MONOTONIC`, the clock `/dev/kmsg` timestamps approximate. Strings
//! from clients are quoted, with `"`, `\` and unprintable bytes escaped as `\xNN` and anything
//! beyond 512 bytes cut (marked `...`), so a record is always one bounded line.
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

/// The default number of lines kept.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Longest client-supplied string kept in a record.
const MAX_FIELD: usize = 512;

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
    /// A command ended (or failed to start).
    CommandEnd {
        /// Connection.
        cid: u16,
        /// Transaction.
        xid: u16,
        /// The shell's pid (0 if it never started).
        pid: u32,
        /// How it ended.
        end: CommandEnd,
    },
    /// An inject finished (status 0) or failed (errno).
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
        /// Bytes written.
        bytes: u64,
        /// 0 or the errno.
        status: u32,
    },
    /// An extract finished (status 0) or failed (errno).
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
        /// 0 or the errno.
        status: u32,
    },
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

/// Appends `"value"` with escapes and the length cut.
fn push_quoted(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for &b in &value[..value.len().min(MAX_FIELD)] {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    if value.len() > MAX_FIELD {
        out.extend_from_slice(b"...");
    }
    out.push(b'"');
}

fn format_event(event: &AuditEvent<'_>, micros: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    push_timestamp(&mut out, micros);
    out.extend_from_slice(b"agent: ");
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
            text(format!("cid={cid} xid={xid} run pid={pid} user="));
            push_quoted(&mut out, user);
            out.extend_from_slice(if tty {
                b" tty=yes cmd="
            } else {
                b" tty=no cmd="
            });
            push_quoted(&mut out, command);
        }
        AuditEvent::CommandEnd { cid, xid, pid, end } => {
            let how = match end {
                CommandEnd::Exited(code) => format!("exit code={code}"),
                CommandEnd::Signaled(sig) => format!("killed signal={sig}"),
                CommandEnd::TimedOut => "timeout".to_string(),
                CommandEnd::SpawnFailed(errno) => format!("spawn-failed errno={errno}"),
            };
            text(format!("cid={cid} xid={xid} end pid={pid} {how}"));
        }
        AuditEvent::Inject {
            cid,
            xid,
            user,
            path,
            mode,
            bytes,
            status,
        } => {
            text(format!("cid={cid} xid={xid} inject user="));
            push_quoted(&mut out, user);
            out.extend_from_slice(b" path=");
            push_quoted(&mut out, path);
            out.extend_from_slice(
                format!(" mode={mode:04o} bytes={bytes} status={status}").as_bytes(),
            );
        }
        AuditEvent::Extract {
            cid,
            xid,
            user,
            path,
            bytes,
            status,
        } => {
            text(format!("cid={cid} xid={xid} extract user="));
            push_quoted(&mut out, user);
            out.extend_from_slice(b" path=");
            push_quoted(&mut out, path);
            out.extend_from_slice(format!(" bytes={bytes} status={status}").as_bytes());
        }
    }
    out.push(b'\n');
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
                status: 2,
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
            },
            0,
        );
        assert!(line.ends_with(b"end pid=9 killed signal=15\n"));
    }
}
