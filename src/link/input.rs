//! The input loop both machines share: take bytes one packet at a time, decode while the
//! event queue has room, and on a device link watch the silences inside a packet (the
//! decoder decides what the bytes were; this module owns the clock side of it).

use std::time::Instant;

use bytes::BytesMut;

use super::core::Core;
use super::stats::count;
use super::{LinkError, Violation};
use crate::wire::{DecodeError, Dialect, Frame, Resynced};

/// What the shared input loop needs from a role (client or server).
pub(crate) trait Input {
    fn core(&mut self) -> &mut Core;
    /// Whether the event queue can take more.
    fn has_room(&self) -> bool;
    /// Called before decoding (the client skips stale bytes before its hello reply here).
    fn prepare(&mut self) {}
    fn on_frame(&mut self, frame: Frame);
    /// A packet that did not decode; the stream continues.
    fn on_bad_packet(&mut self, error: DecodeError);
    /// Something the peer sent was dropped (reported as an event and counted).
    fn on_violation(&mut self, violation: Violation);
    /// The stream cannot continue.
    fn on_fatal(&mut self, error: LinkError);
    /// On a device link the decoder found a client's hello in `dialect` where the packet
    /// boundaries were lost (debris before it is already dropped and reported); the hello
    /// is decoded next.
    fn on_resync(&mut self, dialect: Dialect) {
        let _ = dialect;
    }
}

/// Reports a resynchronisation on a hello: the debris dropped before it, then the role's
/// own reaction.
fn resynced<M: Input>(m: &mut M, found: Resynced) {
    let stats = &mut m.core().stats;
    count(&mut stats.stale_partials_dropped, 1);
    count(&mut stats.stale_bytes_dropped, found.dropped);
    m.on_violation(Violation::StalePartial {
        bytes: found.dropped,
    });
    m.on_resync(found.dialect);
}

/// Where the input loop takes its bytes from: the caller's slice (copied), or the
/// caller's buffer (large packets split off it without a copy, see
/// `wire::Decoder::feed_owned`; what is taken is removed from its front).
enum Source<'a> {
    Slice { data: &'a [u8], consumed: usize },
    Owned(&'a mut BytesMut),
}

impl Source<'_> {
    fn rest_is_empty(&self) -> bool {
        match self {
            Source::Slice { data, consumed } => data.len() <= *consumed,
            Source::Owned(buf) => buf.is_empty(),
        }
    }

    /// Feeds the decoder from the front of what is left; returns the bytes taken.
    fn feed(&mut self, decoder: &mut crate::wire::Decoder) -> usize {
        match self {
            Source::Slice { data, consumed } => {
                let n = decoder.feed(data.get(*consumed..).unwrap_or_default());
                *consumed = consumed.saturating_add(n);
                n
            }
            Source::Owned(buf) => decoder.feed_owned(buf),
        }
    }
}

/// The input loop of both machines: decode what is buffered while the event queue has
/// room, then take more bytes (one packet at a time, so what is consumed is exactly what
/// was decoded or is needed to complete the next packet).
pub(crate) fn handle_bytes<M: Input>(
    m: &mut M,
    now: Instant,
    data: &[u8],
) -> Result<usize, LinkError> {
    handle(m, now, Source::Slice { data, consumed: 0 })
}

/// [`handle_bytes`] on the caller's buffer: the bytes consumed are removed from its front,
/// and large data payloads become slices of its storage instead of copies.
pub(crate) fn handle_buf<M: Input>(
    m: &mut M,
    now: Instant,
    buf: &mut BytesMut,
) -> Result<usize, LinkError> {
    handle(m, now, Source::Owned(buf))
}

fn handle<M: Input>(m: &mut M, now: Instant, mut src: Source<'_>) -> Result<usize, LinkError> {
    if let Some(e) = &m.core().error {
        return Err(e.clone());
    }
    m.core().tick(now);
    let offered = !src.rest_is_empty();
    if offered {
        // A silence may have ended with these bytes without the timer having fired.
        at_silence(m);
    }
    let consumed = feed_and_decode(m, &mut src)?;
    if offered {
        // Everything offered was taken and the machine waits for the peer (inside a
        // packet): silence from now on is the peer's. (When it pushed back, the bytes it
        // left are already here: no silence can be measured.)
        let all = src.rest_is_empty();
        let core = m.core();
        let waiting = all && core.decoder.waits_inside_packet();
        core.partial_since = waiting.then_some(core.now());
    }
    Ok(consumed)
}

/// Timers of the shared input path: the silence check of a device link. Call from
/// `handle_timeout` after `tick`.
pub(crate) fn handle_timeout<M: Input>(m: &mut M) {
    if m.core().error.is_some() {
        return;
    }
    if at_silence(m) {
        let _ = feed_and_decode(
            m,
            &mut Source::Slice {
                data: &[],
                consumed: 0,
            },
        );
    }
}

/// Device links: the peer has been silent for `stale_partial_after` while the machine
/// waited inside a packet. The decoder decides what the bytes before the silence were, and
/// arms the check of the bytes after it (see `wire::Decoder::silence`). Returns whether it
/// changed anything.
fn at_silence<M: Input>(m: &mut M) -> bool {
    let core = m.core();
    if core.silence_deadline().is_none_or(|t| core.now() < t) {
        return false;
    }
    core.partial_since = None;
    if core.decoder.decide_live() {
        let _ = feed_and_decode(
            m,
            &mut Source::Slice {
                data: &[],
                consumed: 0,
            },
        );
    }
    if let Some(found) = m.core().decoder.silence() {
        resynced(m, found);
    }
    true
}

fn feed_and_decode<M: Input>(m: &mut M, src: &mut Source<'_>) -> Result<usize, LinkError> {
    let mut consumed = 0usize;
    loop {
        if let Some(found) = m.core().decoder.resynced() {
            resynced(m, found);
        }
        m.prepare();
        while m.has_room() && m.core().error.is_none() {
            match m.core().next_frame() {
                Ok(Some(frame)) => m.on_frame(frame),
                Ok(None) => break,
                Err(e) if e.is_fatal() && m.core().decoder.resyncs() => {
                    // The decoder now skips to the next hello.
                    m.on_bad_packet(e);
                    if let Some(found) = m.core().decoder.resynced() {
                        resynced(m, found);
                    }
                }
                Err(e) if e.is_fatal() => m.on_fatal(LinkError::Framing(e)),
                Err(e) => m.on_bad_packet(e),
            }
        }
        if let Some(e) = &m.core().error {
            return Err(e.clone());
        }
        if src.rest_is_empty() || !m.has_room() {
            return Ok(consumed);
        }
        let core = m.core();
        let n = src.feed(&mut core.decoder);
        count(&mut core.stats.bytes_received, n);
        consumed = consumed.saturating_add(n);
    }
}
