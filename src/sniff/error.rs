//! Sniff errors, split by who is at fault: the peer (`DecodeError`, `PayloadError`), the
//! caller asking for something the wire cannot carry (`EncodeError`) or something the machine
//! cannot do right now (`UsageError`).

use super::{Status, TaskId};

/// What is wrong inside task parameters or task answer data. Always names the field, so a
/// log line says which part of a peer's message was bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// A fixed-size field or a string body does not fit in what is left.
    #[error("field `{field}` needs {need} bytes but only {have} are left")]
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("field `{field}` has an invalid value: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
    /// Bytes follow the last field of a layout that must end there.
    #[error("{extra} unexpected bytes after the last field")]
    TrailingBytes { extra: usize },
}

/// The peer sent bytes that are not a valid sniff message stream.
///
/// Only [`DecodeError::FrameTooLong`] is fatal: once a length prefix is refused the stream
/// cannot be resynchronised. Every other variant concerns one message whose frame was intact;
/// it has been consumed and the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than the configured maximum. Checked before any
    /// buffer is reserved, so a hostile prefix cannot make us allocate.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLong { len: u32, max: usize },
    /// A request or answer shorter than its 4-byte id plus the type/status byte.
    #[error("message of {len} bytes is shorter than the 5-byte id + type/status header")]
    MessageTooShort { len: usize },
    /// An answer whose status byte is none of `U`, `A`, `O`, `F`.
    #[error("answer for task {id} has unknown status byte {status:#04x}")]
    UnknownStatus { id: TaskId, status: u8 },
    /// A `U` or `A` answer with data behind the status: the spec says they carry none.
    #[error("{status:?} answer for task {id} carries {len} unexpected data bytes")]
    UnexpectedData {
        id: TaskId,
        status: Status,
        len: usize,
    },
}

impl DecodeError {
    /// True when the byte stream cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::FrameTooLong { .. })
    }
}

/// The caller asked for a message the wire format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message would exceed the frame limit (or the u32 length prefix).
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    FrameTooLong { len: usize, max: usize },
    /// A length or count does not fit in its wire field (u32 string length, u16 target count,
    /// u8 certificate count…).
    #[error("field `{field}` holds {len}, more than its wire limit {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A value that the peer would reject (e.g. a ping count of 0, a NUL in a host name),
    /// refused before it goes on the wire.
    #[error("field `{field}` has an invalid value: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

/// The caller asked a machine for something it cannot do now. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The outgoing queue is over its bound: drain `poll_transmit` first (backpressure).
    #[error("the transmit queue is full; drain poll_transmit first")]
    QueueFull,
    /// Every id the requester may use is taken by a task still in flight.
    #[error("{max} tasks are already in flight")]
    TooManyInFlight { max: usize },
    /// No task with this id is in flight.
    #[error("no task {id} is in flight")]
    UnknownTask { id: TaskId },
    /// The request could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
