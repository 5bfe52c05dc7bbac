//! The 8-byte packet header and the packet-type byte, in both dialects.

use bytes::BufMut;

use super::{Dialect, HEADER_LEN};

/// The kinds of packet the link protocol knows. The wire byte depends on the dialect
/// only for [`PacketType::Eof`] (`'X'` in 4.0, `'E'` in 3.0); monitor, procinfo and settle
/// do not exist in 3.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PacketType {
    Hello,
    Command,
    Inject,
    Extract,
    Quit,
    Interrupt,
    Monitor,
    Major,
    Minor,
    Timeout,
    Data,
    Eof,
    Keepalive,
    ProcInfo,
    Settle,
}

impl PacketType {
    /// Every packet type, in a fixed order.
    pub const ALL: [PacketType; 15] = [
        PacketType::Hello,
        PacketType::Command,
        PacketType::Inject,
        PacketType::Extract,
        PacketType::Quit,
        PacketType::Interrupt,
        PacketType::Monitor,
        PacketType::Major,
        PacketType::Minor,
        PacketType::Timeout,
        PacketType::Data,
        PacketType::Eof,
        PacketType::Keepalive,
        PacketType::ProcInfo,
        PacketType::Settle,
    ];

    /// The type byte on the wire.
    pub const fn code(self, dialect: Dialect) -> u8 {
        match self {
            PacketType::Hello => b'h',
            PacketType::Command => b'c',
            PacketType::Inject => b'i',
            PacketType::Extract => b'e',
            PacketType::Quit => b'q',
            PacketType::Interrupt => b'I',
            PacketType::Monitor => b'O',
            PacketType::Major => b'M',
            PacketType::Minor => b'm',
            PacketType::Timeout => b'T',
            PacketType::Data => b'D',
            PacketType::Eof => match dialect {
                Dialect::V4 => b'X',
                Dialect::Legacy3 => b'E',
            },
            PacketType::Keepalive => b'K',
            PacketType::ProcInfo => b'P',
            PacketType::Settle => b'S',
        }
    }

    /// The packet type for a wire byte, or `None` if the dialect has no such packet.
    pub fn from_code(code: u8, dialect: Dialect) -> Option<PacketType> {
        // A direct match rather than a search of `ALL`: this runs once per packet.
        let kind = match (code, dialect) {
            (b'h', _) => PacketType::Hello,
            (b'c', _) => PacketType::Command,
            (b'i', _) => PacketType::Inject,
            (b'e', _) => PacketType::Extract,
            (b'q', _) => PacketType::Quit,
            (b'I', _) => PacketType::Interrupt,
            (b'M', _) => PacketType::Major,
            (b'm', _) => PacketType::Minor,
            (b'T', _) => PacketType::Timeout,
            (b'D', _) => PacketType::Data,
            (b'X', Dialect::V4) | (b'E', Dialect::Legacy3) => PacketType::Eof,
            (b'K', _) => PacketType::Keepalive,
            (b'O', Dialect::V4) => PacketType::Monitor,
            (b'P', Dialect::V4) => PacketType::ProcInfo,
            (b'S', Dialect::V4) => PacketType::Settle,
            _ => return None,
        };
        Some(kind)
    }

    /// Whether the dialect has this packet at all.
    pub const fn exists_in(self, dialect: Dialect) -> bool {
        match dialect {
            Dialect::V4 => true,
            Dialect::Legacy3 => !matches!(
                self,
                PacketType::Monitor | PacketType::ProcInfo | PacketType::Settle
            ),
        }
    }

    /// A short human name, used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Hello => "hello",
            PacketType::Command => "command",
            PacketType::Inject => "inject",
            PacketType::Extract => "extract",
            PacketType::Quit => "quit",
            PacketType::Interrupt => "interrupt",
            PacketType::Monitor => "monitor",
            PacketType::Major => "major status",
            PacketType::Minor => "minor status",
            PacketType::Timeout => "timeout",
            PacketType::Data => "channel data",
            PacketType::Eof => "channel eof",
            PacketType::Keepalive => "keepalive",
            PacketType::ProcInfo => "procinfo",
            PacketType::Settle => "settle",
        }
    }
}

/// A decoded header. `kind` is the raw type byte so that unknown types can be reported
/// (and answered) with their cid and xid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The raw packet-type byte.
    pub kind: u8,
    /// Total packet length including this header.
    pub len: u16,
    /// Client (connection) id.
    pub cid: u16,
    /// Transaction id.
    pub xid: u16,
}

impl Header {
    /// Reads a header from exactly [`HEADER_LEN`] bytes.
    pub fn decode(dialect: Dialect, b: &[u8; HEADER_LEN]) -> Header {
        let [kind, _reserved, b2, b3, b4, b5, b6, b7] = *b;
        let w1 = u16::from_be_bytes([b2, b3]);
        let w2 = u16::from_be_bytes([b4, b5]);
        let w3 = u16::from_be_bytes([b6, b7]);
        match dialect {
            Dialect::V4 => Header {
                kind,
                len: w1,
                cid: w2,
                xid: w3,
            },
            Dialect::Legacy3 => Header {
                kind,
                cid: w1,
                xid: w2,
                len: w3,
            },
        }
    }

    /// Appends the header in the dialect's layout (reserved byte is always 0).
    pub fn encode(&self, dialect: Dialect, out: &mut impl BufMut) {
        out.put_u8(self.kind);
        out.put_u8(0);
        match dialect {
            Dialect::V4 => {
                out.put_u16(self.len);
                out.put_u16(self.cid);
                out.put_u16(self.xid);
            }
            Dialect::Legacy3 => {
                out.put_u16(self.cid);
                out.put_u16(self.xid);
                out.put_u16(self.len);
            }
        }
    }

    /// Payload length (`len - 8`), or `None` if `len` is shorter than the header.
    pub fn payload_len(&self) -> Option<usize> {
        usize::from(self.len).checked_sub(HEADER_LEN)
    }

    /// The type byte as text for messages: `'c'` or `0x00`.
    pub fn type_display(&self) -> String {
        if self.kind.is_ascii_graphic() {
            format!("'{}'", char::from(self.kind))
        } else {
            format!("0x{:02x}", self.kind)
        }
    }
}
