//! The one surface an I/O loop drives: [`Machine`].

use std::fmt;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use crate::Transmit;

/// A sans-IO protocol machine as an I/O loop sees it: bytes and time in, bytes and
/// deadlines out. [`link::Client`](crate::link::Client), [`link::Server`](crate::link::Server),
/// [`sniff::Agent`](crate::sniff::Agent) and [`sniff::Requester`](crate::sniff::Requester)
/// implement it, so every runtime adapter drives any of them with one loop and declares none
/// of this again.
///
/// What is specific to a machine — its intents (`Client::run`, `Server::output`, …), its
/// events (`poll_event`, `sniff::Agent::poll_action`) — stays on the machine: the loop
/// hands those to the application.
///
/// Method groups, as quinn-proto documents them: inputs (`handle_*`), outputs (`poll_*`,
/// to be drained after every input), getters. The machine never reads a clock: every
/// time-dependent call takes `now`, and time never goes backwards inside a machine,
/// whatever the caller passes.
pub trait Machine {
    /// Why the machine cannot go on (sticky: once set, every input returns it).
    type Error: Clone + fmt::Debug + fmt::Display;

    // ---- inputs ----

    /// Feeds bytes read from the transport, in any chunking; returns how many were
    /// consumed. Fewer than `data.len()` means backpressure: drain the machine's events
    /// (and let the transport take its output), then offer the rest again.
    fn handle_bytes(&mut self, now: Instant, data: &[u8]) -> Result<usize, Self::Error>;

    /// [`handle_bytes`](Self::handle_bytes) for a loop that reads into a `BytesMut`: the
    /// bytes consumed are removed from the front of `buf` (what is left is offered again,
    /// as with `handle_bytes`), and a machine may keep large parts of it without a copy
    /// (the link machines take data payloads of at least
    /// [`wire::OWNED_MIN_PACKET`](crate::wire::OWNED_MIN_PACKET) bytes as slices of its
    /// storage, so `buf` then reallocates on its next `reserve`). Returns the bytes
    /// consumed. The default calls `handle_bytes` and advances `buf`.
    fn handle_buf(&mut self, now: Instant, buf: &mut BytesMut) -> Result<usize, Self::Error> {
        let n = self.handle_bytes(now, buf)?;
        buf.advance(n.min(buf.len()));
        Ok(n)
    }

    /// The transport reached end of stream (the peer closed its side).
    fn handle_eof(&mut self, now: Instant);

    /// Fires the timers that are due; spurious calls are no-ops.
    fn handle_timeout(&mut self, now: Instant);

    /// The loop stops reading the transport for a while (its own backpressure): the
    /// silence until the next `handle_bytes` is not the peer's. Call it when reading pauses.
    fn handle_input_paused(&mut self) {}

    // ---- outputs ----

    /// Appends what is queued for the transport (whole packets or frames) to `buf`,
    /// copying; returns the number of bytes.
    fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize;

    /// Like [`poll_transmit`](Self::poll_transmit), without copying data payloads: moves
    /// what is queued into `out` as segments. Returns the number of bytes.
    fn poll_transmit_segments(&mut self, now: Instant, out: &mut Transmit) -> usize;

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    fn poll_timeout(&self) -> Option<Instant>;

    /// True once after the machine started a new session on the same transport (a device
    /// link's new client): the loop must drop the bytes it took from `poll_transmit` but
    /// has not written yet (they belong to the old session). Check it after every
    /// `handle_bytes` and `handle_timeout`, before writing again.
    fn poll_discard_unsent(&mut self) -> bool {
        false
    }

    // ---- getters ----

    /// The fatal error, once the machine has one.
    fn error(&self) -> Option<&Self::Error>;

    /// Whether `handle_bytes` would take bytes now. A loop holding unconsumed input waits
    /// while this is false (for its events to be drained, or its peer to read) instead of
    /// retrying in a spin.
    fn accepts_input(&self) -> bool;

    /// Bytes queued for the transport and not yet taken by `poll_transmit*`.
    fn transmit_buffered(&self) -> usize;
    /// No transaction is in progress (a client between commands and transfers): bulk data
    /// is not expected, so the loop may shrink buffers it sized for bulk data (its read
    /// buffer); the machine has released its own. False by default: keep the buffers.
    fn is_idle(&self) -> bool {
        false
    }
}
