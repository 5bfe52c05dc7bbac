//! What both machines share: the clamped clock, the decoder feeding, the transmit buffer
//! and the keepalive timers. Kept separate so the role-specific code reads as protocol only.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Limits, LinkError, UsageError};
use crate::wire::{Decoder, Dialect, EncodeError, Frame, HEADER_LEN, Packet, Sender, chunks};

/// Capacity the decoder's buffer grows by at a time (packets are fed one by one into it).
const RX_WINDOW: usize = 128 * 1024;

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
}

pub(crate) enum Timeout {
    Nothing,
    SendKeepalive,
    Dead(Duration),
}

pub(crate) struct Core {
    pub(crate) dialect: Dialect,
    pub(crate) decoder: Decoder,
    out: BytesMut,
    pub(crate) limits: Limits,
    now: Instant,
    keepalive: Option<Duration>,
    send_keepalives: bool,
    last_rx: Instant,
    last_tx: Instant,
    pub(crate) error: Option<LinkError>,
    pub(crate) stats: Stats,
}

impl Core {
    pub(crate) fn new(dialect: Dialect, peer: Sender, limits: Limits, now: Instant) -> Self {
        let decoder = Decoder::new(dialect, peer).with_max_packet_len(limits.max_receive_packet);
        Core {
            dialect,
            decoder,
            out: BytesMut::new(),
            limits,
            now,
            keepalive: None,
            send_keepalives: false,
            last_rx: now,
            last_tx: now,
            error: None,
            stats: Stats::default(),
        }
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

    /// Copies into the decoder what it needs to complete its current packet, and no more.
    ///
    /// Taking more could leave whole packets in the decoder when the caller stops decoding
    /// because its event queue is full; `handle_bytes` would still count them as consumed,
    /// so an I/O loop would see nothing left to feed and those packets would wait for the
    /// peer's next bytes (with keepalives off: forever). Bytes not taken stay with the
    /// caller, who offers them again once the events are drained.
    pub(crate) fn feed(&mut self, data: &[u8]) -> usize {
        let room = self.decoder.bytes_needed().max(1);
        let take = room.min(data.len());
        if let Some(chunk) = data.get(..take) {
            let buf = self.decoder.buffer_mut();
            if buf.capacity() - buf.len() < take {
                buf.reserve(take.max(RX_WINDOW));
            }
            buf.extend_from_slice(chunk);
            self.stats.bytes_received += take as u64;
            take
        } else {
            0
        }
    }

    pub(crate) fn transmit_buffered(&self) -> usize {
        self.out.len()
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
        packet.encode(self.dialect, cid, xid, &mut self.out)?;
        self.stats.packets_sent += 1;
        self.last_tx = self.now;
        Ok(())
    }

    /// Encodes channel data as packets of at most `max_send_packet` bytes.
    pub(crate) fn queue_data(
        &mut self,
        cid: u16,
        xid: u16,
        channel: u16,
        data: Bytes,
    ) -> Result<(), EncodeError> {
        let max_chunk = self.limits.max_send_packet.saturating_sub(HEADER_LEN + 2);
        for piece in chunks(data, max_chunk) {
            self.queue(
                cid,
                xid,
                &Packet::Data {
                    channel,
                    data: piece,
                },
            )?;
        }
        Ok(())
    }

    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut) -> usize {
        self.tick(now);
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        if buf.is_empty() {
            *buf = self.out.split();
        } else {
            buf.extend_from_slice(&self.out);
            self.out.clear();
        }
        self.stats.bytes_sent += n as u64;
        n
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let k = self.keepalive?;
        let dead = self.last_rx.checked_add(k);
        let send = if self.send_keepalives {
            self.last_tx.checked_add(k / 4)
        } else {
            None
        };
        match (dead, send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
