//! The decoder check shared by the fuzz targets (`fuzz_targets/decode_*.rs`) and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpus on stable Rust.
//!
//! Bytes go into a [`Decoder`] in chunks chosen by the input. For every frame that decodes:
//! it re-encodes, the encoding decodes to the identical frame, and the encoding equals the
//! bytes it came from except for the decoder's documented leniencies. Errors must be the
//! typed ones: framing errors are fatal, sticky and consume nothing; a bad packet is skipped
//! whole. The decoder never holds more than it was given. The same stream fed through
//! `Decoder::feed_owned` (the caller's buffer, large packets taken without a copy) gives
//! the same frames and errors. Any violation panics.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use tuppence::wire::{
    DecodeError, Decoder, Dialect, Frame, HEADER_LEN, MAX_PACKET_LEN, Packet, Sender, decode_frame,
};

/// One case. As `arbitrary` reads it: `from_server` (1 byte, low bit), `mode` (1 byte),
/// `seed` (4 bytes, little-endian), then everything left is the byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct Input<'a> {
    /// Whose packets the stream holds (decides how `P` is read).
    pub from_server: bool,
    /// Bits 0–1: chunking (whole, 1 byte, random 1..=16, random 1..=4096).
    /// Bits 2–3: the decoder's length limit (65535, 32768, 1024, 64).
    pub mode: u8,
    /// Seed of the chunk sizes.
    pub seed: u32,
    pub stream: &'a [u8],
}

impl Input<'_> {
    /// The file a fuzzer would read as this input.
    #[allow(dead_code)] // used by the corpus generator only
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.from_server), self.mode];
        v.extend_from_slice(&self.seed.to_le_bytes());
        v.extend_from_slice(self.stream);
        v
    }

    fn sender(&self) -> Sender {
        if self.from_server {
            Sender::Server
        } else {
            Sender::Client
        }
    }

    fn max_packet_len(&self) -> usize {
        match (self.mode >> 2) & 3 {
            0 => MAX_PACKET_LEN,
            1 => 32768,
            2 => 1024,
            _ => 64,
        }
    }
}

/// What a run saw, so callers can tell an empty run from a useful one.
#[derive(Debug, Default)]
pub struct Outcome {
    pub frames: usize,
    pub rejected_packets: usize,
    pub fatal: Option<DecodeError>,
}

/// xorshift32: deterministic chunk sizes from the input's seed.
struct Chunker {
    state: u32,
    mode: u8,
}

impl Chunker {
    fn next_len(&mut self, left: usize) -> usize {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let n = match self.mode & 3 {
            0 => left,
            1 => 1,
            2 => 1 + (x % 16) as usize,
            _ => 1 + (x % 4096) as usize,
        };
        n.min(left)
    }
}

pub fn check(dialect: Dialect, input: &Input<'_>) -> Outcome {
    let sender = input.sender();
    let max = input.max_packet_len();
    let mut dec = Decoder::new(dialect, sender).with_max_packet_len(max);
    let mut chunker = Chunker {
        state: (input.seed ^ 0x9e37_79b9).max(1),
        mode: input.mode,
    };
    let mut out = Outcome::default();
    let mut seen: Vec<Result<Frame, DecodeError>> = Vec::new();
    let stream = input.stream;
    let mut pushed = 0usize;
    let mut consumed = 0usize;

    while pushed < stream.len() && out.fatal.is_none() {
        let n = chunker.next_len(stream.len() - pushed);
        dec.push(&stream[pushed..pushed + n]);
        pushed += n;
        loop {
            let before = dec.buffered();
            assert_eq!(consumed + before, pushed, "bytes lost or invented");
            match dec.next_frame() {
                Ok(None) => {
                    assert_eq!(dec.buffered(), before, "Ok(None) consumed bytes");
                    assert!(dec.bytes_needed() > 0, "Ok(None) but nothing needed");
                    break;
                }
                Ok(Some(frame)) => {
                    let used = before - dec.buffered();
                    assert!(
                        (HEADER_LEN..=max).contains(&used),
                        "a frame of {used} bytes with limit {max}"
                    );
                    let original = &stream[consumed..consumed + used];
                    check_reencoding(dialect, sender, original, &frame);
                    consumed += used;
                    out.frames += 1;
                    seen.push(Ok(frame));
                }
                Err(e) if e.is_fatal() => {
                    assert_eq!(dec.buffered(), before, "a framing error consumed bytes");
                    assert!(e.header().is_none());
                    assert_eq!(dec.next_frame(), Err(e.clone()), "framing error not sticky");
                    seen.push(Err(e.clone()));
                    out.fatal = Some(e);
                    break;
                }
                Err(e) => {
                    let header = *e
                        .header()
                        .unwrap_or_else(|| panic!("packet error without header: {e}"));
                    let used = before - dec.buffered();
                    assert_eq!(
                        used,
                        usize::from(header.len),
                        "bad packet not skipped whole"
                    );
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("cid {}, xid {}", header.cid, header.xid)),
                        "{msg}"
                    );
                    consumed += used;
                    out.rejected_packets += 1;
                    seen.push(Err(e));
                }
            }
        }
        assert!(dec.buffered() <= pushed);
        // The buffer holds input, plus room reserved for at most one packet.
        assert!(
            dec.buffer_capacity() <= 2 * pushed + 2 * (MAX_PACKET_LEN + 1),
            "capacity {} after {pushed} bytes",
            dec.buffer_capacity()
        );
    }
    check_owned(dialect, input, &seen);
    out
}

