//! What both machines share: the clamped clock, the decoder feeding, the transmit buffer
//! and the keepalive timers. Kept separate so the role-specific code reads as protocol only.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::{Limits, LinkError, UsageError, Violation};
use crate::wire::{
    Decoder, Dialect, EncodeError, Frame, HEADER_LEN, HELLO_LEN, HELLO_SIGNATURE_LEN, Header,
    HelloMatch, Packet, PacketType, Sender, chunks, find_hello, match_hello, rfind_hello,
};

/// Receive buffer allocation granularity: decoded payloads are zero-copy slices of it.
const RX_ALLOC: usize = 128 * 1024;
/// Data payloads at least this long are queued without copying: their header goes into the
/// byte buffer and the payload stays the caller's `Bytes`, a segment of its own.
const ZERO_COPY_MIN: usize = 1024;
/// Bytes of the received stream remembered after they were decoded (device links): a
/// hello whose first bytes completed a stale packet is found in them (see `Sync`).
const RECENT: usize = 32;
/// Of those, how many may hold the start of a hello that reaches into the buffer.
const RECENT_BEFORE_BUFFER: usize = HELLO_LEN - 1;

/// Where the decoder stands relative to the peer's packet boundaries. Only device links
/// leave `InStep` (see `Core::resync` and `Limits::stale_partial_after`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Packets are decoded as they complete.
    InStep,
    /// A silence of `stale_partial_after` fell after the first `at` buffered bytes, which
    /// are an unfinished packet: the bytes after the silence decide what it was. If they
    /// begin with a hello, it is debris of a sender that died mid-write; otherwise a live
    /// sender resumed. Decoding waits for that decision (the signature's 9 bytes, or the
    /// next silence).
    AfterSilence { at: usize },
    /// A framing error: the packet boundaries are lost. Bytes are skipped up to the next
    /// hello (`skipped` so far, of which the first `reread` had been decoded already).
    OutOfStep { skipped: usize, reread: usize },
}

/// The transmit queue: whole packets in order. Their concatenation is `segs` followed by
/// `tail`; small packets (and the headers of large data packets) are appended to `tail`,
/// large data payloads are kept as segments.
#[derive(Default)]
struct TxQueue {
    segs: VecDeque<Bytes>,
    /// Bytes in `segs`.
    seg_len: usize,
    tail: BytesMut,
}

impl TxQueue {
    fn len(&self) -> usize {
        self.seg_len.saturating_add(self.tail.len())
    }

    fn push_segment(&mut self, seg: Bytes) {
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.seg_len = self.seg_len.saturating_add(head.len());
            self.segs.push_back(head);
        }
        self.seg_len = self.seg_len.saturating_add(seg.len());
        self.segs.push_back(seg);
    }

    /// Appends everything to `buf` (copying segments) and empties the queue.
    fn take_into(&mut self, buf: &mut BytesMut) {
        if self.segs.is_empty() && buf.is_empty() {
            *buf = self.tail.split();
            return;
        }
        buf.reserve(self.len());
        for seg in self.segs.drain(..) {
            buf.extend_from_slice(&seg);
        }
        self.seg_len = 0;
        buf.extend_from_slice(&self.tail);
        self.tail.clear();
    }

    /// Drops everything queued; returns how many bytes that was.
    fn clear(&mut self) -> usize {
        let n = self.len();
        self.segs.clear();
        self.seg_len = 0;
        self.tail.clear();
        n
    }

    /// Moves everything to `out` as segments, without copying.
    fn take_segments(&mut self, out: &mut VecDeque<Bytes>) {
        out.extend(self.segs.drain(..));
        self.seg_len = 0;
        if !self.tail.is_empty() {
            out.push_back(self.tail.split().freeze());
        }
    }
}

