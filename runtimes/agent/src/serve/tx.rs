//! The agent's side of each transaction: the child process, file or event source behind
//! an xid, and what it still has to do.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tuppence_mio::ExtraId;

use crate::sources::EventSource;
use crate::spawn::{Child, ExitStatus};
use crate::{ExtractFile, InjectFile};

/// An output pipe (or the pty master) of a command and whether it may have data.
pub(crate) struct OutPipe {
    pub extra: ExtraId,
    pub readable: bool,
    /// The pipe was grown for bulk output (see `serve::BULK_PIPE`).
    pub bulk: bool,
}

pub(crate) struct CommandTx {
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

/// What a queued stdin chunk costs beyond its payload: its `Bytes` in the queue, and the
/// packet header it keeps alive in the receive buffer (chunks are zero-copy slices of it).
/// Counted in `stdin_bytes`, so that a flood of 1-byte stdin packets is bounded by the
/// memory it takes, not by its payload (uncounted, 1 MiB of payload was 1 million chunks).
pub(crate) const STDIN_CHUNK_OVERHEAD: usize =
    std::mem::size_of::<Bytes>() + tuppence::wire::HEADER_LEN + 2;

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
            || (self.stdin.is_empty() && self.stdin_eof && !self.tty && self.stdin_extra.is_some())
            || self.finished()
    }
}

pub(crate) struct MonitorTx {
    /// The source's name as requested (for its audit record).
    pub name: Bytes,
    pub source: Box<dyn EventSource + Send>,
    pub extra: Option<ExtraId>,
    pub readable: bool,
    pub next_poll: Option<Instant>,
    /// Lines read but not yet accepted by the link.
    pub stash: VecDeque<Bytes>,
    /// Settle requests waiting for the source to be drained.
    pub settles: VecDeque<u32>,
}

/// An inject: the temporary file and the data received but not yet written (written
/// once per loop turn, with `writev`).
pub(crate) struct InjectTx {
    pub file: InjectFile,
    pub user: Vec<u8>,
    /// The path as requested (for its audit record).
    pub path: Vec<u8>,
    pub pending: Vec<Bytes>,
    pub pending_len: usize,
}

/// An extract, with the user and path as requested (for its audit record).
pub(crate) struct ExtractTx {
    pub file: ExtractFile,
    pub user: Vec<u8>,
    pub path: Vec<u8>,
}

pub(crate) enum Tx {
    Command(Box<CommandTx>),
    Inject(Box<InjectTx>),
    Extract(Box<ExtractTx>),
    Monitor(Box<MonitorTx>),
}