/// Feeds the stream through `feed_owned`, in the same chunks, from a buffer the caller
/// keeps appending to (as a runtime's receive buffer); the frames and errors must be those
/// of the `push` run.
fn check_owned(dialect: Dialect, input: &Input<'_>, expected: &[Result<Frame, DecodeError>]) {
    let max = input.max_packet_len();
    let mut dec = Decoder::new(dialect, input.sender()).with_max_packet_len(max);
    let mut chunker = Chunker {
        state: (input.seed ^ 0x9e37_79b9).max(1),
        mode: input.mode,
    };
    let stream = input.stream;
    let mut pending = BytesMut::new();
    let mut pushed = 0usize;
    let mut seen = Vec::new();
    'outer: while pushed < stream.len() {
        let n = chunker.next_len(stream.len() - pushed);
        pending.extend_from_slice(&stream[pushed..pushed + n]);
        pushed += n;
        while !pending.is_empty() {
            let before = pending.len();
            let took = dec.feed_owned(&mut pending);
            assert!(took > 0, "feed_owned took nothing");
            assert_eq!(before - pending.len(), took, "feed_owned miscounted");
            loop {
                match dec.next_frame() {
                    Ok(None) => break,
                    Ok(Some(f)) => seen.push(Ok(f)),
                    Err(e) if e.is_fatal() => {
                        seen.push(Err(e));
                        break 'outer;
                    }
                    Err(e) => seen.push(Err(e)),
                }
            }
        }
    }
    assert_eq!(seen, expected, "feed_owned decoded differently from push");
}

fn check_reencoding(dialect: Dialect, sender: Sender, original: &[u8], frame: &Frame) {
    let again = frame
        .packet
        .to_bytes(dialect, frame.cid, frame.xid)
        .unwrap_or_else(|e| panic!("decoded {frame:?} does not re-encode: {e}"));
    let mut buf = BytesMut::from(&again[..]);
    let back = decode_frame(dialect, sender, &mut buf, MAX_PACKET_LEN)
        .unwrap_or_else(|e| panic!("re-encoded {frame:?} does not decode: {e}"));
    assert_eq!(back.as_ref(), Some(frame), "re-encoding changed the frame");
    assert!(buf.is_empty(), "re-encoding left {} bytes", buf.len());
    assert_canonical(dialect, original, &again, &frame.packet);
}

/// The re-encoding equals the original bytes, except where the decoder accepts something
/// the encoder never writes:
/// * a non-zero reserved byte (byte 1), which is ignored;
/// * a payload on a 3.0 interrupt, which is dropped;
/// * a non-zero length byte on the procinfo terminator TLV (`00 xx` at the very end).
fn assert_canonical(dialect: Dialect, original: &[u8], again: &[u8], packet: &Packet) {
    let mut norm = original.to_vec();
    norm[1] = 0;
    if norm == again {
        return;
    }
    match packet {
        Packet::Interrupt { signal } if dialect == Dialect::Legacy3 => {
            assert!(signal.is_empty());
            assert_eq!(again.len(), HEADER_LEN);
            assert!(norm.len() > HEADER_LEN);
        }
        Packet::ProcInfoResponse { .. } => {
            let n = norm.len();
            assert_eq!(n, again.len(), "procinfo re-encoded to another length");
            assert_eq!(
                norm[..n - 1],
                again[..n - 1],
                "procinfo re-encoded differently"
            );
            assert_eq!(norm[n - 2], 0, "the difference is not in the terminator");
        }
        _ => panic!(
            "{packet:?} re-encoded to other bytes:\n  original {original:02x?}\n  again    {again:02x?}"
        ),
    }
}
