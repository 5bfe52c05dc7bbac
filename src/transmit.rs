//! What a machine hands an I/O loop to write (see [`Transmit`]).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Bytes queued for the transport, as segments whose concatenation is the byte stream
/// (whole packets, in order).
///
/// A machine moves what it queued into a `Transmit` with
/// [`Machine::poll_transmit_segments`](crate::Machine::poll_transmit_segments) without
/// copying: a large data payload is a segment of its own, the very [`Bytes`] the
/// application passed to the intent, and small packets are packed together. The I/O loop
/// writes it with vectored I/O and drops what the transport took:
///
/// ```
/// use std::io::{IoSlice, Write};
/// use bytes::Bytes;
/// use tuppence::Transmit;
///
/// let mut tx = Transmit::new();
/// tx.push(Bytes::from_static(b"header"));
/// tx.push(Bytes::from_static(b"payload"));
/// let mut sink = Vec::new();
/// while !tx.is_empty() {
///     let mut iov = [IoSlice::new(&[]); 64];
///     let k = tx.io_slices(&mut iov);
///     let n = sink.write_vectored(&iov[..k]).unwrap();
///     tx.consume(n);
/// }
/// assert_eq!(sink, b"headerpayload");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Transmit {
    segments: VecDeque<Bytes>,
    len: usize,
}

impl Transmit {
    pub fn new() -> Self {
        Transmit::default()
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a segment (an empty one is dropped).
    pub fn push(&mut self, segment: Bytes) {
        if segment.is_empty() {
            return;
        }
        self.len = self.len.saturating_add(segment.len());
        self.segments.push_back(segment);
    }

    /// Fills `iov` with the first segments, as many as fit; returns how many it filled.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        iov.iter_mut()
            .zip(&self.segments)
            .map(|(slot, segment)| *slot = IoSlice::new(segment))
            .count()
    }

    /// Drops the first `n` bytes (those the transport took).
    pub fn consume(&mut self, mut n: usize) {
        self.len = self.len.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n = n.saturating_sub(front.len());
            self.segments.pop_front();
        }
    }

    /// Drops everything; returns how many bytes that was.
    pub fn clear(&mut self) -> usize {
        self.segments.clear();
        std::mem::take(&mut self.len)
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &Bytes> {
        self.segments.iter()
    }
}
