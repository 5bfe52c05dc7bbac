//! The transmit queue both machines share: packets are encoded into it as intents and
//! timers queue them, and the I/O loop takes them out with `poll_transmit*`.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::UsageError;
use super::core::Core;
use super::stats::count;
use crate::Transmit;
use crate::wire::{EncodeError, HEADER_LEN, Header, MAX_PACKET_LEN, Packet, PacketType, chunks};

/// Data payloads at least this long are queued without copying: their header goes into the
/// byte buffer and the payload stays the caller's `Bytes`, a segment of its own.
const ZERO_COPY_MIN: usize = 1024;

/// Whole packets in order. Their concatenation is `segs` followed by `tail`; small packets
/// (and the headers of large data packets) are appended to `tail`, large data payloads are
/// kept as segments.
#[derive(Default)]
pub(crate) struct TxQueue {
    segs: VecDeque<Bytes>,
    /// Bytes in `segs`.
    seg_len: usize,
    tail: BytesMut,
}

impl TxQueue {
    pub(crate) fn len(&self) -> usize {
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
    fn take_segments(&mut self, out: &mut Transmit) {
        for seg in self.segs.drain(..) {
            out.push(seg);
        }
        self.seg_len = 0;
        if !self.tail.is_empty() {
            out.push(self.tail.split().freeze());
        }
    }
}

impl Core {
    pub(crate) fn transmit_buffered(&self) -> usize {
        self.out.len()
    }

    /// Drops every queued packet (whole packets only: the queue never holds part of one);
    /// returns the number of bytes dropped.
    pub(crate) fn discard_transmit(&mut self) -> usize {
        let n = self.out.clear();
        count(&mut self.stats.discarded_bytes, n);
        n
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

    /// Encodes one packet into the transmit queue. Requests are not chunked, so only the
    /// 16-bit length limits them; data goes through `queue_data`.
    pub(crate) fn queue(&mut self, cid: u16, xid: u16, packet: &Packet) -> Result<(), EncodeError> {
        packet.encode(self.dialect(), cid, xid, &mut self.out.tail)?;
        self.sent_packet();
        Ok(())
    }

    /// Largest packet this side sends: `Limits::max_send_packet`, and never more than the
    /// dialect's peers accept (a 3.0 peer, the C executor, stalls on a longer one).
    pub(crate) fn max_send_packet(&self) -> usize {
        self.limits
            .max_send_packet
            .min(self.dialect().max_packet_len())
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
        let dialect = self.dialect();
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
                max: MAX_PACKET_LEN,
            })?;
            let tail = &mut self.out.tail;
            tail.reserve(HEADER_LEN + 2);
            Header {
                kind: PacketType::Data.code(dialect),
                len: len16,
                cid,
                xid,
            }
            .encode(dialect, tail);
            tail.put_u16(channel);
            self.out.push_segment(piece);
            self.sent_packet();
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
        count(&mut self.stats.bytes_sent, n);
        n
    }

    pub(crate) fn poll_transmit_segments(&mut self, now: Instant, out: &mut Transmit) -> usize {
        self.tick(now);
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        self.out.take_segments(out);
        count(&mut self.stats.bytes_sent, n);
        n
    }
}