/// Counters for observability; never used for decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets dropped because they carried another connection's cid.
    pub foreign_cid_dropped: u64,
    /// Packets dropped because their xid named no live transaction.
    pub unknown_xid_dropped: u64,
    /// Packets dropped because they made no sense (see `Violation`).
    pub violations: u64,
    /// Device links: times the decoder found a new client's hello where the packet
    /// boundaries were lost, and the bytes of line noise it dropped in front of them (see
    /// `Limits::stale_partial_after`).
    pub stale_partials_dropped: u64,
    pub stale_bytes_dropped: u64,
    /// Client: bytes skipped before the hello reply (see
    /// `ClientConfig::resync_before_hello`).
    pub skipped_before_hello: u64,
    /// Server: hellos that ended a session with live transactions (see
    /// `ServerConfig::hello_resets_session`), and the bytes of old output that hellos
    /// discarded from the transmit queue.
    pub session_resets: u64,
    pub discarded_bytes: u64,
    /// Client: commands the agent had not ended by their timeout plus the grace (see
    /// `ClientConfig::deadline_grace`), which the client then reported as timed out.
    pub deadlines_expired: u64,
}

pub(crate) enum Timeout {
    Nothing,
    SendKeepalive,
    Dead(Duration),
}

pub(crate) struct Core {
    pub(crate) dialect: Dialect,
    pub(crate) decoder: Decoder,
    out: TxQueue,
    pub(crate) limits: Limits,
    now: Instant,
    keepalive: Option<Duration>,
    send_keepalives: bool,
    last_rx: Instant,
    last_tx: Instant,
    /// When the decoder was last left holding an unfinished packet with all input
    /// consumed, i.e. waiting for the peer (see `Limits::stale_partial_after`). `None`
    /// while nothing is buffered, or when the wait is not the peer's doing (the machine
    /// pushed back, or the runtime paused reading).
    partial_since: Option<Instant>,
    pub(crate) error: Option<LinkError>,
    pub(crate) stats: Stats,
    /// The peer is a client on a device link: a framing error resynchronises on the next
    /// hello instead of ending the connection, and with `Limits::stale_partial_after`
    /// unfinished packets around a silence are checked for debris (see `Sync`).
    resync: bool,
    sync: Sync,
    /// The last bytes fed to the decoder (`recent_len` of them are valid, at the end).
    recent: [u8; RECENT],
    recent_len: usize,
}

impl Core {
    pub(crate) fn new(dialect: Dialect, peer: Sender, limits: Limits, now: Instant) -> Self {
        let decoder = Decoder::new(dialect, peer).with_max_packet_len(limits.max_receive_packet);
        Core {
            dialect,
            decoder,
            out: TxQueue::default(),
            limits,
            now,
            keepalive: None,
            send_keepalives: false,
            last_rx: now,
            last_tx: now,
            partial_since: None,
            error: None,
            stats: Stats::default(),
            resync: false,
            sync: Sync::InStep,
            recent: [0; RECENT],
            recent_len: 0,
        }
    }

    /// The peer is a client on a device link (see `Sync`). Set once, by the server.
    pub(crate) fn enable_resync(&mut self) {
        self.resync = true;
    }

    /// Time never goes backwards inside a machine, whatever the caller passes.
    pub(crate) fn tick(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    pub(crate) fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
        self.decoder.set_dialect(dialect);
    }

    pub(crate) fn check_open(&self) -> Result<(), UsageError> {
        match &self.error {
            Some(e) => Err(UsageError::Link(e.clone())),
            None => Ok(()),
        }
    }

    /// Applies a keepalive interval; `send` says whether this side also sends `K`.
    pub(crate) fn set_keepalive(&mut self, interval: Option<Duration>, send: bool) {
        self.keepalive = interval;
        self.send_keepalives = send && interval.is_some();
    }

