//! Incremental framing: bytes in any chunking in, whole typed packets out.
//!
//! Every rule about where a packet starts and ends lives here: [`decode_frame`] takes one
//! packet off a buffer, and [`Decoder`] owns the receive buffer, takes input one packet at
//! a time ([`Decoder::feed`]), tells the dialect from the first bytes
//! ([`Decoder::detecting`]) and, on device links, finds the stream again after line noise
//! (the `resync` module). Nothing outside this module touches the buffer.

use std::mem;

use bytes::{Buf, Bytes, BytesMut};

use super::resync::{Recent, Sync, reply_start};
use super::{
    DecodeError, Dialect, Frame, HEADER_LEN, Header, MAX_PACKET_LEN, Packet, PacketType, Sender,
    detect_dialect, hello_signature,
};

/// Receive buffer allocation granularity: decoded payloads are zero-copy slices of it.
const RX_ALLOC: usize = 128 * 1024;

/// Packets at least this long (header included) are taken out of the caller's buffer by
/// [`Decoder::feed_owned`] instead of being copied. Below it a payload is copied: a few
/// bytes of stdin kept in a queue must not pin the caller's whole receive buffer (with a
/// 256 KiB buffer a payload pins at most 16 times its own size, and only while bulk
/// data flows).
pub const OWNED_MIN_PACKET: usize = 16 * 1024;

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
/// **One packet at a time.** [`Decoder::feed`] takes only the bytes that complete the
/// packet at the front of the buffer (the rest of its header, then the rest of the packet),
/// so a machine that decodes after every `feed` never holds a decodable packet while it
/// refuses input: what it did not take is exactly what it reports as not consumed.
/// [`Decoder::push`] appends everything, for callers that bound their input themselves.
///
/// Framing errors are sticky: once the stream is known to be out of step, every later call
/// returns the same error (there is no way to find the next packet boundary) — except on a
/// device link ([`Decoder::enable_resync`]), where a new client's hello is where the stream
/// picks up again.
#[derive(Debug)]
pub struct Decoder {
    dialect: Dialect,
    /// The header layout is known: always, except for a [`Decoder::detecting`] decoder
    /// until the first 8 bytes arrived.
    known: bool,
    /// What a detecting decoder assumes when the first bytes are not a hello.
    fallback: Option<Dialect>,
    sender: Sender,
    buf: BytesMut,
    /// The decoder's own buffer, set aside while `buf` holds a packet taken whole out of
    /// the caller's buffer ([`Decoder::feed_owned`]); back in `buf` once that is decoded.
    parked: BytesMut,
    max_packet_len: usize,
    fatal: Option<DecodeError>,
    /// Device links: where the decoder stands relative to the peer's packet boundaries.
    pub(super) sync: Sync,
    /// Device links: the last bytes received (`None` = resynchronisation off).
    pub(super) recent: Option<Recent>,
}

impl Decoder {
    /// A decoder for packets sent by `sender` in `dialect`, accepting any valid length.
    pub fn new(dialect: Dialect, sender: Sender) -> Self {
        Decoder {
            dialect,
            known: true,
            fallback: None,
            sender,
            buf: BytesMut::new(),
            parked: BytesMut::new(),
            max_packet_len: MAX_PACKET_LEN,
            fatal: None,
            sync: Sync::InStep,
            recent: None,
        }
    }

    /// A decoder that learns the dialect from the stream's first 8 bytes (an agent does not
    /// know which dialect a client speaks): a hello says it; anything else is read in the
    /// [fallback](Self::set_fallback_dialect) dialect if there is one, else as
    /// [`detect_dialect`] guesses. Until then `feed` takes at most those 8 bytes.
    pub fn detecting(sender: Sender) -> Self {
        Decoder {
            known: false,
            ..Decoder::new(Dialect::default(), sender)
        }
    }

    /// Lowers the largest packet accepted (clamped to 8..=65535).
    pub fn with_max_packet_len(mut self, max: usize) -> Self {
        self.max_packet_len = max.clamp(HEADER_LEN, MAX_PACKET_LEN);
        self
    }

    /// The dialect in use (the default until a detecting decoder has seen 8 bytes).
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the dialect is known (see [`Decoder::detecting`]).
    pub fn dialect_known(&self) -> bool {
        self.known
    }

