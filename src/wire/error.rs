//! Codec errors, split by who is at fault: the peer (`DecodeError`) or the caller (`EncodeError`).

use super::{Dialect, Header};

/// What is wrong inside one packet's payload. Always carries the name of the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// A fixed-size field does not fit in what is left of the payload.
    #[error("field `{field}` needs {need} bytes but only {have} are left")]
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    /// A string field runs to the end of the payload without its NUL terminator.
    #[error("string field `{field}` has no NUL terminator")]
    MissingNul { field: &'static str },
    /// Bytes follow the last field of a fixed layout.
    #[error("{extra} unexpected bytes after the last field")]
    TrailingBytes { extra: usize },
    /// A repeated field has more entries than the codec accepts.
    #[error("more than {max} `{field}` entries")]
    TooMany { field: &'static str, max: usize },
    /// A procinfo TLV claims more bytes than the payload holds.
    #[error("procinfo TLV #{index} (type {kind}) has length {len} but only {have} bytes are left")]
    TlvOverrun {
        index: usize,
        kind: u8,
        len: u8,
        have: usize,
    },
    /// A procinfo TLV list ends without the type-0 terminator.
    #[error("procinfo TLV list has no type-0 terminator")]
    MissingTerminator,
}

/// The peer sent bytes that are not a valid packet stream.
///
/// Framing errors (`LengthTooShort`, `LengthTooLong`) are fatal: the stream cannot be
/// resynchronised. `UnknownType` and `Malformed` concern one packet only; the packet has
/// been consumed and the header is given so the receiver can answer on its xid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("packet length {len} is shorter than the 8-byte header")]
    LengthTooShort { len: u16 },
    #[error("packet length {len} exceeds the limit of {max} bytes")]
    LengthTooLong { len: u16, max: usize },
    #[error("unknown packet type {} (cid {}, xid {})", header.type_display(), header.cid, header.xid)]
    UnknownType { header: Header },
    #[error("malformed {} packet (cid {}, xid {}): {error}", header.type_display(), header.cid, header.xid)]
    Malformed { header: Header, error: PayloadError },
}

impl DecodeError {
    /// True when the byte stream cannot continue after this error (no resynchronisation).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DecodeError::LengthTooShort { .. } | DecodeError::LengthTooLong { .. }
        )
    }

    /// The header of the offending packet, when the framing was intact.
    pub fn header(&self) -> Option<&Header> {
        match self {
            DecodeError::UnknownType { header } | DecodeError::Malformed { header, .. } => {
                Some(header)
            }
            _ => None,
        }
    }
}

/// The caller asked the encoder for a packet that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet would not fit in the 16-bit length field (or the configured maximum).
    #[error("{kind} packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    /// A string field contains a NUL byte, which would end it early on the wire.
    #[error("string field `{field}` contains a NUL byte")]
    InteriorNul { field: &'static str },
    /// The packet (or this form of it) does not exist in the selected dialect.
    #[error("{kind} packet cannot be expressed in protocol {dialect}: {why}")]
    Unsupported {
        kind: &'static str,
        dialect: Dialect,
        why: &'static str,
    },
    /// A procinfo response lists more fields or a longer value than the TLV format allows.
    #[error("procinfo field type {kind}: {why}")]
    BadProcInfo { kind: u8, why: &'static str },
}
