//! Finding a client's hello in a byte stream whose packet boundaries are lost.
//!
//! On a device link (serial line, virtio-serial port) a client can die in the middle of a
//! packet and the next client's hello then follows the unfinished bytes. The only packet a
//! new client sends before it hears from the agent is its hello, so the hello is the one
//! place where the stream can be picked up again. This module says where one begins, and
//! keeps the [`Decoder`]'s side of it: what it does with its buffer at a framing error or
//! at a silence inside a packet. *When* a silence is long enough is the link machine's
//! decision (`link::Limits::stale_partial_after`: it owns the timers; this module never
//! sees a clock).
//!
//! What is matched is the hello's header and its major version: the first 9 of its 12
//! bytes, which are fixed for a dialect (type `h`, cid 0, xid 0, length 12, major 4 or 3).
//! The minor version and the keepalive (the last 3 bytes) can be anything.

use bytes::{Bytes, BytesMut};

use super::{Decoder, Dialect, HEADER_LEN, Header, PacketType};

/// Length of a hello packet: the header and `major, minor, keepalive u16`.
pub const HELLO_LEN: usize = HEADER_LEN + 4;

/// How many leading bytes of a hello are fixed (see [`hello_signature`]).
pub const HELLO_SIGNATURE_LEN: usize = HEADER_LEN + 1;

/// The first [`HELLO_SIGNATURE_LEN`] bytes of a new client's hello in `dialect`:
/// `68 00 00 0c 00 00 00 00 04` in 4.0 and `68 00 00 00 00 00 00 0c 03` in 3.0 (cid 0,
/// xid 0, length 12, then the major version). Read in the other dialect's layout each has
/// length 0, so no byte string is a signature in both.
pub const fn hello_signature(dialect: Dialect) -> [u8; HELLO_SIGNATURE_LEN] {
    match dialect {
        Dialect::V4 => [b'h', 0, 0, 12, 0, 0, 0, 0, 4],
        Dialect::Legacy3 => [b'h', 0, 0, 0, 0, 0, 0, 12, 3],
    }
}

/// What a byte string holds at its start, as far as a hello is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloMatch {
    /// It starts with a hello signature in this dialect.
    Hello(Dialect),
    /// It is shorter than a signature and every byte of it fits one: more bytes decide.
    Prefix,
    /// It does not start with a hello.
    No,
}

/// Whether `bytes` starts with a new client's hello (see [`hello_signature`]).
pub fn match_hello(bytes: &[u8]) -> HelloMatch {
    let mut prefix = false;
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let sig = hello_signature(dialect);
        let n = bytes.len().min(sig.len());
        if bytes.get(..n) == sig.get(..n) {
            if n == sig.len() {
                return HelloMatch::Hello(dialect);
            }
            prefix = true;
        }
    }
    if prefix && !bytes.is_empty() {
        HelloMatch::Prefix
    } else {
        HelloMatch::No
    }
}

/// The first offset in `bytes` where a hello starts ([`HelloMatch::Hello`]) or, near the
/// end, may start ([`HelloMatch::Prefix`]), with what was found there.
pub fn find_hello(bytes: &[u8]) -> Option<(usize, HelloMatch)> {
    (0..bytes.len()).find_map(|at| match match_hello(bytes.get(at..)?) {
        HelloMatch::No => None,
        m => Some((at, m)),
    })
}

/// The last offset in `bytes` where a whole hello signature starts, with its dialect.
pub fn rfind_hello(bytes: &[u8]) -> Option<(usize, Dialect)> {
    (0..bytes.len())
        .rev()
        .find_map(|at| match match_hello(bytes.get(at..)?) {
            HelloMatch::Hello(d) => Some((at, d)),
            _ => None,
        })
}

/// Bytes of the received stream remembered after they were decoded (device links): a
/// hello whose first bytes completed a stale packet is found in them.
const RECENT: usize = 32;
/// Of those, how many may hold the start of a hello that reaches into the buffer.
const RECENT_BEFORE_BUFFER: usize = HELLO_LEN - 1;

/// Where a device link's decoder stands relative to the peer's packet boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sync {
    /// Packets are decoded as they complete.
    InStep,
    /// A silence fell after the first `at` buffered bytes, which are an unfinished packet:
    /// the bytes after the silence decide what it was. If they begin with a hello, it is
    /// debris of a sender that died mid-write; otherwise a live sender resumed. Decoding
    /// waits for that decision (the signature's 9 bytes, or the next silence).
    AfterSilence { at: usize },
    /// A framing error: the packet boundaries are lost. Bytes are skipped up to the next
    /// hello (`skipped` so far, of which the first `reread` had been decoded already).
    OutOfStep { skipped: usize, reread: usize },
}