    /// Sets the dialect (and stops detecting it).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
        self.known = true;
    }

    /// The dialect a detecting decoder assumes when the first bytes are not a hello: that of
    /// the previous session on the same device port, whose client may simply go on.
    pub fn set_fallback_dialect(&mut self, dialect: Option<Dialect>) {
        self.fallback = dialect;
    }

    /// Appends received bytes, all of them (see the type's docs for [`Decoder::feed`]).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if let Some(recent) = &mut self.recent {
            recent.remember(data);
        }
    }

    /// Takes from `data` the bytes that complete the packet at the front of the buffer (a
    /// whole packet at once when the buffer is empty and `data` starts with a header), at
    /// least one; returns how many it took. While the dialect is being detected only the
    /// first 8 bytes are taken, and while a device link waits to tell a hello from a live
    /// sender's bytes, only as many as decide it (see `resync`).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        self.unpark();
        self.detect();
        let buffered = self.buf.len();
        let whole = match data.get(..HEADER_LEN) {
            Some(head) if buffered == 0 && self.known && self.sync == Sync::InStep => {
                <&[u8; HEADER_LEN]>::try_from(head)
                    .ok()
                    .map(|head| usize::from(Header::decode(self.dialect, head).len).max(HEADER_LEN))
            }
            _ => None,
        };
        let needed = match self.sync {
            Sync::InStep => self.bytes_needed(),
            other => other.bytes_deciding(buffered),
        };
        // Never 0: a call always makes progress.
        let want = whole.unwrap_or(needed).max(1);
        let take = want.min(data.len());
        let Some(chunk) = data.get(..take) else {
            return 0;
        };
        if self.buf.capacity().saturating_sub(self.buf.len()) < take {
            self.buf.reserve(take.max(RX_ALLOC));
        }
        self.push(chunk);
        take
    }

    /// [`Decoder::feed`] for a caller that hands over its buffer: takes the same bytes, and
    /// removes them from the front of `data`. A whole packet of at least
    /// [`OWNED_MIN_PACKET`] bytes at the front of `data` (with nothing buffered) is split
    /// off without copying, so its payload becomes a slice of the caller's storage; any
    /// other bytes are copied as by `feed` (small payloads must not pin the caller's
    /// buffer). Returns how many bytes were taken.
    pub fn feed_owned(&mut self, data: &mut BytesMut) -> usize {
        self.unpark();
        self.detect();
        if self.buf.is_empty()
            && self.known
            && self.sync == Sync::InStep
            && let Some(Ok(head)) = data.get(..HEADER_LEN).map(<&[u8; HEADER_LEN]>::try_from)
        {
            let len = usize::from(Header::decode(self.dialect, head).len);
            if (OWNED_MIN_PACKET..=self.max_packet_len).contains(&len) && data.len() >= len {
                let packet = data.split_to(len);
                if let Some(recent) = &mut self.recent {
                    recent.remember(&packet);
                }
                // `buf` is empty: only its spare capacity is set aside.
                self.parked = mem::replace(&mut self.buf, packet);
                return len;
            }
        }
        let n = self.feed(data);
        data.advance(n.min(data.len()));
        n
    }

    /// Puts the decoder's own buffer back once a packet taken from the caller is decoded.
    fn unpark(&mut self) {
        if self.buf.is_empty() && self.parked.capacity() > 0 {
            self.buf = mem::take(&mut self.parked);
        }
    }

    /// Bytes received but not yet returned as packets.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The memory the buffer holds (for callers that check their bounds).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity().saturating_add(self.parked.capacity())
    }

    /// Gives the buffer's storage back if it holds no bytes, so an idle connection does not
    /// keep the block sized for bulk data (the next `feed` takes a new one). Payloads
    /// already handed out keep their part of the old block alive until they are dropped.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// How many more bytes would complete the packet at the front of the buffer: the rest
    /// of the header, or the rest of the packet once the header is known.
    pub fn bytes_needed(&self) -> usize {
        let have = self.buf.len();
        let Some(Ok(head)) = self
            .buf
            .get(..HEADER_LEN)
            .map(<&[u8; HEADER_LEN]>::try_from)
        else {
            return HEADER_LEN.saturating_sub(have);
        };
        if !self.known {
            return 0;
        }
        let len = usize::from(Header::decode(self.dialect, head).len).max(HEADER_LEN);
        len.saturating_sub(have)
    }

    /// The next whole packet, `Ok(None)` if more bytes are needed (or, on a device link,
    /// while the decoder waits to learn where the stream goes on).
    ///
    /// A framing error on a device link is returned once and not kept: the decoder then
    /// skips to the next hello ([`Decoder::resynced`] says when it found one).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if !self.detect() || self.sync != Sync::InStep {
            return Ok(None);
        }
        let r = decode_frame(
            self.dialect,
            self.sender,
            &mut self.buf,
            self.max_packet_len,
        );
        self.unpark();
        if let Err(e) = &r
            && e.is_fatal()
        {
            if self.recent.is_some() {
                self.lose_step();
            } else {
                self.fatal = Some(e.clone());
            }
        }
        r
    }

    /// Before the hello reply, a client on a device link drops what cannot start that
    /// reply (stale output of a previous session, even from the middle of a packet): every
    /// buffered byte up to the first place where a hello reply or a refusal could begin
    /// (see [`super::reply_start`]). Bytes at the end that could still become one are kept.
    /// Returns how many bytes were dropped.
    pub fn skip_to_reply(&mut self) -> usize {
        let skip = reply_start(&self.buf, self.dialect);
        self.skip(skip);
        skip
    }

    /// Runs dialect detection if it is pending; returns whether the dialect is known.
    fn detect(&mut self) -> bool {
        if self.known {
            return true;
        }
        let Some(guess) = detect_dialect(&self.buf) else {
            return false;
        };
        let first = self.buf.get(..HEADER_LEN);
        let hello = [Dialect::V4, Dialect::Legacy3]
            .into_iter()
            .find(|&d| first == hello_signature(d).get(..HEADER_LEN));
        self.set_dialect(hello.or(self.fallback).unwrap_or(guess));
        true
    }

    /// Drops the first `n` buffered bytes and forgets a framing error.
    pub(super) fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.advance(n);
        self.fatal = None;
    }

    /// Replaces the buffered bytes with `bytes` and forgets a framing error.
    pub(super) fn restart(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        self.fatal = None;
    }

    /// The buffered bytes.
    pub(super) fn peek(&self) -> &[u8] {
        &self.buf
    }
}
