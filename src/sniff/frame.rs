//! Stream framing: `u32 big-endian length | message`. The length counts the message only.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DecodeError, EncodeError};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default largest message accepted or sent: the 16 MiB default output cap plus room for the
/// answer's own overhead (id, status, per-field length prefixes). A u32 prefix could announce
/// 4 GiB; no sane sniff message is that big, and the limit is what keeps a peer from making
/// us buffer it.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Appends `message` with its length prefix. Refuses a message over `max` (or over the u32
/// range) without writing anything.
pub fn encode_frame(message: &[u8], max: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = message.len();
    let prefix =
        u32::try_from(len)
            .ok()
            .filter(|_| len <= max)
            .ok_or(EncodeError::FrameTooLong {
                len,
                max: max.min(u32::MAX as usize),
            })?;
    out.reserve(len.saturating_add(LEN_PREFIX));
    out.put_u32(prefix);
    out.put_slice(message);
    Ok(())
}

/// Takes one whole frame off the front of `buf`, tokio-`Decoder` style.
///
/// `Ok(None)`: `buf` does not hold a whole frame yet (nothing consumed; room for the rest is
/// reserved only once the prefix passed the limit check). `Ok(Some(message))`: the message
/// without its prefix, a zero-copy slice of `buf`. `Err(FrameTooLong)`: nothing consumed;
/// the stream is out of step for good.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some(Ok(prefix)) = buf.get(..LEN_PREFIX).map(<[u8; LEN_PREFIX]>::try_from) else {
        return Ok(None);
    };
    let announced = u32::from_be_bytes(prefix);
    let len = usize::try_from(announced)
        .ok()
        .filter(|&l| l <= max)
        .ok_or(DecodeError::FrameTooLong {
            len: announced,
            max,
        })?;
    let total = len.saturating_add(LEN_PREFIX);
    if buf.len() < total {
        buf.reserve(total.saturating_sub(buf.len()));
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// An incremental frame decoder with its own buffer, for streams read in any chunking.
///
/// **One frame at a time.** [`FrameDecoder::feed`] takes only the bytes that complete the
/// frame at the front (the rest of its prefix, then the rest of its body), so the buffer
/// never holds more than one frame; [`FrameDecoder::push`] appends everything, for callers
/// that bound their input themselves. A refused length is sticky: every later call returns
/// the same error, as there is no way to find the next frame boundary.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
    fatal: Option<DecodeError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
            fatal: None,
        }
    }

    /// The largest message accepted.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes from `data` the bytes that complete the frame at the front (at least one);
    /// returns how many it took.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let take = self
            .bytes_needed()
            .clamp(1, data.len().max(1))
            .min(data.len());
        self.push(data.get(..take).unwrap_or_default());
        take
    }

    /// Bytes received but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes complete the frame at the front: the rest of the prefix, or the
    /// rest of the frame once the prefix is known (0 when a whole frame is buffered, or when
    /// the prefix is over the limit — [`FrameDecoder::next_frame`] then reports the error).
    pub fn bytes_needed(&self) -> usize {
        let have = self.buf.len();
        match self.buf.get(..LEN_PREFIX).map(<[u8; LEN_PREFIX]>::try_from) {
            Some(Ok(prefix)) => match usize::try_from(u32::from_be_bytes(prefix)) {
                Ok(len) if len <= self.max => len.saturating_add(LEN_PREFIX).saturating_sub(have),
                _ => 0,
            },
            _ => LEN_PREFIX.saturating_sub(have),
        }
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        decode_frame(&mut self.buf, self.max).inspect_err(|e| self.fatal = Some(e.clone()))
    }

    /// The sticky framing error, if the stream went out of step.
    pub fn error(&self) -> Option<&DecodeError> {
        self.fatal.as_ref()
    }
}

/// A machine that reads a framed stream through its own [`FrameDecoder`] and can refuse
/// input while its outputs are undrained. Both sniff machines feed bytes the same way.
pub(crate) trait FramedInput {
    fn decoder(&mut self) -> &mut FrameDecoder;
    /// False while the machine's output queues are over their bounds (backpressure).
    fn wants_input(&self) -> bool;
    /// One whole message, prefix stripped.
    fn on_message(&mut self, message: Bytes);
}

/// Feeds `data` to `m`: handles every whole frame while `m` wants input, and buffers at
/// most the rest of the current frame, so the decoder never holds more than one frame.
/// Returns the bytes consumed (fewer than `data.len()` only under backpressure); `Err` is the
/// fatal, sticky framing error.
pub(crate) fn feed(m: &mut impl FramedInput, data: &[u8]) -> Result<usize, DecodeError> {
    let mut used = 0usize;
    loop {
        while m.wants_input() {
            match m.decoder().next_frame()? {
                Some(msg) => m.on_message(msg),
                None => break,
            }
        }
        let rest = data.get(used..).unwrap_or_default();
        if rest.is_empty() || !m.wants_input() {
            return Ok(used);
        }
        used = used.saturating_add(m.decoder().feed(rest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prefix_and_message() {
        let mut out = BytesMut::new();
        encode_frame(b"\x00\x00\x00\x01N", 100, &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x00\x00\x05\x00\x00\x00\x01N");
        assert_eq!(
            encode_frame(&[0; 6], 5, &mut out),
            Err(EncodeError::FrameTooLong { len: 6, max: 5 })
        );
        assert_eq!(out.len(), 9, "a refused frame writes nothing");
    }

    #[test]
    fn decodes_any_chunking() {
        let mut wire = BytesMut::new();
        for m in [&b"\x00\x00\x00\x01N"[..], b"", b"\x00\x00\x00\x02Pabc"] {
            encode_frame(m, 100, &mut wire).unwrap();
        }
        for step in 1..=wire.len() {
            let mut d = FrameDecoder::new(100);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(m) = d.next_frame().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(&got[2][..], b"\x00\x00\x00\x02Pabc");
            assert!(got[1].is_empty());
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn too_long_is_refused_before_reserving_and_is_sticky() {
        let mut d = FrameDecoder::new(16);
        d.push(b"\xff\xff\xff\xff");
        assert_eq!(d.bytes_needed(), 0);
        let e = d.next_frame().unwrap_err();
        assert_eq!(
            e,
            DecodeError::FrameTooLong {
                len: u32::MAX,
                max: 16
            }
        );
        assert!(e.is_fatal());
        assert!(
            d.buf.capacity() < 1024,
            "nothing reserved for the announced length"
        );
        d.push(b"\x00\x00\x00\x05\x00\x00\x00\x01N");
        assert_eq!(d.next_frame().unwrap_err(), e);
        assert_eq!(d.error(), Some(&e));
    }

    #[test]
    fn bytes_needed_tracks_the_front_frame() {
        let mut d = FrameDecoder::new(16);
        assert_eq!(d.bytes_needed(), 4);
        d.push(b"\x00\x00");
        assert_eq!(d.bytes_needed(), 2);
        d.push(b"\x00\x05\x00");
        assert_eq!(d.bytes_needed(), 4);
        d.push(b"\x00\x00\x01N");
        assert_eq!(d.bytes_needed(), 0);
        assert_eq!(&d.next_frame().unwrap().unwrap()[..], b"\x00\x00\x00\x01N");
    }
}