impl Sync {
    /// Outside `InStep`: how many bytes `feed` takes with `buffered` bytes held — enough to tell
    /// a hello signature from anything else, no more (what is not taken stays the caller's,
    /// which is its backpressure, as for whole packets).
    pub(super) fn bytes_deciding(self, buffered: usize) -> usize {
        match self {
            Sync::InStep => 0,
            Sync::AfterSilence { at } => at
                .saturating_add(HELLO_SIGNATURE_LEN)
                .saturating_sub(buffered),
            Sync::OutOfStep { .. } => HELLO_SIGNATURE_LEN.saturating_sub(buffered),
        }
    }
}

/// The last bytes fed to a device link's decoder (`len` of them are valid, at the end).
#[derive(Clone, Debug)]
pub(super) struct Recent {
    bytes: [u8; RECENT],
    len: usize,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            bytes: [0; RECENT],
            len: 0,
        }
    }

    /// Appends `chunk`.
    pub(super) fn remember(&mut self, chunk: &[u8]) {
        let keep = chunk.len().min(RECENT);
        let tail = chunk
            .get(chunk.len().saturating_sub(keep)..)
            .unwrap_or_default();
        self.bytes.copy_within(keep.., 0);
        if let Some(dst) = self.bytes.get_mut(RECENT.saturating_sub(keep)..) {
            dst.copy_from_slice(tail);
        }
        self.len = self.len.saturating_add(keep).min(RECENT);
    }

    /// Up to `n` remembered bytes that come right before the last `buffered` ones (bytes
    /// already decoded), oldest first.
    fn before(&self, buffered: usize, n: usize) -> &[u8] {
        let before = self.len.saturating_sub(buffered).min(n);
        let end = RECENT.saturating_sub(buffered);
        self.bytes
            .get(end.saturating_sub(before)..end)
            .unwrap_or_default()
    }
}

/// A new client's hello found where a device link's packet boundaries were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resynced {
    /// The hello's dialect (a 3.0 client may follow a 4.0 one on the same port).
    pub dialect: Dialect,
    /// Bytes of line noise dropped in front of it.
    pub dropped: usize,
}

/// Where, in `bytes` received before the hello reply, such a reply or a refusal could
/// begin (type `h`, `M` or `m`, length 12, xid 0, any cid): the offset of the first such
/// place, `bytes.len()` if there is none. Bytes at the end that could still become one
/// count as such a place.
pub fn reply_start(bytes: &[u8], dialect: Dialect) -> usize {
    let header = |kind: PacketType, cid| {
        let mut b = BytesMut::with_capacity(HEADER_LEN);
        Header {
            kind: kind.code(dialect),
            len: HELLO_LEN as u16,
            cid,
            xid: 0,
        }
        .encode(dialect, &mut b);
        b
    };
    // Bytes that differ between two cids are the cid: any value matches there. (Hello and
    // status packets all have 4-byte payloads, hence length 12.)
    let patterns = [PacketType::Hello, PacketType::Major, PacketType::Minor]
        .map(|kind| (header(kind, 0), header(kind, 0xFFFF)));
    let fits = |window: &[u8]| {
        patterns.iter().any(|(a, b)| {
            window
                .iter()
                .zip(a.iter().zip(b.iter()))
                .all(|(&w, (&x, &y))| x != y || w == x)
        })
    };
    (0..bytes.len())
        .find(|&i| bytes.get(i..).is_some_and(fits))
        .unwrap_or(bytes.len())
}

/// The device-link side of the decoder: what happens to the buffer when the packet
/// boundaries may be lost. The link machine calls these at a silence (it owns the timer) and
/// after every input; they do nothing on a decoder without [`Decoder::enable_resync`].
impl Decoder {
    /// The peer is a client on a device link: a framing error skips to the next hello
    /// instead of ending the stream, and unfinished packets around a silence are checked
    /// for debris (see [`Decoder::silence`]). Set once, before any input.
    pub fn enable_resync(&mut self) {
        self.recent = Some(Recent::new());
    }

