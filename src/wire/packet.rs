//! Typed packets: one enum variant per packet of the spec, with decode and encode.

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::Reader;
use super::{
    DecodeError, Dialect, EncodeError, HEADER_LEN, Header, MAX_ENV_ENTRIES, MAX_PACKET_LEN,
    MAX_PROCINFO_FIELDS, PacketType, PayloadError, ProcInfoField, Sender,
};

/// `h`: version and requested (client) or negotiated (server) keepalive in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub major: u8,
    pub minor: u8,
    /// Seconds of allowed silence: 0 = off, 0xFFFF = "server default".
    pub keepalive: u16,
}

/// `c`: run a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRequest {
    pub user: Bytes,
    pub command: Bytes,
    /// Seconds; 0 = the agent's default.
    pub timeout: u32,
    /// Only the least significant bit means "use a tty"; the raw word is kept so that
    /// a packet re-encodes byte for byte.
    pub request_tty: u32,
    /// Two reserved words, sent as 0 and kept as received.
    pub reserved: [u32; 2],
    /// `NAME=value` strings, in wire order.
    pub env: Vec<Bytes>,
}

impl CommandRequest {
    /// Whether the client asked for a pseudo-terminal.
    pub fn wants_tty(&self) -> bool {
        self.request_tty & 1 != 0
    }
}

/// One link packet, without its header fields (cid and xid travel beside it in a [`Frame`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Hello(Hello),
    Command(CommandRequest),
    Inject {
        user: Bytes,
        path: Bytes,
        mode: u32,
    },
    Extract {
        user: Bytes,
        path: Bytes,
    },
    Quit,
    /// Signal name (`"INT"`, `"SIGTERM"`, …; empty = KILL). Legacy 3.0 has no payload.
    Interrupt {
        signal: Bytes,
    },
    Monitor {
        source: Bytes,
    },
    Major(u32),
    Minor(u32),
    Timeout,
    Data {
        channel: u16,
        data: Bytes,
    },
    Eof {
        channel: u16,
    },
    Keepalive,
    Settle {
        seq: u32,
    },
    /// `P` from the client: bit *n* of `mask` asks for field type *n*.
    ProcInfoQuery {
        mask: u32,
    },
    /// `P` from the server: the fields, without the terminator.
    ProcInfoResponse {
        fields: Vec<ProcInfoField>,
    },
}