    pub(crate) fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }

    pub(crate) fn saw_traffic(&mut self) {
        self.last_rx = self.now;
    }

    /// Copies into the decoder the bytes that complete the packet at its front: the rest
    /// of the header, or the rest of the packet once its length is known (a whole packet
    /// at once when the decoder is empty and `data` starts with a header).
    ///
    /// One packet at a time, so that every complete packet is decoded before more input
    /// is taken: when the event queue fills, the bytes not taken are exactly those
    /// `handle_bytes` reports as not consumed, and nothing decodable is left waiting in
    /// the buffer for input that may never come. `header_known` is false while the
    /// dialect (and so the header layout) is still unknown: then only the first 8 bytes
    /// are taken.
    pub(crate) fn feed(&mut self, data: &[u8], header_known: bool) -> usize {
        let buffered = self.decoder.buffered();
        let whole = match data.get(..HEADER_LEN) {
            Some(head) if buffered == 0 && header_known && self.sync == Sync::InStep => {
                <&[u8; HEADER_LEN]>::try_from(head)
                    .ok()
                    .map(|head| usize::from(Header::decode(self.dialect, head).len).max(HEADER_LEN))
            }
            _ => None,
        };
        let needed = match self.sync {
            Sync::InStep => self.decoder.bytes_needed(),
            // Enough to tell a hello signature from anything else, no more: what is not
            // taken stays the runtime's (backpressure), as for whole packets.
            Sync::AfterSilence { at } => at
                .saturating_add(HELLO_SIGNATURE_LEN)
                .saturating_sub(buffered),
            Sync::OutOfStep { .. } => HELLO_SIGNATURE_LEN.saturating_sub(buffered),
        };
        // Never 0: a call always makes progress.
        let want = whole.unwrap_or(needed).max(1);
        let take = want.min(data.len());
        let Some(chunk) = data.get(..take) else {
            return 0;
        };
        let buf = self.decoder.buffer_mut();
        if buf.capacity() - buf.len() < take {
            buf.reserve(take.max(RX_ALLOC));
        }
        buf.extend_from_slice(chunk);
        self.stats.bytes_received += take as u64;
        if self.resync {
            self.remember(chunk);
        }
        take
    }

    /// Appends `chunk` to the recently received bytes.
    fn remember(&mut self, chunk: &[u8]) {
        let keep = chunk.len().min(RECENT);
        let tail = chunk.get(chunk.len() - keep..).unwrap_or_default();
        self.recent.copy_within(keep.., 0);
        if let Some(dst) = self.recent.get_mut(RECENT - keep..) {
            dst.copy_from_slice(tail);
        }
        self.recent_len = self.recent_len.saturating_add(keep).min(RECENT);
    }

    /// Up to `n` received bytes that come right before the decoder's buffer (bytes
    /// already decoded), oldest first.
    fn decoded_tail(&self, n: usize) -> &[u8] {
        let buffered = self.decoder.buffered();
        let before = self.recent_len.saturating_sub(buffered).min(n);
        let end = RECENT.saturating_sub(buffered);
        self.recent
            .get(end.saturating_sub(before)..end)
            .unwrap_or_default()
    }

    /// The buffered bytes with up to [`RECENT_BEFORE_BUFFER`] decoded bytes before them:
    /// where a hello that started inside an already decoded (stale) packet is found.
    fn recent_and_buffered(&self) -> Vec<u8> {
        let mut v = self.decoded_tail(RECENT_BEFORE_BUFFER).to_vec();
        v.extend_from_slice(self.decoder.peek());
        v
    }

    pub(crate) fn transmit_buffered(&self) -> usize {
        self.out.len()
    }

    /// Drops every queued packet (whole packets only: the queue never holds part of one);
    /// returns the number of bytes dropped.
    pub(crate) fn discard_transmit(&mut self) -> usize {
        let n = self.out.clear();
        self.stats.discarded_bytes += n as u64;
        n
    }

    /// The runtime stops reading for a while: the silence until the next input is its own.
    pub(crate) fn input_paused(&mut self) {
        self.partial_since = None;
    }

    /// When the silence that began at `partial_since` reaches `stale_partial_after` (see
    /// `Sync`): `None` unless the machine waits for the peer inside a packet.
    fn silence_deadline(&self) -> Option<Instant> {
        if !self.resync {
            return None;
        }
        self.partial_since?
            .checked_add(self.limits.stale_partial_after?)
    }

    /// Whether the machine, having taken all input, waits for the peer's next bytes: inside
    /// an unfinished packet, or for the bytes that decide what one was.
    fn waits_for_peer(&self) -> bool {
        match self.sync {
            Sync::InStep => self.decoder.buffered() > 0 && self.decoder.bytes_needed() > 0,
            Sync::AfterSilence { .. } => true,
            Sync::OutOfStep { .. } => false,
        }
    }

    /// The first check at a silence: the unfinished packet's last bytes before the silence
    /// are a hello (whose first bytes may already have completed packets) — a new client
    /// that glued its hello to a dead one's debris and now waits for the reply. Restarts
    /// the decoder at that hello; returns its dialect and the buffered bytes dropped.
    fn hello_before_silence(&mut self) -> Option<(Dialect, usize)> {
        let buffered = self.decoder.buffered();
        // Only inside an unfinished packet (a silence after whole packets is an idle
        // client), and never a hello where the decoder would read one itself.
        if buffered == 0 || buffered == HELLO_LEN || self.decoder.bytes_needed() == 0 {
            return None;
        }
        let window = self.recent_and_buffered();
        let hello = window.get(window.len().checked_sub(HELLO_LEN)?..)?;
        let HelloMatch::Hello(dialect) = match_hello(hello) else {
            return None;
        };
        let dropped = buffered.saturating_sub(HELLO_LEN);
        self.decoder.restart(hello);
        Some((dialect, dropped))
    }

    /// Settles a pending resynchronisation with the bytes now buffered (see `Sync`).
    /// Returns the hello's dialect and the bytes dropped before it when one was found.
    fn settle(&mut self) -> Option<(Dialect, usize)> {
        match self.sync {
            Sync::InStep => None,
            Sync::AfterSilence { at } => {
                let after = self.decoder.peek().get(at..).unwrap_or_default();
                if after.is_empty() {
                    return None;
                }
                match match_hello(after) {
                    HelloMatch::Hello(dialect) => {
                        self.decoder.skip(at);
                        self.sync = Sync::InStep;
                        Some((dialect, at))
                    }
                    HelloMatch::Prefix => None,
                    HelloMatch::No => {
                        self.sync = Sync::InStep;
                        None
                    }
                }
            }
            Sync::OutOfStep { skipped, reread } => {
                let buffered = self.decoder.buffered();
                match find_hello(self.decoder.peek()) {
                    Some((at, HelloMatch::Hello(dialect))) => {
                        self.decoder.skip(at);
                        self.sync = Sync::InStep;
                        let dropped = skipped.saturating_add(at).saturating_sub(reread);
                        Some((dialect, dropped))
                    }
                    found => {
                        // Keep what may still become a hello, drop the rest.
                        let at = found.map_or(buffered, |(at, _)| at);
                        self.decoder.skip(at);
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

    /// A framing error on a device link: resynchronise on the next hello. Its first bytes
    /// may already have been decoded (as the end of a stale packet): the search starts
    /// in them (not counted as dropped: they were decoded).
    fn lose_step(&mut self) {
        let window = self.recent_and_buffered();
        let reread = window.len().saturating_sub(self.decoder.buffered());
        self.decoder.restart(&window);
        self.partial_since = None;
        self.sync = Sync::OutOfStep { skipped: 0, reread };
    }

    /// What of the received bytes belongs to the next session when the transport hangs
    /// up: from the last hello (or the start of one at the very end) among the buffered
    /// bytes, counting one whose first bytes were decoded as a stale packet. Empty when
    /// nothing is buffered (a hello decoded in step is the server's to judge).
    pub(crate) fn hello_onwards(&self) -> Bytes {
        if self.decoder.buffered() == 0 {
            return Bytes::new();
        }
        // (The decoded bytes in front are fewer than a hello: one found there reaches
        // into the buffer, i.e. it was not decoded in step.)
        let window = self.recent_and_buffered();
        let before = window.len().saturating_sub(self.decoder.buffered());
        let from = match rfind_hello(&window) {
            Some((at, _)) => Some(at),
            None => match find_hello(self.decoder.peek()) {
                Some((at, HelloMatch::Prefix)) => Some(before.saturating_add(at)),
                _ => None,
            },
        };
        from.and_then(|at| window.get(at..))
            .map(Bytes::copy_from_slice)
            .unwrap_or_default()
    }

    pub(crate) fn check_room(&self) -> Result<(), UsageError> {
        self.check_open()?;
        if self.out.len() > self.limits.max_transmit_buffer {
            return Err(UsageError::QueueFull {
                buffered: self.out.len(),
                limit: self.limits.max_transmit_buffer,
            });
        }
        Ok(())
    }

    /// Encodes one packet into the transmit buffer. Requests are not chunked, so only the
    /// 16-bit length limits them; data goes through `queue_data`.
    pub(crate) fn queue(&mut self, cid: u16, xid: u16, packet: &Packet) -> Result<(), EncodeError> {
        packet.encode(self.dialect, cid, xid, &mut self.out.tail)?;
        self.stats.packets_sent += 1;
        self.last_tx = self.now;
        Ok(())
    }

    /// Largest packet this side sends: `Limits::max_send_packet`, and never more than the
    /// dialect's peers accept (a 3.0 peer, the C executor, stalls on a longer one).
    pub(crate) fn max_send_packet(&self) -> usize {
        self.limits
            .max_send_packet
            .min(self.dialect.max_packet_len())
    }

    /// Largest data payload of one packet this side sends.
    pub(crate) fn max_chunk(&self) -> usize {
        self.max_send_packet().saturating_sub(HEADER_LEN + 2)
    }

    /// Encodes channel data as packets of at most [`Self::max_send_packet`] bytes.
    pub(crate) fn queue_data(
        &mut self,
        cid: u16,
        xid: u16,
        channel: u16,
        data: Bytes,
    ) -> Result<(), EncodeError> {
        for piece in chunks(data, self.max_chunk()) {
            if piece.len() < ZERO_COPY_MIN {
                self.queue(
                    cid,
                    xid,
                    &Packet::Data {
                        channel,
                        data: piece,
                    },
                )?;
                continue;
            }
            // The header and channel as `Packet::encode` writes them, then the payload
            // as its own segment. `chunks` keeps pieces within a packet's length limit.
            let len = piece.len().saturating_add(HEADER_LEN + 2);
            let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong {
                kind: PacketType::Data.name(),
                len,
                max: crate::wire::MAX_PACKET_LEN,
            })?;
            let tail = &mut self.out.tail;
            tail.reserve(HEADER_LEN + 2);
            Header {
                kind: PacketType::Data.code(self.dialect),
                len: len16,
                cid,
                xid,
            }
            .encode(self.dialect, tail);
            tail.put_u16(channel);
            self.out.push_segment(piece);
            self.stats.packets_sent += 1;
            self.last_tx = self.now;
        }
        Ok(())
    }

    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        self.tick(now);
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        self.out.take_into(buf);
        self.stats.bytes_sent += n as u64;
        n
    }

    pub(crate) fn poll_transmit_segments(
        &mut self,
        now: Instant,
        out: &mut VecDeque<Bytes>,
    ) -> usize {
        self.tick(now);
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        self.out.take_segments(out);
        self.stats.bytes_sent += n as u64;
        n
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let k = self.keepalive;
        let dead = k.and_then(|k| self.last_rx.checked_add(k));
        let send = match k {
            Some(k) if self.send_keepalives => self.last_tx.checked_add(k / 4),
            _ => None,
        };
        [dead, send, self.silence_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at the current time (call after `tick`).
    pub(crate) fn due(&self) -> Timeout {
        let Some(k) = self.keepalive else {
            return Timeout::Nothing;
        };
        if self.error.is_some() {
            return Timeout::Nothing;
        }
        if self.last_rx.checked_add(k).is_some_and(|d| self.now >= d) {
            return Timeout::Dead(k);
        }
        if self.send_keepalives
            && self
                .last_tx
                .checked_add(k / 4)
                .is_some_and(|d| self.now >= d)
        {
            return Timeout::SendKeepalive;
        }
        Timeout::Nothing
    }

    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, crate::wire::DecodeError> {
        let r = self.decoder.next_frame();
        if let Ok(Some(_)) = r {
            self.stats.packets_received += 1;
        }
        r
    }
}

/// What the shared input loop needs from a role (client or server).
pub(crate) trait Input {
    fn core(&mut self) -> &mut Core;
    /// Whether the event queue can take more.
    fn has_room(&self) -> bool;
    /// Called before decoding; returns whether the dialect (and so the header layout) is
    /// known. The server detects it here from the first bytes.
    fn prepare(&mut self) -> bool {
        true
    }
    fn on_frame(&mut self, frame: Frame);
    /// A packet that did not decode; the stream continues.
    fn on_bad_packet(&mut self, error: crate::wire::DecodeError);
    /// Something the peer sent was dropped (reported as an event and counted).
    fn on_violation(&mut self, violation: Violation);
    /// The stream cannot continue.
    fn on_fatal(&mut self, error: LinkError);
    /// On a device link the decoder found a client's hello in `dialect` where the packet
    /// boundaries were lost (debris before it is already dropped and reported, see
    /// `Sync`); the hello is decoded next.
    fn on_resync(&mut self, dialect: Dialect) {
        let _ = dialect;
    }
}

/// Reports a resynchronisation on a hello: the debris dropped before it, then the role's
/// own reaction.
fn resynced<M: Input>(m: &mut M, (dialect, dropped): (Dialect, usize)) {
    let stats = &mut m.core().stats;
    stats.stale_partials_dropped += 1;
    stats.stale_bytes_dropped += dropped as u64;
    m.on_violation(Violation::StalePartial { bytes: dropped });
    m.on_resync(dialect);
}

/// The input loop of both machines: decode what is buffered while the event queue has
/// room, then take more bytes (one packet at a time, so what is consumed is exactly what
/// was decoded or is needed to complete the next packet).
pub(crate) fn handle_bytes<M: Input>(
    m: &mut M,
    now: Instant,
    data: &[u8],
) -> Result<usize, LinkError> {
    if let Some(e) = &m.core().error {
        return Err(e.clone());
    }
    m.core().tick(now);
    if !data.is_empty() {
        // A silence may have ended with these bytes without the timer having fired.
        at_silence(m);
    }
    let consumed = feed_and_decode(m, data)?;
    if !data.is_empty() {
        // Everything offered was taken and the machine waits for the peer (inside a
        // packet): silence from now on is the peer's. (When it pushed back, the bytes it
        // left are already here: no silence can be measured.)
        let core = m.core();
        let waiting = consumed == data.len() && core.waits_for_peer();
        core.partial_since = waiting.then_some(core.now);
    }
    Ok(consumed)
}

/// Timers of the shared input path: the silence check of a device link (see `Sync`).
/// Call from `handle_timeout` after `tick`.
pub(crate) fn handle_timeout<M: Input>(m: &mut M) {
    if m.core().error.is_some() {
        return;
    }
    if at_silence(m) {
        let _ = feed_and_decode(m, &[]);
    }
}

/// Device links: the peer has been silent for `stale_partial_after` while the machine
/// waited inside a packet. Decides what the bytes before the silence were, and arms the
/// check of the bytes after it (see `Sync`). Returns whether it changed anything.
fn at_silence<M: Input>(m: &mut M) -> bool {
    let core = m.core();
    if core.silence_deadline().is_none_or(|t| core.now < t) {
        return false;
    }
    core.partial_since = None;
    if let Sync::AfterSilence { .. } = core.sync {
        // The bytes after the last silence were the start of a hello's signature and
        // then nothing: a live sender's last bytes (it now waits for an answer).
        core.sync = Sync::InStep;
        let _ = feed_and_decode(m, &[]);
    }
    let core = m.core();
    if core.sync != Sync::InStep {
        return true;
    }
    match core.hello_before_silence() {
        Some(found) => resynced(m, found),
        None if core.waits_for_peer() => {
            core.sync = Sync::AfterSilence {
                at: core.decoder.buffered(),
            };
        }
        None => {}
    }
    true
}

fn feed_and_decode<M: Input>(m: &mut M, data: &[u8]) -> Result<usize, LinkError> {
    let mut consumed = 0usize;
    loop {
        if let Some(found) = m.core().settle() {
            resynced(m, found);
        }
        let header_known = m.prepare();
        while header_known
            && m.core().sync == Sync::InStep
            && m.has_room()
            && m.core().error.is_none()
        {
            match m.core().next_frame() {
                Ok(Some(frame)) => m.on_frame(frame),
                Ok(None) => break,
                Err(e) if e.is_fatal() && m.core().resync => {
                    m.on_bad_packet(e);
                    m.core().lose_step();
                    if let Some(found) = m.core().settle() {
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
        let rest = data.get(consumed..).unwrap_or_default();
        if rest.is_empty() || !m.has_room() {
            return Ok(consumed);
        }
        consumed = consumed.saturating_add(m.core().feed(rest, header_known));
    }
}