    /// Whether resynchronisation is on (see [`Decoder::enable_resync`]).
    pub fn resyncs(&self) -> bool {
        self.recent.is_some()
    }

    /// Whether the decoder decodes packets as they complete (not waiting to tell debris
    /// from a live sender, not skipping to a hello).
    pub fn in_step(&self) -> bool {
        self.sync == Sync::InStep
    }

    /// Whether the decoder, having taken all input, waits for the peer's next bytes: inside
    /// an unfinished packet, or for the bytes that decide what one was.
    pub fn waits_inside_packet(&self) -> bool {
        match self.sync {
            Sync::InStep => self.buffered() > 0 && self.bytes_needed() > 0,
            Sync::AfterSilence { .. } => true,
            Sync::OutOfStep { .. } => false,
        }
    }

    /// Settles a pending resynchronisation with the bytes now buffered: returns the hello
    /// found (the decoder then stands at it, in step) and the debris dropped before it.
    /// Call before decoding, after every input.
    pub fn resynced(&mut self) -> Option<Resynced> {
        match self.sync {
            Sync::InStep => None,
            Sync::AfterSilence { at } => {
                let after = self.peek().get(at..).unwrap_or_default();
                if after.is_empty() {
                    return None;
                }
                match match_hello(after) {
                    HelloMatch::Hello(dialect) => {
                        self.skip(at);
                        self.sync = Sync::InStep;
                        Some(Resynced {
                            dialect,
                            dropped: at,
                        })
                    }
                    HelloMatch::Prefix => None,
                    HelloMatch::No => {
                        self.sync = Sync::InStep;
                        None
                    }
                }
            }
            Sync::OutOfStep { skipped, reread } => {
                let buffered = self.buffered();
                match find_hello(self.peek()) {
                    Some((at, HelloMatch::Hello(dialect))) => {
                        self.skip(at);
                        self.sync = Sync::InStep;
                        let dropped = skipped.saturating_add(at).saturating_sub(reread);
                        Some(Resynced { dialect, dropped })
                    }
                    found => {
                        // Keep what may still become a hello, drop the rest.
                        let at = found.map_or(buffered, |(at, _)| at);
                        self.skip(at);
                        self.sync = Sync::OutOfStep {
                            skipped: skipped.saturating_add(at),
                            reread,
                        };
                        None
                    }
                }
            }
        }
    }

    /// A second silence while the decoder waited for the bytes after the first one to
    /// decide: they were the start of a hello's signature and then nothing, i.e. a live
    /// sender's last bytes (it now waits for an answer). Decoding resumes; returns whether
    /// it had been waiting.
    pub fn decide_live(&mut self) -> bool {
        if let Sync::AfterSilence { .. } = self.sync {
            self.sync = Sync::InStep;
            true
        } else {
            false
        }
    }

    /// The peer has been silent (long enough, by the link's clock) while the decoder waited
    /// inside a packet. If the unfinished packet's last bytes are a hello (whose first bytes
    /// may already have completed packets) — a new client that glued its hello to a dead
    /// one's debris and now waits for the reply — the decoder restarts at that hello and
    /// says so. Otherwise the bytes after the silence will decide (see `Sync`).
    pub fn silence(&mut self) -> Option<Resynced> {
        if self.recent.is_none() || self.sync != Sync::InStep {
            return None;
        }
        if let Some(found) = self.hello_before_silence() {
            return Some(found);
        }
        if self.waits_inside_packet() {
            self.sync = Sync::AfterSilence {
                at: self.buffered(),
            };
        }
        None
    }

    /// What of the received bytes belongs to the next session when the transport hangs
    /// up: from the last hello (or the start of one at the very end) among the buffered
    /// bytes, counting one whose first bytes were decoded as a stale packet. Empty when
    /// nothing is buffered (a hello decoded in step is the link machine's to judge).
    pub fn hello_onwards(&self) -> Bytes {
        if self.buffered() == 0 {
            return Bytes::new();
        }
        // (The decoded bytes in front are fewer than a hello: one found there reaches
        // into the buffer, i.e. it was not decoded in step.)
        let window = self.recent_and_buffered();
        let before = window.len().saturating_sub(self.buffered());
        let from = match rfind_hello(&window) {
            Some((at, _)) => Some(at),
            None => match find_hello(self.peek()) {
                Some((at, HelloMatch::Prefix)) => Some(before.saturating_add(at)),
                _ => None,
            },
        };
        from.and_then(|at| window.get(at..))
            .map(Bytes::copy_from_slice)
            .unwrap_or_default()
    }

