//! Incremental framing: bytes in any chunking in, whole typed packets out.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    DecodeError, Dialect, Frame, HEADER_LEN, Header, MAX_PACKET_LEN, Packet, PacketType, Sender,
};

/// Takes one whole packet off the front of `buf`, tokio-`Decoder` style.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is consumed).
/// The payload of the returned packet is a zero-copy slice of `buf`'s storage.
/// On `UnknownType`/`Malformed` the packet *has* been consumed; framing errors consume nothing.
//
// Performance: keepalives (and quit, timeout) are header-only and the most frequent small
// packets. They take an inlined fast path that builds the frame directly in the caller and
// advances the buffer without splitting it (a split costs two atomic reference-count
// updates, the bulk of a header-only decode). Everything else goes to `decode_general`.
#[inline(always)]
pub fn decode_frame(
    dialect: Dialect,
    sender: Sender,
    buf: &mut BytesMut,
    max_packet_len: usize,
) -> Result<Option<Frame>, DecodeError> {
    let Some(Ok(head)) = buf.get(..HEADER_LEN).map(<&[u8; HEADER_LEN]>::try_from) else {
        return Ok(None);
    };
    let header = Header::decode(dialect, head);
    if usize::from(header.len) != HEADER_LEN || max_packet_len < HEADER_LEN {
        return decode_general(dialect, sender, buf, max_packet_len, header);
    }
    let kind = PacketType::from_code(header.kind, dialect);
    if !matches!(
        kind,
        Some(PacketType::Keepalive | PacketType::Quit | PacketType::Timeout)
    ) {
        return decode_general(dialect, sender, buf, max_packet_len, header);
    }
    buf.advance(HEADER_LEN);
    let (cid, xid) = (header.cid, header.xid);
    // One return per variant: a `Packet` value chosen by a `match` and then moved into the
    // frame makes the compiler copy the whole (largely uninitialised) enum.
    match kind {
        Some(PacketType::Keepalive) => Ok(Some(Frame {
            cid,
            xid,
            packet: Packet::Keepalive,
        })),
        Some(PacketType::Quit) => Ok(Some(Frame {
            cid,
            xid,
            packet: Packet::Quit,
        })),
        // Only `Timeout` is left (checked above).
        _ => Ok(Some(Frame {
            cid,
            xid,
            packet: Packet::Timeout,
        })),
    }
}

/// [`decode_frame`] after the header has been read from `buf`'s first 8 bytes.
#[inline(never)]
fn decode_general(
    dialect: Dialect,
    sender: Sender,
    buf: &mut BytesMut,
    max_packet_len: usize,
    header: Header,
) -> Result<Option<Frame>, DecodeError> {
    let len = usize::from(header.len);
    if len < HEADER_LEN {
        return Err(DecodeError::LengthTooShort { len: header.len });
    }
    if len > max_packet_len {
        return Err(DecodeError::LengthTooLong {
            len: header.len,
            max: max_packet_len,
        });
    }
    if buf.len() < len {
        buf.reserve(len.saturating_sub(buf.len()));
        return Ok(None);
    }
    let payload = if len == HEADER_LEN {
        buf.advance(HEADER_LEN);
        Bytes::new()
    } else {
        let mut packet = buf.split_to(len);
        packet.advance(HEADER_LEN);
        packet.freeze()
    };
    let packet = Packet::decode(dialect, sender, &header, payload)?;
    Ok(Some(Frame {
        cid: header.cid,
        xid: header.xid,
        packet,
    }))
}

/// A packet decoder with its own buffer, for byte streams read in arbitrary pieces.
///
/// Framing errors are sticky: once the stream is known to be out of step, every later call
/// returns the same error (there is no way to find the next packet boundary).
#[derive(Debug)]
pub struct Decoder {
    dialect: Dialect,
    sender: Sender,
    buf: BytesMut,
    max_packet_len: usize,
    fatal: Option<DecodeError>,
}

impl Decoder {
    /// A decoder for packets sent by `sender` in `dialect`, accepting any valid length.
    pub fn new(dialect: Dialect, sender: Sender) -> Self {
        Decoder {
            dialect,
            sender,
            buf: BytesMut::new(),
            max_packet_len: MAX_PACKET_LEN,
            fatal: None,
        }
    }

    /// Lowers the largest packet accepted (clamped to 8..=65535).
    pub fn with_max_packet_len(mut self, max: usize) -> Self {
        self.max_packet_len = max.clamp(HEADER_LEN, MAX_PACKET_LEN);
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Switches dialect, e.g. after [`super::detect_dialect`] looked at the first bytes.
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The internal buffer, so a runtime can read from a socket straight into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as packets.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The bytes already buffered (for dialect detection).
    pub fn peek(&self) -> &[u8] {
        &self.buf
    }

    /// How many more bytes would complete the packet at the front of the buffer: the rest
    /// of the header, or the rest of the packet once the header is known. Callers that
    /// must bound their buffering push at most this many bytes before decoding again.
    pub fn bytes_needed(&self) -> usize {
        let have = self.buf.len();
        let Some(Ok(head)) = self
            .buf
            .get(..HEADER_LEN)
            .map(<&[u8; HEADER_LEN]>::try_from)
        else {
            return HEADER_LEN.saturating_sub(have);
        };
        let len = usize::from(Header::decode(self.dialect, head).len).max(HEADER_LEN);
        len.saturating_sub(have)
    }

    /// Drops the first `n` buffered bytes and forgets a framing error: for a caller that
    /// found where the stream picks up again (e.g. a client's hello after line noise on a
    /// device link, see [`super::find_hello`]).
    pub fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.advance(n);
        self.fatal = None;
    }

    /// Replaces the buffered bytes with `bytes` and forgets a framing error: for a caller
    /// that found the stream's next packet start in bytes it had already decoded (a hello
    /// whose first bytes completed a stale packet).
    pub fn restart(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        self.fatal = None;
    }

    /// The next whole packet, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        let r = decode_frame(
            self.dialect,
            self.sender,
            &mut self.buf,
            self.max_packet_len,
        );
        if let Err(e) = &r
            && e.is_fatal()
        {
            self.fatal = Some(e.clone());
        }
        r
    }
}
