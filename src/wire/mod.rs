//! The link codec: the 8-byte header, the typed packets, an incremental decoder and the
//! encoder, for both wire dialects.
//!
//! This module is pure: it never panics on input, never allocates more than the packet it
//! is decoding, and knows nothing about connections or transactions (that is `link`, which
//! depends on this module and never the other way round). All framing lives here: where a
//! packet starts and ends, which dialect a stream speaks, and where a device link's stream
//! picks up again after line noise ([`Decoder`]).
//!
//! ```
//! use bytes::BytesMut;
//! use tuppence::wire::{Decoder, Dialect, Packet, Sender};
//!
//! let mut out = BytesMut::new();
//! Packet::Major(0).encode(Dialect::V4, 2, 1, &mut out).unwrap();
//! let mut dec = Decoder::new(Dialect::V4, Sender::Server);
//! dec.push(&out);
//! let frame = dec.next_frame().unwrap().unwrap();
//! assert_eq!((frame.cid, frame.xid, frame.packet), (2, 1, Packet::Major(0)));
//! ```
mod chunk;
mod decoder;
mod error;
mod header;
mod packet;
mod procinfo;
mod reader;
mod resync;

pub use chunk::{DEFAULT_MAX_CHUNK, DataChunks, MAX_CHUNK, chunks, encode_data};
pub use decoder::{Decoder, OWNED_MIN_PACKET, decode_frame};
pub use error::{DecodeError, EncodeError, PayloadError};
pub use header::{Header, PacketType};
pub use packet::{CommandRequest, Frame, Hello, Packet};
pub use procinfo::{MAX_PROCINFO_FIELDS, ProcInfoField, field};
pub use resync::{
    HELLO_LEN, HELLO_SIGNATURE_LEN, HelloMatch, Resynced, find_hello, hello_signature, match_hello,
    reply_start, rfind_hello,
};

use std::fmt;

/// Size of every packet header.
pub const HEADER_LEN: usize = 8;
/// The largest packet the 16-bit length can describe.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;
/// The packet size senders keep to unless configured otherwise (the C executor's limit).
pub const DEFAULT_SEND_PACKET_LEN: usize = 32768;
/// The largest packet the C executor (protocol 3.0) takes: its receive buffer is exactly this
/// long, and a longer packet never completes there (the server stalls until the link's idle
/// timeout, as measured against the C executor). A 3.0 connection never sends more, whatever is configured.
pub const LEGACY_MAX_PACKET_LEN: usize = 32768;
/// Most `NAME=value` strings accepted in one command packet.
pub const MAX_ENV_ENTRIES: usize = 1024;

/// Which wire layout a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// Protocol 4.0: `type | reserved | len | cid | xid`, EOF is `'X'`.
    #[default]
    V4,
    /// Protocol 3.0 of the C executor: `type | pad | cid | xid | len`, EOF is `'E'`,
    /// no monitor/procinfo/settle, interrupt without a signal name.
    Legacy3,
}

impl Dialect {
    /// The protocol version announced in hello packets.
    pub const fn version(self) -> (u8, u8) {
        match self {
            Dialect::V4 => (4, 0),
            Dialect::Legacy3 => (3, 0),
        }
    }

    /// The largest packet a peer of this dialect accepts: the 16-bit length's limit in
    /// 4.0, the C executor's receive buffer ([`LEGACY_MAX_PACKET_LEN`]) in 3.0.
    pub const fn max_packet_len(self) -> usize {
        match self {
            Dialect::V4 => MAX_PACKET_LEN,
            Dialect::Legacy3 => LEGACY_MAX_PACKET_LEN,
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.version();
        write!(f, "{major}.{minor}")
    }
}

/// Which side sent a packet. Only `P` needs it (query from the client, response from the
/// server), but fixing it per decoder keeps decoding unambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    Client,
    Server,
}

/// Tells from the first 8 bytes of a client's stream which dialect it speaks.
///
/// A 3.0 stream puts `len` in bytes 6..8; read as 4.0, bytes 2..4 would then be the cid,
/// which is 0 in a hello (`68 00 00 00 00 00 00 0c`) and so an impossible 4.0 length.
/// Rule: if the 4.0 length is below 8 but the 3.0 length is valid, it is 3.0; otherwise 4.0.
/// Returns `None` until 8 bytes are available.
pub fn detect_dialect(first: &[u8]) -> Option<Dialect> {
    let head: &[u8; HEADER_LEN] = first.get(..HEADER_LEN)?.try_into().ok()?;
    let v4 = Header::decode(Dialect::V4, head);
    let legacy = Header::decode(Dialect::Legacy3, head);
    if usize::from(v4.len) < HEADER_LEN && usize::from(legacy.len) >= HEADER_LEN {
        Some(Dialect::Legacy3)
    } else {
        Some(Dialect::V4)
    }
}