    /// A framing error on a device link: resynchronise on the next hello. Its first bytes
    /// may already have been decoded (as the end of a stale packet): the search starts in
    /// them (not counted as dropped: they were decoded).
    pub(super) fn lose_step(&mut self) {
        let window = self.recent_and_buffered();
        let reread = window.len().saturating_sub(self.buffered());
        self.restart(&window);
        self.sync = Sync::OutOfStep { skipped: 0, reread };
    }

    /// See [`Decoder::silence`]: restarts the decoder at a hello that ends the unfinished
    /// packet; returns it and the buffered bytes dropped.
    fn hello_before_silence(&mut self) -> Option<Resynced> {
        let buffered = self.buffered();
        // Only inside an unfinished packet (a silence after whole packets is an idle
        // client), and never a hello where the decoder would read one itself.
        if buffered == 0 || buffered == HELLO_LEN || self.bytes_needed() == 0 {
            return None;
        }
        let window = self.recent_and_buffered();
        let hello = window.get(window.len().checked_sub(HELLO_LEN)?..)?;
        let HelloMatch::Hello(dialect) = match_hello(hello) else {
            return None;
        };
        let dropped = buffered.saturating_sub(HELLO_LEN);
        self.restart(hello);
        Some(Resynced { dialect, dropped })
    }

    /// The buffered bytes with up to [`RECENT_BEFORE_BUFFER`] decoded bytes before them:
    /// where a hello that started inside an already decoded (stale) packet is found.
    fn recent_and_buffered(&self) -> Vec<u8> {
        let mut v = self
            .recent
            .as_ref()
            .map(|r| r.before(self.buffered(), RECENT_BEFORE_BUFFER).to_vec())
            .unwrap_or_default();
        v.extend_from_slice(self.peek());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Hello, Packet};

    #[test]
    fn signatures_are_the_start_of_encoded_hellos() {
        for dialect in [Dialect::V4, Dialect::Legacy3] {
            let (major, minor) = dialect.version();
            for (minor, keepalive) in [(minor, 0xFFFF), (7, 0), (0, 60)] {
                let bytes = Packet::Hello(Hello {
                    major,
                    minor,
                    keepalive,
                })
                .to_bytes(dialect, 0, 0)
                .unwrap();
                assert_eq!(bytes.len(), HELLO_LEN);
                assert_eq!(bytes[..HELLO_SIGNATURE_LEN], hello_signature(dialect));
                assert_eq!(match_hello(&bytes), HelloMatch::Hello(dialect));
            }
        }
    }

    #[test]
    fn prefixes_and_mismatches() {
        assert_eq!(match_hello(b""), HelloMatch::No);
        assert_eq!(match_hello(b"h"), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 12]), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 0, 0]), HelloMatch::Prefix);
        assert_eq!(match_hello(&[b'h', 0, 0, 13]), HelloMatch::No);
        assert_eq!(match_hello(b"D"), HelloMatch::No);
        // Another major version in a hello header is not a new client of this protocol.
        let mut v5 = hello_signature(Dialect::V4);
        v5[8] = 5;
        assert_eq!(match_hello(&v5), HelloMatch::No);
        let mut cid = hello_signature(Dialect::Legacy3);
        cid[3] = 1;
        assert_eq!(match_hello(&cid), HelloMatch::No);
    }

    #[test]
    fn finds_the_first_and_the_last() {
        let v4 = hello_signature(Dialect::V4);
        let v3 = hello_signature(Dialect::Legacy3);
        let mut bytes = b"junk".to_vec();
        bytes.extend_from_slice(&v3);
        bytes.extend_from_slice(b"xyz");
        bytes.extend_from_slice(&v4);
        bytes.extend_from_slice(&[0, 0xFF, 0xFF, b'h', 0]);
        assert_eq!(
            find_hello(&bytes),
            Some((4, HelloMatch::Hello(Dialect::Legacy3)))
        );
        assert_eq!(rfind_hello(&bytes), Some((16, Dialect::V4)));
        let tail = bytes.len() - 2;
        assert_eq!(
            find_hello(&bytes[17..]),
            Some((tail - 17, HelloMatch::Prefix))
        );
        assert_eq!(find_hello(b"no hello here"), None);
        assert_eq!(rfind_hello(&v4[..8]), None);
    }
}
