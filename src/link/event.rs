//! What the machines tell the application.

use std::time::Duration;

use bytes::Bytes;

use super::{LinkError, Violation};
use crate::wire::ProcInfoField;

/// How a transaction ended, as seen by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran and exited with this code (`M`=0, `m`=code).
    Exited(u32),
    /// The command was killed by this signal (`M`=14, `m`=signo).
    Signaled(u32),
    /// A transfer or monitor completed successfully.
    Completed,
    /// The agent could not do it: spawn failure, unknown user, file error… (`M` or `m` =
    /// errno of the system under test; 71 = the agent did not understand the request).
    Failed { errno: u32 },
    /// The agent killed the command at its timeout (`T`).
    TimedOut,
    /// The connection failed before the transaction ended.
    LinkLost(LinkError),
}

impl Outcome {
    /// True for a clean end: exit code 0 or a completed transfer.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0) | Outcome::Completed)
    }
}

/// Events of a [`super::Client`].
///
/// Not `#[non_exhaustive]`, on purpose (nor is [`ServerEvent`]): every event needs an
/// answer from whoever drives the machine, so the runtimes match them exhaustively, and a
/// new event is a compile error in each of them rather than an event silently dropped by a
/// wildcard. (Errors keep `#[non_exhaustive]`: code reports them, it does not answer them.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server answered the hello.
    Connected {
        cid: u16,
        server_version: (u8, u8),
        /// Negotiated keepalive in seconds (0 = off).
        keepalive: u16,
    },
    /// Command output (channel 1 stdout, 2 stderr; tty output is all on 1) or extracted
    /// file data (channel 0).
    Output { xid: u16, channel: u16, data: Bytes },
    /// The agent closed that output channel.
    OutputEnd { xid: u16, channel: u16 },
    /// The agent opened the target file: send data now.
    InjectReady { xid: u16 },
    /// An event from a monitored source.
    MonitorData { xid: u16, data: Bytes },
    /// Every event pending when the settle request arrived has been delivered.
    Settled { xid: u16, seq: u32 },
    /// Answer to a procinfo query.
    ProcInfo {
        xid: u16,
        fields: Vec<ProcInfoField>,
    },
    /// The transaction is over; its xid may be reused.
    Finished { xid: u16, outcome: Outcome },
    /// Nothing arrived within the keepalive interval; the connection is unusable.
    LinkDead,
    /// A packet was dropped because it made no sense; everything else continues.
    ProtocolViolation(Violation),
}

impl ClientEvent {
    /// The transaction the event belongs to; `None` for the connection's own events
    /// (`Connected`, `LinkDead`, `ProtocolViolation`), which concern every transaction or
    /// none.
    pub fn xid(&self) -> Option<u16> {
        match self {
            ClientEvent::Output { xid, .. }
            | ClientEvent::OutputEnd { xid, .. }
            | ClientEvent::InjectReady { xid }
            | ClientEvent::MonitorData { xid, .. }
            | ClientEvent::Settled { xid, .. }
            | ClientEvent::ProcInfo { xid, .. }
            | ClientEvent::Finished { xid, .. } => Some(*xid),
            ClientEvent::Connected { .. }
            | ClientEvent::LinkDead
            | ClientEvent::ProtocolViolation(_) => None,
        }
    }

    /// Bytes of data the event carries (output, extracted data, monitor events): what an
    /// adapter counts against its per-transaction buffering bound.
    pub fn data_len(&self) -> usize {
        match self {
            ClientEvent::Output { data, .. } | ClientEvent::MonitorData { data, .. } => data.len(),
            ClientEvent::Connected { .. }
            | ClientEvent::OutputEnd { .. }
            | ClientEvent::InjectReady { .. }
            | ClientEvent::Settled { .. }
            | ClientEvent::ProcInfo { .. }
            | ClientEvent::Finished { .. }
            | ClientEvent::LinkDead
            | ClientEvent::ProtocolViolation(_) => 0,
        }
    }
}