/// A packet with the header fields that identify its connection and transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub cid: u16,
    pub xid: u16,
    pub packet: Packet,
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Hello(_) => PacketType::Hello,
            Packet::Command(_) => PacketType::Command,
            Packet::Inject { .. } => PacketType::Inject,
            Packet::Extract { .. } => PacketType::Extract,
            Packet::Quit => PacketType::Quit,
            Packet::Interrupt { .. } => PacketType::Interrupt,
            Packet::Monitor { .. } => PacketType::Monitor,
            Packet::Major(_) => PacketType::Major,
            Packet::Minor(_) => PacketType::Minor,
            Packet::Timeout => PacketType::Timeout,
            Packet::Data { .. } => PacketType::Data,
            Packet::Eof { .. } => PacketType::Eof,
            Packet::Keepalive => PacketType::Keepalive,
            Packet::Settle { .. } => PacketType::Settle,
            Packet::ProcInfoQuery { .. } | Packet::ProcInfoResponse { .. } => PacketType::ProcInfo,
        }
    }

    /// Parses a payload whose header has already been read and checked.
    ///
    /// `sender` tells which side sent it: `P` is a query from the client and a response
    /// from the server.
    pub fn decode(
        dialect: Dialect,
        sender: Sender,
        header: &Header,
        payload: Bytes,
    ) -> Result<Packet, DecodeError> {
        let Some(kind) = PacketType::from_code(header.kind, dialect) else {
            return Err(DecodeError::UnknownType { header: *header });
        };
        decode_payload(kind, dialect, sender, payload).map_err(|error| DecodeError::Malformed {
            header: *header,
            error,
        })
    }

    /// Appends the whole packet (header and payload) to `out`.
    pub fn encode(
        &self,
        dialect: Dialect,
        cid: u16,
        xid: u16,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.check(dialect)?;
        let kind = self.packet_type();
        let len = self.encoded_len(dialect);
        let Some(len16) = u16::try_from(len).ok().filter(|_| len <= MAX_PACKET_LEN) else {
            return Err(EncodeError::TooLong {
                kind: kind.name(),
                len,
                max: MAX_PACKET_LEN,
            });
        };
        out.reserve(len);
        Header {
            kind: kind.code(dialect),
            len: len16,
            cid,
            xid,
        }
        .encode(dialect, out);
        self.encode_payload(dialect, out);
        Ok(())
    }

    /// Encodes into a fresh buffer; convenient for tests and one-off packets.
    pub fn to_bytes(&self, dialect: Dialect, cid: u16, xid: u16) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(dialect, cid, xid, &mut out)?;
        Ok(out.freeze())
    }

    /// Total encoded length (header included). May exceed 65535; `encode` refuses that.
    pub fn encoded_len(&self, dialect: Dialect) -> usize {
        let cstr = |b: &Bytes| b.len().saturating_add(1);
        let payload = match self {
            Packet::Hello(_) => 4,
            Packet::Command(c) => c
                .env
                .iter()
                .fold(cstr(&c.user).saturating_add(cstr(&c.command)), |a, e| {
                    a.saturating_add(cstr(e))
                })
                .saturating_add(16),
            Packet::Inject { user, path, .. } => {
                cstr(user).saturating_add(cstr(path)).saturating_add(4)
            }
            Packet::Extract { user, path } => cstr(user).saturating_add(cstr(path)),
            Packet::Interrupt { signal } => match dialect {
                Dialect::V4 => cstr(signal),
                Dialect::Legacy3 => 0,
            },
            Packet::Monitor { source } => cstr(source),
            Packet::Quit | Packet::Timeout | Packet::Keepalive => 0,
            Packet::Major(_)
            | Packet::Minor(_)
            | Packet::Settle { .. }
            | Packet::ProcInfoQuery { .. } => 4,
            Packet::Data { data, .. } => data.len().saturating_add(2),
            Packet::Eof { .. } => 2,
            Packet::ProcInfoResponse { fields } => fields.iter().fold(2usize, |a, f| {
                a.saturating_add(f.value.len()).saturating_add(2)
            }),
        };
        payload.saturating_add(HEADER_LEN)
    }

    /// Refuses what the dialect cannot express and strings that would be cut by a NUL.
    fn check(&self, dialect: Dialect) -> Result<(), EncodeError> {
        let kind = self.packet_type();
        if !kind.exists_in(dialect) {
            return Err(EncodeError::Unsupported {
                kind: kind.name(),
                dialect,
                why: "the packet type was added in 4.0",
            });
        }
        let no_nul = |field: &'static str, b: &Bytes| {
            if b.contains(&0) {
                Err(EncodeError::InteriorNul { field })
            } else {
                Ok(())
            }
        };
        match self {
            Packet::Command(c) => {
                no_nul("user", &c.user)?;
                no_nul("command", &c.command)?;
                c.env.iter().try_for_each(|e| no_nul("env", e))?;
            }
            Packet::Inject { user, path, .. } | Packet::Extract { user, path } => {
                no_nul("user", user)?;
                no_nul("filename", path)?;
            }
            Packet::Interrupt { signal } => {
                no_nul("signal", signal)?;
                if dialect == Dialect::Legacy3 && !signal.is_empty() {
                    return Err(EncodeError::Unsupported {
                        kind: kind.name(),
                        dialect,
                        why: "3.0 interrupts carry no signal name (the agent always sends KILL)",
                    });
                }
            }
            Packet::Monitor { source } => no_nul("source", source)?,
            Packet::ProcInfoResponse { fields } => {
                // The decoder accepts at most this many; refusing more here keeps every
                // encodable packet decodable.
                if let Some(extra) = fields.get(MAX_PROCINFO_FIELDS) {
                    return Err(EncodeError::BadProcInfo {
                        kind: extra.kind,
                        why: "more than 255 fields",
                    });
                }
                for f in fields {
                    if f.kind == 0 {
                        return Err(EncodeError::BadProcInfo {
                            kind: 0,
                            why: "type 0 is the terminator",
                        });
                    }
                    if f.value.len() > usize::from(u8::MAX) {
                        return Err(EncodeError::BadProcInfo {
                            kind: f.kind,
                            why: "value longer than 255 bytes",
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn encode_payload(&self, dialect: Dialect, out: &mut BytesMut) {
        fn cstr(out: &mut BytesMut, s: &Bytes) {
            out.put_slice(s);
            out.put_u8(0);
        }
        match self {
            Packet::Hello(h) => {
                out.put_u8(h.major);
                out.put_u8(h.minor);
                out.put_u16(h.keepalive);
            }
            Packet::Command(c) => {
                cstr(out, &c.user);
                cstr(out, &c.command);
                out.put_u32(c.timeout);
                out.put_u32(c.request_tty);
                out.put_u32(c.reserved[0]);
                out.put_u32(c.reserved[1]);
                for e in &c.env {
                    cstr(out, e);
                }
            }
            Packet::Inject { user, path, mode } => {
                cstr(out, user);
                cstr(out, path);
                out.put_u32(*mode);
            }
            Packet::Extract { user, path } => {
                cstr(out, user);
                cstr(out, path);
            }
            Packet::Interrupt { signal } => {
                if dialect == Dialect::V4 {
                    cstr(out, signal);
                }
            }
            Packet::Monitor { source } => cstr(out, source),
            Packet::Quit | Packet::Timeout | Packet::Keepalive => {}
            Packet::Major(v) | Packet::Minor(v) => out.put_u32(*v),
            Packet::Settle { seq } => out.put_u32(*seq),
            Packet::ProcInfoQuery { mask } => out.put_u32(*mask),
            Packet::Data { channel, data } => {
                out.put_u16(*channel);
                out.put_slice(data);
            }
            Packet::Eof { channel } => out.put_u16(*channel),
            Packet::ProcInfoResponse { fields } => {
                for f in fields {
                    out.put_u8(f.kind);
                    // Length checked in `check`.
                    out.put_u8(u8::try_from(f.value.len()).unwrap_or(u8::MAX));
                    out.put_slice(&f.value);
                }
                out.put_u8(0);
                out.put_u8(0);
            }
        }
    }
}

fn decode_payload(
    kind: PacketType,
    dialect: Dialect,
    sender: Sender,
    payload: Bytes,
) -> Result<Packet, PayloadError> {
    let mut r = Reader::new(payload);
    let packet = match kind {
        PacketType::Hello => Packet::Hello(Hello {
            major: r.u8("major")?,
            minor: r.u8("minor")?,
            keepalive: r.u16("keepalive")?,
        }),
        PacketType::Command => {
            let user = r.cstr("user")?;
            let command = r.cstr("command")?;
            let timeout = r.u32("timeout")?;
            let request_tty = r.u32("request_tty")?;
            let reserved = [r.u32("reserved1")?, r.u32("reserved2")?];
            let mut env = Vec::new();
            while r.remaining() > 0 {
                if env.len() >= MAX_ENV_ENTRIES {
                    return Err(PayloadError::TooMany {
                        field: "env",
                        max: MAX_ENV_ENTRIES,
                    });
                }
                env.push(r.cstr("env")?);
            }
            return Ok(Packet::Command(CommandRequest {
                user,
                command,
                timeout,
                request_tty,
                reserved,
                env,
            }));
        }
        PacketType::Inject => Packet::Inject {
            user: r.cstr("user")?,
            path: r.cstr("filename")?,
            mode: r.u32("mode")?,
        },
        PacketType::Extract => Packet::Extract {
            user: r.cstr("user")?,
            path: r.cstr("filename")?,
        },
        PacketType::Quit => Packet::Quit,
        PacketType::Interrupt => match dialect {
            Dialect::V4 => Packet::Interrupt {
                signal: r.cstr("signal")?,
            },
            // The C executor sends no payload; tolerate (and ignore) one.
            Dialect::Legacy3 => {
                let _ = r.rest();
                Packet::Interrupt {
                    signal: Bytes::new(),
                }
            }
        },
        PacketType::Monitor => Packet::Monitor {
            source: r.cstr("source")?,
        },
        PacketType::Major => Packet::Major(r.u32("status")?),
        PacketType::Minor => Packet::Minor(r.u32("status")?),
        PacketType::Timeout => Packet::Timeout,
        PacketType::Data => {
            let channel = r.u16("channel")?;
            return Ok(Packet::Data {
                channel,
                data: r.rest(),
            });
        }
        PacketType::Eof => Packet::Eof {
            channel: r.u16("channel")?,
        },
        PacketType::Keepalive => Packet::Keepalive,
        PacketType::Settle => Packet::Settle { seq: r.u32("seq")? },
        PacketType::ProcInfo => match sender {
            Sender::Client => Packet::ProcInfoQuery {
                mask: r.u32("mask")?,
            },
            Sender::Server => Packet::ProcInfoResponse {
                fields: super::procinfo::decode_tlvs(&mut r)?,
            },
        },
    };
    r.finish()?;
    Ok(packet)
}
