//! Link-level errors, split by fault: the connection is unusable (`LinkError`), or the caller
//! asked for something impossible (`UsageError`).

use std::fmt;
use std::time::Duration;

use super::status;
use crate::wire::{DecodeError, Dialect, EncodeError, PacketType};

/// The connection cannot continue. Sticky: once a machine has one, every later input call
/// returns it; packets queued before it (e.g. status words) can still be transmitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The byte stream lost its packet boundaries (e.g. a length below 8).
    #[error("framing error, the stream cannot be resynchronised: {0}")]
    Framing(DecodeError),
    /// The server's protocol major version differs from ours.
    #[error("protocol version mismatch: the server speaks {}.{}, this client speaks {}.{}", theirs.0, theirs.1, ours.0, ours.1)]
    VersionMismatch { ours: (u8, u8), theirs: (u8, u8) },
    /// The first packet from the server was not a hello.
    #[error("handshake failed: expected a hello from the server, got a {0} packet")]
    Handshake(&'static str),
    /// The server did not answer the hello in time.
    #[error("no hello reply from the server within {0:?}")]
    HandshakeTimeout(Duration),
    /// Nothing arrived from the peer within the negotiated keepalive interval.
    #[error("link dead: nothing received for {0:?} (keepalive expired)")]
    KeepaliveExpired(Duration),
    /// The transport reported end of stream.
    #[error("the peer closed the connection")]
    Closed,
    /// The agent answered the hello with a refusal instead of a reply (and closed the
    /// connection). On the agent's side: the connection was refused so.
    #[error("agent refused the connection: {0}")]
    Refused(Refusal),
}

/// Why an agent will not serve a connection: its answer to the hello in place of the hello
/// reply, `M`=status then `m`=detail on xid 0, before it closes the connection
/// (ARCHITECTURE.md, "Agent behaviour": refusals have words). A client of the C executor
/// reads it as a failed handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// An errno of the agent's system: [`status::EUSERS`] too many clients,
    /// [`status::EMFILE`] out of file descriptors, [`status::EPROTO`] the hello could not
    /// be read; others are shown as the errno.
    pub status: u32,
    /// For `EUSERS` the agent's client limit; otherwise 0.
    pub detail: u32,
}

impl Refusal {
    /// The agent serves `max` clients already.
    pub fn too_many_clients(max: usize) -> Refusal {
        Refusal {
            status: status::EUSERS,
            detail: u32::try_from(max).unwrap_or(u32::MAX),
        }
    }

    /// The agent has no file descriptor left for the connection.
    pub fn out_of_fds() -> Refusal {
        Refusal {
            status: status::EMFILE,
            detail: 0,
        }
    }

    /// The client's hello did not parse.
    pub fn bad_hello() -> Refusal {
        Refusal {
            status: status::EPROTO,
            detail: 0,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            status::EUSERS => write!(f, "too many clients (max {})", self.detail),
            status::EMFILE | 23 => f.write_str("the agent has run out of file descriptors"),
            status::EPROTO => f.write_str("it could not read the hello"),
            other => f.write_str(&status::errno_text(other)),
        }
    }
}

/// A packet from the peer that was dropped because it made no sense at that point.
/// The connection and all other transactions continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The packet did not decode (unknown type, malformed payload).
    #[error(transparent)]
    Decode(DecodeError),
    /// A well-formed packet that the transaction's state does not allow.
    #[error("unexpected {} packet on xid {xid}: {why}", packet.name())]
    Unexpected {
        xid: u16,
        packet: PacketType,
        why: &'static str,
    },
    /// Device links: a new client's hello was found where the packet boundaries were lost
    /// (next to a silence inside a packet, or after a framing error), and the `bytes` in
    /// front of it were dropped as line noise left by a client that died mid-write (see
    /// [`super::Limits::stale_partial_after`]). The session restarts at the hello.
    #[error(
        "dropped {bytes} bytes of line noise before a new client's hello (a client died mid-write)"
    )]
    StalePartial { bytes: usize },
}

/// The caller asked a machine for something it cannot do. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The transmit queue is over its limit: drain `poll_transmit` first.
    #[error(
        "transmit queue full ({buffered} bytes buffered, limit {limit}): drain poll_transmit first"
    )]
    QueueFull { buffered: usize, limit: usize },
    /// Too many transactions are live on this connection.
    #[error("too many live transactions (limit {0})")]
    TooManyTransactions(usize),
    /// No live transaction has this xid.
    #[error("no live transaction with xid {0}")]
    UnknownTransaction(u16),
    /// The transaction exists but is of another kind or in another state.
    #[error("transaction {xid} cannot {what}")]
    WrongState { xid: u16, what: &'static str },
    /// The operation does not exist in the connection's dialect.
    #[error("{what} is not available in protocol {dialect}")]
    NotSupported {
        what: &'static str,
        dialect: Dialect,
    },
    /// The request does not fit in one packet of the connection's dialect: requests are
    /// never split, and a 3.0 peer (the C executor) takes at most 32768 bytes per packet,
    /// a 4.0 peer 65535. For a command, its user, command text and environment together
    /// make the packet; pass large data through stdin or a file instead.
    #[error(
        "the {what} request needs a packet of {len} bytes; protocol {dialect} allows at most {max} (requests are not split: pass large data through stdin or a file)"
    )]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
        dialect: Dialect,
    },
    /// The packet could not be encoded (NUL inside a string, …).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The connection has failed.
    #[error("connection failed: {0}")]
    Link(#[from] LinkError),
}