/// What the agent said in its hello reply, and how long it took
/// ([`super::Client::connect_info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The connection id the agent assigned.
    pub cid: u16,
    pub server_version: (u8, u8),
    /// Negotiated keepalive in seconds (0 = off).
    pub keepalive: u16,
    /// From creating the client (its hello queued) to the reply arriving, by the times
    /// passed to the machine.
    pub latency: Duration,
}

/// Events of a [`super::Server`]: the requests the agent must carry out. Not
/// `#[non_exhaustive]`, on purpose: see [`ClientEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A hello ended the session in progress (only with
    /// [`super::ServerConfig::hello_resets_session`], and only when transactions were
    /// live): the machine has forgotten these transactions and discarded the output not
    /// yet transmitted. Clean up exactly as after a disconnect: kill the commands'
    /// process groups, stop the monitors, remove the injects' temporary files. Comes
    /// before the [`ServerEvent::Hello`] that caused it; events queued before it still
    /// belong to the old session (answering them is refused with `UnknownTransaction`,
    /// and nothing of them is sent).
    SessionReset {
        /// The transactions that were live, in ascending order.
        aborted: Vec<u16>,
    },
    /// A (possibly repeated) hello; already answered by the machine.
    Hello {
        client_version: (u8, u8),
        /// Negotiated keepalive in seconds (0 = off).
        keepalive: u16,
    },
    /// Run `/bin/sh -c command` as `user`. `timeout` already has the agent default applied.
    RunCommand {
        xid: u16,
        user: Bytes,
        command: Bytes,
        timeout: Duration,
        tty: bool,
        env: Vec<Bytes>,
    },
    /// Bytes for the command's stdin.
    Stdin {
        xid: u16,
        data: Bytes,
    },
    /// The client closed the command's stdin.
    StdinEnd {
        xid: u16,
    },
    /// Deliver the signal (a name such as `INT`, `SIGTERM`; empty = KILL) to the command's
    /// process group.
    Interrupt {
        xid: u16,
        signal: Bytes,
    },
    /// Open `path` for writing as `user`; answer `inject_ready` or `fail`.
    Inject {
        xid: u16,
        user: Bytes,
        path: Bytes,
        mode: u32,
    },
    InjectData {
        xid: u16,
        data: Bytes,
    },
    /// All data sent: rename into place and answer `inject_done`.
    InjectEnd {
        xid: u16,
    },
    /// Open `path` for reading as `user`; answer `extract_ready` or `fail`, stream with
    /// `output(xid, 0, ..)`, end with `extract_done`.
    Extract {
        xid: u16,
        user: Bytes,
        path: Bytes,
    },
    /// The client interrupted a transfer. Remove the temporary file / stop reading. The
    /// machine answers `m`=EINTR when this event is polled (after the application's
    /// answers to earlier events), unless the application ended the transfer first.
    TransferAborted {
        xid: u16,
    },
    /// Start watching an event source; send events with `output(xid, 0, ..)`, or `fail`
    /// with 2 if the source is unknown.
    Monitor {
        xid: u16,
        source: Bytes,
    },
    /// Flush pending events of the monitor, then answer `settled(xid, seq)`.
    Settle {
        xid: u16,
        seq: u32,
    },
    /// The client ended the monitor. Stop the source. The machine answers `X`, `M`=0,
    /// `m`=0 when this event is polled (after the application's answers to earlier
    /// events, e.g. a pending settle).
    MonitorEnd {
        xid: u16,
    },
    /// Answer with `procinfo(xid, fields)` for the command's process.
    ProcInfo {
        xid: u16,
        mask: u32,
    },
    /// The client asked the agent to stop.
    Quit,
    /// Nothing arrived within the keepalive interval; drop the connection.
    LinkDead,
    /// A packet was dropped or answered with 71; for logs.
    ProtocolViolation(Violation),
}
