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

impl CommandTx {
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
